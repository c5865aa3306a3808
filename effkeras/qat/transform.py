"""quantize_model: the int8 QAT copy of a trained float model, as the policy table places it.

The rewrite (effkeras.graph.rewrite) copies the model layer call by layer call and asks the
table (effkeras.qat.scheme, one row per layer class) what each call becomes: Conv2D,
DepthwiseConv2D and Dense their QAT twins (`QATConv2D`, `QATDepthwiseConv2D`, `QATDense`) with
the BatchNormalization after them folded in and a ReLU/ReLU6 after them fused; a quantization
point (`FakeQuant`) after every op TFLite computes in int8 with an output scale of its own and
after the model's input (the raw pixel range); none after an op whose codes are its input's.
A hard-swish becomes a `QATHardSwish`: the float function in training, TFLite's fixed-point
int8 kernel at inference once frozen (qat.freeze_hard_swish).
The BN statistics stay the trained model's moving averages (frozen: Krishnamoorthi's advice for
the end of QAT, arXiv 1806.08342 §3.2, and a QAT run here starts from a trained model); γ and β
train. Collapsible blocks (RAN-e) are collapsed, learned activations (LERP-PSA, B-splines)
frozen to their tables and binary layers lowered to int8 steps and ±α kernels first
(graph.passes): QAT trains what deploys, around fixed tables. A lowered binary layer's kernel
stays fixed (`fixed_kernel`: its codes stay ±127, the BN folded into it trains), and its step
trains through its quantizer's straight-through gradient (on its input's int8 grid the step is
the quantizer: effkeras.layers.int8_step).
"""

import keras
import numpy as np
from keras import layers, ops

from effkeras.errors import InputError
from effkeras.graph.fold_bn import batch_norm_affine
from effkeras.graph.passes.binary_int8 import binary_layers, lower_binary
from effkeras.graph.passes.collapse import collapse
from effkeras.graph.passes.freeze_tables import freeze_tables
from effkeras.graph.rewrite import check_models, copy_call, readers, rewrite
from effkeras.layers.common import PixelNormalization
from effkeras.layers.convnext import LayerScale
from effkeras.layers.qat import ChannelAffine, FakeQuant, QATDepthwiseConv2D, QATHardSwish
from effkeras.qat import scheme
from effkeras.qat.calibrate import calibrate, is_qat_model, set_mode


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
            row = scheme.policy(layer)
            if row is None or row.output == scheme.REFUSED:
                unsupported.append(f"{layer.name} ({type(layer).__name__})")
                continue
            if row.output == scheme.INPUT:
                continue
            problem = scheme.refusal(layer, row)
            if problem:
                unsupported.append(f"{layer.name} ({problem})")
                continue
            if row.fuses_activation:
                self._fuse(layer, row, sole_reader)
            elif row.rewrite == scheme.RESCALING and isinstance(layer, layers.Rescaling):
                nxt = sole_reader(layer)
                if (
                    not np.any(layer.offset)
                    and type(nxt) in (layers.Conv2D, layers.DepthwiseConv2D)
                    and nxt.padding in ("same", "valid")
                ):
                    self.prescale[id(nxt)] = np.asarray(layer.scale, np.float64)
                    self.folded_rescaling.add(id(layer))
        if unsupported:
            supported = ", ".join(a for a in scheme.ACTIVATIONS if a != "linear")
            raise InputError(
                f"quantize_model cannot make these layers of {model.name} int8: "
                f"{', '.join(unsupported)}. It quantizes Conv2D, DepthwiseConv2D and Dense "
                f"(BN and ReLU/ReLU6 folded), add, pooling, rescaling, BN and "
                f"the activations {supported}; "
                f"deploy the others float (--target=float) or replace them"
            )

    def _fuse(self, layer, row, sole_reader):
        """Records the BN folded into a QAT twin and the ReLU/ReLU6 fused after it or after an
        Add, Subtract, BN or LayerScale."""
        linear = row.qat_layer is None or scheme.activation_of(layer) == "linear"
        tail = layer
        nxt = sole_reader(layer)
        if (
            row.qat_layer is not None
            and linear
            and isinstance(nxt, layers.BatchNormalization)
            and nxt.axis in (-1, len(nxt.input.shape) - 1)
        ):
            self.batch_norm[id(layer)] = nxt
            self.absorbed.add(id(nxt))
            tail = nxt
        nxt = sole_reader(tail)
        if linear and nxt is not None and scheme.fusable(nxt):
            self.activation[id(layer)] = scheme.fusable(nxt)
            self.absorbed.add(id(nxt))


