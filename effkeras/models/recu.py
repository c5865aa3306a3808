"""ReCU binary networks (Xu et al., ICCV 2021, arXiv 2103.12369), as the official code
(github.com/z-hXu/ReCU) builds them: the paper's Tables 4-5 models.

Float layers only where the code keeps them: the stem conv, the 1x1 downsample convs and the
classifier. Every other conv is a ReCUConv2D followed by BatchNorm (α and BN fold into LCE's
bconv multiplier at conversion). BatchNorm has PyTorch's settings (`common.batch_norm`).
"""

import dataclasses

import keras
from keras import layers

from effkeras.layers import LearnableBias, ReCUConv2D, normalize_pixels, option_a_shortcut
from effkeras.models.common import batch_norm, coupled_l2, each_block, stages
from effkeras.models.registry import register

PAPER = "ReCU, Xu et al., ICCV 2021"
# The official code's CIFAR-100 normalisation (CIFAR-10 uses ImageNet's mean and std there).
CIFAR100_MEAN, CIFAR100_STD = (0.507, 0.487, 0.441), (0.267, 0.256, 0.276)

WIDTHS = (64, 128, 256, 512)
# CIFAR resnet20_1w1a: Bi-Real double skip, 18 binary convs.
RESNET20_CIFAR = stages(filters=(16, 32, 64), blocks=(3, 3, 3))
# CIFAR resnet18_1w1a: single skip per block in the code (the paper's §5.1 says double), 16.
RESNET18_CIFAR = stages(filters=WIDTHS, blocks=(2, 2, 2, 2))
# ImageNet one-stage resnet18/34_1w1a: double skip, 16 / 32 binary convs.
RESNET18_IMAGENET = stages(filters=WIDTHS, blocks=(2, 2, 2, 2))
RESNET34_IMAGENET = stages(filters=WIDTHS, blocks=(3, 4, 6, 3))
# ImageNet two-stage, ReActNet-like (arXiv 2003.03488): one conv per block, the same 16 / 32.
REACTNET18 = stages(filters=WIDTHS, blocks=(4, 4, 4, 4))
REACTNET34 = stages(filters=WIDTHS, blocks=(6, 8, 12, 6))


@dataclasses.dataclass(frozen=True)
class VggConv:
    """One conv of the VGG-small table.

    Attributes:
        filters: int. Output channels of the conv.
        max_pool: bool. Whether a 2x2 max-pool follows the conv (before its BN, as in the code).
    """

    filters: int
    max_pool: bool  # a 2x2 max-pool after the conv (before its BN, as in the code)


# CIFAR vgg_small_1w1a: conv0 is float, the other five binary.
VGG_SMALL = (
    VggConv(128, False),
    VggConv(128, True),
    VggConv(256, False),
    VggConv(256, True),
    VggConv(512, False),
    VggConv(512, True),
)


def hardtanh(name):
    """Returns a `hard_tanh` Activation layer named `name` (htanh in the block formulas)."""
    return layers.Activation("hard_tanh", name=name)


def float_conv(filters, kernel, stride, name, regularizer=None):
    """Returns a float, bias-free, "same"-padded, He-normal Conv2D layer.

    Args:
        filters: int. Output channels.
        kernel: int. Kernel size.
        stride: int. Stride.
        name: str. Layer name.
        regularizer: keras regularizer or None. Kernel regularizer. Defaults to `None`.

    Returns:
        A `keras.layers.Conv2D`.
    """
    return layers.Conv2D(
        filters,
        kernel,
        strides=stride,
        padding="same",
        use_bias=False,
        kernel_initializer="he_normal",
        kernel_regularizer=regularizer,
        name=name,
    )


def classifier(x, num_classes, regularizer, batch_norm_first=True):
    """Applies the head: global average pool, optional BatchNorm, then Dense logits.

    Args:
        x: tensor of shape `(batch, height, width, channels)`.
        num_classes: int. Number of logits.
        regularizer: keras regularizer or None. Applied to the BN and Dense weights.
        batch_norm_first: bool. Whether a BatchNorm (`pool_bn`) follows the pool. Defaults to
            `True`.

    Returns:
        The logits tensor, shape `(batch, num_classes)`.
    """
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    if batch_norm_first:
        x = batch_norm("pool_bn", regularizer=regularizer)(x)
    return layers.Dense(
        num_classes, kernel_regularizer=regularizer, bias_regularizer=regularizer, name="logits"
    )(x)


