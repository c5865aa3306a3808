"""Shape fitting and the standard train augmentations, on float32 images in [0, 255].

Papers cited below: Inception, Szegedy et al. 2015 (arXiv 1409.4842) and EfficientNet, Tan & Le
2019 (arXiv 1905.11946) with its TPU reference code (tensorflow/tpu, models/official/efficientnet,
preprocessing.py); RandAugment, Cubuk et al. 2020 (arXiv 1909.13719); AutoAugment, Cubuk et al.
2019 (arXiv 1805.09501); random erasing, Zhong et al. 2020 (arXiv 1708.04896); Mixup, Zhang et
al. 2018 (arXiv 1710.09412); CutMix, Yun et al. 2019 (arXiv 1905.04899); ConvNeXt, Liu et al.
2022 (arXiv 2201.03545), whose recipe (timm's) RAN-i trains with (arXiv 2208.08562).
"""

import tensorflow as tf

from effkeras.errors import InputError

# Pad (or centre-crop) when the source is close to the model's size, e.g. 28 -> 32; resize
# otherwise.
PAD_RATIO = 0.75
IMAGENET_CROP_FRACTION = 0.875  # test-time: resize to size / 0.875, centre crop (224 of 256)


def match_channels(image, channels):
    """Fits an image's channels to the model's: grayscale tiled to RGB, or RGB to grayscale.

    Args:
        image: float32 tensor `(height, width, channels)` in [0, 255].
        channels: int. The model's input channels.

    Returns:
        The image with `channels` channels (itself when it has them).

    Raises:
        InputError: for any other pair of channel counts.
    """
    source = image.shape[-1]
    if source == channels:
        return image
    if source == 1 and channels == 3:
        return tf.tile(image, [1, 1, 3])
    if source == 3 and channels == 1:
        return tf.image.rgb_to_grayscale(image)
    raise InputError(
        f"cannot feed {source}-channel images to a model with {channels} input channels"
    )


def fit_to_shape(image, height, width):
    """Centre-pads images slightly smaller than (height, width), resizes the rest.

    "Slightly smaller": at least 3/4 of the target in both sizes (e.g. 28 -> 32).

    Args:
        image: float32 tensor `(height, width, channels)` in [0, 255].
        height: int. Output height.
        width: int. Output width.

    Returns:
        A float32 tensor `(height, width, channels)`.
    """
    source_h, source_w = image.shape[0], image.shape[1]
    if height * PAD_RATIO <= source_h <= height and width * PAD_RATIO <= source_w <= width:
        return tf.image.resize_with_crop_or_pad(image, height, width)
    return tf.image.resize(image, [height, width])


