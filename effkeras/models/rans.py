"""RAN-e: Restructurable Activation Networks, explicit variant (Bhardwaj et al., arXiv 2208.08562).

An EfficientNet-B0-like skeleton in which some inverted-bottleneck blocks (IBN: MBConv without
squeeze-excite), whose depthwise convolutions use a micro-NPU's MAC array poorly, are replaced by
collapsible blocks (CB) with ONE non-linearity: BN -> h-swish -> a linear 3x3 conv -> BN, the
residual taken from the block's un-normalised input. The conv is a `CollapsibleConv2D`: the
released models train it as a plain 3x3 conv (`expansion=None`); `expansion=t` trains the
paper's over-parameterised linear expansion (3x3 Cin -> t*max(Cin, Cout), then 1x1), collapsed
into one 3x3 conv at every step and at export (`effkeras.graph.passes.collapse`).

The two released networks, GT ("Ground Truth") and C ("SubNetwork-C"), as tables below (paper
Fig. 1 / the official release): 4.5M parameters / 434M MACs and 4.7M / 488M at 224x224.
Stem: 3x3 stride-2 conv to 16 channels with no BN or activation (the first CB starts with BN and
h-swish). Head: 1x1 conv to 1344, BN, h-swish, depthwise 7x7, BN, h-swish, global pool, dropout
0.2, Dense. BN momentum 0.99, epsilon 1e-3; bias-free convs with L2 5e-6 on every conv and the
classifier; He fan-out initialisation. `_relu6` variants swap h-swish for ReLU6, which Ethos-U
runs without a lookup table (MobileNetV3, arXiv 1905.02244 §5.2, defines h-swish).

`ran_e_gt_32` is GT scaled to 32x32 inputs (Fashion-MNIST, CIFAR): the same blocks at half width,
the stem and stack 7 at stride 1 (total stride 8, a 4x4 final map) and a 4x4 depthwise head.
"""

import dataclasses

import keras
from keras import layers

from effkeras.layers import BatchNormalization, CollapsibleConv2D, normalize_pixels
from effkeras.models.efficientnet_lite import mbconv_block
from effkeras.models.registry import register

BN_MOMENTUM, BN_EPSILON = 0.99, 1e-3
WEIGHT_DECAY = 5e-6  # L2 on conv kernels and the classifier (its kernel and bias)
STEM_FILTERS = 16
HEAD_FILTERS = 1344
HEAD_KERNEL = 7  # the depthwise conv of the head, on the 7x7 map of a 224x224 input
DROPOUT = 0.2
# He init on fan-out for convs, a third of the fan-out scale (uniform) for the classifier. As
# configs, so that every layer gets its own initializer: one unseeded Keras 3 initializer
# object gives every layer of the same shape the same weights.
CONV_INIT = {
    "class_name": "VarianceScaling",
    "config": {"scale": 2.0, "mode": "fan_out", "distribution": "truncated_normal"},
}
DENSE_INIT = {
    "class_name": "VarianceScaling",
    "config": {"scale": 1 / 3, "mode": "fan_out", "distribution": "uniform"},
}


@dataclasses.dataclass(frozen=True)
class CB:
    """Collapsible block (CB) entry of a RAN-e table.

    Attributes:
        filters: int. Output channels.
        stride: int. Stride of the first conv. Defaults to 1.
        mid: int or None. The double block filters -> mid -> filters; `None` for a single one.
    """

    filters: int
    stride: int = 1
    mid: int = None


@dataclasses.dataclass(frozen=True)
class IBN:
    """Inverted bottleneck (IBN: MBConv without squeeze-excite) entry of a RAN-e table.

    Attributes:
        kernel: int. Depthwise kernel size.
        expand: int. Expansion, times the input channels.
        filters: int. Output channels.
        stride: int. Stride of the depthwise conv. Defaults to 1.
        mid: int or None. The pair Cin -> mid -> filters whose two expansions both have
            expand x Cin channels; `None` for a single block.
    """

    kernel: int
    expand: int
    filters: int
    stride: int = 1
    mid: int = None


