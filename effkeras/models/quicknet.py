"""QuickNet (Bannink et al., "Larq Compute Engine: Design, Benchmark, and Deploy State-of-the-Art
Binarized Neural Networks", MLSys 2021, arXiv 2011.09398), as Larq Zoo 2.4 builds it
(`larq_zoo.sota.QuickNetSmall/QuickNet/QuickNetLarge`): same layers, same order, same parameter
counts, so Larq Zoo's weight files load (effkeras.interop.larq_zoo).

    float stem: 3x3/2 conv -> BN -> ReLU -> 3x3/2 depthwise -> BN -> 1x1 conv -> BN
    4 sections of residual blocks:  x + BN(ReLU(bconv3x3(sign(x))))
      (binary conv: SteSign(1.25) on input and kernel, WeightClip(1.25), padded with +1)
    a transition opens each section whose width changes:
      ReLU -> 2x2/1 max-pool -> 3x3/2 blur-pool depthwise (fixed) -> float 1x1 conv -> BN
    head: ReLU -> average pool over the whole map -> Dense logits

Differences from Larq Zoo, none with weights: the model takes raw [0, 255] pixels and normalises
them with ImageNet's mean and std itself (Larq Zoo's `preprocess_input` does it outside), and it
outputs logits (Larq Zoo ends in a softmax; effkeras losses take logits). Float layers are plain
Keras layers (Larq Zoo's QuantConv2D/QuantDepthwiseConv2D/QuantDense there carry no quantizers).
The binary convs keep the fused order LCE wants (bconv -> ReLU -> BN), and their +1 padding is
LCE's "same-one" pattern: every one becomes an `LceBconv2d`.
"""

import dataclasses

import keras
from keras import layers

from effkeras.constraints import WeightClip
from effkeras.layers import BatchNormalization, BlurPool, QuantConv2D, normalize_pixels
from effkeras.models.common import batch_norm, each_block, stages, whole_map_logits
from effkeras.models.registry import register
from effkeras.quantizers import SteSign

PAPER = "QuickNet, Bannink et al., MLSys 2021 (arXiv 2011.09398); Larq Zoo's sota.QuickNet"


@dataclasses.dataclass(frozen=True)
class Config:
    """One QuickNet variant: blocks and filters per section (Larq Zoo's field names).

    Attributes:
        section_blocks: tuple of ints. Residual blocks per section.
        section_filters: tuple of ints. Width of each section.
    """

    section_blocks: tuple
    section_filters: tuple


CONFIGS = {
    "quicknet_small": Config(section_blocks=(4, 4, 4, 4), section_filters=(32, 64, 256, 512)),
    "quicknet": Config(section_blocks=(4, 4, 4, 4), section_filters=(64, 128, 256, 512)),
    "quicknet_large": Config(section_blocks=(6, 8, 12, 6), section_filters=(64, 128, 256, 512)),
}

# model.count_params() and trainable parameters at 224x224x3 with 1000 classes, measured on
# Larq Zoo 2.4's builds (tests/test_binary_peers.py checks both against Larq Zoo). The counts in
# Larq Zoo's docs tables (12,655,688 / 13,234,088 / 23,342,248) leave out the moving statistics
# of every BN that has a scale.
PARAMS = {"quicknet_small": 12_664_344, "quicknet": 13_243_720, "quicknet_large": 23_359_304}
TRAINABLE_PARAMS = {
    "quicknet_small": 12_652_504,
    "quicknet": 13_230_024,
    "quicknet_large": 23_338_184,
}

CLIP = 1.25  # SteSign's gradient clip and the latent-weight clip of every binary conv
# BN after the binary and transition convs; the stem's BNs keep Keras' defaults (0.99, 1e-3).
MOMENTUM, EPSILON = 0.9, 1e-5
KERAS_BN = dict(momentum=0.99, epsilon=1e-3)
BLUR_SIZE = 3  # the transition's anti-aliasing filter (Zhang, arXiv 1904.11486)


