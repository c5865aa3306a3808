"""Evaluate a saved model: top-1/top-5 and confusion counts as JSON.

python -m apps.evaluate --checkpoint=runs/resnet20/model.keras [--dataset=fashion_mnist] [--split=test]
python -m apps.evaluate --checkpoint=resnet8_int8.tflite [--runtime=litert|tflm]   # a deployed file

ERN's ten-crop test-time augmentation (logits averaged over the corners, centre and their flips
of the image squashed to 308x308):
python -m apps.evaluate --checkpoint=runs/ern18/model.keras --dataset=imagenet \
    --data_dir=$HOME/imagenet --tta=tencrop --resize=308 --crop=288
"""

import json

from absl import flags

from apps import _cli

flags.DEFINE_string("checkpoint", None, "A .keras model file, or a .tflite file (run in "
                    "--runtime).")
flags.DEFINE_enum("runtime", None, ["litert", "tflm", "lce"], ".tflite files: LiteRT (default), "
                  "TFLite Micro, or LCE (default for files with LCE ops).")
flags.DEFINE_string("dataset", "fashion_mnist", "fashion_mnist, cifar10, cifar100, imagenet or synthetic.")
flags.DEFINE_string("data_dir", None, "Dataset directory (Fashion-MNIST defaults to the Debian package).")
flags.DEFINE_string("split", "test", "train or test.")
flags.DEFINE_integer("batch_size", 256, "Batch size.")
flags.DEFINE_string("output", None, "Also write the JSON here.")
flags.DEFINE_enum("tta", "none", ["none", "tencrop"],
                  "Test-time augmentation: none, or tencrop (average the logits of ten crops).")
flags.DEFINE_integer("resize", None, "Squash every image to resize x resize first (aspect "
                     "ratio not kept). Default: --crop; neither: the dataset's own resizing.")
flags.DEFINE_integer("crop", None, "Evaluate crop x crop crops (centre, or ten with "
                     "--tta=tencrop); at most --resize. Default: the model's input size.")
FLAGS = flags.FLAGS


def main(argv):
    from effkeras import evaluation
    from effkeras.errors import InputError
    from effkeras.fileio import check_writable, write_json

    if FLAGS.output:
        check_writable(FLAGS.output)
    if FLAGS.checkpoint and FLAGS.checkpoint.endswith(".tflite"):
        if FLAGS.tta != "none" or FLAGS.resize or FLAGS.crop:
            raise InputError("--tta, --resize and --crop apply to .keras models, not .tflite files")
        result = evaluation.evaluate_tflite(FLAGS.checkpoint, FLAGS.dataset, split=FLAGS.split,
                                            data_dir=FLAGS.data_dir, batch_size=FLAGS.batch_size,
                                            runtime=FLAGS.runtime)
    else:
        if FLAGS.runtime:
            raise InputError("--runtime applies to .tflite files")
        result = evaluation.evaluate_checkpoint(
            FLAGS.checkpoint, FLAGS.dataset, split=FLAGS.split, data_dir=FLAGS.data_dir,
            batch_size=FLAGS.batch_size, tta=FLAGS.tta, resize=FLAGS.resize, crop=FLAGS.crop)
    print(json.dumps(result), flush=True)  # printed first: a failed write loses nothing
    if FLAGS.output:
        write_json(FLAGS.output, result)


if __name__ == "__main__":
    _cli.run(main)