def cifar_input(input_shape, num_classes):
    """Returns the `image` input and its normalised pixels, as the official CIFAR code.

    Args:
        input_shape: tuple of 3 ints. `(height, width, channels)` of raw [0, 255] pixels.
        num_classes: int. 100 selects CIFAR-100's mean and std; anything else ImageNet's (the
            code's CIFAR-10 normalisation).

    Returns:
        A tuple `(inputs, x)`: the `keras.Input` and the normalised tensor.
    """
    inputs = keras.Input(input_shape, name="image")
    if num_classes == 100:
        return inputs, normalize_pixels(inputs, CIFAR100_MEAN, CIFAR100_STD)
    return inputs, normalize_pixels(inputs)  # CIFAR-10 uses ImageNet's mean/std in the code


# --- CIFAR (the code's cifar/): weight decay 5e-4 on every parameter ----------------------------


def cifar_double_skip_block(x, filters, stride, name, reg):
    """Applies the CIFAR double-skip (Bi-Real) block.

    u = htanh(BN(bconv_s(x)) + SC(x)); out = htanh(BN(bconv(u)) + u), where SC is the
    option-A shortcut with average pooling.

    Args:
        x: tensor of shape `(batch, height, width, channels)`.
        filters: int. Output channels.
        stride: int. Stride of the first conv and the shortcut.
        name: str. Prefix of the block's layer names.
        reg: keras regularizer or None. Applied to the binary kernels and BN weights.

    Returns:
        The block's output tensor with `filters` channels.
    """
    shortcut = option_a_shortcut(x, filters, stride, f"{name}_shortcut", pool="average")
    u = ReCUConv2D(filters, 3, stride, kernel_regularizer=reg, name=f"{name}_conv1")(x)
    u = layers.Add(name=f"{name}_add1")([batch_norm(f"{name}_bn1", regularizer=reg)(u), shortcut])
    u = hardtanh(f"{name}_act1")(u)
    v = ReCUConv2D(filters, 3, 1, kernel_regularizer=reg, name=f"{name}_conv2")(u)
    v = layers.Add(name=f"{name}_add2")([batch_norm(f"{name}_bn2", regularizer=reg)(v), u])
    return hardtanh(f"{name}_act2")(v)


def cifar_single_skip_block(x, filters, stride, name, reg):
    """Applies the CIFAR single-skip block (the code's ResNet-18).

    u = htanh(BN(bconv_s(x))); out = htanh(BN(bconv(u)) + SC(x)), where SC is the option-A
    shortcut with average pooling.

    Args:
        x: tensor of shape `(batch, height, width, channels)`.
        filters: int. Output channels.
        stride: int. Stride of the first conv and the shortcut.
        name: str. Prefix of the block's layer names.
        reg: keras regularizer or None. Applied to the binary kernels and BN weights.

    Returns:
        The block's output tensor with `filters` channels.
    """
    shortcut = option_a_shortcut(x, filters, stride, f"{name}_shortcut", pool="average")
    u = ReCUConv2D(filters, 3, stride, kernel_regularizer=reg, name=f"{name}_conv1")(x)
    u = hardtanh(f"{name}_act1")(batch_norm(f"{name}_bn1", regularizer=reg)(u))
    v = ReCUConv2D(filters, 3, 1, kernel_regularizer=reg, name=f"{name}_conv2")(u)
    v = layers.Add(name=f"{name}_add")([batch_norm(f"{name}_bn2", regularizer=reg)(v), shortcut])
    return hardtanh(f"{name}_act2")(v)