# One tuple per stack (the table's stacks 0-9; blocks are named stage{stack + 1}_block{j}).
RAN_E_GT = (
    (CB(32),),  # 0: 112x112
    (CB(48, stride=2),),  # 1: 56
    (CB(64, stride=2),),  # 2: 28
    (CB(80),),  # 3
    (IBN(5, 6, 80, stride=2), IBN(5, 6, 80)),  # 4: 14
    (IBN(3, 4, 96), IBN(3, 4, 96)),  # 5
    (CB(128), CB(128, mid=64)),  # 6
    (IBN(7, 6, 160, stride=2),),  # 7: 7
    (IBN(3, 4, 176),) * 3,  # 8
    (IBN(5, 6, 224),) * 2,  # 9
)
RAN_E_C = (
    (CB(32),),
    (CB(48, stride=2),),
    (IBN(3, 6, 64, stride=2),),
    (CB(80),),
    (IBN(5, 6, 80, stride=2), CB(80)),
    (IBN(5, 4, 96), CB(96)),
    (IBN(3, 6, 128), IBN(3, 6, 128, mid=64)),
    (CB(160, stride=2),),
    (IBN(7, 4, 176), IBN(3, 4, 176), CB(176)),
    (IBN(5, 6, 224),) * 2,
)
# GT at 32x32: half the widths (rounded to multiples of 8), the stem and stack 7 at stride 1.
RAN_E_GT_32 = (
    (CB(16),),
    (CB(24, stride=2),),
    (CB(32, stride=2),),
    (CB(40),),
    (IBN(5, 6, 40, stride=2), IBN(5, 6, 40)),
    (IBN(3, 4, 48), IBN(3, 4, 48)),
    (CB(64), CB(64, mid=32)),
    (IBN(7, 6, 80),),
    (IBN(3, 4, 88),) * 3,
    (IBN(5, 6, 112),) * 2,
)


def _bn(name):
    return BatchNormalization(momentum=BN_MOMENTUM, epsilon=BN_EPSILON, name=name)


def _l2():
    return keras.regularizers.L2(WEIGHT_DECAY)


def collapsed_block(x, filters, stride, activation, name, *, mid=None, expansion=None):
    """Applies a pre-activation collapsible block.

    BN -> act -> linear 3x3 -> BN (`mid`: twice, through `mid` channels), plus the block's
    input when the shapes allow (stride 1 and equal channels).

    Args:
        x: tensor of shape `(batch, height, width, channels)`.
        filters: int. Output channels.
        stride: int. Stride of the first conv.
        activation: str. The block's one non-linearity, e.g. `"hard_swish"` or `"relu6"`.
        name: str. Prefix of the block's layer names.
        mid: int or None. Middle width of the double block. Defaults to `None` (single block).
        expansion: int or None. Linear expansion of each `CollapsibleConv2D`; `None` trains a
            plain 3x3 conv. Defaults to `None`.

    Returns:
        The block's output tensor with `filters` channels.
    """
    inputs = x
    widths = (mid, filters) if mid else (filters,)
    for i, width in enumerate(widths, start=1):
        suffix = str(i) if mid else ""
        x = _bn(f"{name}_bn{suffix}")(x)
        x = layers.Activation(activation, name=f"{name}_act{suffix}")(x)
        x = CollapsibleConv2D(
            width,
            3,
            strides=stride if i == 1 else 1,
            expansion=expansion,
            kernel_initializer=CONV_INIT,
            kernel_regularizer=_l2(),
            name=f"{name}_conv{suffix}",
        )(x)
    x = _bn(f"{name}_out_bn")(x)
    if stride == 1 and inputs.shape[-1] == filters:
        x = layers.Add(name=f"{name}_add")([x, inputs])
    return x


