"""int8 quantization-aware training: the rewrite, the quantizers, the file it converts to."""

import types

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import assert_one_error_line, run_app
from keras import layers

from effkeras import deploy, models, training
from effkeras.deploy import int8_qat as qat_deploy
from effkeras.deploy import runtime
from effkeras.deploy.converter import to_flatbuffer
from effkeras.deploy.flatbuffer import io_tensors, op_census, operators
from effkeras.errors import InputError
from effkeras.layers.qat import QATHardSwish, hard_swish_table
from effkeras.qat import (
    FakeQuant,
    FoldedBatchNorm,
    QATConv2D,
    freeze_hard_swish,
    input_quantizer,
    is_qat_model,
    output_quantizers,
    quantize_model,
    set_mode,
    snap_biases,
    unobserved,
)
from effkeras.testing import set_batch_norm_statistics
from effkeras.training.stages import Qat


def small_net(input_shape=(16, 16, 3)):
    """Every pattern quantize_model folds: Rescaling -> conv, conv+BN+ReLU, depthwise+BN+ReLU6,
    conv+BN into an Add+ReLU, same-code ops, a conv with its own ReLU, mean, Dense logits."""
    inputs = keras.Input(input_shape, name="image")
    x = layers.Rescaling(1 / 255, name="rescale")(inputs)
    x = layers.Conv2D(8, 3, padding="same", use_bias=False, name="stem")(x)
    x = layers.ReLU(name="stem_relu")(layers.BatchNormalization(name="stem_bn")(x))
    y = layers.DepthwiseConv2D(3, padding="same", use_bias=False, name="dw")(x)
    y = layers.ReLU(6.0, name="dw_relu")(layers.BatchNormalization(name="dw_bn")(y))
    y = layers.BatchNormalization(name="pw_bn")(layers.Conv2D(8, 1, name="pw")(y))
    x = layers.ReLU(name="add_relu")(layers.Add(name="add")([x, y]))
    x = layers.MaxPooling2D(2, name="pool")(layers.ZeroPadding2D(1, name="pad")(x))
    x = layers.Conv2D(16, 3, strides=2, activation="relu", name="down")(x)
    x = layers.GlobalAveragePooling2D(name="mean")(x)
    model = keras.Model(inputs, layers.Dense(10, name="logits")(x), name="small_net")
    # trained-looking BN statistics, so that folding is not trivial
    return set_batch_norm_statistics(model)


def images(count, shape=(16, 16, 3), seed=0):
    return np.random.default_rng(seed).integers(0, 256, (count, *shape)).astype(np.float32)


@pytest.fixture(scope="module")
def qat_net():
    model = small_net()
    return model, quantize_model(model, images(64))


def test_rewrite_folds_bn_and_relu_and_quantizes_where_tflite_does(qat_net):
    model, qat = qat_net
    kinds = [type(layer).__name__ for layer in qat.layers]
    assert kinds.count("QATConv2D") == 3 and kinds.count("QATDepthwiseConv2D") == 1
    assert kinds.count("QATDense") == 1
    assert not any(
        isinstance(layer, (layers.BatchNormalization, layers.Rescaling, layers.ReLU))
        for layer in qat.layers
    )
    by_name = {layer.name: layer for layer in qat.layers}
    assert by_name["stem"].batch_norm_epsilon == model.get_layer("stem_bn").epsilon
    assert keras.activations.serialize(by_name["dw"].activation) == "relu6"
    assert by_name["down"].batch_norm_epsilon is None and by_name["down"].use_bias
    # One quantization point per int8 op output: input, stem, dw, pw, add(+relu), down, mean,
    # logits; none after the padding and the max pooling (their codes are their input's).
    quantizers = [layer.name for layer in qat.layers if isinstance(layer, FakeQuant)]
    assert quantizers == [
        "image_quant",
        "stem_quant",
        "dw_quant",
        "pw_quant",
        "add_quant",
        "down_quant",
        "mean_quant",
        "logits_quant",
    ]
    assert by_name["image_quant"].fixed_range == (0.0, 255.0)
    # Its rounding off, the QAT model is the float model (the folded Rescaling and BNs included).
    x = images(4, seed=1)
    set_mode(qat, "float")
    try:
        np.testing.assert_allclose(qat(x), model(x), rtol=1e-5, atol=1e-5)
    finally:
        set_mode(qat, "quantize")


