"""ImageNet-style folders as the standard sharded TFRecord files, or dataset_info.json for
shards written elsewhere (effkeras.data.tfrecord describes the format).

python -m tools.imagenet_shards --from_folder=$IMAGENET --output_dir=$SHARDS \
    [--train_shards=1024] [--validation_shards=128]
python -m tools.imagenet_shards --index=$SHARDS      # once, for shards made by other tools

--from_folder reads <DIR>/train/<class>/*.jpg and <DIR>/val/<class>/*.jpg and writes
train-XXXXX-of-NNNNN and validation-XXXXX-of-NNNNN (the file bytes unchanged, labels from 1,
the class folder as the synset) with dataset_info.json. Then train or evaluate with
--dataset=imagenet --data_dir=$SHARDS.
"""

import json
import os

from absl import flags

from apps import _cli

flags.DEFINE_string("from_folder", None, "ImageNet-style folders to write as shards.")
flags.DEFINE_string(
    "output_dir", None, "With --from_folder: where the shards go (a folder without shards)."
)
flags.DEFINE_integer("train_shards", 1024, "With --from_folder: shards of the train split.")
flags.DEFINE_integer("validation_shards", 128, "With --from_folder: shards of the val split.")
flags.DEFINE_string(
    "index",
    None,
    "Count the shards in this folder (one pass over their "
    "records) and write its dataset_info.json.",
)
FLAGS = flags.FLAGS


def main(argv):
    from effkeras import fileio
    from effkeras.data import tfrecord
    from effkeras.errors import InputError

    if bool(FLAGS.from_folder) == bool(FLAGS.index):
        raise InputError(
            "give --from_folder=DIR --output_dir=OUT (write shards) or --index=DIR "
            "(count existing shards), one of them"
        )
    if FLAGS.index:
        fileio.check_writable(os.path.join(FLAGS.index, tfrecord.INFO_FILE), "--index")
        info = tfrecord.index(FLAGS.index)
    else:
        if not FLAGS.output_dir:
            raise InputError("--from_folder needs --output_dir, the folder for the shards")
        fileio.check_writable(FLAGS.output_dir, "--output_dir", directory=True)
        info = tfrecord.write_shards(
            FLAGS.from_folder,
            FLAGS.output_dir,
            train_shards=FLAGS.train_shards,
            validation_shards=FLAGS.validation_shards,
            progress=True,
        )
    print(
        json.dumps(
            {
                "shards": info["shards"],
                "examples": info["examples"],
                "classes": len(info["class_names"]),
                "label_offset": info["label_offset"],
            }
        )
    )


if __name__ == "__main__":
    _cli.run(main)
