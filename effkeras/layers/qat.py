"""The layers of int8 quantization-aware training (effkeras.qat) and of its int8 checks.

Integer-arithmetic-only inference (Jacob et al., CVPR 2018, arXiv 1712.05877, §2-3): int8 weights
per output channel, symmetric (zero point 0, codes in [-127, 127]); int8 activations per tensor,
asymmetric (a scale and a zero point), with 0 exactly representable. The fake-quant op is
`keras.quantizers.fake_quant_with_min_max_vars` (TensorFlow's FakeQuantWithMinMaxVars[PerChannel]),
which the TFLite converter turns into int8 ops with exactly these ranges.

    FakeQuant            one quantization point per tensor, moving-average range
    QATConv2D, QATDepthwiseConv2D, QATDense
                         BN folded in on every step (Jacob et al. §3.2), int8 weights
    ChannelAffine        a BN nothing folds into, as TFLite's MUL or ADD
    QATHardSwish         hard-swish, computing TFLite's fixed-point int8 kernel once frozen
"""

import keras
import numpy as np
from keras import layers, ops

NUM_BITS = 8
EMA_DECAY = 0.999  # per training step, for the activation ranges
_TINY = 1e-8  # the smallest range a quantizer takes (an all-zero tensor)
# Rounds a zero point of x.5 up whichever way float32 rounds -low / scale (nudged_range).
_HALF_UP = 0.5 + 2**-10


def fake_quant(x, low, high, axis=None, narrow_range=False):
    """Rounds x to the 8-bit grid of [low, high] (nudged so that 0 is on it), in float32.

    Args:
        x: tensor.
        low: float or tensor. The range's low end (raised to at most 0).
        high: float or tensor. The range's high end (at least 0 and above `low`).
        axis: int or None. The per-channel axis of `low` and `high`. Defaults to `None` (per
            tensor).
        narrow_range: bool. Use codes [-127, 127] instead of [-128, 127]. Defaults to `False`.

    Returns:
        A float32 tensor of the shape of `x`.
    """
    low, high = nudged_range(low, high, narrow_range)
    return keras.quantizers.fake_quant_with_min_max_vars(
        ops.cast(x, "float32"), low, high, num_bits=NUM_BITS, narrow_range=narrow_range, axis=axis
    )


def nudged_range(low, high, narrow_range=False):
    """(low, high) moved onto the int8 grid whose zero point is their own, rounded, in float32.

    The zero point of a range is -low/scale on the unsigned codes. Where that is a tie (x.5: a
    symmetric range, such as hard-tanh's [-1, 1]), the last bit of float32 decides it, and
    TensorFlow's fake-quant op, the converter's constant folding and a float64 reading decide
    it differently by a code: the clamp at both ends of the grid moves by a step. So ties round
    up here by a margin no float error reaches, and the range returned is on its grid, whose
    integer zero point every reader rounds alike: every quantization point computes, reports
    (FakeQuant.quantization) and converts with this range.
    """
    q_min, q_max = float(narrow_range), float(2**NUM_BITS - 1)
    low = ops.minimum(ops.cast(low, "float32"), 0.0)
    high = ops.maximum(ops.maximum(ops.cast(high, "float32"), 0.0), low + _TINY)
    scale = (high - low) / (q_max - q_min)
    zero_point = ops.clip(ops.floor(q_min - low / scale + _HALF_UP), q_min, q_max)
    return (q_min - zero_point) * scale, (q_max - zero_point) * scale


def quantize_kernel(kernel, axis=-1, floor=None):
    """Per-channel symmetric int8 weights along `axis` (TFLite's: zero point 0, codes in
    [-127, 127], scale max|w|/127 per output channel, or floor/127 where that is larger).

    Args:
        kernel: tensor. The float weights.
        axis: int. The output-channel axis. Defaults to `-1`.
        floor: array-like or None. Per output channel, the least bound of the range. Defaults
            to `None`.

    Returns:
        The fake-quantized float32 kernel.
    """
    axes = [i for i in range(len(kernel.shape)) if i != axis % len(kernel.shape)]
    bound = ops.max(ops.abs(kernel), axis=axes)
    if floor is not None:
        bound = ops.maximum(bound, ops.convert_to_tensor(np.asarray(floor, np.float32)))
    return fake_quant(kernel, -bound, bound, axis=axis, narrow_range=True)


