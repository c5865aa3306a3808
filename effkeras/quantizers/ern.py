"""ERN's w1a2 quantizers ("Efficiera Residual Networks", arXiv 2410.11553, §3.1).

`HalfWaveGaussianQuantizer` (2-bit activations, thresholds 1/3, 1, 5/3; larq-style
`ste_unsigned` is the same class), `BinaryChannelWiseMeanScaling` (sign(W)·mean|W_o|) and
`BinaryPower2Scaling` (sign(W)/32), each with an optional EWGS gradient (`ewgs_delta`).
"""

import keras
import numpy as np
from keras import ops

from effkeras.errors import InputError
from effkeras.quantizers.binary import _inside, _unsigned_codes, unsigned_thresholds
from effkeras.quantizers.core import (
    Quantizer,
    _constant,
    _masked,
    _register,
    _sign,
    _with_gradient,
    channel_mean_abs,
)

# --- ERN (Efficiera Residual Networks, arXiv 2410.11553, §3.1; the official code's quantizers) ---


def _ewgs(delta, x, quantized, upstream):
    """EWGS (Lee et al., CVPR 2021; ERN trains with it, §4.1): upstream·(1 + δ·sign(upstream)·
    (x - quantized)); δ = 0: plain STE."""
    if not delta:
        return upstream
    return upstream * (1.0 + delta * ops.sign(upstream) * (x - quantized))


def ste_unsigned(x, k_bit=2, max_value=2.0):
    """k-bit unsigned quantizer on [0, max_value], round half up, straight-through inside.

    k_bit=2, max_value=2.0 is ERN's HalfWaveGaussianQuantization (official code): codes
    floor(clip(x, 0, 2) * 1.5 + 0.5) in {0..3}, output codes * 2/3. Code i starts exactly at the
    float32 threshold (i - 0.5) / 1.5 (1/3, 1, 5/3), the comparison an LCE export makes. It is
    `half_wave_gaussian` with post-scaling and without EWGS.
    """
    return half_wave_gaussian(x, k_bit=k_bit, max_value=max_value)


def half_wave_gaussian(x, k_bit=2, max_value=2.0, post_scale=True, ewgs_delta=0.0):
    """ERN's HalfWaveGaussianQuantization (official code; the paper's §3.1 says floor, the code
    rounds half up): codes q = floor(clip(x, 0, max) * s + 1/2),
    s = (2^k - 1) / max_value, i.e. {0..3} switching at x = 1/3, 1, 5/3 for the defaults.

    Output q / s (= q * 2/3, post-scale) or the integer q (post_scale=False). Backward: straight
    through inside [0, max_value] (inclusive), zero outside, times s without post-scale; then EWGS
    with δ = ewgs_delta against the quantized value in x's units, q / s.
    """
    scale = (2**k_bit - 1) / max_value

    def forward(x):
        codes = _unsigned_codes(x, k_bit, max_value)
        return codes / scale if post_scale else codes

    def gradient(x, upstream):
        upstream = _masked(_inside(x, max_value), upstream)
        if not post_scale:
            upstream = upstream * scale
        return _ewgs(ewgs_delta, x, _unsigned_codes(x, k_bit, max_value) / scale, upstream)

    return _with_gradient(forward, gradient)(x)


def binary_channel_wise_mean_scaling(kernel, ewgs_delta=0.0):
    """ERN's XNOR weights (official code): sign(W) · α_o with α_o = mean |W_o|, sign(0) = +1.
    Backward: identity (no clipping, nothing through α), or EWGS with δ = ewgs_delta."""

    def forward(kernel):
        return _sign(kernel) * channel_mean_abs(kernel)

    def gradient(kernel, upstream):
        return _ewgs(ewgs_delta, kernel, forward(kernel), upstream)

    return _with_gradient(forward, gradient)(kernel)


def binary_power2_scaling(kernel, divisor=32, ewgs_delta=0.0):
    """ERN's "shared constant scaling factor" weights (arXiv 2410.11553 §3, official code):
    sign(W) / divisor, sign(0) = +1. Backward: identity, or EWGS with δ = ewgs_delta."""

    def forward(kernel):
        return _sign(kernel) * _constant(1.0 / divisor, kernel)

    def gradient(kernel, upstream):
        return _ewgs(ewgs_delta, kernel, forward(kernel), upstream)

    return _with_gradient(forward, gradient)(kernel)


for _function in (
    ste_unsigned,
    half_wave_gaussian,
    binary_channel_wise_mean_scaling,
    binary_power2_scaling,
):
    _register(_function)


def _check_ewgs_delta(name, ewgs_delta):
    if not isinstance(ewgs_delta, (int, float)) or ewgs_delta < 0:
        raise InputError(f"{name} needs ewgs_delta >= 0 (0 is a plain STE), got {ewgs_delta!r}.")
    return float(ewgs_delta)