def cifar_resnet(
    stage_table, block, stem_filters, stem_activation, name, input_shape, num_classes, weight_decay
):
    """Builds a CIFAR ReCU ResNet: float 3x3 stem, the stage loop of `block`, BN-Dense head.

    Args:
        stage_table: sequence of `Stage`. The architecture table.
        block: callable. `block(x, filters, stride, name, reg)`, e.g. `cifar_double_skip_block`.
        stem_filters: int. Output channels of the float stem conv.
        stem_activation: bool. Whether a hard tanh follows the stem BN.
        name: str. The model name.
        input_shape: tuple of 3 ints. `(height, width, channels)`.
        num_classes: int. Number of classes (100 selects CIFAR-100's normalisation).
        weight_decay: float. PyTorch-style weight decay on every parameter.

    Returns:
        A functional `keras.Model`.
    """
    reg = coupled_l2(weight_decay)
    inputs, x = cifar_input(input_shape, num_classes)
    x = batch_norm("stem_bn", regularizer=reg)(float_conv(stem_filters, 3, 1, "stem_conv", reg)(x))
    if stem_activation:
        x = hardtanh("stem_act")(x)
    for spec in each_block(stage_table):
        x = block(x, spec.filters, spec.stride, spec.name, reg)
    return keras.Model(inputs, classifier(x, num_classes, reg), name=name)


CIFAR = dict(
    family="recu",
    paper=PAPER,
    input_shape=(32, 32, 3),
    num_classes=10,
    recipe="recu_cifar",
    deploy="arm",
)


@register("recu_resnet20", min_input_size=4, **CIFAR)
def recu_resnet20(input_shape=(32, 32, 3), num_classes=10, weight_decay=5e-4):
    """ReCU ResNet-20 for CIFAR (the code's resnet20_1w1a).

    Bi-Real double skip, 18 binary convs, widths 16-32-64; follows the CIFAR-10 ResNet-20 row
    of the paper's Tables 4-5.

    Reference:
        - [Xu et al., ReCU: Reviving the Dead Weights in Binary Neural Networks, ICCV 2021](
            https://arxiv.org/abs/2103.12369)

    Args:
        input_shape: tuple of 3 ints. `(height, width, channels)` of raw [0, 255] pixels.
            Defaults to `(32, 32, 3)`.
        num_classes: int. Number of classes; 100 selects the official code's CIFAR-100
            normalisation, any other count ImageNet's mean and std. Defaults to `10`.
        weight_decay: float. PyTorch-style (coupled) weight decay on every parameter, added as
            an L2 penalty of `weight_decay / 2`. Defaults to `5e-4`.

    Returns:
        A functional `keras.Model` returning logits of shape `(batch, num_classes)`.
    """
    return cifar_resnet(
        RESNET20_CIFAR,
        cifar_double_skip_block,
        16,
        True,
        "recu_resnet20",
        input_shape,
        num_classes,
        weight_decay,
    )


@register("recu_resnet18", min_input_size=8, **CIFAR)
def recu_resnet18(input_shape=(32, 32, 3), num_classes=10, weight_decay=5e-4):
    """ReCU ResNet-18 for CIFAR (the code's resnet18_1w1a).

    One skip per block as in the code (the paper's §5.1 says double), 16 binary convs, no
    activation after the stem BN; follows the CIFAR-10 ResNet-18 row of the paper's
    Tables 4-5.

    Reference:
        - [Xu et al., ReCU: Reviving the Dead Weights in Binary Neural Networks, ICCV 2021](
            https://arxiv.org/abs/2103.12369)

    Args:
        input_shape: tuple of 3 ints. `(height, width, channels)` of raw [0, 255] pixels.
            Defaults to `(32, 32, 3)`.
        num_classes: int. Number of classes; 100 selects the official code's CIFAR-100
            normalisation, any other count ImageNet's mean and std. Defaults to `10`.
        weight_decay: float. PyTorch-style (coupled) weight decay on every parameter, added as
            an L2 penalty of `weight_decay / 2`. Defaults to `5e-4`.

    Returns:
        A functional `keras.Model` returning logits of shape `(batch, num_classes)`.
    """
    # The code's CIFAR ResNet-18 has no activation after the stem BN.
    return cifar_resnet(
        RESNET18_CIFAR,
        cifar_single_skip_block,
        64,
        False,
        "recu_resnet18",
        input_shape,
        num_classes,
        weight_decay,
    )


