"""The int8 QAT policy: one row per Keras layer class, as TFMOT's default 8-bit registry.

Integer-arithmetic-only inference (Jacob et al., arXiv 1712.05877, §2-3) gives each op that
TFLite computes in int8 its own output scale; quantization-aware training places a fake-quant
op (a quantization point, `effkeras.layers.qat.FakeQuant`) exactly where the int8 file will
requantize, and nowhere else. `SCHEME` says, for each layer class `quantize_model` accepts:

- `weights`: the weights that get an int8 quantization point, and `qat_layer`, the QAT twin
  that holds them. Conv2D, DepthwiseConv2D and Dense fold the BatchNormalization after them
  into their kernel and bias on every step, and the folded kernel is what is fake-quantized
  (TFLite folds BN at conversion: Jacob et al. §3.2, Krishnamoorthi arXiv 1806.08342 §3.2).
- `output`: REQUANTIZED (a quantization point after it: conv blocks, ADD, MEAN, HARD_SWISH,
  a standalone BN as MUL/ADD, ...), SAME_CODES (its output codes are its input's: reshape,
  flatten, max pooling, padding, dropout), INPUT_SCALE (TFLite runs it at its input's scale:
  average pooling re-uses its input's quantizer), INPUT (the model's input: the raw pixel range,
  fixed) or REFUSED (`reason` says why).
- `fuses_activation`: a ReLU, ReLU6 or hard tanh right after it is TFLite's fused activation: one
  quantization point after the ReLU, none between (`fusable`: the ReLU that may be fused).
- `fixed_ranges`: the output range of TFLite's int8 kernel, by the op's activation name
  (LOGISTIC and SOFTMAX: scale 1/256, zero point -128; TANH: 1/128, 0): a quantization point of
  another range would cost a requantizing op.
- `rewrite`: CHANNEL_AFFINE (a BatchNormalization that follows no conv, and a LayerScale, become
  the MUL and ADD TFLite makes of them, `ChannelAffine`, a quantization point after each) or
  RESCALING (a scale-only Rescaling in front of a conv is folded into its kernel, as the
  converter does; one with an offset, and a PixelNormalization, become the equivalent 1x1
  QAT depthwise conv: one op, one quantization point, its weights and bias as the file's).

A class without a row is refused, and so is a layer whose configuration its row does not allow
(`refusal`): quantize_model names every one of them.
"""

import dataclasses

import keras
import numpy as np
from keras import layers

from effkeras.layers.activations import LerpTable
from effkeras.layers.common import ChannelPad, PixelNormalization
from effkeras.layers.convnext import LayerScale
from effkeras.layers.int8_step import Int8Step
from effkeras.layers.qat import QATConv2D, QATDense, QATDepthwiseConv2D, QATHardSwish

INPUT_RANGE = (0.0, 255.0)  # raw pixels: every registry model normalises them itself
# Activations whose int8 TFLite kernels have a fixed output quantization (and the range that
# gives it): a quantization point of another range would cost a requantizing op.
FIXED_OUTPUT_RANGES = {"sigmoid": (0.0, 255 / 256), "tanh": (-1.0, 127 / 128)}
# The activations an Activation layer may compute: those with an int8 TFLite kernel.
ACTIVATIONS = (
    "relu",
    "relu6",
    "hard_tanh",
    "hard_swish",
    "hard_silu",
    "sigmoid",
    "tanh",
    "gelu",
    "linear",
)
# Activations TFLite fuses into the op before them (RELU, RELU6, RELU_N1_TO_1).
FUSED = ("relu", "relu6", "hard_tanh")

# What follows a layer in the int8 file (`Policy.output`).
REQUANTIZED = "requantized"
SAME_CODES = "same codes"
INPUT_SCALE = "input scale"
INPUT = "input"
REFUSED = "refused"
# How quantize_model rewrites a layer other than a QAT twin (`Policy.rewrite`).
CHANNEL_AFFINE = "channel affine"
RESCALING = "rescaling"


