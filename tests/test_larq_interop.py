"""Importing larq (tf_keras) models: same outputs in effkeras, clear errors for what is missing.
Every Larq Zoo 2.4 architecture imports with larq's outputs; tools/larq_zoo_check.py adds the
LCE op census of each (docs/larq_zoo/import_check.md)."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from effkeras import quantizers
from effkeras.errors import InputError
from effkeras.interop import import_larq_model
from effkeras.layers import QuantConv2D

ORACLE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "larq_oracle.py")
MODELS = ("quicknet_block", "bireal_block", "layer_mix", "sequential", "tf_ops")
# What larq_zoo 2.4 exports from larq_zoo.sota and larq_zoo.literature (the oracle checks it).
ZOO = (
    "QuickNet",
    "QuickNetSmall",
    "QuickNetLarge",
    "BiRealNet",
    "BinaryAlexNet",
    "BinaryResNetE18",
    "BinaryDenseNet28",
    "BinaryDenseNet37",
    "BinaryDenseNet37Dilated",
    "BinaryDenseNet45",
    "MeliusNet22",
    "RealToBinaryNet",
    "XNORNet",
    "DoReFaNet",
)
# larq's own LCE conversion takes ~20 s a model here (larq_zoo needs the pure-Python protobuf):
# the Zoo's op census against larq's is checked by tools/larq_zoo_check.py, for all of them
# (docs/larq_zoo/import_check.md); the suite checks it on the blocks of MODELS.


@pytest.fixture(scope="module")
def larq_models(tmp_path_factory):
    """One larq subprocess saves every test model: config, weights, reference outputs."""
    folder = tmp_path_factory.mktemp("larq_models")
    env = {**os.environ, "TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run(
        [sys.executable, ORACLE, "models", str(folder), *MODELS],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return folder


@pytest.mark.parametrize("weights_format", ["h5", "npz", "list"])
@pytest.mark.parametrize("name", MODELS)
def test_imported_model_matches_larq(larq_models, name, weights_format):
    weights = larq_models / f"{name}.{weights_format}"
    if weights_format == "list":
        with np.load(larq_models / f"{name}.npz") as archive:
            weights = [archive[f"arr_{i}"] for i in range(len(archive.files))]
    model = import_larq_model(larq_models / f"{name}.json", weights)
    reference = np.load(larq_models / f"{name}_io.npz")
    outputs = model(reference["x"], training=False).numpy()
    # Values reach ~80 (random BN statistics); one flipped sign would change them by >= 1.
    np.testing.assert_allclose(outputs, reference["y"], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name,bconvs", [("quicknet_block", 1), ("bireal_block", 2), ("tf_ops", 0)])
def test_imported_block_has_larqs_lce_op_census(larq_models, name, bconvs):
    from effkeras.deploy import lce
    from effkeras.deploy.flatbuffer import op_census, operators

    model = import_larq_model(larq_models / f"{name}.json", larq_models / f"{name}.h5")
    sample = np.load(larq_models / f"{name}_io.npz")["x"]
    _, ours = lce.convert(model, sample=sample, max_rel_diff=1e-5)
    theirs = op_census(operators((larq_models / f"{name}.tflite").read_bytes()))
    assert ours.op_census == theirs
    assert ours.bconv_ops == ours.binary_layers == theirs.get("LceBconv2d", 0) == bconvs


def test_quicknet_block_structure(larq_models):
    config = (larq_models / "quicknet_block.json").read_text()
    model = import_larq_model(config, str(larq_models / "quicknet_block.h5"))
    (binary,) = [layer for layer in model.layers if isinstance(layer, QuantConv2D)]
    assert binary.pad_values == 1.0 and binary.padding == "same"
    for quantizer in (binary.input_quantizer, binary.kernel_quantizer):
        assert isinstance(quantizer, quantizers.SteSign) and quantizer.clip_value == 1.25
    assert binary.kernel_constraint.clip_value == 1.25


@pytest.mark.parametrize("class_name", ["QuantLocallyConnected2D", "Lambda"])
def test_unsupported_layer_is_named(larq_models, class_name):
    config = json.loads((larq_models / "bireal_block.json").read_text())
    layer = config["config"]["layers"][1]
    layer["class_name"] = class_name
    with pytest.raises(InputError, match=rf"'{layer['name']}' is a {class_name}"):
        import_larq_model(json.dumps(config), str(larq_models / "bireal_block.h5"))


def test_unsupported_quantizer_is_named(larq_models):
    config = json.loads((larq_models / "bireal_block.json").read_text())
    layer = next(
        entry for entry in config["config"]["layers"] if entry["class_name"] == "QuantConv2D"
    )
    layer["config"]["kernel_quantizer"]["class_name"] = "SteTern"
    with pytest.raises(InputError, match="SteTern"):
        import_larq_model(json.dumps(config), str(larq_models / "bireal_block.h5"))


def test_wrong_weights_are_refused(larq_models):
    config = str(larq_models / "bireal_block.json")
    with pytest.raises(InputError, match="same model"):
        import_larq_model(config, str(larq_models / "quicknet_block.h5"))
    with pytest.raises(InputError, match="get_weights"):
        import_larq_model(config, [np.zeros(3)])


def test_imported_tf_ops_round_trip_keras_file(larq_models, tmp_path):
    model = import_larq_model(larq_models / "tf_ops.json", larq_models / "tf_ops.h5")
    model.save(tmp_path / "tf_ops.keras")
    loaded = keras.models.load_model(tmp_path / "tf_ops.keras")
    x = np.load(larq_models / "tf_ops_io.npz")["x"]
    np.testing.assert_array_equal(loaded(x, training=False), model(x, training=False))


def test_unknown_tf_function_is_refused(larq_models):
    config = json.loads((larq_models / "tf_ops.json").read_text())
    layer = next(
        entry for entry in config["config"]["layers"] if entry["class_name"] == "TFOpLambda"
    )
    layer["config"]["function"] = "math.cumsum"
    with pytest.raises(
        InputError,
        match=rf"'{layer['name']}' is a TFOpLambda calling "
        rf"tf.math.cumsum",
    ):
        import_larq_model(json.dumps(config), str(larq_models / "tf_ops.h5"))


@pytest.fixture(scope="module")
def zoo_models(tmp_path_factory):
    """One larq subprocess builds every Larq Zoo architecture (random weights): ~30 s."""
    folder = tmp_path_factory.mktemp("larq_zoo")
    env = {**os.environ, "TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run(
        [sys.executable, ORACLE, "zoo", str(folder)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return folder, json.loads((folder / "zoo.json").read_text())


def test_zoo_list_is_larq_zoos(zoo_models):
    assert sorted(zoo_models[1]) == sorted(ZOO)


def assert_same_logits(actual, expected):
    """Random BN statistics and weights make untrained Zoo logits reach 1e2..1e5 (QuickNet's
    float shortcuts add up block after block), so the tolerance scales with them: rtol 1e-5
    and atol 1e-5 of the largest |logit|. Float reassociation (tf_keras fuses BatchNorm,
    Keras 3 does not) moves logits by ~1e-6 of that; one flipped binary activation upstream
    moves them by far more."""
    scale = np.abs(expected).max()
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5 * scale)


@pytest.mark.parametrize("name", ZOO)
def test_zoo_model_matches_larq(zoo_models, name):
    folder, manifest = zoo_models
    model = import_larq_model(folder / f"{name}.json", folder / f"{name}.h5")
    reference = np.load(folder / f"{name}_io.npz")
    # Logits a saturated softmax would hide: with logits this large the probabilities are
    # one-hot, so they are compared as well but prove little on their own.
    logits = keras.Model(model.input, model.get_layer(manifest[name]["logits_layer"]).output)
    assert_same_logits(logits(reference["x"], training=False).numpy(), reference["logits"])
    outputs = model(reference["x"], training=False).numpy()
    np.testing.assert_allclose(outputs, reference["y"], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["MeliusNet22", "RealToBinaryNet", "DoReFaNet", "QuickNetSmall"])
def test_imported_zoo_model_round_trips_keras_file(zoo_models, tmp_path, name):
    """The layers and quantizers the Zoo's Lambdas and functions become save and load."""
    folder, _ = zoo_models
    model = import_larq_model(folder / f"{name}.json", folder / f"{name}.h5")
    model.save(tmp_path / f"{name}.keras")
    loaded = keras.models.load_model(tmp_path / f"{name}.keras")
    x = np.load(folder / f"{name}_io.npz")["x"]
    np.testing.assert_array_equal(loaded(x, training=False), model(x, training=False))