@register("recu_vgg_small", min_input_size=8, **CIFAR)
def recu_vgg_small(input_shape=(32, 32, 3), num_classes=10, weight_decay=5e-4):
    """ReCU VGG-small for CIFAR (the code's vgg_small_1w1a).

    conv0 is float, the other five binary, then Flatten and Dense; follows the CIFAR-10
    VGG-small row of the paper's Tables 4-5.

    Reference:
        - [Xu et al., ReCU: Reviving the Dead Weights in Binary Neural Networks, ICCV 2021](
            https://arxiv.org/abs/2103.12369)

    Args:
        input_shape: tuple of 3 ints. `(height, width, channels)` of raw [0, 255] pixels.
            Defaults to `(32, 32, 3)`.
        num_classes: int. Number of classes; 100 selects the official code's CIFAR-100
            normalisation, any other count ImageNet's mean and std. Defaults to `10`.
        weight_decay: float. PyTorch-style (coupled) weight decay on every parameter, added as
            an L2 penalty of `weight_decay / 2`. Defaults to `5e-4`.

    Returns:
        A functional `keras.Model` returning logits of shape `(batch, num_classes)`.
    """
    reg = coupled_l2(weight_decay)
    inputs, x = cifar_input(input_shape, num_classes)
    for i, conv in enumerate(VGG_SMALL):
        if i == 0:
            x = float_conv(conv.filters, 3, 1, "conv0", reg)(x)
        else:
            x = ReCUConv2D(conv.filters, 3, 1, kernel_regularizer=reg, name=f"conv{i}")(x)
        if conv.max_pool:
            x = layers.MaxPooling2D(2, name=f"pool{i}")(x)
        x = hardtanh(f"act{i}")(batch_norm(f"bn{i}", regularizer=reg)(x))
    x = layers.Flatten(name="flatten")(x)
    outputs = layers.Dense(
        num_classes, kernel_regularizer=reg, bias_regularizer=reg, name="logits"
    )(x)
    return keras.Model(inputs, outputs, name="recu_vgg_small")


# --- ImageNet one-stage (the code's imagenet/): Bi-Real double skip, float 1x1 downsample -------


def imagenet_input(input_shape):
    """Returns the `image` input and its pixels normalised with ImageNet's mean and std.

    Args:
        input_shape: tuple of 3 ints. `(height, width, channels)` of raw [0, 255] pixels.

    Returns:
        A tuple `(inputs, x)`: the `keras.Input` and the normalised tensor.
    """
    inputs = keras.Input(input_shape, name="image")
    return inputs, normalize_pixels(inputs)


def imagenet_double_skip_block(x, filters, stride, name, reg):
    """Applies the ImageNet double-skip (Bi-Real) block.

    u = htanh(BN(bconv_s(x)) + D(x)); out = htanh(BN(bconv(u)) + u). BN γ starts at 1e-8. D is
    a float 1x1 conv and BN (without weight decay) when the stride or width changes, else the
    identity.

    Args:
        x: tensor of shape `(batch, height, width, channels)`.
        filters: int. Output channels.
        stride: int. Stride of the first conv and the downsample.
        name: str. Prefix of the block's layer names.
        reg: keras regularizer or None. Applied to the binary kernels only.

    Returns:
        The block's output tensor with `filters` channels.
    """
    shortcut = x
    # Float downsample, no weight decay: the code decays only parameters named "conv" or "fc".
    if stride > 1 or x.shape[-1] != filters:
        shortcut = float_conv(filters, 1, stride, f"{name}_downsample_conv")(x)
        shortcut = batch_norm(f"{name}_downsample_bn", gamma=1e-8)(shortcut)
    u = ReCUConv2D(filters, 3, stride, kernel_regularizer=reg, name=f"{name}_conv1")(x)
    u = layers.Add(name=f"{name}_add1")([batch_norm(f"{name}_bn1", gamma=1e-8)(u), shortcut])
    u = hardtanh(f"{name}_act1")(u)
    v = ReCUConv2D(filters, 3, 1, kernel_regularizer=reg, name=f"{name}_conv2")(u)
    v = layers.Add(name=f"{name}_add2")([batch_norm(f"{name}_bn2", gamma=1e-8)(v), u])
    return hardtanh(f"{name}_act2")(v)


