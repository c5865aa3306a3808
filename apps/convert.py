"""Convert a model for a deploy target, check it, print the report, write it atomically.

python -m apps.convert --model=NAME [--target=T] --output=model.tflite [--input_shape=H,W,C]
python -m apps.convert --checkpoint=model.keras [--target=T] --output=model.tflite \
    [--dataset=fashion_mnist] [--data_dir=DIR]        # calibrate and check on real images
python -m apps.convert --tflite=model_int8.tflite --target=ethos-u55-128 --output=model_vela.tflite

Targets: arm (LCE), float, float16, int8, tflm, ethos-u55-*|u65-*|u85-* (see --helpfull);
the default is the model's (`python -m apps.summary --list`; unregistered models: arm
when they have 1-bit kernels, else float). Beside the file: <file>.json for
app developers (input shape, dtype, range, quantization, class names), and the target's extra
files (tflm: <stem>_model_data.h/.cc; ethos-u: <stem>_int8.tflite, _summary.csv, _per-layer.csv).

A model with several outputs (early exits, e.g. RANet) converts stage by stage: float, float16
and int8 give one file with a signature per exit (stage_1 ... stage_K), tflm also gives one
file per stage (<stem>_stage<k>.tflite and its C array); <file>.json then describes the stages,
the state each hands on, their cumulative FLOPs and the --thresholds.
"""

import inspect
import json
import sys

from absl import flags

from apps import _cli

flags.DEFINE_string("model", None, "Registered model name (untrained weights).")
flags.DEFINE_string("checkpoint", None, "A .keras model file (instead of --model).")
flags.DEFINE_string("tflite", None, "An int8 .tflite file, for --target=tflm or ethos-u-*.")
flags.DEFINE_string("target", None, "Deploy target (default: the model's registry default).")
flags.DEFINE_string("output", None, "Where to write the flatbuffer (.tflite).")
flags.DEFINE_string("input_shape", None, "H,W,C for --model (default: the model's).")
flags.DEFINE_integer("num_classes", None, "Number of classes for --model (default: the model's).")
flags.DEFINE_string(
    "dataset",
    None,
    "Calibrate on this dataset's train split and check on its "
    "test split (fashion_mnist, cifar10, cifar100, imagenet, synthetic). "
    "Default: random inputs.",
)
flags.DEFINE_string("data_dir", None, "Directory of --dataset.")
flags.DEFINE_integer("calibration_samples", 200, "Images drawn for int8 calibration.")
flags.DEFINE_string(
    "calibration_data",
    None,
    "A .npy array (N, H, W, C) of calibration images in [0, 255], instead of --dataset.",
)
flags.DEFINE_integer(
    "sample_size", None, "Images the check runs on (default 32 of --dataset, else 4 random)."
)
flags.DEFINE_enum(
    "io",
    None,
    ["uint8", "int8", "float"],
    "int8 targets: the file's input/output type. uint8: camera pixels in (scale 1, zero point "
    "0), float out (default of --target=int8, for apps); int8 in and out (default of tflm "
    "and ethos-u*); float in and out (default of an early-exit model's int8 file).",
)
flags.DEFINE_enum(
    "outputs",
    None,
    ["probabilities", "logits"],
    "What the file returns: probabilities (a float softmax at the end; default of the app "
    "targets float, float16, int8 and arm) or logits (default of tflm, ethos-u* and "
    "early-exit files).",
)
flags.DEFINE_bool(
    "metadata",
    None,
    "Write TFLite Metadata (name, description, input normalisation, labels) into the file, as "
    "MediaPipe Tasks and Android Studio read it (an early-exit file: one subgraph entry per "
    "stage). Default: on for the app targets (float, float16, int8, arm), off for tflm and "
    "ethos-u*.",
)
flags.DEFINE_bool(
    "rgb_input",
    None,
    "Give a grayscale (one-channel) model an RGB input that it converts to luma first, as "
    "MediaPipe and the Task Library feed RGB only. Default: on when --metadata is.",
)
flags.DEFINE_bool(
    "early_exit",
    True,
    "A model with several outputs (early exits): one signature "
    "per exit stage (tflm: one file per stage); --noearly_exit converts the graph of "
    "all exits at once.",
)
flags.DEFINE_string(
    "thresholds",
    None,
    "Early-exit models: a thresholds JSON file (exit k is "
    "taken when the softmax maximum reaches thresholds[k-1]) to write into the "
    "file's description.",
)
flags.DEFINE_bool(
    "allow_float_fallback",
    False,
    "Keep layers the target cannot run in low precision in float instead of failing.",
)
flags.DEFINE_bool(
    "allow_cpu_ops",
    False,
    "ethos-u: keep ops Vela cannot put on the NPU for "
    "the Cortex-M (TFLite Micro) instead of failing.",
)
flags.DEFINE_enum(
    "w1a2_form",
    "auto",
    ["auto", "thermometer", "bitplane"],
    "arm: how w1a2 convs (ERN) become binary convs; auto picks the faster per layer.",
)
flags.DEFINE_enum(
    "lerp_form",
    "gather",
    ["gather", "table65", "relu_sum"],
    "Learned table activations (LERP-PSA, B-spline): `gather` (GATHER; exact 256-entry int8 "
    "tables on int8 targets), `table65` (int8 targets: 65 entries per channel read by "
    "interpolation, a quarter of the table bytes) or `relu_sum` (a sum of ReLUs, for "
    "runtimes without GATHER; approximate in int8).",
)
flags.DEFINE_float(
    "max_code_step",
    None,
    "int8 targets, learned tables: the most grid segments "
    "between adjacent int8 input codes before a table is refused as ambiguous "
    "(default 8).",
)
flags.DEFINE_bool(
    "int4_weights",
    None,
    "tflm: store a binary net's binary weights as INT4 codes, two per byte (half their "
    "flash; the int8 file is written beside it as <stem>_int8.tflite).",
)
flags.DEFINE_string("system_config", None, "ethos-u: Vela system config (Arm/vela.ini).")
flags.DEFINE_string("memory_mode", None, "ethos-u: Vela memory mode (Arm/vela.ini).")
flags.DEFINE_enum("optimise", "Performance", ["Performance", "Size"], "ethos-u: Vela's goal.")
flags.DEFINE_bool("json", False, "Print the report as JSON.")
flags.DEFINE_string("report", None, "Also write the report as JSON to this file.")
FLAGS = flags.FLAGS

