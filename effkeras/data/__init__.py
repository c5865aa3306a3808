"""Datasets as batched tf.data pipelines of (float32 image in [0, 255], int32 label).

Images are fitted to the model's input shape (padded or resized; grayscale tiled to RGB when the
model wants 3 channels). Models normalise their own input, so a deployed model takes raw pixels.

Splits: "train" and "test" are the dataset's own files ("val" is another name for "test", the
name of ImageNet's folder). "validation" is held out of the training files: a fixed set of
`validation_size` training examples, the same in every run, prepared as test images (no
augmentation), for what must not see the test split (early-exit thresholds); "train" with the
same validation_size leaves them out.

ImageNet is read from folders (effkeras.data.imagenet) or, where --data_dir holds them, from
the standard sharded TFRecord files (effkeras.data.tfrecord; no "validation" split there).
"""

import contextlib
import dataclasses

import numpy as np
import tensorflow as tf

from effkeras.data import augment, cifar, fashion_mnist, imagenet, synthetic, tfrecord
from effkeras.errors import InputError

SPLITS = ("train", "validation", "test")
# name -> (number of classes or None when the caller chooses, default train augmentations)
DATASETS = {
    "fashion_mnist": (10, ("crop", "flip")),
    "cifar10": (10, ("crop", "flip")),
    "cifar100": (100, ("crop", "flip")),
    "imagenet": (None, ("random_resized_crop", "flip")),
    "synthetic": (None, ("crop", "flip")),
}
# Default size of the "validation" split: RANet's official code holds out 5,000 CIFAR and 50,000
# ImageNet training images for its thresholds (arXiv 2003.07326, budgeted batch classification);
# Fashion-MNIST as CIFAR; synthetic data has 512 training images.
VALIDATION_SIZES = {
    "fashion_mnist": 5000,
    "cifar10": 5000,
    "cifar100": 5000,
    "imagenet": 50000,
    "synthetic": 64,
}
VALIDATION_SEED = 2003  # fixed: every run holds out the same training examples


@dataclasses.dataclass
class DataSplit:
    """One loaded split: its batched pipeline and what the caller needs to know about it.

    Attributes:
        dataset: tf.data.Dataset. Batches of (float32 images `(batch, H, W, C)` in [0, 255],
            int32 labels `(batch,)`).
        num_examples: int. Examples in the split (one epoch).
        num_classes: int. Number of classes.
        class_names: list of str. One name per class.
        errors_as_input_errors: callable returning a context manager. Wrap iteration in it so
            that bad files become `InputError`s.
        source: str or None. The files the examples come from: `"train"` or `"test"`.
        indices: numpy int array or None. Which examples of those files, in order.
    """

    dataset: tf.data.Dataset
    num_examples: int
    num_classes: int
    class_names: list
    errors_as_input_errors: object = (
        contextlib.nullcontext
    )  # wrap iteration: bad files -> InputError
    source: str = None  # the files the examples come from: "train" or "test"
    indices: object = None  # which examples of those files, in order (numpy int array)


def names():
    """Returns the sorted names of the datasets `load` reads."""
    return sorted(DATASETS)


def validation_indices(num_train, validation_size, what="the training set"):
    """(validation, rest): sorted indices into `num_train` training examples, `validation_size`
    of them picked by a fixed-seed permutation (a random choice, balanced over classes in
    expectation even where the files are sorted by class, as ImageNet's), the others in `rest`.

    Args:
        num_train: int. Number of training examples.
        validation_size: int. Examples to hold out, positive and below `num_train`.
        what: str. How error messages name the training set. Defaults to
            `"the training set"`.

    Returns:
        A tuple `(validation, rest)` of sorted numpy int arrays.

    Raises:
        InputError: if `validation_size` is not a positive int or not smaller than
            `num_train`.
    """
    if (
        isinstance(validation_size, bool)
        or not isinstance(validation_size, int)
        or validation_size < 1
    ):
        raise InputError(f"--validation_size must be a positive integer, got {validation_size!r}")
    if validation_size >= num_train:
        raise InputError(
            f"--validation_size={validation_size} must be smaller than {what} "
            f"({num_train} examples): the validation split is held out of it"
        )
    order = np.random.default_rng(VALIDATION_SEED).permutation(num_train)
    return np.sort(order[:validation_size]), np.sort(order[validation_size:])


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


