"""Small shared layers used by several model families."""

import keras
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


def normalize_pixels(x, mean=IMAGENET_MEAN, std=IMAGENET_STD, name="normalize"):
    """Raw [0, 255] pixels -> (x/255 - mean) / std per channel (averaged for grayscale input)."""
    if x.shape[-1] == 1:
        mean, std = [sum(mean) / len(mean)], [sum(std) / len(std)]
    return keras.layers.Normalization(mean=[255 * m for m in mean],
                                      variance=[(255 * s) ** 2 for s in std], name=name)(x)
