"""The table activations of LERP-PSA (effkeras.layers.activations) against their float64 NumPy
references: forward, table, gradients (central differences), the B-spline's leaky-ReLU start and
TV(2) penalty, the frozen LerpTable's two forms, .keras round trips, float32 under mixed
precision, argument checks, parameter counts; and the activation plots (effkeras.plots and
tools/plot_activations)."""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from conftest import REPO, assert_one_error_line

from effkeras.layers.activations import (
    BSplineActivation,
    LerpPSA,
    LerpTable,
    ResPSA,
    grid,
    lerp_numpy,
    psa_table_numpy,
)

R = 4.0
G = 64
STEP = 2 * R / (G - 1)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def reference_table(layer):
    """psa_table_numpy of the layer's own weights, in float64."""
    weights = [
        np.asarray(v.numpy(), np.float64) for v in (layer.u, layer.w, layer.b, layer.o, layer.beta)
    ]
    return psa_table_numpy(*weights, layer.eps, layer.grid_size, layer.grid_range)


def reference(layer, x):
    """What the layer must compute at x, in float64 NumPy."""
    x = np.asarray(x, np.float64)
    y = lerp_numpy(x, reference_table(layer), layer.grid_range)
    return x + y if layer.residual else y


def inputs(rng, shape, spread=2.0):
    """Inputs over [-spread·R, spread·R]: inside the grid and extrapolated on both sides, with
    the grid points themselves and the ends ±R among them."""
    x = rng.uniform(-spread * R, spread * R, shape)
    flat = x.reshape(-1)
    points = grid(G, R)
    flat[: len(points)] = points
    return x


def off_knot_inputs(rng, shape, knots, step):
    """Inputs at least 0.2 of a knot interval away from every knot (where the lerp has its
    kinks), some up to 5 intervals beyond each end."""
    j = rng.integers(-5, len(knots) + 4, shape)
    return knots[0] + (j + rng.uniform(0.2, 0.8, shape)) * step


# Forward and table


@pytest.mark.parametrize("cls", [LerpPSA, ResPSA])
def test_forward_equals_the_float64_reference(cls):
    keras.utils.set_random_seed(1)
    rng = np.random.default_rng(0)
    layer = cls(5, dtype="float64")
    x = inputs(rng, (3, 40, 5))  # (batch, tokens, channels): channels on the last axis
    y = layer(x)
    assert y.dtype == "float64"
    np.testing.assert_allclose(y.numpy(), reference(layer, x), rtol=0, atol=1e-6)
    # In float64 the agreement is far tighter than the 1e-6 the layer promises.
    np.testing.assert_allclose(y.numpy(), reference(layer, x), rtol=0, atol=1e-10)


@pytest.mark.parametrize("cls", [LerpPSA, ResPSA])
def test_float32_forward_within_float32_precision(cls):
    keras.utils.set_random_seed(2)
    rng = np.random.default_rng(1)
    layer = cls(8)
    x = inputs(rng, (500, 8)).astype("float32")
    y = layer(x).numpy()
    assert y.dtype == np.float32
    want = reference(layer, x)
    scale = np.abs(want).max()
    inside = np.abs(x) <= R
    assert np.abs(y - want)[inside].max() <= 1e-6 * scale
    # Beyond ±R the lerp extrapolates with the end segment's slope T[G-1] - T[G-2], a difference
    # of two float32 table values, multiplied by f, the steps past the end: that table rounding
    # (~1e-7 of max|T|), not the layer, bounds the float32 error there (measured: ~4e-6 of
    # max|output| at |x| = 2R, f = 31.5). The same error relative to (1 + 2f) stays under 1e-6.
    beyond = np.maximum(np.abs(x) - R, 0) / STEP
    assert (np.abs(y - want) / (1 + 2 * beyond)).max() <= 1e-6 * scale
    # The lerp itself, on the layer's own float32 table, holds 1e-6 everywhere.
    table = np.asarray(layer.table().numpy(), np.float64)
    own = lerp_numpy(x, table, R) + (x if layer.residual else 0)
    assert np.abs(y - own).max() <= 1e-6 * scale


