"""Benchmark models against their peers on every runtime, side by side (effkeras.benchmark).

python -m apps.benchmark --models=ern18,quicknet,quicknet_small,resnet18 --targets=arm,float \\
    --input_shape=224,224,3 --baseline=quicknet --output_dir=runs/benchmark
python -m apps.benchmark --models=mlperf_tiny_resnet8,mobilenet_v2@96:alpha=0.35 \\
    --targets=int8,tflm,ethos-u55-128 --output_dir=runs/benchmark_mcu
python -m apps.benchmark --models=runs/a/model.keras,runs/b/model.keras --targets=int8 \\
    --dataset=fashion_mnist --output_dir=runs/benchmark_fmnist    # with each file's accuracy

A model is a registry name (untrained weights; NAME@SIZE for a square input, NAME:key=value for
builder options), a .keras checkpoint (its accuracy from its run's metrics.json) or a .tflite
file. Writes the .tflite files, benchmark.json, benchmark.md and benchmark.png to --output_dir;
apps.device_benchmark then adds latencies measured on a Raspberry Pi or an Android phone.
"""

import sys

from absl import flags

from apps import _cli

flags.DEFINE_list(
    "models", None, "Models: registry names (NAME[@SIZE][:key=value,...]), .keras or .tflite files."
)
flags.DEFINE_list(
    "targets",
    None,
    "Deploy targets: arm, float, float16, int8, tflm, "
    "ethos-u55-128, ... (default: each model's own).",
)
flags.DEFINE_string("input_shape", None, "H,W,C for registry models (default: each model's).")
flags.DEFINE_integer("num_classes", None, "Classes for registry models (default: each model's).")
flags.DEFINE_integer("threads", 1, "Interpreter threads (LCE and LiteRT).")
flags.DEFINE_integer(
    "runs",
    20,
    "Timed rounds (each runs every file once, in turn); 0: no "
    "timing, only sizes, arenas and Vela's estimates.",
)
flags.DEFINE_integer("warmup", 3, "Untimed rounds first.")
flags.DEFINE_string(
    "baseline",
    None,
    "A model of --models that latencies are given as a ratio "
    "of (absolute x86 times mean little for ARM targets).",
)
flags.DEFINE_string(
    "dataset",
    None,
    "Calibrate and check on this dataset's images and give "
    "each file's test top-1 (fashion_mnist, cifar10, cifar100, imagenet).",
)
flags.DEFINE_string("data_dir", None, "Directory of --dataset.")
flags.DEFINE_integer("calibration_samples", 200, "Training images for int8 calibration.")
flags.DEFINE_enum(
    "lerp_form",
    "gather",
    ["gather", "table65", "relu_sum"],
    "Learned table activations (LERP-PSA, B-spline): as apps.convert --lerp_form.",
)
flags.DEFINE_string("output_dir", "runs/benchmark", "Where the files and the results go.")
FLAGS = flags.FLAGS
ROWS_FAILED = 1  # exit status when some rows failed (the report is written all the same)


def main(argv):
    from effkeras import benchmark, deploy, models
    from effkeras.errors import InputError
    from effkeras.fileio import check_writable

    if not FLAGS.models:
        raise InputError("--models is required, e.g. --models=quicknet,ern18")
    check_writable(FLAGS.output_dir, "--output_dir", directory=True)
    targets = FLAGS.targets
    if not targets:  # each registry model's own target, in the order met
        targets = list(
            dict.fromkeys(
                models.info(benchmark.parse_spec(spec)[0]).deploy
                for spec in FLAGS.models
                if not benchmark.is_file(spec)
            )
        )
        if not targets:
            raise InputError(
                f"--targets is required for files; known targets: {', '.join(deploy.names())}"
            )
    rows = benchmark.run(
        FLAGS.models,
        targets,
        input_shape=_cli.parse_shape(FLAGS.input_shape),
        num_classes=FLAGS.num_classes,
        threads=FLAGS.threads,
        runs=FLAGS.runs,
        warmup=FLAGS.warmup,
        baseline=FLAGS.baseline,
        dataset=FLAGS.dataset,
        data_dir=FLAGS.data_dir,
        calibration_samples=FLAGS.calibration_samples,
        lerp_form=FLAGS.lerp_form,
        output_dir=FLAGS.output_dir,
    )
    print(benchmark.table(rows, threads=FLAGS.threads, runs=FLAGS.runs))
    print(f"wrote {FLAGS.output_dir}/{benchmark.STEM}.json, .md and .png")
    failed = [row for row in rows if row.error]
    if failed:  # the report is written; the exit status still says that rows failed
        print(
            f"{len(failed)} of {len(rows)} rows failed (their error is in the table)",
            file=sys.stderr,
        )
        return ROWS_FAILED


if __name__ == "__main__":
    _cli.run(main)
