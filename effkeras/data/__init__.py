"""Datasets as batched tf.data pipelines of (float32 image in [0, 255], int32 label).

Images are fitted to the model's input shape (padded or resized; grayscale tiled to RGB when the
model wants 3 channels). Models normalise their own input, so a deployed model takes raw pixels.
"""

import contextlib
import dataclasses

import tensorflow as tf

from effkeras.data import augment, cifar, fashion_mnist, imagenet, synthetic
from effkeras.errors import InputError

SPLITS = ("train", "test")
# name -> (number of classes or None when the caller chooses, default train augmentations)
DATASETS = {
    "fashion_mnist": (10, ("crop", "flip")),
    "cifar10": (10, ("crop", "flip")),
    "cifar100": (100, ("crop", "flip")),
    "imagenet": (None, ("random_resized_crop", "flip")),
    "synthetic": (None, ("crop", "flip")),
}


@dataclasses.dataclass
class DataSplit:
    dataset: tf.data.Dataset
    num_examples: int
    num_classes: int
    class_names: list
    errors_as_input_errors: object = contextlib.nullcontext  # wrap iteration: bad files -> InputError


def names():
    return sorted(DATASETS)


def _array_pipeline(images, labels, shape, augmentations, seed):
    height, width, channels = shape
    photometric = _photometric(augmentations, seed)

    def prepare(image, label):
        image = augment.match_channels(tf.cast(image, tf.float32), channels)
        if "squash" in augmentations:
            image = augment.squash(image, height, width)
        else:
            image = augment.fit_to_shape(image, height, width)
        if "crop" in augmentations:
            image = augment.pad_and_random_crop(image, seed)
        return photometric(image), label

    return tf.data.Dataset.from_tensor_slices((images, labels)), prepare


def _photometric(augmentations, seed):
    """Flip, then the colour/geometry steps in ERN's order, then PCA lighting (RGB only), then
    random erasing (any channels; last, as timm erases the normalised image)."""
    steps = augment.keras_augmentations(augmentations, seed)  # built only when asked for
    erasing = augment.random_erasing(seed) if "random_erasing" in augmentations else None

    def apply(image):
        if "flip" in augmentations:
            image = tf.image.random_flip_left_right(image, seed)
        if image.shape[-1] == 3:
            for layer in steps:
                image = layer(image)
            if "lighting" in augmentations:
                image = augment.lighting(image, seed)
        if erasing is not None:
            image = erasing(image)
        return image

    return apply


def _file_pipeline(paths, labels, shape, augmentations, seed):
    height, width, channels = shape
    photometric = _photometric(augmentations, seed)

    def prepare(path, label):
        image = tf.cast(imagenet.decode(path), tf.float32)
        if "random_resized_crop" in augmentations:
            image = augment.random_resized_crop(image, height, width, seed)
        elif "inception_crop" in augmentations:
            image = augment.inception_crop(image, height, width, seed)
        elif "squash" in augmentations:
            image = augment.squash(image, height, width)
        else:
            image = augment.resize_and_centre_crop(image, height, width)
        return augment.match_channels(photometric(image), channels), label

    return tf.data.Dataset.from_tensor_slices((paths, labels)), prepare


def load(name, split, *, input_shape, batch_size, data_dir=None, augment_with=None,
         shuffle=None, num_classes=None, seed=0):
    """A DataSplit of `name` ('fashion_mnist', 'cifar10', 'cifar100', 'imagenet', 'synthetic').

    augment_with: augmentation names; None means the dataset's standard train set for 'train'
    and none for 'test'. shuffle defaults to True for 'train'.
    """
    if name not in DATASETS:
        raise InputError(f"unknown dataset {name!r}; choose from {', '.join(names())}")
    split = {"val": "test", "validation": "test"}.get(split, split)
    if split not in SPLITS:
        raise InputError(f"unknown split {split!r}; choose from train, test")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"batch size must be a positive int, got {batch_size!r}")
    fixed_classes, default_augmentations = DATASETS[name]
    if augment_with is None:
        augment_with = default_augmentations if split == "train" else ()
    augmentations = augment.check_augmentations(augment_with)
    shuffle = split == "train" if shuffle is None else shuffle
    shape = tuple(input_shape)
    errors = contextlib.nullcontext

    if name == "imagenet":
        paths, labels, class_names = imagenet.list_files(data_dir, split)
        dataset, prepare = _file_pipeline(paths, labels, shape, augmentations, seed)
        errors = lambda: imagenet.decode_errors_as_input_errors(paths)  # noqa: E731
    else:
        if name == "fashion_mnist":
            images, labels = fashion_mnist.read(data_dir, split)
            class_names = fashion_mnist.CLASS_NAMES
        elif name == "synthetic":
            if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(num_classes, int)
                                            or num_classes < 1):
                raise InputError(f"synthetic data needs a positive number of classes, got {num_classes!r}")
            images, labels = synthetic.read(shape, num_classes or 10, split, seed)
            class_names = [str(i) for i in range(num_classes or 10)]
        else:
            images, labels = cifar.read(data_dir, split, fixed_classes)
            class_names = [str(i) for i in range(fixed_classes)]
        dataset, prepare = _array_pipeline(images, labels, shape, augmentations, seed)

    count = len(labels)
    if shuffle:
        dataset = dataset.shuffle(count, seed=seed, reshuffle_each_iteration=True)
    dataset = (dataset.map(prepare, num_parallel_calls=tf.data.AUTOTUNE)
               .batch(batch_size, drop_remainder=split == "train" and count >= batch_size)
               .prefetch(tf.data.AUTOTUNE))
    return DataSplit(dataset, count, len(class_names), list(class_names), errors)