def _qat_layer(layer, qat_class, batch_norm, activation, prescale, fixed_kernel):
    """The QAT twin (`qat_class`) of Conv2D/DepthwiseConv2D/Dense `layer`, with its weights
    (and the BN's, and a folded input scale) set by the returned function once built."""
    config = layer.get_config()
    # Without a BN, a bias all the same: TFLite's op has one, and snap_biases needs it.
    config.update(
        activation=activation or config["activation"],
        use_bias=layer.use_bias or batch_norm is None,
        batch_norm_epsilon=None if batch_norm is None else float(batch_norm.epsilon),
        fixed_kernel=fixed_kernel,
    )
    qat = qat_class.from_config(config)

    def load():
        kernel = layer.kernel.numpy()
        if prescale is not None:  # a Rescaling before it: conv(s·x, W) = conv(x, s·W)
            kernel = kernel * np.reshape(prescale, (1, 1, -1, 1))  # s along input channels
        bias = layer.bias.numpy() if layer.use_bias else np.zeros(qat.output_channels())
        values = {"kernel": kernel, "bias": bias}
        if batch_norm is not None:
            bn = {w.path.split("/")[-1]: w.numpy() for w in batch_norm.weights}
            channels = qat.output_channels()
            values.update(
                gamma=bn.get("gamma", np.ones(channels)),
                beta=bn.get("beta", np.zeros(channels)),
                moving_mean=bn["moving_mean"],
                moving_variance=bn["moving_variance"],
            )
        for weight in qat.weights:
            weight.assign(values[weight.path.split("/")[-1]])

    return qat, load


