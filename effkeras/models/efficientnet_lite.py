"""EfficientNet-Lite0 (Tan & Le, ICML 2019, arXiv 1905.11946), the integer-friendly variant.

The baseline network is EfficientNet-B0 (Table 1): a 3x3 stem, seven stages of MBConv blocks
(inverted bottlenecks with depthwise convolutions), a 1x1 head of 1280 channels, global pooling and
a classifier. The "Lite" variant, made for int8 accelerators, changes three things: ReLU6 instead
of swish, no squeeze-and-excitation, and a stem and head whose widths are not scaled with the
width coefficient. Lite0 uses width and depth coefficients 1.0 and 224x224 input (Table 1's B0).
About 4.7M parameters and 385M multiply-adds.

`efficientnet_lite0_hswish` replaces every ReLU6 with hard-swish (Howard et al., "Searching for
MobileNetV3", arXiv 1905.02244, §5.2), a piecewise-linear swish that int8 targets run.
"""

import keras
from keras import layers

from effkeras.layers import BatchNormalization
from effkeras.models.registry import register

# Table 1 (B0) stages: (expand ratio, kernel, stride, in filters, out filters, repeats).
LITE0_STAGES = [
    (1, 3, 1, 32, 16, 1),
    (6, 3, 2, 16, 24, 2),
    (6, 5, 2, 24, 40, 2),
    (6, 3, 2, 40, 80, 3),
    (6, 5, 1, 80, 112, 3),
    (6, 5, 2, 112, 192, 4),
    (6, 3, 1, 192, 320, 1),
]
STEM_FILTERS = 32  # Table 1, stage 1 (not scaled in Lite)
HEAD_FILTERS = 1280  # Table 1, stage 9 (not scaled in Lite)
DROPOUT = 0.2  # §5.2: dropout before the classifier, 0.2 for B0
DROP_CONNECT = 0.2  # §5.2: stochastic depth, survival probability 0.8 at the last block
BN_MOMENTUM = 0.99  # §5.2: BN momentum 0.99
BN_EPSILON = 1e-3
# Inputs are (x - 127) / 128, the Lite models' int8-friendly normalisation.
PIXEL_MEAN, PIXEL_STD = 127.0, 128.0


def _bn(name):
    return BatchNormalization(momentum=BN_MOMENTUM, epsilon=BN_EPSILON, name=name)


def mbconv_block(
    x,
    expand_ratio,
    kernel,
    stride,
    filters,
    activation,
    drop_rate,
    name,
    *,
    expanded_filters=None,
    residual=True,
    initializer="glorot_uniform",
    regularizer=None,
):
    """Applies MBConv without squeeze-excite.

    1x1 expand, kxk depthwise, 1x1 linear project, and the identity residual when the shapes
    allow it (and `residual`).

    Args:
        x: tensor of shape `(batch, height, width, channels)`.
        expand_ratio: int. Expansion times the input channels; 1 skips the expand conv.
        kernel: int. Depthwise kernel size.
        stride: int. Depthwise stride.
        filters: int. Output channels.
        activation: str. The non-linearity, e.g. `"relu6"` or `"hard_swish"`.
        drop_rate: float. Stochastic depth rate of the residual branch (0: none).
        name: str. Prefix of the block's layer names.
        expanded_filters: int or None. The expansion width. Defaults to `None`: the input's
            channels times `expand_ratio`.
        residual: bool. Whether to add the identity residual when the shapes allow it.
            Defaults to `True`.
        initializer: initializer. Of the conv kernels. Defaults to `"glorot_uniform"`.
        regularizer: keras regularizer or None. Of the conv kernels. Defaults to `None`.

    Returns:
        The block's output tensor with `filters` channels.
    """
    inputs = x
    in_filters = x.shape[-1]
    conv = dict(
        padding="same",
        use_bias=False,
        kernel_initializer=initializer,
        kernel_regularizer=regularizer,
    )
    if expand_ratio != 1:
        x = layers.Conv2D(
            expanded_filters or in_filters * expand_ratio, 1, **conv, name=f"{name}_expand_conv"
        )(x)
        x = _bn(f"{name}_expand_bn")(x)
        x = layers.Activation(activation, name=f"{name}_expand_act")(x)
    x = layers.DepthwiseConv2D(
        kernel,
        strides=stride,
        padding="same",
        use_bias=False,
        depthwise_initializer=initializer,
        depthwise_regularizer=regularizer,
        name=f"{name}_dwconv",
    )(x)
    x = _bn(f"{name}_dw_bn")(x)
    x = layers.Activation(activation, name=f"{name}_dw_act")(x)
    x = layers.Conv2D(filters, 1, **conv, name=f"{name}_project_conv")(x)
    x = _bn(f"{name}_project_bn")(x)
    if residual and stride == 1 and in_filters == filters:
        if drop_rate > 0:  # stochastic depth: drop the whole residual branch per sample
            x = layers.Dropout(drop_rate, noise_shape=(None, 1, 1, 1), name=f"{name}_drop")(x)
        x = layers.Add(name=f"{name}_add")([x, inputs])
    return x


