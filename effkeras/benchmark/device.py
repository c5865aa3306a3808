"""ARM latencies measured on the device: a Raspberry Pi (over ssh, or on the Pi itself) or an
Android phone (over adb), by `lce_benchmark_model`, for the files of a benchmark run.

`lce_benchmark_model` is TFLite's `benchmark_model` with LCE's ops added, so it runs plain
TFLite files as well: `--graph=F --num_threads=T --num_runs=R --warmup_runs=W`; its
"Inference (avg)" is the figure kept. apps.device_benchmark merges the results into the run's
benchmark.json, .md and .png (`report.merge_device`).
"""

import os
import re
import shlex
import shutil
import subprocess

from effkeras.benchmark.measure import CPU_TARGETS
from effkeras.errors import InputError

REMOTE_DIR = {"ssh": "/tmp/effkeras_benchmark", "adb": "/data/local/tmp/effkeras_benchmark"}
AVERAGE = re.compile(r"Inference \(avg\): ([0-9.]+(?:e[+-]?[0-9]+)?)")


class Device:
    """Copies files to where the benchmark binary runs and runs commands there.

    Args:
        ssh: an ssh host (e.g. pi@raspberrypi.local) to run on, or None.
        adb: run on the Android device adb reaches.
        serial: with `adb`, the device's serial (adb -s).

    Raises:
        InputError: both `ssh` and `adb` are given, or ssh/scp/adb is not installed.
    """

    def __init__(self, ssh=None, adb=False, serial=None):
        self.kind = "ssh" if ssh else "adb" if adb else "local"
        if ssh and adb:
            raise InputError("give --ssh or --adb, not both")
        if self.kind != "local":
            tools = ("ssh", "scp") if ssh else ("adb",)
            for tool in tools:
                if shutil.which(tool) is None:
                    raise InputError(
                        f"`{tool}` is not installed here; install it, or run this "
                        f"tool on the device itself (no --ssh/--adb)"
                    )
        self.ssh = ssh
        self.adb = ["adb"] + (["-s", serial] if serial else [])
        self.prefix = ["ssh", ssh] if ssh else self.adb + ["shell"] if adb else []
        if self.kind != "local":
            self.shell(["mkdir", "-p", REMOTE_DIR[self.kind]])

    def shell(self, args):
        """Runs a command on the device.

        Args:
            args: the command and its arguments.

        Returns:
            (exit code, stdout + stderr).
        """
        command = args if self.kind == "local" else self.prefix + [shlex.join(args)]
        done = subprocess.run(command, capture_output=True, text=True)
        return done.returncode, done.stdout + done.stderr

    def push(self, path):
        """Copies a local file to the device (nothing to copy when local).

        Args:
            path: the local file.

        Returns:
            Its path on the device.

        Raises:
            InputError: the copy failed.
        """
        if self.kind == "local":
            return os.path.abspath(path)
        remote = f"{REMOTE_DIR[self.kind]}/{os.path.basename(path)}"
        command = (
            ["scp", "-q", path, f"{self.ssh}:{remote}"]
            if self.kind == "ssh"
            else self.adb + ["push", path, remote]
        )
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode:
            raise InputError(
                f"copying {path} to the device failed: "
                f"{(done.stderr or done.stdout).strip()[-300:]}"
            )
        return remote


def average_ms(output):
    """The 'Inference (avg)' of benchmark_model's output.

    Args:
        output: what the binary printed.

    Returns:
        The average in ms, or None when it printed none.
    """
    found = AVERAGE.findall(output)
    return float(found[-1]) / 1e3 if found else None


def check_binary(binary):
    """Refuses a benchmark binary that is not an executable file.

    Args:
        binary: the path of lce_benchmark_model (or TFLite's benchmark_model).

    Raises:
        InputError: it is not an executable file, with where to get one.
    """
    if not (os.path.isfile(binary) and os.access(binary, os.X_OK)):
        raise InputError(
            f"--binary={binary} is not an executable benchmark binary; "
            f"download lce_benchmark_model_aarch64 (Raspberry Pi) or "
            f"lce_benchmark_model_android_arm64 from Larq Compute Engine's GitHub "
            f"releases, or build it (see this tool's --help)"
        )


def arm_files(benchmark_dir, rows):
    """The files of a benchmark run that an ARM CPU runs (targets arm, float, float16, int8).

    Args:
        benchmark_dir: the run's output folder.
        rows: its `Row`s (`report.read`).

    Returns:
        Their paths.

    Raises:
        InputError: there is none, or one named in benchmark.json is missing.
    """
    files = [
        os.path.join(benchmark_dir, row.file)
        for row in rows
        if row.file and row.target in CPU_TARGETS
    ]
    missing = [path for path in files if not os.path.isfile(path)]
    if not files:
        raise InputError(
            f"{benchmark_dir} has no file for an ARM CPU (targets "
            f"{', '.join(CPU_TARGETS)}); run apps.benchmark with one"
        )
    if missing:
        raise InputError(
            f"{len(missing)} file(s) named in benchmark.json are missing "
            f"({', '.join(missing[:2])}{' ...' if len(missing) > 2 else ''}): keep "
            f"the run's .tflite files beside its benchmark.json"
        )
    return files


def measure(device, binary, files, threads, runs, warmup_runs):
    """Runs the benchmark binary on every file at every thread count, on the device.

    A file the binary fails on is reported (printed) and left out.

    Args:
        device: a `Device`.
        binary: the local benchmark binary (copied to the device).
        files: local .tflite paths.
        threads: thread counts.
        runs: --num_runs of the binary.
        warmup_runs: --warmup_runs of the binary.

    Returns:
        {file name: {threads: ms}}.
    """
    from tqdm import tqdm

    remote_binary = device.push(binary)
    if device.kind != "local":
        device.shell(["chmod", "+x", remote_binary])
    measured = {}
    for path in tqdm(files, desc=f"benchmarking on the device ({device.kind})", unit="file"):
        remote = device.push(path)
        for count in threads:
            code, output = device.shell(
                [
                    remote_binary,
                    f"--graph={remote}",
                    f"--num_threads={count}",
                    f"--num_runs={runs}",
                    f"--warmup_runs={warmup_runs}",
                ]
            )
            ms = average_ms(output)
            if code or ms is None:
                tail = " | ".join(output.strip().splitlines()[-3:])
                print(
                    f"{os.path.basename(path)}, {count} thread(s): no result (exit {code}): {tail}"
                )
                continue
            measured.setdefault(os.path.basename(path), {})[count] = ms
    return measured
