"""Float ResNets (He et al., CVPR 2016): the reference peers and distillation teachers.

CIFAR ResNet-20 (§4.2): n = 3 basic blocks per stage, option-A (parameter-free) shortcuts, 0.27M
parameters. ImageNet ResNet-18/34 (Table 1): basic blocks, 1x1 projection shortcuts (option B),
11.7M / 21.8M parameters.
"""

import keras
from keras import layers

from effkeras.layers import normalize_pixels, option_a_shortcut
from effkeras.models.registry import register

# (filters, first stride) per stage, He et al. 2016 §4.2: 16, 32, 64 filters on 32, 16, 8 maps.
RESNET20_STAGES = [(16, 1), (32, 2), (64, 2)]
BLOCKS_PER_STAGE = 3  # 6n + 2 = 20 layers
# (filters, blocks) per stage, Table 1; strides 1, 2, 2, 2.
RESNET18_STAGES = [(64, 2), (128, 2), (256, 2), (512, 2)]
RESNET34_STAGES = [(64, 3), (128, 4), (256, 6), (512, 3)]
WEIGHT_DECAY = 1e-4  # He et al. 2016 §4.2
BN_MOMENTUM = 0.9  # PyTorch's default (0.1 there), as in the reference implementations


def _conv(filters, stride, name):
    return layers.Conv2D(filters, 3, strides=stride, padding="same", use_bias=False,
                         kernel_initializer="he_normal",
                         kernel_regularizer=keras.regularizers.L2(WEIGHT_DECAY), name=name)


def basic_block(x, filters, stride, name, projection=False):
    if projection and (stride > 1 or x.shape[-1] != filters):
        shortcut = layers.Conv2D(filters, 1, strides=stride, use_bias=False, name=f"{name}_proj",
                                 kernel_regularizer=keras.regularizers.L2(WEIGHT_DECAY))(x)
        shortcut = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_proj_bn")(shortcut)
    else:
        shortcut = option_a_shortcut(x, filters, stride, name=f"{name}_shortcut")
    x = _conv(filters, stride, f"{name}_conv1")(x)
    x = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_bn1")(x)
    x = layers.ReLU(name=f"{name}_relu1")(x)
    x = _conv(filters, 1, f"{name}_conv2")(x)
    x = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_bn2")(x)
    x = layers.Add(name=f"{name}_add")([x, shortcut])
    return layers.ReLU(name=f"{name}_out")(x)


@register("resnet20", family="reference", paper="He et al., CVPR 2016 (CIFAR ResNet-20)",
          input_shape=(32, 32, 3), num_classes=10, recipe="sgd_cosine", deploy="tflite",
          min_input_size=4)
def resnet20(input_shape=(32, 32, 3), num_classes=10):
    inputs = keras.Input(input_shape, name="image")  # raw pixels in [0, 255]
    x = layers.Rescaling(1 / 127.5, offset=-1.0, name="rescale")(inputs)
    x = _conv(16, 1, "stem_conv")(x)
    x = layers.BatchNormalization(momentum=BN_MOMENTUM, name="stem_bn")(x)
    x = layers.ReLU(name="stem_relu")(x)
    for stage, (filters, stride) in enumerate(RESNET20_STAGES, start=1):
        for block in range(BLOCKS_PER_STAGE):
            x = basic_block(x, filters, stride if block == 0 else 1, name=f"stage{stage}_block{block + 1}")
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name="resnet20")


def imagenet_resnet(stages, name, input_shape, num_classes):
    inputs = keras.Input(input_shape, name="image")  # raw pixels in [0, 255]
    x = normalize_pixels(inputs)
    x = layers.Conv2D(64, 7, strides=2, padding="same", use_bias=False, kernel_initializer="he_normal",
                      kernel_regularizer=keras.regularizers.L2(WEIGHT_DECAY), name="stem_conv")(x)
    x = layers.ReLU(name="stem_relu")(layers.BatchNormalization(momentum=BN_MOMENTUM, name="stem_bn")(x))
    x = layers.MaxPooling2D(3, strides=2, padding="same", name="stem_pool")(x)
    for stage, (filters, blocks) in enumerate(stages, start=1):
        for block in range(blocks):
            stride = 2 if block == 0 and stage > 1 else 1
            x = basic_block(x, filters, stride, f"stage{stage}_block{block + 1}", projection=True)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(inputs, layers.Dense(num_classes, name="logits")(x), name=name)


IMAGENET = dict(family="reference", input_shape=(224, 224, 3), num_classes=1000,
                recipe="sgd_cosine", deploy="tflite", min_input_size=32)


@register("resnet18", paper="He et al., CVPR 2016 (ImageNet ResNet-18)", **IMAGENET)
def resnet18(input_shape=(224, 224, 3), num_classes=1000):
    return imagenet_resnet(RESNET18_STAGES, "resnet18", input_shape, num_classes)


@register("resnet34", paper="He et al., CVPR 2016 (ImageNet ResNet-34)", **IMAGENET)
def resnet34(input_shape=(224, 224, 3), num_classes=1000):
    return imagenet_resnet(RESNET34_STAGES, "resnet34", input_shape, num_classes)
