"""Switches, ranges and queries over a QAT model (one made by `quantize_model`).

Activation ranges are moving averages (decay `effkeras.layers.qat.EMA_DECAY`) of each training
batch's min and max; `calibrate` first sets them to the float model's min and max over a
calibration set, exactly what post-training quantization uses, so QAT starts where PTQ stands
(Krishnamoorthi, arXiv 1806.08342, §3). `snap_biases` moves each folded bias onto the int32 grid
the converter rounds it to (Jacob et al., arXiv 1712.05877, §2.4), so that the Keras model is
the int8 file, rounding for rounding.
"""

import keras
import numpy as np
from keras import ops

from effkeras.errors import InputError
from effkeras.layers.int8_step import Int8Step
from effkeras.layers.qat import (
    ChannelAffine,
    FakeQuant,
    FoldedBatchNorm,
    QATHardSwish,
    fake_quant,
)
from effkeras.qat import scheme

MODES = ("quantize", "calibrate", "float")
# The least range `calibrate` leaves: a tensor that was one value on every calibration image (a
# layer of random weights whose input codes never leave 0) gets [min(v, 0), max(v, 0) + 1]
# instead, which holds that value as well, where a vanishing range would give the op before it
# a requantization multiplier beyond what int8 kernels take (XNNPack: input x weight scale
# over output scale below 256).
MIN_WIDTH = 1e-6
# Largest |int32 bias code| snap_biases allows: 2^24 keeps every code, and the accumulator it
# starts, exact in float32 (XNNPack's int8 kernels requantize in float32).
MAX_BIAS_CODE = 2**24


def set_mode(model, mode):
    """Puts every quantizer of `model` in `mode`, in place.

    Modes other than "quantize" are for eager calls (`model(x)`).

    Args:
        model: a QAT model.
        mode: "quantize" (training and inference), "calibrate" (float outputs, activation
            quantizers record min/max) or "float" (no rounding: the float model, for checks).

    Raises:
        ValueError: for a mode not in MODES.
    """
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; choose from {', '.join(MODES)}")
    for layer in quantized_layers(model):
        layer.mode = mode


def quantized_layers(model):
    """The FakeQuant, folded-BN (QAT twin), Int8Step and QATHardSwish layers of `model`,
    nested ones included: the layers with a `mode`."""
    return [
        layer
        for layer in model._flatten_layers(include_self=False)
        if isinstance(layer, (FakeQuant, FoldedBatchNorm, Int8Step, QATHardSwish))
    ]


def is_qat_model(model):
    """Whether `model` is a keras.Model with at least one FakeQuant (a QAT model)."""
    return isinstance(model, keras.Model) and any(
        isinstance(layer, FakeQuant) for layer in model._flatten_layers(include_self=False)
    )


def calibrate(model, images, batch_size=64):
    """Sets every activation range of QAT `model` to the float model's min and max over `images`.

    Post-training quantization's ranges, so that QAT starts where PTQ stands.

    Args:
        model: a QAT model.
        images: (N, H, W, C) images in the model's input range.
        batch_size: images per call.

    Returns:
        `model`, its ranges set, in "quantize" mode.
    """
    quantizers = [layer for layer in quantized_layers(model) if isinstance(layer, FakeQuant)]
    for layer in quantizers:
        layer.observed.assign(0.0)
    set_mode(model, "calibrate")
    try:
        images = np.asarray(images, np.float32)
        for start in range(0, len(images), batch_size):
            model(images[start : start + batch_size], training=False)
    finally:
        set_mode(model, "quantize")
    for layer in quantizers:  # a tensor that never moved: widen its range (module docstring)
        low, high = float(layer.range_min.numpy()), float(layer.range_max.numpy())
        if layer.fixed_range is None and high - low < MIN_WIDTH:
            layer.range_max.assign(max(high, 0.0) + 1.0)
    return model


def freeze_steps(model):
    """Sets every Int8Step of calibrated QAT `model` to its int8 form, on its input's grid.

    Args:
        model: a QAT model whose activation ranges are set.

    Returns:
        The number of Int8Step layers frozen.

    Raises:
        InputError: where a step does not read a quantized tensor.
    """
    steps = [layer for layer in quantized_layers(model) if isinstance(layer, Int8Step)]
    for layer in steps:
        layer.freeze(*input_quantizer(layer).quantization())
    return len(steps)


