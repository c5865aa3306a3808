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

ERN's w1a2 quantizers ("Efficiera Residual Networks", arXiv 2410.11553, §3.1):
`HalfWaveGaussianQuantizer` (2-bit activations, thresholds 1/3, 1, 5/3; larq-style
`ste_unsigned` is the same class), `BinaryChannelWiseMeanScaling` (sign(W)·mean|W_o|) and
`BinaryPower2Scaling` (sign(W)/32), each with an optional EWGS gradient (`ewgs_delta`).

    core.py    registration, the custom-gradient wrapper, the LCE sign form, `Quantizer`
    binary.py  larq's quantizers and Larq Zoo's
    ern.py     ERN's
"""

import keras

from effkeras.errors import InputError
from effkeras.quantizers.binary import (
    ApproxSign,
    DoReFa,
    MagnitudeAwareSign,
    MagnitudeAwareSignUnclipped,
    SteHeaviside,
    SteSign,
    SwishSign,
    XnorWeightScale,
    approx_sign,
    dorefa_quantizer,
    magnitude_aware_sign,
    magnitude_aware_sign_unclipped,
    ste_heaviside,
    ste_sign,
    swish_sign,
    unsigned_thresholds,
    xnor_weight_scale,
)
from effkeras.quantizers.core import Quantizer, channel_mean_abs
from effkeras.quantizers.ern import (
    BinaryChannelWiseMeanScaling,
    BinaryPower2Scaling,
    HalfWaveGaussianQuantizer,
    UnsignedQuantizer,
    binary_channel_wise_mean_scaling,
    binary_power2_scaling,
    half_wave_gaussian,
    ste_unsigned,
)

__all__ = [
    "ALIASES",
    "ApproxSign",
    "BinaryChannelWiseMeanScaling",
    "BinaryPower2Scaling",
    "DoReFa",
    "HalfWaveGaussianQuantizer",
    "MagnitudeAwareSign",
    "MagnitudeAwareSignUnclipped",
    "Quantizer",
    "SteHeaviside",
    "SteSign",
    "SwishSign",
    "UnsignedQuantizer",
    "XnorWeightScale",
    "approx_sign",
    "binary_channel_wise_mean_scaling",
    "binary_power2_scaling",
    "channel_mean_abs",
    "dorefa_quantizer",
    "get",
    "half_wave_gaussian",
    "magnitude_aware_sign",
    "magnitude_aware_sign_unclipped",
    "serialize",
    "ste_heaviside",
    "ste_sign",
    "ste_unsigned",
    "swish_sign",
    "unsigned_thresholds",
    "xnor_weight_scale",
]


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
_BY_NAME = {
    **ALIASES,
    **{cls.__name__: cls for cls in ALIASES.values()},
    "UnsignedQuantizer": HalfWaveGaussianQuantizer,
}


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
    raise InputError(
        f"Cannot interpret {identifier!r} as a quantizer: pass a name such as "
        f"'ste_sign', a config dict, a Quantizer or a callable."
    )
