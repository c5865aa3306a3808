"""Layer scale: the learnable per-channel gain on a ConvNeXt block's residual branch.

Touvron et al., "Going deeper with Image Transformers" (CaiT, arXiv 2103.17239, §2.1) introduce
it; ConvNeXt (Liu et al., arXiv 2201.03545, §2.6 and Appendix A.1) uses it with initial value
1e-6, so that every block starts close to the identity.
"""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="effkeras")
class LayerScale(keras.layers.Layer):
    """x * γ with γ a per-channel (last axis) weight, initialised to `init_value`."""

    def __init__(self, init_value=1e-6, **kwargs):
        super().__init__(**kwargs)
        self.init_value = float(init_value)

    def build(self, input_shape):
        self.gamma = self.add_weight(shape=(input_shape[-1],), name="gamma",
                                     initializer=keras.initializers.Constant(self.init_value))

    def call(self, x):
        return x * ops.cast(self.gamma, x.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "init_value": self.init_value}
