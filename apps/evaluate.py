"""Evaluate a saved model: top-1/top-5 and confusion counts as JSON.

python -m apps.evaluate --checkpoint=runs/resnet20/model.keras [--dataset=fashion_mnist] [--split=test]
"""

import json
import os

from absl import flags

from apps import _cli

flags.DEFINE_string("checkpoint", None, "A .keras model file.")
flags.DEFINE_string("dataset", "fashion_mnist", "fashion_mnist, cifar10, cifar100, imagenet or synthetic.")
flags.DEFINE_string("data_dir", None, "Dataset directory (Fashion-MNIST defaults to the Debian package).")
flags.DEFINE_string("split", "test", "train or test.")
flags.DEFINE_integer("batch_size", 256, "Batch size.")
flags.DEFINE_string("output", None, "Also write the JSON here.")
FLAGS = flags.FLAGS


def main(argv):
    from effkeras import evaluation
    from effkeras.errors import InputError
    from effkeras.fileio import write_json

    if not FLAGS.checkpoint or not os.path.isfile(FLAGS.checkpoint):
        raise InputError(f"--checkpoint must name an existing .keras file, got {FLAGS.checkpoint!r}")
    result = evaluation.evaluate_checkpoint(FLAGS.checkpoint, FLAGS.dataset, split=FLAGS.split,
                                            data_dir=FLAGS.data_dir, batch_size=FLAGS.batch_size)
    if FLAGS.output:
        write_json(FLAGS.output, result)
    print(json.dumps(result))


if __name__ == "__main__":
    _cli.run(main)
