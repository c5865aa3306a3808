"""Efficiera Residual Networks (ERN, LeapMind; arXiv 2410.11553), as the official code
(github.com/LeapMind/ERN) builds them.

Every conv is w1a2: a QuantConv2D whose input_quantizer is the 2-bit HalfWaveGaussianQuantizer
(codes 0..3 switching at 1/3, 1, 5/3) and whose kernel_quantizer is binary with a per-channel
mean|W| scale (Conv_cw) or the shared ±1/32 (Conv_p2). No float conv, no max-pool, no FC: a
thermometer pixel embedding feeds the stem and a binary 1x1 conv feeds the final average pool.

    embedding -> stem (3x3 s2, 3x3, 3x3 s2, 1x1) -> 4 stages of pre-activation blocks
              -> BN -> Q2 -> binary 1x1 conv (classes) -> global average pool = logits

Activations are quantized inside the conv that reads them (BN -> [pad] -> QuantConv2D), so a
shortcut block quantizes its BN output twice (shortcut conv and conv1): same values, and every
conv carries what the w1a2 -> LCE rewrite (effkeras.deploy) needs:
    layer.input_quantizer.thresholds / .step      the 2-bit thresholds and output per code
    layer.kernel_quantizer.signs(layer.kernel)    the ±1 kernel
    layer.kernel_quantizer.scale(layer.kernel)    per-channel mean|W_o|, or 1/32 everywhere
3x3 convs read explicitly zero-padded input (ZeroPadding2D(1), then a VALID conv): a padded
position quantizes to code 0, as PyTorch's zero padding of the 2-bit activation in the code.
BatchNormalization has PyTorch's settings, as the code (`common.batch_norm`).
"""

import dataclasses

import keras
from keras import layers

from effkeras.layers.ern import PixelEmbedding
from effkeras.layers.quantized import QuantConv2D
from effkeras.models.common import batch_norm, coupled_l2, each_block, stages
from effkeras.models.registry import register
from effkeras.quantizers import (
    BinaryChannelWiseMeanScaling,
    BinaryPower2Scaling,
    HalfWaveGaussianQuantizer,
)

PAPER = "Efficiera Residual Networks, LeapMind (arXiv 2410.11553)"
STEM_FILTERS = 64  # §3.4 stem
WEIGHT_DECAY = 1e-5  # §4.1; the code puts it on conv kernels only, as coupled L2
# The "shared constant scaling factor" (§3): ±1/32 at every residual-branch end and shortcut conv.
SHARED_SCALE_DIVISOR = 32
# PyTorch's default conv init (the code keeps it), kaiming_uniform(a=√5) = U(±1/√fan_in): Adam's
# steps are relative to this scale.
KERNEL_INIT = dict(scale=1 / 3, mode="fan_in", distribution="uniform")


@dataclasses.dataclass(frozen=True)
class Config:
    """One ERN variant (Table 2; blocks and planes from the code's network configs).

    Attributes:
        block: str. `"basic"` (PreActBlock) or `"bottleneck"` (PreActBottleneck, 4·planes out).
        stages: tuple of `common.Stage`. Rows with filters = planes, strides 1, 2, 2, 2.
        ewgs_delta: float. δ of the code's "best" training config.
    """

    block: str  # "basic" (PreActBlock) or "bottleneck" (PreActBottleneck, 4·planes out)
    stages: tuple  # common.Stage rows; filters = planes, strides 1, 2, 2, 2
    ewgs_delta: float  # δ of the code's "best" training config


# 0.75x changes only layer4 (384 planes) and so the classifier input. ERNs18's best config
# trained with δ = 0; the others with δ = 0.01.
WIDTHS = (64, 128, 256, 512)
CONFIGS = {
    "ern18_075": Config("basic", stages(filters=(64, 128, 256, 384), blocks=(2, 2, 2, 2)), 0.01),
    "ern18": Config("basic", stages(filters=WIDTHS, blocks=(2, 2, 2, 2)), 0.0),
    "ern34": Config("basic", stages(filters=WIDTHS, blocks=(3, 4, 6, 3)), 0.01),
    "ern50": Config("bottleneck", stages(filters=WIDTHS, blocks=(3, 4, 6, 3)), 0.01),
    "ern101": Config("bottleneck", stages(filters=WIDTHS, blocks=(3, 4, 23, 3)), 0.01),
}
EXPANSION = {"basic": 1, "bottleneck": 4}


