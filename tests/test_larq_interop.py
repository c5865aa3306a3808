"""Importing larq (tf_keras) models: same outputs in effkeras, clear errors for what is missing."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from effkeras import quantizers
from effkeras.errors import InputError
from effkeras.interop import import_larq_model
from effkeras.layers import QuantConv2D

ORACLE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "larq_oracle.py")
MODELS = ("quicknet_block", "bireal_block", "layer_mix", "sequential")


@pytest.fixture(scope="module")
def larq_models(tmp_path_factory):
    """One larq subprocess saves every test model: config, weights, reference outputs."""
    folder = tmp_path_factory.mktemp("larq_models")
    env = {**os.environ, "TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run([sys.executable, ORACLE, "models", str(folder), *MODELS], env=env,
                          capture_output=True, text=True, timeout=300)
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


@pytest.mark.parametrize("name", ["quicknet_block", "bireal_block"])
def test_imported_block_has_larqs_lce_op_census(larq_models, name):
    from effkeras.deploy import lce, verify

    model = import_larq_model(larq_models / f"{name}.json", larq_models / f"{name}.h5")
    sample = np.load(larq_models / f"{name}_io.npz")["x"]
    _, ours = lce.convert(model, sample=sample, max_rel_diff=1e-5)
    theirs = verify.op_census(verify.operators((larq_models / f"{name}.tflite").read_bytes()))
    assert ours.op_census == theirs
    assert ours.bconv_ops == ours.binary_layers == theirs["LceBconv2d"] >= 1


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
    layer = next(entry for entry in config["config"]["layers"]
                 if entry["class_name"] == "QuantConv2D")
    layer["config"]["kernel_quantizer"]["class_name"] = "SteTern"
    with pytest.raises(InputError, match="SteTern"):
        import_larq_model(json.dumps(config), str(larq_models / "bireal_block.h5"))


def test_wrong_weights_are_refused(larq_models):
    config = str(larq_models / "bireal_block.json")
    with pytest.raises(InputError, match="same model"):
        import_larq_model(config, str(larq_models / "quicknet_block.h5"))
    with pytest.raises(InputError, match="get_weights"):
        import_larq_model(config, [np.zeros(3)])
