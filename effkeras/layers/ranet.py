"""The resize of RANet's fusion blocks (Yang et al., arXiv 2003.07326, Fig. 2: coarse features
are up-sampled bilinearly to the finer sub-network's resolution)."""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="effkeras")
class BilinearResize(keras.layers.Layer):
    """Bilinear resize of NHWC maps to `size` (height, width).

    align_corners=True maps corner pixel centres onto corner pixel centres, as RANet's official
    code (PyTorch's `interpolate(..., align_corners=True)`); it becomes TFLite's RESIZE_BILINEAR
    with align_corners. False uses half-pixel centres (Keras' resize; RESIZE_BILINEAR with
    half_pixel_centers), for which halving an even size averages 2x2 blocks. Keras' own resize
    has no aligned corners, so that mode calls TensorFlow's (the TensorFlow backend only).

    Args:
        size: sequence of 2 ints >= 1. The output `(height, width)`.
        align_corners: bool. Aligned corners (True) or half-pixel centres. Defaults to `True`.
        **kwargs: base layer arguments (e.g. `name`).

    Raises:
        ValueError: if `size` is not two ints >= 1, or `align_corners` is True on a backend
            other than TensorFlow.
    """

    def __init__(self, size, align_corners=True, **kwargs):
        super().__init__(**kwargs)
        self.size = tuple(int(s) for s in size)
        self.align_corners = bool(align_corners)
        if len(self.size) != 2 or min(self.size) < 1:
            raise ValueError(f"BilinearResize needs size (height, width) >= 1, got {size}")
        if self.align_corners and keras.backend.backend() != "tensorflow":
            raise ValueError(
                "BilinearResize(align_corners=True) needs the TensorFlow backend; "
                "use align_corners=False (half-pixel centres) on other backends"
            )

    def call(self, x):
        if self.align_corners:
            import tensorflow as tf

            # The op returns float32 whatever its input: back to the input's dtype.
            y = tf.raw_ops.ResizeBilinear(
                images=x, size=self.size, align_corners=True, half_pixel_centers=False
            )
            return ops.cast(y, x.dtype)
        return ops.image.resize(x, self.size, interpolation="bilinear", antialias=False)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], *self.size, input_shape[-1])

    def get_config(self):
        return {**super().get_config(), "size": self.size, "align_corners": self.align_corners}