@dataclasses.dataclass(frozen=True)
class Policy:
    """How quantize_model treats one Keras layer class (the module docstring has the fields).

    Args:
        output: REQUANTIZED, SAME_CODES, INPUT_SCALE, INPUT or REFUSED.
        weights: names of the weights that get an int8 quantization point (in `qat_layer`).
        qat_layer: the QAT twin that replaces the layer, BN folded in; None: none.
        activations: the activations the layer may compute itself (the weighted layers and
            Activation); None: any.
        fuses_activation: whether a ReLU/ReLU6 right after it is computed by it.
        fusable: whether it may be that ReLU/ReLU6 (`fusable` checks its configuration).
        fixed_ranges: {activation name: (low, high)} of TFLite's int8 kernel.
        rewrite: CHANNEL_AFFINE, RESCALING or None (copied as it is).
        reason: why the class is refused (output REFUSED).
    """

    output: str = REQUANTIZED
    weights: tuple = ()
    qat_layer: type = None
    activations: tuple = None
    fuses_activation: bool = False
    fusable: bool = False
    fixed_ranges: dict = dataclasses.field(default_factory=dict)
    rewrite: str = None
    reason: str = ""


def _weighted(qat_layer):
    return Policy(
        weights=("kernel",),
        qat_layer=qat_layer,
        activations=("linear", *FUSED),
        fuses_activation=True,
    )


_REQUANTIZED = Policy()
_SAME_CODES = Policy(SAME_CODES)
SCHEME = {
    layers.InputLayer: Policy(INPUT),
    # int8 weights per output channel (QATDense: per tensor, as the converter's FULLY_CONNECTED)
    layers.Conv2D: _weighted(QATConv2D),
    layers.DepthwiseConv2D: _weighted(QATDepthwiseConv2D),
    layers.Dense: _weighted(QATDense),
    # ops with an output scale of their own
    layers.Add: Policy(fuses_activation=True),
    layers.Subtract: Policy(fuses_activation=True),
    layers.Multiply: _REQUANTIZED,
    layers.Average: _REQUANTIZED,
    layers.Maximum: _REQUANTIZED,
    layers.Minimum: _REQUANTIZED,
    layers.GlobalAveragePooling1D: _REQUANTIZED,
    layers.GlobalAveragePooling2D: _REQUANTIZED,
    layers.UpSampling2D: _REQUANTIZED,
    layers.Resizing: _REQUANTIZED,
    PixelNormalization: Policy(rewrite=RESCALING),  # the same depthwise op
    LerpTable: _REQUANTIZED,  # a learned activation, frozen to its int8 table (a GATHER)
    Int8Step: _REQUANTIZED,  # a binary layer's input quantizer, at its `output_range`
    QATHardSwish: _REQUANTIZED,  # an Activation's hard-swish in a QAT model
    layers.BatchNormalization: Policy(fuses_activation=True, rewrite=CHANNEL_AFFINE),
    LayerScale: Policy(fuses_activation=True, rewrite=CHANNEL_AFFINE),
    layers.Rescaling: Policy(rewrite=RESCALING),
    layers.ReLU: Policy(fusable=True),
    layers.Activation: Policy(
        activations=ACTIVATIONS, fusable=True, fixed_ranges=FIXED_OUTPUT_RANGES
    ),
    layers.Softmax: Policy(fixed_ranges={"softmax": FIXED_OUTPUT_RANGES["sigmoid"]}),
    # ops whose output codes are their input's
    layers.Reshape: _SAME_CODES,
    layers.Flatten: _SAME_CODES,
    layers.Dropout: _SAME_CODES,
    layers.SpatialDropout2D: _SAME_CODES,
    layers.MaxPooling2D: _SAME_CODES,
    layers.GlobalMaxPooling2D: _SAME_CODES,
    layers.ZeroPadding2D: _SAME_CODES,
    ChannelPad: _SAME_CODES,  # a PAD of the channels with the zero point
    layers.Cropping2D: _SAME_CODES,
    layers.Permute: _SAME_CODES,
    layers.Identity: _SAME_CODES,
    layers.AveragePooling2D: Policy(INPUT_SCALE),
    layers.Concatenate: Policy(
        REFUSED,
        reason=(
            "TensorFlow 2.21's converter requires a concatenation's inputs and output at one "
            "scale in a QAT graph, and fails on quantization points that differ"
        ),
    ),
}