@pytest.mark.parametrize("dtype, atol", [("float64", 1e-12), ("float32", 1e-6)])
def test_table_is_psa_on_the_grid_and_the_lerp_reproduces_it(dtype, atol):
    keras.utils.set_random_seed(3)
    for cls in (LerpPSA, ResPSA):
        layer = cls(6, expansion=5, dtype=dtype)
        points = grid(G, R)
        x = np.repeat(points[:, None], 6, axis=1).astype(dtype)
        y = layer(x).numpy()
        table = reference_table(layer)  # (C, G)
        scale = max(1.0, np.abs(table).max())
        np.testing.assert_allclose(layer.table().numpy(), table, rtol=0, atol=atol * scale)
        np.testing.assert_allclose(
            y - (x if layer.residual else 0), table.T, rtol=0, atol=atol * scale
        )


def test_grid_is_uniform_and_has_no_zero_for_even_sizes():
    points = grid(G, R)
    assert points[0] == -R and points[-1] == R and len(points) == G
    np.testing.assert_allclose(np.diff(points), STEP, rtol=1e-12)
    assert not np.any(points == 0)


# Gradients


def loss_and_gradients(layer, x, weights):
    import tensorflow as tf

    x = tf.constant(x)
    direction = tf.constant(np.random.default_rng(7).standard_normal(x.shape))
    with tf.GradientTape() as tape:
        tape.watch(x)
        loss = tf.reduce_sum(layer(x) * direction)
    grads = tape.gradient(loss, [x] + [w.value for w in weights])
    return direction.numpy(), [g.numpy() for g in grads]


def central_difference(layer, x, direction, weight, h=1e-6):
    """d(Σ layer(x)·direction)/d(weight), one element at a time."""
    value = weight.numpy()
    grad = np.zeros_like(value)
    for index in np.ndindex(value.shape):
        losses = []
        for sign in (1, -1):
            moved = value.copy()
            moved[index] += sign * h
            weight.assign(moved)
            losses.append(np.sum(layer(x).numpy() * direction))
        grad[index] = (losses[0] - losses[1]) / (2 * h)
    weight.assign(value)
    return grad


@pytest.mark.parametrize("cls", [LerpPSA, ResPSA])
def test_psa_gradients_match_central_differences(cls):
    keras.utils.set_random_seed(4)
    rng = np.random.default_rng(2)
    layer = cls(3, expansion=4, dtype="float64")
    x = off_knot_inputs(rng, (25, 3), grid(G, R), STEP)
    layer.build(x.shape)
    weights = [layer.u, layer.w, layer.b, layer.o, layer.beta]
    assert {id(w) for w in weights} == {id(w) for w in layer.trainable_weights}
    direction, grads = loss_and_gradients(layer, x, weights)
    h = 1e-6
    dx = (layer(x + h).numpy() - layer(x - h).numpy()) * direction / (2 * h)  # elementwise
    np.testing.assert_allclose(grads[0], dx, rtol=1e-6, atol=1e-7)
    for weight, grad in zip(weights, grads[1:]):
        numeric = central_difference(layer, x, direction, weight)
        scale = np.abs(numeric).max()
        np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-7 * scale, err_msg=weight.name)
        assert scale > 0, weight.name  # every weight moves the output


def test_bspline_gradients_match_central_differences():
    rng = np.random.default_rng(3)
    layer = BSplineActivation(2, size=9, dtype="float64")
    knots = grid(9, R)
    x = off_knot_inputs(rng, (30, 2), knots, knots[1] - knots[0])
    layer.build(x.shape)
    layer.coefficients.assign(rng.standard_normal((2, 9)))
    direction, (gx, gc) = loss_and_gradients(layer, x, [layer.coefficients])
    h = 1e-6
    dx = (layer(x + h).numpy() - layer(x - h).numpy()) * direction / (2 * h)
    np.testing.assert_allclose(gx, dx, rtol=1e-6, atol=1e-7)
    numeric = central_difference(layer, x, direction, layer.coefficients)
    np.testing.assert_allclose(gc, numeric, rtol=1e-6, atol=1e-7 * np.abs(numeric).max())


# B-spline


def leaky_relu(x, slope=0.01):
    return np.where(x >= 0, x, slope * x)


