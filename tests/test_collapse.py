"""CollapsibleConv2D (RANs arXiv 2208.08562, SESR arXiv 2103.09404) and the collapse pass."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import layers

from effkeras import deploy
from effkeras.deploy.flatbuffer import op_census, operators
from effkeras.graph import summary
from effkeras.graph.passes.collapse import collapse
from effkeras.layers import CollapsibleConv2D

RNG = np.random.default_rng(0)


def images(shape, count=2):
    return RNG.uniform(0, 255, (count, *shape)).astype(np.float32)


def randomize_batch_norms(model):
    for layer in model.layers:
        if isinstance(layer, layers.BatchNormalization):
            c = layer.gamma.shape[0]
            layer.set_weights(
                [
                    RNG.uniform(0.5, 2.0, c),
                    RNG.normal(0, 1, c),
                    RNG.normal(0, 20, c),
                    RNG.uniform(100, 2000, c),
                ]
            )


def block_model(input_shape=(12, 12, 4)):
    """Expanded block + residual + BN (stride 1), expanded stride 2 + BN, plain + BN, ReLU
    between, and a plain block without BN at the end."""
    keras.utils.set_random_seed(1)
    inputs = keras.Input(input_shape)
    x = CollapsibleConv2D(4, expansion=4, residual=True, name="expanded_residual")(inputs)
    x = layers.ReLU()(layers.BatchNormalization(name="bn1")(x))
    x = CollapsibleConv2D(8, strides=2, expansion=2, name="expanded_stride2")(x)
    x = layers.ReLU()(layers.BatchNormalization(name="bn2")(x))
    x = CollapsibleConv2D(8, name="plain")(x)
    x = layers.BatchNormalization(name="bn3")(x)
    x = CollapsibleConv2D(6, kernel_size=5, residual=False, name="plain_no_bn")(x)
    model = keras.Model(inputs, layers.GlobalAveragePooling2D()(x), name="blocks")
    randomize_batch_norms(model)
    return model


def rel_diff(expected, actual):
    expected, actual = np.asarray(expected, np.float64), np.asarray(actual, np.float64)
    return np.max(np.abs(actual - expected)) / max(np.max(np.abs(expected)), 1e-12)


@pytest.fixture(scope="module")
def model():
    return block_model()


def test_collapse_is_exact_and_removes_blocks_and_their_batch_norms(model):
    collapsed, count = collapse(model)
    assert count == 4
    x = images((12, 12, 4))
    assert rel_diff(model(x), collapsed(x)) < 1e-5
    kinds = [type(layer) for layer in collapsed.layers]
    assert CollapsibleConv2D not in kinds
    assert kinds.count(layers.Conv2D) == 4
    assert not any(isinstance(layer, layers.BatchNormalization) for layer in collapsed.layers)
    conv = collapsed.get_layer("expanded_stride2")
    assert conv.strides == (2, 2) and conv.padding == "same" and conv.use_bias
    assert not collapsed.get_layer("plain_no_bn").use_bias
    assert collapsed.name == model.name


def test_model_without_blocks_is_returned_unchanged():
    inputs = keras.Input((8, 8, 3))
    plain = keras.Model(inputs, layers.Conv2D(2, 3)(inputs))
    assert collapse(plain) == (plain, 0)


def test_batch_norm_not_folded_when_block_output_is_read_twice():
    keras.utils.set_random_seed(2)
    inputs = keras.Input((8, 8, 4))
    y = CollapsibleConv2D(4, expansion=2, name="shared_out")(inputs)
    outputs = layers.Add()([layers.BatchNormalization()(y), y])
    model = keras.Model(inputs, outputs)
    randomize_batch_norms(model)
    collapsed, count = collapse(model)
    assert count == 1
    assert any(isinstance(layer, layers.BatchNormalization) for layer in collapsed.layers)
    x = images((8, 8, 4))
    assert rel_diff(model(x), collapsed(x)) < 1e-5


def test_float_conversion_has_one_conv_per_block(model):
    flatbuffer, report = deploy.convert(model, "float")
    census = op_census(operators(flatbuffer))
    assert census.get("CONV_2D") == 4
    assert report.collapsed_blocks == 4
    assert report.as_dict()["collapsed_blocks"] == 4
    assert "collapsed blocks:" in report.format()


def test_int8_conversion_has_one_conv_per_block():
    keras.utils.set_random_seed(3)
    inputs = keras.Input((8, 8, 4))
    x = CollapsibleConv2D(4, expansion=2, residual=True)(inputs)
    x = layers.ReLU()(layers.BatchNormalization()(x))
    x = CollapsibleConv2D(8, strides=2, expansion=2)(x)
    model = keras.Model(inputs, layers.GlobalAveragePooling2D()(x))
    randomize_batch_norms(model)
    flatbuffer, report = deploy.convert(model, "int8", calibration=images((8, 8, 4), 8))
    census = op_census(operators(flatbuffer))
    assert census.get("CONV_2D") == 2
    assert report.collapsed_blocks == 2


def test_gradients_reach_the_trained_weights():
    x = tf.constant(images((8, 8, 4)))
    for layer, names in (
        (CollapsibleConv2D(4, expansion=2, residual=True), ["expand_kernel", "project_kernel"]),
        (CollapsibleConv2D(6, strides=2), ["kernel"]),
    ):
        layer.build(x.shape)
        assert [w.path.split("/")[-1] for w in layer.trainable_weights] == names
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(tf.square(layer(x)))
        grads = tape.gradient(loss, layer.trainable_weights)
        assert all(g is not None and float(tf.reduce_max(tf.abs(g))) > 0 for g in grads)


@pytest.mark.parametrize("strides, residual", [(1, True), (1, False), (2, False)])
def test_collapsed_training_equals_the_expanded_convs(strides, residual):
    keras.utils.set_random_seed(4)
    layer = CollapsibleConv2D(5, strides=strides, expansion=3, residual=residual)
    cin = 5 if residual else 4
    x = RNG.normal(size=(2, 9, 9, cin)).astype(np.float32)
    y = keras.ops.convert_to_numpy(layer(x))
    assert layer.expand_kernel.shape == (3, 3, cin, 15)
    assert layer.project_kernel.shape == (1, 1, 15, 5)
    hidden = tf.nn.conv2d(x, layer.expand_kernel, strides, "SAME")
    expected = tf.nn.conv2d(hidden, layer.project_kernel, 1, "SAME").numpy()
    if residual:
        expected += x
    assert y.shape == expected.shape
    assert rel_diff(expected, y) < 1e-5
    np.testing.assert_allclose(
        layer.collapsed_kernel(), keras.ops.convert_to_numpy(layer.kernel), rtol=0, atol=0
    )


def test_summary_counts_one_conv_and_the_trained_params():
    inputs = keras.Input((8, 8, 4))
    model = keras.Model(inputs, CollapsibleConv2D(6, expansion=2, name="b")(inputs))
    (row,) = [r for r in summary.summarize(model) if r.name == "b"]
    assert row.macs == 8 * 8 * 6 * 3 * 3 * 4
    assert row.params == {32: 3 * 3 * 4 * 12 + 12 * 6}


def test_kernel_regularizer_reaches_each_trained_weight():
    for layer, count in (
        (CollapsibleConv2D(4, expansion=2, kernel_regularizer="l2"), 2),
        (CollapsibleConv2D(4, kernel_regularizer="l2"), 1),
    ):
        layer.build((None, 8, 8, 4))
        assert len(layer.losses) == count


def test_bad_inputs_say_what_to_do():
    with pytest.raises(ValueError, match="apply the activation after the block"):
        CollapsibleConv2D(4, activation="relu")
    CollapsibleConv2D(4, activation="linear")  # linear is fine
    with pytest.raises(ValueError, match="input channels == filters"):
        CollapsibleConv2D(8, residual=True).build((None, 8, 8, 4))
    with pytest.raises(ValueError, match="strides 1"):
        CollapsibleConv2D(4, strides=2, residual=True, expansion=2).build((None, 8, 8, 4))
    with pytest.raises(ValueError, match="expansion"):
        CollapsibleConv2D(4, expansion=0)
    with pytest.raises(ValueError, match="padding"):
        CollapsibleConv2D(4, padding="valid")


@pytest.mark.parametrize("expansion, residual", [(None, False), (None, True), (2, True)])
def test_keras_round_trip(tmp_path, expansion, residual):
    keras.utils.set_random_seed(5)
    inputs = keras.Input((8, 8, 4))
    x = CollapsibleConv2D(4, expansion=expansion, residual=residual, name="b")(inputs)
    model = keras.Model(inputs, layers.BatchNormalization()(x))
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    x = images((8, 8, 4))
    np.testing.assert_array_equal(model(x), loaded(x))
    block = loaded.get_layer("b")
    assert isinstance(block, CollapsibleConv2D)
    assert (block.expansion, block.residual) == (expansion, residual)
