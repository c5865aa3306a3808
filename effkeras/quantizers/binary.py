"""larq 0.14's quantizers for Keras 3: the same names, forward values and gradients.

Binarizers emit `where(x >= 0, 1, -1)` under a custom gradient: the Select form that the LCE
converter turns into `LceQuantize` (Larq Compute Engine, Bannink et al., MLSys 2021, arXiv
2011.09398). Larq Zoo's own kernel quantizers (plain functions there) follow larq's:
`xnor_weight_scale` (XNORNet) and `magnitude_aware_sign_unclipped` (DoReFaNet).
"""

import numpy as np
from keras import ops

from effkeras.errors import InputError
from effkeras.quantizers.core import (
    Quantizer,
    _clipped,
    _constant,
    _register,
    _sign,
    _tensor,
    _with_gradient,
    channel_mean_abs,
)


def ste_sign(x, clip_value=1.0):
    """Sign with a straight-through gradient, zero where |x| > clip_value."""
    return _with_gradient(_sign, _clipped(clip_value))(x)


def _approx_sign_gradient(x, upstream):
    # Bi-Real's piecewise-polynomial derivative, max(0, 2 - 2|x|) (ReCU, arXiv 2103.12369, Eq. 7).
    return ops.relu(2.0 - 2.0 * ops.abs(x)) * upstream


def approx_sign(x):
    """Sign with the ApproxSign (Bi-Real Net) gradient."""
    return _with_gradient(_sign, _approx_sign_gradient)(x)


def swish_sign(x, beta=5.0):
    """Sign with the SignSwish (BNN+) gradient; larger beta is closer to sign's derivative."""

    def gradient(x, upstream):
        bx = beta * x
        return upstream * beta * (2.0 - bx * ops.tanh(bx * 0.5)) / (1.0 + ops.cosh(bx))

    return _with_gradient(_sign, gradient)(x)


def magnitude_aware_sign(x, clip_value=1.0):
    """Bi-Real Net weight binarizer: sign(x) times the mean |x| per output channel (last axis).
    The scale gets no gradient, as in larq."""
    x = _tensor(x)
    return ops.stop_gradient(channel_mean_abs(x)) * ste_sign(x, clip_value=clip_value)


def ste_heaviside(x, clip_value=1.0):
    """Heaviside step (1 where x > 0, else 0) with a straight-through gradient."""

    def forward(x):
        return ops.where(ops.greater(x, 0), _constant(1.0, x), _constant(0.0, x))

    return _with_gradient(forward, _clipped(clip_value))(x)


def xnor_weight_scale(x):
    """XNOR-Net's weight binarizer (Rastegari et al., arXiv 1603.05279, Sec. 3.1), as Larq Zoo's
    XNORNet: W clipped to [-1, 1], then sign(W) times α_o = mean |W| per output channel (last
    axis). Gradients flow through the clip, the straight-through sign (clip 1) and α."""
    x = ops.clip(x, -1.0, 1.0)
    return channel_mean_abs(x) * ste_sign(x)


def magnitude_aware_sign_unclipped(x):
    """DoReFa-Net's 1-bit weights (Zhou et al., arXiv 1606.06160, Sec. 2.3), as Larq Zoo's
    DoReFaNet: sign(W) times one scale for the whole kernel, mean |W|, with an identity gradient
    (no clipping, nothing through the scale)."""

    def forward(x):
        return _sign(x) * ops.stop_gradient(ops.mean(ops.abs(x)))

    return _with_gradient(forward, lambda x, upstream: upstream)(x)


def dorefa_quantizer(x, k_bit=2, mode="activations"):
    """DoReFa-Net k-bit quantizer; `mode` is "activations" (range [0, 1]) or "weights" ([-1, 1])."""
    levels = 2**k_bit - 1
    if mode == "activations":
        x = ops.clip(x, 0.0, 1.0)
    elif mode == "weights":
        limited = ops.tanh(x)
        largest = ops.stop_gradient(ops.max(ops.abs(limited)))
        x = ops.divide_no_nan(limited, 2.0 * largest) + 0.5
    else:
        raise InputError(f"DoReFa mode must be 'activations' or 'weights', got {mode!r}.")
    # Round half to even (tf.round), like larq.
    x = _with_gradient(lambda v: ops.round(v * levels) / levels, lambda v, upstream: upstream)(x)
    return 2.0 * x - 1.0 if mode == "weights" else x


def unsigned_thresholds(k_bit, max_value):
    """float32 starts (i - 1/2) * max_value / levels of codes i = 1..levels: (1/3, 1, 5/3) for
    ERN."""
    levels = 2**k_bit - 1
    scale = np.float32(levels / max_value)
    return (np.arange(1, levels + 1, dtype=np.float32) - np.float32(0.5)) / scale