def freeze_hard_swish(model):
    """Sets every QATHardSwish of calibrated QAT `model` to TFLite's int8 kernel on its input's
    and output's grids, so that at inference it computes what the int8 file computes.

    Args:
        model: a QAT model whose activation ranges are set.

    Returns:
        The number of QATHardSwish layers frozen.

    Raises:
        InputError: where one does not read a quantized tensor or has no quantization point
            after it.
    """
    found = [layer for layer in quantized_layers(model) if isinstance(layer, QATHardSwish)]
    for layer in found:
        layer.freeze(input_quantizer(layer).quantization(), output_quantizer(layer).quantization())
    return len(found)


def unobserved(model):
    """Names of the activation quantizers of `model` that never saw data (no range yet)."""
    return [
        layer.name
        for layer in quantized_layers(model)
        if isinstance(layer, FakeQuant)
        and layer.fixed_range is None
        and float(layer.observed.numpy()) == 0.0
    ]


def input_quantizer(layer):
    """The FakeQuant whose codes `layer` reads (through reshapes, padding and the like).

    Args:
        layer: a layer of a QAT model.

    Returns:
        The FakeQuant layer.

    Raises:
        InputError: where an op with codes of its own comes between.
    """
    tensor = layer.input
    while True:
        source = tensor._keras_history[0]
        if isinstance(source, FakeQuant):
            return source
        row = scheme.policy(source)
        if row is None or row.output != scheme.SAME_CODES:
            raise InputError(
                f"{layer.name} does not read a quantized tensor: {source.name} "
                f"({type(source).__name__}) comes between"
            )
        tensor = source.input


def output_quantizer(layer):
    """The FakeQuant that reads `layer`'s output (sets its int8 scale).

    Args:
        layer: a layer of a QAT model.

    Returns:
        The FakeQuant layer.

    Raises:
        InputError: where no FakeQuant reads it.
    """
    for node in layer._outbound_nodes:
        if isinstance(node.operation, FakeQuant):
            return node.operation
    raise InputError(f"{layer.name} has no quantization point after it")


def output_quantizers(model):
    """The FakeQuant that sets each output's int8 scale, one per output of QAT `model`."""
    found = []
    for tensor in model.outputs:
        source = tensor._keras_history[0]
        found.append(source if isinstance(source, FakeQuant) else input_quantizer(source))
    return found


def snap_biases(model):
    """Moves each folded bias of QAT `model` onto TFLite's int32 bias grid, in place.

    The grid's step is input scale × weight scale, per channel; β (or the bias) moves by less
    than half a step. The converter rounds every bias to that grid; a float bias off it shifts a
    whole channel by a fraction of an output step, enough to flip roundings throughout the
    network (on a QAT ResNet-8, 28.7% of logits off without this, 9.9% with it, by 1 step at
    most). After it, the Keras model is the int8 file, rounding for rounding, up to ties.
    A channel whose weights are all but zero (decayed away) has so fine a grid that its bias
    would not fit in int32: its weight range is widened until it does (`weight_floor`, as
    TFLite's own quantizer widens the weight scale), which rounds those weights to 0.

    A ChannelAffine's values (a lone BN's MUL and ADD constants) move onto the int8 grid the
    converter stores them on (per tensor, over their min and max), whose ends they then are.

    Args:
        model: a QAT model whose activation ranges are set.

    Returns:
        `model`.

    Raises:
        InputError: where a folded layer does not read a quantized tensor.
    """
    for layer in model._flatten_layers(include_self=False):
        if isinstance(layer, ChannelAffine):
            value = layer.value
            value.assign(fake_quant(value, ops.min(value), ops.max(value)))
    for layer in quantized_layers(model):
        if not isinstance(layer, FoldedBatchNorm):
            continue
        input_scale = input_quantizer(layer).quantization()[0]
        bias = np.asarray(ops.convert_to_numpy(layer.folded()[1]), np.float64)
        least = np.abs(bias) / (input_scale * MAX_BIAS_CODE)  # weight scale the bias fits
        if np.any(layer.weight_scales() < least):
            layer.weight_floor = 127 * np.maximum(layer.weight_scales(), least)
        step = input_scale * layer.weight_scales()
        shift = np.round(bias / step) * step - bias
        variable = layer.beta if layer.batch_norm_epsilon is not None else layer.bias
        variable.assign(np.asarray(ops.convert_to_numpy(variable), np.float64) + shift)
    return model
