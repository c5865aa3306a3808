"""Binary and w1a2 layers lowered to exact int8 builtins (graph/passes/binary_int8.py,
layers/int8_step.py, deploy/binary_int8.py), checked in LiteRT, TFLite Micro and Vela."""

import keras
import numpy as np
import pytest

from effkeras import deploy, quantizers
from effkeras.deploy.flatbuffer import operators
from effkeras.errors import InputError
from effkeras.graph.passes.binary_int8 import lower_binary
from effkeras.layers import (
    Int8Step,
    PixelEmbedding,
    QuantConv2D,
    QuantDense,
    QuantDepthwiseConv2D,
    ReCUConv2D,
)
from effkeras.testing import set_batch_norm_statistics

QUANTIZERS = {
    # name: (levels, index of the level at 0)
    "ste_sign": ([-1.0, 1.0], 1),  # sign(0) = +1, as larq
    "approx_sign": ([-1.0, 1.0], 1),
    "swish_sign": ([-1.0, 1.0], 1),
    "ste_heaviside": ([0.0, 1.0], 0),  # larq: 1 only where x > 0
    "half_wave_gaussian": ([0.0, 2 / 3, 4 / 3, 2.0], None),
}


def every_kind(seed=0):
    """A small net with each binary layer kind: ERN's stem (pixel embedding, w1a2 conv), a
    one-padded ste_sign conv (QuickNet), ReCU's conv, a binary depthwise conv, a heaviside-input
    conv with mean-|W| scaling, and a binary Dense classifier."""
    keras.utils.set_random_seed(seed)
    bn = keras.layers.BatchNormalization
    inputs = keras.Input((8, 8, 3))
    x = PixelEmbedding(expansion=2, name="embedding")(inputs)
    x = keras.layers.ZeroPadding2D(1)(x)
    x = QuantConv2D(
        8,
        3,
        name="w1a2",
        input_quantizer=quantizers.HalfWaveGaussianQuantizer(),
        kernel_quantizer=quantizers.BinaryChannelWiseMeanScaling(),
    )(x)
    x = bn(name="bn1")(x)
    x = QuantConv2D(
        8,
        3,
        padding="same",
        pad_values=1.0,
        name="one_padded",
        input_quantizer="ste_sign",
        kernel_quantizer="ste_sign",
    )(x)
    x = bn(name="bn2")(x)
    x = ReCUConv2D(8, name="recu")(x)
    x = bn(name="bn3")(x)
    x = QuantDepthwiseConv2D(
        3,
        padding="same",
        name="depthwise",
        input_quantizer="approx_sign",
        depthwise_quantizer="ste_sign",
    )(x)
    x = bn(name="bn4")(x)
    x = QuantConv2D(
        8,
        1,
        name="heaviside",
        input_quantizer="ste_heaviside",
        kernel_quantizer="magnitude_aware_sign",
    )(x)
    x = bn(name="bn5")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = QuantDense(
        10, name="classifier", input_quantizer="swish_sign", kernel_quantizer="ste_sign"
    )(x)
    model = keras.Model(inputs, outputs, name="every_kind")
    # BN statistics as after training: the steps' inputs around 0
    set_batch_norm_statistics(model, seed, beta_std=0.2, mean_std=1.0, variance=(1.0, 10.0))
    return model


@pytest.mark.parametrize("name", sorted(QUANTIZERS))
def test_step_equals_its_quantizer_on_every_code(name):
    """Frozen on a grid, the int8 form gives the quantizer's level on all 256 codes, and sign(0)
    is +1 (larq's), heaviside(0) is 0."""
    levels, at_zero = QUANTIZERS[name]
    step = Int8Step(name)
    step.build((None, 4, 4, 2))
    scale, zero_point = 3.0 / 255, -40
    thresholds = step.freeze(scale, zero_point)
    codes = np.arange(-128, 128)
    grid = (scale * (codes - zero_point)).astype(np.float32)[None, None, :, None]
    got = np.asarray(step._int8(np.repeat(grid, 2, axis=-1)))[0, 0, :, 0]
    if step.steps > 1:  # the last sum's quantization point comes after the layer
        got = np.round(got / (step.output_range[1] / 255)) * (step.output_range[1] / 255)
    want = np.asarray(quantizers.get(name)(grid))[0, 0, :, 0]
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert sorted(set(np.round(want, 5))) == pytest.approx(levels, abs=1e-5)
    if at_zero is not None:
        assert want[codes == zero_point][0] == levels[at_zero]
        # sign: the first code at +1 is the zero point's; heaviside: the one after it
        assert thresholds[0, 0] == zero_point + (name == "ste_heaviside")


