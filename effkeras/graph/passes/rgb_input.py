"""A grayscale model given an RGB input: its luma first, so that RGB-only clients can run it.

MediaPipe Tasks' ImageClassifier (and the TFLite Task Library) feed a model 1 x H x W x 3 RGB
pixels and refuse any other input. `rgb_input` puts a fixed 1x1 convolution in front of a
one-channel model: luma with ITU-R BT.601's weights (0.299, 0.587, 0.114), rounded to
(38, 75, 14) / 127 so that they sum to exactly 1 and an int8 file holds them as exact codes.
A gray pixel (r = g = b) therefore reaches the model unchanged, in float and in int8; colour
camera images reach it as their luma.
"""

import keras
import numpy as np

from effkeras.errors import InputError

LUMA_CODES = (38, 75, 14)  # over 127: 0.2992, 0.5906, 0.1102 (BT.601: 0.299, 0.587, 0.114)


def rgb_input(model, pixels=None):
    """`model` (one input of one channel) with a 3-channel RGB input converted to luma first.

    Args:
        model: a functional keras.Model whose input is (H, W, 1).
        pixels: a layer applied to the RGB pixels before the luma, or None (a QAT model's:
            the pixels' quantizer, so that the luma conv reads int8 codes as the rest does).

    Returns:
        A new flat functional keras.Model of the same name, input (H, W, 3); it shares
        `model`'s layers.

    Raises:
        InputError: for a model with several inputs or an input that is not one channel.
    """
    if len(model.inputs) != 1 or model.input_shape[-1] != 1:
        raise InputError(
            f"rgb_input takes a model with one single-channel image input; {model.name} "
            f"takes {model.input_shape}"
        )
    image = keras.Input(tuple(model.input_shape[1:-1]) + (3,), name="image")
    luma = keras.layers.Conv2D(1, 1, use_bias=False, trainable=False, name="rgb_to_luma")
    gray = luma(image if pixels is None else pixels(image))
    luma.set_weights([np.asarray(LUMA_CODES, np.float32).reshape(1, 1, 3, 1) / 127.0])

    # The model's own layers called on the luma: one flat graph (the int8 passes and QAT take
    # no nested models).
    def call(layer, x, *args, **kwargs):
        return layer(gray if x is image else x, *args, **kwargs)

    return keras.models.clone_model(
        model, input_tensors=image, clone_function=lambda layer: layer, call_function=call
    )


def to_rgb(images):
    """Gray images (N, H, W, 1) as RGB (N, H, W, 3), each channel a copy; others unchanged."""
    images = np.asarray(images)
    return np.repeat(images, 3, axis=-1) if images.shape[-1] == 1 else images