def test_weights_are_int8_per_output_channel_symmetric(qat_net):
    _, qat = qat_net
    for layer in qat.layers:
        if not isinstance(layer, FoldedBatchNorm):
            continue
        kernel = keras.ops.convert_to_numpy(layer.quantize_weights(layer.folded()[0]))
        channels = kernel.reshape(-1, layer.output_channels())
        codes = channels / layer.weight_scales()
        np.testing.assert_allclose(codes, np.round(codes), atol=2e-3)
        assert np.abs(np.round(codes)).max() == 127  # each channel's largest weight is code ±127
        assert layer.weight_scales().shape == (layer.output_channels(),)


def test_activation_ranges_calibrate_then_follow_a_moving_average():
    quantizer = FakeQuant(ema_decay=0.9)
    quantizer.build((None, 4))
    x = np.array([[-1.0, 0.5, 2.0, 3.0]], np.float32)
    set_mode(keras.Sequential([keras.Input((4,)), quantizer]), "calibrate")
    np.testing.assert_array_equal(quantizer(x), x)  # calibrating: float outputs
    quantizer(x * 2)
    assert (float(quantizer.range_min), float(quantizer.range_max)) == (-2.0, 6.0)  # min/max seen
    quantizer.mode = "quantize"
    quantizer(np.array([[0.0, 10.0]], np.float32), training=True)
    np.testing.assert_allclose(
        [float(quantizer.range_min), float(quantizer.range_max)],
        [0.9 * -2.0, 0.9 * 6.0 + 0.1 * 10.0],
    )
    before = float(quantizer.range_max)
    quantizer(np.array([[0.0, 100.0]], np.float32), training=True, observe=False)
    assert float(quantizer.range_max) == before  # a re-used quantizer does not move its range
    scale, zero_point = quantizer.quantization()
    y = keras.ops.convert_to_numpy(quantizer(np.linspace(-3, 8, 50, dtype=np.float32)))
    codes = y / scale + zero_point
    np.testing.assert_allclose(codes, np.round(codes), atol=1e-3)
    assert -128 <= codes.min() and codes.max() <= 127


def test_int8_file_reads_the_qat_ranges_and_matches_keras_to_one_step(qat_net):
    model, qat = qat_net
    sample = images(32, seed=2)
    flatbuffer, report = deploy.convert(qat, "int8", sample=sample)
    assert report.qat and report.calibration == "QAT ranges (no calibration)"
    assert report.max_op_lsb <= 1 and report.max_lsb <= 1 and report.top1_agreement >= 0.9
    assert report.quantization_points >= 7  # stem, dw, pw, add, down, mean, logits at least
    # The same ops as post-training quantization of the float model: same quantization points.
    _, ptq = deploy.convert(model, "int8", calibration=images(64), sample=sample)
    assert report.op_census == ptq.op_census
    _, outputs = io_tensors(flatbuffer)
    scale, zero_point = output_quantizers(qat)[0].quantization()
    assert outputs[0].scale[0] == pytest.approx(scale, rel=1e-6)
    assert outputs[0].zero_point[0] == zero_point
    convs = [op for op in operators(flatbuffer) if op.type == "CONV_2D"]
    keras_scales = sorted(
        tuple(np.round(layer.weight_scales(), 9))
        for layer in qat.layers
        if isinstance(layer, QATConv2D)
    )
    file_scales = sorted(tuple(np.round(op.inputs[1].scale, 9)) for op in convs)
    np.testing.assert_allclose(np.concatenate(file_scales), np.concatenate(keras_scales), rtol=1e-5)
    actual = runtime.LiteRT(flatbuffer).predict(sample)
    np.testing.assert_allclose(actual, report_reference(qat, sample), atol=scale * 1.001)


