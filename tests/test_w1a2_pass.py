"""w1a2 -> binary convs for LCE (effkeras/graph/passes/w1a2.py): exact against
the un-rewritten Keras model, layer by layer and for every ERN, with every w1a2 conv an
LceBconv2d (one per plane block) and none left as a float CONV_2D."""

import json

import keras
import larq_compute_engine
import numpy as np
import pytest
from conftest import run_app
from keras import ops

from effkeras import deploy, models, quantizers
from effkeras.deploy import lce
from effkeras.deploy.flatbuffer import operators
from effkeras.errors import InputError
from effkeras.graph.passes import w1a2 as w1a2_pass
from effkeras.layers import PixelEmbedding, QuantConv2D, QuantDense
from effkeras.testing import tie_free_weights

F32 = np.float32
THRESHOLDS = F32([1 / 3, 1, 5 / 3])


def bn_like(rng, shape):
    """BN outputs on a grid of 1/96 offset by half a step, so none sits on a threshold, with the
    thresholds' neighbours (and 1/3, 1 themselves) written along every border.

    Not 5/3 itself: at x = float32(5/3) the quantizer's graph-mode forward gives code 2 (its
    step-back test (codes - 1/2) / 1.5 changes under Grappler's constant folding, apparently to a
    multiplication by float32(2/3)) where its eager forward and `.thresholds` give 3; the rewrite
    follows `.thresholds` (test_planes_follow_the_quantizer_thresholds)."""
    x = (rng.integers(-48, 240, shape) + 0.5) / 96
    special = np.concatenate(
        [
            THRESHOLDS[:2],
            np.nextafter(THRESHOLDS, F32(-1)),
            np.nextafter(THRESHOLDS, F32(3)),
            F32([0, 2, -1, 3]),
        ]
    )
    for border in (x[:, 0], x[:, -1], x[:, :, 0], x[:, :, -1]):
        border[...] = rng.choice(special, border.shape)
    return x.astype(F32)


def one_layer(kernel_size, stride, size, channels=40, filters=24, k_bit=2, post_scale=True, seed=0):
    """x -> [ZeroPadding2D(1)] -> w1a2 QuantConv2D, as ERN builds its convs."""
    inputs = keras.Input((size, size, channels))
    x = keras.layers.ZeroPadding2D(1)(inputs) if kernel_size == 3 else inputs
    outputs = QuantConv2D(
        filters,
        kernel_size,
        strides=stride,
        use_bias=False,
        name="w1a2_conv",
        input_quantizer=quantizers.HalfWaveGaussianQuantizer(k_bit, post_scale=post_scale),
        kernel_quantizer=quantizers.BinaryChannelWiseMeanScaling(),
    )(x)
    model = keras.Model(inputs, outputs)
    layer = model.get_layer("w1a2_conv")
    layer.kernel.assign(np.random.default_rng(seed).normal(size=layer.kernel.shape).astype(F32))
    return model


def plane_layers(model):
    return [layer for layer in model.layers if isinstance(layer, w1a2_pass.PlaneConv2D)]


def assert_no_float_conv(result, expected_bconvs):
    assert "CONV_2D" not in result.op_census
    assert result.bconv_ops == expected_bconvs and result.float_fallback == ()


# --- single layers ------------------------------------------------------------------------------


@pytest.mark.parametrize("form", ["thermometer", "bitplane"])
@pytest.mark.parametrize(
    "kernel_size, stride, size, one_padded",
    [
        (3, 1, 8, True),  # SAME geometry: the planes are one-padded (LCE's fused padding)
        (3, 2, 8, False),  # PyTorch pads 1 on both sides, SAME would pad 0 and 1: x is zero-padded
        (3, 2, 7, True),  # odd map: PyTorch's padding is SAME's
        (3, 1, 2, True),  # a map smaller than the kernel
        (1, 1, 8, False),
        (1, 2, 7, False),
    ],
)
def test_single_layer_is_exact(form, kernel_size, stride, size, one_padded):
    model = one_layer(kernel_size, stride, size, post_scale=stride == 1)
    x = bn_like(np.random.default_rng(1), (2, size, size, 40))
    rewritten = w1a2_pass.w1a2_to_binary(model, form)
    (planes,) = plane_layers(rewritten)
    assert (planes.form, planes.pad_planes, planes.name) == (form, one_padded, "w1a2_conv")
    assert not any(isinstance(l, keras.layers.ZeroPadding2D) for l in rewritten.layers)
    np.testing.assert_allclose(
        rewritten.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-5, atol=1e-5
    )

    _, result = lce.convert(model, sample=x, w1a2_form=form)
    assert_no_float_conv(result, 1 if form == "thermometer" else 2)
    assert result.max_rel_diff <= 1e-5  # borders included: the output is compared everywhere
    assert (result.binary_layers, result.w1a2_layers) == (1, 1)


