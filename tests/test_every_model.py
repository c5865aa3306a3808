"""Every registered model goes through the same harness: built small, saved and loaded, summarised,
and converted to its default deploy target with that target's checks. A new model is tested by
being registered."""

import keras
import numpy as np
import pytest

from effkeras import deploy, models, summary
from effkeras.training import recipes

CLASSES = 10


def small_size(info):
    """The smallest input the model and its target handle: LCE needs binary convs' maps >= the
    kernel (ImageNet binary nets: 96), the rest the model's own minimum (at least 32)."""
    if info.deploy == "arm" and info.input_shape[0] > 32:
        return 96
    return max(32, info.min_input_size)


@pytest.mark.model_sensitivity  # untrained binary nets flip signs at near-ties (lce.convert)
@pytest.mark.parametrize("name", models.names())
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
    # by several layers gives each of them the same values.
    drawn = {}
    for layer in model.layers:
        for weight in layer.trainable_weights:
            value = keras.ops.convert_to_numpy(weight)
            if value.ndim >= 2 and value.size > 16 and np.ptp(value) > 0:
                key = (value.shape, value.tobytes())
                assert key not in drawn, f"{layer.name} starts as a copy of {drawn[key]}"
                drawn[key] = layer.name

    x = np.random.default_rng(0).uniform(0, 255, (2, size, size, 3)).astype(np.float32)
    model.save(tmp_path / "model.keras")
    loaded = keras.models.load_model(tmp_path / "model.keras")
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0),
                               rtol=1e-5, atol=1e-5)

    totals = summary.totals(summary.summarize(model))
    assert totals["total_params"] == model.count_params()
    assert totals["binary_macs"] + totals["low_bit_macs"] + totals["float_macs"] > 0

    flatbuffer, report = deploy.convert(model, info.deploy)
    assert report.size_bytes == len(flatbuffer) and report.op_census
    if info.deploy == "arm":
        assert report.bconv_ops >= report.binary_layers > 0 and not report.float_fallback
    if hasattr(report, "float_ops"):
        assert report.float_ops == ()
    if hasattr(report, "cpu_ops"):
        assert report.cpu_ops == 0 and report.npu_ops > 0
