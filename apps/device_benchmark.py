"""ARM latencies of an apps.benchmark run, measured on the device: a Raspberry Pi (over ssh, or
on the Pi itself) or an Android phone (over adb), merged into the run's benchmark.json, .md and
.png beside the x86 figures (effkeras.benchmark.device).

python -m apps.device_benchmark --benchmark_dir=runs/benchmark --ssh=pi@raspberrypi.local \\
    --binary=./lce_benchmark_model_aarch64 --device="RPi 4B" [--threads=1,4] [--runs=50]
python -m apps.device_benchmark --benchmark_dir=runs/benchmark --adb [--adb_serial=SERIAL] \\
    --binary=./lce_benchmark_model_android_arm64 --device="Pixel 6"
python -m apps.device_benchmark --benchmark_dir=runs/benchmark --binary=./lce_benchmark_model \\
    --device="RPi 4B"          # run here, on the ARM machine itself

Every file of the run that an ARM CPU runs (targets arm, float, float16, int8) is run by
`lce_benchmark_model`, which is TFLite's `benchmark_model` with LCE's ops added, so it runs
plain TFLite files as well: `--graph=F --num_threads=T --num_runs=R --warmup_runs=W`; its
"Inference (avg)" is the figure kept. Get the binary from LCE's GitHub releases
(lce_benchmark_model_aarch64 for a 64-bit Raspberry Pi OS, _android_arm64 for phones) or build
it: bazel build -c opt --config=aarch64 //larq_compute_engine/tflite/benchmark:lce_benchmark_model
"""

from absl import flags

from apps import _cli

flags.DEFINE_string("benchmark_dir", None, "An apps.benchmark --output_dir.")
flags.DEFINE_string(
    "binary",
    "./lce_benchmark_model_aarch64",
    "lce_benchmark_model (or TFLite's benchmark_model) for the device, on this "
    "machine; it is copied to the device with --ssh or --adb.",
)
flags.DEFINE_string("ssh", None, "Run on this ssh host (e.g. pi@raspberrypi.local).")
flags.DEFINE_bool("adb", False, "Run on the Android device adb reaches.")
flags.DEFINE_string("adb_serial", None, "With --adb: the device's serial (adb -s).")
flags.DEFINE_string("device", None, 'The device\'s name in the table (e.g. "RPi 4B").')
flags.DEFINE_list("threads", ["1"], "Thread counts, one measurement each.")
flags.DEFINE_integer("runs", 50, "--num_runs of the benchmark binary.")
flags.DEFINE_integer("warmup_runs", 5, "--warmup_runs of the benchmark binary.")
FLAGS = flags.FLAGS


def main(argv):
    from effkeras import benchmark
    from effkeras.benchmark import device as devices
    from effkeras.errors import InputError

    if not FLAGS.benchmark_dir:
        raise InputError("--benchmark_dir is required: the --output_dir of an apps.benchmark run")
    rows, x86_threads, x86_runs = benchmark.read(FLAGS.benchmark_dir)
    devices.check_binary(FLAGS.binary)
    try:
        threads = sorted({int(t) for t in FLAGS.threads})
    except ValueError:
        raise InputError(f"--threads must be integers, e.g. 1,4; got {FLAGS.threads}") from None
    if not threads or threads[0] < 1 or FLAGS.runs < 1 or FLAGS.warmup_runs < 0:
        raise InputError("--threads and --runs must be >= 1, --warmup_runs >= 0")
    if threads[-1] > benchmark.MAX_THREADS:
        raise InputError(f"--threads must be at most {benchmark.MAX_THREADS}, got {threads[-1]}")
    files = devices.arm_files(FLAGS.benchmark_dir, rows)
    device = devices.Device(FLAGS.ssh, FLAGS.adb, FLAGS.adb_serial)
    name = FLAGS.device or {"ssh": FLAGS.ssh, "adb": "Android", "local": "device"}[device.kind]
    measured = devices.measure(device, FLAGS.binary, files, threads, FLAGS.runs, FLAGS.warmup_runs)
    rows = benchmark.merge_device(FLAGS.benchmark_dir, measured, name)
    print(benchmark.table(rows, threads=x86_threads, runs=x86_runs))


if __name__ == "__main__":
    _cli.run(main)
