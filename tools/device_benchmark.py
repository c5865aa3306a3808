"""ARM latencies of an apps.benchmark run, measured on the device: a Raspberry Pi (over ssh, or
on the Pi itself) or an Android phone (over adb), merged into the run's benchmark.json, .md and
.png beside the x86 figures.

python -m tools.device_benchmark --benchmark_dir=runs/benchmark --ssh=pi@raspberrypi.local \\
    --binary=./lce_benchmark_model_aarch64 --device="RPi 4B" [--threads=1,4] [--runs=50]
python -m tools.device_benchmark --benchmark_dir=runs/benchmark --adb [--adb_serial=SERIAL] \\
    --binary=./lce_benchmark_model_android_arm64 --device="Pixel 6"
python -m tools.device_benchmark --benchmark_dir=runs/benchmark --binary=./lce_benchmark_model \\
    --device="RPi 4B"          # run here, on the ARM machine itself

Every file of the run that an ARM CPU runs (targets arm, float, float16, int8) is run by
`lce_benchmark_model`, which is TFLite's `benchmark_model` with LCE's ops added, so it runs
plain TFLite files as well: `--graph=F --num_threads=T --num_runs=R --warmup_runs=W`; its
"Inference (avg)" is the figure kept. Get the binary from LCE's GitHub releases
(lce_benchmark_model_aarch64 for a 64-bit Raspberry Pi OS, _android_arm64 for phones) or build
it: bazel build -c opt --config=aarch64 //larq_compute_engine/tflite/benchmark:lce_benchmark_model
"""

import os
import re
import shlex
import shutil
import subprocess

from absl import flags

from apps import _cli

flags.DEFINE_string("benchmark_dir", None, "An apps.benchmark --output_dir.")
flags.DEFINE_string("binary", "./lce_benchmark_model_aarch64",
                    "lce_benchmark_model (or TFLite's benchmark_model) for the device, on this "
                    "machine; it is copied to the device with --ssh or --adb.")
flags.DEFINE_string("ssh", None, "Run on this ssh host (e.g. pi@raspberrypi.local).")
flags.DEFINE_bool("adb", False, "Run on the Android device adb reaches.")
flags.DEFINE_string("adb_serial", None, "With --adb: the device's serial (adb -s).")
flags.DEFINE_string("device", None, "The device's name in the table (e.g. \"RPi 4B\").")
flags.DEFINE_list("threads", ["1"], "Thread counts, one measurement each.")
flags.DEFINE_integer("runs", 50, "--num_runs of the benchmark binary.")
flags.DEFINE_integer("warmup_runs", 5, "--warmup_runs of the benchmark binary.")
FLAGS = flags.FLAGS

REMOTE_DIR = {"ssh": "/tmp/effkeras_benchmark", "adb": "/data/local/tmp/effkeras_benchmark"}
AVERAGE = re.compile(r"Inference \(avg\): ([0-9.]+(?:e[+-]?[0-9]+)?)")


class Device:
    """Copies files to where the binary runs and runs commands there."""

    def __init__(self, ssh=None, adb=False, serial=None):
        from effkeras.errors import InputError

        self.kind = "ssh" if ssh else "adb" if adb else "local"
        if ssh and adb:
            raise InputError("give --ssh or --adb, not both")
        if self.kind != "local":
            tools = ("ssh", "scp") if ssh else ("adb",)
            for tool in tools:
                if shutil.which(tool) is None:
                    raise InputError(f"`{tool}` is not installed here; install it, or run this "
                                     f"tool on the device itself (no --ssh/--adb)")
        self.ssh = ssh
        self.adb = ["adb"] + (["-s", serial] if serial else [])
        self.prefix = ["ssh", ssh] if ssh else self.adb + ["shell"] if adb else []
        if self.kind != "local":
            self.shell(["mkdir", "-p", REMOTE_DIR[self.kind]])

    def shell(self, args):
        """(exit code, stdout + stderr) of `args` run on the device."""
        command = args if self.kind == "local" else self.prefix + [shlex.join(args)]
        done = subprocess.run(command, capture_output=True, text=True)
        return done.returncode, done.stdout + done.stderr

    def push(self, path):
        """The path of the local file `path` on the device."""
        from effkeras.errors import InputError

        if self.kind == "local":
            return os.path.abspath(path)
        remote = f"{REMOTE_DIR[self.kind]}/{os.path.basename(path)}"
        command = (["scp", "-q", path, f"{self.ssh}:{remote}"] if self.kind == "ssh"
                   else self.adb + ["push", path, remote])
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode:
            raise InputError(f"copying {path} to the device failed: "
                             f"{(done.stderr or done.stdout).strip()[-300:]}")
        return remote


