"""MobileNets from keras.applications, with raw-pixel input and a logits head.

MobileNetV2 (Sandler et al., CVPR 2018, arXiv 1801.04381, Table 2): inverted residual bottlenecks,
width multiplier `alpha` (§6.1); 3.4M parameters and 300M multiply-adds at 224x224, alpha 1.0.

The MLPerf Tiny Visual Wake Words reference (Banbury et al., arXiv 2106.07597, Table 1) is
MobileNet v1 (Howard et al., arXiv 1704.04861, Table 1) at width multiplier 0.25 (§3.3) on 96x96
images with two classes (person / no person). keras.applications' MobileNet has no biases in its
convolutions and uses ReLU6 (the benchmark's own Keras listing adds a bias to every convolution
and uses ReLU: 2,736 more parameters). Its head here is global average pooling + Dense logits, as
in Table 1's "Avg Pool" + "FC"; Keras' own top (dropout + 1x1 convolution) has the same count.
"""

import keras
from keras import layers

from effkeras.models.registry import register

MOBILENET_V2_ALPHA = 1.0  # Table 2 / §6.1: width multiplier of the reference network
MOBILENET_V2_SMALL_ALPHA = 0.35  # the narrowest width of Table 6 / Fig. 5 (§6.1)
# keras.applications' BN decay is 0.999: its moving statistics need ~7,000 steps to forget their
# start, longer than a small model trains on a small dataset (Fashion-MNIST: 625 steps an
# epoch), which evaluates at chance until then. The small variant uses 0.99.
SMALL_BN_MOMENTUM = 0.99
VWW_ALPHA = 0.25  # MLPerf Tiny VWW: MobileNet v1 at 0.25 width (Howard et al. §3.3)
VWW_INPUT_SHAPE = (96, 96, 3)
VWW_CLASSES = 2


def classifier_head(inputs, backbone_output, num_classes, name):
    """Builds the model of pooled backbone features -> Dense logits.

    No softmax: losses use from_logits=True.

    Args:
        inputs: the model's `keras.Input`.
        backbone_output: tensor of shape `(batch, features)`, the pooled backbone output.
        num_classes: int. Number of logits.
        name: str. The model name.

    Returns:
        A functional `keras.Model` from `inputs` to logits of shape `(batch, num_classes)`.
    """
    outputs = layers.Dense(num_classes, name="logits")(backbone_output)
    return keras.Model(inputs, outputs, name=name)


@register(
    "mobilenet_v2",
    family="peer",
    paper="Sandler et al., CVPR 2018 (arXiv 1801.04381)",
    input_shape=(224, 224, 3),
    num_classes=1000,
    recipe="mobilenet_v2",
    deploy="int8",
    min_input_size=32,
)
def mobilenet_v2(
    input_shape=(224, 224, 3), num_classes=1000, alpha=MOBILENET_V2_ALPHA, name="mobilenet_v2"
):
    """MobileNetV2 from keras.applications, with raw-pixel input and a logits head.

    Follows Table 2 of the paper: 3.4M parameters and 300M multiply-adds at 224x224 with alpha
    1.0. Pixels are rescaled to [-1, 1]; no pretrained weights.

    Reference:
        - [Sandler et al., MobileNetV2: Inverted Residuals and Linear Bottlenecks, CVPR 2018](
            https://arxiv.org/abs/1801.04381)

    Args:
        input_shape: tuple of 3 ints. `(height, width, channels)` of raw [0, 255] pixels.
            Defaults to `(224, 224, 3)`.
        num_classes: int. Number of classes. Defaults to `1000`.
        alpha: float. Width multiplier (§6.1). Defaults to `1.0`.
        name: str. The model name. Defaults to `"mobilenet_v2"`.

    Returns:
        A functional `keras.Model` returning logits of shape `(batch, num_classes)`.
    """
    inputs = keras.Input(input_shape, name="image")  # raw pixels in [0, 255]
    x = layers.Rescaling(1 / 127.5, offset=-1.0, name="rescale")(inputs)  # [-1, 1]
    backbone = keras.applications.MobileNetV2(
        input_tensor=x, alpha=alpha, include_top=False, weights=None, pooling="avg"
    )
    return classifier_head(inputs, backbone.output, num_classes, name)


