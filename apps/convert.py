"""Convert a model to a deployable flatbuffer, check it, print the report, write it atomically.

python -m apps.convert --model=NAME --target=arm --output=model.tflite [--input_shape=H,W,C]
    [--num_classes=N] [--allow_float_fallback] [--w1a2_form=auto] [--json]
python -m apps.convert --checkpoint=model.keras --target=arm --output=model.tflite
"""

import json
import sys

from absl import flags

from apps import _cli


def _lce_arm(model, allow_float_fallback):
    """LCE for ARM; w1a2 convs (ERN) are rewritten as binary convs first and the result is checked
    against the model as loaded (effkeras/deploy/restructure.py)."""
    from effkeras.deploy import lce

    return lce.convert(model, target="arm", allow_float_fallback=allow_float_fallback,
                       w1a2_form=FLAGS.w1a2_form)


# One conversion path per target: target -> fn(model, allow_float_fallback) -> (bytes, report).
TARGETS = {"arm": _lce_arm}

flags.DEFINE_string("model", None, "Registered model name (untrained weights).")
flags.DEFINE_string("checkpoint", None, "A .keras model file (instead of --model).")
flags.DEFINE_enum("target", "arm", list(TARGETS), "arm: Larq Compute Engine for ARM CPUs.")
flags.DEFINE_string("output", None, "Where to write the flatbuffer (.tflite).")
flags.DEFINE_string("input_shape", None, "H,W,C for --model (default: the model's).")
flags.DEFINE_integer("num_classes", None, "Number of classes for --model (default: the model's).")
flags.DEFINE_bool("allow_float_fallback", False,
                  "Keep binary layers the target cannot accelerate in float instead of failing.")
flags.DEFINE_enum("w1a2_form", "auto", ["auto", "thermometer", "bitplane"],
                  "arm: how w1a2 convs (ERN) become binary convs; auto picks the faster per layer.")
flags.DEFINE_bool("json", False, "Print the report as JSON.")
flags.DEFINE_string("report", None, "Also write the report as JSON to this file.")
FLAGS = flags.FLAGS


def load_model():
    from effkeras import models
    from effkeras.errors import InputError

    if bool(FLAGS.model) == bool(FLAGS.checkpoint):
        raise InputError("give exactly one of --model=NAME or --checkpoint=FILE.keras")
    if FLAGS.model:
        return models.get(FLAGS.model, input_shape=_cli.parse_shape(FLAGS.input_shape),
                          num_classes=FLAGS.num_classes)
    if FLAGS.input_shape or FLAGS.num_classes is not None:
        raise InputError("--input_shape and --num_classes go with --model, not --checkpoint")
    return models.load_checkpoint(FLAGS.checkpoint)


def main(argv):
    from effkeras.deploy import report
    from effkeras.errors import InputError
    from effkeras.fileio import write_json

    if not FLAGS.output:
        raise InputError("--output=FILE.tflite is required")
    model = load_model()
    flatbuffer, result = TARGETS[FLAGS.target](model, FLAGS.allow_float_fallback)
    report.save(FLAGS.output, flatbuffer)
    summary = {**result.as_dict(), "output": FLAGS.output}
    if FLAGS.report:
        write_json(FLAGS.report, summary)
    if FLAGS.json:
        print(json.dumps(summary))
    else:
        print(f"{result.format()}\nwrote {FLAGS.output}")
    if getattr(result, "sensitivity", None) is not None:
        print(f"warning: the flatbuffer matches Keras only to {result.max_rel_diff:.2g}, within the "
              f"model's own sensitivity to input noise ({result.sensitivity:.2g}): binary layers "
              f"flip signs at near-ties. Untrained or deep binary nets do this; a trained model "
              f"usually matches closer.", file=sys.stderr)


if __name__ == "__main__":
    _cli.run(main)