# --- quantizers (the code's efficiera/ndk/pth/quantizers.py) -------------------------------------


def q2(post_scale=True, ewgs_delta=0.0):
    """Returns the 2-bit activation quantizer: HWGQ, 2 bits, clip at 2.

    Args:
        post_scale: bool. `True` gives Q2⁺ (outputs q·2/3), `False` Q2ᶦ (integer q). Defaults
            to `True`.
        ewgs_delta: float. EWGS δ of the quantizer's gradient. Defaults to `0.0` (plain STE).

    Returns:
        A `HalfWaveGaussianQuantizer`.
    """
    return HalfWaveGaussianQuantizer(2, 2.0, post_scale=post_scale, ewgs_delta=ewgs_delta)


def embedding_codes():
    """Returns the input quantizer of the first stem conv, which reads the embedding's codes.

    The stem conv reads the embedding's integer codes 0..3 directly: HWGQ with max_value 3 and
    no post-scale is the identity on them (thresholds 1/2, 3/2, 5/2) and records their 2 bits.

    Returns:
        A `HalfWaveGaussianQuantizer`.
    """
    return HalfWaveGaussianQuantizer(2, 3.0, post_scale=False)


def conv(
    x,
    filters,
    kernel_size,
    stride,
    name,
    *,
    input_quantizer,
    shared_scale=False,
    ewgs_delta=0.0,
    regularizer=None,
):
    """Applies BN output -> [zero pad] -> w1a2 conv.

    The conv is Conv_p2 (±1/32) if `shared_scale`, else Conv_cw (per-channel mean|W|). A 3x3
    conv reads explicitly zero-padded input through a VALID conv.

    Args:
        x: tensor of shape `(batch, height, width, channels)`.
        filters: int. Output channels.
        kernel_size: int. Square kernel size.
        stride: int. Stride.
        name: str. Layer name (the pad is `{name}_pad`).
        input_quantizer: quantizer. The 2-bit activation quantizer of the conv's input.
        shared_scale: bool. Use the shared ±1/32 kernel scale. Defaults to `False`.
        ewgs_delta: float. EWGS δ of the kernel quantizer. Defaults to `0.0`.
        regularizer: keras regularizer or None. Kernel regularizer. Defaults to `None`.

    Returns:
        The conv's output tensor with `filters` channels.
    """
    if kernel_size > 1:
        x = layers.ZeroPadding2D((kernel_size - 1) // 2, name=f"{name}_pad")(x)
    kernel_quantizer = (
        BinaryPower2Scaling(SHARED_SCALE_DIVISOR, ewgs_delta)
        if shared_scale
        else BinaryChannelWiseMeanScaling(ewgs_delta)
    )
    return QuantConv2D(
        filters,
        kernel_size,
        strides=stride,
        padding="valid",
        use_bias=False,
        input_quantizer=input_quantizer,
        kernel_quantizer=kernel_quantizer,
        kernel_initializer=keras.initializers.VarianceScaling(**KERNEL_INIT),
        kernel_regularizer=regularizer,
        name=name,
    )(x)


# --- blocks (the code's PreActBlock and PreActBottleneck) ---------------------------------------


def pre_activation_block(x, planes, stride, shortcut, name, delta, reg):
    """PreActBlock: h = BN0(x); out = Conv_p2(Q2ᶦ(BN1(Conv_cw,s(Q(h))))) + shortcut.

    With a shortcut conv, Q = Q2ᶦ and shortcut = Conv_p2 1x1,s(Q2ᶦ(h)); else Q = Q2⁺ and x.
    Only the shortcut conv's kernel uses EWGS: the code forwards δ to no other conv of a block.

    Args:
        x: tensor of shape `(batch, height, width, channels)`, a BN output.
        planes: int. Width of the block (a bottleneck outputs `4 * planes` channels).
        stride: int. Stride of the strided conv and the shortcut conv.
        shortcut: bool. Whether the shortcut is a Conv_p2 1x1 conv (else the identity `x`).
        name: str. Prefix of the block's layer names.
        delta: float. EWGS δ of the shortcut conv's kernel.
        reg: keras regularizer or None. Applied to the conv kernels.

    Returns:
        The block's output tensor.
    """
    h = batch_norm(f"{name}_bn0")(x)
    if shortcut:
        identity = conv(
            h,
            planes,
            1,
            stride,
            f"{name}_shortcut_conv",
            shared_scale=True,
            input_quantizer=q2(post_scale=False),
            ewgs_delta=delta,
            regularizer=reg,
        )
    else:
        identity = x
    h = conv(
        h,
        planes,
        3,
        stride,
        f"{name}_conv1",
        input_quantizer=q2(post_scale=not shortcut),
        regularizer=reg,
    )
    h = batch_norm(f"{name}_bn1")(h)
    h = conv(
        h,
        planes,
        3,
        1,
        f"{name}_conv2",
        shared_scale=True,
        input_quantizer=q2(post_scale=False),
        regularizer=reg,
    )
    return layers.Add(name=f"{name}_add")([h, identity])


def pre_activation_bottleneck(x, planes, stride, shortcut, name, delta, reg):
    """PreActBottleneck: h = BN1(x); Conv_cw 1x1 -> BN2 -> Q2⁺ -> Conv_cw 3x3,s -> BN3 -> Q2ᶦ ->
    Conv_p2 1x1 (4·planes), plus the shortcut as in the basic block.

    Args:
        x: tensor of shape `(batch, height, width, channels)`, a BN output.
        planes: int. Width of the block (a bottleneck outputs `4 * planes` channels).
        stride: int. Stride of the strided conv and the shortcut conv.
        shortcut: bool. Whether the shortcut is a Conv_p2 1x1 conv (else the identity `x`).
        name: str. Prefix of the block's layer names.
        delta: float. EWGS δ of the shortcut conv's kernel.
        reg: keras regularizer or None. Applied to the conv kernels.

    Returns:
        The block's output tensor.
    """
    h = batch_norm(f"{name}_bn1")(x)
    if shortcut:
        identity = conv(
            h,
            4 * planes,
            1,
            stride,
            f"{name}_shortcut_conv",
            shared_scale=True,
            input_quantizer=q2(post_scale=False),
            ewgs_delta=delta,
            regularizer=reg,
        )
    else:
        identity = x
    h = conv(
        h,
        planes,
        1,
        1,
        f"{name}_conv1",
        input_quantizer=q2(post_scale=not shortcut),
        regularizer=reg,
    )
    h = conv(
        batch_norm(f"{name}_bn2")(h),
        planes,
        3,
        stride,
        f"{name}_conv2",
        input_quantizer=q2(),
        regularizer=reg,
    )
    h = conv(
        batch_norm(f"{name}_bn3")(h),
        4 * planes,
        1,
        1,
        f"{name}_conv3",
        shared_scale=True,
        input_quantizer=q2(post_scale=False),
        regularizer=reg,
    )
    return layers.Add(name=f"{name}_add")([h, identity])


BLOCKS = {"basic": pre_activation_block, "bottleneck": pre_activation_bottleneck}


# --- the network ---------------------------------------------------------------------------------


def ern(config, name, input_shape, num_classes, weight_decay=WEIGHT_DECAY, ewgs_delta=None):
    """Builds an ERN from a `CONFIGS` row.

    Thermometer pixel embedding -> stem -> 4 stages of pre-activation blocks -> BN -> Q2 ->
    binary 1x1 conv (classes) -> global average pool = logits.

    Args:
        config: Config. The variant (block type, stages, best δ).
        name: str. The model name.
        input_shape: tuple of 3 ints. `(height, width, channels)` of raw [0, 255] pixels.
        num_classes: int. Number of classes.
        weight_decay: float. Coupled weight decay on conv kernels only. Defaults to `1e-5`.
        ewgs_delta: float or None. `None` takes the row's (the best config's) δ, which applies
            where the official code forwards it: stem, shortcut convs, head. Defaults to `None`.

    Returns:
        A functional `keras.Model` returning float32 logits of shape `(batch, num_classes)`.
    """
    delta = config.ewgs_delta if ewgs_delta is None else ewgs_delta
    reg = coupled_l2(weight_decay)  # on conv kernels only, as the code
    inputs = keras.Input(input_shape, name="image")
    x = PixelEmbedding(name="pixel_embedding")(inputs)  # 3 -> 30 channels, codes 0..3 (§3.3)

    # Stem: conv1 s2, conv2, conv_downsample s2 (each -> BN -> Q2⁺), then conv1_2 1x1 whose
    # output starts the residual stream with no BN or activation (the code; §3.4 says four 3x3).
    stem = [("stem_conv1", 3, 2), ("stem_conv2", 3, 1), ("stem_downsample", 3, 2)]
    quantizer = embedding_codes()
    for layer_name, kernel_size, stride in stem:
        x = conv(
            x,
            STEM_FILTERS,
            kernel_size,
            stride,
            layer_name,
            input_quantizer=quantizer,
            ewgs_delta=delta,
            regularizer=reg,
        )
        x = batch_norm(f"{layer_name}_bn")(x)
        quantizer = q2(ewgs_delta=delta)
    x = conv(
        x,
        STEM_FILTERS,
        1,
        1,
        "stem_conv1_2",
        input_quantizer=quantizer,
        ewgs_delta=delta,
        regularizer=reg,
    )

    block = BLOCKS[config.block]
    for spec in each_block(config.stages):
        # Basic blocks: a shortcut conv opens every stage, layer1 included (as the code).
        shortcut = spec.first and (
            config.block == "basic"
            or spec.stride != 1
            or x.shape[-1] != EXPANSION[config.block] * spec.filters
        )
        x = block(x, spec.filters, spec.stride, shortcut, spec.name, delta, reg)

    # Head: last BN -> Q2⁺ -> binary 1x1 conv, no bias -> average pool (conv before pool, §3.6).
    x = batch_norm("head_bn")(x)
    x = conv(
        x,
        num_classes,
        1,
        1,
        "classifier",
        input_quantizer=q2(ewgs_delta=delta),
        ewgs_delta=delta,
        regularizer=reg,
    )
    outputs = layers.GlobalAveragePooling2D(dtype="float32", name="logits")(x)
    return keras.Model(inputs, outputs, name=name)


# Train at 256x256 (§4.1); evaluate at 288 (ten-crop of 308, §4.1, Table 4). Total stride 32.
ERN = dict(
    family="ern",
    paper=PAPER,
    input_shape=(256, 256, 3),
    num_classes=1000,
    deploy="arm",
    min_input_size=32,
)


@register("ern18_075", aliases=("ern18x075",), recipe="ern_simple", **ERN)
def ern18_075(
    input_shape=(256, 256, 3), num_classes=1000, weight_decay=WEIGHT_DECAY, ewgs_delta=None
):
    """ERNs-18 at 0.75x width (alias `ern18x075`).

    Basic pre-activation blocks (2, 2, 2, 2); 0.75x changes only layer4 (384 planes) and so the
    classifier input. Follows the paper's Table 2 row (blocks and planes from the code's network
    configs).

    Reference:
        - [LeapMind, Efficiera Residual Networks](https://arxiv.org/abs/2410.11553)

    Args:
        input_shape: tuple of 3 ints. `(height, width, channels)` of raw [0, 255] pixels; the
            paper trains at 256x256 and evaluates at 288x288. Defaults to `(256, 256, 3)`.
        num_classes: int. Number of classes (output channels of the binary 1x1 head).
            Defaults to `1000`.
        weight_decay: float. PyTorch-style (coupled) weight decay on conv kernels only, added
            as an L2 penalty of `weight_decay / 2`. Defaults to `1e-5` (§4.1).
        ewgs_delta: float or None. EWGS δ of the stem, shortcut and head convs. Defaults to
            `None`: the code's best config's δ (0.01).

    Returns:
        A functional `keras.Model` returning float32 logits of shape `(batch, num_classes)`.
    """
    return ern(
        CONFIGS["ern18_075"], "ern18_075", input_shape, num_classes, weight_decay, ewgs_delta
    )


@register("ern18", recipe="ern18", **ERN)
def ern18(input_shape=(256, 256, 3), num_classes=1000, weight_decay=WEIGHT_DECAY, ewgs_delta=None):
    """ERNs-18.

    Basic pre-activation blocks (2, 2, 2, 2), planes 64-128-256-512. Follows the paper's Table 2 row
    (blocks and planes from the code's network configs).

    Reference:
        - [LeapMind, Efficiera Residual Networks](https://arxiv.org/abs/2410.11553)

    Args:
        input_shape: tuple of 3 ints. `(height, width, channels)` of raw [0, 255] pixels; the
            paper trains at 256x256 and evaluates at 288x288. Defaults to `(256, 256, 3)`.
        num_classes: int. Number of classes (output channels of the binary 1x1 head).
            Defaults to `1000`.
        weight_decay: float. PyTorch-style (coupled) weight decay on conv kernels only, added
            as an L2 penalty of `weight_decay / 2`. Defaults to `1e-5` (§4.1).
        ewgs_delta: float or None. EWGS δ of the stem, shortcut and head convs. Defaults to
            `None`: the code's best config's δ (0).

    Returns:
        A functional `keras.Model` returning float32 logits of shape `(batch, num_classes)`.
    """
    return ern(CONFIGS["ern18"], "ern18", input_shape, num_classes, weight_decay, ewgs_delta)


@register("ern34", recipe="ern", **ERN)
def ern34(input_shape=(256, 256, 3), num_classes=1000, weight_decay=WEIGHT_DECAY, ewgs_delta=None):
    """ERNs-34.

    Basic pre-activation blocks (3, 4, 6, 3), planes 64-128-256-512. Follows the paper's Table 2 row
    (blocks and planes from the code's network configs).

    Reference:
        - [LeapMind, Efficiera Residual Networks](https://arxiv.org/abs/2410.11553)

    Args:
        input_shape: tuple of 3 ints. `(height, width, channels)` of raw [0, 255] pixels; the
            paper trains at 256x256 and evaluates at 288x288. Defaults to `(256, 256, 3)`.
        num_classes: int. Number of classes (output channels of the binary 1x1 head).
            Defaults to `1000`.
        weight_decay: float. PyTorch-style (coupled) weight decay on conv kernels only, added
            as an L2 penalty of `weight_decay / 2`. Defaults to `1e-5` (§4.1).
        ewgs_delta: float or None. EWGS δ of the stem, shortcut and head convs. Defaults to
            `None`: the code's best config's δ (0.01).

    Returns:
        A functional `keras.Model` returning float32 logits of shape `(batch, num_classes)`.
    """
    return ern(CONFIGS["ern34"], "ern34", input_shape, num_classes, weight_decay, ewgs_delta)


@register("ern50", recipe="ern", **ERN)
def ern50(input_shape=(256, 256, 3), num_classes=1000, weight_decay=WEIGHT_DECAY, ewgs_delta=None):
    """ERNs-50.

    Bottleneck pre-activation blocks (3, 4, 6, 3), planes 64-128-256-512. Follows the paper's Table
    2 row (blocks and planes from the code's network configs).

    Reference:
        - [LeapMind, Efficiera Residual Networks](https://arxiv.org/abs/2410.11553)

    Args:
        input_shape: tuple of 3 ints. `(height, width, channels)` of raw [0, 255] pixels; the
            paper trains at 256x256 and evaluates at 288x288. Defaults to `(256, 256, 3)`.
        num_classes: int. Number of classes (output channels of the binary 1x1 head).
            Defaults to `1000`.
        weight_decay: float. PyTorch-style (coupled) weight decay on conv kernels only, added
            as an L2 penalty of `weight_decay / 2`. Defaults to `1e-5` (§4.1).
        ewgs_delta: float or None. EWGS δ of the stem, shortcut and head convs. Defaults to
            `None`: the code's best config's δ (0.01).

    Returns:
        A functional `keras.Model` returning float32 logits of shape `(batch, num_classes)`.
    """
    return ern(CONFIGS["ern50"], "ern50", input_shape, num_classes, weight_decay, ewgs_delta)


@register("ern101", recipe="ern_randaugment", **ERN)
def ern101(input_shape=(256, 256, 3), num_classes=1000, weight_decay=WEIGHT_DECAY, ewgs_delta=None):
    """ERNs-101.

    Bottleneck pre-activation blocks (3, 4, 23, 3), planes 64-128-256-512. Follows the paper's Table
    2 row (blocks and planes from the code's network configs).

    Reference:
        - [LeapMind, Efficiera Residual Networks](https://arxiv.org/abs/2410.11553)

    Args:
        input_shape: tuple of 3 ints. `(height, width, channels)` of raw [0, 255] pixels; the
            paper trains at 256x256 and evaluates at 288x288. Defaults to `(256, 256, 3)`.
        num_classes: int. Number of classes (output channels of the binary 1x1 head).
            Defaults to `1000`.
        weight_decay: float. PyTorch-style (coupled) weight decay on conv kernels only, added
            as an L2 penalty of `weight_decay / 2`. Defaults to `1e-5` (§4.1).
        ewgs_delta: float or None. EWGS δ of the stem, shortcut and head convs. Defaults to
            `None`: the code's best config's δ (0.01).

    Returns:
        A functional `keras.Model` returning float32 logits of shape `(batch, num_classes)`.
    """
    return ern(CONFIGS["ern101"], "ern101", input_shape, num_classes, weight_decay, ewgs_delta)