@register(
    "mobilenet_v2_035",
    family="peer",
    paper="Sandler et al., CVPR 2018 (arXiv 1801.04381), width 0.35",
    input_shape=(224, 224, 3),
    num_classes=1000,
    recipe="mobilenet_v2",
    deploy="int8",
    min_input_size=32,
)
def mobilenet_v2_035(input_shape=(224, 224, 3), num_classes=1000):
    """MobileNetV2 at width 0.35, the narrowest of the paper's Table 6 / Fig. 5 (§6.1).

    Its BatchNormalization layers use momentum 0.99 instead of keras.applications' 0.999, whose
    moving statistics need ~7,000 steps to forget their start (longer than a small model trains
    on a small dataset).

    Reference:
        - [Sandler et al., MobileNetV2: Inverted Residuals and Linear Bottlenecks, CVPR 2018](
            https://arxiv.org/abs/1801.04381)

    Args:
        input_shape: tuple of 3 ints. `(height, width, channels)` of raw [0, 255] pixels.
            Defaults to `(224, 224, 3)`.
        num_classes: int. Number of classes. Defaults to `1000`.

    Returns:
        A functional `keras.Model` returning logits of shape `(batch, num_classes)`.
    """
    model = mobilenet_v2(
        input_shape, num_classes, alpha=MOBILENET_V2_SMALL_ALPHA, name="mobilenet_v2_035"
    )
    for layer in model.layers:
        if isinstance(layer, layers.BatchNormalization):
            layer.momentum = SMALL_BN_MOMENTUM
    return model


@register(
    "mlperf_tiny_vww",
    family="peer",
    paper="MLPerf Tiny VWW: MobileNet v1 0.25 (Howard et al., arXiv 1704.04861)",
    input_shape=VWW_INPUT_SHAPE,
    num_classes=VWW_CLASSES,
    recipe="mlperf_tiny_vww",
    deploy="tflm",
    min_input_size=32,
)
def mlperf_tiny_vww(input_shape=VWW_INPUT_SHAPE, num_classes=VWW_CLASSES, alpha=VWW_ALPHA):
    """The MLPerf Tiny Visual Wake Words reference: MobileNet v1 at width 0.25.

    Follows Table 1 of the MLPerf Tiny paper (MobileNet v1, Howard et al. Table 1, at width
    0.25, §3.3) on 96x96 images with two classes (person / no person). keras.applications'
    MobileNet (no conv biases, ReLU6); pixels are rescaled to [0, 1] as the benchmark trains.

    Reference:
        - [Banbury et al., MLPerf Tiny Benchmark, NeurIPS 2021 Datasets and Benchmarks](
            https://arxiv.org/abs/2106.07597)
        - [Howard et al., MobileNets](https://arxiv.org/abs/1704.04861)

    Args:
        input_shape: tuple of 3 ints. `(height, width, channels)` of raw [0, 255] pixels.
            Defaults to `(96, 96, 3)`.
        num_classes: int. Number of classes. Defaults to `2`.
        alpha: float. Width multiplier. Defaults to `0.25`.

    Returns:
        A functional `keras.Model` returning logits of shape `(batch, num_classes)`.
    """
    inputs = keras.Input(input_shape, name="image")  # raw pixels in [0, 255]
    x = layers.Rescaling(1 / 255, name="rescale")(inputs)  # to [0, 1], as the benchmark trains
    backbone = keras.applications.MobileNet(
        input_tensor=x, alpha=alpha, include_top=False, weights=None, pooling="avg"
    )
    return classifier_head(inputs, backbone.output, num_classes, "mlperf_tiny_vww")