def test_hard_swish_and_a_lone_batch_norm_convert_op_by_op_within_one_step(tmp_path):
    inputs = keras.Input((16, 16, 1), name="image")
    x = layers.Rescaling(1 / 127.5, offset=-1, name="rescale")(inputs)  # one depthwise op
    x = layers.BatchNormalization(name="bn")(layers.Conv2D(8, 3, padding="same", name="c")(x))
    x = layers.Activation("hard_swish", name="act")(x)
    y = layers.DepthwiseConv2D(3, padding="same", name="dw")(x)
    x = layers.BatchNormalization(name="lone_bn")(layers.Add(name="add")([x, y]))  # MUL, ADD
    x = layers.Activation("hard_swish", name="act2")(x)
    model = keras.Model(
        inputs, layers.Dense(4, name="logits")(layers.GlobalAveragePooling2D(name="mean")(x))
    )
    qat = quantize_model(model, images(64, (16, 16, 1)))
    assert [type(layer).__name__ for layer in qat.layers].count("ChannelAffine") == 2
    sample = images(16, (16, 16, 1), seed=5)
    _, report = deploy.convert(qat, "int8", sample=sample)
    _, ptq = deploy.convert(model, "int8", calibration=images(64, (16, 16, 1)), sample=sample)
    # The same ops, but the offset Rescaling: one depthwise op where PTQ has a MUL and an ADD.
    expected = {
        **ptq.op_census,
        "MUL": ptq.op_census["MUL"] - 1,
        "ADD": ptq.op_census["ADD"] - 1,
        "DEPTHWISE_CONV_2D": ptq.op_census["DEPTHWISE_CONV_2D"] + 1,
    }
    assert report.op_census == expected
    assert report.op_census["HARD_SWISH"] == 2 and report.op_census["MUL"] == 1
    assert report.max_op_lsb <= 1 and report.quantization_points >= 8
    # The QAT model computes TFLite's fixed-point hard-swish, not the float function rounded.
    frozen = [layer for layer in qat.layers if isinstance(layer, QATHardSwish)]
    assert len(frozen) == 2 and all(layer.grids is None for layer in frozen)
    # A QAT run ends by freezing them to the kernel on their grids (and snapping biases).
    Qat.trained(None, types.SimpleNamespace(student=qat))
    for layer in frozen:
        assert layer.grids == (
            input_quantizer(layer).quantization(),
            qat.get_layer(f"{layer.name}_quant").quantization(),
        )
    assert freeze_hard_swish(qat) == 2
    # Frozen, inference reads the kernel's table (training computes the float function); the
    # grids are saved with the model.
    x = qat.get_layer("c_quant").output
    probe = keras.Model(qat.input, [qat.get_layer("act")(x), qat.get_layer("act_quant").output])
    swish, quantized = (np.asarray(v) for v in probe(sample))
    np.testing.assert_allclose(swish, quantized, atol=qat.get_layer("act").grids[1][0] / 100)
    assert not np.array_equal(probe(sample, training=True)[0], swish)
    qat.save(tmp_path / "qat.keras")
    loaded = keras.models.load_model(tmp_path / "qat.keras")
    assert loaded.get_layer("act2").grids == qat.get_layer("act2").grids
    np.testing.assert_array_equal(loaded.predict(sample, verbose=0), qat.predict(sample, verbose=0))