def stem(x, filters):
    """Applies the float stem to 1/4 resolution.

    3x3/2 conv (filters/4) -> BN -> ReLU -> depthwise 3x3/2 -> BN -> 1x1 conv -> BN.

    Args:
        x: tensor of shape `(batch, height, width, channels)`, normalised pixels.
        filters: int. Output channels, divisible by 4.

    Returns:
        A tensor with `filters` channels at 1/4 of the input's resolution.

    Raises:
        ValueError: if `filters` is not divisible by 4.
    """
    if filters % 4:
        raise ValueError(f"QuickNet's first section needs filters divisible by 4, got {filters}")
    x = layers.Conv2D(
        filters // 4,
        3,
        strides=2,
        padding="same",
        use_bias=False,
        kernel_initializer="he_normal",
        name="stem_conv1",
    )(x)
    x = BatchNormalization(**KERAS_BN, name="stem_bn1")(x)
    x = layers.Activation("relu", name="stem_relu")(x)
    x = layers.DepthwiseConv2D(3, strides=2, padding="same", use_bias=False, name="stem_depthwise")(
        x
    )
    x = BatchNormalization(**KERAS_BN, center=False, scale=False, name="stem_bn2")(x)
    x = layers.Conv2D(
        filters, 1, use_bias=False, kernel_initializer="he_normal", name="stem_conv2"
    )(x)
    return BatchNormalization(**KERAS_BN, name="stem_bn3")(x)


def transition_block(x, filters, stride, name):
    """Applies a transition: ReLU -> max-pool (stride 1) -> fixed blur-pool depthwise (stride)
    -> float 1x1 conv -> BN.

    Args:
        x: tensor of shape `(batch, height, width, channels)`.
        filters: int. Output channels.
        stride: int. Stride of the blur-pool.
        name: str. Prefix of the layer names.

    Returns:
        The output tensor with `filters` channels.
    """
    x = layers.Activation("relu", name=f"{name}_relu")(x)
    x = layers.MaxPooling2D(stride, strides=1, name=f"{name}_maxpool")(x)
    x = layers.DepthwiseConv2D(
        BLUR_SIZE,
        strides=stride,
        padding="same",
        use_bias=False,
        depthwise_initializer=BlurPool(),
        trainable=False,
        name=f"{name}_blurpool",
    )(x)
    x = layers.Conv2D(
        filters, 1, use_bias=False, kernel_initializer="glorot_normal", name=f"{name}_conv"
    )(x)
    return batch_norm(f"{name}_bn", momentum=MOMENTUM, epsilon=EPSILON)(x)


def residual_block(x, name):
    """Applies x + BN(ReLU(binary 3x3 conv(x))), at x's width; the shortcut stays float.

    Args:
        x: tensor of shape `(batch, height, width, channels)`.
        name: str. Prefix of the layer names.

    Returns:
        A tensor of the same shape as `x`.
    """
    y = QuantConv2D(
        x.shape[-1],
        3,
        padding="same",
        pad_values=1.0,
        activation="relu",
        input_quantizer=SteSign(clip_value=CLIP),
        kernel_quantizer=SteSign(clip_value=CLIP),
        kernel_constraint=WeightClip(clip_value=CLIP),
        kernel_initializer="glorot_normal",
        use_bias=False,
        name=f"{name}_conv",
    )(x)
    y = batch_norm(f"{name}_bn", momentum=MOMENTUM, epsilon=EPSILON)(y)
    return layers.Add(name=f"{name}_add")([y, x])


def build_quicknet(name, input_shape, num_classes, section_blocks, section_filters):
    """Builds a QuickNet of `section_blocks` residual blocks per section at `section_filters`.

    Args:
        name: str. The model name.
        input_shape: tuple of 3 ints. `(height, width, channels)` of raw [0, 255] pixels.
        num_classes: int. Number of classes.
        section_blocks: sequence of ints. Residual blocks per section.
        section_filters: sequence of ints. Width of each section (the first divisible by 4).

    Returns:
        A functional `keras.Model` returning logits of shape `(batch, num_classes)`.

    Raises:
        ValueError: if `section_filters[0]` is not divisible by 4.
    """
    inputs = keras.Input(input_shape, name="image")
    x = stem(normalize_pixels(inputs), section_filters[0])
    for spec in each_block(stages(filters=section_filters, blocks=section_blocks)):
        if spec.first and x.shape[-1] != spec.filters:  # Larq Zoo: when the width changes
            x = transition_block(x, spec.filters, 2, f"{spec.name}_transition")
        x = residual_block(x, spec.name)
    x = layers.Activation("relu", name="head_relu")(x)
    outputs = whole_map_logits(x, num_classes, kernel_initializer="glorot_normal")
    return keras.Model(inputs, outputs, name=name)


# Total stride 32 (stem 4, three stride-2 transitions). `small`: the test harness' narrow build.
QUICKNET = dict(
    family="peer",
    paper=PAPER,
    input_shape=(224, 224, 3),
    num_classes=1000,
    recipe="quicknet",
    deploy="arm",
    min_input_size=32,
    small=dict(section_blocks=(1, 1, 1, 1), section_filters=(16, 32, 64, 128)),
)
SMALL, REGULAR, LARGE = (CONFIGS[name] for name in ("quicknet_small", "quicknet", "quicknet_large"))


