"""Shape fitting and the standard train augmentations, on float32 images in [0, 255]."""

import tensorflow as tf

from effkeras.errors import InputError

# Pad (or centre-crop) when the source is close to the model's size, e.g. 28 -> 32; resize otherwise.
PAD_RATIO = 0.75
IMAGENET_CROP_FRACTION = 0.875  # test-time: resize to size / 0.875, centre crop (224 of 256)


def match_channels(image, channels):
    source = image.shape[-1]
    if source == channels:
        return image
    if source == 1 and channels == 3:
        return tf.tile(image, [1, 1, 3])
    if source == 3 and channels == 1:
        return tf.image.rgb_to_grayscale(image)
    raise InputError(f"cannot feed {source}-channel images to a model with {channels} input channels")


def fit_to_shape(image, height, width):
    """Centre-pads images slightly smaller than (height, width), resizes the rest."""
    source_h, source_w = image.shape[0], image.shape[1]
    if height * PAD_RATIO <= source_h <= height and width * PAD_RATIO <= source_w <= width:
        return tf.image.resize_with_crop_or_pad(image, height, width)
    return tf.image.resize(image, [height, width])


def pad_and_random_crop(image, seed=None):
    """Zero-pads by 1/8 of the size (4 px at 32) and crops back at a random offset."""
    height, width, channels = image.shape
    pad = max(1, height // 8)
    padded = tf.image.pad_to_bounding_box(image, pad, pad, height + 2 * pad, width + 2 * pad)
    return tf.image.random_crop(padded, [height, width, channels], seed=seed)


def random_resized_crop(image, height, width, seed=None):
    """Inception-style crop: 8%-100% of the area, aspect 3/4-4/3, resized to (height, width)."""
    begin, size, _ = tf.image.sample_distorted_bounding_box(
        tf.shape(image), tf.zeros([1, 0, 4]), min_object_covered=0.0,
        aspect_ratio_range=(3 / 4, 4 / 3), area_range=(0.08, 1.0), max_attempts=10,
        use_image_if_no_bounding_boxes=True, seed=seed)
    crop = tf.slice(image, begin, size)
    crop.set_shape([None, None, image.shape[-1]])
    return tf.image.resize(crop, [height, width])


def resize_and_centre_crop(image, height, width):
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    scale = max(height, width) / IMAGENET_CROP_FRACTION / tf.reduce_min(shape)
    resized = tf.image.resize(image, tf.cast(tf.round(shape * scale), tf.int32))
    return tf.image.resize_with_crop_or_pad(resized, height, width)


AUGMENTATIONS = {"crop", "flip", "random_resized_crop"}


def check_augmentations(names):
    unknown = set(names) - AUGMENTATIONS
    if unknown:
        raise InputError(f"unknown augmentation(s) {sorted(unknown)}; choose from {sorted(AUGMENTATIONS)}")
    return tuple(names)
