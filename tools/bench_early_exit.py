"""Early exit on a deployed file: latency per image at several thresholds against running every
stage (the last exit alone answers), side by side in one run.

python -m tools.bench_early_exit --tflite=runs/ranet/ranet_int8.tflite --budgets=20e6,35e6 \
    [--dataset=fashion_mnist] [--validation_size=5000] [--images=1000] [--output_dir=DIR]

The file is an early-exit .tflite (apps.convert on a multi-exit model: one signature per
stage). For each budget the thresholds are calibrated on the file's own confidences over the
held-out validation split (training images the model did not train on, when it was trained with
the same --validation_size), as RANet's budgeted batch classification does (arXiv 2003.07326
§3.4), then every setting classifies the same test images in LiteRT, the settings taking turns
image batch by image batch so that the machine's load falls on all alike. Reported per setting:
mean milliseconds per image, top-1, average FLOPs and the share of images leaving at each exit.

Regenerates docs/ranet/early_exit_latency.md, .json and .png (--output_dir=docs/ranet).
"""

import os

import numpy as np
from absl import flags

from apps import _cli
from tools import _report

flags.DEFINE_string("tflite", None, "An early-exit .tflite file (one signature per stage).")
flags.DEFINE_list("budgets", ["20e6", "35e6"], "Average FLOPs per image to calibrate for.")
flags.DEFINE_string("dataset", "fashion_mnist", "Dataset of the validation and test images.")
flags.DEFINE_string("data_dir", None, "Dataset directory.")
flags.DEFINE_integer(
    "validation_size",
    5000,
    "Held-out training images the thresholds are "
    "calibrated on (the run's apps.train --validation_size).",
)
flags.DEFINE_integer("images", 1000, "Test images timed per setting.")
flags.DEFINE_integer("chunk", 50, "Images per turn.")
flags.DEFINE_string("output_dir", None, "Write early_exit_latency.md, .json and .png here.")
FLAGS = flags.FLAGS

ALL_STAGES = "all stages (last exit)"


def arrays(split, shape, count):
    """(images, labels) numpy arrays of the first `count` examples of `split`."""
    from effkeras import data

    loaded = data.load(
        FLAGS.dataset,
        split,
        input_shape=shape,
        batch_size=256,
        data_dir=FLAGS.data_dir,
        validation_size=FLAGS.validation_size,
    )
    images, labels = [], []
    for x, y in loaded.dataset:
        images.append(x.numpy())
        labels.append(y.numpy())
        if sum(len(i) for i in images) >= count:
            break
    return np.concatenate(images)[:count], np.concatenate(labels)[:count]


def settings(runner, validation):
    """{name: thresholds}: one per budget (calibrated on `validation`), and every stage run."""
    found = {}
    for budget in FLAGS.budgets:
        flops = float(budget)
        found[f"budget {flops / 1e6:g} M FLOPs"] = runner.calibrate(validation, budget=flops)
    found[ALL_STAGES] = [1e8] * (runner.num_exits - 1) + [0.0]
    return found


def measure(runner, named, images, labels):
    """{name: row} with every setting taking turns over chunks of `images`
    (`benchmark.time_interleaved`: round k classifies chunk k under every setting in turn)."""
    from effkeras import benchmark

    chunks = [images[start : start + FLAGS.chunk] for start in range(0, len(images), FLAGS.chunk)]
    decisions = {name: [] for name in named}

    def setting(name):
        pending = iter(chunks)

        def classify():
            runner.set_thresholds(named[name])
            decisions[name].append(runner.predict(next(pending)))

        return classify

    times = benchmark.time_interleaved(
        {name: setting(name) for name in named}, runs=len(chunks), warmup=0, progress=False
    )
    rows = {}
    for name in named:
        predicted = np.concatenate([d.predictions for d in decisions[name]])
        exits = np.concatenate([d.exits for d in decisions[name]])
        costs = np.concatenate([d.costs for d in decisions[name]])
        rows[name] = {
            "ms_per_image": sum(times[name]) / len(images),
            "top1": float(np.mean(predicted == labels)),
            "flops": float(np.mean(costs)),
            "exit_fractions": (
                np.bincount(exits - 1, minlength=runner.num_exits) / len(exits)
            ).tolist(),
            "thresholds": [float(t) for t in named[name]],
        }
    return rows


def table(rows):
    base = rows[ALL_STAGES]["ms_per_image"]
    lines = [
        "| setting | ms / image | x all stages | top-1 | avg FLOPs | exit fractions |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        lines.append(
            f"| {name} | {r['ms_per_image']:.2f} | {r['ms_per_image'] / base:.2f} | "
            f"{100 * r['top1']:.2f}% | {r['flops'] / 1e6:.1f} M | "
            f"{' '.join(f'{f:.2f}' for f in r['exit_fractions'])} |"
        )
    return "\n".join(lines)


def plot(rows, path):
    with _report.figure(path, figsize=(6, 4)) as (_, axis):
        for name, r in rows.items():
            axis.scatter(r["ms_per_image"], 100 * r["top1"])
            axis.annotate(name, (r["ms_per_image"], 100 * r["top1"]), fontsize=8)
        axis.set(
            xlabel="ms per image (LiteRT, this machine)",
            ylabel="top-1 %",
            title="early exit: accuracy against latency",
        )


def main(argv):
    from effkeras import fileio
    from effkeras.deploy import early_exit
    from effkeras.errors import InputError

    if not FLAGS.tflite:
        raise InputError("--tflite is required: an early-exit file from apps.convert")
    if FLAGS.images < 1 or FLAGS.chunk < 1:
        raise InputError("--images and --chunk must be positive")
    if FLAGS.output_dir:
        fileio.check_writable(FLAGS.output_dir, "--output_dir", directory=True)
    runner = early_exit.Runner(FLAGS.tflite)
    shape = tuple(runner.stage_inputs(1)[next(iter(runner.stage_inputs(1)))][0])
    validation, _ = arrays("validation", shape, FLAGS.validation_size)
    images, labels = arrays("test", shape, FLAGS.images)
    rows = measure(runner, settings(runner, validation), images, labels)
    text = table(rows)
    print(text)
    if FLAGS.output_dir:
        _report.write(FLAGS.output_dir, "early_exit_latency", text, rows)
        plot(rows, os.path.join(FLAGS.output_dir, "early_exit_latency.png"))


if __name__ == "__main__":
    _cli.run(main)