def average_ms(output):
    """The 'Inference (avg)' of benchmark_model's output, in ms; None when it printed none."""
    found = AVERAGE.findall(output)
    return float(found[-1]) / 1e3 if found else None


def measure(device, binary, files, threads, runs, warmup_runs):
    """{file name: {threads: ms}} of every file; a file the binary fails on is reported and left
    out."""
    from tqdm import tqdm

    remote_binary = device.push(binary)
    if device.kind != "local":
        device.shell(["chmod", "+x", remote_binary])
    measured = {}
    for path in tqdm(files, desc=f"benchmarking on the device ({device.kind})", unit="file"):
        remote = device.push(path)
        for count in threads:
            code, output = device.shell([remote_binary, f"--graph={remote}",
                                         f"--num_threads={count}", f"--num_runs={runs}",
                                         f"--warmup_runs={warmup_runs}"])
            ms = average_ms(output)
            if code or ms is None:
                tail = " | ".join(output.strip().splitlines()[-3:])
                print(f"{os.path.basename(path)}, {count} thread(s): no result (exit {code}): "
                      f"{tail}")
                continue
            measured.setdefault(os.path.basename(path), {})[count] = ms
    return measured


def main(argv):
    from effkeras import benchmark
    from effkeras.errors import InputError

    if not FLAGS.benchmark_dir:
        raise InputError("--benchmark_dir is required: the --output_dir of an apps.benchmark run")
    rows, x86_threads, x86_runs = benchmark.read(FLAGS.benchmark_dir)
    if not (os.path.isfile(FLAGS.binary) and os.access(FLAGS.binary, os.X_OK)):
        raise InputError(f"--binary={FLAGS.binary} is not an executable benchmark binary; "
                         f"download lce_benchmark_model_aarch64 (Raspberry Pi) or "
                         f"lce_benchmark_model_android_arm64 from Larq Compute Engine's GitHub "
                         f"releases, or build it (see this tool's --help)")
    try:
        threads = sorted({int(t) for t in FLAGS.threads})
    except ValueError:
        raise InputError(f"--threads must be integers, e.g. 1,4; got {FLAGS.threads}") from None
    if not threads or threads[0] < 1 or FLAGS.runs < 1 or FLAGS.warmup_runs < 0:
        raise InputError("--threads and --runs must be >= 1, --warmup_runs >= 0")
    files = [os.path.join(FLAGS.benchmark_dir, row.file) for row in rows
             if row.file and row.target in benchmark.CPU_TARGETS]
    missing = [path for path in files if not os.path.isfile(path)]
    if not files:
        raise InputError(f"{FLAGS.benchmark_dir} has no file for an ARM CPU (targets "
                         f"{', '.join(benchmark.CPU_TARGETS)}); run apps.benchmark with one")
    if missing:
        raise InputError(f"{len(missing)} file(s) named in benchmark.json are missing "
                         f"({', '.join(missing[:2])}{' ...' if len(missing) > 2 else ''}): keep "
                         f"the run's .tflite files beside its benchmark.json")
    device = Device(FLAGS.ssh, FLAGS.adb, FLAGS.adb_serial)
    name = FLAGS.device or {"ssh": FLAGS.ssh, "adb": "Android", "local": "device"}[device.kind]
    measured = measure(device, FLAGS.binary, files, threads, FLAGS.runs, FLAGS.warmup_runs)
    rows = benchmark.merge_device(FLAGS.benchmark_dir, measured, name)
    print(benchmark.table(rows, threads=x86_threads, runs=x86_runs))


if __name__ == "__main__":
    _cli.run(main)
