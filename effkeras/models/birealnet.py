"""Bi-Real Net 18 (Liu et al., "Bi-Real Net: Enhancing the Performance of 1-bit CNNs with Improved
Representational Capability and Advanced Training Algorithm", ECCV 2018, arXiv 1808.00278), as
Larq Zoo 2.4 builds it (`larq_zoo.literature.BiRealNet`): same layers, same order, same
parameter count, so Larq Zoo's weight file loads (effkeras.interop.larq_zoo).

    float stem: 7x7/2 conv -> BN -> 3x3/2 max-pool
    16 blocks (4 per stage, widths 64, 128, 256, 512), each with its own shortcut
      (the paper's Bi-Real block):
      out = BN(bconv3x3(sign(x))) + shortcut(x)
      (binary conv: ApproxSign input, MagnitudeAwareSign kernel, WeightClip, zero padding)
    a stage's first block halves the map (stride 2) and doubles the width; its shortcut is
      2x2/2 average pool -> float 1x1 conv -> BN
    head: average pool over the whole map -> Dense logits

ApproxSign is the paper's piecewise-polynomial approximation of the sign's derivative,
MagnitudeAwareSign its magnitude-aware weight binarizer, sign(w)·mean|w| per output channel.
There is no activation other than the signs. Differences from Larq Zoo, none with weights: the
model takes raw [0, 255] pixels and normalises them with ImageNet's mean and std itself (Larq
Zoo's `preprocess_input` does it outside), and it outputs logits (Larq Zoo ends in a softmax).

The binary convs pad with zeros, as Larq Zoo trains them: LCE converts that ("same-zero") on ARM
only, and only while every binary conv's map is at least its 3x3 kernel (input >= 96 pixels).
"""

import keras
from keras import layers

from effkeras.constraints import WeightClip
from effkeras.layers import QuantConv2D, normalize_pixels
from effkeras.models.common import batch_norm, each_block, stages, whole_map_logits
from effkeras.models.registry import register
from effkeras.quantizers import ApproxSign, MagnitudeAwareSign

PAPER = "Bi-Real Net, Liu et al., ECCV 2018 (arXiv 1808.00278); Larq Zoo's literature.BiRealNet"

# The 18-layer net: the stem conv, 16 binary 3x3 convs in 4 stages, the classifier.
FILTERS = 64  # the first stage's width; each later stage doubles it
BLOCKS = (4, 4, 4, 4)

# model.count_params() and trainable parameters at 224x224x3 with 1000 classes, measured on
# Larq Zoo 2.4's build (tests/test_binary_peers.py checks both against Larq Zoo).
PARAMS = {"birealnet18": 11_699_112}
TRAINABLE_PARAMS = {"birealnet18": 11_689_512}

STEM_KERNEL = 7
MOMENTUM = 0.8  # every BN (Larq Zoo); ε keeps Keras' 1e-3


def batch_norm_08(name):
    """Returns Larq Zoo's BatchNormalization layer: momentum 0.8, epsilon 1e-3, named `name`."""
    return batch_norm(name, momentum=MOMENTUM, epsilon=1e-3)


def residual_block(x, filters, stride, name):
    """Applies a Bi-Real block: BN(binary 3x3 conv(x)) + x.

    Where the block downsamples or widens, the shortcut is BN(1x1 conv(avgpool(x))).

    Args:
        x: tensor of shape `(batch, height, width, channels)`.
        filters: int. Output channels.
        stride: int. Stride of the binary conv and the shortcut pool.
        name: str. Prefix of the block's layer names.

    Returns:
        The block's output tensor with `filters` channels.
    """
    shortcut = x
    if stride != 1 or x.shape[-1] != filters:
        shortcut = layers.AveragePooling2D(stride, padding="same", name=f"{name}_shortcut_pool")(x)
        shortcut = layers.Conv2D(
            filters,
            1,
            use_bias=False,
            kernel_initializer="glorot_normal",
            name=f"{name}_shortcut_conv",
        )(shortcut)
        shortcut = batch_norm_08(f"{name}_shortcut_bn")(shortcut)
    y = QuantConv2D(
        filters,
        3,
        strides=stride,
        padding="same",
        input_quantizer=ApproxSign(),
        kernel_quantizer=MagnitudeAwareSign(),
        kernel_constraint=WeightClip(),
        kernel_initializer="glorot_normal",
        use_bias=False,
        name=f"{name}_conv",
    )(x)
    y = batch_norm_08(f"{name}_bn")(y)
    return layers.Add(name=f"{name}_add")([y, shortcut])


@register(
    "birealnet18",
    aliases=("birealnet",),
    family="peer",
    paper=PAPER,
    input_shape=(224, 224, 3),
    num_classes=1000,
    recipe="birealnet",
    deploy="arm",
    min_input_size=32,
    small=dict(filters=16),
)
def birealnet18(input_shape=(224, 224, 3), num_classes=1000, filters=FILTERS):
    """Bi-Real Net 18, as Larq Zoo 2.4's `literature.BiRealNet` builds it.

    Larq Zoo's weight file loads into it (effkeras.interop.larq_zoo). It takes raw [0, 255]
    pixels and outputs logits.

    Reference:
        - [Liu et al., Bi-Real Net: Enhancing the Performance of 1-bit CNNs with Improved
            Representational Capability and Advanced Training Algorithm, ECCV 2018](
            https://arxiv.org/abs/1808.00278)

    Args:
        input_shape: tuple of 3 ints. `(height, width, channels)` of raw [0, 255] pixels. LCE
            converts the zero-padded binary convs on ARM only with inputs >= 96 pixels.
            Defaults to `(224, 224, 3)`.
        num_classes: int. Number of classes. Defaults to `1000`.
        filters: int. The first stage's width (Larq Zoo's field of that name); each later stage
            doubles it. Defaults to `64`.

    Returns:
        A functional `keras.Model` returning logits of shape `(batch, num_classes)`.
    """
    inputs = keras.Input(input_shape, name="image")
    x = layers.Conv2D(
        filters,
        STEM_KERNEL,
        strides=2,
        padding="same",
        use_bias=False,
        kernel_initializer="glorot_normal",
        name="stem_conv",
    )(normalize_pixels(inputs))
    x = batch_norm_08("stem_bn")(x)
    x = layers.MaxPooling2D(3, strides=2, padding="same", name="stem_pool")(x)
    table = stages(filters=tuple(filters * 2**i for i in range(len(BLOCKS))), blocks=BLOCKS)
    for spec in each_block(table):
        x = residual_block(x, spec.filters, spec.stride, spec.name)
    return keras.Model(inputs, whole_map_logits(x, num_classes), name="birealnet18")