@keras.saving.register_keras_serializable(package="effkeras")
class FakeQuant(layers.Layer):
    """One int8 quantization point, per tensor and asymmetric, with a moving-average range.

    fixed_range: (low, high) that never moves (the model's input: raw pixels). Otherwise the
    range is `range_min`/`range_max`: in training, a moving average (decay `ema_decay`) of
    each batch's min and max, the first batch's own until then; in "calibrate" mode, the min
    and max over every batch seen. Called with observe=False, it rounds to its range without
    updating it (an op that TFLite runs at its input's scale re-uses its input's quantizer).

    Reference:
        - [Jacob et al., Quantization and Training of Neural Networks for Efficient
            Integer-Arithmetic-Only Inference, CVPR 2018](https://arxiv.org/abs/1712.05877)

    Args:
        ema_decay: float in [0, 1). Moving-average decay of the range per training step.
            Defaults to `0.999`.
        fixed_range: pair of floats `(low, high)`, low < high, or None. Defaults to `None`.
        **kwargs: base layer arguments (e.g. `name`).

    Raises:
        ValueError: if `ema_decay` is outside [0, 1) or `fixed_range` is not (low, high) with
            low < high.

    Call arguments:
        x: the tensor to quantize.
        training: bool or None. Whether to update the moving-average range.
        observe: bool. False rounds to the range without updating it. Defaults to `True`.
    """

    def __init__(self, ema_decay=EMA_DECAY, fixed_range=None, **kwargs):
        super().__init__(**kwargs)
        if not 0.0 <= ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {ema_decay}")
        if fixed_range is not None:
            fixed_range = tuple(float(v) for v in fixed_range)
            if len(fixed_range) != 2 or not fixed_range[0] < fixed_range[1]:
                raise ValueError(
                    f"fixed_range must be (low, high) with low < high, got {fixed_range}"
                )
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
        low, high = (
            self.fixed_range
            if self.fixed_range is not None
            else (float(self.range_min.numpy()), float(self.range_max.numpy()))
        )
        low, high = (float(ops.convert_to_numpy(v)) for v in nudged_range(low, high))
        scale = (high - low) / (2**NUM_BITS - 1)
        return scale, int(np.round(-128 - low / scale))

    def get_config(self):
        return {
            **super().get_config(),
            "ema_decay": self.ema_decay,
            "fixed_range": self.fixed_range,
        }


class FoldedBatchNorm:
    """Mixin for a conv-like layer with its BatchNormalization folded in and int8 weights.

    batch_norm_epsilon: the folded BN's ε (None: no BN). The layer holds the BN's γ, β and
    moving statistics; every call computes w' = w·γ/√(var + ε), b' = (b - mean)·γ/√(var + ε) + β
    per output channel, fake-quantizes w' per channel and applies its op and activation.
    Subclasses give `apply(x, kernel)`, `output_channels()` and `channel_shape()` (the kernel
    axes of an output channel).

    Args:
        *args: the conv-like layer's arguments.
        batch_norm_epsilon: float or None. The folded BN's ε; None: no BN. Defaults to `None`.
        weight_floor: array-like or None. Per output channel, the least bound of the weights'
            int8 range (set where a bias would not fit TFLite's int32 grid). Defaults to `None`.
        fixed_kernel: bool. Whether the kernel stays as it is in training (a lowered binary
            layer's ±α: its int8 codes stay ±127, BN's γ and β train). Defaults to `False`.
        **kwargs: the conv-like layer's keyword arguments.
    """

    def __init__(
        self, *args, batch_norm_epsilon=None, weight_floor=None, fixed_kernel=False, **kwargs
    ):
        super().__init__(*args, **kwargs)
        self.batch_norm_epsilon = batch_norm_epsilon
        self.fixed_kernel = bool(fixed_kernel)
        # Per output channel, the least bound of the weights' int8 range (None: none):
        # snap_biases sets it where a bias would not fit TFLite's int32 grid.
        self.weight_floor = None if weight_floor is None else np.asarray(weight_floor, np.float64)
        self.mode = "quantize"

    def build(self, input_shape):
        super().build(input_shape)
        if self.fixed_kernel:
            self.kernel.trainable = False
        if self.batch_norm_epsilon is not None:
            channels = self.output_channels()

            def add(name, initializer, trainable):
                return self.add_weight(
                    shape=(channels,), initializer=initializer, trainable=trainable, name=name
                )

            self.gamma, self.beta = add("gamma", "ones", True), add("beta", "zeros", True)
            self.moving_mean = add("moving_mean", "zeros", False)
            self.moving_variance = add("moving_variance", "ones", False)

    def folded(self):
        """(kernel, bias) with the BN folded in, float32."""
        kernel = ops.cast(self.kernel, "float32")
        bias = (
            ops.cast(self.bias, "float32")
            if self.use_bias
            else ops.zeros((self.output_channels(),), "float32")
        )
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
        """Returns `kernel` fake-quantized to int8 per output channel (see `quantize_kernel`)."""
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
        return {
            **super().get_config(),
            "batch_norm_epsilon": self.batch_norm_epsilon,
            "weight_floor": floor,
            "fixed_kernel": self.fixed_kernel,
        }


