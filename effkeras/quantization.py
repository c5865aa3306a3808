"""int8 quantization-aware training (QAT) for Keras 3 models, in the form TFLite deploys.

Integer-arithmetic-only inference (Jacob et al., CVPR 2018, arXiv 1712.05877, §2-3): int8 weights
per output channel, symmetric (zero point 0, codes in [-127, 127]); int8 activations per tensor,
asymmetric (a scale and a zero point), with 0 exactly representable. QAT simulates that rounding
in the float graph with fake-quant ops (`keras.quantizers.fake_quant_with_min_max_vars`, which
on TensorFlow is tf.quantization's FakeQuantWithMinMaxVars[PerChannel]), so training sees it and
the TFLite converter turns the graph into an int8 model with exactly those ranges: the int8
target (effkeras.deploy.tflite) reads them, no calibration pass needed.

`quantize_model(model, calibration)` rewrites a trained float model (deploy/passes/rewrite.py):
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
  frozen to their tables first (deploy/passes): QAT trains what deploys, around fixed tables.
Activation ranges are moving averages (decay EMA_DECAY) of each training batch's min and max;
`calibrate` first sets them to the float model's min and max over a calibration set, exactly
what post-training quantization uses, so QAT starts where PTQ stands.
"""

import numpy as np
import keras
from keras import layers, ops

from effkeras.deploy.passes.collapse import collapse
from effkeras.deploy.passes.fold_bn import batch_norm_affine
from effkeras.deploy.passes.freeze_tables import freeze_tables
from effkeras.deploy.passes.rewrite import check_models, copy_call, readers, rewrite
from effkeras.errors import InputError
from effkeras.layers.activations import LerpTable
from effkeras.layers.common import PixelNormalization
from effkeras.layers.convnext import LayerScale

NUM_BITS = 8
EMA_DECAY = 0.999  # per training step, for the activation ranges
INPUT_RANGE = (0.0, 255.0)  # raw pixels: every registry model normalises them itself
MODES = ("quantize", "calibrate", "float")
# Activations whose int8 TFLite kernels have a fixed output quantization (and the range that
# gives it): a quantization point of another range would cost a requantizing op.
FIXED_OUTPUT_RANGES = {"sigmoid": (0.0, 255 / 256), "tanh": (-1.0, 127 / 128)}
_TINY = 1e-8  # the smallest range a quantizer takes (an all-zero tensor)
# Largest |int32 bias code| snap_biases allows: 2^24 keeps every code, and the accumulator it
# starts, exact in float32 (XNNPack's int8 kernels requantize in float32).
MAX_BIAS_CODE = 2 ** 24


def fake_quant(x, low, high, axis=None, narrow_range=False):
    """x rounded to the NUM_BITS grid of [low, high] (nudged so that 0 is on it), in float32."""
    low = ops.minimum(ops.cast(low, "float32"), 0.0)
    high = ops.maximum(ops.maximum(ops.cast(high, "float32"), 0.0), low + _TINY)
    return keras.quantizers.fake_quant_with_min_max_vars(
        ops.cast(x, "float32"), low, high, num_bits=NUM_BITS, narrow_range=narrow_range,
        axis=axis)


def quantize_kernel(kernel, axis=-1, floor=None):
    """Per-channel symmetric int8 weights along `axis` (TFLite's: zero point 0, codes in
    [-127, 127], scale max|w|/127 per output channel, or floor/127 where that is larger)."""
    axes = [i for i in range(len(kernel.shape)) if i != axis % len(kernel.shape)]
    bound = ops.max(ops.abs(kernel), axis=axes)
    if floor is not None:
        bound = ops.maximum(bound, ops.convert_to_tensor(np.asarray(floor, np.float32)))
    return fake_quant(kernel, -bound, bound, axis=axis, narrow_range=True)


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