def test_batch_statistic_quantizers_are_refused():
    """magnitude_aware_sign scales by a mean over the batch: not an elementwise step."""
    inputs = keras.Input((4, 4, 2))
    outputs = QuantConv2D(
        2, 1, input_quantizer="magnitude_aware_sign", kernel_quantizer="ste_sign", name="mag"
    )(inputs)
    with pytest.raises(InputError, match="mag: its input quantizer .* not elementwise"):
        lower_binary(keras.Model(inputs, outputs))


def test_lowering_is_exact_layer_by_layer():
    model = every_kind()
    lowered, count = lower_binary(model)
    assert count == 6
    steps = [layer for layer in lowered.layers if isinstance(layer, Int8Step)]
    assert len(steps) == 7  # the embedding and one per binary layer
    assert not any(isinstance(layer, (QuantConv2D, QuantDense)) for layer in lowered.layers)


@pytest.fixture(scope="module")
def every_kind_int8():
    model = every_kind()
    rng = np.random.default_rng(1)
    calibration = rng.uniform(0, 255, (64, 8, 8, 3)).astype(np.float32)
    sample = rng.uniform(0, 255, (16, 8, 8, 3)).astype(np.float32)
    flatbuffer, report = deploy.convert(model, "int8", calibration=calibration, sample=sample)
    return model, flatbuffer, report, calibration, sample


def test_every_kind_converts_to_builtin_int8_ops(every_kind_int8):
    """No float op, no custom op; each step's codes exact in LiteRT, every other quantization
    point within one step."""
    _, flatbuffer, report, _, _ = every_kind_int8
    types = {op.type for op in operators(flatbuffer)}
    assert types <= {
        "CONV_2D",
        "DEPTHWISE_CONV_2D",
        "ADD",
        "PAD",
        "MEAN",
        "FULLY_CONNECTED",
        "RESHAPE",
        "MUL",
    }, types
    assert report.float_ops == ()
    assert report.binary_layers == 6 and report.exact_steps == 7
    assert report.max_op_lsb <= 1
    assert report.quantization_points >= 13


def test_binary_weights_are_int8_codes_plus_minus_127(every_kind_int8):
    """Each binary conv's int8 weights are ±127 (its α and the folded BN in the scales)."""
    _, flatbuffer, _, _, _ = every_kind_int8
    found = set()
    for op in operators(flatbuffer):
        name = op.outputs[0].name
        for layer in ("w1a2", "one_padded", "recu", "depthwise", "heaviside"):
            if f"/{layer}_1/" in name and op.type in ("CONV_2D", "DEPTHWISE_CONV_2D"):
                weights = np.frombuffer(op.inputs[1].data, np.int8)
                assert set(np.abs(weights).tolist()) == {127}, name
                found.add(layer)
    assert len(found) == 5