# Flags that only some targets take, named as the target functions' keyword options.
TARGET_OPTIONS = (
    "io",
    "allow_float_fallback",
    "allow_cpu_ops",
    "w1a2_form",
    "system_config",
    "memory_mode",
    "optimise",
    "max_code_step",
    "int4_weights",
)
# Options of the int8 conversion that the targets built on it (tflm, ethos-u*) pass on.
INT8_OPTIONS = ("max_code_step",)
# Targets whose files go into apps (Android, Linux): probabilities, metadata, uint8 pixels.
APP_TARGETS = ("float", "float16", "int8", "arm")


def load_model():
    """(Keras model or int8 flatbuffer bytes, registry name)."""
    from effkeras import models, saving
    from effkeras.errors import InputError

    given = [name for name in ("model", "checkpoint", "tflite") if getattr(FLAGS, name)]
    if len(given) != 1:
        raise InputError(
            "give exactly one of --model=NAME, --checkpoint=FILE.keras or --tflite=FILE.tflite"
        )
    if (FLAGS.input_shape or FLAGS.num_classes is not None) and not FLAGS.model:
        raise InputError("--input_shape and --num_classes go with --model, not --checkpoint")
    if FLAGS.model:
        return models.get(
            FLAGS.model,
            input_shape=_cli.parse_shape(FLAGS.input_shape),
            num_classes=FLAGS.num_classes,
        ), models.info(FLAGS.model).name
    if FLAGS.checkpoint:
        model = saving.load_model(FLAGS.checkpoint)
        return model, model.name
    from effkeras.deploy.flatbuffer import read_file

    return read_file(FLAGS.tflite), "model"


