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


def option_a_shortcut(x, filters, stride, name):
    """Identity shortcut that subsamples by `stride` and zero-pads the new channels."""
    if stride > 1:
        x = keras.layers.MaxPooling2D(pool_size=1, strides=stride, name=f"{name}_subsample")(x)
    extra = filters - x.shape[-1]
    if extra:
        x = ChannelPad(extra // 2, extra - extra // 2, name=f"{name}_pad")(x)
    return x
