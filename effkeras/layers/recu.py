"""ReCU's binary convolution (Xu et al., ICCV 2021, arXiv 2103.12369, Eqs. 10 and 22), as the
official code's `BinarizeConv2d` computes it (github.com/z-hXu/ReCU).

Weights: centre and standardise per output channel to Laplace scale b* = 2, clamp at the
τ-quantile Q_τ = -E|W|·ln(2 - 2τ) of the fitted Laplace law, sign with an identity gradient.
Activations: (training only) divide by the per-sample std, sign with the ApproxSign gradient.
A learnable per-channel α scales the output. Standardising and clamping never change a sign,
so the deployed weight is sign(W - mean_c W), and α folds into LCE's bconv multiplier.
"""

import math

import keras
from keras import ops

from effkeras import quantizers
from effkeras.layers.quantized import QuantConv2D

TARGET_LAPLACE_SCALE = 2.0  # b* (paper Table 3: best at 2)
EPSILON = 1e-5  # as the official code, for both weight and activation variances


def unbiased_variance(x, axis):
    """Returns the unbiased (n - 1) variance of `x` over `axis`, dimensions kept.

    Args:
        x: tensor with static sizes along `axis`.
        axis: tuple of ints. The axes to reduce.

    Returns:
        A tensor with size 1 along `axis`.
    """
    count = math.prod(x.shape[a] for a in axis)
    return ops.var(x, axis=axis, keepdims=True) * (count / (count - 1))


def recu_weight(kernel, tau):
    """ReCU-binarizes a kernel, with the official code's gradients.

    Centres and standardises each output channel to Laplace scale b* = 2, clamps at the
    τ-quantile Q_τ = -E|W|·ln(2 - 2τ), then signs with an identity gradient.

    Args:
        kernel: tensor of shape `(k, k, C_in, C_out)`. The latent weights.
        tau: float or scalar tensor in (0, 1]. The quantile; τ = 1 does not clamp.

    Returns:
        A ±1 tensor of the kernel's shape.
    """
    axes = (0, 1, 2)  # everything but the output channel
    centred = kernel - ops.mean(kernel, axis=axes, keepdims=True)
    # std of a Laplace(b) law is b·√2, so this puts every channel at scale b*.
    standardised = (
        centred
        * (TARGET_LAPLACE_SCALE * math.sqrt(2.0))
        / ops.sqrt(unbiased_variance(centred, axes) + EPSILON)
    )
    laplace_scale = ops.stop_gradient(ops.mean(ops.abs(standardised)))  # over the whole layer
    quantile = -laplace_scale * ops.log(2.0 - 2.0 * ops.cast(tau, kernel.dtype))  # +inf at τ = 1
    clamped = ops.clip(standardised, -quantile, quantile)
    return quantizers.ste_sign(clamped, clip_value=None)


@keras.saving.register_keras_serializable(package="effkeras")
class ReCUConv2D(QuantConv2D):
    """Binary 3x3 (or any) conv of ReCU: ApproxSign inputs, ReCU weights, learnable α, no bias.

    Zero padding as the paper's code (padded positions contribute 0); LCE converts it on ARM.
    `tau` is a non-trainable weight set by `effkeras.training.callbacks.TauSchedule`.

    Reference:
        - [Xu et al., ReCU: Reviving the Dead Weights in Binary Neural Networks, ICCV 2021](
            https://arxiv.org/abs/2103.12369)

    Args:
        filters: int. Output channels.
        kernel_size: int or tuple of 2 ints. Defaults to `3`.
        strides: int or tuple of 2 ints. Defaults to `1`.
        padding: str. `"same"` or `"valid"`. Defaults to `"same"`.
        **kwargs: other `QuantConv2D` arguments (e.g. `kernel_regularizer`, `name`); the
            kernel initializer defaults to `"he_normal"`. `input_quantizer`,
            `kernel_quantizer`, `pad_values` and `use_bias` are fixed and ignored.
    """

    def __init__(self, filters, kernel_size=3, strides=1, padding="same", **kwargs):
        for fixed in ("input_quantizer", "kernel_quantizer", "pad_values", "use_bias"):
            kwargs.pop(fixed, None)
        kwargs.setdefault("kernel_initializer", "he_normal")  # the code's kaiming_normal_, fan-in
        super().__init__(
            filters,
            kernel_size,
            strides=strides,
            padding=padding,
            use_bias=False,
            input_quantizer="approx_sign",
            **kwargs,
        )
        self.kernel_quantizer = _ReCUWeight(self)

    def build(self, input_shape):
        super().build(input_shape)
        self.tau = self.add_weight(
            shape=(), initializer=keras.initializers.Constant(1.0), trainable=False, name="tau"
        )
        # α ~ U[0, 1), as torch.rand in the official code; regularised like the kernel, as the
        # code's weight decay reaches α.
        self.alpha = self.add_weight(
            shape=(self.filters,),
            name="alpha",
            initializer=keras.initializers.RandomUniform(0.0, 1.0),
            regularizer=self.kernel_regularizer,
        )

    def call(self, inputs, training=None):
        if training:
            inputs = inputs / ops.sqrt(unbiased_variance(inputs, (1, 2, 3)) + EPSILON)
        return super().call(inputs) * self.alpha

    # Keras' conv layers save only kernel and bias; α and τ must be saved too.
    def save_own_variables(self, store):
        for i, variable in enumerate((self._kernel, self.alpha, self.tau)):
            store[str(i)] = variable

    def load_own_variables(self, store):
        self._check_load_own_variables(store)
        for i, variable in enumerate((self._kernel, self.alpha, self.tau)):
            variable.assign(store[str(i)])

    def get_config(self):
        config = super().get_config()
        for fixed in ("input_quantizer", "kernel_quantizer", "pad_values", "use_bias"):
            config.pop(fixed, None)
        return config


class _ReCUWeight(quantizers.Quantizer):
    """The kernel quantizer of one ReCUConv2D: 1-bit, reads that layer's τ."""

    bits = 1

    def __init__(self, layer):
        self.layer = layer

    def __call__(self, kernel):
        return recu_weight(kernel, self.layer.tau)

    def __repr__(self):
        return "ReCUWeight()"