def test_hard_swish_table_is_tflites_int8_kernel_code_for_code():
    rng = np.random.default_rng(0)
    # Input ranges from 0.02 wide (the kernel's relu-ish shift right) to 32 (shift left).
    lows = np.concatenate([[-0.01, -0.2, -0.5, -1.0], -rng.uniform(0.2, 12, 19)])
    highs = np.concatenate([[0.01, 0.3, 0.9, 1.5], rng.uniform(0.2, 20, 19)])
    grids = [((0.05, -10), (0.04, -120))] + [
        (
            FakeQuant(fixed_range=(low, high)).quantization(),
            FakeQuant(
                fixed_range=(-0.375 * rng.uniform(0, 1.2), high * rng.uniform(0.3, 1.5))
            ).quantization(),
        )
        for low, high in zip(lows, highs)
    ]
    inputs, outputs = [], []
    for i, (x_q, y_q) in enumerate(grids):  # one small file, a HARD_SWISH per pair of grids
        codes = keras.Input((256,), name=f"codes_{i:02d}")
        x = FakeQuant(fixed_range=code_range(x_q))(codes)
        y = layers.Activation("hard_swish")(x)
        outputs.append(FakeQuant(fixed_range=code_range(y_q), name=f"swish_{i:02d}")(y))
        inputs.append(codes)
    flatbuffer = to_flatbuffer(keras.Model(inputs, outputs), int8_io)
    assert op_census(operators(flatbuffer))["HARD_SWISH"] == len(grids)
    codes = [np.arange(-128, 128, dtype=np.int8)] * len(grids)
    ours = np.stack([hard_swish_table(*pair) for pair in grids])
    for kernels in (runtime.LiteRT(flatbuffer), runtime.LiteRT(flatbuffer, kernels="reference")):
        np.testing.assert_array_equal(np.stack(kernels.run_one(codes)), ours)
    micro = runtime.TFLiteMicro(flatbuffer)  # its outputs in the file's order
    order = [
        min(range(len(grids)), key=lambda i: abs(grids[i][1][0] - out["quantization"][0]))
        for out in micro.outputs
    ]
    assert sorted(order) == list(range(len(grids)))
    np.testing.assert_array_equal(np.stack(micro.run_one(codes)), ours[order])
    # Not the float function rounded: a step or two off on some codes.
    (x_scale, x_zero), (y_scale, y_zero) = grids[0]
    x = (np.arange(-128, 128) - x_zero) * x_scale
    rounded = np.clip(np.round(x * np.clip(x + 3, 0, 6) / 6 / y_scale) + y_zero, -128, 127)
    assert 0 < np.abs(ours[0] - rounded).max() <= 3


def int8_io(converter):
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.inference_input_type = converter.inference_output_type = tf.int8


def code_range(quantization):
    """The float range whose fake-quant has exactly this (scale, zero point)."""
    scale, zero_point = quantization
    return (-128 - zero_point) * scale, (127 - zero_point) * scale


def test_resmlp_psa_qat_keeps_exact_int8_tables_and_a_layer_scale_as_mul_add():
    model = models.get("resmlp_psa_h025", input_shape=(32, 32, 3), num_classes=10)
    qat = quantize_model(model, images(32, (32, 32, 3)))
    kinds = [type(layer).__name__ for layer in qat.layers]
    assert kinds.count("LerpTable") == 8  # frozen: QAT trains the layers around the tables
    assert kinds.count("ChannelAffine") == 2 * 8 + 2 * 5  # 8 LayerScales, 4 + 1 lone BNs
    _, report = deploy.convert(qat, "int8", sample=images(8, (32, 32, 3), seed=6))
    assert report.int8_tables == 8 and report.op_census["GATHER"] == 8
    assert report.max_op_lsb <= 1 and not report.float_ops


def test_a_dead_channel_gets_a_weight_range_its_bias_fits_in_and_converts():
    inputs = keras.Input((8, 8, 4), name="image")
    x = layers.DepthwiseConv2D(3, padding="same", name="dw")(inputs)
    model = keras.Model(
        inputs,
        layers.Dense(2, name="logits")(
            layers.GlobalAveragePooling2D(name="mean")(layers.ReLU(6.0, name="relu")(x))
        ),
    )
    kernel, bias = model.get_layer("dw").get_weights()
    kernel[..., 0, 0] = 1e-30  # a channel decayed to nothing, with a bias
    bias[0] = 0.8
    model.get_layer("dw").set_weights([kernel, bias])
    qat = quantize_model(model, images(16, (8, 8, 4)))
    snapped = snap_biases(report_clone(qat))
    floor = snapped.get_layer("dw").weight_floor
    input_scale = input_quantizer(snapped.get_layer("dw")).quantization()[0]
    assert floor[0] == pytest.approx(127 * 0.8 / (input_scale * 2**24), rel=1e-4)
    assert np.all(floor[1:] == np.abs(kernel[..., 1:, 0]).reshape(-1, 3).max(axis=0))
    _, report = deploy.convert(qat, "int8", sample=images(8, (8, 8, 4), seed=7))
    assert report.max_op_lsb <= 1
    assert keras.models.clone_model(snapped).get_layer("dw").weight_floor is not None