def test_every_kind_runs_in_tflite_micro_and_on_the_npu(every_kind_int8):
    model, _, _, calibration, sample = every_kind_int8
    int8, tflm = deploy.convert(model, "tflm", calibration=calibration, sample=sample)
    assert tflm.binary_layers == 6 and tflm.max_lsb_diff == 0 and tflm.arena_bytes > 0
    assert tflm.int4_layers == 0 and tflm.int4_top1_agreement is None
    # --int4_weights: every binary layer's weights are INT4 codes ±7, two per byte, run in
    # TFLite Micro as LiteRT's reference kernels run them.
    packed, int4 = deploy.convert(int8, "tflm", sample=sample, int4_weights=True)
    assert int4.artifacts["_int8.tflite"] == int8 and int4.size_bytes == len(packed)
    assert int4.max_lsb_diff <= 1
    weights = [
        op.inputs[1] for op in operators(packed) if op.inputs[1:2] and op.inputs[1].dtype == "int4"
    ]
    assert int4.int4_layers == len(weights) == 6
    nibbles = np.frombuffer(b"".join(t.data for t in weights), np.uint8)
    assert set((nibbles & 0xF).tolist()) | set((nibbles >> 4).tolist()) <= {0x7, 0x9}  # +7, -7
    assert len(int8) - len(packed) >= sum(int(np.prod(t.shape)) for t in weights) // 2 - 64
    assert int4.int4_top1_agreement >= 0.5  # the same sums; requantized a last bit apart
    with pytest.raises(InputError, match="packs weights INT4 .* give ethos-u55-128 the int8 file"):
        deploy.convert(packed, "ethos-u55-128")
    # TFLite Micro equals LiteRT's reference kernels; XNNPack may break a tie on one example.
    assert abs(tflm.micro_top1_agreement - tflm.top1_agreement) <= 1 / 16
    _, npu = deploy.convert(model, "ethos-u55-128", calibration=calibration, sample=sample)
    assert npu.cpu_ops == 0 and npu.npu_ops > 0
    # Random signs do not compress below a bit; 8-channel layers carry their scales on top.
    assert 1 < npu.bits_per_binary_weight < 8


def test_qat_of_a_binary_net_keeps_its_codes_and_converts_against_itself(tmp_path):
    """quantize_model lowers the binary layers; training moves the folded BN around fixed ±α
    kernels (the steps train through their quantizers' straight-through gradient); the trained
    QAT model, saved and loaded, converts with its own ranges and agrees with its file."""
    from effkeras import qat, saving

    rng = np.random.default_rng(2)
    calibration = rng.uniform(0, 255, (64, 8, 8, 3)).astype(np.float32)
    model = qat.quantize_model(every_kind(), calibration)
    fixed = [layer for layer in model.layers if getattr(layer, "fixed_kernel", False)]
    assert len(fixed) == 6
    trainable = {id(w) for w in model.trainable_weights}
    assert not any(id(layer.kernel) in trainable for layer in fixed)
    assert all(id(layer.gamma) in trainable for layer in fixed if layer.batch_norm_epsilon)
    kernels = [layer.kernel.numpy().copy() for layer in fixed]
    gammas = [layer.gamma.numpy().copy() for layer in fixed if layer.batch_norm_epsilon]
    model.compile(
        keras.optimizers.SGD(0.1),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        run_eagerly=True,
    )
    model.fit(calibration, rng.integers(0, 10, 64), batch_size=16, epochs=1, verbose=0)
    for layer, kernel in zip(fixed, kernels):
        np.testing.assert_array_equal(layer.kernel.numpy(), kernel)
    moved = [layer.gamma.numpy() for layer in fixed if layer.batch_norm_epsilon]
    assert any(np.abs(a - b).max() > 1e-4 for a, b in zip(moved, gammas))

    model.save(tmp_path / "qat.keras")
    loaded = saving.load_model(tmp_path / "qat.keras")
    assert sum(getattr(layer, "fixed_kernel", False) for layer in loaded.layers) == 6
    sample = rng.uniform(0, 255, (32, 8, 8, 3)).astype(np.float32)
    flatbuffer, report = deploy.convert(loaded, "int8", sample=sample)
    assert report.binary_layers == 6 and report.exact_steps == 7 and report.max_op_lsb <= 1
    assert report.top1_agreement >= 31 / 32 and report.float_ops == ()
    weights = [
        np.frombuffer(op.inputs[1].data, np.int8)
        for op in operators(flatbuffer)
        if op.type in ("CONV_2D", "DEPTHWISE_CONV_2D") and "/recu_1/" in op.outputs[0].name
    ]
    assert weights and set(np.abs(weights[0]).tolist()) == {127}