@pytest.mark.parametrize("name", ["xnor_weight_scale", "magnitude_aware_sign_unclipped"])
def test_zoo_quantizer_functions_equal_larq_zoos(zoo_models, name):
    """XNORNet's and DoReFaNet's kernel quantizers, forward and gradient, at 0 and clip edges."""
    import tensorflow as tf

    reference = np.load(zoo_models[0] / "zoo_quantizers.npz")
    x = tf.constant(reference["x"])
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = quantizers.get(name)(x)
    gradient = tape.gradient(y, x, output_gradients=tf.constant(reference["upstream"]))
    np.testing.assert_allclose(y, reference[f"y_{name}"], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(gradient, reference[f"grad_{name}"], rtol=1e-6, atol=1e-7)


def _meliusnet_layer(config, suffix):
    return next(entry for entry in config["config"]["layers"] if entry["name"].endswith(suffix))


def _not_meliusnet(entry):
    entry["config"]["module"] = "my_project.blocks"


def _wrong_merge_width(entry):
    entry["config"]["function"][2] = [entry["config"]["function"][2][0] + 32]


def _other_tf_op(entry):
    entry["config"]["function"][2][2]["config"] = "cumsum"


@pytest.mark.parametrize(
    "suffix,change",
    [
        ("_improve_merge", _not_meliusnet),
        ("_improve_merge", _wrong_merge_width),
        ("stem_s1_groupconv_split", _other_tf_op),
    ],
    ids=["other_module", "other_width", "other_tf_op"],
)
def test_unknown_lambda_is_refused(zoo_models, suffix, change):
    """Only the Zoo's own Lambdas import: recognised by module, name and closure data (the
    bytecode is never read); anything else is refused by name."""
    folder, _ = zoo_models
    config = json.loads((folder / "MeliusNet22.json").read_text())
    entry = _meliusnet_layer(config, suffix)
    change(entry)
    with pytest.raises(InputError, match=rf"'{entry['name']}' is a Lambda"):
        import_larq_model(json.dumps(config), str(folder / "MeliusNet22.h5"))


def test_check_tool_table():
    from tools import larq_zoo_check

    row = {
        "architecture": "XNORNet",
        "input_size": 224,
        "params": 58341728,
        "mapped": {"XnorWeightScale": 6},
        "max_abs_logit": 1380.0,
        "logits_max_rel_diff": 2.2e-7,
        "probabilities_max_abs_diff": 0.0,
        "larq_lce": "ok",
        "census_equal": False,
        "census_differences": {"LceBconv2d": [6, 5]},
        "float_fallback": [],
        "bconv": [6, 5],
        "lce_bytes": [7654500, 153965392],
    }
    failed = {**row, "architecture": "X", "larq_lce": "ConverterError: no"}
    text = larq_zoo_check.table([row, failed])
    assert "| XNORNet | 224 | 58,341,728 | 6 XnorWeightScale | 1.38e+03 | 2.2e-07 |" in text
    assert "differs: LceBconv2d 6/5 | 6 / 5 (*) |" in text and "larq's conversion failed" in text
    assert larq_zoo_check.FOOTNOTE in text