@keras.saving.register_keras_serializable(package="effkeras")
class FakeQuant(layers.Layer):
    """One int8 quantization point, per tensor and asymmetric, with a moving-average range.

    fixed_range: (low, high) that never moves (the model's input: raw pixels). Otherwise the
    range is `range_min`/`range_max`: in training, a moving average (decay `ema_decay`) of
    each batch's min and max, the first batch's own until then; in "calibrate" mode, the min
    and max over every batch seen. Called with observe=False, it rounds to its range without
    updating it (an op that TFLite runs at its input's scale re-uses its input's quantizer).
    """

    def __init__(self, ema_decay=EMA_DECAY, fixed_range=None, **kwargs):
        super().__init__(**kwargs)
        if not 0.0 <= ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {ema_decay}")
        if fixed_range is not None:
            fixed_range = tuple(float(v) for v in fixed_range)
            if len(fixed_range) != 2 or not fixed_range[0] < fixed_range[1]:
                raise ValueError(f"fixed_range must be (low, high) with low < high, got "
                                 f"{fixed_range}")
        self.ema_decay = float(ema_decay)
        self.fixed_range = fixed_range
        self.mode = "quantize"

    def build(self, input_shape):
        def scalar(name):
            return self.add_weight(shape=(), initializer="zeros", trainable=False, name=name)

        self.range_min, self.range_max = scalar("range_min"), scalar("range_max")
        self.observed = scalar("observed")  # 1 once a range has been set from data

    def call(self, x, training=None, observe=True):
        if self.mode == "float":
            return x
        if self.fixed_range is not None:
            return ops.cast(fake_quant(x, *self.fixed_range), x.dtype)
        if observe and (training or self.mode == "calibrate"):
            batch_low = ops.cast(ops.min(x), "float32")
            batch_high = ops.cast(ops.max(x), "float32")
            if self.mode == "calibrate":
                low = ops.minimum(batch_low, self.range_min)
                high = ops.maximum(batch_high, self.range_max)
            else:
                decay = self.ema_decay
                low = decay * self.range_min + (1 - decay) * batch_low
                high = decay * self.range_max + (1 - decay) * batch_high
            first = ops.equal(self.observed, 0.0)
            self.range_min.assign(ops.where(first, batch_low, low))
            self.range_max.assign(ops.where(first, batch_high, high))
            self.observed.assign(1.0)
        if self.mode == "calibrate":
            return x
        return ops.cast(fake_quant(x, self.range_min, self.range_max), x.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def quantization(self):
        """(scale, zero point) of the int8 codes, as TFLite derives them from the range."""
        low, high = (self.fixed_range if self.fixed_range is not None else
                     (float(self.range_min.numpy()), float(self.range_max.numpy())))
        low, high = min(low, 0.0), max(high, 0.0, low + _TINY)
        scale = (high - low) / (2 ** NUM_BITS - 1)
        return scale, int(np.round(-128 - low / scale))

    def get_config(self):
        return {**super().get_config(), "ema_decay": self.ema_decay,
                "fixed_range": self.fixed_range}


class FoldedBatchNorm:
    """Mixin for a conv-like layer with its BatchNormalization folded in and int8 weights.

    batch_norm_epsilon: the folded BN's ε (None: no BN). The layer holds the BN's γ, β and
    moving statistics; every call computes w' = w·γ/√(var + ε), b' = (b - mean)·γ/√(var + ε) + β
    per output channel, fake-quantizes w' per channel and applies its op and activation.
    Subclasses give `apply(x, kernel)`, `output_channels()` and `channel_shape()` (the kernel
    axes of an output channel).
    """

    def __init__(self, *args, batch_norm_epsilon=None, weight_floor=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.batch_norm_epsilon = batch_norm_epsilon
        # Per output channel, the least bound of the weights' int8 range (None: none):
        # snap_biases sets it where a bias would not fit TFLite's int32 grid.
        self.weight_floor = None if weight_floor is None else np.asarray(weight_floor, np.float64)
        self.mode = "quantize"

    def build(self, input_shape):
        super().build(input_shape)
        if self.batch_norm_epsilon is not None:
            channels = self.output_channels()

            def add(name, initializer, trainable):
                return self.add_weight(shape=(channels,), initializer=initializer,
                                       trainable=trainable, name=name)

            self.gamma, self.beta = add("gamma", "ones", True), add("beta", "zeros", True)
            self.moving_mean = add("moving_mean", "zeros", False)
            self.moving_variance = add("moving_variance", "ones", False)

    def folded(self):
        """(kernel, bias) with the BN folded in, float32."""
        kernel = ops.cast(self.kernel, "float32")
        bias = (ops.cast(self.bias, "float32") if self.use_bias
                else ops.zeros((self.output_channels(),), "float32"))
        if self.batch_norm_epsilon is None:
            return kernel, bias
        scale = self.gamma * ops.rsqrt(self.moving_variance + self.batch_norm_epsilon)
        kernel = kernel * ops.reshape(scale, self.channel_shape())
        return kernel, (bias - self.moving_mean) * scale + self.beta

    def call(self, x):
        kernel, bias = self.folded()
        if self.mode != "float":
            kernel = self.quantize_weights(kernel)
        y = self.apply(ops.cast(x, "float32"), kernel) + bias
        return ops.cast(self.activation(y), self.compute_dtype)

    def quantize_weights(self, kernel):
        return quantize_kernel(kernel, floor=self.weight_floor)

    def weight_scales(self):
        """The int8 scale of each output channel's weights (float64), as the converter sets it."""
        kernel = np.asarray(ops.convert_to_numpy(self.folded()[0]), np.float64)
        bound = np.abs(kernel).reshape(-1, self.output_channels()).max(axis=0)
        if self.weight_floor is not None:
            bound = np.maximum(bound, self.weight_floor)
        return bound / 127

    # Conv2D and Dense save their kernel and bias only; these save every variable.
    def save_own_variables(self, store):
        layers.Layer.save_own_variables(self, store)

    def load_own_variables(self, store):
        layers.Layer.load_own_variables(self, store)

    def get_config(self):
        floor = None if self.weight_floor is None else self.weight_floor.tolist()
        return {**super().get_config(), "batch_norm_epsilon": self.batch_norm_epsilon,
                "weight_floor": floor}


@keras.saving.register_keras_serializable(package="effkeras")
class QATConv2D(FoldedBatchNorm, layers.Conv2D):
    def output_channels(self):
        return self.filters

    def channel_shape(self):
        return (1, 1, 1, -1)

    def apply(self, x, kernel):
        return self.convolution_op(x, kernel)


@keras.saving.register_keras_serializable(package="effkeras")
class QATDepthwiseConv2D(FoldedBatchNorm, layers.DepthwiseConv2D):
    def output_channels(self):
        return self.kernel.shape[2] * self.depth_multiplier

    def channel_shape(self):  # output channel c·multiplier + m is kernel[..., c, m]
        return (1, 1, -1, self.depth_multiplier)

    def quantize_weights(self, kernel):  # TFLite's depthwise kernel: (1, kh, kw, channels·mult)
        height, width, channels, multiplier = kernel.shape
        flat = quantize_kernel(ops.reshape(kernel, (height, width, channels * multiplier)),
                               floor=self.weight_floor)
        return ops.reshape(flat, kernel.shape)

    def apply(self, x, kernel):
        return ops.depthwise_conv(x, kernel, strides=self.strides, padding=self.padding,
                                  dilation_rate=self.dilation_rate, data_format=self.data_format)


@keras.saving.register_keras_serializable(package="effkeras")
class QATDense(FoldedBatchNorm, layers.Dense):
    def output_channels(self):
        return self.units

    def channel_shape(self):
        return (1, -1)

    def quantize_weights(self, kernel):
        # Per tensor: the converter cannot carry a per-channel axis through the transpose of a
        # MatMul's kernel into FULLY_CONNECTED's (units, inputs) layout (TensorFlow 2.21).
        bound = ops.max(ops.abs(kernel))
        if self.weight_floor is not None:
            bound = ops.maximum(bound, float(np.max(self.weight_floor)))
        return fake_quant(kernel, -bound, bound, narrow_range=True)

    def weight_scales(self):
        return np.full(self.units, super().weight_scales().max())

    def apply(self, x, kernel):
        return ops.matmul(x, kernel)


@keras.saving.register_keras_serializable(package="effkeras")
class ChannelAffine(layers.Layer):
    """x·value ("multiply") or x + value ("add") with a trainable value per channel: a
    BatchNormalization that nothing folds into, as the two int8 ops TFLite makes of it (MUL,
    ADD), each with a quantization point after it."""

    def __init__(self, operation, **kwargs):
        super().__init__(**kwargs)
        if operation not in ("multiply", "add"):
            raise ValueError(f"operation must be 'multiply' or 'add', got {operation!r}")
        self.operation = operation

    def build(self, input_shape):
        self.value = self.add_weight(shape=(input_shape[-1],), name="value",
                                     initializer="ones" if self.operation == "multiply"
                                     else "zeros")

    def call(self, x):
        value = ops.cast(self.value, x.dtype)
        return x * value if self.operation == "multiply" else x + value

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "operation": self.operation}


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