def _image_preparation(shape, augmentations, seed):
    """prepare(decoded image, label) for images of any size (ImageNet's): crop, fit, augment."""
    height, width, channels = shape
    photometric = _photometric(augmentations, seed)

    def prepare(image, label):
        image = tf.cast(image, tf.float32)
        if "random_resized_crop" in augmentations:
            image = augment.random_resized_crop(image, height, width, seed)
        elif "inception_crop" in augmentations:
            image = augment.inception_crop(image, height, width, seed)
        elif "squash" in augmentations:
            image = augment.squash(image, height, width)
        else:
            image = augment.resize_and_centre_crop(image, height, width)
        return augment.match_channels(photometric(image), channels), label

    return prepare


def load(
    name,
    split,
    *,
    input_shape,
    batch_size,
    data_dir=None,
    augment_with=None,
    shuffle=None,
    num_classes=None,
    seed=0,
    validation_size=None,
    first_epoch=None,
):
    """Loads a split of a dataset as a batched tf.data pipeline.

    Images are fitted to `input_shape` (padded or resized; grayscale tiled to RGB when 3
    channels are wanted) and stay raw float32 pixels in [0, 255]; labels are int32. A `"train"`
    split drops the last partial batch (when it has at least one whole batch).

    Args:
        name: str. `"fashion_mnist"`, `"cifar10"`, `"cifar100"`, `"imagenet"` or
            `"synthetic"`.
        split: str. `"train"`, `"validation"` (held out of the training files) or `"test"`
            (`"val"` = `"test"`).
        input_shape: tuple of 3 ints. The model's `(height, width, channels)`.
        batch_size: int. Examples per batch, positive.
        data_dir: str or None. Where the dataset's files are (ImageNet: class folders, or
            TFRecord shards). Defaults to `None`.
        augment_with: iterable of str or None. Augmentation names. Defaults to `None`: the
            dataset's standard train set for `"train"` and none otherwise.
        shuffle: bool or None. Defaults to `None`: True for `"train"`.
        num_classes: int or None. Classes of synthetic data (default 10); others fix their own.
        seed: int. Seed of shuffling and random augmentations. Defaults to `0`.
        validation_size: int or None. Examples in the `"validation"` split (default
            `VALIDATION_SIZES[name]`); with `"train"`, leave that many out (the validation
            ones). Defaults to `None`: `"train"` keeps them all.
        first_epoch: int or None. For training, the split as an endless stream of epochs from
            this one on, each batched whole and, but for TFRecord shards, shuffled by
            (seed, epoch) alone: the same order however many iterators were made before (Keras
            under tf.distribute makes one more than on a single device), and a resumed run
            sees the epochs an uninterrupted one would. Random augmentations draw from
            seed + first_epoch. Defaults to `None`: one epoch per iteration.

    Returns:
        A `DataSplit`.

    Raises:
        InputError: if the dataset, split, batch size, augmentations, synthetic
            `num_classes` or `validation_size` is invalid; if a validation split is asked of
            ImageNet's TFRecord shards; or if the dataset's files are missing or malformed.
    """
    if name not in DATASETS:
        raise InputError(f"unknown dataset {name!r}; choose from {', '.join(names())}")
    split = {"val": "test"}.get(split, split)
    if split not in SPLITS:
        raise InputError(f"unknown split {split!r}; choose from {', '.join(SPLITS)}")
    source = "test" if split == "test" else "train"
    if split == "validation" and validation_size is None:
        validation_size = VALIDATION_SIZES[name]
    if not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"batch size must be a positive int, got {batch_size!r}")
    fixed_classes, default_augmentations = DATASETS[name]
    if augment_with is None:
        augment_with = default_augmentations if split == "train" else ()
    augmentations = augment.check_augmentations(augment_with)
    shuffle = split == "train" if shuffle is None else shuffle
    shape = tuple(input_shape)
    data_seed, seed = seed, seed + (first_epoch or 0)  # shuffling; augmentation
    errors = contextlib.nullcontext
    shuffle_buffer = None  # the whole split
    examples = None  # the split's arrays, where it has them (not in TFRecord shards)

    if name == "imagenet" and tfrecord.is_sharded(data_dir):
        if validation_size is not None:
            raise InputError(
                "the validation split (and --validation_size) holds training images "
                "out by their index, which ImageNet's TFRecord shards do not give; "
                "use the folder layout for it, or pass no --validation_size"
            )
        shards = tfrecord.read(data_dir, source)
        class_names, indices = shards.class_names, np.arange(shards.num_examples)
        dataset = shards.records(shuffle, data_seed)  # serialized: shuffled before decoding
        prepare_image = _image_preparation(shape, augmentations, seed)
        prepare = lambda record: prepare_image(*shards.decode(record))  # noqa: E731
        shuffle_buffer = tfrecord.SHUFFLE_BUFFER
        errors = shards.errors_as_input_errors
    elif name == "imagenet":
        paths, labels, class_names = imagenet.list_files(data_dir, source)
        indices = _indices(name, len(labels), split, validation_size)
        if len(indices) < len(labels):
            paths, labels = [paths[i] for i in indices], [labels[i] for i in indices]
        examples = (paths, labels)
        dataset = tf.data.Dataset.from_tensor_slices(examples)
        prepare_image = _image_preparation(shape, augmentations, seed)
        prepare = lambda path, label: prepare_image(imagenet.decode(path), label)  # noqa: E731
        errors = lambda: imagenet.decode_errors_as_input_errors(paths)  # noqa: E731
    else:
        if name == "fashion_mnist":
            images, labels = fashion_mnist.read(data_dir, source)
            class_names = fashion_mnist.CLASS_NAMES
        elif name == "synthetic":
            if num_classes is not None and (
                isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1
            ):
                raise InputError(
                    f"synthetic data needs a positive number of classes, got {num_classes!r}"
                )
            images, labels = synthetic.read(shape, num_classes or 10, source, data_seed)
            class_names = [str(i) for i in range(num_classes or 10)]
        else:
            images, labels = cifar.read(data_dir, source, fixed_classes)
            class_names = [str(i) for i in range(fixed_classes)]
        indices = _indices(name, len(labels), split, validation_size)
        if len(indices) < len(labels):
            images, labels = images[indices], labels[indices]
        dataset, prepare = _array_pipeline(images, labels, shape, augmentations, seed)
        examples = (images, labels)

    count = len(indices)
    buffer = min(count, shuffle_buffer or count)
    drop_remainder = split == "train" and count >= batch_size

    def batches(examples):
        return examples.map(prepare, num_parallel_calls=tf.data.AUTOTUNE).batch(
            batch_size, drop_remainder=drop_remainder
        )

    if first_epoch is not None and examples is not None:
        examples = tuple(tf.constant(np.asarray(array)) for array in examples)

        def epoch(number):  # a permutation of the split drawn from (seed, epoch) alone
            order = tf.random.experimental.stateless_shuffle(
                tf.range(count), seed=tf.stack([tf.constant(data_seed, tf.int64), number])
            )
            return batches(
                tf.data.Dataset.from_tensor_slices(order).map(
                    lambda i: tuple(tf.gather(array, i) for array in examples)
                )
            )

        dataset = tf.data.Dataset.range(first_epoch, 2**31).flat_map(epoch)
    else:
        if shuffle:
            dataset = dataset.shuffle(buffer, seed=data_seed, reshuffle_each_iteration=True)
        dataset = batches(dataset)
        if first_epoch is not None:  # TFRecord shards: reshuffled as read, epoch after epoch
            dataset = dataset.repeat()
    dataset = dataset.prefetch(tf.data.AUTOTUNE)
    return DataSplit(dataset, count, len(class_names), list(class_names), errors, source, indices)


