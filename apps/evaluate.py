"""Evaluate a saved model: top-1/top-5 and confusion counts as JSON.

python -m apps.evaluate --checkpoint=runs/resnet20/model.keras [--dataset=fashion_mnist] \
    [--split=test]
python -m apps.evaluate --checkpoint=resnet8_int8.tflite [--runtime=litert|tflm|lce|mediapipe]

ERN's ten-crop test-time augmentation (logits averaged over the corners, centre and their flips
of the image squashed to 308x308):
python -m apps.evaluate --checkpoint=runs/ern18/model.keras --dataset=imagenet \
    --data_dir=$HOME/imagenet --tta=tencrop --resize=308 --crop=288

An early-exit model (RANet): anytime prediction (each exit's accuracy and cumulative FLOPs) and
budgeted batch classification (thresholds calibrated on training images held out as the
validation split, swept over 39 points; --budget: thresholds for an average cost), written to
--output with a table (<stem>.md) and plots (<stem>_anytime.png, <stem>_budgeted.png); the
thresholds for the early-exit runtime with --thresholds_out:
python -m apps.evaluate --checkpoint=runs/ranet_cifar/model.keras --dataset=cifar10 \
    --data_dir=$HOME/data --early_exit=anytime,budgeted --budget=3e7 \
    --output=runs/ranet_cifar/early_exit.json --thresholds_out=runs/ranet_cifar/thresholds.json
"""

import json

from absl import flags

from apps import _cli

flags.DEFINE_string(
    "checkpoint", None, "A .keras model file, or a .tflite file (run in --runtime)."
)
flags.DEFINE_enum(
    "runtime",
    None,
    ["litert", "tflm", "lce", "mediapipe"],
    ".tflite files: LiteRT (default), TFLite Micro, LCE (default for files with LCE ops), or "
    "MediaPipe's ImageClassifier (an app's file, with TFLite Metadata).",
)
flags.DEFINE_string(
    "dataset", "fashion_mnist", "fashion_mnist, cifar10, cifar100, imagenet or synthetic."
)
flags.DEFINE_string(
    "data_dir", None, "Dataset directory (Fashion-MNIST defaults to the Debian package)."
)
flags.DEFINE_string(
    "split",
    "test",
    "train, test, or validation (--validation_size training "
    "images held out; train then leaves them out).",
)
flags.DEFINE_integer("batch_size", 256, "Batch size.")
flags.DEFINE_string("output", None, "Also write the JSON here.")
flags.DEFINE_enum(
    "tta",
    "none",
    ["none", "tencrop"],
    "Test-time augmentation: none, or tencrop (average the logits of ten crops).",
)
flags.DEFINE_integer(
    "resize",
    None,
    "Squash every image to resize x resize first (aspect "
    "ratio not kept). Default: --crop; neither: the dataset's own resizing.",
)
flags.DEFINE_integer(
    "crop",
    None,
    "Evaluate crop x crop crops (centre, or ten with "
    "--tta=tencrop); at most --resize. Default: the model's input size.",
)
flags.DEFINE_list(
    "early_exit",
    None,
    "Early-exit evaluation of a multi-exit .keras model: "
    "anytime (per exit: top-1/top-5 and cumulative FLOPs) and/or budgeted "
    "(thresholds calibrated on the validation split, 39-point sweep, scored on "
    "--split). Needs --output.",
)
flags.DEFINE_integer(
    "validation_size",
    None,
    "Training images held out as the validation split "
    "(budgeted calibration, --split=validation). Default: 5000 (ImageNet 50000).",
)
flags.DEFINE_float(
    "budget",
    None,
    "Budgeted: also find the thresholds that spend this many "
    "FLOPs per image on average (bisection on the validation split).",
)
flags.DEFINE_integer(
    "sweep_point",
    None,
    "Budgeted: the sweep point 1..39 (r = point / 20) whose thresholds --thresholds_out writes.",
)
flags.DEFINE_string(
    "thresholds_out",
    None,
    "Budgeted: write the thresholds of --budget or "
    "--sweep_point to this JSON file (read by the early-exit runtime).",
)
flags.DEFINE_string(
    "thresholds",
    None,
    "Budgeted: also score the thresholds of this file (written by --thresholds_out).",
)
FLAGS = flags.FLAGS
BUDGETED_FLAGS = ("budget", "sweep_point", "thresholds_out", "thresholds")