def efficientnet_lite(
    stages,
    activation,
    name,
    input_shape,
    num_classes,
    dropout=DROPOUT,
    drop_connect_rate=DROP_CONNECT,
    block=mbconv_block,
):
    """Builds the Lite network of `stages`.

    Args:
        stages: sequence of tuples `(expand ratio, kernel, stride, in filters, out filters,
            repeats)`, as `LITE0_STAGES`.
        activation: str. The non-linearity, e.g. `"relu6"`.
        name: str. The model name.
        input_shape: tuple of 3 ints. `(height, width, channels)` of raw [0, 255] pixels,
            rescaled to (x - 127) / 128.
        num_classes: int. Number of classes.
        dropout: float. Dropout before the classifier. Defaults to `0.2`.
        drop_connect_rate: float. Stochastic depth, growing linearly with depth. Defaults to
            `0.2`.
        block: callable. Builds each block, with `mbconv_block`'s signature, so a search can
            swap blocks (tools.search_ran_e). Defaults to `mbconv_block`.

    Returns:
        A functional `keras.Model` returning logits of shape `(batch, num_classes)`.
    """
    inputs = keras.Input(input_shape, name="image")  # raw pixels in [0, 255]
    x = layers.Rescaling(1 / PIXEL_STD, offset=-PIXEL_MEAN / PIXEL_STD, name="rescale")(inputs)
    x = layers.Conv2D(STEM_FILTERS, 3, strides=2, padding="same", use_bias=False, name="stem_conv")(
        x
    )
    x = _bn("stem_bn")(x)
    x = layers.Activation(activation, name="stem_act")(x)
    total_blocks = sum(stage[-1] for stage in stages)
    block_index = 0
    for stage, (expand, kernel, stride, _, filters, repeats) in enumerate(stages, start=1):
        for repeat in range(repeats):
            # Stochastic depth grows linearly with depth (§5.2, as in the reference builder).
            drop_rate = drop_connect_rate * block_index / total_blocks
            x = block(
                x,
                expand,
                kernel,
                stride if repeat == 0 else 1,
                filters,
                activation,
                drop_rate,
                name=f"stage{stage}_block{repeat + 1}",
            )
            block_index += 1
    x = layers.Conv2D(HEAD_FILTERS, 1, padding="same", use_bias=False, name="head_conv")(x)
    x = _bn("head_bn")(x)
    x = layers.Activation(activation, name="head_act")(x)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    x = layers.Dropout(dropout, name="head_dropout")(x)
    outputs = layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name=name)


LITE0 = dict(
    family="peer",
    paper="Tan & Le, ICML 2019 (EfficientNet-Lite0, arXiv 1905.11946)",
    input_shape=(224, 224, 3),
    num_classes=1000,
    recipe="efficientnet_lite",
    deploy="ethos-u55-128",
    min_input_size=32,
)


@register("efficientnet_lite0", **LITE0)
def efficientnet_lite0(input_shape=(224, 224, 3), num_classes=1000):
    """EfficientNet-Lite0: B0's stages (Table 1) with ReLU6 and no squeeze-excite.

    About 4.7M parameters and 385M multiply-adds at 224x224.

    Reference:
        - [Tan & Le, EfficientNet: Rethinking Model Scaling for Convolutional Neural Networks,
            ICML 2019](https://arxiv.org/abs/1905.11946)

    Args:
        input_shape: tuple of 3 ints. `(height, width, channels)` of raw [0, 255] pixels.
            Defaults to `(224, 224, 3)`.
        num_classes: int. Number of classes. Defaults to `1000`.

    Returns:
        A functional `keras.Model` returning logits of shape `(batch, num_classes)`.
    """
    return efficientnet_lite(LITE0_STAGES, "relu6", "efficientnet_lite0", input_shape, num_classes)


@register("efficientnet_lite0_hswish", **LITE0)
def efficientnet_lite0_hswish(input_shape=(224, 224, 3), num_classes=1000):
    """EfficientNet-Lite0 (Table 1's B0) with every ReLU6 replaced by hard-swish.

    Reference:
        - [Tan & Le, EfficientNet: Rethinking Model Scaling for Convolutional Neural Networks,
            ICML 2019](https://arxiv.org/abs/1905.11946)
        - [Howard et al., Searching for MobileNetV3](https://arxiv.org/abs/1905.02244), §5.2

    Args:
        input_shape: tuple of 3 ints. `(height, width, channels)` of raw [0, 255] pixels.
            Defaults to `(224, 224, 3)`.
        num_classes: int. Number of classes. Defaults to `1000`.

    Returns:
        A functional `keras.Model` returning logits of shape `(batch, num_classes)`.
    """
    return efficientnet_lite(
        LITE0_STAGES, "hard_swish", "efficientnet_lite0_hswish", input_shape, num_classes
    )
