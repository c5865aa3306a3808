"""Quantized layers: forward equals a direct numpy computation, one-padding, .keras round trip."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from effkeras import quantizers
from effkeras.layers import QuantConv2D, QuantDense, QuantDepthwiseConv2D, QuantSeparableConv2D
from effkeras.layers.quantized import same_padding

RNG = np.random.default_rng(0)


def _sign(x):
    return np.where(x >= 0, 1.0, -1.0).astype(np.float32)


def _conv_valid(x, kernel, stride=1):
    """NHWC x HWIO valid convolution in numpy."""
    kh, kw = kernel.shape[:2]
    patches = np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(1, 2))
    patches = patches[:, ::stride, ::stride]  # (N, H', W', C, kh, kw)
    return np.einsum("nhwcij,ijco->nhwo", patches, kernel)


def _depthwise_valid(x, kernel, stride=1):
    """NHWC x (kh, kw, C, 1) depthwise valid convolution in numpy."""
    kh, kw = kernel.shape[:2]
    patches = np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(1, 2))
    return np.einsum("nhwcij,ijc->nhwc", patches[:, ::stride, ::stride], kernel[..., 0])


def _pad(x, kernel, stride, value):
    """x padded like TF's SAME (the extra row/column goes bottom/right) with `value`."""
    pads = []
    for size in x.shape[1:3]:
        total = max((-(-size // stride) - 1) * stride + kernel - size, 0)
        pads.append((total // 2, total - total // 2))
    return np.pad(x, [(0, 0), *pads, (0, 0)], constant_values=value)


def _random_layer_weights(layer):
    for weight in layer.weights:
        weight.assign(RNG.normal(0, 0.5, weight.shape).astype(np.float32))


def test_same_padding_geometry():
    assert same_padding(8, 3, 1, 1) == (1, 1)
    assert same_padding(8, 3, 2, 1) == (0, 1)  # TF SAME pads bottom/right on even inputs
    assert same_padding(7, 3, 2, 1) == (1, 1)
    assert same_padding(8, 3, 1, 2) == (2, 2)
    assert same_padding(5, 1, 2, 1) == (0, 0)


@pytest.mark.parametrize("stride,size", [(1, 8), (2, 8), (2, 7)])
@pytest.mark.parametrize("pad_values", [0.0, 1.0])
def test_conv2d_equals_numpy(stride, size, pad_values):
    x = RNG.normal(size=(2, size, size, 5)).astype(np.float32)
    layer = QuantConv2D(
        6,
        3,
        strides=stride,
        padding="same",
        pad_values=pad_values,
        input_quantizer="ste_sign",
        kernel_quantizer="ste_sign",
        kernel_constraint="weight_clip",
        activation="relu",
    )
    layer.build(x.shape)
    _random_layer_weights(layer)
    y = layer(x).numpy()
    padded = _pad(_sign(x), 3, stride, pad_values)
    expected = _conv_valid(padded, _sign(layer.kernel.numpy()), stride) + layer.bias.numpy()
    np.testing.assert_allclose(y, np.maximum(expected, 0), rtol=1e-5, atol=1e-5)


def test_one_padding_differs_from_zero_padding_only_at_borders():
    x = RNG.normal(size=(1, 8, 8, 4)).astype(np.float32)
    outputs = []
    for pad_values in (0.0, 1.0):
        layer = QuantConv2D(
            3,
            3,
            padding="same",
            pad_values=pad_values,
            input_quantizer="ste_sign",
            kernel_quantizer="ste_sign",
            kernel_initializer="ones",
            use_bias=False,
        )
        outputs.append(layer(x).numpy())
    difference = outputs[1] - outputs[0]
    np.testing.assert_array_equal(difference[:, 1:-1, 1:-1], 0)
    # all-ones kernel: each padded tap adds +1 per input channel (4 channels)
    np.testing.assert_array_equal(difference[:, 0, 1:-1], 3 * 4)
    np.testing.assert_array_equal(difference[:, 0, 0], 5 * 4)


def test_one_padding_graph_is_lce_same_one_pattern():
    """sign -> PadV2(1.0) -> VALID Conv2D, nothing in between (LCE's converter patterns)."""
    layer = QuantConv2D(
        4,
        3,
        strides=2,
        padding="same",
        pad_values=1.0,
        input_quantizer="ste_sign",
        kernel_quantizer="ste_sign",
    )
    layer.build((1, 8, 8, 4))
    graph = (
        tf.function(layer.call).get_concrete_function(tf.TensorSpec([1, 8, 8, 4], tf.float32)).graph
    )
    conv = next(op for op in graph.get_operations() if op.type == "Conv2D")
    assert conv.get_attr("padding") == b"VALID"
    pad = conv.inputs[0].op
    assert pad.type == "PadV2"
    select = pad.inputs[0].op
    while select.type in ("IdentityN", "Identity"):  # custom_gradient's; LCE removes these
        select = select.inputs[0].op
    assert select.type == "SelectV2"
    paddings = tf.get_static_value(pad.inputs[1])
    np.testing.assert_array_equal(paddings, [[0, 0], [0, 1], [0, 1], [0, 0]])
    assert tf.get_static_value(pad.inputs[2]) == 1.0


@pytest.mark.parametrize("size", [7, 8])
def test_one_padding_with_unknown_spatial_size(size):
    layer = QuantConv2D(
        4,
        3,
        strides=2,
        padding="same",
        pad_values=1.0,
        input_quantizer="ste_sign",
        kernel_quantizer="ste_sign",
    )
    x = RNG.normal(size=(1, size, size, 4)).astype(np.float32)
    expected = layer(x).numpy()
    traced = tf.function(layer, input_signature=[tf.TensorSpec([None, None, None, 4])])
    np.testing.assert_array_equal(traced(x), expected)


@pytest.mark.parametrize("pad_values", [0.0, 1.0])
def test_depthwise_equals_numpy(pad_values):
    x = RNG.normal(size=(2, 7, 7, 3)).astype(np.float32)
    layer = QuantDepthwiseConv2D(
        3,
        strides=2,
        padding="same",
        pad_values=pad_values,
        input_quantizer="ste_sign",
        depthwise_quantizer="ste_sign",
        depthwise_constraint="weight_clip",
    )
    layer.build(x.shape)
    _random_layer_weights(layer)
    padded = _pad(_sign(x), 3, 2, pad_values)
    expected = _depthwise_valid(padded, _sign(layer.kernel.numpy()), 2) + layer.bias.numpy()
    np.testing.assert_allclose(layer(x), expected, rtol=1e-5, atol=1e-5)
    assert layer.kernel_quantizer.bits == 1  # what effkeras.graph.summary reads


@pytest.mark.parametrize("pad_values", [0.0, 1.0])
def test_separable_equals_numpy(pad_values):
    x = RNG.normal(size=(2, 6, 6, 3)).astype(np.float32)
    layer = QuantSeparableConv2D(
        4,
        3,
        padding="same",
        pad_values=pad_values,
        input_quantizer="ste_sign",
        depthwise_quantizer="ste_sign",
        pointwise_quantizer="magnitude_aware_sign",
    )
    layer.build(x.shape)
    _random_layer_weights(layer)
    pointwise = layer.pointwise_kernel.numpy()
    pointwise = _sign(pointwise) * np.abs(pointwise).mean(axis=(0, 1, 2))
    depthwise = _depthwise_valid(
        _pad(_sign(x), 3, 1, pad_values), _sign(layer.depthwise_kernel.numpy())
    )
    expected = _conv_valid(depthwise, pointwise) + layer.bias.numpy()
    np.testing.assert_allclose(layer(x), expected, rtol=1e-5, atol=1e-5)


def test_dense_equals_numpy():
    x = RNG.normal(size=(3, 5)).astype(np.float32)
    layer = QuantDense(
        4, input_quantizer="approx_sign", kernel_quantizer="ste_sign", activation="relu"
    )
    layer.build(x.shape)
    _random_layer_weights(layer)
    expected = np.maximum(_sign(x) @ _sign(layer.kernel.numpy()) + layer.bias.numpy(), 0)
    np.testing.assert_allclose(layer(x), expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("padding", ["same", "valid"])
def test_without_quantizers_equals_keras(padding):
    x = RNG.normal(size=(2, 8, 8, 3)).astype(np.float32)
    pairs = [
        (QuantConv2D(4, 3, strides=2, padding=padding), keras.layers.Conv2D(4, 3, 2, padding)),
        (
            QuantDepthwiseConv2D(3, padding=padding),
            keras.layers.DepthwiseConv2D(3, padding=padding),
        ),
        (
            QuantSeparableConv2D(4, 3, padding=padding),
            keras.layers.SeparableConv2D(4, 3, padding=padding),
        ),
        (QuantDense(4), keras.layers.Dense(4)),
    ]
    for ours, theirs in pairs:
        ours.build(x.shape)
        theirs.build(x.shape)
        _random_layer_weights(ours)
        theirs.set_weights(ours.get_weights())
        np.testing.assert_allclose(ours(x), theirs(x), rtol=1e-6, atol=1e-6)


def test_training_step_clips_latent_weights_and_zeroes_clipped_gradients():
    layer = QuantConv2D(
        4,
        3,
        padding="same",
        pad_values=1.0,
        input_quantizer="ste_sign",
        kernel_quantizer=quantizers.SteSign(clip_value=0.5),
        kernel_constraint="weight_clip",
        use_bias=False,
    )
    x = RNG.normal(size=(2, 6, 6, 3)).astype(np.float32)
    layer.build(x.shape)
    layer.kernel.assign(RNG.uniform(-1, 1, layer.kernel.shape).astype(np.float32))
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(layer(x) ** 2)
    grad = tape.gradient(loss, layer.kernel.value).numpy()
    outside = np.abs(layer.kernel.numpy()) > 0.5
    assert np.all(grad[outside] == 0) and np.any(grad[~outside] != 0)

    model = keras.Sequential([keras.Input((6, 6, 3)), layer, keras.layers.Flatten()])
    layer.kernel.assign(RNG.uniform(-3, 3, layer.kernel.shape).astype(np.float32))
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    model.fit(x, np.zeros((2, 144), np.float32), epochs=1, verbose=0)
    assert np.abs(layer.kernel.numpy()).max() <= 1.0


def test_keras_file_round_trip(tmp_path):
    inputs = keras.Input((8, 8, 3))
    x = QuantConv2D(
        8,
        3,
        strides=2,
        padding="same",
        pad_values=1.0,
        name="conv",
        input_quantizer=quantizers.SteSign(1.25),
        kernel_quantizer="ste_sign",
        kernel_constraint="weight_clip",
    )(inputs)
    x = QuantDepthwiseConv2D(
        3,
        padding="same",
        pad_values=1.0,
        name="depthwise",
        input_quantizer="approx_sign",
        depthwise_quantizer="ste_sign",
        depthwise_constraint="weight_clip",
    )(x)
    x = QuantSeparableConv2D(
        8,
        3,
        padding="same",
        name="separable",
        input_quantizer="swish_sign",
        depthwise_quantizer="ste_sign",
        pointwise_quantizer="ste_sign",
        pointwise_constraint="weight_clip",
    )(x)
    x = keras.layers.Flatten()(x)
    outputs = QuantDense(
        5, name="dense", input_quantizer="ste_unsigned", kernel_quantizer="magnitude_aware_sign"
    )(x)
    model = keras.Model(inputs, outputs)
    for layer in model.layers:
        _random_layer_weights(layer)
    model.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras")
    data = RNG.normal(size=(2, 8, 8, 3)).astype(np.float32)
    np.testing.assert_array_equal(model(data), loaded(data))
    for name in ("conv", "depthwise", "separable", "dense"):
        assert loaded.get_layer(name).get_config() == model.get_layer(name).get_config()
    config = loaded.get_layer("conv").get_config()
    assert config["pad_values"] == 1.0
    assert config["input_quantizer"]["registered_name"] == "effkeras>SteSign"
    assert config["input_quantizer"]["config"] == {"clip_value": 1.25}
    assert config["kernel_constraint"]["registered_name"] == "effkeras>WeightClip"
    assert loaded.get_layer("separable").pointwise_constraint.clip_value == 1.0
