"""Microcontroller and mobile peers: MobileNetV2, EfficientNet-Lite0, MLPerf Tiny ResNet-8, VWW."""

import keras
import numpy as np
import pytest

from effkeras import models
from effkeras.graph import summary


def counts(model):
    """(all parameters, MACs from effkeras.graph.summary) of a float model."""
    totals = summary.totals(summary.summarize(model))
    assert totals["binary_macs"] == totals["low_bit_macs"] == 0
    return model.count_params(), totals["float_macs"]


def logits_of_raw_pixels(model, batch=2):
    """Runs raw [0, 255] pixels through `model`; the output must be finite logits, not a softmax."""
    pixels = np.random.default_rng(0).integers(0, 256, (batch, *model.input_shape[1:]))
    out = keras.ops.convert_to_numpy(model(pixels.astype("float32"), training=False))
    assert out.shape == (batch, model.output_shape[-1]) and np.isfinite(out).all()
    assert not np.allclose(out.sum(axis=-1), 1.0)  # no softmax: the trainer uses from_logits=True
    return out


@pytest.mark.parametrize(
    "name, kwargs, params, macs",
    [
        # Keras' published MobileNetV2 count with its 1000-way Dense; Sandler et al. Table 4:
        # 300M MACs.
        ("mobilenet_v2", {}, 3_538_984, 300_836_992),
        ("mobilenet_v2", dict(input_shape=(96, 96, 3), alpha=0.35), 1_691_208, 11_945_648),
        ("mobilenet_v2_035", dict(input_shape=(96, 96, 3)), 1_691_208, 11_945_648),
        # ≈4.69M params, ≈385M MACs at 224x224.
        ("efficientnet_lite0", {}, 4_694_024, 385_250_272),
        ("efficientnet_lite0_hswish", {}, 4_694_024, 385_250_272),
        # The MLPerf Tiny reference: 78,666 = 77,706 conv/dense + 960 BN; 12.5M MACs.
        ("mlperf_tiny_resnet8", {}, 78_666, 12_505_728),
        # Keras MobileNet 0.25 has no conv biases: the benchmark's 221,794 less 2,736 biases;
        # 7.49M MACs (≈15M operations, counting multiplies and adds apart).
        ("mlperf_tiny_vww", {}, 219_058, 7_491_968),
    ],
)
def test_published_sizes(name, kwargs, params, macs):
    model = models.get(name, **kwargs)
    info = models.info(name)
    if "input_shape" not in kwargs:
        assert model.input_shape[1:] == info.input_shape
        assert model.output_shape == (None, info.num_classes)
    assert counts(model) == (params, macs)


def test_published_figures_within_one_percent():
    lite_params, lite_macs = counts(models.get("efficientnet_lite0"))
    assert lite_params == pytest.approx(4.69e6, rel=0.01)
    assert lite_macs == pytest.approx(385e6, rel=0.01)
    resnet8 = models.get("mlperf_tiny_resnet8")
    _, resnet8_macs = counts(resnet8)
    assert resnet8_macs == pytest.approx(12.502e6, rel=0.01)
    batch_norm = sum(
        l.count_params() for l in resnet8.layers if isinstance(l, keras.layers.BatchNormalization)
    )
    assert batch_norm == 960
    vww_params, vww_macs = counts(models.get("mlperf_tiny_vww"))
    biases = sum(
        l.output.shape[-1]
        for l in models.get("mlperf_tiny_vww").layers
        if type(l) in (keras.layers.Conv2D, keras.layers.DepthwiseConv2D)
    )
    assert vww_params + biases == 221_794  # the benchmark's figure, whose convs carry biases
    assert 2 * vww_macs == pytest.approx(15e6, rel=0.01)


