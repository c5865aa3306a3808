"""Layer scale: the learnable per-channel gain on a ConvNeXt block's residual branch.

Touvron et al., "Going deeper with Image Transformers" (CaiT, arXiv 2103.17239, §2.1) introduce
it; ConvNeXt (Liu et al., arXiv 2201.03545, §2.6 and Appendix A.1) uses it with initial value
1e-6, so that every block starts close to the identity.
"""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="effkeras")
class LayerScale(keras.layers.Layer):
    """x * γ with γ a per-channel (last axis) weight, initialised to `init_value`; with `bias`,
    x * γ + β (β from 0), the affine form ResMLP uses (Touvron et al., arXiv 2105.03404 §2).

    Reference:
        - [Touvron et al., Going deeper with Image Transformers](
            https://arxiv.org/abs/2103.17239), §2.1

    Args:
        init_value: float. Initial value of γ. Defaults to `1e-6` (ConvNeXt's).
        bias: bool. Whether to add the per-channel β. Defaults to `False`.
        **kwargs: base layer arguments (e.g. `name`).
    """

    def __init__(self, init_value=1e-6, bias=False, **kwargs):
        super().__init__(**kwargs)
        # `use_bias`, not `bias`: layers with a bias variable call it `bias`.
        self.init_value, self.use_bias = float(init_value), bool(bias)

    def build(self, input_shape):
        self.gamma = self.add_weight(
            shape=(input_shape[-1],),
            name="gamma",
            initializer=keras.initializers.Constant(self.init_value),
        )
        if self.use_bias:
            self.beta = self.add_weight(shape=(input_shape[-1],), name="beta", initializer="zeros")

    def call(self, x):
        y = x * ops.cast(self.gamma, x.dtype)
        return y + ops.cast(self.beta, x.dtype) if self.use_bias else y

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "init_value": self.init_value, "bias": self.use_bias}
