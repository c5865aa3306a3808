"""Efficiera Residual Networks (ERN, LeapMind), as the official code builds them (recu_ern.md §B4).

Every conv is w1a2: a QuantConv2D whose input_quantizer is the 2-bit HalfWaveGaussianQuantizer
(codes 0..3 switching at 1/3, 1, 5/3) and whose kernel_quantizer is binary with a per-channel
mean|W| scale (Conv_cw) or the shared ±1/32 (Conv_p2). No float conv, no max-pool, no FC: a
thermometer pixel embedding feeds the stem and a binary 1x1 conv feeds the final average pool.

    embedding -> stem (3x3 s2, 3x3, 3x3 s2, 1x1) -> 4 stages of pre-activation blocks
              -> BN -> Q2 -> binary 1x1 conv (classes) -> global average pool = logits

Activations are quantized inside the conv that reads them (BN -> [pad] -> QuantConv2D), so a
shortcut block quantizes its BN output twice (shortcut conv and conv1): same values, and every
conv carries what the w1a2 -> LCE rewrite needs (§C3):
    layer.input_quantizer.thresholds / .step      the 2-bit thresholds and output per code
    layer.kernel_quantizer.signs(layer.kernel)    the ±1 kernel
    layer.kernel_quantizer.scale(layer.kernel)    per-channel mean|W_o|, or 1/32 everywhere
3x3 convs read explicitly zero-padded input (ZeroPadding2D(1), then a VALID conv): a padded
position quantizes to code 0, as PyTorch's zero padding of the 2-bit activation (§B8).
"""

import keras
from keras import layers

from effkeras.layers.ern import PixelEmbedding
from effkeras.layers.quantized import QuantConv2D
from effkeras.models.registry import register
from effkeras.quantizers import (BinaryChannelWiseMeanScaling, BinaryPower2Scaling,
                                 HalfWaveGaussianQuantizer)

PAPER = "Efficiera Residual Networks, LeapMind (arXiv 2410.11553)"
BN = dict(momentum=0.9, epsilon=1e-5)  # PyTorch BatchNorm2d defaults (§B4, §B8)
STEM_FILTERS = 64  # §B4 stem
STAGE_STRIDES = (1, 2, 2, 2)  # §B4 stages
WEIGHT_DECAY = 1e-5  # §B5: coupled L2 on conv kernels only
SHARED_SCALE_DIVISOR = 32  # §B2.1: the ±1/32 of every residual-branch end and shortcut conv
# PyTorch's default conv init, kaiming_uniform(a=√5) = U(±1/√fan_in) (§B5): Adam's steps are
# relative to this scale.
KERNEL_INIT = dict(scale=1 / 3, mode="fan_in", distribution="uniform")

# §B4 variants: (block, blocks per stage, planes per stage, EWGS δ of the "best" config of §B5)
# 0.75x changes only layer4 (384 planes) and so the classifier input. ERNs18's best config
# trained with δ = 0; the others with δ = 0.01.
CONFIGS = {
    "ern18_075": ("basic", (2, 2, 2, 2), (64, 128, 256, 384), 0.01),
    "ern18": ("basic", (2, 2, 2, 2), (64, 128, 256, 512), 0.0),
    "ern34": ("basic", (3, 4, 6, 3), (64, 128, 256, 512), 0.01),
    "ern50": ("bottleneck", (3, 4, 6, 3), (64, 128, 256, 512), 0.01),
    "ern101": ("bottleneck", (3, 4, 23, 3), (64, 128, 256, 512), 0.01),
}
EXPANSION = {"basic": 1, "bottleneck": 4}


# --- quantizers (§B2) ---------------------------------------------------------------------------


def q2(post_scale=True, ewgs_delta=0.0):
    """Q2⁺ (post_scale, outputs q·2/3) or Q2ᶦ (integer q): HWGQ, 2 bits, clip at 2 (§B2.2)."""
    return HalfWaveGaussianQuantizer(2, 2.0, post_scale=post_scale, ewgs_delta=ewgs_delta)


def embedding_codes():
    """The stem conv reads the embedding's integer codes 0..3 directly: HWGQ with max_value 3 and
    no post-scale is the identity on them (thresholds 1/2, 3/2, 5/2) and records their 2 bits."""
    return HalfWaveGaussianQuantizer(2, 3.0, post_scale=False)


