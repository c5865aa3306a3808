"""Binary and w1a2 layers lowered to layers that TFLite's int8 builtins compute exactly.

A layer with 1-bit weights computes y_o = Σ_k W_o[k]·q(x)[k] with W_o = ±α_o (ste_sign: α = 1;
mean-|W| or ReCU scaling: one α per output channel). `lower_binary(model)` returns the same
network with each such layer as
- an `Int8Step` (effkeras.layers.int8_step) for its input quantizer q, which the int8 file
  computes with DEPTHWISE_CONV_2D (and ADD) ops whose output codes are exactly q's levels;
- the plain Keras layer (Conv2D, DepthwiseConv2D, Dense) with the float kernel ±α_o (ReCU's
  learned α multiplied in), which int8 quantization stores as codes ±127 with the scale α_o/127
  per channel (BN folded in, the codes stay ±127): the accumulator is the binary sum times
  127 times the step's code unit, an exact integer.
ERN's `PixelEmbedding` becomes an `Int8Step` too (its levels are 0..3 per channel). A layer
that pads its quantized input with a value p (QuickNet's one-padding) gets its input padded
with 0 before the step where q(0) = p (sign(0) = +1, as larq), and a VALID conv.

The lowered model equals the original on the int8 grid; in float it equals it exactly
(the steps compute their quantizers until effkeras.qat freezes them on a calibrated grid).
"""

import keras
import numpy as np
from keras import ops

from effkeras import quantizers
from effkeras.errors import InputError
from effkeras.graph import layer_precision
from effkeras.graph.rewrite import check_outputs, rewrite
from effkeras.layers.ern import PixelEmbedding
from effkeras.layers.int8_step import Int8Step
from effkeras.layers.quantized import (
    QuantConv2D,
    QuantDense,
    QuantDepthwiseConv2D,
    same_padding,
)
from effkeras.layers.recu import ReCUConv2D

# Input quantizers that are functions of one element (not of a batch statistic).
ELEMENTWISE = (
    quantizers.SteSign,
    quantizers.ApproxSign,
    quantizers.SwishSign,
    quantizers.SteHeaviside,
    quantizers.HalfWaveGaussianQuantizer,
    quantizers.DoReFa,
)
_PLAIN = {
    QuantConv2D: keras.layers.Conv2D,
    QuantDepthwiseConv2D: keras.layers.DepthwiseConv2D,
    QuantDense: keras.layers.Dense,
}
_QUANT_KEYS = ("input_quantizer", "kernel_quantizer", "depthwise_quantizer", "pad_values")


def binary_layers(model):
    """The layers of functional `model` with 1-bit kernels, in order.

    Args:
        model: keras.Model.

    Returns:
        A list of layers.
    """
    return [layer for layer in model.layers if layer_precision(layer)[1] == 1]


def unsupported_reason(layer):
    """Why a layer with 1-bit weights cannot be lowered to int8 ops; None when it can.

    Args:
        layer: keras.layers.Layer with a 1-bit kernel quantizer.

    Returns:
        A str with the reason, or None.
    """
    plain = _plain_class(layer)
    if plain is None:
        return f"{type(layer).__name__} (Conv2D, DepthwiseConv2D and Dense are lowered)"
    quantizer = layer.input_quantizer
    if quantizer is not None and not isinstance(quantizer, ELEMENTWISE):
        return f"its input quantizer {quantizer!r} is not elementwise"
    if isinstance(quantizer, quantizers.DoReFa) and quantizer.mode != "activations":
        return "a DoReFa input quantizer in weights mode"
    if getattr(layer, "padding", None) == "same" and layer.pad_values:
        if quantizer is None or float(ops.convert_to_numpy(quantizer(np.zeros(1, "f4")))[0]) != (
            layer.pad_values
        ):
            return f"it pads its quantized input with {layer.pad_values}, which no input maps to"
    return None


def _plain_class(layer):
    for cls in type(layer).__mro__:
        if cls in _PLAIN:
            return _PLAIN[cls]
    return None