def test_sigmoid_tanh_gelu_take_the_output_scales_of_tflites_kernels():
    inputs = keras.Input((8, 8, 3), name="image")
    a = layers.Activation("gelu", name="g")(layers.Conv2D(4, 3, padding="same", name="a")(inputs))
    b = layers.Activation("sigmoid", name="s")(layers.Conv2D(4, 1, name="b")(inputs))
    x = layers.Activation("tanh", name="t")(layers.Add(name="add")([a, b]))
    model = keras.Model(
        inputs, layers.Dense(3, name="logits")(layers.GlobalAveragePooling2D(name="mean")(x))
    )
    qat = quantize_model(model, images(32, (8, 8, 3)))
    assert qat.get_layer("s_quant").quantization() == pytest.approx((1 / 256, -128))
    assert qat.get_layer("t_quant").quantization() == pytest.approx((1 / 128, 0))
    _, report = deploy.convert(qat, "int8", sample=images(16, (8, 8, 3), seed=8))
    # No requantizing QUANTIZE after LOGISTIC or TANH: their quantization points are TFLite's.
    assert report.op_census == {
        "ADD": 1,
        "CONV_2D": 2,
        "FULLY_CONNECTED": 1,
        "GELU": 1,
        "LOGISTIC": 1,
        "MEAN": 1,
        "TANH": 1,
    }
    assert report.max_op_lsb <= 1


def test_a_symmetric_range_rounds_its_zero_point_as_the_converter_does():
    """[-1, 1] puts its zero point half-way between two codes: Keras' fake-quant, the reported
    quantization and the converter must break that tie alike (nudged_range), or every clamped
    element is a step off."""
    from effkeras.layers.qat import fake_quant

    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3), name="image")
    x = layers.Rescaling(1 / 64, name="rescale")(inputs)
    x = layers.Conv2D(4, 3, padding="same", name="a")(x)
    model = keras.Model(
        inputs, layers.Dense(3, name="logits")(layers.GlobalAveragePooling2D(name="mean")(x))
    )
    qat = quantize_model(model, images(32, (8, 8, 3)))
    tie = qat.get_layer("a_quant")  # clamps the conv's outputs, most beyond ±1
    tie.range_min.assign(-1.0)
    tie.range_max.assign(1.0)
    scale, zero_point = tie.quantization()
    ends = keras.ops.convert_to_numpy(fake_quant(np.array([-9.0, 9.0], "f4"), -1.0, 1.0))
    np.testing.assert_allclose(ends, [(-128 - zero_point) * scale, (127 - zero_point) * scale])
    sample = images(8, (8, 8, 3), seed=3)
    flatbuffer, _ = deploy.convert(qat, "int8", sample=sample)
    worst_by = {}
    qat_deploy.op_steps(snap_biases(report_clone(qat)), flatbuffer, sample, worst_by)
    assert worst_by["a_quant"] == 0, worst_by


def report_clone(qat):
    copy = keras.models.clone_model(qat)
    copy.set_weights(qat.get_weights())
    return copy


def report_reference(qat, sample):
    """What the int8 target compares with: the QAT model with its biases on TFLite's grid."""
    return snap_biases(report_clone(qat)).predict(sample, verbose=0)


