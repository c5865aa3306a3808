"""MLPerf Tiny image classification reference: ResNet-8 on CIFAR-10 (32x32x3, 10 classes).

MLPerf Tiny (Banbury et al., NeurIPS 2021 Datasets and Benchmarks, arXiv 2106.07597,
Table 1) uses a ResNet v1 (He et al., CVPR 2016, arXiv 1512.03385, §4.2) cut down to three stacks
of one basic block each: a 3x3 stem of 16 filters, stacks of 16, 32 and 64 filters (strides 1, 2, 2)
with a 1x1 convolution (no BN) on the shortcut when the shape changes, average pooling over the
final map and a dense classifier. Convolutions keep their biases as in the benchmark's Keras model:
78,666 parameters (77,706 in convolutions and the classifier, 960 in BN), 12.5M multiply-adds.
"""

import keras
from keras import layers

from effkeras.models.common import batch_norm, each_block, stages
from effkeras.models.registry import register

STEM_FILTERS = 16
# One basic block per stack of 16, 32, 64 filters, strides 1, 2, 2 (Banbury et al. Table 1).
RESNET8_STAGES = stages(filters=(16, 32, 64), blocks=(1, 1, 1))
WEIGHT_DECAY = 1e-4  # He et al. 2016 §4.2
BN = dict(momentum=0.99, epsilon=1e-3)  # Keras' defaults, as the reference Keras model


def _conv(filters, kernel, stride, name):
    return layers.Conv2D(
        filters,
        kernel,
        strides=stride,
        padding="same",
        kernel_initializer="he_normal",
        kernel_regularizer=keras.regularizers.L2(WEIGHT_DECAY),
        name=name,
    )


def residual_stack(x, filters, stride, name):
    """Applies [3x3 conv - BN - ReLU - 3x3 conv - BN] + shortcut - ReLU.

    The shortcut is a 1x1 conv (no BN) if the shape changes, else the identity.

    Args:
        x: tensor of shape `(batch, height, width, channels)`.
        filters: int. Output channels.
        stride: int. Stride of the first conv and the shortcut conv.
        name: str. Prefix of the layer names.

    Returns:
        The output tensor with `filters` channels.
    """
    y = _conv(filters, 3, stride, f"{name}_conv1")(x)
    y = batch_norm(f"{name}_bn1", **BN)(y)
    y = layers.ReLU(name=f"{name}_relu1")(y)
    y = _conv(filters, 3, 1, f"{name}_conv2")(y)
    y = batch_norm(f"{name}_bn2", **BN)(y)
    if stride != 1 or x.shape[-1] != filters:
        x = _conv(filters, 1, stride, f"{name}_shortcut")(x)
    x = layers.Add(name=f"{name}_add")([x, y])
    return layers.ReLU(name=f"{name}_out")(x)


@register(
    "mlperf_tiny_resnet8",
    family="peer",
    paper="MLPerf Tiny image classification ResNet-8 (Banbury et al., arXiv 2106.07597)",
    input_shape=(32, 32, 3),
    num_classes=10,
    recipe="mlperf_tiny",
    deploy="tflm",
    min_input_size=4,
)
def mlperf_tiny_resnet8(input_shape=(32, 32, 3), num_classes=10):
    """The MLPerf Tiny image classification reference ResNet-8 (CIFAR-10).

    Follows Table 1 of the MLPerf Tiny paper: a ResNet v1 (He et al., §4.2) of three stacks of
    one basic block (16, 32, 64 filters), convs with biases; 78,666 parameters and 12.5M
    multiply-adds. Pixels are rescaled to [0, 1]; the final pool covers the whole map.

    Reference:
        - [Banbury et al., MLPerf Tiny Benchmark, NeurIPS 2021 Datasets and Benchmarks](
            https://arxiv.org/abs/2106.07597)
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
    x = layers.Rescaling(1 / 255, name="rescale")(inputs)
    x = _conv(STEM_FILTERS, 3, 1, "stem_conv")(x)
    x = batch_norm("stem_bn", **BN)(x)
    x = layers.ReLU(name="stem_relu")(x)
    for block in each_block(RESNET8_STAGES):
        x = residual_stack(x, block.filters, block.stride, name=block.name)
    # Pool over the whole final map (8x8 at 32x32 input): an AVERAGE_POOL_2D op on TFLite Micro,
    # as in the benchmark's model, that also works at other input sizes (7x7 at 28x28).
    x = layers.AveragePooling2D(pool_size=tuple(x.shape[1:3]), name="pool")(x)
    x = layers.Flatten(name="flatten")(x)
    outputs = layers.Dense(num_classes, kernel_initializer="he_normal", name="logits")(x)
    return keras.Model(inputs, outputs, name="mlperf_tiny_resnet8")