def test_more_bits_use_the_thermometer():
    model = one_layer(3, 1, 6, k_bit=3)  # 7 thresholds
    with pytest.raises(InputError, match="bit-plane form needs 2-bit"):
        w1a2_pass.w1a2_to_binary(model, "bitplane")
    x = bn_like(np.random.default_rng(2), (2, 6, 6, 40))
    _, result = lce.convert(model, sample=x)  # auto
    assert_no_float_conv(result, 1)
    assert result.max_rel_diff <= 1e-5


def test_bit_plane_convs_share_one_filter_tensor():
    model = one_layer(3, 1, 6, channels=256, filters=256)
    flatbuffer, result = lce.convert(
        model, sample=bn_like(np.random.default_rng(3), (1, 6, 6, 256)), w1a2_form="bitplane"
    )
    bconvs = [op for op in operators(flatbuffer) if op.type == "LceBconv2d"]
    assert len(bconvs) == 2 and bconvs[0].inputs[1] == bconvs[1].inputs[1]
    packed = 3 * 3 * 256 * 256 // 8
    assert len(bconvs[0].inputs[1].data) == packed
    assert packed < len(flatbuffer) < 1.2 * packed  # stored once


def test_planes_follow_the_quantizer_thresholds():
    """Eagerly, at the thresholds themselves and one float either side, 5/3 included."""
    inputs = keras.Input((1, 1, 1))
    layer = QuantConv2D(
        1,
        1,
        use_bias=False,
        input_quantizer=quantizers.HalfWaveGaussianQuantizer(post_scale=False),
        kernel_quantizer=quantizers.BinaryChannelWiseMeanScaling(),
    )
    model = keras.Model(inputs, layer(inputs))
    layer.kernel.assign(np.ones((1, 1, 1, 1), F32))
    x = np.concatenate(
        [np.nextafter(THRESHOLDS, F32(-1)), THRESHOLDS, np.nextafter(THRESHOLDS, F32(3))]
    ).reshape(-1, 1, 1, 1)
    codes = np.ravel(model(x))
    np.testing.assert_array_equal(codes, [0, 1, 2, 1, 2, 3, 1, 2, 3])
    for form in ("thermometer", "bitplane"):
        np.testing.assert_array_equal(np.ravel(w1a2_pass.w1a2_to_binary(model, form)(x)), codes)


@pytest.mark.parametrize("form", ["thermometer", "bitplane"])
def test_stem_reads_the_raw_pixels(form):
    """PixelEmbedding -> pad -> stem conv (3x3 s2): the planes threshold the image itself."""
    model = models.get("ern18", input_shape=(32, 32, 3), num_classes=10)
    stem = keras.Model(model.input, model.get_layer("stem_conv1").output)
    stem.get_layer("stem_conv1").kernel.assign(
        np.random.default_rng(4).normal(size=(3, 3, 30, 64)).astype(F32)
    )
    rng = np.random.default_rng(5)
    pixels = rng.integers(0, 256, (2, 32, 32, 3)).astype(F32)
    # Every threshold (8j + 1/2), its neighbouring bytes and the extremes, along the borders.
    special = np.concatenate(
        [8 * np.arange(1, 31) + 0.5, 8 * np.arange(1, 31), 8 * np.arange(1, 31) + 1, [0, 255]]
    ).astype(F32)
    pixels[:, 0] = rng.choice(special, pixels[:, 0].shape)
    pixels[:, :, -1] = rng.choice(special, pixels[:, :, -1].shape)
    rewritten = w1a2_pass.w1a2_to_binary(stem, form)
    assert not any(isinstance(l, PixelEmbedding) for l in rewritten.layers)
    (planes,) = plane_layers(rewritten)
    assert planes.code_channels == [c for c in range(3) for _ in range(10)]
    _, result = lce.convert(stem, sample=pixels, w1a2_form=form)
    assert_no_float_conv(result, 1 if form == "thermometer" else 2)
    assert result.max_rel_diff <= 1e-5 and "GATHER" in result.op_census


