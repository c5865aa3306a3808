"""ERN's input layer: the fixed generalised thermometer pixel embedding ("Efficiera Residual
Networks", arXiv 2410.11553, §3.3; the official code's PixelEmbeddingV3).

Every pixel value x_c (0..255) becomes `expansion` channels of `bits`-bit codes:

    z[10·c + i] = #{ m in 1..3 : x_c >= 8·(10·(m - 1) + i + 1) + 1/2 }      (k = 10, l = 2)

which for integer pixels is the official float formula floor(clip(x/80 + 1 - (i+1)/10 - 1e-4,
0, 4 - 1e-6)) exactly (derived; tests/test_ern.py checks every byte), and for non-integer pixels
(resized images) is that formula applied to the pixel rounded to the nearest byte. No weights,
no gradient.

Channel order is colour-major (10·c + i), so PyTorch conv1 weights port directly. An image with C
channels gives 10·C channels: a grayscale image is encoded as one channel (10 embedding channels);
tile it to RGB first (effkeras.data does, for a 3-channel model) to use an RGB model on it.
"""

import keras
import numpy as np
from keras import ops

from effkeras.errors import InputError

EXPANSION = 10  # k (§3.3; Table 5 kept k = 10 over 21 and 32)
BITS = 2  # l: codes 0..3


def thermometer_thresholds(expansion=EXPANSION, bits=BITS):
    """(expansion, 2^bits - 1) float thresholds: z_i >= m exactly where x >= t[i, m - 1].

    Bin width s = max(1, 255 // ((2^l - 1)·k)) (8 for k = 10, l = 2); t[i, m-1] =
    s·(k·(m - 1) + i + 1) + 1/2, i.e. x > 8j for j = 1..30 on integer pixels.

    Args:
        expansion: int. k, channels per colour. Defaults to `10`.
        bits: int. l, bits per code. Defaults to `2`.

    Returns:
        A float32 numpy array of shape `(expansion, 2^bits - 1)`.
    """
    levels = 2**bits - 1
    width = max(1, 255 // (levels * expansion))
    i = np.arange(expansion)[:, None]
    m = np.arange(1, levels + 1)[None, :]
    return (width * (expansion * (m - 1) + i + 1) + 0.5).astype(np.float32)


@keras.saving.register_keras_serializable(package="effkeras")
class PixelEmbedding(keras.layers.Layer):
    """Raw pixels (B, H, W, C) in [0, 255] -> (B, H, W, expansion·C) codes in 0..2^bits - 1.

    ERN's fixed generalised thermometer embedding (module docstring): no weights, no gradient,
    float32 under mixed precision; channel order is colour-major (expansion·c + i).

    Reference:
        - [LeapMind, Efficiera Residual Networks](https://arxiv.org/abs/2410.11553), §3.3

    Args:
        expansion: int >= 1. k, code channels per input channel. Defaults to `10`.
        bits: int >= 1. l, bits per code. Defaults to `2`.
        **kwargs: base layer arguments (e.g. `name`).

    Raises:
        InputError: if `expansion` or `bits` is not an int >= 1.
    """

    def __init__(self, expansion=EXPANSION, bits=BITS, **kwargs):
        if not isinstance(expansion, int) or expansion < 1 or not isinstance(bits, int) or bits < 1:
            raise InputError(
                f"PixelEmbedding needs integer expansion >= 1 and bits >= 1, "
                f"got expansion={expansion!r}, bits={bits!r}"
            )
        kwargs.setdefault("trainable", False)
        kwargs.setdefault(
            "dtype", "float32"
        )  # thresholds on raw pixels: float32 under mixed precision
        super().__init__(**kwargs)
        self.expansion = expansion
        self.bits = bits

    @property
    def thresholds(self):
        """See `thermometer_thresholds`: what the LCE rewrite compares raw pixels against."""
        return thermometer_thresholds(self.expansion, self.bits)

    def call(self, x):
        x = ops.stop_gradient(x)[..., None]  # (B, H, W, C, 1) against (k,) per level
        codes = None
        for level in self.thresholds.T:
            hit = ops.cast(
                ops.greater_equal(x, ops.convert_to_tensor(level, x.dtype)), self.compute_dtype
            )
            codes = hit if codes is None else codes + hit
        shape = ops.shape(codes)
        return ops.reshape(codes, (shape[0], shape[1], shape[2], shape[3] * self.expansion))

    def compute_output_shape(self, input_shape):
        channels = None if input_shape[-1] is None else input_shape[-1] * self.expansion
        return (*input_shape[:-1], channels)

    def get_config(self):
        return {**super().get_config(), "expansion": self.expansion, "bits": self.bits}