def evaluate_early_exit():
    from effkeras import early_exit
    from effkeras.errors import InputError
    from effkeras.evaluation import early_exit as early_exit_eval
    from effkeras.fileio import check_writable

    if (FLAGS.checkpoint or "").endswith(".tflite"):
        raise InputError(
            "--early_exit evaluates a .keras checkpoint (the exits' FLOPs are "
            "counted on the Keras model)"
        )
    if FLAGS.tta != "none" or FLAGS.resize or FLAGS.crop or FLAGS.runtime:
        raise InputError(
            "--tta, --resize, --crop and --runtime do not apply to --early_exit: "
            "exits are scored at the model's input size, where their FLOPs count"
        )
    if not FLAGS.output:
        raise InputError(
            "--early_exit writes its JSON, table and plots beside --output; give --output=FILE.json"
        )
    early_exit_eval.check_request(
        FLAGS.early_exit, split=FLAGS.split, **{flag: FLAGS[flag].value for flag in BUDGETED_FLAGS}
    )
    for path in early_exit_eval.report_paths(FLAGS.output).values():
        check_writable(path)
    if FLAGS.thresholds_out:
        check_writable(FLAGS.thresholds_out, "--thresholds_out")
    result = early_exit_eval.evaluate_checkpoint(
        FLAGS.checkpoint,
        FLAGS.dataset,
        modes=FLAGS.early_exit,
        split=FLAGS.split,
        data_dir=FLAGS.data_dir,
        batch_size=FLAGS.batch_size,
        validation_size=FLAGS.validation_size,
        budget=FLAGS.budget,
        sweep_point=FLAGS.sweep_point,
        thresholds=FLAGS.thresholds,
    )
    print(json.dumps(result), flush=True)  # printed first: a failed write loses nothing
    early_exit_eval.write_report(result, FLAGS.output)
    if FLAGS.thresholds_out:
        early_exit.write_thresholds(FLAGS.thresholds_out, early_exit_eval.thresholds_record(result))


def main(argv):
    from effkeras import evaluation
    from effkeras.errors import InputError
    from effkeras.fileio import check_writable, write_json

    if FLAGS.output:
        check_writable(FLAGS.output)
    if FLAGS.early_exit:
        return evaluate_early_exit()
    for flag in BUDGETED_FLAGS:
        if FLAGS[flag].value is not None:
            raise InputError(f"--{flag} goes with --early_exit=budgeted")
    if FLAGS.checkpoint and FLAGS.checkpoint.endswith(".tflite"):
        if FLAGS.tta != "none" or FLAGS.resize or FLAGS.crop:
            raise InputError("--tta, --resize and --crop apply to .keras models, not .tflite files")
        result = evaluation.evaluate_tflite(
            FLAGS.checkpoint,
            FLAGS.dataset,
            split=FLAGS.split,
            data_dir=FLAGS.data_dir,
            batch_size=FLAGS.batch_size,
            runtime=FLAGS.runtime,
            validation_size=FLAGS.validation_size,
        )
    else:
        if FLAGS.runtime:
            raise InputError("--runtime applies to .tflite files")
        result = evaluation.evaluate_checkpoint(
            FLAGS.checkpoint,
            FLAGS.dataset,
            split=FLAGS.split,
            data_dir=FLAGS.data_dir,
            batch_size=FLAGS.batch_size,
            tta=FLAGS.tta,
            resize=FLAGS.resize,
            crop=FLAGS.crop,
            validation_size=FLAGS.validation_size,
        )
    print(json.dumps(result), flush=True)  # printed first: a failed write loses nothing
    if FLAGS.output:
        write_json(FLAGS.output, result)


if __name__ == "__main__":
    _cli.run(main)
