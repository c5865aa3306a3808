"""int8 quantization-aware training (QAT) for Keras 3 models, in the form TFLite deploys.

Integer-arithmetic-only inference (Jacob et al., CVPR 2018, arXiv 1712.05877, §2-3): int8 weights
per output channel, symmetric (zero point 0, codes in [-127, 127]); int8 activations per tensor,
asymmetric (a scale and a zero point), with 0 exactly representable. QAT simulates that rounding
in the float graph with fake-quant ops (`keras.quantizers.fake_quant_with_min_max_vars`, which
on TensorFlow is tf.quantization's FakeQuantWithMinMaxVars[PerChannel]), so training sees it and
the TFLite converter turns the graph into an int8 model with exactly those ranges: the int8
target (effkeras.deploy.tflite) reads them, no calibration pass needed.

`quantize_model(model, calibration)` rewrites a trained float model (graph/rewrite.py):
- Conv2D, DepthwiseConv2D and Dense become `QATConv2D`, `QATDepthwiseConv2D`, `QATDense`: the
  BatchNormalization after them is folded into their kernel and bias on every step, and the
  folded kernel is what is fake-quantized (TFLite folds BN at conversion, so QAT must see the
  folded weights: Jacob et al. §3.2, Krishnamoorthi arXiv 1806.08342 §3.2). The BN statistics
  stay the trained model's moving averages (frozen: that paper's recommendation for the end of
  QAT, and a QAT run here starts from a trained model); γ and β train. A ReLU or ReLU6 after
  them is fused (TFLite's fused activation): one quantization point after it, none between.
- A `FakeQuant` (one quantization point) follows every op that TFLite computes in int8 with an
  output scale of its own: fused conv blocks, ADD (with a ReLU after it fused), MEAN, HARD_SWISH,
  standalone BN (MUL/ADD), and the model's input (the raw pixel range). Ops whose
  output codes are their input's (reshape, flatten, max pooling, padding, dropout) get none;
  average pooling, which TFLite runs at its input's scale, re-uses its input's quantizer.
  Sigmoid, tanh and softmax get the fixed output range of TFLite's int8 kernels.
- Concatenation is refused by name: TensorFlow 2.21's converter requires its inputs and output
  at one scale in a QAT graph, and fails on quantization points that differ.
- A scale-only Rescaling in front of a conv is folded into its kernel (as the converter does);
  one with an offset becomes the equivalent constant 1x1 depthwise conv (PixelNormalization),
  one op with one quantization point (the converter makes a MUL and an ADD of it; Vela runs
  the depthwise op far faster: see PixelNormalization).
- A BatchNormalization that follows no conv, and a LayerScale (ResMLP), become the MUL and
  ADD TFLite makes of them (`ChannelAffine`), a quantization point after each.
- Collapsible blocks (RAN-e) are collapsed and learned activations (LERP-PSA, B-splines)
  frozen to their tables first (graph/passes): QAT trains what deploys, around fixed tables.
Activation ranges are moving averages (decay EMA_DECAY) of each training batch's min and max;
`calibrate` first sets them to the float model's min and max over a calibration set, exactly
what post-training quantization uses, so QAT starts where PTQ stands.
"""

import numpy as np
import keras
from keras import layers, ops

from effkeras.graph.passes.collapse import collapse
from effkeras.graph.fold_bn import batch_norm_affine
from effkeras.graph.passes.freeze_tables import freeze_tables
from effkeras.graph.rewrite import check_models, copy_call, readers, rewrite
from effkeras.errors import InputError
from effkeras.layers.activations import LerpTable
from effkeras.layers.common import PixelNormalization
from effkeras.layers.convnext import LayerScale
from effkeras.layers.qat import (EMA_DECAY, ChannelAffine, FakeQuant, FoldedBatchNorm, QATConv2D,
                                QATDense, QATDepthwiseConv2D, fake_quant, quantize_kernel)

