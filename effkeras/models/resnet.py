"""Float ResNets (He et al., CVPR 2016, arXiv 1512.03385): reference peers, distillation teachers.

CIFAR ResNet-20 (§4.2): n = 3 basic blocks per stage, option-A (parameter-free) shortcuts, 0.27M
parameters. ImageNet ResNet-18/34 (Table 1): basic blocks, 1x1 projection shortcuts (option B),
11.7M / 21.8M parameters.
"""

import keras
from keras import layers

from effkeras.layers import normalize_pixels, option_a_shortcut
from effkeras.models.common import batch_norm, each_block, stages
from effkeras.models.registry import register

# §4.2: 16, 32, 64 filters on 32, 16, 8 maps, n = 3 blocks each (6n + 2 = 20 layers).
RESNET20_STAGES = stages(filters=(16, 32, 64), blocks=(3, 3, 3))
# Table 1, conv2_x to conv5_x; strides 1, 2, 2, 2.
RESNET18_STAGES = stages(filters=(64, 128, 256, 512), blocks=(2, 2, 2, 2))
RESNET34_STAGES = stages(filters=(64, 128, 256, 512), blocks=(3, 4, 6, 3))
WEIGHT_DECAY = 1e-4  # §4.2
# Momentum: PyTorch's default (0.1 there), as in the reference implementations; ε: Keras' default.
BN = dict(momentum=0.9, epsilon=1e-3)


def _conv(filters, stride, name):
    return layers.Conv2D(
        filters,
        3,
        strides=stride,
        padding="same",
        use_bias=False,
        kernel_initializer="he_normal",
        kernel_regularizer=keras.regularizers.L2(WEIGHT_DECAY),
        name=name,
    )


def basic_block(x, filters, stride, name, projection=False):
    """Applies a ResNet basic block: two 3x3 conv-BN pairs, ReLU between, shortcut add, ReLU.

    Args:
        x: tensor of shape `(batch, height, width, channels)`.
        filters: int. Output channels.
        stride: int. Stride of the first conv and the shortcut.
        name: str. Prefix of the layer names.
        projection: bool. `True` uses a 1x1 conv + BN shortcut (option B) where the shape
            changes; `False` the parameter-free option-A shortcut. Defaults to `False`.

    Returns:
        The output tensor with `filters` channels.
    """
    if projection and (stride > 1 or x.shape[-1] != filters):
        shortcut = layers.Conv2D(
            filters,
            1,
            strides=stride,
            use_bias=False,
            name=f"{name}_proj",
            kernel_regularizer=keras.regularizers.L2(WEIGHT_DECAY),
        )(x)
        shortcut = batch_norm(f"{name}_proj_bn", **BN)(shortcut)
    else:
        shortcut = option_a_shortcut(x, filters, stride, name=f"{name}_shortcut")
    x = _conv(filters, stride, f"{name}_conv1")(x)
    x = batch_norm(f"{name}_bn1", **BN)(x)
    x = layers.ReLU(name=f"{name}_relu1")(x)
    x = _conv(filters, 1, f"{name}_conv2")(x)
    x = batch_norm(f"{name}_bn2", **BN)(x)
    x = layers.Add(name=f"{name}_add")([x, shortcut])
    return layers.ReLU(name=f"{name}_out")(x)


@register(
    "resnet20",
    family="reference",
    paper="He et al., CVPR 2016 (CIFAR ResNet-20)",
    input_shape=(32, 32, 3),
    num_classes=10,
    recipe="sgd_cosine",
    deploy="float",
    min_input_size=4,
)
def resnet20(input_shape=(32, 32, 3), num_classes=10):
    """The float CIFAR ResNet-20 (§4.2): n = 3 basic blocks per stage, option-A shortcuts.

    0.27M parameters. Pixels are rescaled to [-1, 1].

    Reference:
        - [He et al., Deep Residual Learning for Image Recognition, CVPR 2016](
            https://arxiv.org/abs/1512.03385)

    Args:
        input_shape: tuple of 3 ints. `(height, width, channels)` of raw [0, 255] pixels.
            Defaults to `(32, 32, 3)`.
        num_classes: int. Number of classes. Defaults to `10`.

    Returns:
        A functional `keras.Model` returning logits of shape `(batch, num_classes)`.
    """
    inputs = keras.Input(input_shape, name="image")  # raw pixels in [0, 255]
    x = layers.Rescaling(1 / 127.5, offset=-1.0, name="rescale")(inputs)
    x = _conv(16, 1, "stem_conv")(x)
    x = batch_norm("stem_bn", **BN)(x)
    x = layers.ReLU(name="stem_relu")(x)
    for spec in each_block(RESNET20_STAGES):
        x = basic_block(x, spec.filters, spec.stride, spec.name)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name="resnet20")