@keras.saving.register_keras_serializable(package="effkeras")
class QATConv2D(FoldedBatchNorm, layers.Conv2D):
    """`keras.layers.Conv2D` with its BN folded in and int8 weights (see `FoldedBatchNorm`)."""

    def output_channels(self):
        return self.filters

    def channel_shape(self):
        return (1, 1, 1, -1)

    def apply(self, x, kernel):
        return self.convolution_op(x, kernel)


@keras.saving.register_keras_serializable(package="effkeras")
class QATDepthwiseConv2D(FoldedBatchNorm, layers.DepthwiseConv2D):
    """`keras.layers.DepthwiseConv2D` with its BN folded in and int8 weights per channel."""

    def output_channels(self):
        return self.kernel.shape[2] * self.depth_multiplier

    def channel_shape(self):  # output channel c·multiplier + m is kernel[..., c, m]
        return (1, 1, -1, self.depth_multiplier)

    def quantize_weights(self, kernel):  # TFLite's depthwise kernel: (1, kh, kw, channels·mult)
        height, width, channels, multiplier = kernel.shape
        flat = quantize_kernel(
            ops.reshape(kernel, (height, width, channels * multiplier)), floor=self.weight_floor
        )
        return ops.reshape(flat, kernel.shape)

    def apply(self, x, kernel):
        return ops.depthwise_conv(
            x,
            kernel,
            strides=self.strides,
            padding=self.padding,
            dilation_rate=self.dilation_rate,
            data_format=self.data_format,
        )