def imagenet_resnet(stage_table, name, input_shape, num_classes, weight_decay):
    """Builds a one-stage ImageNet ReCU ResNet: float 7x7 stem and max-pool, double-skip blocks.

    Args:
        stage_table: sequence of `Stage`. The architecture table.
        name: str. The model name.
        input_shape: tuple of 3 ints. `(height, width, channels)`.
        num_classes: int. Number of classes.
        weight_decay: float. PyTorch-style weight decay on "conv"/"fc" parameters only.

    Returns:
        A functional `keras.Model`.
    """
    # Decay on "conv"/"fc" parameters only, as the code: binary kernels, α, stem conv, classifier.
    reg = coupled_l2(weight_decay)
    inputs, x = imagenet_input(input_shape)
    x = batch_norm("stem_bn", gamma=1e-8)(float_conv(64, 7, 2, "stem_conv", reg)(x))
    x = hardtanh("stem_act")(x)
    x = layers.MaxPooling2D(3, strides=2, padding="same", name="stem_pool")(x)
    for spec in each_block(stage_table):
        x = imagenet_double_skip_block(x, spec.filters, spec.stride, spec.name, reg)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    x = batch_norm("pool_bn")(x)
    outputs = layers.Dense(
        num_classes, kernel_regularizer=reg, bias_regularizer=reg, name="logits"
    )(x)
    return keras.Model(inputs, outputs, name=name)


IMAGENET = dict(
    family="recu",
    paper=PAPER,
    input_shape=(224, 224, 3),
    num_classes=1000,
    deploy="arm",
    min_input_size=32,
)


@register("recu_resnet18_imagenet", recipe="recu_imagenet", **IMAGENET)
def recu_resnet18_imagenet(input_shape=(224, 224, 3), num_classes=1000, weight_decay=1e-4):
    """ReCU ResNet-18 for ImageNet, one-stage (the code's imagenet/ resnet18_1w1a).

    Bi-Real double skip, float 1x1 downsample, 16 binary convs; follows the ImageNet ResNet-18
    row of the paper's Tables 4-5.

    Reference:
        - [Xu et al., ReCU: Reviving the Dead Weights in Binary Neural Networks, ICCV 2021](
            https://arxiv.org/abs/2103.12369)

    Args:
        input_shape: tuple of 3 ints. `(height, width, channels)` of raw [0, 255] pixels,
            normalised with ImageNet's mean and std. Defaults to `(224, 224, 3)`.
        num_classes: int. Number of classes. Defaults to `1000`.
        weight_decay: float. PyTorch-style (coupled) weight decay on the "conv" and "fc"
            parameters only (binary kernels, alpha, stem conv, classifier), added as an L2
            penalty of `weight_decay / 2`. Defaults to `1e-4`.

    Returns:
        A functional `keras.Model` returning logits of shape `(batch, num_classes)`.
    """
    return imagenet_resnet(
        RESNET18_IMAGENET, "recu_resnet18_imagenet", input_shape, num_classes, weight_decay
    )


@register("recu_resnet34_imagenet", recipe="recu_imagenet", **IMAGENET)
def recu_resnet34_imagenet(input_shape=(224, 224, 3), num_classes=1000, weight_decay=1e-4):
    """ReCU ResNet-34 for ImageNet, one-stage (the code's imagenet/ resnet34_1w1a).

    Bi-Real double skip, float 1x1 downsample, 32 binary convs; follows the ImageNet ResNet-34
    row of the paper's Tables 4-5.

    Reference:
        - [Xu et al., ReCU: Reviving the Dead Weights in Binary Neural Networks, ICCV 2021](
            https://arxiv.org/abs/2103.12369)

    Args:
        input_shape: tuple of 3 ints. `(height, width, channels)` of raw [0, 255] pixels,
            normalised with ImageNet's mean and std. Defaults to `(224, 224, 3)`.
        num_classes: int. Number of classes. Defaults to `1000`.
        weight_decay: float. PyTorch-style (coupled) weight decay on the "conv" and "fc"
            parameters only (binary kernels, alpha, stem conv, classifier), added as an L2
            penalty of `weight_decay / 2`. Defaults to `1e-4`.

    Returns:
        A functional `keras.Model` returning logits of shape `(batch, num_classes)`.
    """
    return imagenet_resnet(
        RESNET34_IMAGENET, "recu_resnet34_imagenet", input_shape, num_classes, weight_decay
    )


# --- ImageNet two-stage (the code's imagenet_two-stage/), ReActNet-like -------------------------