def block(x, spec, activation, name, expansion=None):
    """Applies one entry of a RAN-e table: a CB or an IBN (or their double/pair forms).

    Args:
        x: tensor of shape `(batch, height, width, channels)`.
        spec: CB or IBN. The entry.
        activation: str. The non-linearity, e.g. `"hard_swish"` or `"relu6"`.
        name: str. Prefix of the block's layer names.
        expansion: int or None. Linear expansion of collapsible convs (CB only). Defaults to
            `None`.

    Returns:
        The block's output tensor with `spec.filters` channels.
    """
    if isinstance(spec, CB):
        return collapsed_block(
            x, spec.filters, spec.stride, activation, name, mid=spec.mid, expansion=expansion
        )
    conv = dict(initializer=CONV_INIT, regularizer=_l2())
    if spec.mid is None:
        return mbconv_block(
            x, spec.expand, spec.kernel, spec.stride, spec.filters, activation, 0.0, name, **conv
        )
    # The pair: Cin -> mid -> filters, both expansions expand x Cin wide, one residual over both.
    expanded = spec.expand * x.shape[-1]
    y = mbconv_block(
        x,
        spec.expand,
        spec.kernel,
        spec.stride,
        spec.mid,
        activation,
        0.0,
        f"{name}a",
        expanded_filters=expanded,
        residual=False,
        **conv,
    )
    y = mbconv_block(
        y,
        spec.expand,
        spec.kernel,
        1,
        spec.filters,
        activation,
        0.0,
        f"{name}b",
        expanded_filters=expanded,
        residual=False,
        **conv,
    )
    if spec.stride == 1 and x.shape[-1] == spec.filters:
        y = layers.Add(name=f"{name}_add")([y, x])
    return y


def ran_e(
    table,
    name,
    input_shape,
    num_classes,
    *,
    activation="hard_swish",
    stem_stride=2,
    stem_filters=STEM_FILTERS,
    head_filters=HEAD_FILTERS,
    head_kernel=HEAD_KERNEL,
    expansion=None,
    dropout=DROPOUT,
):
    """Builds a RAN-e network from `table` (stacks of CB/IBN).

    Stem conv (no BN or activation) -> the stacks, blocks named `stage{stack}_block{j}` ->
    1x1 conv, BN, act, depthwise conv, BN, act -> global pool -> dropout -> Dense.

    Args:
        table: tuple of tuples of CB/IBN. One tuple per stack.
        name: str. The model name.
        input_shape: tuple of 3 ints. `(height, width, channels)` of raw [0, 255] pixels.
        num_classes: int. Number of classes.
        activation: str. The non-linearity. Defaults to `"hard_swish"`.
        stem_stride: int. Stride of the 3x3 stem conv. Defaults to `2`.
        stem_filters: int. Stem output channels. Defaults to `16`.
        head_filters: int. Channels of the head's 1x1 conv. Defaults to `1344`.
        head_kernel: int. Kernel of the head's depthwise conv. Defaults to `7` (the 7x7 map of a
            224x224 input).
        expansion: int or None. `None` trains each collapsible conv as one 3x3 conv (the
            released code), t its linear expansion to t*max(Cin, Cout). Defaults to `None`.
        dropout: float. Dropout rate before the classifier. Defaults to `0.2`.

    Returns:
        A functional `keras.Model` returning logits of shape `(batch, num_classes)`.
    """
    inputs = keras.Input(input_shape, name="image")  # raw pixels in [0, 255]
    x = normalize_pixels(inputs)
    x = layers.Conv2D(
        stem_filters,
        3,
        strides=stem_stride,
        padding="same",
        use_bias=False,
        kernel_initializer=CONV_INIT,
        kernel_regularizer=_l2(),
        name="stem_conv",
    )(x)
    for stack, specs in enumerate(table, start=1):
        for j, spec in enumerate(specs, start=1):
            x = block(x, spec, activation, f"stage{stack}_block{j}", expansion)
    x = layers.Conv2D(
        head_filters,
        1,
        use_bias=False,
        kernel_initializer=CONV_INIT,
        kernel_regularizer=_l2(),
        name="head_conv",
    )(x)
    x = layers.Activation(activation, name="head_act")(_bn("head_bn")(x))
    x = layers.DepthwiseConv2D(
        head_kernel,
        padding="same",
        use_bias=False,
        depthwise_initializer=CONV_INIT,
        depthwise_regularizer=_l2(),
        name="head_dwconv",
    )(x)
    x = layers.Activation(activation, name="head_dw_act")(_bn("head_dw_bn")(x))
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    x = layers.Dropout(dropout, name="head_dropout")(x)
    outputs = layers.Dense(
        num_classes,
        kernel_initializer=DENSE_INIT,
        kernel_regularizer=_l2(),
        bias_regularizer=_l2(),
        name="logits",
    )(x)
    return keras.Model(inputs, outputs, name=name)


