"""QuickNet-Small/QuickNet/QuickNet-Large and Bi-Real Net 18 equal Larq Zoo 2.4's: parameter
counts, outputs under Larq Zoo's weight files (loaded by effkeras.interop.larq_zoo), and one
LceBconv2d per binary conv after LCE conversion."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from effkeras import deploy, models
from effkeras.errors import InputError
from effkeras.graph import summary
from effkeras.interop import larq_zoo
from effkeras.layers import normalize_pixels
from effkeras.models import birealnet, quicknet

ORACLE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "larq_zoo_oracle.py")
PEERS = ("quicknet_small", "quicknet", "quicknet_large", "birealnet18")
PARAMS = {**quicknet.PARAMS, **birealnet.PARAMS}
TRAINABLE_PARAMS = {**quicknet.TRAINABLE_PARAMS, **birealnet.TRAINABLE_PARAMS}
SIZE = 224  # Larq Zoo's input size: its counts, and the odd map sizes its max-pools make
LCE_SIZE = 96  # test_every_model's size for ImageNet binary nets (every binary map >= 3x3)


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    """One Larq Zoo subprocess: counts, random weights (.h5) and logits of all four models."""
    folder = tmp_path_factory.mktemp("larq_zoo")
    pixels = np.random.default_rng(0).uniform(0, 255, (3, SIZE, SIZE, 3)).astype(np.float32)
    # Larq Zoo gets exactly the bits our models' own normalisation makes.
    normalized = keras.ops.convert_to_numpy(normalize_pixels(keras.ops.convert_to_tensor(pixels)))
    np.savez(folder / "input.npz", x=normalized)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run(
        [sys.executable, ORACLE, str(folder), str(folder / "input.npz")],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    with open(folder / "counts.json") as f:
        return folder, pixels, json.load(f)


def trainable_count(model):
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


@pytest.mark.parametrize("name", PEERS)
def test_counts_and_outputs_equal_larq_zoos(zoo, name):
    folder, pixels, counts = zoo
    model = models.get(name)  # 224x224x3, 1000 classes
    assert (
        [model.count_params(), trainable_count(model)]
        == counts[name]
        == [PARAMS[name], TRAINABLE_PARAMS[name]]
    )

    reference = np.load(folder / f"{name}_logits.npy")  # before Larq Zoo's softmax
    scale = np.abs(reference).max()
    assert reference.std() > 1.0  # logits spread out: a mismatch cannot hide in saturation
    before = keras.ops.convert_to_numpy(model(pixels, training=False))
    assert np.abs(before - reference).max() > 0.1 * scale  # the comparison below can fail
    larq_zoo.load_weights(model, folder / f"{name}.h5")
    after = keras.ops.convert_to_numpy(model(pixels, training=False))
    # A binary net turns float32 rounding into sign flips: a pre-sign value within rounding of
    # zero can land on the other side under another CPU's summation order, and the flip reaches
    # the logits (seen on CI: one QuickNet-Large sample off by 1.8% of the scale). So one sample
    # equal to 1e-5 proves the weights are Larq Zoo's, and every sample stays within 5%.
    errors = np.abs(after - reference).max(axis=1)
    assert errors.min() <= 1e-5 * scale
    assert errors.max() <= 0.05 * scale


def exact_weights(model, seed=0):
    """Dyadic BN (γ = 2^k, β and mean in eighths, variance 1 - ε) and 1x1 float kernels in
    quarters: binary accumulators are integers, so Keras and LCE compute the same signs."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            shape = layer.moving_mean.shape
            values = [2.0 ** rng.integers(-2, 1, shape)] if layer.scale else []
            values += [rng.integers(-8, 9, shape) / 8] if layer.center else []
            layer.set_weights(
                values + [rng.integers(-8, 9, shape) / 8, np.full(shape, 1 - layer.epsilon)]
            )
        elif isinstance(layer, keras.layers.Conv2D) and layer.kernel_size == (1, 1):
            layer.kernel.assign(rng.integers(-4, 5, layer.kernel.shape) / 4)
    return model