def target_options(target, model):
    """The flags set for this target, as its keyword options; InputError for one it ignores."""
    from effkeras.errors import InputError

    accepted = inspect.signature(target.convert).parameters
    passes_on = any(p.kind == p.VAR_KEYWORD for p in accepted.values())  # **int8_options
    options = {}
    for option in TARGET_OPTIONS:
        if option in accepted or (passes_on and option in INT8_OPTIONS):
            if getattr(FLAGS, option) is not None:  # None: the target's default
                options[option] = getattr(FLAGS, option)
        elif FLAGS[option].present:
            raise InputError(f"--{option} does not apply to --target={target.name}")
    if (
        isinstance(model, bytes)
        and target.name not in ("tflm",)
        and not target.name.startswith("ethos-u")
    ):
        raise InputError(
            f"--tflite takes an int8 file to --target=tflm or ethos-u-*, not "
            f"--target={target.name}; convert a --model or --checkpoint instead"
        )
    return options


def check_table_flags(model, name):
    """--lerp_form and --max_code_step act on learned table activations: InputError without."""
    from effkeras.errors import InputError
    from effkeras.layers.activations import BSplineActivation, LerpPSA, LerpTable

    table_layers = (LerpPSA, BSplineActivation, LerpTable)  # ResPSA is a LerpPSA
    for flag in ("lerp_form", "max_code_step"):
        if FLAGS[flag].present and (
            isinstance(model, bytes) or not any(isinstance(x, table_layers) for x in model.layers)
        ):
            raise InputError(
                f"--{flag} applies to models with learned table activations (LERP-PSA, "
                f"B-spline) converted from Keras; "
                f"{'a .tflite file' if isinstance(model, bytes) else name} has none to convert"
            )


def real_data(model, target):
    """(calibration images, sample images, class names) from --dataset / --calibration_data;
    the sample is --sample_size random images without --dataset (None: the target's own)."""
    from effkeras import data
    from effkeras.deploy import verify
    from effkeras.errors import InputError

    calibration = sample = class_names = None
    for name in ("calibration_data", "calibration_samples"):
        if FLAGS[name].present and (isinstance(model, bytes) or not target.quantizes):
            raise InputError(
                f"--{name} does not apply here: only a Keras model converted for a quantizing "
                f"target (int8, tflm, ethos-u*) is calibrated, not "
                f"{'a .tflite file' if isinstance(model, bytes) else f'--target={target.name}'}"
            )
    if FLAGS.calibration_data:
        calibration = verify.read_images(FLAGS.calibration_data, model, "--calibration_data")
    if FLAGS.dataset:
        if isinstance(model, bytes):
            raise InputError(
                "--dataset goes with --model or --checkpoint (a Keras model to "
                "calibrate and check against)"
            )

        def take(split, count):
            return data.take(
                FLAGS.dataset,
                split,
                count,
                input_shape=model.input_shape[1:],
                data_dir=FLAGS.data_dir,
                num_classes=model.output_shape[-1],
            )

        if calibration is None:
            calibration, class_names = take("train", FLAGS.calibration_samples)
        sample, class_names = take("test", FLAGS.sample_size or 32)
    elif FLAGS.sample_size and not isinstance(model, bytes):
        sample = verify.random_sample(model, size=FLAGS.sample_size)
    return calibration, sample, class_names