@_register
class HalfWaveGaussianQuantizer(Quantizer):
    """`half_wave_gaussian` as a class: ERN's activation quantizer, and larq-style `ste_unsigned`
    (`UnsignedQuantizer`, the same maths: post-scale on, no EWGS; the defaults are ERN's).

    Read by the w1a2 -> LCE rewrite (effkeras.deploy): code m is on where x >= thresholds[m - 1],
    and the output is step * code (step = 2/3 with post-scale, 1 without).

    Args:
        k_bit: int >= 1, default 2. Output bits.
        max_value: float > 0, default 2.0. The input is clipped to [0, max_value].
        post_scale: bool, default True. Output q / s; False: the integer code q.
        ewgs_delta: float >= 0, default 0.0. EWGS δ of the gradient (0: plain STE).

    Raises:
        InputError: if k_bit < 1, max_value <= 0, or ewgs_delta is negative or not a number.
    """

    def __init__(self, k_bit=2, max_value=2.0, post_scale=True, ewgs_delta=0.0):
        if k_bit < 1 or max_value <= 0:
            raise InputError(
                f"HalfWaveGaussianQuantizer needs k_bit >= 1 and max_value > 0, "
                f"got k_bit={k_bit}, max_value={max_value}."
            )
        self.bits = k_bit
        self.max_value = max_value
        self.post_scale = bool(post_scale)
        self.ewgs_delta = _check_ewgs_delta("HalfWaveGaussianQuantizer", ewgs_delta)

    @property
    def levels(self):
        return 2**self.bits - 1

    @property
    def thresholds(self):
        """(i - 1/2) * max_value / levels for codes i = 1..levels, as float32 computes them
        (the exact comparisons the forward pass makes): (1/3, 1, 5/3) for ERN."""
        return tuple(float(t) for t in unsigned_thresholds(self.bits, self.max_value))

    @property
    def step(self):
        """Output per code: max_value / levels with post-scale (2/3 for ERN), else 1."""
        return self.max_value / self.levels if self.post_scale else 1.0

    def __call__(self, x):
        return half_wave_gaussian(
            x,
            k_bit=self.bits,
            max_value=self.max_value,
            post_scale=self.post_scale,
            ewgs_delta=self.ewgs_delta,
        )

    def get_config(self):
        # post_scale and ewgs_delta only where they differ from the defaults, so `ste_unsigned`
        # keeps larq's two-key config.
        config = {"k_bit": self.bits, "max_value": self.max_value}
        if not self.post_scale:
            config["post_scale"] = False
        if self.ewgs_delta:
            config["ewgs_delta"] = self.ewgs_delta
        return config


# larq's name for the same class; `.keras` files written before the merge name it.
UnsignedQuantizer = HalfWaveGaussianQuantizer
keras.saving.get_custom_objects()["effkeras>UnsignedQuantizer"] = HalfWaveGaussianQuantizer


class _ScaledBinary(Quantizer):
    """A 1-bit kernel quantizer W -> sign(W) * scale_o, readable by the w1a2 -> LCE rewrite:
    `signs(kernel)` gives the ±1 kernel and `scale(kernel)` the per-output-channel scale."""

    bits = 1

    def signs(self, kernel):
        """The ±1 kernel as numpy (sign(0) = +1)."""
        kernel = ops.convert_to_numpy(kernel)
        return np.where(kernel >= 0, 1.0, -1.0).astype(kernel.dtype)

    def scale(self, kernel):
        raise NotImplementedError


@_register
class BinaryChannelWiseMeanScaling(_ScaledBinary):
    """`binary_channel_wise_mean_scaling` as a class: sign(W) · mean|W_o| (ERN's Conv_cw).

    Args:
        ewgs_delta: float >= 0, default 0.0. EWGS δ of the gradient (0: identity gradient).

    Raises:
        InputError: if ewgs_delta is negative or not a number.
    """

    def __init__(self, ewgs_delta=0.0):
        self.ewgs_delta = _check_ewgs_delta("BinaryChannelWiseMeanScaling", ewgs_delta)

    def scale(self, kernel):
        """α_o = mean |W_o| per output channel, as numpy, shape (C_out,)."""
        return ops.convert_to_numpy(channel_mean_abs(ops.convert_to_tensor(kernel)))

    def __call__(self, kernel):
        return binary_channel_wise_mean_scaling(kernel, ewgs_delta=self.ewgs_delta)

    def get_config(self):
        return {"ewgs_delta": self.ewgs_delta}


@_register
class BinaryPower2Scaling(_ScaledBinary):
    """`binary_power2_scaling` as a class: sign(W) / divisor, ERN's ±1/32 (Conv_p2).

    Args:
        divisor: int, default 32. A power of two.
        ewgs_delta: float >= 0, default 0.0. EWGS δ of the gradient (0: identity gradient).

    Raises:
        InputError: if divisor is not a power-of-two int or ewgs_delta is negative.
    """

    def __init__(self, divisor=32, ewgs_delta=0.0):
        if not isinstance(divisor, int) or divisor < 1 or divisor & (divisor - 1):
            raise InputError(f"BinaryPower2Scaling needs a power-of-two divisor, got {divisor!r}.")
        self.divisor = divisor
        self.ewgs_delta = _check_ewgs_delta("BinaryPower2Scaling", ewgs_delta)

    def scale(self, kernel):
        """1 / divisor for every output channel, as numpy, shape (C_out,)."""
        kernel = ops.convert_to_numpy(kernel)
        return np.full(kernel.shape[-1], 1.0 / self.divisor, kernel.dtype)

    def __call__(self, kernel):
        return binary_power2_scaling(kernel, divisor=self.divisor, ewgs_delta=self.ewgs_delta)

    def get_config(self):
        return {"divisor": self.divisor, "ewgs_delta": self.ewgs_delta}