def quantize_model(
    model, calibration=None, *, input_range=scheme.INPUT_RANGE, batch_size=64, check=True
):
    """The int8 QAT model of a trained functional float model (module docstring).

    Collapsible blocks (RAN-e) are collapsed, learned activations frozen to their tables and
    binary layers lowered first: QAT trains the layers that deploy.

    Args:
        model: a functional keras.Model with one image input and one logits output.
        calibration: images (N, H, W, C) in `input_range` (training images) to set the
            activation ranges from (`calibrate`); None leaves them to the first training batch.
        input_range: (low, high) of the model's input, its fixed quantization range.
        batch_size: images per calibration call.
        check: whether to check that the QAT model, its rounding off, computes `model` end to
            end. Not for a binary net, which fails it where BN folding's float rounding flips
            a sign (graph.passes.binary_int8 checks each lowered layer instead, and
            effkeras.deploy.binary_int8 the file op by op). Defaults to `True`.

    Returns:
        The QAT model (a new functional keras.Model), in "quantize" mode.

    Raises:
        InputError: for a model that is not functional, already QAT, or has several inputs or
            outputs, naming every layer the policy table refuses.
        RuntimeError: if the rewritten model, its rounding off, does not compute `model`.
    """
    if not isinstance(model, keras.Model) or not hasattr(model, "_run_through_graph"):
        raise InputError(
            f"quantize_model takes a functional keras.Model, got {type(model).__name__}"
        )
    if is_qat_model(model):
        raise InputError(f"{model.name} is already a QAT model")
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise InputError(
            f"quantize_model takes one image input and one logits output; "
            f"{model.name} has {len(model.inputs)} and {len(model.outputs)} (an "
            f"early-exit model converts stage by stage with post-training "
            f"quantization: --target=int8 or tflm on the float model)"
        )
    model, _ = collapse(model)
    model, _ = freeze_tables(model)  # learned activations: the int8 tables they deploy as
    binary = {layer.name for layer in binary_layers(model)}
    if binary:
        model, _ = lower_binary(model)  # each lowered layer keeps its name
        check = False
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
                        t, name, layer=FakeQuant(fixed_range=input_range, name=f"{name}_quant")
                    )
                return input_quantizers[id(t)]
            return t

        return [one(t) for t in x] if isinstance(x, (list, tuple)) else one(x)

    def replace(layer, x, graph):
        if id(layer) in plan.absorbed:
            return x  # computed by the layer before it
        if id(layer) in plan.folded_rescaling:
            return inputs_of(x, graph)
        x = inputs_of(x, graph)
        row = scheme.policy(layer)
        if row.qat_layer is not None:
            qat, load = _qat_layer(
                layer,
                row.qat_layer,
                plan.batch_norm.get(id(layer)),
                plan.activation.get(id(layer)),
                plan.prescale.get(id(layer)),
                fixed_kernel=layer.name in binary,
            )
            y = qat(x)
            loads.append(load)
            return quantized(y, layer.name)
        if row.rewrite == scheme.RESCALING:
            # x·scale + offset per channel: one depthwise op, its weights and bias as the
            # file stores them (a Rescaling with an offset; without one it folds into a conv)
            conv, load = _pixel_affine(layer, x.shape[-1])
            y = conv(x)
            loads.append(load)
            return quantized(y, layer.name)
        if row.rewrite == scheme.CHANNEL_AFFINE:  # MUL (and ADD)
            affine = _channel_affine(layer)
            affine_ops = ("multiply", "add")[: len(affine)]
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
        if row.output == scheme.INPUT_SCALE:
            y = copy_call(layer, x)
            source = quantizer_of.get(id(x))
            return quantized(y, layer.name, source, observe=source is None)
        if row.output == scheme.SAME_CODES:
            y = copy_call(layer, x)
            if id(x) in quantizer_of:
                quantizer_of[id(y)] = quantizer_of[id(x)]
            return y
        if scheme.is_hard_swish(layer):  # computes TFLite's int8 kernel once frozen
            return quantized(QATHardSwish(name=layer.name)(x), layer.name)
        y = copy_call(layer, x)
        if id(layer) in plan.activation:
            name = plan.activation[id(layer)]
            y = layers.Activation(name, name=f"{layer.name}_{name}")(y)
        fixed = scheme.fixed_output_range(layer)
        if fixed:
            return quantized(
                y, layer.name, FakeQuant(fixed_range=fixed, name=f"{layer.name}_quant")
            )
        return quantized(y, layer.name)

    qat = rewrite(model, replace)
    for load in loads:
        load()
    if check:
        set_mode(qat, "float")
        try:
            check_models(model, qat, "QAT model with its rounding off")
        finally:
            set_mode(qat, "quantize")
    if calibration is not None:
        calibrate(qat, calibration, batch_size=batch_size)
    return qat


def _pixel_affine(layer, channels):
    """The QAT depthwise conv (1x1, a bias) of a Rescaling or PixelNormalization `layer`, and
    the function that sets its weights once built."""
    if isinstance(layer, PixelNormalization):
        std = np.asarray(layer.std, np.float64)
        scale, offset = 1 / (255 * std), -np.asarray(layer.mean, np.float64) / std
    else:
        scale, offset = np.asarray(layer.scale, np.float64), np.asarray(layer.offset, np.float64)
    scale, offset = (np.broadcast_to(v, (channels,)) for v in (scale, offset))
    conv = QATDepthwiseConv2D(1, name=layer.name)

    def load():
        conv.set_weights([scale.reshape(1, 1, channels, 1), offset])

    return conv, load


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
        raise InputError(
            f"{layer.name} normalises axis {layer.axis}: quantize_model takes "
            f"BatchNormalization over channels (the last axis)"
        )
    return affine