def app_options(target_name, model, options):
    """Sets `options` for an app's file (outputs, io, rgb_input) from the flags and the target's
    defaults; returns whether to write TFLite Metadata."""
    import keras

    from effkeras.errors import InputError

    keras_model = isinstance(model, keras.Model)
    single = keras_model and len(model.outputs) == 1
    app = target_name in APP_TARGETS and single
    # Early-exit files get metadata too (a subgraph's per stage), but keep logits and float io.
    metadata = target_name in APP_TARGETS and keras_model
    metadata = metadata if FLAGS.metadata is None else FLAGS.metadata
    if metadata and not keras_model:
        raise InputError("--metadata is written from a Keras model; this is a .tflite file")
    outputs = FLAGS.outputs or ("probabilities" if app else "logits")
    if outputs != "logits":
        options["outputs"] = outputs
    if target_name == "int8" and app and FLAGS.io is None:
        options["io"] = "uint8" if outputs == "probabilities" else "int8"
    rgb = FLAGS.rgb_input if FLAGS.rgb_input is not None else metadata
    if rgb and single and model.input_shape[-1] == 1:
        options["rgb_input"] = True
    elif FLAGS.rgb_input:
        raise InputError("--rgb_input takes a Keras model with a one-channel input")
    return metadata


def main(argv):
    from effkeras import deploy
    from effkeras.errors import InputError
    from effkeras.fileio import check_writable, write_json

    if not FLAGS.output:
        raise InputError("--output=FILE.tflite is required")
    check_writable(FLAGS.output)  # before the work, not after it
    if FLAGS.report:
        check_writable(FLAGS.report, "--report")
    for name in ("calibration_samples", "sample_size"):
        if getattr(FLAGS, name) is not None and getattr(FLAGS, name) < 1:
            raise InputError(f"--{name} must be a positive integer")
    if FLAGS.target and FLAGS.target not in deploy.names():
        raise InputError(
            f"--target={FLAGS.target} is not a deploy target; known targets: "
            f"{', '.join(deploy.names())}"
        )
    model, name = load_model()
    if isinstance(model, bytes) and not FLAGS.target:
        raise InputError(
            f"--tflite needs --target (tflm or ethos-u-*); known targets: "
            f"{', '.join(deploy.names())}"
        )
    target_name = FLAGS.target or deploy.default_target(model, name)
    target = deploy.get(target_name)
    options = target_options(target, model)
    check_table_flags(model, name)
    calibration, sample, class_names = real_data(model, target)
    if FLAGS["early_exit"].present:  # else: stage by stage when the model has several outputs
        options["early_exit"] = FLAGS.early_exit
    if FLAGS["lerp_form"].present:
        options["lerp_form"] = FLAGS.lerp_form
    metadata = app_options(target_name, model, options)
    flatbuffer, result = deploy.convert(
        model,
        target_name,
        calibration=calibration,
        sample=sample,
        thresholds=FLAGS.thresholds,
        **options,
    )
    if calibration is not None and hasattr(result, "calibration") and not result.qat:
        result.calibration = (
            f"{len(calibration)} images of {FLAGS.dataset} (train)"
            if FLAGS.dataset and not FLAGS.calibration_data
            else f"{len(calibration)} images of {FLAGS.calibration_data}"
        )
    info = None
    if metadata:
        info = deploy.app_info(
            model, name, class_names=class_names, dataset=FLAGS.dataset, report=result
        )
        flatbuffer = deploy.with_metadata(flatbuffer, info)
        result.size_bytes = len(flatbuffer)
    deploy.save(
        FLAGS.output,
        flatbuffer,
        result,
        deploy.app_metadata(
            flatbuffer, result, model_name=name, class_names=class_names, info=info
        ),
    )
    summary = {**result.as_dict(), "output": FLAGS.output}
    if FLAGS.report:
        write_json(FLAGS.report, summary)
    if FLAGS.json:
        print(json.dumps(summary))
    else:
        print(f"{result.format()}\nwrote {FLAGS.output}")
    if getattr(result, "sensitivity", None) is not None:
        print(
            f"warning: the flatbuffer matches Keras only to {result.max_rel_diff:.2g}, within the "
            f"model's own sensitivity to input noise ({result.sensitivity:.2g}): binary layers "
            f"flip signs at near-ties. Untrained or deep binary nets do this; a trained model "
            f"usually matches closer.",
            file=sys.stderr,
        )


if __name__ == "__main__":
    _cli.run(main)