def reactnet_block(x, filters, stride, name):
    """Applies the ReActNet-like block of the two-stage recipe.

    u = BN(bconv_s(x + b0)) + D(x); out = PReLU(u + b1) + b2, where b0, b1, b2 are learnable
    biases and D is an average pool, float 1x1 conv and BN when the stride or width changes.

    Args:
        x: tensor of shape `(batch, height, width, channels)`.
        filters: int. Output channels.
        stride: int. Stride of the binary conv and the downsample.
        name: str. Prefix of the block's layer names.

    Returns:
        The block's output tensor with `filters` channels.
    """
    shortcut = x
    if stride > 1 or x.shape[-1] != filters:
        shortcut = (
            layers.AveragePooling2D(stride, name=f"{name}_downsample_pool")(x) if stride > 1 else x
        )
        shortcut = float_conv(filters, 1, 1, f"{name}_downsample_conv")(shortcut)
        shortcut = batch_norm(f"{name}_downsample_bn")(shortcut)
    u = LearnableBias(name=f"{name}_bias0")(x)
    u = batch_norm(f"{name}_bn")(ReCUConv2D(filters, 3, stride, name=f"{name}_conv")(u))
    u = layers.Add(name=f"{name}_add")([u, shortcut])
    u = LearnableBias(name=f"{name}_bias1")(u)
    u = layers.PReLU(
        alpha_initializer=keras.initializers.Constant(0.25),
        shared_axes=[1, 2],
        name=f"{name}_prelu",
    )(u)
    return LearnableBias(name=f"{name}_bias2")(u)


def reactnet(stage_table, name, input_shape, num_classes):
    """Builds a two-stage ReActNet-like ReCU network (one binary conv per block).

    Args:
        stage_table: sequence of `Stage`. The architecture table.
        name: str. The model name.
        input_shape: tuple of 3 ints. `(height, width, channels)`.
        num_classes: int. Number of classes.

    Returns:
        A functional `keras.Model`.
    """
    inputs, x = imagenet_input(input_shape)
    x = batch_norm("stem_bn")(float_conv(64, 7, 2, "stem_conv")(x))
    x = layers.MaxPooling2D(3, strides=2, padding="same", name="stem_pool")(x)
    for spec in each_block(stage_table):
        x = reactnet_block(x, spec.filters, spec.stride, spec.name)
    return keras.Model(inputs, classifier(x, num_classes, None, batch_norm_first=False), name=name)


@register("recu_reactnet18", recipe="recu_two_stage", **IMAGENET)
def recu_reactnet18(input_shape=(224, 224, 3), num_classes=1000):
    """ReCU ReActNet-18 for ImageNet (the code's imagenet_two-stage/).

    ReActNet-like (arXiv 2003.03488): one binary conv per block, 16 binary convs, no weight
    decay. The released two-stage model of the official code (the paper's Tables 4-5 list
    the one-stage models).

    Reference:
        - [Xu et al., ReCU: Reviving the Dead Weights in Binary Neural Networks, ICCV 2021](
            https://arxiv.org/abs/2103.12369)

    Args:
        input_shape: tuple of 3 ints. `(height, width, channels)` of raw [0, 255] pixels,
            normalised with ImageNet's mean and std. Defaults to `(224, 224, 3)`.
        num_classes: int. Number of classes. Defaults to `1000`.

    Returns:
        A functional `keras.Model` returning logits of shape `(batch, num_classes)`.
    """
    return reactnet(REACTNET18, "recu_reactnet18", input_shape, num_classes)


@register("recu_reactnet34", recipe="recu_two_stage", **IMAGENET)
def recu_reactnet34(input_shape=(224, 224, 3), num_classes=1000):
    """ReCU ReActNet-34 for ImageNet (the code's imagenet_two-stage/).

    ReActNet-like (arXiv 2003.03488): one binary conv per block, 32 binary convs, no weight
    decay. The released two-stage model of the official code (the paper's Tables 4-5 list
    the one-stage models).

    Reference:
        - [Xu et al., ReCU: Reviving the Dead Weights in Binary Neural Networks, ICCV 2021](
            https://arxiv.org/abs/2103.12369)

    Args:
        input_shape: tuple of 3 ints. `(height, width, channels)` of raw [0, 255] pixels,
            normalised with ImageNet's mean and std. Defaults to `(224, 224, 3)`.
        num_classes: int. Number of classes. Defaults to `1000`.

    Returns:
        A functional `keras.Model` returning logits of shape `(batch, num_classes)`.
    """
    return reactnet(REACTNET34, "recu_reactnet34", input_shape, num_classes)