def pad_and_random_crop(image, seed=None):
    """Zero-pads by 1/8 of the size (4 px at 32) and crops back at a random offset.

    Args:
        image: float32 tensor `(height, width, channels)` in [0, 255].
        seed: int or None. Op-level random seed. Defaults to `None`.

    Returns:
        A float32 tensor of the input's shape.
    """
    height, width, channels = image.shape
    pad = max(1, height // 8)
    padded = tf.image.pad_to_bounding_box(image, pad, pad, height + 2 * pad, width + 2 * pad)
    return tf.image.random_crop(padded, [height, width, channels], seed=seed)


def random_resized_crop(image, height, width, seed=None):
    """Inception-style crop: 8%-100% of the area, aspect 3/4-4/3, resized to (height, width).

    Args:
        image: float32 tensor `(H, W, channels)` of any size.
        height: int. Output height.
        width: int. Output width.
        seed: int or None. Op-level random seed. Defaults to `None`.

    Returns:
        A float32 tensor `(height, width, channels)`.
    """
    begin, size, _ = tf.image.sample_distorted_bounding_box(
        tf.shape(image),
        tf.zeros([1, 0, 4]),
        min_object_covered=0.0,
        aspect_ratio_range=(3 / 4, 4 / 3),
        area_range=(0.08, 1.0),
        max_attempts=10,
        use_image_if_no_bounding_boxes=True,
        seed=seed,
    )
    crop = tf.slice(image, begin, size)
    crop.set_shape([None, None, image.shape[-1]])
    return tf.image.resize(crop, [height, width])


def inception_crop(image, height, width, seed=None):
    """The EfficientNet reference's Inception-style crop (the RAN-e training scripts use it,
    arXiv 2208.08562): a box covering at least 10% of the image, 5%-100% of its area, aspect
    3/4-4/3, 10 attempts, resized bilinearly to (height, width); when no box is found, the
    test-time centre crop.

    Args:
        image: float32 tensor `(H, W, channels)` of any size.
        height: int. Output height.
        width: int. Output width.
        seed: int or None. Op-level random seed. Defaults to `None`.

    Returns:
        A float32 tensor `(height, width, channels)`.
    """
    shape = tf.shape(image)
    begin, size, _ = tf.image.sample_distorted_bounding_box(
        shape,
        tf.constant([[[0.0, 0.0, 1.0, 1.0]]]),
        min_object_covered=0.1,
        aspect_ratio_range=(3 / 4, 4 / 3),
        area_range=(0.05, 1.0),
        max_attempts=10,
        use_image_if_no_bounding_boxes=True,
        seed=seed,
    )

    def crop():
        box = tf.slice(image, begin, size)
        box.set_shape([None, None, image.shape[-1]])
        return tf.image.resize(box, [height, width])

    found = tf.reduce_any(tf.not_equal(size[:2], shape[:2]))  # the whole image: no box found
    cropped = tf.cond(found, crop, lambda: resize_and_centre_crop(image, height, width))
    cropped.set_shape([height, width, image.shape[-1]])
    return cropped


def resize_and_centre_crop(image, height, width):
    """The test-time crop: resizes the shorter side to max(height, width) / 0.875, centre crop.

    Args:
        image: float32 tensor `(H, W, channels)` of any size.
        height: int. Output height.
        width: int. Output width.

    Returns:
        A float32 tensor `(height, width, channels)`.
    """
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    scale = max(height, width) / IMAGENET_CROP_FRACTION / tf.reduce_min(shape)
    resized = tf.image.resize(image, tf.cast(tf.round(shape * scale), tf.int32))
    return tf.image.resize_with_crop_or_pad(resized, height, width)


# AlexNet-style PCA colour noise on ImageNet's RGB eigen-decomposition (pixels in [0, 1]).
LIGHTING_EIGENVALUES = (0.2175, 0.0188, 0.0045)
LIGHTING_EIGENVECTORS = (
    (-0.5675, 0.7192, 0.4009),
    (-0.5808, -0.0045, -0.8140),
    (-0.5836, -0.6948, 0.4203),
)
LIGHTING_STD = 0.1


def lighting(image, seed=None):
    """Adds eigvec @ (α · eigval), α ~ N(0, 0.1), to every pixel of an RGB image in [0, 255].

    AlexNet-style PCA colour noise on ImageNet's eigen-decomposition, clipped to [0, 255].

    Args:
        image: float32 tensor `(height, width, 3)` in [0, 255].
        seed: int or None. Op-level random seed. Defaults to `None`.

    Returns:
        A tensor of the image's shape.
    """
    alpha = tf.random.normal([3], stddev=LIGHTING_STD, seed=seed)
    shift = tf.linalg.matvec(tf.constant(LIGHTING_EIGENVECTORS), alpha * LIGHTING_EIGENVALUES)
    return tf.clip_by_value(image + 255.0 * shift, 0.0, 255.0)


def squash(image, height, width):
    """The whole image resized to (height, width), aspect ratio not kept: torchvision's
    Resize((h, w)) with a size list, as ERN's train and test pipelines (official code; ERN,
    arXiv 2410.11553, §4.1).

    Args:
        image: float32 tensor `(H, W, channels)`.
        height: int. Output height.
        width: int. Output width.

    Returns:
        A float32 tensor `(height, width, channels)`.
    """
    return tf.image.resize(image, [height, width], antialias=True)


def five_crop_offsets(height, width, size):
    """(top, left) of torchvision's FiveCrop(size): the four corners, then the centre at
    round((H - size) / 2), round((W - size) / 2) (Python's round, as torchvision).

    Args:
        height: int. Image height.
        width: int. Image width.
        size: int. Crop side.

    Returns:
        A list of five `(top, left)` int pairs.
    """
    return [
        (0, 0),
        (0, width - size),
        (height - size, 0),
        (height - size, width - size),
        (int(round((height - size) / 2)), int(round((width - size) / 2))),
    ]


def ten_crop(images, size):
    """torchvision's TenCrop(size) of a batch (B, H, W, C) -> (10, B, size, size, C): the five
    crops of the images, then the five crops of their horizontal flips (ERN's test-time
    augmentation, arXiv 2410.11553, §4.1 and Table 4).

    Args:
        images: tensor `(B, H, W, C)` with known H and W.
        size: int. Crop side, in (0, min(H, W)].

    Returns:
        A tensor `(10, B, size, size, C)`.

    Raises:
        InputError: if H or W is unknown or smaller than `size`, or `size` is not positive.
    """
    height, width = images.shape[1], images.shape[2]
    if height is None or width is None or not 0 < size <= min(height, width):
        raise InputError(
            f"ten-crop of {size}x{size} needs images at least that large with a "
            f"known size, got {height}x{width}; resize them first"
        )
    crops = [
        source[:, top : top + size, left : left + size, :]
        for source in (images, tf.image.flip_left_right(images))
        for top, left in five_crop_offsets(height, width, size)
    ]
    return tf.stack(crops)


# ERN's `imagenet_with_randaugment` photometric steps (its official code's augmentor configs), in
# its order; "shift" (MLPerf Tiny's width/height shifts of 0.1) goes with the rotation; then the
# RandAugment of RAN-e and RAN-i (below). They apply to RGB images only.
KERAS_AUGMENTATIONS = (
    "color_jitter",
    "grayscale",
    "rotation",
    "shift",
    "randaugment",
    "randaugment_m9",
)

# RandAugment (arXiv 1909.13719) with N=2 ops at magnitude M=9 of the paper's 0-10 scale: what the
# paper reports for ResNet-50 on ImageNet (Table 2, where RandAugment matches AutoAugment) and
# what ConvNeXt trains with (timm's rand-m9-mstd0.5). Keras' RandAugment has one factor for all
# its ops, each drawing a strength uniformly in [0, factor], and its ops reach far beyond the
# paper's at full strength (a whole turn of rotation where the paper stops at 30 degrees, shifts
# and shears of the whole image where it stops at 45% and 0.3). Factor 9/30, the convention of
# ERN's magnitude-of-30 bins above, keeps shears (up to 0.3) and shifts (up to 30% of a side) near
# the paper's M=9 (0.27 and 40%) but rotates up to 108 degrees (the paper: 27); factor 0.9
# would shift and shear most images out of the frame.
RANDAUGMENT_M9_FACTOR = 9 / 30


def keras_augmentations(names, seed=None):
    """The Keras preprocessing layers for the KERAS_AUGMENTATIONS among `names`, in order.

    Keras' factors approximate torchvision's: RandAugment magnitude 7 of 30 bins is factor 7/30;
    rotation ±15° is 15/360 of a turn.

    Args:
        names: collection of str. Augmentation names; those not in KERAS_AUGMENTATIONS are
            ignored here.
        seed: int or None. Seed of every layer. Defaults to `None`.

    Returns:
        A list of Keras preprocessing layers, in KERAS_AUGMENTATIONS' order.
    """
    import keras

    make = {
        "color_jitter": lambda: keras.layers.RandomColorJitter(
            value_range=(0, 255),
            brightness_factor=0.25,
            contrast_factor=0.25,
            saturation_factor=0.25,
            hue_factor=0.5,
            seed=seed,
        ),
        "grayscale": lambda: keras.layers.RandomGrayscale(0.3, seed=seed),
        "rotation": lambda: keras.layers.RandomRotation(15 / 360, seed=seed),
        "shift": lambda: keras.layers.RandomTranslation(0.1, 0.1, seed=seed),
        "randaugment": lambda: keras.layers.RandAugment(
            value_range=(0, 255), num_ops=2, factor=7 / 30, seed=seed
        ),
        "randaugment_m9": lambda: keras.layers.RandAugment(
            value_range=(0, 255), num_ops=2, factor=RANDAUGMENT_M9_FACTOR, seed=seed
        ),
    }
    return [make[name]() for name in KERAS_AUGMENTATIONS if name in names]


# Random erasing (arXiv 1708.04896) as ConvNeXt trains with it: probability 0.25 per image, a box
# of 2%-33% of the area. Keras' RandomErasing draws each side as sqrt(U(0.02, 0.33)) of the image
# (aspect ratios 1/4-4, the paper's 0.3-3.3) and fills it with noise, clip(N(0, 255²), 0, 255)
# per pixel (timm's "pixel" mode fills with N(0, 1) of the normalised image, i.e. around the mean
# pixel). A fixed (p, p) range: a single float would draw each image's probability in [0, p].
RANDOM_ERASING_PROBABILITY = 0.25


def random_erasing(seed=None):
    """The Keras RandomErasing layer of ConvNeXt's recipe; works on images of any channel count.

    Args:
        seed: int or None. The layer's seed. Defaults to `None`.

    Returns:
        A `keras.layers.RandomErasing` (probability 0.25, 2%-33% of the area).
    """
    import keras

    p = RANDOM_ERASING_PROBABILITY
    return keras.layers.RandomErasing(
        factor=(p, p), scale=(0.02, 1 / 3), value_range=(0, 255), seed=seed
    )


AUGMENTATIONS = {
    "crop",
    "flip",
    "random_resized_crop",
    "inception_crop",
    "lighting",
    "squash",
    "random_erasing",
    *KERAS_AUGMENTATIONS,
}


def check_augmentations(names):
    """Checks augmentation names.

    Args:
        names: iterable of str.

    Returns:
        The names as a tuple.

    Raises:
        InputError: if a name is not in `AUGMENTATIONS`.
    """
    unknown = set(names) - AUGMENTATIONS
    if unknown:
        raise InputError(
            f"unknown augmentation(s) {sorted(unknown)}; choose from {sorted(AUGMENTATIONS)}"
        )
    return tuple(names)


# --- batch-level augmentations: soft labels ------------------------------------------------------


def one_hot_labels(num_classes):
    """Returns (images, integer labels) -> (images, one-hot float32 labels), for a dataset's map.

    Args:
        num_classes: int. Width of the one-hot labels.
    """

    def apply(images, labels):
        return images, tf.one_hot(tf.cast(labels, tf.int32), num_classes)

    return apply


def mix_batches(num_classes, *, mixup_alpha=0.0, cutmix_alpha=0.0, switch_prob=0.5, seed=None):
    """A map of batched (images, integer labels) -> (mixed images, soft labels).

    Each batch gets CutMix with probability `switch_prob` and Mixup otherwise when both alphas
    are set (timm's Mixup with prob 1.0, as ConvNeXt's recipe), else the one that is set.
    Keras' layers mix each image with a random partner of the batch at its own λ ~ Beta(α, α)
    (the papers, Mixup arXiv 1710.09412 and CutMix arXiv 1905.04899, and timm draw one λ per
    batch and pair it with the batch reversed); CutMix mixes the labels by the box's area, the box
    lying wholly inside the image. The labels become one-hot before mixing, so label smoothing
    goes in the loss (smoothing then mixing is mixing then smoothing: both are linear).

    Args:
        num_classes: int. Width of the soft labels.
        mixup_alpha: float. Mixup's Beta α; 0 turns Mixup off. Defaults to `0.0`.
        cutmix_alpha: float. CutMix's Beta α; 0 turns CutMix off. Defaults to `0.0`.
        switch_prob: float. Probability of CutMix when both are on. Defaults to `0.5`.
        seed: int or None. Seed of the layers and the switch. Defaults to `None`.

    Returns:
        A function `(images, labels) -> (images, soft float32 labels)` for a batched
        dataset's map.

    Raises:
        ValueError: if neither alpha is > 0.
    """
    import keras

    if not (mixup_alpha or cutmix_alpha):
        raise ValueError("mix_batches needs mixup_alpha or cutmix_alpha > 0")
    # CutMix(factor=f) would draw its Beta's α itself, uniformly in [0, f]: pin it to (α, α).
    mixup = keras.layers.MixUp(alpha=mixup_alpha, seed=seed) if mixup_alpha else None
    cutmix = (
        keras.layers.CutMix(factor=(cutmix_alpha, cutmix_alpha), seed=seed)
        if cutmix_alpha
        else None
    )

    def apply(images, labels):
        batch = {"images": images, "labels": tf.one_hot(tf.cast(labels, tf.int32), num_classes)}
        if mixup and cutmix:
            chance = tf.random.uniform([], seed=seed)
            mixed = tf.cond(chance < switch_prob, lambda: cutmix(batch), lambda: mixup(batch))
        else:
            mixed = (mixup or cutmix)(batch)
        return mixed["images"], mixed["labels"]

    return apply