def test_qat_model_round_trips_with_ranges_and_folded_bn(qat_net, tmp_path):
    _, qat = qat_net
    path = tmp_path / "qat.keras"
    qat.save(path)
    loaded = keras.models.load_model(path)
    for before, after in zip(qat.weights, loaded.weights):
        assert before.path == after.path
        np.testing.assert_array_equal(before.numpy(), after.numpy())
    assert {w.path.split("/")[-1] for w in loaded.get_layer("stem").weights} == {
        "kernel",
        "gamma",
        "beta",
        "moving_mean",
        "moving_variance",
    }
    x = images(4, seed=3)
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), qat.predict(x, verbose=0))
    assert is_qat_model(loaded)


def test_what_cannot_be_quantized_is_named():
    inputs = keras.Input((8, 8, 3))
    x = layers.Conv2D(4, 3, activation="swish", name="swish_conv")(inputs)
    x = layers.LayerNormalization(name="norm")(x)
    x = layers.Concatenate(name="cat")([x, x])
    model = keras.Model(inputs, layers.Dense(2)(layers.Flatten()(x)))
    with pytest.raises(
        InputError,
        match=r"swish_conv \(Conv2D with activation silu.*norm "
        r"\(LayerNormalization\), cat \(Concatenate\)",
    ):
        quantize_model(model)
    with pytest.raises(InputError, match="already a QAT model"):
        quantize_model(quantize_model(small_net()))
    two_exits = keras.Model(inputs, [layers.Dense(2)(layers.Flatten()(inputs))] * 2)
    with pytest.raises(InputError, match="one image input and one logits output"):
        quantize_model(two_exits)


def test_a_gray_qat_model_gets_the_app_head_and_float_targets_refuse_it():
    """The app file of a one-channel QAT model: RGB pixels (uint8) through a quantized luma
    conv, then the model's own quantization points, probabilities out; checked op by op."""
    gray = (16, 16, 1)
    qat = quantize_model(small_net(gray), images(64, gray))
    sample = images(16, gray, seed=3)
    flatbuffer, report = deploy.convert(
        qat, "int8", sample=sample, io="uint8", outputs="probabilities", rgb_input=True
    )
    assert report.qat and report.rgb_input and report.max_op_lsb <= 1
    inputs, outputs = io_tensors(flatbuffer)
    assert (inputs[0].dtype, inputs[0].shape[-1]) == ("uint8", 3)
    assert (inputs[0].scale, inputs[0].zero_point) == ((1.0,), (0,))
    assert outputs[0].dtype == "float32"
    rgb = np.repeat(sample, 3, axis=-1)
    probabilities = runtime.LiteRT(flatbuffer).predict(rgb)
    np.testing.assert_allclose(probabilities.sum(-1), 1, atol=1e-5)
    expected = qat.predict(sample, verbose=0).argmax(-1)
    assert np.mean(probabilities.argmax(-1) == expected) >= 0.9
    for target in ("float", "float16", "arm"):
        with pytest.raises(InputError, match="QAT model.*int8 target"):
            deploy.convert(qat, target)
    assert deploy.default_target(model=qat, name="small_net") == "int8"  # not float


def test_an_uncalibrated_qat_model_does_not_convert():
    qat = quantize_model(small_net())
    assert unobserved(qat)[0] == "stem_quant"
    with pytest.raises(InputError, match="have no range yet.*calibrate"):
        deploy.convert(qat, "int8")


def test_resnet8_qat_runs_in_tflm_and_all_on_the_ethos_u55_npu():
    model = models.get("mlperf_tiny_resnet8", input_shape=(32, 32, 3), num_classes=10)
    qat = quantize_model(model, images(32, (32, 32, 3)))
    sample = images(8, (32, 32, 3), seed=4)
    _, tflm = deploy.convert(qat, "tflm", sample=sample)
    assert tflm.qat and tflm.arena_bytes > 0 and tflm.max_op_lsb <= 1
    _, npu = deploy.convert(qat, "ethos-u55-128", sample=sample)
    assert npu.cpu_ops == 0 and npu.npu_ops > 0