@register("quicknet_small", **QUICKNET)
def quicknet_small(
    input_shape=(224, 224, 3),
    num_classes=1000,
    section_blocks=SMALL.section_blocks,
    section_filters=SMALL.section_filters,
):
    """QuickNetSmall (Larq Zoo's `sota.QuickNetSmall`).

    As Larq Zoo 2.4's `sota` model builds it, so Larq Zoo's weight file loads
    (effkeras.interop.larq_zoo). It takes raw [0, 255] pixels and outputs logits.

    Reference:
        - [Bannink et al., Larq Compute Engine: Design, Benchmark, and Deploy State-of-the-Art
            Binarized Neural Networks, MLSys 2021](https://arxiv.org/abs/2011.09398)

    Args:
        input_shape: tuple of 3 ints. `(height, width, channels)` of raw [0, 255] pixels.
            Defaults to `(224, 224, 3)`.
        num_classes: int. Number of classes. Defaults to `1000`.
        section_blocks: tuple of ints. Residual blocks per section. Defaults to `(4, 4, 4, 4)`.
        section_filters: tuple of ints. Width of each section; the first must be divisible by
            4. Defaults to `(32, 64, 256, 512)`.

    Returns:
        A functional `keras.Model` returning logits of shape `(batch, num_classes)`.

    Raises:
        ValueError: if `section_filters[0]` is not divisible by 4.
    """
    return build_quicknet(
        "quicknet_small", input_shape, num_classes, section_blocks, section_filters
    )


@register("quicknet", **QUICKNET)
def quicknet(
    input_shape=(224, 224, 3),
    num_classes=1000,
    section_blocks=REGULAR.section_blocks,
    section_filters=REGULAR.section_filters,
):
    """QuickNet (Larq Zoo's `sota.QuickNet`).

    As Larq Zoo 2.4's `sota` model builds it, so Larq Zoo's weight file loads
    (effkeras.interop.larq_zoo). It takes raw [0, 255] pixels and outputs logits.

    Reference:
        - [Bannink et al., Larq Compute Engine: Design, Benchmark, and Deploy State-of-the-Art
            Binarized Neural Networks, MLSys 2021](https://arxiv.org/abs/2011.09398)

    Args:
        input_shape: tuple of 3 ints. `(height, width, channels)` of raw [0, 255] pixels.
            Defaults to `(224, 224, 3)`.
        num_classes: int. Number of classes. Defaults to `1000`.
        section_blocks: tuple of ints. Residual blocks per section. Defaults to `(4, 4, 4, 4)`.
        section_filters: tuple of ints. Width of each section; the first must be divisible by
            4. Defaults to `(64, 128, 256, 512)`.

    Returns:
        A functional `keras.Model` returning logits of shape `(batch, num_classes)`.

    Raises:
        ValueError: if `section_filters[0]` is not divisible by 4.
    """
    return build_quicknet("quicknet", input_shape, num_classes, section_blocks, section_filters)


@register("quicknet_large", **QUICKNET)
def quicknet_large(
    input_shape=(224, 224, 3),
    num_classes=1000,
    section_blocks=LARGE.section_blocks,
    section_filters=LARGE.section_filters,
):
    """QuickNetLarge (Larq Zoo's `sota.QuickNetLarge`).

    As Larq Zoo 2.4's `sota` model builds it, so Larq Zoo's weight file loads
    (effkeras.interop.larq_zoo). It takes raw [0, 255] pixels and outputs logits.

    Reference:
        - [Bannink et al., Larq Compute Engine: Design, Benchmark, and Deploy State-of-the-Art
            Binarized Neural Networks, MLSys 2021](https://arxiv.org/abs/2011.09398)

    Args:
        input_shape: tuple of 3 ints. `(height, width, channels)` of raw [0, 255] pixels.
            Defaults to `(224, 224, 3)`.
        num_classes: int. Number of classes. Defaults to `1000`.
        section_blocks: tuple of ints. Residual blocks per section. Defaults to `(6, 8, 12, 6)`.
        section_filters: tuple of ints. Width of each section; the first must be divisible by
            4. Defaults to `(64, 128, 256, 512)`.

    Returns:
        A functional `keras.Model` returning logits of shape `(batch, num_classes)`.

    Raises:
        ValueError: if `section_filters[0]` is not divisible by 4.
    """
    return build_quicknet(
        "quicknet_large", input_shape, num_classes, section_blocks, section_filters
    )