@keras.saving.register_keras_serializable(package="effkeras")
class QATDense(FoldedBatchNorm, layers.Dense):
    """`keras.layers.Dense` with its BN folded in and int8 weights, per tensor (the converter
    cannot carry a per-channel axis into FULLY_CONNECTED)."""

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
    ADD), each with a quantization point after it.

    Args:
        operation: str. `"multiply"` (value from 1) or `"add"` (value from 0).
        **kwargs: base layer arguments (e.g. `name`).

    Raises:
        ValueError: for another `operation`.
    """

    def __init__(self, operation, **kwargs):
        super().__init__(**kwargs)
        if operation not in ("multiply", "add"):
            raise ValueError(f"operation must be 'multiply' or 'add', got {operation!r}")
        self.operation = operation

    def build(self, input_shape):
        self.value = self.add_weight(
            shape=(input_shape[-1],),
            name="value",
            initializer="ones" if self.operation == "multiply" else "zeros",
        )

    def call(self, x):
        value = ops.cast(self.value, x.dtype)
        return x * value if self.operation == "multiply" else x + value

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "operation": self.operation}


def hard_swish_table(x_quantization, y_quantization):
    """TFLite's int8 HARD_SWISH on every input code: its output code for codes -128..127.

    Hard-swish, x·relu6(x + 3)/6 (Howard et al., arXiv 1905.02244, §5.2), is computed by
    TFLite's int8 kernel (reference and optimized alike, and TFLite Micro's) in 16-bit fixed
    point: the input difference times 2^7, a rounding doubling high multiply by the output
    multiplier, a "relu-ish" factor in [0, 1] (the input on a scale where 3.0 is 2^15, shifted,
    saturated, moved to [0, 1]), their truncating doubling high product, then a rounding right
    shift. On some codes that is a step or two off the float function rounded; this is that
    arithmetic, code for code (tested against LiteRT and TFLite Micro).

    Args:
        x_quantization: pair `(scale, zero_point)` of the input's int8 codes.
        y_quantization: pair `(scale, zero_point)` of the output's int8 codes.

    Returns:
        An int8 array of 256 output codes.
    """
    (x_scale, x_zero), (y_scale, y_zero) = x_quantization, y_quantization
    hires_scale = np.float32(1 / 128) * np.float32(x_scale)  # the kernel's float32 arithmetic
    out_multiplier, out_shift = _multiplier16(hires_scale / np.float32(y_scale))
    relu_multiplier, relu_shift = _multiplier16(hires_scale / np.float32(3 / 32768))
    hires = (np.arange(-128, 128, dtype=np.int64) - int(x_zero)) * 128
    on_output_scale = _rounding_doubling_high_mul(hires, out_multiplier)
    relu = hires
    if relu_shift > 0:
        relu = _saturate16(relu * 2 ** (relu_shift - 1))
    relu = _rounding_doubling_high_mul(relu, relu_multiplier)
    if relu_shift > 0:
        relu = _saturate16(relu * 2)
    elif relu_shift < 0:
        relu = _rounding_divide_by_pot(relu, -relu_shift)
    relu = (relu + 2**15) >> 1  # [-1, 1] to [0, 1], on 2^15
    product = relu * on_output_scale  # doubling high multiply, truncating (relu >= 0)
    product = np.sign(product) * (np.abs(product) // 2**15)
    codes = _rounding_divide_by_pot(product, -out_shift) + int(y_zero)
    return np.clip(codes, -128, 127).astype(np.int8)


def _multiplier16(multiplier):
    """(16-bit fixed-point multiplier, exponent) of a float32 multiplier, as TFLite's
    QuantizeMultiplier then DownScaleInt32ToInt16Multiplier make them."""
    if multiplier == 0:
        return 0, 0
    fraction, exponent = np.frexp(np.float64(multiplier))
    fixed = int(np.round(fraction * 2**31))
    if fixed == 2**31:
        fixed, exponent = fixed // 2, exponent + 1
    if exponent < -31:
        return 0, 0
    if fixed >= 2**31 - 1 - 2**15:
        return 2**15 - 1, int(exponent)
    return (fixed + 2**15) >> 16, int(exponent)


def _saturate16(x):
    return np.clip(x, -(2**15), 2**15 - 1)


def _rounding_doubling_high_mul(a, b):
    """gemmlowp's SaturatingRoundingDoublingHighMul on int16 values: round(a·b / 2^15), ties
    away from zero, with C's truncating division."""
    product = a * b
    nudged = product + np.where(product >= 0, 2**14, 1 - 2**14)
    high = np.sign(nudged) * (np.abs(nudged) // 2**15)
    return np.where((a == b) & (a == -(2**15)), 2**15 - 1, high)


def _rounding_divide_by_pot(x, exponent):
    """gemmlowp's RoundingDivideByPOT: x / 2^exponent rounded, ties away from zero."""
    mask = (1 << exponent) - 1
    threshold = (mask >> 1) + (x < 0)
    return (x >> exponent) + ((x & mask) > threshold)


@keras.saving.register_keras_serializable(package="effkeras")
class QATHardSwish(layers.Layer):
    """Hard-swish that, once frozen, computes at inference exactly what the int8 file's
    HARD_SWISH computes: TFLite's fixed-point table (`hard_swish_table`) on its input's codes.

    In training, in "float" and "calibrate" modes (effkeras.qat.set_mode) and until `freeze`
    gives it its input's and output's int8 grids, it is the float function: QAT trains on
    that, and the converter, which is handed the float function (effkeras.deploy.int8_qat),
    emits HARD_SWISH. The FakeQuant after it sets its output scale as for any op.

    Args:
        grids: pair `((x_scale, x_zero_point), (y_scale, y_zero_point))` of the input's and
            output's int8 codes, or None until `freeze` sets it. Defaults to `None`.
        **kwargs: base layer arguments (e.g. `name`).

    Call arguments:
        x: the input, on its quantizer's grid.
        training: bool or None. Training computes the float function.
    """

    def __init__(self, grids=None, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.mode = "quantize"
        self.grids = None
        if grids is not None:
            self.freeze(*grids)

    def freeze(self, x_quantization, y_quantization):
        """Sets the input's and output's int8 grids: from then on inference reads the
        kernel's table.

        Args:
            x_quantization: pair `(scale, zero_point)` of the input's int8 codes.
            y_quantization: pair `(scale, zero_point)` of the output's int8 codes.
        """
        self.grids = tuple(
            (float(scale), int(zero)) for scale, zero in (x_quantization, y_quantization)
        )
        (_, _), (y_scale, y_zero) = self.grids
        table = hard_swish_table(*self.grids).astype(np.float32)
        self._values = (table - y_zero) * np.float32(y_scale)

    def call(self, x, training=None):
        x = ops.cast(x, "float32")
        if training or self.mode != "quantize" or self.grids is None:
            return ops.hard_swish(x)
        x_scale, x_zero = self.grids[0]
        codes = ops.clip(ops.round(x / x_scale) + x_zero, -128, 127)
        return ops.take(ops.convert_to_tensor(self._values), ops.cast(codes + 128, "int32"))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "grids": self.grids}