RAN_E = dict(
    family="rans",
    paper="Bhardwaj et al., 2022 (RAN-e, arXiv 2208.08562)",
    input_shape=(224, 224, 3),
    num_classes=1000,
    recipe="ran_e",
    deploy="ethos-u55-128",
    min_input_size=32,
)


@register("ran_e_gt", **RAN_E)
def ran_e_gt(input_shape=(224, 224, 3), num_classes=1000, expansion=None):
    """RAN-e GT ("Ground Truth"), h-swish.

    The released GT network (paper Fig. 1 and the official release): 4.5M parameters and 434M
    MACs at 224x224.

    Reference:
        - [Bhardwaj et al., Restructurable Activation Networks, 2022](
            https://arxiv.org/abs/2208.08562)

    Args:
        input_shape: tuple of 3 ints. `(height, width, channels)` of raw [0, 255] pixels.
            Defaults to `(224, 224, 3)`.
        num_classes: int. Number of classes. Defaults to `1000`.
        expansion: int or None. `None` trains each collapsible conv as one 3x3 conv (the
            released code); an int t trains its linear expansion to t*max(Cin, Cout), collapsed
            into one 3x3 conv at every step and at export. Defaults to `None`.

    Returns:
        A functional `keras.Model` returning logits of shape `(batch, num_classes)`.
    """
    return ran_e(RAN_E_GT, "ran_e_gt", input_shape, num_classes, expansion=expansion)


@register("ran_e_c", **RAN_E)
def ran_e_c(input_shape=(224, 224, 3), num_classes=1000, expansion=None):
    """RAN-e C ("SubNetwork-C"), h-swish.

    The released C network (paper Fig. 1 and the official release): 4.7M parameters and 488M
    MACs at 224x224.

    Reference:
        - [Bhardwaj et al., Restructurable Activation Networks, 2022](
            https://arxiv.org/abs/2208.08562)

    Args:
        input_shape: tuple of 3 ints. `(height, width, channels)` of raw [0, 255] pixels.
            Defaults to `(224, 224, 3)`.
        num_classes: int. Number of classes. Defaults to `1000`.
        expansion: int or None. `None` trains each collapsible conv as one 3x3 conv (the
            released code); an int t trains its linear expansion to t*max(Cin, Cout), collapsed
            into one 3x3 conv at every step and at export. Defaults to `None`.

    Returns:
        A functional `keras.Model` returning logits of shape `(batch, num_classes)`.
    """
    return ran_e(RAN_E_C, "ran_e_c", input_shape, num_classes, expansion=expansion)


@register("ran_e_gt_relu6", **RAN_E)
def ran_e_gt_relu6(input_shape=(224, 224, 3), num_classes=1000, expansion=None):
    """RAN-e GT with ReLU6 in place of h-swish.

    The GT network of paper Fig. 1; ReLU6 runs on Ethos-U without a lookup table.

    Reference:
        - [Bhardwaj et al., Restructurable Activation Networks, 2022](
            https://arxiv.org/abs/2208.08562)

    Args:
        input_shape: tuple of 3 ints. `(height, width, channels)` of raw [0, 255] pixels.
            Defaults to `(224, 224, 3)`.
        num_classes: int. Number of classes. Defaults to `1000`.
        expansion: int or None. `None` trains each collapsible conv as one 3x3 conv (the
            released code); an int t trains its linear expansion to t*max(Cin, Cout), collapsed
            into one 3x3 conv at every step and at export. Defaults to `None`.

    Returns:
        A functional `keras.Model` returning logits of shape `(batch, num_classes)`.
    """
    return ran_e(
        RAN_E_GT,
        "ran_e_gt_relu6",
        input_shape,
        num_classes,
        activation="relu6",
        expansion=expansion,
    )