INPUT_RANGE = (0.0, 255.0)  # raw pixels: every registry model normalises them itself
MODES = ("quantize", "calibrate", "float")
# Activations whose int8 TFLite kernels have a fixed output quantization (and the range that
# gives it): a quantization point of another range would cost a requantizing op.
FIXED_OUTPUT_RANGES = {"sigmoid": (0.0, 255 / 256), "tanh": (-1.0, 127 / 128)}
# Largest |int32 bias code| snap_biases allows: 2^24 keeps every code, and the accumulator it
# starts, exact in float32 (XNNPack's int8 kernels requantize in float32).
MAX_BIAS_CODE = 2 ** 24


def set_mode(model, mode):
    """Every quantizer of `model` in `mode`: "quantize" (training and inference), "calibrate"
    (float outputs, activation quantizers record min/max) or "float" (no rounding: the float
    model, for checks). Modes other than "quantize" are for eager calls (`model(x)`)."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; choose from {', '.join(MODES)}")
    for layer in quantized_layers(model):
        layer.mode = mode


def quantized_layers(model):
    return [layer for layer in model._flatten_layers(include_self=False)
            if isinstance(layer, (FakeQuant, FoldedBatchNorm))]


def is_qat_model(model):
    return isinstance(model, keras.Model) and any(
        isinstance(layer, FakeQuant) for layer in model._flatten_layers(include_self=False))


# --- the rewrite ------------------------------------------------------------------------------

_WEIGHTED = {layers.Conv2D: QATConv2D, layers.DepthwiseConv2D: QATDepthwiseConv2D,
             layers.Dense: QATDense}
# Ops whose output codes are their input's: no quantization point of their own.
_SAME_CODES = (layers.Reshape, layers.Flatten, layers.Dropout, layers.SpatialDropout2D,
               layers.MaxPooling2D, layers.GlobalMaxPooling2D, layers.ZeroPadding2D,
               layers.Cropping2D, layers.Permute, layers.Identity)
# Ops TFLite computes in int8 with an output scale of their own: a quantization point after.
_REQUANTIZED = (layers.Add, layers.Subtract, layers.Multiply, layers.Average, layers.Maximum,
                layers.Minimum, layers.GlobalAveragePooling1D,
                layers.GlobalAveragePooling2D, layers.BatchNormalization, layers.ReLU,
                layers.Activation, layers.Softmax, layers.UpSampling2D, layers.Resizing,
                PixelNormalization, LayerScale, LerpTable)
_ACTIVATIONS = ("relu", "relu6", "hard_swish", "hard_silu", "sigmoid", "tanh", "gelu", "linear")


def _activation_name(layer):
    """'relu' / 'relu6' for a layer TFLite fuses into the op before it, else None."""
    if isinstance(layer, layers.ReLU):
        if layer.negative_slope or layer.threshold or layer.max_value not in (None, 6.0):
            return None
        return "relu" if layer.max_value is None else "relu6"
    if type(layer) is layers.Activation:
        name = keras.activations.serialize(layer.activation)
        name = name if isinstance(name, str) else name.get("config", {}).get("name", name)
        return name if name in ("relu", "relu6") else None
    return None


def _activation_of(layer):
    name = keras.activations.serialize(layer.activation)
    return name if isinstance(name, str) else str(name)


class _Plan:
    """Which layers fold into which (conv <- BN <- ReLU, Add <- ReLU, Rescaling -> conv)."""

    def __init__(self, model):
        reads, outputs = readers(model)

        def sole_reader(layer):
            found = reads.get(id(layer), [])
            return found[0] if len(found) == 1 and id(layer) not in outputs else None

        self.batch_norm = {}  # id(conv) -> its BN
        self.activation = {}  # id(conv or add) -> fused activation name
        self.absorbed = set()  # ids of BN/activation layers computed by the layer before them
        self.prescale = {}  # id(conv) -> scale of a Rescaling folded into its kernel
        self.folded_rescaling = set()
        unsupported = []
        for layer in model.layers:
            if isinstance(layer, layers.InputLayer):
                continue
            kind = type(layer)
            if kind in _WEIGHTED:
                if _activation_of(layer) not in ("linear", "relu", "relu6"):
                    unsupported.append(f"{layer.name} ({kind.__name__} with activation "
                                       f"{_activation_of(layer)}: TFLite fuses ReLU/ReLU6 only)")
                    continue
                tail = layer
                nxt = sole_reader(layer)
                if (_activation_of(layer) == "linear" and isinstance(nxt, layers.BatchNormalization)
                        and nxt.axis in (-1, len(nxt.input.shape) - 1)):
                    self.batch_norm[id(layer)] = nxt
                    self.absorbed.add(id(nxt))
                    tail = nxt
                nxt = sole_reader(tail)
                if _activation_of(layer) == "linear" and nxt is not None and _activation_name(nxt):
                    self.activation[id(layer)] = _activation_name(nxt)
                    self.absorbed.add(id(nxt))
            elif isinstance(layer, (layers.Add, layers.Subtract, layers.BatchNormalization,
                                    LayerScale)):
                nxt = sole_reader(layer)
                if nxt is not None and _activation_name(nxt):
                    self.activation[id(layer)] = _activation_name(nxt)
                    self.absorbed.add(id(nxt))
            elif isinstance(layer, layers.Rescaling):
                nxt = sole_reader(layer)
                scale = np.asarray(layer.scale, np.float64)
                if (not np.any(layer.offset) and type(nxt) in (layers.Conv2D,
                                                                layers.DepthwiseConv2D)
                        and nxt.padding in ("same", "valid") and np.all(scale > 0)):
                    self.prescale[id(nxt)] = scale
                    self.folded_rescaling.add(id(layer))
                elif not np.all(scale > 0):
                    unsupported.append(f"{layer.name} (Rescaling by a non-positive scale)")
            elif type(layer) is layers.Activation:
                if _activation_of(layer) not in _ACTIVATIONS:
                    unsupported.append(f"{layer.name} (Activation {_activation_of(layer)}: no "
                                       f"int8 TFLite kernel)")
            elif not isinstance(layer, (*_SAME_CODES, *_REQUANTIZED, layers.AveragePooling2D)):
                unsupported.append(f"{layer.name} ({kind.__name__})")
        if unsupported:
            raise InputError(
                f"quantize_model cannot make these layers of {model.name} int8: "
                f"{', '.join(unsupported)}. It quantizes Conv2D, DepthwiseConv2D and Dense "
                f"(BN and ReLU/ReLU6 folded), add, pooling, rescaling, BN and "
                f"the activations {', '.join(a for a in _ACTIVATIONS if a != 'linear')}; "
                f"deploy the others float (--target=float) or replace them")


def _qat_layer(layer, batch_norm, activation, prescale):
    """The QAT twin of Conv2D/DepthwiseConv2D/Dense `layer`, with its weights (and the BN's,
    and a folded input scale) set once built."""
    config = layer.get_config()
    # Without a BN, a bias all the same: TFLite's op has one, and snap_biases needs it.
    config.update(activation=activation or config["activation"],
                  use_bias=layer.use_bias or batch_norm is None,
                  batch_norm_epsilon=None if batch_norm is None else float(batch_norm.epsilon))
    qat = _WEIGHTED[type(layer)].from_config(config)

    def load():
        kernel = layer.kernel.numpy()
        if prescale is not None:  # a Rescaling before it: conv(s·x, W) = conv(x, s·W)
            kernel = kernel * np.reshape(prescale, (1, 1, -1, 1))  # s along input channels
        bias = layer.bias.numpy() if layer.use_bias else np.zeros(qat.output_channels())
        values = {"kernel": kernel, "bias": bias}
        if batch_norm is not None:
            bn = {w.path.split("/")[-1]: w.numpy() for w in batch_norm.weights}
            channels = qat.output_channels()
            values.update(gamma=bn.get("gamma", np.ones(channels)),
                          beta=bn.get("beta", np.zeros(channels)),
                          moving_mean=bn["moving_mean"], moving_variance=bn["moving_variance"])
        for weight in qat.weights:
            weight.assign(values[weight.path.split("/")[-1]])

    return qat, load


def quantize_model(model, calibration=None, *, input_range=INPUT_RANGE, batch_size=64):
    """The int8 QAT model of trained functional float `model` (module docstring).

    calibration: images (N, H, W, C) in `input_range` (training images) to set the activation
    ranges from (`calibrate`); None leaves them to be set by the first training batch.
    Collapsible blocks (RAN-e) are collapsed first: QAT trains the convs that deploy. Raises
    InputError naming every layer it cannot quantize; RuntimeError if the rewritten model,
    its rounding off, does not compute `model`.
    """
    if not isinstance(model, keras.Model) or not hasattr(model, "_run_through_graph"):
        raise InputError(f"quantize_model takes a functional keras.Model, got "
                         f"{type(model).__name__}")
    if is_qat_model(model):
        raise InputError(f"{model.name} is already a QAT model")
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise InputError(f"quantize_model takes one image input and one logits output; "
                         f"{model.name} has {len(model.inputs)} and {len(model.outputs)} (an "
                         f"early-exit model converts stage by stage with post-training "
                         f"quantization: --target=int8 or tflm on the float model)")
    model, _ = collapse(model)
    model, _ = freeze_tables(model)  # learned activations: the int8 tables they deploy as
    plan = _Plan(model)
    loads = []
    input_quantizers = {}  # id(model input) -> its quantized tensor
    quantizer_of = {}  # id(new tensor) -> the FakeQuant that made it

    def quantized(tensor, name, layer=None, observe=True):
        layer = layer or FakeQuant(name=f"{name}_quant")
        out = layer(tensor) if observe else layer(tensor, observe=False)
        quantizer_of[id(out)] = layer
        return out

    def inputs_of(x, graph):
        """x with every model input replaced by its quantized form."""
        def one(t):
            producer, _ = graph.producer(t)
            if producer is None and id(t) not in quantizer_of:
                if id(t) not in input_quantizers:
                    name = t._keras_history[0].name
                    input_quantizers[id(t)] = quantized(
                        t, name, layer=FakeQuant(fixed_range=input_range, name=f"{name}_quant"))
                return input_quantizers[id(t)]
            return t
        return [one(t) for t in x] if isinstance(x, (list, tuple)) else one(x)

    def replace(layer, x, graph):
        if id(layer) in plan.absorbed:
            return x  # computed by the layer before it
        if isinstance(layer, layers.Rescaling) and id(layer) in plan.folded_rescaling:
            return inputs_of(x, graph)
        x = inputs_of(x, graph)
        if type(layer) in _WEIGHTED:
            qat, load = _qat_layer(layer, plan.batch_norm.get(id(layer)),
                                   plan.activation.get(id(layer)), plan.prescale.get(id(layer)))
            y = qat(x)
            loads.append(load)
            return quantized(y, layer.name)
        if isinstance(layer, layers.Rescaling):  # with an offset: one depthwise op
            scale = np.broadcast_to(np.asarray(layer.scale, np.float64), (x.shape[-1],))
            std = 1 / (255 * scale)
            norm = PixelNormalization(mean=-np.broadcast_to(layer.offset, scale.shape) * std,
                                      std=std, name=layer.name)
            return quantized(norm(x), layer.name)
        if isinstance(layer, (layers.BatchNormalization, LayerScale)):  # MUL (and ADD)
            affine = _channel_affine(layer)
            affine_ops = ("multiply", "add")[:len(affine)]
            y = x
            for operation, value in zip(affine_ops, affine):
                step = ChannelAffine(operation, name=f"{layer.name}_{operation}")
                y = step(y)
                step.value.assign(value)
                if operation == affine_ops[-1] and id(layer) in plan.activation:
                    name = plan.activation[id(layer)]
                    y = layers.Activation(name, name=f"{layer.name}_{name}")(y)
                y = quantized(y, step.name)
            return y
        if isinstance(layer, layers.AveragePooling2D):
            y = copy_call(layer, x)
            source = quantizer_of.get(id(x))
            return quantized(y, layer.name, source, observe=source is None)
        if isinstance(layer, _SAME_CODES):
            y = copy_call(layer, x)
            if id(x) in quantizer_of:
                quantizer_of[id(y)] = quantizer_of[id(x)]
            return y
        y = copy_call(layer, x)
        if id(layer) in plan.activation:
            name = plan.activation[id(layer)]
            y = layers.Activation(name, name=f"{layer.name}_{name}")(y)
        fixed = _fixed_output_range(layer)
        if fixed:
            return quantized(y, layer.name,
                             FakeQuant(fixed_range=fixed, name=f"{layer.name}_quant"))
        return quantized(y, layer.name)

    qat = rewrite(model, replace)
    for load in loads:
        load()
    set_mode(qat, "float")
    try:
        check_models(model, qat, "QAT model with its rounding off")
    finally:
        set_mode(qat, "quantize")
    if calibration is not None:
        calibrate(qat, calibration, batch_size=batch_size)
    return qat


def _fixed_output_range(layer):
    """The range whose codes TFLite's int8 kernel of `layer` always outputs (LOGISTIC and
    SOFTMAX: scale 1/256, zero point -128; TANH: 1/128, 0); None for other layers."""
    if isinstance(layer, layers.Softmax):
        return FIXED_OUTPUT_RANGES["sigmoid"]
    if type(layer) is layers.Activation:
        return FIXED_OUTPUT_RANGES.get(_activation_of(layer))
    return None


def _channel_affine(layer):
    """(scale, shift) per channel of a BatchNormalization (inference) or a LayerScale; (scale,)
    for a LayerScale without bias."""
    if isinstance(layer, LayerScale):
        values = [np.asarray(ops.convert_to_numpy(layer.gamma), np.float64)]
        if layer.use_bias:
            values.append(np.asarray(ops.convert_to_numpy(layer.beta), np.float64))
        return values
    affine = batch_norm_affine(layer)
    if affine is None:
        raise InputError(f"{layer.name} normalises axis {layer.axis}: quantize_model takes "
                         f"BatchNormalization over channels (the last axis)")
    return affine


def calibrate(model, images, batch_size=64):
    """Sets every activation range of QAT `model` to the min and max of the float model's
    activations over `images` (what post-training quantization uses); returns `model`."""
    quantizers = [layer for layer in quantized_layers(model) if isinstance(layer, FakeQuant)]
    for layer in quantizers:
        layer.observed.assign(0.0)
    set_mode(model, "calibrate")
    try:
        images = np.asarray(images, np.float32)
        for start in range(0, len(images), batch_size):
            model(images[start:start + batch_size], training=False)
    finally:
        set_mode(model, "quantize")
    return model


def unobserved(model):
    """Names of the activation quantizers of `model` that never saw data (no range yet)."""
    return [layer.name for layer in quantized_layers(model)
            if isinstance(layer, FakeQuant) and layer.fixed_range is None
            and float(layer.observed.numpy()) == 0.0]


def input_quantizer(layer):
    """The FakeQuant whose codes `layer` reads (through reshapes, padding and the like)."""
    tensor = layer.input
    while True:
        source = tensor._keras_history[0]
        if isinstance(source, FakeQuant):
            return source
        if not isinstance(source, _SAME_CODES):
            raise InputError(f"{layer.name} does not read a quantized tensor: {source.name} "
                             f"({type(source).__name__}) comes between")
        tensor = source.input


def output_quantizers(model):
    """The FakeQuant that sets each output's int8 scale."""
    found = []
    for tensor in model.outputs:
        source = tensor._keras_history[0]
        found.append(source if isinstance(source, FakeQuant) else input_quantizer(source))
    return found


def snap_biases(model):
    """Moves each folded bias of QAT `model` onto TFLite's int32 bias grid (scale = input scale ×
    weight scale, per channel), in place, by shifting β (or the bias) by less than half a step.

    The converter rounds every bias to that grid; a float bias off it shifts a whole channel
    by a fraction of an output step, enough to flip roundings throughout the network (README:
    on a QAT ResNet-8, 28.7% of logits off without this, 9.9% with it, by 1 step at most).
    After it, the Keras model is the int8 file, rounding for rounding, up to ties.
    A channel whose weights are all but zero (decayed away) has so fine a grid that its bias
    would not fit in int32: its weight range is widened until it does (`weight_floor`, as
    TFLite's own quantizer widens the weight scale), which rounds those weights to 0."""
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