def _unsigned_codes(x, k_bit, max_value):
    """Integer codes of clip(x, 0, max_value) as floats: code i from its float32 threshold on.

    floor(x * scale + 1/2) can land one code off next to a threshold (rounding of the product, or
    a graph optimizer rewriting a division), so each code is settled against the constant
    threshold table: the comparison an LCE export makes.
    """
    levels = 2**k_bit - 1
    clipped = ops.clip(x, 0.0, max_value)
    estimate = ops.clip(ops.floor(clipped * (levels / max_value) + 0.5), 0, levels)
    starts = np.concatenate([[-np.inf], unsigned_thresholds(k_bit, max_value), [np.inf]])
    starts = ops.convert_to_tensor(starts.astype(np.float32), dtype=clipped.dtype)
    index = ops.cast(estimate, "int32")
    step_down = ops.less(clipped, ops.take(starts, index))
    step_up = ops.greater_equal(clipped, ops.take(starts, index + 1))
    return estimate - ops.cast(step_down, estimate.dtype) + ops.cast(step_up, estimate.dtype)


def _inside(x, max_value):
    return ops.logical_and(ops.greater_equal(x, 0.0), ops.less_equal(x, max_value))


for _function in (
    ste_sign,
    approx_sign,
    swish_sign,
    magnitude_aware_sign,
    ste_heaviside,
    xnor_weight_scale,
    magnitude_aware_sign_unclipped,
    dorefa_quantizer,
):
    _register(_function)


@_register
class SteSign(Quantizer):
    """Sign with a straight-through gradient (larq's `ste_sign`), 1 bit.

    Args:
        clip_value: float or None, default 1.0. Zero gradient where |x| > clip_value (None: never).
    """

    bits = 1

    def __init__(self, clip_value=1.0):
        self.clip_value = clip_value

    def __call__(self, x):
        return ste_sign(x, clip_value=self.clip_value)

    def get_config(self):
        return {"clip_value": self.clip_value}


@_register
class ApproxSign(Quantizer):
    """Sign with the ApproxSign (Bi-Real Net) gradient (larq's `approx_sign`), 1 bit."""

    bits = 1

    def __call__(self, x):
        return approx_sign(x)


@_register
class SwishSign(Quantizer):
    """Sign with the SignSwish (BNN+) gradient (larq's `swish_sign`), 1 bit.

    Args:
        beta: float, default 5.0. Larger beta is closer to sign's derivative.
    """

    bits = 1

    def __init__(self, beta=5.0):
        self.beta = beta

    def __call__(self, x):
        return swish_sign(x, beta=self.beta)

    def get_config(self):
        return {"beta": self.beta}


@_register
class MagnitudeAwareSign(Quantizer):
    """Bi-Real Net's weight binarizer, sign(x)·mean|x| per output channel (no scale gradient).

    Args:
        clip_value: float or None, default 1.0. Zero gradient where |x| > clip_value (None: never).
    """

    bits = 1

    def __init__(self, clip_value=1.0):
        self.clip_value = clip_value

    def __call__(self, x):
        return magnitude_aware_sign(x, clip_value=self.clip_value)

    def get_config(self):
        return {"clip_value": self.clip_value}


@_register
class SteHeaviside(Quantizer):
    """Heaviside step (1 where x > 0, else 0) with a straight-through gradient, 1 bit.

    Args:
        clip_value: float or None, default 1.0. Zero gradient where |x| > clip_value (None: never).
    """

    bits = 1

    def __init__(self, clip_value=1.0):
        self.clip_value = clip_value

    def __call__(self, x):
        return ste_heaviside(x, clip_value=self.clip_value)

    def get_config(self):
        return {"clip_value": self.clip_value}


@_register
class XnorWeightScale(Quantizer):
    """`xnor_weight_scale` as a class (Larq Zoo's XNORNet kernels)."""

    bits = 1

    def __call__(self, x):
        return xnor_weight_scale(x)


@_register
class MagnitudeAwareSignUnclipped(Quantizer):
    """`magnitude_aware_sign_unclipped` as a class (Larq Zoo's DoReFaNet kernels)."""

    bits = 1

    def __call__(self, x):
        return magnitude_aware_sign_unclipped(x)


@_register
class DoReFa(Quantizer):
    """DoReFa-Net k-bit quantizer (larq's `dorefa_quantizer`); `bits` is `k_bit`.

    Args:
        k_bit: int, default 2. Output bits.
        mode: str, default "activations": "activations" (range [0, 1]) or "weights" ([-1, 1]).

    Raises:
        InputError: for another `mode`.
    """

    def __init__(self, k_bit=2, mode="activations"):
        if mode not in ("activations", "weights"):
            raise InputError(f"DoReFa mode must be 'activations' or 'weights', got {mode!r}.")
        self.bits = k_bit
        self.mode = mode

    def __call__(self, x):
        return dorefa_quantizer(x, k_bit=self.bits, mode=self.mode)

    def get_config(self):
        return {"k_bit": self.bits, "mode": self.mode}
