"""Parameters by precision, memory and MACs of a registered model, per layer and in total, with
its NN-Mass ("n/a" where not defined) and non-linear units per image under the table. A model
with early exits (several outputs, e.g. ranet_cifar) also gets a table of its exits: parameters
and FLOPs up to each exit (cumulative, counted as early-exit papers do) and each stage's MACs.

python -m apps.summary --model=resnet20 [--input_shape=32,32,3] [--json]
python -m apps.summary --list
"""

import json

from absl import flags

from apps import _cli

flags.DEFINE_string("model", None, "Registered model name.")
flags.DEFINE_string("input_shape", None, "H,W,C (default: the model's).")
flags.DEFINE_integer("num_classes", None, "Number of classes (default: the model's).")
flags.DEFINE_bool("json", False, "Print JSON instead of a table.")
flags.DEFINE_bool("list", False, "List the registered models and exit.")
FLAGS = flags.FLAGS


def main(argv):
    from effkeras import models
    from effkeras.graph import summary
    from effkeras.errors import InputError

    if FLAGS.list:
        for name in models.names():
            info = models.info(name)
            print(f"{name:28s} {info.family:12s} {info.deploy:8s} {info.paper}")
        return
    if not FLAGS.model:
        raise InputError("--model is required (or --list)")
    model = models.get(FLAGS.model, input_shape=_cli.parse_shape(FLAGS.input_shape),
                       num_classes=FLAGS.num_classes)
    print(json.dumps(summary.as_dict(model), indent=2) if FLAGS.json else summary.format_table(model))


if __name__ == "__main__":
    _cli.run(main)