def lower_binary(model):
    """A copy of functional `model` with every binary and w1a2 layer lowered (module docstring).

    Args:
        model: keras.Model. A functional model.

    Returns:
        A tuple `(lowered model, number of layers lowered)`.

    Raises:
        InputError: naming every layer with 1-bit weights that cannot be lowered (one nested in
            a sub-model included), and for a kernel that is not ±α per output channel.
    """
    targets = binary_layers(model)
    unsupported = [
        f"{layer.name}: {reason}"
        for layer in targets
        if (reason := unsupported_reason(layer)) is not None
    ]
    unsupported += [
        f"{inner.name}: inside nested model {outer.name}"
        for outer in model.layers
        if isinstance(outer, keras.Model)
        for inner in binary_layers(outer)
    ]
    if unsupported:
        raise InputError(
            f"cannot lower {len(unsupported)} binary layer(s) of {model.name} to int8 ops: "
            + "; ".join(unsupported)
        )
    lowered = {id(layer) for layer in targets}
    pieces = []  # (original layer, the layers that replace it, in order)

    def replace(layer, x, graph):
        if isinstance(layer, PixelEmbedding):
            return Int8Step(None, embedding=layer.get_config(), name=layer.name)(x)
        if id(layer) not in lowered:
            return None
        return _lower(layer, x, pieces)

    new = rewrite(model, replace)
    for layer, chain in pieces:
        _check(layer, chain)
    return new, len(targets)


def _check(layer, chain):
    """RuntimeError unless `chain` computes binary `layer` on a random batch (layer by layer: end
    to end, a binary net's signs flip under float rounding)."""
    rng = np.random.default_rng(0)
    shape = [2] + [8 if d is None else d for d in layer.input.shape[1:]]
    x = rng.normal(0.0, 2.0, shape).astype(np.float32)
    x[0, ..., 0] = 0.0  # sign(0)
    expected = layer(x, training=False)
    actual = x
    for piece in chain:
        actual = piece(actual)
    check_outputs(expected, actual, f"lowered {layer.name}")


def _lower(layer, x, pieces):
    """The output of binary `layer` lowered, called on new tensor x; appends (layer, the layers
    that replace it) to `pieces`."""
    chain = []
    config = {k: v for k, v in layer.get_config().items() if k not in _QUANT_KEYS}
    config["use_bias"] = layer.use_bias  # ReCU's config leaves its fixed use_bias=False out
    for key in ("kernel_constraint", "kernel_regularizer", "bias_regularizer"):
        config.pop(key, None)
    if getattr(layer, "padding", None) == "same" and layer.pad_values:
        pads = [
            same_padding(size, k, s, d)
            for size, k, s, d in zip(
                x.shape[1:3], layer.kernel_size, layer.strides, layer.dilation_rate
            )
        ]
        chain.append(keras.layers.ZeroPadding2D(tuple(pads), name=f"{layer.name}_pad"))
        config["padding"] = "valid"
    if layer.input_quantizer is not None:
        chain.append(Int8Step(layer.input_quantizer, name=f"{layer.name}_step"))
    plain = _plain_class(layer).from_config(config)
    chain.append(plain)
    for piece in chain:
        x = piece(x)
    plain.set_weights([_binary_kernel(layer)] + ([layer.bias] if layer.use_bias else []))
    pieces.append((layer, chain))
    return x


def _binary_kernel(layer):
    """The ±α_o kernel `layer` multiplies with (ReCU's α in it), checked to be one."""
    kernel = np.asarray(ops.convert_to_numpy(layer.kernel_quantizer(layer.kernel)), np.float64)
    if isinstance(layer, ReCUConv2D):
        kernel = kernel * np.asarray(ops.convert_to_numpy(layer.alpha), np.float64)
    # Output channels: the last axis (a depthwise kernel's (kh, kw, C, M): C·M of them).
    depthwise = isinstance(layer, QuantDepthwiseConv2D)
    magnitude = np.abs(kernel).reshape(
        -1, kernel.shape[-1] * (kernel.shape[-2] if depthwise else 1)
    )
    if not np.allclose(magnitude, magnitude.max(axis=0), rtol=1e-6, atol=0):
        raise InputError(
            f"{layer.name}: its quantized kernel is not ±α per output channel, so int8 codes "
            f"cannot hold it exactly"
        )
    return kernel.astype(np.float32)
