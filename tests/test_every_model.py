"""Every registered model goes through the same harness: built small, saved and loaded, summarised,
and converted to its default deploy target with that target's checks (for the models in
DEPLOYED_BY, by the dedicated test named there, with stricter checks). A new model is tested by
being registered."""

import keras
import numpy as np
import pytest

from effkeras import deploy, models
from effkeras.graph import summary
from effkeras.layers import BSplineActivation
from effkeras.training import recipes

CLASSES = 10


# Models whose default-target conversion a dedicated test runs, at this file's input size (ERN
# 18x0.75: 80, its odd-map case) and with stricter checks (weights under which the conversion must
# be exact, exact op counts): the harness does everything else for them.
DEPLOYED_BY = {
    **{name: "test_w1a2_pass.py::test_every_ern_converts_exactly"
       for name in ("ern18_075", "ern18", "ern34", "ern50", "ern101")},
    **{name: "test_recu.py::test_architecture_and_lce_deployment"
       for name in ("recu_resnet20", "recu_resnet18", "recu_vgg_small", "recu_resnet18_imagenet",
                    "recu_resnet34_imagenet", "recu_reactnet18", "recu_reactnet34")},
    "mlperf_tiny_resnet8":
        "test_deploy.py::test_tflm_arena_is_the_smallest_that_runs_and_outputs_match_litert",
    **{name: "test_binary_peers.py::test_lce_makes_one_bconv_per_binary_conv"
       for name in ("quicknet_small", "quicknet", "quicknet_large", "birealnet18")},
}


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
    for got, expected in zip(*(keras.tree.flatten(m(x, training=False)) for m in (loaded, model)),
                             strict=True):
        np.testing.assert_allclose(keras.ops.convert_to_numpy(got),
                                   keras.ops.convert_to_numpy(expected), rtol=1e-5, atol=1e-5)

    totals = summary.totals(summary.summarize(model))
    assert totals["total_params"] == model.count_params()
    assert totals["binary_macs"] + totals["low_bit_macs"] + totals["float_macs"] > 0

    if name in DEPLOYED_BY:
        return
    flatbuffer, report = deploy.convert(model, info.deploy)
    assert report.size_bytes == len(flatbuffer) and report.op_census
    if info.deploy == "arm":
        assert report.bconv_ops >= report.binary_layers > 0 and not report.float_fallback
    if hasattr(report, "float_ops"):
        assert report.float_ops == ()
    if hasattr(report, "cpu_ops"):
        assert report.cpu_ops == 0 and report.npu_ops > 0


def test_models_deployed_elsewhere_are_deployed_there():
    """DEPLOYED_BY names the tests that convert those models; they must still do so."""
    import test_binary_peers
    import test_deploy
    import test_recu
    import test_w1a2_pass

    covered = {name: "test_w1a2_pass.py::test_every_ern_converts_exactly"
               for name, _ in test_w1a2_pass.ERNS}
    covered.update({name: "test_recu.py::test_architecture_and_lce_deployment"
                    for name, *_ in test_recu.ARCHITECTURES})
    covered["mlperf_tiny_resnet8"] = (
        "test_deploy.py::test_tflm_arena_is_the_smallest_that_runs_and_outputs_match_litert")
    covered.update({name: "test_binary_peers.py::test_lce_makes_one_bconv_per_binary_conv"
                    for name in test_binary_peers.PEERS})
    assert covered == DEPLOYED_BY
    assert hasattr(test_deploy, DEPLOYED_BY["mlperf_tiny_resnet8"].split("::")[1])
    for name, size in test_w1a2_pass.ERNS:
        assert size == small_size(models.info(name)) or name == "ern18_075"
    for name, size, *_ in test_recu.ARCHITECTURES:
        assert size == small_size(models.info(name))
    assert all(test_binary_peers.LCE_SIZE == small_size(models.info(name))
               for name in test_binary_peers.PEERS)