# --- every ERN ----------------------------------------------------------------------------------


def ern_sample(size, seed=0):
    """Two images with saturated and threshold-valued borders."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (2, size, size, 3)).astype(F32)
    images[0, :3], images[0, :, -3:] = 0, 255
    images[1, -3:], images[1, :, :3] = 255, 8 * rng.integers(1, 31, (size, 3, 3)) + 0.5
    return images


def min_maps(model):
    """Smallest (input map side, kernel side) over the w1a2 convs, before their padding."""
    sizes = []
    for layer in w1a2_pass.w1a2_layers(model):
        source = layer.input._keras_history[0]
        side = (
            source.input if isinstance(source, keras.layers.ZeroPadding2D) else layer.input
        ).shape[1]
        sizes.append((side, layer.kernel_size[0]))
    return min(sizes)


# 96x96: every w1a2 conv reads a map of at least 3x3 (layer4: 3x3). 80x80 (ern18_075): layer3
# is 5x5, so layer4's stride-2 3x3 conv reads an odd map, which LCE one-pads. One ERN per block
# kind (basic: ern18, bottleneck: ern50); ern34 and ern101 are deeper stacks of the same convs,
# which test_every_model.py's harness builds and (its conversion signature) leaves to these.
# The deploys marker: test_every_model.py leaves these models' deployment to this test.
ERNS = [("ern18_075", 80), ("ern18", 96), ("ern50", 96)]


@pytest.mark.deploys(**dict(ERNS))
@pytest.mark.parametrize("name, size", ERNS)
def test_every_ern_converts_exactly(name, size):
    model = tie_free_weights(models.get(name, input_shape=(size, size, 3), num_classes=10))
    assert min_maps(model)[0] >= 3
    w1a2 = w1a2_pass.w1a2_layers(model)
    rewritten = w1a2_pass.w1a2_to_binary(model)
    planes = plane_layers(rewritten)
    assert sorted(l.name for l in planes) == sorted(l.name for l in w1a2)
    expected_bconvs = sum(1 if l.form == "thermometer" else 2 for l in planes)
    # Stride 2 on even maps reads zero-padded x; one-padding elsewhere (incl. stride 2 on odd maps).
    padded_x = {l.name for l in planes if any(map(any, l.padding)) and not l.pad_planes}
    assert padded_x >= {"stem_conv1", "stem_downsample"}
    assert all(rewritten.get_layer(n).strides == (2, 2) for n in padded_x)
    if size == 80:  # 5x5 -> 3x3, stride 2, one-padded
        assert rewritten.get_layer("stage4_block1_conv1").pad_planes

    sample = ern_sample(size)
    expected = keras.ops.convert_to_numpy(model(sample, training=False))  # eager: no tracing
    assert np.std(expected) > 0.1  # the weights make a non-trivial network
    # Through deploy.convert to the registry's target, as test_every_model.py does for others.
    flatbuffer, result = deploy.convert(model, models.info(name).deploy, sample=sample)
    assert result.size_bytes == len(flatbuffer) and result.target == "lce (arm)"
    assert_no_float_conv(result, expected_bconvs)
    assert result.w1a2_layers == len(w1a2) == result.binary_layers
    assert result.max_rel_diff <= 1e-4, result.max_rel_diff


def test_feature_maps_match_everywhere():
    """The map after a stride-2 stage of ERN18 (stem and a stride-2 block), position by position:
    the borders too, which a logit average could hide."""
    model = tie_free_weights(models.get("ern18", input_shape=(64, 64, 3), num_classes=10))
    trunk = keras.Model(model.input, model.get_layer("stage2_block1_add").output)
    sample = ern_sample(64, seed=1)
    expected = trunk.predict(sample, verbose=0)
    assert expected.shape == (2, 8, 8, 128)
    flatbuffer, result = lce.convert(trunk, sample=sample)
    assert result.max_rel_diff <= 1e-4
    actual = larq_compute_engine.testing.Interpreter(flatbuffer).predict(sample)
    for border in (np.s_[:, 0], np.s_[:, -1], np.s_[:, :, 0], np.s_[:, :, -1]):
        np.testing.assert_allclose(
            actual[border], expected[border], atol=1e-4 * np.abs(expected).max()
        )


def test_auto_form_and_batch_norm_folding():
    model = models.get("ern50", input_shape=(64, 64, 3), num_classes=10)
    rewritten = w1a2_pass.w1a2_to_binary(model)
    forms = {l.name: l.form for l in plane_layers(rewritten)}
    # 1x1 convs from 64 code channels to >= 4x as many filters: thermometer (measured faster).
    assert sorted(n for n, f in forms.items() if f == "thermometer") == [
        "stage1_block1_conv3",
        "stage1_block1_shortcut_conv",
        "stage1_block2_conv3",
        "stage1_block3_conv3",
    ]
    # A BN that alone reads a rewritten conv is folded into it; the stream's BNs stay.
    batch_norms = {
        l.name for l in rewritten.layers if isinstance(l, keras.layers.BatchNormalization)
    }
    assert "stem_conv1_bn" not in batch_norms and "stage2_block1_bn2" not in batch_norms
    assert {"stage2_block1_bn1", "head_bn"} <= batch_norms


def test_rewritten_model_round_trips(tmp_path):
    model = tie_free_weights(models.get("ern18_075", input_shape=(32, 32, 3), num_classes=10))
    rewritten = w1a2_pass.w1a2_to_binary(model)
    rewritten.save(tmp_path / "rewritten.keras")
    loaded = keras.saving.load_model(tmp_path / "rewritten.keras")
    sample = ern_sample(32)
    # Called eagerly: predict() would trace each model into a tf.function first (seconds each).
    loaded, rewritten, model = (
        keras.ops.convert_to_numpy(m(sample, training=False)) for m in (loaded, rewritten, model)
    )
    np.testing.assert_array_equal(loaded, rewritten)
    np.testing.assert_allclose(rewritten, model, rtol=1e-5, atol=1e-5)


# --- refusals -----------------------------------------------------------------------------------


def w1a2_dense_model():
    inputs = keras.Input((4, 4, 8))
    x = keras.layers.Flatten()(inputs)
    outputs = QuantDense(
        8,
        name="w1a2_dense",
        input_quantizer=quantizers.HalfWaveGaussianQuantizer(),
        kernel_quantizer=quantizers.BinaryChannelWiseMeanScaling(),
    )(x)
    return keras.Model(inputs, outputs)


def test_a_w1a2_layer_that_cannot_be_rewritten_is_named():
    with pytest.raises(InputError, match="w1a2_dense"):
        lce.convert(w1a2_dense_model())
    _, result = lce.convert(w1a2_dense_model(), allow_float_fallback=True, input_range=(-1, 3))
    assert result.float_fallback == ("w1a2_dense",) and result.bconv_ops == 0

    inputs = keras.Input((6, 6, 8))
    dorefa = QuantConv2D(
        8,
        3,
        name="dorefa_conv",
        input_quantizer=quantizers.DoReFa(2),
        kernel_quantizer=quantizers.BinaryChannelWiseMeanScaling(),
    )
    with pytest.raises(InputError, match="dorefa_conv.*thresholds"):
        w1a2_pass.w1a2_to_binary(keras.Model(inputs, dorefa(inputs)))
    with pytest.raises(InputError, match="form"):
        w1a2_pass.w1a2_to_binary(one_layer(1, 1, 4), form="trinary")


def test_a_rewritten_conv_left_float_is_named(monkeypatch):
    """Something between the planes and the conv: LCE keeps a float CONV_2D, and the check
    names the w1a2 layer."""

    def blocked(self, v, weight):
        plane = ops.maximum(ops.where(ops.greater_equal(v, 0.0), 1.0, -1.0), -1.0)  # same values
        return ops.conv(plane, self.kernel, padding="valid") * (self.multiplier * weight)

    monkeypatch.setattr(w1a2_pass.PlaneConv2D, "_bconv", blocked)
    model = one_layer(1, 1, 4)
    with pytest.raises(InputError, match="w1a2_conv"):
        lce.convert(model, sample=bn_like(np.random.default_rng(6), (1, 4, 4, 40)))


def test_convert_app_rewrites_ern(tmp_path):
    output = tmp_path / "ern.tflite"
    run = run_app(
        "apps.convert",
        "--model=ern18_075",
        "--input_shape=64,64,3",
        "--num_classes=10",
        "--target=arm",
        f"--output={output}",
        "--json",
    )
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["w1a2_layers"] == 25 and result["bconv_ops"] == 50
    assert "CONV_2D" not in result["op_census"] and output.read_bytes()[4:8] == b"TFL3"
