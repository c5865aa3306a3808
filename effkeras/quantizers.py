"""Quantizers with larq 0.14's names, forward values and gradients, for Keras 3.

Each quantizer is a plain function plus a thin serializable class; `get()` resolves names
the way larq does (`get("ste_sign")` -> `SteSign()`). Every class has `bits` (output precision,
read by `effkeras.graph.summary`) and larq's alias `precision`.

Binarizers emit `where(x >= 0, 1, -1)` under a custom gradient: the Select form that the LCE
converter turns into `LceQuantize` (Larq Compute Engine, Bannink et al., MLSys 2021, arXiv
2011.09398; its converter's `prepare_patterns_common.td`). The `x + stop_gradient(q - x)` trick
would leave the conv in float.

Larq Zoo's own kernel quantizers (plain functions there) follow larq's: `xnor_weight_scale`
(XNORNet) and `magnitude_aware_sign_unclipped` (DoReFaNet), so the importer maps them by name.

ERN's w1a2 quantizers ("Efficiera Residual Networks", arXiv 2410.11553; maths as the official
code's `efficiera/ndk/pth/quantizers.py`) come last: `HalfWaveGaussianQuantizer` (2-bit
activations, thresholds 1/3, 1, 5/3; larq-style `ste_unsigned` is the same class),
`BinaryChannelWiseMeanScaling` (sign(W)·mean|W_o|) and `BinaryPower2Scaling` (sign(W)/32), each
with an optional EWGS gradient (`ewgs_delta`).
"""

import keras
import numpy as np
from keras import ops

from effkeras.errors import InputError

_register = keras.saving.register_keras_serializable(package="effkeras")


def _constant(value, like):
    return ops.convert_to_tensor(value, dtype=keras.backend.standardize_dtype(like.dtype))


def _tensor(x):
    """A variable (a kernel) read once, as a tensor: what a custom gradient must take (or TF asks
    for variable gradients), and what lets ops on it be shared (one |W| for scale and gradient)."""
    return ops.copy(x) if isinstance(x, keras.Variable) else x


def _with_gradient(forward, gradient):
    """`forward` whose backward pass is `gradient(x, upstream)` instead of autodiff."""

    @ops.custom_gradient
    def quantize(x):
        def grad(*args, upstream=None):
            if upstream is None:
                (upstream,) = args
            return gradient(x, upstream)

        return forward(x), grad

    return lambda x: quantize(_tensor(x))


def _sign(x):
    """+1 where x >= 0 (0 included, as larq.math.sign and LCE), -1 elsewhere."""
    return ops.where(ops.greater_equal(x, 0), _constant(1.0, x), _constant(-1.0, x))


def _masked(mask, upstream):
    """upstream where mask, else 0, as a product with the 0/1 mask: one pass fewer than a select
    against a zero tensor (the values are the same for every finite upstream)."""
    return upstream * ops.cast(mask, upstream.dtype)


def _clipped(clip_value):
    """Straight-through gradient, zero where |x| > clip_value (never zero for None)."""
    if clip_value is None:
        return lambda x, upstream: upstream
    return lambda x, upstream: _masked(ops.less_equal(ops.abs(x), clip_value), upstream)


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


def ste_unsigned(x, k_bit=2, max_value=2.0):
    """k-bit unsigned quantizer on [0, max_value], round half up, straight-through inside.

    k_bit=2, max_value=2.0 is ERN's HalfWaveGaussianQuantization (official code): codes
    floor(clip(x, 0, 2) * 1.5 + 0.5) in {0..3}, output codes * 2/3. Code i starts exactly at the
    float32 threshold (i - 0.5) / 1.5 (1/3, 1, 5/3), the comparison an LCE export makes. It is
    `half_wave_gaussian` with post-scaling and without EWGS.
    """
    return half_wave_gaussian(x, k_bit=k_bit, max_value=max_value)


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


# --- ERN (Efficiera Residual Networks, arXiv 2410.11553, §3.1; the official code's quantizers) ---


def _ewgs(delta, x, quantized, upstream):
    """EWGS (Lee et al., CVPR 2021; ERN trains with it, §4.1): upstream·(1 + δ·sign(upstream)·
    (x - quantized)); δ = 0: plain STE."""
    if not delta:
        return upstream
    return upstream * (1.0 + delta * ops.sign(upstream) * (x - quantized))


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


def channel_mean_abs(kernel):
    """α_o = mean |W| over everything but the last (output channel) axis."""
    return ops.mean(ops.abs(kernel), axis=tuple(range(len(kernel.shape) - 1)))


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


for _function in (ste_sign, approx_sign, swish_sign, magnitude_aware_sign, ste_heaviside,
                  xnor_weight_scale, magnitude_aware_sign_unclipped, dorefa_quantizer,
                  ste_unsigned, half_wave_gaussian,
                  binary_channel_wise_mean_scaling, binary_power2_scaling):
    _register(_function)


class Quantizer:
    """Base class: a callable with its output precision in `bits` and a complete config."""

    bits = None

    @property
    def precision(self):
        """larq's name for `bits`."""
        return self.bits

    def __call__(self, x):
        raise NotImplementedError

    def get_config(self):
        return {}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        args = ", ".join(f"{key}={value!r}" for key, value in self.get_config().items())
        return f"{type(self).__name__}({args})"


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
            raise InputError(f"HalfWaveGaussianQuantizer needs k_bit >= 1 and max_value > 0, "
                             f"got k_bit={k_bit}, max_value={max_value}.")
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
        return half_wave_gaussian(x, k_bit=self.bits, max_value=self.max_value,
                                  post_scale=self.post_scale, ewgs_delta=self.ewgs_delta)

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


ALIASES = {
    "ste_sign": SteSign,
    "approx_sign": ApproxSign,
    "swish_sign": SwishSign,
    "magnitude_aware_sign": MagnitudeAwareSign,
    "ste_heaviside": SteHeaviside,
    "xnor_weight_scale": XnorWeightScale,
    "magnitude_aware_sign_unclipped": MagnitudeAwareSignUnclipped,
    "dorefa_quantizer": DoReFa,
    "ste_unsigned": HalfWaveGaussianQuantizer,
    "half_wave_gaussian": HalfWaveGaussianQuantizer,
    "binary_channel_wise_mean_scaling": BinaryChannelWiseMeanScaling,
    "binary_power2_scaling": BinaryPower2Scaling,
}
_BY_NAME = {**ALIASES, **{cls.__name__: cls for cls in ALIASES.values()},
            "UnsignedQuantizer": HalfWaveGaussianQuantizer}


def serialize(quantizer):
    """Returns `quantizer`'s Keras serialization (a config dict); None for None."""
    return None if quantizer is None else keras.saving.serialize_keras_object(quantizer)


def get(identifier):
    """A quantizer from a name, a config dict, an instance or any callable; None stays None.

    Raises:
        InputError: for an unknown name, or an identifier of none of these kinds.
    """
    if identifier is None:
        return None
    if isinstance(identifier, str):
        cls = _BY_NAME.get(identifier)
        if cls is None:
            raise InputError(f"Unknown quantizer {identifier!r}; use one of {sorted(ALIASES)}.")
        return cls()
    if isinstance(identifier, dict):
        return keras.saving.deserialize_keras_object(identifier, custom_objects=_BY_NAME)
    if callable(identifier):
        return identifier
    raise InputError(f"Cannot interpret {identifier!r} as a quantizer: pass a name such as "
                     f"'ste_sign', a config dict, a Quantizer or a callable.")