def take(name, split, count, *, input_shape, data_dir=None, num_classes=None, with_labels=False):
    """Returns `count` shuffled, unaugmented images of a split: samples for a conversion.

    Args:
        name: str. A dataset name (see `load`).
        split: str. `"train"`, `"validation"` or `"test"`.
        count: int. Number of images.
        input_shape: tuple of 3 ints. `(height, width, channels)`.
        data_dir: str or None. Where the dataset's files are. Defaults to `None`.
        num_classes: int or None. Classes of synthetic data. Defaults to `None`.
        with_labels: bool. Also return the images' classes. Defaults to `False`.

    Returns:
        A tuple `(images, class_names)`: a float32 numpy array `(count, H, W, C)` in [0, 255]
        (fewer rows if the split is smaller) and a list of str; with `with_labels`, a third
        item: their classes, an int array `(count,)`.

    Raises:
        InputError: as `load`, and if an image cannot be read.
    """
    loaded = load(
        name,
        split,
        input_shape=input_shape,
        batch_size=count,
        data_dir=data_dir,
        augment_with=(),
        shuffle=True,
        num_classes=num_classes,
    )
    with loaded.errors_as_input_errors():
        images, labels = next(iter(loaded.dataset))
    if not with_labels:
        return images.numpy(), loaded.class_names
    labels = labels.numpy()
    return images.numpy(), loaded.class_names, labels.argmax(-1) if labels.ndim == 2 else labels


def _indices(name, count, split, validation_size):
    """Which of `count` examples of the split's files `split` takes."""
    if split == "test" or (split == "train" and validation_size is None):
        return np.arange(count)
    validation, rest = validation_indices(count, validation_size, f"{name}'s training set")
    return validation if split == "validation" else rest