def expected_census(name, blocks):
    """The op census of Larq Zoo's own LCE conversion of the model (measured with
    larq_compute_engine.convert_keras_model), without its SOFTMAX and with one more depthwise
    conv: our pixel normalisation. One LceBconv2d and one LceQuantize per binary conv (the float
    shortcut adds keep every sign apart), one ADD per block; every ReLU fused."""
    if name.startswith("quicknet"):  # float convs: stem 3x3 and 1x1, three transition 1x1
        return {
            "LceBconv2d": blocks,
            "LceQuantize": blocks,
            "ADD": blocks,
            "CONV_2D": 5,
            "DEPTHWISE_CONV_2D": 1 + 1 + 3,
            "MAX_POOL_2D": 3,
            "AVERAGE_POOL_2D": 1,
            "FULLY_CONNECTED": 1,
        }
    # Bi-Real: float stem 7x7 and three shortcut 1x1 convs; three shortcut pools and the head's.
    return {
        "LceBconv2d": blocks,
        "LceQuantize": blocks,
        "ADD": blocks,
        "CONV_2D": 4,
        "DEPTHWISE_CONV_2D": 1,
        "MAX_POOL_2D": 1,
        "AVERAGE_POOL_2D": 4,
        "FULLY_CONNECTED": 1,
    }


@pytest.mark.deploys(**dict.fromkeys(PEERS, LCE_SIZE))
@pytest.mark.parametrize("name", PEERS)
def test_lce_makes_one_bconv_per_binary_conv(name):
    # The float stem's kernel stays Keras' random draw: seeded, so that no stem output lands
    # within float rounding of zero and flips a sign between Keras and LCE (one did, unseeded).
    keras.utils.set_random_seed(0)
    model = exact_weights(models.get(name, input_shape=(LCE_SIZE, LCE_SIZE, 3)))
    binary = sum(1 for row in summary.summarize(model) if row.binary)
    config = quicknet.CONFIGS.get(name)
    assert binary == (sum(config.section_blocks) if config else sum(birealnet.BLOCKS))
    sample = np.random.default_rng(1).uniform(0, 255, (2, LCE_SIZE, LCE_SIZE, 3))
    flatbuffer, report = deploy.convert(
        model, "arm", sample=sample.astype(np.float32), max_rel_diff=1e-4
    )
    assert report.target == "lce (arm)" and report.size_bytes == len(flatbuffer)
    assert report.bconv_ops == report.binary_layers == binary and report.float_fallback == ()
    assert report.op_census == expected_census(name, binary)


def test_loader_refuses_other_files_and_leaves_the_model(zoo, tmp_path):
    folder, _, _ = zoo
    model = models.get("quicknet", input_shape=(32, 32, 3))
    kept = [w.copy() for w in model.get_weights()]
    with pytest.raises(
        InputError,
        match=r"does not hold quicknet's weights \(Larq Zoo's quick"
        r"net_weights.h5\): weighted layer 1 .*\(3, 3, 3, 8\)",
    ):
        larq_zoo.load_weights(model, folder / "quicknet_small.h5")  # narrower stem, same depth
    with pytest.raises(InputError, match="it has 41 layers with weights, quicknet has 48"):
        larq_zoo.load_weights(model, folder / "birealnet18.h5")
    (tmp_path / "notes.h5").write_text("not HDF5")
    model.save_weights(tmp_path / "keras3.weights.h5")  # HDF5, but Keras 3's own layout
    for wrong in ("notes.h5", "keras3.weights.h5"):
        with pytest.raises(InputError, match="is not a tf_keras weights file"):
            larq_zoo.load_weights(model, tmp_path / wrong)
    with pytest.raises(InputError, match="no weights file at .*download quicknet_weights.h5"):
        larq_zoo.load_weights(model, tmp_path / "missing.h5")
    assert all(np.array_equal(a, b) for a, b in zip(model.get_weights(), kept, strict=True))

    # Another classifier: refused, unless left out (fine-tuning from Larq Zoo's backbone).
    with pytest.raises(InputError, match="classifier .* pass skip_classifier=True"):
        larq_zoo.load_weights(
            models.get("birealnet18", input_shape=(32, 32, 3), num_classes=10),
            folder / "birealnet18.h5",
        )
    tuned = larq_zoo.pretrained(
        "birealnet",
        folder / "birealnet18.h5",
        input_shape=(32, 32, 3),
        num_classes=10,
        skip_classifier=True,
    )
    stem_kernel = next(
        arrays for arrays in larq_zoo.read_h5_weights(folder / "birealnet18.h5").values() if arrays
    )[0]
    np.testing.assert_array_equal(tuned.get_layer("stem_conv").kernel.numpy(), stem_kernel)
    with pytest.raises(InputError, match="Larq Zoo has no weights for resnet18"):
        larq_zoo.pretrained("resnet18", folder / "quicknet.h5")
