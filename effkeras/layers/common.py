"""Small shared layers used by several model families."""

import keras
import numpy as np
from keras import ops


@keras.saving.register_keras_serializable(package="effkeras")
class ChannelPad(keras.layers.Layer):
    """Zero-pads the channel axis: the parameter-free 'option A' shortcut of He et al. (2016)."""

    def __init__(self, before, after, **kwargs):
        super().__init__(**kwargs)
        self.before = before
        self.after = after

    def call(self, x):
        return ops.pad(x, [[0, 0], [0, 0], [0, 0], [self.before, self.after]])

    def compute_output_shape(self, input_shape):
        channels = input_shape[-1] + self.before + self.after
        return (*input_shape[:-1], channels)

    def get_config(self):
        return {**super().get_config(), "before": self.before, "after": self.after}


def option_a_shortcut(x, filters, stride, name, pool="subsample"):
    """Identity shortcut that downsamples by `stride` and zero-pads the new channels.

    pool="subsample" keeps every stride-th pixel (He et al.); "average" averages stride x stride
    windows (ReCU's code).
    """
    if stride > 1 and pool == "average":
        x = keras.layers.AveragePooling2D(stride, name=f"{name}_avgpool")(x)
    elif stride > 1:
        x = keras.layers.MaxPooling2D(pool_size=1, strides=stride, name=f"{name}_subsample")(x)
    extra = filters - x.shape[-1]
    if extra:
        x = ChannelPad(extra // 2, extra - extra // 2, name=f"{name}_pad")(x)
    return x


@keras.saving.register_keras_serializable(package="effkeras")
class LearnableBias(keras.layers.Layer):
    """Adds a learnable per-channel bias (ReActNet's RSign/RPReLU shifts), zero-initialised."""

    def build(self, input_shape):
        self.bias = self.add_weight(shape=(input_shape[-1],), initializer="zeros", name="bias")

    def call(self, x):
        return x + self.bias


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@keras.saving.register_keras_serializable(package="effkeras")
class PixelNormalization(keras.layers.Layer):
    """Raw [0, 255] pixels -> (x/255 - mean) / std per channel, computed as a 1x1 depthwise conv
    with constant weights (no variables).

    The depthwise form is what int8 NPUs run well: Vela 5.2 compiles a per-channel broadcast
    SUB/MUL (Keras' Normalization layer) for ethos-u55-128 as elementwise ops costing 15.3M
    cycles at 224x224x3, more than all of RAN-e-GT's 434M MACs take (8.4M cycles), and this
    conv as 0.18M.
    """

    def __init__(self, mean, std, **kwargs):
        super().__init__(**kwargs)
        self.mean, self.std = tuple(map(float, mean)), tuple(map(float, std))
        if len(self.mean) != len(self.std) or min(self.std) <= 0:
            raise ValueError(f"PixelNormalization needs as many means as stds (> 0), got "
                             f"{self.mean}, {self.std}")

    def call(self, x):
        std = np.asarray(self.std, np.float32)
        kernel = ops.cast((1 / (255 * std)).reshape(1, 1, -1, 1), x.dtype)
        offset = ops.cast(-np.asarray(self.mean, np.float32) / std, x.dtype)
        return ops.depthwise_conv(x, kernel, strides=1, padding="valid") + offset

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "mean": self.mean, "std": self.std}


def normalize_pixels(x, mean=IMAGENET_MEAN, std=IMAGENET_STD, name="normalize"):
    """Raw [0, 255] pixels -> (x/255 - mean) / std per channel (averaged for grayscale input)."""
    if x.shape[-1] == 1:
        mean, std = [sum(mean) / len(mean)], [sum(std) / len(std)]
    return PixelNormalization(mean, std, name=name)(x)


@keras.saving.register_keras_serializable(package="effkeras")
class BlurPool(keras.initializers.Initializer):
    """The fixed kernel of anti-aliased downsampling (Zhang, "Making Convolutional Networks
    Shift-Invariant Again", arXiv 1904.11486): the normalised outer product of a binomial row
    ([1, 1], [1, 2, 1] or [1, 4, 6, 4, 1]), one copy per channel of a depthwise kernel."""

    ROWS = {2: (1, 1), 3: (1, 2, 1), 5: (1, 4, 6, 4, 1)}

    def __call__(self, shape, dtype=None):
        if shape[0] not in self.ROWS or shape[0] != shape[1]:
            raise ValueError(f"BlurPool takes square kernels of size 2, 3 or 5, got {shape}")
        row = np.asarray(self.ROWS[shape[0]], np.float64)
        kernel = np.outer(row, row) / row.sum() ** 2
        kernel = np.broadcast_to(kernel[:, :, None, None], shape)
        return keras.ops.cast(np.ascontiguousarray(kernel), dtype or "float32")