def test_train_qat_from_a_float_run_and_resume(tmp_path):
    float_dir, qat_dir = tmp_path / "float", tmp_path / "qat"
    common = dict(
        dataset="synthetic",
        input_shape=(16, 16, 3),
        batch_size=16,
        steps_per_epoch=2,
        run_eagerly=True,  # a few steps: tracing would take most of the time
        verbose=0,
    )
    training.train(
        training.TrainConfig(
            model="mlperf_tiny_resnet8", epochs=1, output_dir=str(float_dir), **common
        )
    )
    float_model = str(float_dir / "model.keras")
    qat_config = dict(
        model=None,
        qat=True,
        init_from=float_model,
        output_dir=str(qat_dir),
        **{k: v for k, v in common.items() if k != "input_shape"},
    )
    first = training.train(training.TrainConfig(epochs=1, **qat_config))
    assert first["model"] == "mlperf_tiny_resnet8" and first["epochs"] == 1
    second = training.train(training.TrainConfig(epochs=2, **qat_config))
    assert [h["epoch"] for h in second["history"]] == [1, 2]
    trained = keras.models.load_model(qat_dir / "model.keras")
    assert is_qat_model(trained) and not unobserved(trained)
    # Its folded biases are on the int8 file's grid already: snapping them moves nothing.
    weights = trained.get_weights()
    snap_biases(trained)
    for before, after in zip(weights, trained.get_weights()):
        np.testing.assert_allclose(after, before, rtol=1e-6, atol=1e-8)  # float32 jitter
    assert int(keras.models.load_model(qat_dir / "checkpoint-2.keras").optimizer.iterations) == 4
    other = tmp_path / "other.keras"
    other.write_bytes((float_dir / "model.keras").read_bytes())
    with pytest.raises(InputError, match="holds a run from .*resume with --init_from"):
        training.train(training.TrainConfig(epochs=3, **{**qat_config, "init_from": str(other)}))
    with pytest.raises(InputError, match="already a QAT model"):
        training.train(
            training.TrainConfig(
                epochs=1,
                **{
                    **qat_config,
                    "init_from": str(qat_dir / "model.keras"),
                    "output_dir": str(tmp_path / "again"),
                },
            )
        )
    with pytest.raises(InputError, match="--model=resnet20, but .* holds mlperf_tiny_resnet8"):
        training.train(
            training.TrainConfig(
                epochs=1, **{**qat_config, "model": "resnet20", "output_dir": str(tmp_path / "x")}
            )
        )
    assert not (tmp_path / "x").exists()
    # The control: the same schedule in float, from the same model.
    control = {**qat_config, "qat": False, "finetune": True, "output_dir": str(tmp_path / "ft")}
    tuned = training.train(training.TrainConfig(epochs=1, **control))
    assert tuned["model"] == "mlperf_tiny_resnet8"
    assert not is_qat_model(keras.models.load_model(tmp_path / "ft" / "model.keras"))
    with pytest.raises(
        InputError, match="holds a float fine-tuning run: resume it with --finetune"
    ):
        training.train(
            training.TrainConfig(epochs=2, **{**qat_config, "output_dir": str(tmp_path / "ft")})
        )


def test_train_app_refuses_qat_flags_that_cannot_work(tmp_path):
    assert_one_error_line(
        run_app("apps.train", "--qat", "--dataset=synthetic", f"--output_dir={tmp_path}/a"),
        "--model is required",
    )
    assert_one_error_line(
        run_app(
            "apps.train",
            "--model=mlperf_tiny_resnet8",
            "--init_from=x.keras",
            "--dataset=synthetic",
            f"--output_dir={tmp_path}/b",
        ),
        "--init_from is the trained float model",
    )
    assert_one_error_line(
        run_app(
            "apps.train",
            "--qat",
            "--finetune",
            "--init_from=x.keras",
            "--dataset=synthetic",
            f"--output_dir={tmp_path}/d",
        ),
        "--qat and --finetune are two runs",
    )
    assert_one_error_line(
        run_app(
            "apps.train",
            "--qat",
            "--init_from=missing.keras",
            "--dataset=synthetic",
            f"--output_dir={tmp_path}/c",
        ),
        "missing.keras",
    )
