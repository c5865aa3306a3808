"""ImageNet-style folders: <data_dir>/{train,val}/<class name>/<image>.{jpg,jpeg,png}."""

import contextlib
import os

import tensorflow as tf

from effkeras.errors import InputError

SPLIT_FOLDERS = {"train": "train", "test": "val"}
EXTENSIONS = (".jpg", ".jpeg", ".png")
LAYOUT = ("expected <data_dir>/train/<class>/*.jpg and <data_dir>/val/<class>/*.jpg "
          "(one sub-folder per class, the same class folders in both splits)")


def list_files(data_dir, split):
    """(paths, labels, class names); labels index the sorted class folders of the train split."""
    if not data_dir:
        raise InputError(f"imagenet needs --data_dir: {LAYOUT}")
    train_dir = os.path.join(data_dir, "train")
    split_dir = os.path.join(data_dir, SPLIT_FOLDERS[split])
    for d in (train_dir, split_dir):
        if not os.path.isdir(d):
            raise InputError(f"{d} does not exist: {LAYOUT}")
    classes = sorted(e.name for e in os.scandir(train_dir) if e.is_dir())
    paths, labels = [], []
    for label, name in enumerate(classes):
        class_dir = os.path.join(split_dir, name)
        if not os.path.isdir(class_dir):
            continue
        for file in sorted(os.listdir(class_dir)):
            if file.lower().endswith(EXTENSIONS):
                paths.append(os.path.join(class_dir, file))
                labels.append(label)
    if len(classes) < 2 or not paths:
        raise InputError(f"{split_dir} has {len(classes)} class folders and {len(paths)} images: {LAYOUT}")
    return paths, labels, classes


def decode(path):
    image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
    image.set_shape([None, None, 3])
    return image


def first_undecodable(paths):
    """The first file TensorFlow cannot decode, or None (the slow path, after a decode error)."""
    for path in paths:
        try:
            decode(path)
        except tf.errors.InvalidArgumentError:
            return path
    return None


@contextlib.contextmanager
def decode_errors_as_input_errors(paths):
    """Turns TensorFlow's decode failure inside a pipeline into an InputError naming the file."""
    try:
        yield
    except tf.errors.InvalidArgumentError as e:
        bad = first_undecodable(paths)
        if bad is None:
            raise
        raise InputError(f"{bad} is corrupt or truncated and cannot be decoded; "
                         f"replace or delete it ({e.message.splitlines()[0]})") from None