def test_bspline_starts_as_a_leaky_relu():
    layer = BSplineActivation(3)
    rng = np.random.default_rng(4)
    x = inputs(rng, (400, 3), spread=1.5).astype("float32")
    y = layer(x).numpy()
    knots = grid(65, R)
    assert np.isclose(knots[1] - knots[0], 0.125) and 0.0 in knots  # step R/(size//2), 0 a knot
    np.testing.assert_allclose(
        layer.coefficients.numpy(), np.tile(leaky_relu(knots), (3, 1)), rtol=0, atol=1e-7
    )
    np.testing.assert_allclose(y, leaky_relu(x.astype(np.float64)), rtol=0, atol=1e-6)
    # With a negative slope of its own.
    other = BSplineActivation(3, negative_slope=0.2)
    np.testing.assert_allclose(
        other(x).numpy(), leaky_relu(x.astype(np.float64), 0.2), rtol=0, atol=1e-6
    )


def test_tv2_penalty_value_and_model_losses():
    rng = np.random.default_rng(5)
    strength, size = 1e-3, 9
    inputs_ = keras.Input((4,))
    spline = BSplineActivation(4, size=size, tv2=strength)
    model = keras.Model(inputs_, spline(inputs_))
    coefficients = rng.standard_normal((4, size)).astype("float32")
    spline.coefficients.assign(coefficients)
    c = coefficients.astype(np.float64)
    step = R / (size // 2)
    want = strength * np.abs(c[:, 2:] - 2 * c[:, 1:-1] + c[:, :-2]).sum() / step
    assert len(model.losses) == 1
    np.testing.assert_allclose(float(model.losses[0]), want, rtol=1e-6)
    np.testing.assert_allclose(float(spline.losses[0]), want, rtol=1e-6)
    # The leaky-ReLU start has one slope change (at 0): λ·(1 - 0.01)/T·T = λ·0.99.
    fresh = BSplineActivation(4, size=size, tv2=strength)
    fresh.build((None, 4))
    np.testing.assert_allclose(float(fresh.losses[0]), strength * 4 * 0.99, rtol=1e-5)

    free = BSplineActivation(4, size=size)  # tv2 = 0: no penalty at all
    model = keras.Model(inputs_, free(inputs_))
    free.coefficients.assign(coefficients)
    assert float(sum(model.losses, 0.0)) == 0.0


# LerpTable


def frozen_table(form, channels=3):
    points = grid(G, R)
    values = np.stack([3 * np.sin(points * (c + 1) / 2) + c for c in range(channels)])
    scale = np.array([1.5, -0.7, 2.0][:channels])
    offset = np.array([0.3, -1.0, 0.5][:channels])
    layer = LerpTable(channels, form=form)
    layer.build((None, channels))
    layer.set_weights([values, scale, offset])
    return layer


@pytest.mark.parametrize("form", ["gather", "relu_sum"])
def test_lerp_table_forms_equal_the_reference(form):
    layer = frozen_table(form)
    values, scale, offset = (np.asarray(w, np.float64) for w in layer.get_weights())
    rng = np.random.default_rng(6)
    x = np.concatenate(
        [
            rng.uniform(-12, 12, (500, 3)),
            # exactly at the grid points, through the affine
            (grid(G, R)[:, None] - offset) / scale,
        ]
    ).astype("float32")
    y = layer(x).numpy()
    want = lerp_numpy(x.astype(np.float64) * scale + offset, values, R)
    assert np.abs(want).max() > np.abs(values).max()  # extrapolated well past the table's range
    np.testing.assert_allclose(y, want, rtol=0, atol=1e-6 * np.abs(want).max())
    np.testing.assert_allclose(layer.function(x), want, rtol=0, atol=1e-12)
    np.testing.assert_allclose(y, layer.function(x), rtol=0, atol=1e-6 * np.abs(want).max())


def test_lerp_table_forms_agree_with_each_other():
    x = np.random.default_rng(7).uniform(-10, 10, (300, 3)).astype("float32")
    gather, relu_sum = frozen_table("gather"), frozen_table("relu_sum")
    scale = np.abs(gather(x).numpy()).max()
    np.testing.assert_allclose(gather(x).numpy(), relu_sum(x).numpy(), rtol=0, atol=1e-6 * scale)


# Serialization, mixed precision


def layers_to_round_trip():
    spline = BSplineActivation(4, tv2=1e-3, negative_slope=0.05)
    return [
        LerpPSA(4, expansion=3, grid_size=16, grid_range=2.0, eps=0.5),
        ResPSA(4),
        spline,
        frozen_table("gather", 3),
        frozen_table("relu_sum", 3),
    ]


@pytest.mark.parametrize("index", range(5))
def test_round_trip_through_a_keras_file(tmp_path, index):
    keras.utils.set_random_seed(8)
    layer = layers_to_round_trip()[index]
    channels = layer.channels
    inputs_ = keras.Input((5, channels))
    model = keras.Model(inputs_, layer(inputs_))
    if isinstance(layer, BSplineActivation):
        layer.coefficients.assign(np.random.default_rng(0).standard_normal((channels, 65)))
    x = np.random.default_rng(9).uniform(-2 * R, 2 * R, (2, 5, channels)).astype("float32")
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    again = loaded.layers[-1]
    assert type(again) is type(layer) and again.get_config() == layer.get_config()
    np.testing.assert_array_equal(loaded(x).numpy(), model(x).numpy())
    assert [float(v) for v in loaded.losses] == [float(v) for v in model.losses]


@pytest.mark.parametrize("cls", [LerpPSA, ResPSA, BSplineActivation, LerpTable])
def test_float32_under_mixed_precision(cls):
    try:
        keras.config.set_dtype_policy("mixed_float16")
        inputs_ = keras.Input((6,))
        hidden = keras.layers.Dense(6)(inputs_)
        assert hidden.dtype == "float16"  # the policy is in force around the layer
        layer = cls(6)
        y = layer(hidden)
        model = keras.Model(inputs_, y)
        assert layer.dtype_policy.name == "float32" and layer.compute_dtype == "float32"
        assert all(v.dtype == "float32" for v in layer.weights)
        assert y.dtype == "float32"
        out = model(np.random.default_rng(0).standard_normal((3, 6)).astype("float32"))
        assert out.dtype == "float32"
        assert np.all(np.isfinite(out.numpy()))
    finally:
        keras.config.set_dtype_policy("float32")


# Argument checks, parameter counts


@pytest.mark.parametrize(
    "make, fragment",
    [
        (lambda: LerpPSA(4, grid_size=1), "grid_size must be an int >= 2"),
        (lambda: LerpPSA(4, grid_size=64.0), "grid_size must be an int >= 2"),
        (lambda: LerpPSA(4, grid_size=True), "grid_size must be an int >= 2"),
        (lambda: LerpPSA(4, grid_range=0), "grid_range R must be a finite number > 0"),
        (lambda: LerpPSA(4, grid_range=-4.0), "grid_range R must be a finite number > 0"),
        (lambda: LerpPSA(4, grid_range=float("nan")), "grid_range R must be a finite number > 0"),
        (lambda: LerpTable(4, grid_range=-1.0), "grid_range R must be a finite number > 0"),
        (lambda: LerpPSA(4, eps=0), "eps must be a finite number > 0"),
        (lambda: ResPSA(4, eps=-1.0), "eps must be a finite number > 0"),
        (lambda: LerpPSA(4, expansion=0), "expansion must be a positive int"),
        (lambda: LerpPSA(0), "channels must be a positive int"),
        (lambda: BSplineActivation(4, size=64), "needs an odd size"),
        (lambda: BSplineActivation(4, tv2=-1e-5), "tv2 (λ) must be a finite number >= 0"),
        (lambda: LerpTable(4, form="lut"), "form must be one of ('gather', 'relu_sum')"),
    ],
)
def test_bad_arguments_raise_one_clear_value_error(make, fragment):
    with pytest.raises(ValueError) as raised:
        make()
    assert fragment in str(raised.value)


@pytest.mark.parametrize("cls", [LerpPSA, ResPSA, BSplineActivation, LerpTable])
def test_channels_must_match_the_input(cls):
    with pytest.raises(ValueError, match="has 4 channels but its input has 3 on the last axis"):
        cls(4)(keras.Input((3,)))
    with pytest.raises(ValueError, match="has 4 channels but its input has 5 on the last axis"):
        cls(4)(np.zeros((2, 5), "float32"))


def test_parameter_counts():
    psa = ResPSA(96, expansion=8)
    psa.build((None, 96))
    assert psa.count_params() == 26 * 96  # 3E + 2 per channel
    small = LerpPSA(7, expansion=3)
    small.build((None, 7))
    assert small.count_params() == (3 * 3 + 2) * 7
    spline = BSplineActivation(24)
    spline.build((None, 24))
    assert spline.count_params() == 65 * 24
    table = LerpTable(24)
    table.build((None, 24))
    assert len(table.trainable_weights) == 0 and table.count_params() == (64 + 2) * 24


# Plots


@pytest.mark.parametrize("make", [lambda: ResPSA(20), lambda: BSplineActivation(3)])
def test_activation_curves_writes_a_png(tmp_path, make):
    from effkeras import plots

    layer = make()
    layer.build((None, layer.channels))
    path = str(tmp_path / "curves.png")
    assert plots.activation_curves(layer, path) == path
    with open(path, "rb") as f:
        assert f.read(8) == PNG_MAGIC
    assert os.path.getsize(path) > 1000


def test_activation_curves_of_a_lerp_table_and_bad_arguments(tmp_path):
    from effkeras import plots

    path = str(tmp_path / "table.png")
    assert (
        plots.activation_curves(frozen_table("relu_sum"), path, channels=2, x_range=(-5, 5)) == path
    )
    assert open(path, "rb").read(8) == PNG_MAGIC
    with pytest.raises(TypeError, match="LerpPSA, ResPSA, BSplineActivation or LerpTable"):
        plots.activation_curves(keras.layers.Dense(3), path)
    with pytest.raises(ValueError, match="channels must be a positive int"):
        plots.activation_curves(ResPSA(3), path, channels=0)
    with pytest.raises(ValueError, match="x_range must be"):
        plots.activation_curves(ResPSA(3), path, x_range=(2, -2))


def run_tool(*flags):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run(
        [sys.executable, "-m", "tools.plot_activations", *flags],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_plot_activations_tool_writes_one_png_per_layer(tmp_path):
    result = run_tool("--model=resmlp_psa_h025", f"--output_dir={tmp_path}", "--channels=4")
    assert result.returncode == 0, result.stderr[-3000:]
    paths = result.stdout.split()
    want = [f"block{b}_mlp_psa{i}.png" for b in range(1, 5) for i in (1, 2)]
    assert [os.path.basename(p) for p in paths] == want
    for p in paths:
        assert open(p, "rb").read(8) == PNG_MAGIC


def test_plot_activations_tool_refuses_an_unknown_layer(tmp_path):
    result = run_tool("--model=resmlp_psa_h025", f"--output_dir={tmp_path}", "--layer=nope")
    assert_one_error_line(result, "--layer='nope' is not a table activation", "block1_mlp_psa1")


def test_plot_activations_in_process(tmp_path):
    from effkeras import models, saving
    from effkeras.errors import InputError
    from tools import plot_activations

    keras.utils.set_random_seed(0)
    psa = models.get("resmlp_psa_h025")
    path = str(tmp_path / "psa.keras")
    psa.save(path)
    loaded = saving.load_model(path)
    assert [layer.name for layer in plot_activations.table_layers(loaded)] == [
        f"block{b}_mlp_psa{i}" for b in range(1, 5) for i in (1, 2)
    ]
    written = plot_activations.plot_model(
        loaded, str(tmp_path / "out"), layer="block2_mlp_psa2", channels=1
    )
    assert written == [str(tmp_path / "out" / "block2_mlp_psa2.png")]
    assert open(written[0], "rb").read(8) == PNG_MAGIC
    with pytest.raises(InputError, match="has no table activation"):
        plot_activations.plot_model(models.get("resmlp_relu_h025"), str(tmp_path))
    with pytest.raises(InputError, match="is not a table activation"):
        plot_activations.plot_model(psa, str(tmp_path), layer="block1_fc1")
    assert plot_activations.parse_range(["-3", "2.5"]) == (-3.0, 2.5)
    for bad in (["1"], ["a", "b"], ["2", "1"]):
        with pytest.raises(InputError, match="--x_range"):
            plot_activations.parse_range(bad)