def policy(layer):
    """The row of `SCHEME` that applies to `layer`.

    A layer takes the row of its class or of the nearest base class that has one, except the
    rows of QAT twins (Conv2D, DepthwiseConv2D, Dense), which apply to that exact class only: a
    subclass computes something else (a binary or collapsible conv).

    Args:
        layer: a Keras layer.

    Returns:
        The `Policy`, or None where no row applies (the layer is refused).
    """
    for cls in type(layer).__mro__:
        row = SCHEME.get(cls)
        if row is not None and (row.qat_layer is None or cls is type(layer)):
            return row
    return None


def activation_of(layer):
    """The serialized name of `layer.activation` (a string)."""
    name = keras.activations.serialize(layer.activation)
    return name if isinstance(name, str) else str(name)


def is_hard_swish(layer):
    """Whether `layer` is an Activation of hard-swish (Keras' hard_silu): quantize_model makes
    it a QATHardSwish."""
    return type(layer) is layers.Activation and activation_of(layer) in ("hard_silu", "hard_swish")


def fusable(layer):
    """'relu', 'relu6' or 'hard_tanh' where `layer` is an activation TFLite fuses into the op
    before it.

    Args:
        layer: a Keras layer.

    Returns:
        A name in FUSED, or None for any other layer (a leaky or thresholded ReLU included).
    """
    if isinstance(layer, layers.ReLU):
        if layer.negative_slope or layer.threshold or layer.max_value not in (None, 6.0):
            return None
        return "relu" if layer.max_value is None else "relu6"
    if type(layer) is layers.Activation:
        name = keras.activations.serialize(layer.activation)
        name = name if isinstance(name, str) else name.get("config", {}).get("name", name)
        return name if name in FUSED else None
    return None


def fixed_output_range(layer):
    """The range whose codes TFLite's int8 kernel of `layer` always outputs.

    Args:
        layer: a Keras layer (Softmax, an Activation of sigmoid or tanh, and Int8Step have
            one).

    Returns:
        (low, high), or None where the kernel's output scale is free.
    """
    if isinstance(layer, Int8Step):
        return layer.output_range
    if isinstance(layer, layers.Softmax):
        name = "softmax"
    elif type(layer) is layers.Activation:
        name = activation_of(layer)
    else:
        return None
    row = policy(layer)
    return None if row is None else row.fixed_ranges.get(name)


def refusal(layer, row):
    """Why `layer`'s configuration cannot be made int8 although its class has a row.

    Args:
        layer: a Keras layer.
        row: its `Policy` (`policy(layer)`).

    Returns:
        What the error says after the layer's name, or None where the layer is accepted.
    """
    if row.qat_layer is not None and activation_of(layer) not in row.activations:
        return (
            f"{type(layer).__name__} with activation {activation_of(layer)}: TFLite fuses "
            f"ReLU/ReLU6 only"
        )
    if type(layer) is layers.Activation and activation_of(layer) not in row.activations:
        return f"Activation {activation_of(layer)}: no int8 TFLite kernel"
    if (
        isinstance(layer, layers.Rescaling)
        and row.rewrite == RESCALING
        and not np.all(np.asarray(layer.scale, np.float64) > 0)
    ):
        return "Rescaling by a non-positive scale"
    return None
