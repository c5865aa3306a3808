"""ReCU (arXiv 2103.12369): the weight path against the official code's formulas, τ schedule,
architectures, LCE deployment."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import make_arithmetic_exact

from effkeras import deploy, models, training
from effkeras.graph import summary
from effkeras.layers.recu import ReCUConv2D, recu_weight
from effkeras.training.callbacks import recu_tau

SQRT8 = 2 * math.sqrt(2)


def numpy_recu(kernel, tau, upstream):
    """The official code's BinarizeConv2d in float64: forward ±1 kernel and the gradient reaching
    the latent W."""
    n = np.prod(kernel.shape[:3])
    w0 = kernel - kernel.mean(axis=(0, 1, 2), keepdims=True)
    var = (w0**2).sum(axis=(0, 1, 2), keepdims=True) / (n - 1)
    s = np.sqrt(var + 1e-5)
    w1 = w0 * SQRT8 / s
    q = np.inf if tau == 1 else -np.abs(w1).mean() * np.log(2 - 2 * tau)
    forward = np.where(np.clip(w1, -q, q) >= 0, 1.0, -1.0)
    h = upstream * (np.abs(w1) <= q)  # identity STE, clamp mask (boundaries inside)
    # Through the per-channel standardisation, then the centring.
    dw0 = SQRT8 / s * h - SQRT8 * w0 / (s**3 * (n - 1)) * (h * w0).sum(
        axis=(0, 1, 2), keepdims=True
    )
    return forward, dw0 - dw0.mean(axis=(0, 1, 2), keepdims=True), (np.abs(w1) > q).mean()


@pytest.mark.parametrize("tau", [0.85, 0.9896, 1.0])
def test_weight_path_matches_numpy(tau):
    rng = np.random.default_rng(0)
    kernel = rng.laplace(0.1, 0.05, (3, 3, 16, 8)).astype(np.float32)
    upstream = rng.normal(size=kernel.shape).astype(np.float32)
    variable = tf.Variable(kernel)
    with tf.GradientTape() as tape:
        binary = recu_weight(variable, tf.constant(tau))
        loss = tf.reduce_sum(binary * upstream)
    gradient = tape.gradient(loss, variable).numpy()
    expected, expected_gradient, clamped = numpy_recu(kernel.astype(np.float64), tau, upstream)
    np.testing.assert_array_equal(binary.numpy(), expected)
    np.testing.assert_allclose(gradient, expected_gradient, rtol=2e-4, atol=2e-5)
    assert clamped == pytest.approx(2 * (1 - tau), abs=0.06)  # 2(1 - τ) of a Laplace law (Eq. 10)
    # Standardising and clamping never change a sign: the deployed weight is sign(W - mean_c W).
    np.testing.assert_array_equal(expected, np.where(kernel - kernel.mean((0, 1, 2)) >= 0, 1, -1))


def test_clamp_boundary_passes_gradient():
    x = tf.Variable([-2.0, 2.0, 2.0 + 1e-3, -3.0])
    with tf.GradientTape() as tape:
        y = keras.ops.clip(x, -2.0, 2.0)
    np.testing.assert_array_equal(tape.gradient(y, x).numpy(), [1, 1, 0, 0])


def test_activation_path_normalises_only_in_training():
    layer = ReCUConv2D(4, 3)
    x = np.random.default_rng(1).normal(size=(2, 6, 6, 3)).astype(np.float32) * 5
    y = layer(x, training=False)
    np.testing.assert_allclose(layer(x, training=True), y, atol=1e-5)  # the sign is scale-free
    variable = tf.Variable(x)
    with tf.GradientTape(persistent=True) as tape:
        train = tf.reduce_sum(layer(variable, training=True))
        infer = tf.reduce_sum(layer(variable, training=False))
    assert not np.allclose(tape.gradient(train, variable), tape.gradient(infer, variable))
    # ApproxSign: no gradient where |x| > 1 at inference scale.
    assert np.all(tape.gradient(infer, variable).numpy()[np.abs(x) > 1] == 0)


def test_tau_schedule_table():
    # Eq. (24) for I = 600 (derived).
    for epoch, tau in [
        (0, 0.8500),
        (100, 0.8648),
        (200, 0.8822),
        (300, 0.9029),
        (400, 0.9272),
        (500, 0.9560),
        (599, 0.9896),
    ]:
        assert recu_tau(epoch, 600) == pytest.approx(tau, abs=5e-5)


def layer_taus(model):
    return np.array([float(l.tau.numpy()) for l in model.layers if isinstance(l, ReCUConv2D)])


def test_tau_is_set_each_epoch_and_survives_resume(tmp_path):
    config = dict(
        model="recu_resnet20",
        dataset="synthetic",
        input_shape=(8, 8, 3),
        batch_size=8,
        steps_per_epoch=2,
        output_dir=str(tmp_path),
        verbose=0,
    )
    training.train(training.TrainConfig(epochs=2, **config))
    saved = keras.models.load_model(tmp_path / "checkpoint-2.keras")
    np.testing.assert_allclose(layer_taus(saved), recu_tau(1, 2), rtol=1e-6)
    training.train(training.TrainConfig(epochs=3, **config))  # resumes at epoch index 2 of 3
    final = keras.models.load_model(tmp_path / "model.keras")
    np.testing.assert_allclose(layer_taus(final), recu_tau(2, 3), rtol=1e-6)
    assert len(layer_taus(final)) == 18


# (model, input size for tests, binary convs, 1-bit parameters by hand from the code's nets)
ARCHITECTURES = [
    ("recu_resnet20", 32, 18, 9 * (6 * 16 * 16 + 16 * 32 + 5 * 32 * 32 + 32 * 64 + 5 * 64 * 64)),
    (
        "recu_resnet18",
        32,
        16,
        9
        * (
            4 * 64 * 64
            + 64 * 128
            + 3 * 128 * 128
            + 128 * 256
            + 3 * 256 * 256
            + 256 * 512
            + 3 * 512 * 512
        ),
    ),
    ("recu_vgg_small", 32, 5, 9 * (128 * 128 + 128 * 256 + 256 * 256 + 256 * 512 + 512 * 512)),
    (
        "recu_resnet18_imagenet",
        96,
        16,
        9
        * (
            4 * 64 * 64
            + 64 * 128
            + 3 * 128 * 128
            + 128 * 256
            + 3 * 256 * 256
            + 256 * 512
            + 3 * 512 * 512
        ),
    ),
    (
        "recu_resnet34_imagenet",
        96,
        32,
        9
        * (
            6 * 64 * 64
            + 64 * 128
            + 7 * 128 * 128
            + 128 * 256
            + 11 * 256 * 256
            + 256 * 512
            + 5 * 512 * 512
        ),
    ),
    (
        "recu_reactnet18",
        96,
        16,
        9
        * (
            4 * 64 * 64
            + 64 * 128
            + 3 * 128 * 128
            + 128 * 256
            + 3 * 256 * 256
            + 256 * 512
            + 3 * 512 * 512
        ),
    ),
    (
        "recu_reactnet34",
        96,
        32,
        9
        * (
            6 * 64 * 64
            + 64 * 128
            + 7 * 128 * 128
            + 128 * 256
            + 11 * 256 * 256
            + 256 * 512
            + 5 * 512 * 512
        ),
    ),
]


@pytest.mark.parametrize("name, size, binary_convs, one_bit", ARCHITECTURES)
def test_architecture(name, size, binary_convs, one_bit):
    rows = summary.summarize(models.get(name, input_shape=(size, size, 3)))
    assert sum(1 for r in rows if r.binary) == binary_convs
    assert summary.totals(rows)["params"]["1bit"] == one_bit


# One model per block kind: the 34-layer nets are deeper stacks of their 18-layer twins' convs,
# which test_every_model.py's harness builds and (its conversion signature) leaves to these.
DEPLOYED = [row for row in ARCHITECTURES if "34" not in row[0]]


@pytest.mark.deploys(**{name: size for name, size, *_ in DEPLOYED})
@pytest.mark.parametrize("name, size, binary_convs, one_bit", DEPLOYED)
def test_lce_deployment(name, size, binary_convs, one_bit):
    model = models.get(name, input_shape=(size, size, 3))
    sample = np.random.default_rng(0).uniform(0, 255, (2, size, size, 3)).astype(np.float32)
    make_arithmetic_exact(model)
    # Through deploy.convert to the registry's target, as test_every_model.py does for others.
    flatbuffer, report = deploy.convert(
        model, models.info(name).deploy, sample=sample, max_rel_diff=1e-4
    )
    assert report.size_bytes == len(flatbuffer) and report.target == "lce (arm)"
    assert report.float_fallback == ()
    assert report.bconv_ops == report.binary_layers == binary_convs
    assert report.op_census["LceQuantize"] == binary_convs  # every binary input is bitpacked
    assert report.op_census["CONV_2D"] == 1 + (3 if "imagenet" in name or "reactnet" in name else 0)


def test_float_layers_where_the_spec_keeps_them():
    model = models.get("recu_resnet18_imagenet", input_shape=(64, 64, 3))
    floats = [
        l.name
        for l in model.layers
        if isinstance(l, keras.layers.Conv2D) and not isinstance(l, ReCUConv2D)
    ]
    assert floats == [
        "stem_conv",
        "stage2_block1_downsample_conv",
        "stage3_block1_downsample_conv",
        "stage4_block1_downsample_conv",
    ]
    assert model.get_layer("stage1_block1_bn1").gamma.numpy().max() == pytest.approx(1e-8)


def test_distillation_trains_the_student(tmp_path):
    metrics = training.train(
        training.TrainConfig(
            model="recu_reactnet18",
            dataset="synthetic",
            input_shape=(32, 32, 3),
            batch_size=8,
            steps_per_epoch=2,
            epochs=1,
            teacher="resnet20",
            output_dir=str(tmp_path),
            verbose=0,
        )
    )
    student = keras.models.load_model(tmp_path / "model.keras")
    assert student.name == "recu_reactnet18" and metrics["epochs"] == 1
    with pytest.raises(ValueError, match="--teacher"):
        training.train(
            training.TrainConfig(
                model="recu_reactnet18",
                dataset="synthetic",
                output_dir=str(tmp_path / "b"),
                epochs=1,
            )
        )
