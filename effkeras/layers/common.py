"""Small shared layers used by several model families."""

import keras
import numpy as np
from keras import ops


@keras.saving.register_keras_serializable(package="effkeras")
class ChannelPad(keras.layers.Layer):
    """Zero-pads the channel axis: the parameter-free 'option A' shortcut of He et al. (2016).

    Args:
        before: int. Zero channels added before the input's channels.
        after: int. Zero channels added after them.
        **kwargs: base layer arguments (e.g. `name`).
    """

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

    Args:
        x: tensor of shape `(batch, height, width, channels)`, channels <= `filters`.
        filters: int. Output channels; the new ones are zeros, split before and after.
        stride: int. Downsampling factor.
        name: str. Prefix of the layer names.
        pool: str. `"subsample"` keeps every stride-th pixel (He et al.); `"average"` averages
            stride x stride windows (ReCU's code). Defaults to `"subsample"`.

    Returns:
        The shortcut tensor with `filters` channels.
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

    Args:
        mean: sequence of floats. Per-channel mean, in [0, 1] units.
        std: sequence of floats > 0. Per-channel std, as many as `mean`.
        **kwargs: base layer arguments (e.g. `name`).

    Raises:
        ValueError: if `mean` and `std` differ in length or a std is not positive.
    """

    def __init__(self, mean, std, **kwargs):
        super().__init__(**kwargs)
        self.mean, self.std = tuple(map(float, mean)), tuple(map(float, std))
        if len(self.mean) != len(self.std) or min(self.std) <= 0:
            raise ValueError(
                f"PixelNormalization needs as many means as stds (> 0), got {self.mean}, {self.std}"
            )

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
    """Normalises raw [0, 255] pixels: (x/255 - mean) / std per channel.

    Args:
        x: tensor of shape `(batch, height, width, channels)`.
        mean: sequence of floats. Defaults to ImageNet's mean.
        std: sequence of floats. Defaults to ImageNet's std.
        name: str. The layer name. Defaults to `"normalize"`.

    Returns:
        The output of a `PixelNormalization` layer; for grayscale input the means and stds are
        averaged to one.
    """
    if x.shape[-1] == 1:
        mean, std = [sum(mean) / len(mean)], [sum(std) / len(std)]
    return PixelNormalization(mean, std, name=name)(x)


@keras.saving.register_keras_serializable(package="effkeras")
class BlurPool(keras.initializers.Initializer):
    """The fixed kernel of anti-aliased downsampling (Zhang, "Making Convolutional Networks
    Shift-Invariant Again", arXiv 1904.11486): the normalised outer product of a binomial row
    ([1, 1], [1, 2, 1] or [1, 4, 6, 4, 1]), one copy per channel of a depthwise kernel.

    Called with a square depthwise kernel shape of size 2, 3 or 5; any other shape raises
    ValueError.
    """

    ROWS = {2: (1, 1), 3: (1, 2, 1), 5: (1, 4, 6, 4, 1)}

    def __call__(self, shape, dtype=None):
        if shape[0] not in self.ROWS or shape[0] != shape[1]:
            raise ValueError(f"BlurPool takes square kernels of size 2, 3 or 5, got {shape}")
        row = np.asarray(self.ROWS[shape[0]], np.float64)
        kernel = np.outer(row, row) / row.sum() ** 2
        kernel = np.broadcast_to(kernel[:, :, None, None], shape)
        return keras.ops.cast(np.ascontiguousarray(kernel), dtype or "float32")


@keras.saving.register_keras_serializable(package="effkeras")
class BatchNormalization(keras.layers.BatchNormalization):
    """`keras.layers.BatchNormalization` (Ioffe & Szegedy, arXiv 1502.03167) whose training step
    runs TensorFlow's fused kernel (FusedBatchNormV3), as tf_keras does.

    Keras 3 computes the batch's moments, normalises and takes their gradients with separate
    ops. Here one kernel does it, with the same maths: the output, its gradients and the moving
    averages (the batch variance the kernel reports is unbiased, sum / (n - 1); it is rescaled
    to Keras' biased one first) equal Keras' to float rounding. That needs the TensorFlow
    backend, an NHWC map normalised over its channels (4-D input, axis -1), float16, bfloat16 or
    float32 input, and no mask, `synchronized` or renorm; anything else, and inference, is
    Keras' own code. The layer's epsilon goes to the kernel unchanged: the CPU kernel and cuDNN 9
    (CUDNN_BN_MIN_EPSILON = 0) take any epsilon >= 0.
    """

    FUSED_DTYPES = ("float16", "bfloat16", "float32")

    def _fused(self, inputs, training, mask):
        return bool(
            training
            and self.trainable
            and mask is None
            and not self.synchronized
            and not self.renorm
            and keras.backend.backend() == "tensorflow"
            and len(inputs.shape) == 4
            and self.axis in (-1, 3)
            and keras.backend.standardize_dtype(inputs.dtype) in self.FUSED_DTYPES
        )

    def call(self, inputs, training=None, mask=None):
        if not self._fused(inputs, training, mask):
            return super().call(inputs, training=training, mask=mask)
        import tensorflow as tf

        channels = inputs.shape[-1]
        gamma = tf.ones(channels) if self.gamma is None else tf.cast(self.gamma, tf.float32)
        beta = tf.zeros(channels) if self.beta is None else tf.cast(self.beta, tf.float32)
        outputs, mean, variance, *_ = tf.raw_ops.FusedBatchNormV3(
            x=inputs,
            scale=gamma,
            offset=beta,
            mean=tf.zeros(0),
            variance=tf.zeros(0),
            epsilon=self.epsilon,
            is_training=True,
        )
        count = tf.cast(tf.size(inputs, out_type=tf.int64) // channels, tf.float32)
        variance *= (count - 1) / count
        for moving, batch in ((self.moving_mean, mean), (self.moving_variance, variance)):
            moving.assign(
                tf.cast(moving, tf.float32) * self.momentum + batch * (1.0 - self.momentum)
            )
        return ops.cast(outputs, self.compute_dtype)
