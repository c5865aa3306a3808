"""Every registered model goes through the same harness: built small, saved and loaded, summarised,
and converted to its default deploy target with that target's checks (for the models a dedicated
test marks with `@pytest.mark.deploys(name=input_size, ...)`, by that test, with stricter checks).
A new model is tested by being registered.

A conversion exercises its target, its input size and the (layer class, activation) pairs of the
model (`conversion_signature`): a width or depth variant of a model converted earlier in the run
(by the harness, or by a dedicated test) is built, saved, loaded and summarised, and not converted
again. Run alone, every model converts."""

import ast
import os

import keras
import numpy as np
import pytest
import test_binary_peers
import test_deploy
import test_recu
import test_w1a2_pass
from conftest import REPO

from effkeras import deploy, models
from effkeras.graph import leaf_layers, summary
from effkeras.layers import BSplineActivation
from effkeras.training import recipes

CLASSES = 10
# The test modules with tests marked `deploys` (pyproject.toml): tests that convert registered
# models to their default target, at this file's input sizes (ERN 18x0.75: 80, its odd-map case)
# and with stricter checks (weights under which the conversion must be exact, exact op counts).
# The harness does everything else for those models.
DEDICATED_MODULES = (test_w1a2_pass, test_recu, test_deploy, test_binary_peers)


def deploys_marks(modules):
    """{model name: (test function, input size)} from the `deploys` marks of the test functions
    in `modules`; a model marked twice is an error."""
    found = {}
    for module in modules:
        for function in vars(module).values():
            for mark in getattr(function, "pytestmark", []):
                if mark.name != "deploys":
                    continue
                assert not mark.args, f"{function.__name__}: deploys(name=input_size, ...)"
                for name, size in mark.kwargs.items():
                    assert name not in found, f"{name} is deployed by two tests"
                    found[name] = (function, size)
    return found


DEPLOYED_BY = deploys_marks(DEDICATED_MODULES)


CONVERTED = {}  # conversion_signature -> the model whose conversion covers it, in this run
# CONVERTED lives in one process: `make test` runs a test file on one pytest-xdist worker.
# The models a dedicated test converts go first, so that their variants are not converted here.
NAMES = sorted(models.names(), key=lambda name: name not in DEPLOYED_BY)


def conversion_signature(model, target, size):
    """What converting `model` to `target` at `size` exercises: the target, the size and the set
    of (layer class, activation) pairs."""
    pairs = set()
    for layer in leaf_layers(model):
        activation = getattr(layer, "activation", None)
        name = None if activation is None else keras.activations.serialize(activation)
        pairs.add((type(layer).__name__, str(name)))
    return target, size, frozenset(pairs)


def small_size(info):
    """The smallest input the model and its target handle: LCE needs binary convs' maps >= the
    kernel (ImageNet binary nets: 96), the rest the model's own minimum (at least 32)."""
    if info.deploy == "arm" and info.input_shape[0] > 32:
        return 96
    return max(32, info.min_input_size)


@pytest.mark.model_sensitivity  # untrained binary nets flip signs at near-ties (lce.convert)
@pytest.mark.parametrize("name", NAMES)
def test_registered_model(name, tmp_path):
    info = models.info(name)
    recipes.get(info.recipe)  # its recipe exists
    assert info.deploy in deploy.names()
    size = small_size(info)
    keras.utils.set_random_seed(0)
    # info.small: the same blocks, fewer channels (and repeats), so that big models stay fast.
    model = models.get(name, input_shape=(size, size, 3), num_classes=CLASSES, **info.small)
    outputs = model.output_shape if isinstance(model.output_shape, list) else [model.output_shape]
    assert all(shape[-1] == CLASSES for shape in outputs)

    # Every layer draws its own random weights: one unseeded Keras 3 initializer object shared
    # by several layers gives each of them the same values. (B-splines start as the same leaky
    # ReLU by design: their knot values are not drawn.)
    drawn = {}
    for layer in model.layers:
        if isinstance(layer, BSplineActivation):
            continue
        for weight in layer.trainable_weights:
            value = keras.ops.convert_to_numpy(weight)
            if value.ndim >= 2 and value.size > 16 and np.ptp(value) > 0:
                key = (value.shape, value.tobytes())
                assert key not in drawn, f"{layer.name} starts as a copy of {drawn[key]}"
                drawn[key] = layer.name

    x = np.random.default_rng(0).uniform(0, 255, (2, size, size, 3)).astype(np.float32)
    model.save(tmp_path / "model.keras")
    loaded = keras.models.load_model(tmp_path / "model.keras")
    # Called eagerly: predict() would trace each model into a tf.function first (seconds each).
    for got, expected in zip(
        *(keras.tree.flatten(m(x, training=False)) for m in (loaded, model)), strict=True
    ):
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(got),
            keras.ops.convert_to_numpy(expected),
            rtol=1e-5,
            atol=1e-5,
        )

    totals = summary.totals(summary.summarize(model))
    assert totals["total_params"] == model.count_params()
    assert totals["binary_macs"] + totals["low_bit_macs"] + totals["float_macs"] > 0

    signature = conversion_signature(model, info.deploy, size)
    if name in DEPLOYED_BY or signature in CONVERTED:
        CONVERTED.setdefault(signature, name)
        return
    CONVERTED[signature] = name
    flatbuffer, report = deploy.convert(model, info.deploy)
    assert report.size_bytes == len(flatbuffer) and report.op_census
    if info.deploy == "arm":
        assert report.bconv_ops >= report.binary_layers > 0 and not report.float_fallback
    if hasattr(report, "float_ops"):
        assert report.float_ops == ()
    if hasattr(report, "cpu_ops"):
        assert report.cpu_ops == 0 and report.npu_ops > 0


def test_models_deployed_elsewhere_are_deployed_there():
    """The tests marked `deploys` convert registered models at the harness's input sizes, and
    each parametrized one runs exactly the models (and sizes) its mark names."""
    assert set(DEPLOYED_BY) <= set(models.names())
    for name, (_function, size) in DEPLOYED_BY.items():
        assert size == small_size(models.info(name)) or name == "ern18_075", (name, size)
    for function in {function for function, _ in DEPLOYED_BY.values()}:
        marked = {name: size for name, (f, size) in DEPLOYED_BY.items() if f is function}
        for mark in getattr(function, "pytestmark", []):
            if mark.name != "parametrize":
                continue
            argnames = mark.args[0]
            if isinstance(argnames, str):
                argnames = [a.strip() for a in argnames.split(",")]
            rows = [row if len(argnames) > 1 else (row,) for row in mark.args[1]]
            params = [dict(zip(argnames, row)) for row in rows]
            assert sorted(p["name"] for p in params) == sorted(marked), function.__name__
            for p in params:
                assert p.get("size", marked[p["name"]]) == marked[p["name"]], p
    # Every test module that uses the marker is one of DEDICATED_MODULES.
    tests = os.path.join(REPO, "tests")
    using = set()
    for filename in os.listdir(tests):
        if filename.startswith("test_") and filename.endswith(".py"):
            with open(os.path.join(tests, filename)) as f:
                tree = ast.parse(f.read())
            if any(
                isinstance(node, ast.Attribute)
                and node.attr == "deploys"
                and isinstance(node.value, ast.Attribute)
                and node.value.attr == "mark"
                for node in ast.walk(tree)
            ):
                using.add(filename[:-3])
    assert using == {module.__name__ for module in DEDICATED_MODULES}