@pytest.mark.parametrize(
    "name, kwargs",
    [
        ("mobilenet_v2", dict(input_shape=(32, 32, 1), num_classes=10)),
        ("mobilenet_v2", dict(input_shape=(96, 96, 1), num_classes=2, alpha=0.35)),
        ("efficientnet_lite0", dict(input_shape=(32, 32, 1), num_classes=10)),
        ("efficientnet_lite0_hswish", dict(input_shape=(32, 32, 1), num_classes=10)),
        ("mlperf_tiny_resnet8", dict(input_shape=(28, 28, 1))),
        ("mlperf_tiny_vww", dict(input_shape=(32, 32, 1))),
    ],
)
def test_small_grayscale_inputs(name, kwargs):
    model = models.get(name, **kwargs)
    assert model.input_shape[1:] == kwargs["input_shape"]
    logits_of_raw_pixels(model)


def test_registry_metadata():
    expected = {
        "mobilenet_v2": ("mobilenet_v2", "int8", 32),
        "mobilenet_v2_035": ("mobilenet_v2", "int8", 32),
        "efficientnet_lite0": ("efficientnet_lite", "ethos-u55-128", 32),
        "efficientnet_lite0_hswish": ("efficientnet_lite", "ethos-u55-128", 32),
        "mlperf_tiny_resnet8": ("mlperf_tiny", "tflm", 4),
        "mlperf_tiny_vww": ("mlperf_tiny_vww", "tflm", 32),
    }
    for name, (recipe, deploy, min_size) in expected.items():
        info = models.info(name)
        assert (info.recipe, info.deploy, info.min_input_size, info.channels) == (
            recipe,
            deploy,
            min_size,
            (1, 3),
        ), name


def test_small_mobilenet_v2_forgets_its_initial_bn_statistics_sooner():
    model = models.get("mobilenet_v2_035", input_shape=(32, 32, 1), num_classes=10)
    momenta = {l.momentum for l in model.layers if isinstance(l, keras.layers.BatchNormalization)}
    assert momenta == {0.99} and model.name == "mobilenet_v2_035"
    assert {
        l.momentum
        for l in models.get("mobilenet_v2", input_shape=(32, 32, 1)).layers
        if isinstance(l, keras.layers.BatchNormalization)
    } == {0.999}


def test_efficientnet_lite_has_no_swish_and_no_squeeze_excite():
    for name, activation in (
        ("efficientnet_lite0", "relu6"),
        ("efficientnet_lite0_hswish", "hard_swish"),
    ):
        model = models.get(name, input_shape=(32, 32, 3), num_classes=10)
        acts = {l.activation for l in model.layers if isinstance(l, keras.layers.Activation)}
        assert acts == {keras.activations.get(activation)}, name  # hard_swish is hard_silu
        assert not any(
            isinstance(l, (keras.layers.Multiply, keras.layers.GlobalAveragePooling2D))
            for l in model.layers
            if l.name != "pool"
        )  # SE = pool + multiply
        depthwise = [l for l in model.layers if isinstance(l, keras.layers.DepthwiseConv2D)]
        assert len(depthwise) == 16  # 1 + 2 + 2 + 3 + 3 + 4 + 1 MBConv blocks
        assert model.get_layer("stem_conv").filters == 32
        assert model.get_layer("head_conv").filters == 1280


def test_resnet8_pools_over_the_final_map():
    for size, pool in ((32, (8, 8)), (28, (7, 7))):
        model = models.get("mlperf_tiny_resnet8", input_shape=(size, size, 3))
        assert tuple(model.get_layer("pool").pool_size) == pool
        assert model.get_layer("pool").output.shape[1:3] == (1, 1)


@pytest.mark.parametrize(
    "name, kwargs",
    [
        ("mlperf_tiny_resnet8", dict(input_shape=(28, 28, 1))),
        ("efficientnet_lite0_hswish", dict(input_shape=(32, 32, 1), num_classes=4)),
    ],
)
def test_keras_file_round_trip(tmp_path, name, kwargs):
    model = models.get(name, **kwargs)
    path = str(tmp_path / f"{name}.keras")
    model.save(path)
    loaded = models.load_checkpoint(path)
    np.testing.assert_allclose(
        logits_of_raw_pixels(loaded), logits_of_raw_pixels(model), rtol=1e-5, atol=1e-5
    )