def imagenet_resnet(stage_table, name, input_shape, num_classes):
    """Builds a float ImageNet ResNet of basic blocks with projection shortcuts (Table 1).

    Args:
        stage_table: sequence of `Stage`. The architecture table.
        name: str. The model name.
        input_shape: tuple of 3 ints. `(height, width, channels)` of raw [0, 255] pixels,
            normalised with ImageNet's mean and std.
        num_classes: int. Number of classes.

    Returns:
        A functional `keras.Model` returning logits of shape `(batch, num_classes)`.
    """
    inputs = keras.Input(input_shape, name="image")  # raw pixels in [0, 255]
    x = normalize_pixels(inputs)
    x = layers.Conv2D(
        64,
        7,
        strides=2,
        padding="same",
        use_bias=False,
        kernel_initializer="he_normal",
        kernel_regularizer=keras.regularizers.L2(WEIGHT_DECAY),
        name="stem_conv",
    )(x)
    x = layers.ReLU(name="stem_relu")(batch_norm("stem_bn", **BN)(x))
    x = layers.MaxPooling2D(3, strides=2, padding="same", name="stem_pool")(x)
    for spec in each_block(stage_table):
        x = basic_block(x, spec.filters, spec.stride, spec.name, projection=True)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(inputs, layers.Dense(num_classes, name="logits")(x), name=name)


IMAGENET = dict(
    family="reference",
    input_shape=(224, 224, 3),
    num_classes=1000,
    recipe="sgd_cosine",
    deploy="float",
    min_input_size=32,
)


@register("resnet18", paper="He et al., CVPR 2016 (ImageNet ResNet-18)", **IMAGENET)
def resnet18(input_shape=(224, 224, 3), num_classes=1000):
    """The float ImageNet ResNet-18 of Table 1 (11.7M parameters).

    Basic blocks with 1x1 projection shortcuts (option B); a reference peer and teacher.

    Reference:
        - [He et al., Deep Residual Learning for Image Recognition, CVPR 2016](
            https://arxiv.org/abs/1512.03385)

    Args:
        input_shape: tuple of 3 ints. `(height, width, channels)` of raw [0, 255] pixels.
            Defaults to `(224, 224, 3)`.
        num_classes: int. Number of classes. Defaults to `1000`.

    Returns:
        A functional `keras.Model` returning logits of shape `(batch, num_classes)`.
    """
    return imagenet_resnet(RESNET18_STAGES, "resnet18", input_shape, num_classes)


@register("resnet34", paper="He et al., CVPR 2016 (ImageNet ResNet-34)", **IMAGENET)
def resnet34(input_shape=(224, 224, 3), num_classes=1000):
    """The float ImageNet ResNet-34 of Table 1 (21.8M parameters).

    Basic blocks with 1x1 projection shortcuts (option B); a reference peer and teacher.

    Reference:
        - [He et al., Deep Residual Learning for Image Recognition, CVPR 2016](
            https://arxiv.org/abs/1512.03385)

    Args:
        input_shape: tuple of 3 ints. `(height, width, channels)` of raw [0, 255] pixels.
            Defaults to `(224, 224, 3)`.
        num_classes: int. Number of classes. Defaults to `1000`.

    Returns:
        A functional `keras.Model` returning logits of shape `(batch, num_classes)`.
    """
    return imagenet_resnet(RESNET34_STAGES, "resnet34", input_shape, num_classes)
