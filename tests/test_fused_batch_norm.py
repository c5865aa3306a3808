"""effkeras.layers.BatchNormalization: TF's fused kernel in training, with Keras' outputs,
gradients and moving statistics; Keras' own code everywhere else."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from effkeras import layers, models
from effkeras.graph import leaf_layers

RNG = np.random.default_rng(0)
SHAPE = (4, 5, 6, 8)  # NHWC: 120 values per channel


def pair(dtype="float32", **config):
    """(ours, Keras'), built for SHAPE with the same random γ, β and moving statistics."""
    ours = layers.BatchNormalization(dtype=dtype, **config)
    theirs = keras.layers.BatchNormalization(dtype=dtype, **config)
    for layer in (ours, theirs):
        layer.build(SHAPE)
    channels = SHAPE[-1]
    values = {
        "gamma": RNG.uniform(0.5, 1.5, channels),
        "beta": RNG.normal(0, 0.3, channels),
        "moving_mean": RNG.normal(0, 0.3, channels),
        "moving_variance": RNG.uniform(0.5, 2.0, channels),
    }
    weights = [values[w.name] for w in theirs.weights]
    ours.set_weights(weights)
    theirs.set_weights(weights)
    return ours, theirs


def fused_ops(layer, x, training=True, mask=None):
    """The op types of one traced call: does it run FusedBatchNormV3?"""
    call = tf.function(lambda x: layer(x, training=training, mask=mask))
    return {op.type for op in call.get_concrete_function(x).graph.get_operations()}


def step(layer, x, upstream):
    """Output and gradients (input, γ, β) of sum(upstream · layer(x)) in training."""
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x, training=True)
        loss = tf.reduce_sum(tf.cast(y, tf.float32) * upstream)
    trainable = [w.value for w in layer.trainable_weights]
    return [y, *tape.gradient(loss, [x, *trainable])]


@pytest.mark.parametrize(
    "policy, tolerance", [("float32", 1e-5), ("mixed_float16", 2e-3), ("mixed_bfloat16", 2e-2)]
)
@pytest.mark.parametrize("affine", [True, False])
def test_training_equals_keras(policy, tolerance, affine):
    ours, theirs = pair(policy, momentum=0.8, epsilon=1e-3, center=affine, scale=affine)
    dtype = keras.mixed_precision.DTypePolicy(policy).compute_dtype
    assert "FusedBatchNormV3" in fused_ops(ours, tf.zeros(SHAPE, dtype))
    for _ in range(3):
        x = tf.constant(RNG.normal(1.0, 3.0, SHAPE), dtype)  # off-centre, wide
        upstream = tf.constant(RNG.normal(size=SHAPE), tf.float32)
        for a, b in zip(step(ours, x, upstream), step(theirs, x, upstream), strict=True):
            assert a.dtype == b.dtype
            a, b = np.asarray(tf.cast(a, tf.float32)), np.asarray(tf.cast(b, tf.float32))
            np.testing.assert_allclose(a, b, atol=tolerance * np.abs(b).max(), rtol=0)
    for a, b in zip(ours.non_trainable_weights, theirs.non_trainable_weights, strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6)
    x = tf.constant(RNG.normal(size=SHAPE), dtype)  # inference: Keras' code, on those statistics
    a, b = (np.asarray(tf.cast(layer(x, training=False), tf.float32)) for layer in (ours, theirs))
    np.testing.assert_allclose(a, b, atol=tolerance * np.abs(b).max(), rtol=0)
    assert "FusedBatchNormV3" not in fused_ops(ours, x, training=False)


def test_epsilon_below_tf_wrappers_minimum_is_kept():
    """tf.compat.v1.nn.fused_batch_norm raises ε to 1.001e-5; the layer's 1e-6 stays 1e-6."""
    ours, theirs = pair(epsilon=1e-6)
    x = tf.constant(RNG.normal(size=SHAPE) * 1e-3, tf.float32)  # variance ~1e-6: ε matters
    np.testing.assert_allclose(ours(x, training=True), theirs(x, training=True), atol=1e-4)


@pytest.mark.parametrize("case", ["mask", "synchronized", "2-D", "axis 1"])
def test_falls_back_to_keras(case):
    config = {"synchronized": case == "synchronized", "axis": 1 if case == "axis 1" else -1}
    ours, theirs = layers.BatchNormalization(**config), keras.layers.BatchNormalization(**config)
    shape = (6, 8) if case == "2-D" else SHAPE
    x = tf.constant(RNG.normal(2.0, 1.0, shape), tf.float32)
    mask = tf.constant(RNG.uniform(size=shape[:-1]) > 0.3) if case == "mask" else None
    for layer in (ours, theirs):
        layer.build(shape)
    assert "FusedBatchNormV3" not in fused_ops(ours, x, mask=mask)
    np.testing.assert_allclose(
        ours(x, training=True, mask=mask), theirs(x, training=True, mask=mask), rtol=1e-6, atol=1e-6
    )
    for a, b in zip(ours.non_trainable_weights, theirs.non_trainable_weights, strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6)


def test_keras_file_round_trip(tmp_path):
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3)(inputs)
    x = layers.BatchNormalization(momentum=0.8, name="bn")(x)
    model = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(x))
    model.compile(optimizer="adam", loss="mse")
    images = RNG.normal(size=(4, 8, 8, 3)).astype(np.float32)
    model.train_on_batch(images, np.zeros((4, 4), np.float32))
    model.save(tmp_path / "bn.keras")
    loaded = keras.models.load_model(tmp_path / "bn.keras")
    bn = loaded.get_layer("bn")
    assert type(bn) is layers.BatchNormalization and bn.momentum == 0.8
    assert isinstance(bn, keras.layers.BatchNormalization)  # what the deploy passes look for
    np.testing.assert_array_equal(
        loaded.predict(images, verbose=0), model.predict(images, verbose=0)
    )


@pytest.mark.parametrize("name", ["birealnet18", "quicknet_small", "efficientnet_lite0", "ran_e_c"])
def test_model_builders_use_it(name):
    model = models.get(name, input_shape=(32, 32, 3), num_classes=10, **models.info(name).small)
    norms = [
        layer for layer in leaf_layers(model) if isinstance(layer, keras.layers.BatchNormalization)
    ]
    assert norms and all(type(layer) is layers.BatchNormalization for layer in norms)
