"""Float CIFAR ResNet-20 (He et al., CVPR 2016, §4.2): the reference peer of every family.

n = 3 basic blocks per stage; option-A (parameter-free) shortcuts; 0.27M parameters.
"""

import keras
from keras import layers

from effkeras.layers import option_a_shortcut
from effkeras.models.registry import register

# (filters, first stride) per stage, He et al. 2016 §4.2: 16, 32, 64 filters on 32, 16, 8 maps.
RESNET20_STAGES = [(16, 1), (32, 2), (64, 2)]
BLOCKS_PER_STAGE = 3  # 6n + 2 = 20 layers
WEIGHT_DECAY = 1e-4  # He et al. 2016 §4.2
BN_MOMENTUM = 0.9  # PyTorch's default (0.1 there), as in the reference implementations


def _conv(filters, stride, name):
    return layers.Conv2D(filters, 3, strides=stride, padding="same", use_bias=False,
                         kernel_initializer="he_normal",
                         kernel_regularizer=keras.regularizers.L2(WEIGHT_DECAY), name=name)


def basic_block(x, filters, stride, name):
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