@register("ran_e_c_relu6", **RAN_E)
def ran_e_c_relu6(input_shape=(224, 224, 3), num_classes=1000, expansion=None):
    """RAN-e C with ReLU6 in place of h-swish.

    The C network of paper Fig. 1; ReLU6 runs on Ethos-U without a lookup table.

    Reference:
        - [Bhardwaj et al., Restructurable Activation Networks, 2022](
            https://arxiv.org/abs/2208.08562)

    Args:
        input_shape: tuple of 3 ints. `(height, width, channels)` of raw [0, 255] pixels.
            Defaults to `(224, 224, 3)`.
        num_classes: int. Number of classes. Defaults to `1000`.
        expansion: int or None. `None` trains each collapsible conv as one 3x3 conv (the
            released code); an int t trains its linear expansion to t*max(Cin, Cout), collapsed
            into one 3x3 conv at every step and at export. Defaults to `None`.

    Returns:
        A functional `keras.Model` returning logits of shape `(batch, num_classes)`.
    """
    return ran_e(
        RAN_E_C, "ran_e_c_relu6", input_shape, num_classes, activation="relu6", expansion=expansion
    )


@register(
    "ran_e_gt_32", **{**RAN_E, "input_shape": (32, 32, 3), "num_classes": 10, "min_input_size": 8}
)
def ran_e_gt_32(input_shape=(32, 32, 3), num_classes=10, expansion=None):
    """RAN-e GT scaled to 32x32 inputs (Fashion-MNIST, CIFAR).

    The GT blocks of paper Fig. 1 at half width, the stem and stack 7 at stride 1 (total
    stride 8, a 4x4 final map) and a 4x4 depthwise head.

    Reference:
        - [Bhardwaj et al., Restructurable Activation Networks, 2022](
            https://arxiv.org/abs/2208.08562)

    Args:
        input_shape: tuple of 3 ints. `(height, width, channels)` of raw [0, 255] pixels.
            Defaults to `(32, 32, 3)`.
        num_classes: int. Number of classes. Defaults to `10`.
        expansion: int or None. `None` trains each collapsible conv as one 3x3 conv (the
            released code); an int t trains its linear expansion to t*max(Cin, Cout), collapsed
            into one 3x3 conv at every step and at export. Defaults to `None`.

    Returns:
        A functional `keras.Model` returning logits of shape `(batch, num_classes)`.
    """
    return ran_e(
        RAN_E_GT_32,
        "ran_e_gt_32",
        input_shape,
        num_classes,
        stem_stride=1,
        stem_filters=STEM_FILTERS // 2,
        head_filters=HEAD_FILTERS // 2,
        head_kernel=4,
        expansion=expansion,
    )


def lite0_search_space(
    collapsed=(),
    stage_filters=None,
    input_shape=(224, 224, 3),
    num_classes=1000,
    activation="hard_swish",
    name="lite0_search",
):
    """The RAN-e search space around EfficientNet-Lite0 (arXiv 2208.08562 §3, "replace
    inefficient blocks with hardware-aware blocks"): Lite0's skeleton with the blocks named in
    `collapsed` (stage{i}_block{j}) turned into collapsible blocks and each stage's width taken
    from `stage_filters` (default: Lite0's).

    Args:
        collapsed: collection of str. Block names (`stage{i}_block{j}`) to make collapsible.
            Defaults to none.
        stage_filters: sequence of ints or None. One output width per Lite0 stage. Defaults to
            `None` (Lite0's widths).
        input_shape: tuple of 3 ints. `(height, width, channels)`. Defaults to `(224, 224, 3)`.
        num_classes: int. Number of classes. Defaults to `1000`.
        activation: str. The non-linearity. Defaults to `"hard_swish"`.
        name: str. The model name. Defaults to `"lite0_search"`.

    Returns:
        A functional `keras.Model` (no drop-connect).
    """
    from effkeras.models import efficientnet_lite as lite

    stages = [
        (*row[:4], filters, row[5])
        for row, filters in zip(
            lite.LITE0_STAGES, stage_filters or [row[4] for row in lite.LITE0_STAGES]
        )
    ]

    def search_block(x, expand, kernel, stride, filters, activation, drop_rate, name):
        if name in collapsed:
            return collapsed_block(x, filters, stride, activation, name)
        return mbconv_block(x, expand, kernel, stride, filters, activation, drop_rate, name)

    return lite.efficientnet_lite(
        stages,
        activation,
        name,
        input_shape,
        num_classes,
        drop_connect_rate=0.0,
        block=search_block,
    )