def conv(x, filters, kernel_size, stride, name, *, input_quantizer, shared_scale=False,
         ewgs_delta=0.0, regularizer=None):
    """BN output -> [zero pad] -> w1a2 conv: Conv_p2 (±1/32) if shared_scale, else Conv_cw."""
    if kernel_size > 1:
        x = layers.ZeroPadding2D((kernel_size - 1) // 2, name=f"{name}_pad")(x)
    kernel_quantizer = (BinaryPower2Scaling(SHARED_SCALE_DIVISOR, ewgs_delta) if shared_scale
                        else BinaryChannelWiseMeanScaling(ewgs_delta))
    return QuantConv2D(filters, kernel_size, strides=stride, padding="valid", use_bias=False,
                       input_quantizer=input_quantizer, kernel_quantizer=kernel_quantizer,
                       kernel_initializer=keras.initializers.VarianceScaling(**KERNEL_INIT),
                       kernel_regularizer=regularizer, name=name)(x)


def batch_norm(x, name):
    return layers.BatchNormalization(**BN, name=name)(x)


# --- blocks (§B4) -------------------------------------------------------------------------------


def pre_activation_block(x, planes, stride, shortcut, name, delta, reg):
    """PreActBlock: h = BN0(x); out = Conv_p2(Q2ᶦ(BN1(Conv_cw,s(Q(h))))) + shortcut.

    With a shortcut conv, Q = Q2ᶦ and shortcut = Conv_p2 1x1,s(Q2ᶦ(h)); else Q = Q2⁺ and x.
    Only the shortcut conv's kernel uses EWGS (§B2.3).
    """
    h = batch_norm(x, f"{name}_bn0")
    if shortcut:
        identity = conv(h, planes, 1, stride, f"{name}_shortcut_conv", shared_scale=True,
                        input_quantizer=q2(post_scale=False), ewgs_delta=delta, regularizer=reg)
    else:
        identity = x
    h = conv(h, planes, 3, stride, f"{name}_conv1", input_quantizer=q2(post_scale=not shortcut),
             regularizer=reg)
    h = batch_norm(h, f"{name}_bn1")
    h = conv(h, planes, 3, 1, f"{name}_conv2", shared_scale=True,
             input_quantizer=q2(post_scale=False), regularizer=reg)
    return layers.Add(name=f"{name}_add")([h, identity])


def pre_activation_bottleneck(x, planes, stride, shortcut, name, delta, reg):
    """PreActBottleneck: h = BN1(x); Conv_cw 1x1 -> BN2 -> Q2⁺ -> Conv_cw 3x3,s -> BN3 -> Q2ᶦ ->
    Conv_p2 1x1 (4·planes), plus the shortcut as in the basic block."""
    h = batch_norm(x, f"{name}_bn1")
    if shortcut:
        identity = conv(h, 4 * planes, 1, stride, f"{name}_shortcut_conv", shared_scale=True,
                        input_quantizer=q2(post_scale=False), ewgs_delta=delta, regularizer=reg)
    else:
        identity = x
    h = conv(h, planes, 1, 1, f"{name}_conv1", input_quantizer=q2(post_scale=not shortcut),
             regularizer=reg)
    h = conv(batch_norm(h, f"{name}_bn2"), planes, 3, stride, f"{name}_conv2",
             input_quantizer=q2(), regularizer=reg)
    h = conv(batch_norm(h, f"{name}_bn3"), 4 * planes, 1, 1, f"{name}_conv3", shared_scale=True,
             input_quantizer=q2(post_scale=False), regularizer=reg)
    return layers.Add(name=f"{name}_add")([h, identity])


BLOCKS = {"basic": pre_activation_block, "bottleneck": pre_activation_bottleneck}


# --- the network (§B4) --------------------------------------------------------------------------


def ern(config, name, input_shape, num_classes, weight_decay=WEIGHT_DECAY, ewgs_delta=None):
    """An ERN from a CONFIGS row. ewgs_delta=None takes the row's (the best config's) δ, which
    applies where the official code forwards it: stem, shortcut convs, head (§B2.3)."""
    block_kind, blocks, planes_per_stage, default_delta = config
    delta = default_delta if ewgs_delta is None else ewgs_delta
    # PyTorch's coupled weight decay wd on conv kernels = a Keras L2 penalty of wd / 2 (§B8).
    reg = keras.regularizers.L2(weight_decay / 2) if weight_decay else None
    inputs = keras.Input(input_shape, name="image")
    x = PixelEmbedding(name="pixel_embedding")(inputs)  # 3 -> 30 channels, codes 0..3 (§B3)

    # Stem: conv1 s2, conv2, conv_downsample s2 (each -> BN -> Q2⁺), then conv1_2 1x1 whose
    # output starts the residual stream with no BN or activation (§B4).
    stem = [("stem_conv1", 3, 2), ("stem_conv2", 3, 1), ("stem_downsample", 3, 2)]
    quantizer = embedding_codes()
    for layer_name, kernel_size, stride in stem:
        x = conv(x, STEM_FILTERS, kernel_size, stride, layer_name, input_quantizer=quantizer,
                 ewgs_delta=delta, regularizer=reg)
        x = batch_norm(x, f"{layer_name}_bn")
        quantizer = q2(ewgs_delta=delta)
    x = conv(x, STEM_FILTERS, 1, 1, "stem_conv1_2", input_quantizer=quantizer, ewgs_delta=delta,
             regularizer=reg)

    block = BLOCKS[block_kind]
    expansion = EXPANSION[block_kind]
    for stage, (count, planes, stride) in enumerate(zip(blocks, planes_per_stage, STAGE_STRIDES),
                                                    start=1):
        for b in range(count):
            first = b == 0
            # Basic blocks: a shortcut conv opens every stage, layer1 included (§B4).
            shortcut = first and (block_kind == "basic" or stride != 1
                                  or x.shape[-1] != expansion * planes)
            x = block(x, planes, stride if first else 1, shortcut, f"stage{stage}_block{b + 1}",
                      delta, reg)

    # Head: last BN -> Q2⁺ -> binary 1x1 conv, no bias -> average pool (conv before pool, §B4).
    x = batch_norm(x, "head_bn")
    x = conv(x, num_classes, 1, 1, "classifier", input_quantizer=q2(ewgs_delta=delta),
             ewgs_delta=delta, regularizer=reg)
    outputs = layers.GlobalAveragePooling2D(dtype="float32", name="logits")(x)
    return keras.Model(inputs, outputs, name=name)


# Train at 256x256 (§B5); evaluate at 288 (ten-crop of 308, §B6). Total stride 32.
ERN = dict(family="ern", paper=PAPER, input_shape=(256, 256, 3), num_classes=1000, deploy="lce",
           min_input_size=32)


@register("ern18_075", aliases=("ern18x075",), recipe="ern_simple", **ERN)
def ern18_075(input_shape=(256, 256, 3), num_classes=1000, weight_decay=WEIGHT_DECAY,
              ewgs_delta=None):
    return ern(CONFIGS["ern18_075"], "ern18_075", input_shape, num_classes, weight_decay,
               ewgs_delta)


@register("ern18", recipe="ern18", **ERN)
def ern18(input_shape=(256, 256, 3), num_classes=1000, weight_decay=WEIGHT_DECAY,
          ewgs_delta=None):
    return ern(CONFIGS["ern18"], "ern18", input_shape, num_classes, weight_decay, ewgs_delta)


@register("ern34", recipe="ern", **ERN)
def ern34(input_shape=(256, 256, 3), num_classes=1000, weight_decay=WEIGHT_DECAY,
          ewgs_delta=None):
    return ern(CONFIGS["ern34"], "ern34", input_shape, num_classes, weight_decay, ewgs_delta)


@register("ern50", recipe="ern", **ERN)
def ern50(input_shape=(256, 256, 3), num_classes=1000, weight_decay=WEIGHT_DECAY,
          ewgs_delta=None):
    return ern(CONFIGS["ern50"], "ern50", input_shape, num_classes, weight_decay, ewgs_delta)


@register("ern101", recipe="ern_randaugment", **ERN)
def ern101(input_shape=(256, 256, 3), num_classes=1000, weight_decay=WEIGHT_DECAY,
           ewgs_delta=None):
    return ern(CONFIGS["ern101"], "ern101", input_shape, num_classes, weight_decay, ewgs_delta)
