"""LERP-PSA's ResMLP models (parameter and MAC table), its two-stage recipe and the blockwise
knowledge transfer."""

import json
import os

import keras
import numpy as np
import pytest

from effkeras import models, training
from effkeras.errors import InputError
from effkeras.graph import summary
from effkeras.layers import BSplineActivation, LayerScale, ResPSA
from effkeras.models import resmlp
from effkeras.training import recipes
from effkeras.training.transfer import BlockSchedule, FeatureTransfer

# The paper's CIFAR-10 ResMLP (4 blocks, embed 96, 32x32x3, 10 classes): trainable parameters
# (BN γ/β included, running statistics not) of ReLU, LERP-PSA and B-spline at each hidden
# width H, and MACs 1,868,736 + 49,152·H.
TABLE = {
    384: (322_410, 372_330, 447_210),
    192: (174_186, 204_138, 249_066),
    96: (100_074, 120_042, 149_994),
    48: (63_018, 77_994, 100_458),
    24: (44_490, 56_970, 75_690),
}
SUFFIX = {192: "h2", 96: "h1", 48: "h05", 24: "h025"}


def _trainable(model):
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


def _row(name):
    model = models.get(name)
    macs = summary.totals(summary.summarize(model))["float_macs"]
    return _trainable(model), macs


@pytest.mark.parametrize("hidden", sorted(SUFFIX))
def test_students_match_the_table(hidden):
    for activation, params in zip(resmlp.ACTIVATIONS, TABLE[hidden]):
        name = f"resmlp_{activation}_{SUFFIX[hidden]}"
        assert _row(name) == (params, 1_868_736 + 49_152 * hidden), name
        info = models.info(name)
        assert (info.family, info.recipe, info.deploy) == ("lerp_psa", "lerp_psa_distill", "float")


def test_teacher_matches_the_table():
    assert _row("resmlp_relu_h4") == (TABLE[384][0], 20_743_104)
    assert models.info("resmlp_relu_h4").recipe == "resmlp_teacher"


def test_block_layout():
    psa = models.get("resmlp_psa_h1")
    names = [layer.name for layer in psa.layers]
    assert names[names.index("block2_norm2") : names.index("block2_out") + 1] == [
        "block2_norm2",
        "block2_mlp_psa1",
        "block2_mlp_fc1",
        "block2_mlp_psa2",
        "block2_mlp_fc2",
        "block2_scale2",
        "block2_out",
    ]
    tables = [layer for layer in psa.layers if isinstance(layer, ResPSA)]
    assert [t.channels for t in tables] == [96, 96] * 4
    assert all((t.grid_size, t.grid_range, t.expansion, t.eps) == (64, 4.0, 8, 1.0) for t in tables)
    assert not any(
        getattr(layer, "activation", None) is keras.activations.relu for layer in psa.layers
    )  # no ReLU anywhere
    relu = models.get("resmlp_relu_h2")
    assert relu.get_layer("block1_mlp_fc1").activation is keras.activations.relu
    assert relu.get_layer("block1_mlp_fc1").units == 192
    spline = models.get("resmlp_bspline_h05")
    splines = [layer for layer in spline.layers if isinstance(layer, BSplineActivation)]
    assert [(s.channels, s.size, s.tv2) for s in splines[:2]] == [(96, 65, 1e-5), (48, 65, 1e-5)]
    assert spline.losses  # the TV(2) penalty
    scale = psa.get_layer("block1_scale1")
    assert isinstance(scale, LayerScale) and scale.use_bias
    np.testing.assert_allclose(keras.ops.convert_to_numpy(scale.gamma), 0.1)
    norm = psa.get_layer("block1_norm1")
    assert (norm.momentum, norm.epsilon, norm.axis) in ((0.9, 1e-5, -1), (0.9, 1e-5, [2]))


def test_bad_input_size():
    with pytest.raises(ValueError, match="multiples of 4"):
        resmlp.resmlp((30, 30, 3), 10, hidden_factor=1)
    with pytest.raises(ValueError, match="activation"):
        resmlp.resmlp((32, 32, 3), 10, hidden_factor=1, activation="gelu")


def test_two_stage_recipe():
    recipe = recipes.get("lerp_psa_distill")
    assert (recipe.loss.kind, recipe.loss.alpha, recipe.loss.temperature) == (
        "distillation",
        0.8,
        1.0,
    )
    assert recipe.optimizer == "adamw" and recipe.weight_decay.rate == 0
    assert (recipe.learning_rate, recipe.epochs, recipe.batch_size) == (1e-3, 300, 128)
    schedule = recipes.learning_rate_schedule(
        recipe, epochs=300, steps_per_epoch=10, batch_size=128
    )
    assert float(schedule(0)) == pytest.approx(1e-3)
    assert float(schedule(3000)) == pytest.approx(1e-5)
    stage1 = recipe.transfer_stage(blocks=4)
    assert stage1.epochs == 200 and stage1.optimizer == "adamw"
    constant = recipes.learning_rate_schedule(
        stage1, epochs=200, steps_per_epoch=10, batch_size=128
    )
    assert constant == pytest.approx(1e-3)
    assert recipe.transfer_stage(blocks=4, epochs_per_block=2).epochs == 8
    with pytest.raises(ValueError, match="distillation loss"):
        recipes.Recipe(recipes.Optimizer("adamw"), 1e-3, 1, 8, 8, transfer=recipe.transfer)


def _tiny(name, seed):
    keras.utils.set_random_seed(seed)
    return models.get(name, embed=16, blocks=2)


def test_feature_transfer_trains_one_block_at_a_time_with_one_optimizer():
    student, teacher = _tiny("resmlp_psa_h1", 0), _tiny("resmlp_relu_h4", 1)
    model = FeatureTransfer(student, teacher)
    model.copy_stem()
    model.compile(keras.optimizers.AdamW(1e-2, weight_decay=0.0))
    images = np.random.default_rng(0).uniform(0, 255, (16, 32, 32, 3)).astype("float32")

    def snapshot():
        return {v.path: np.array(v) for v in student.weights}

    before = snapshot()
    model.fit(images, epochs=2, batch_size=8, verbose=0, callbacks=[BlockSchedule(1)])
    after = snapshot()
    changed = {path for path in before if not np.array_equal(before[path], after[path])}
    assert any(p.startswith("block1_") for p in changed)
    assert any(p.startswith("block2_") for p in changed)
    assert not any(p.startswith("embed") for p in changed)
    for w_student, w_teacher in zip(
        student.get_layer("embed").weights, teacher.get_layer("embed").weights
    ):
        np.testing.assert_array_equal(np.array(w_student), np.array(w_teacher))
    assert model.block == 2 and int(model.optimizer.iterations) == 4
    # Block 1's Adam moments survive block 2 (one optimizer through the blocks).
    first = model.block_variables(1)[0]
    moment = model.optimizer._momentums[model.optimizer._get_variable_index(first)]
    assert np.any(np.array(moment) != 0)
    # The loss is the MSE of block 2's features now.
    mse = float(
        np.mean(
            (
                np.array(model._prefixes(2)[0](images, training=False))
                - np.array(model._prefixes(2)[1](images, training=False))
            )
            ** 2
        )
    )
    assert model.evaluate(images, batch_size=16, verbose=0) == pytest.approx(mse, rel=1e-4)


def test_transfer_needs_matching_blocks():
    student = _tiny("resmlp_psa_h1", 0)
    keras.utils.set_random_seed(0)
    teacher = models.get("resmlp_relu_h4", embed=16, blocks=3)
    with pytest.raises(InputError, match="same blocks"):
        FeatureTransfer(student, teacher)


def test_two_stage_training_runs_both_stages_and_resumes(tmp_path):
    config = dict(
        model="resmlp_psa_h025",
        dataset="synthetic",
        batch_size=16,
        steps_per_epoch=2,
        run_eagerly=True,  # a few steps: tracing would take most of the time
        output_dir=str(tmp_path),
        teacher="resmlp_relu_h05",
        transfer_epochs=1,
        verbose=0,
    )
    first = training.train(training.TrainConfig(epochs=1, **config))
    stage1 = json.loads((tmp_path / "transfer" / "state.json").read_text())
    assert stage1["epoch"] == 4  # 4 blocks x 1 epoch
    assert [set(h) for h in stage1["history"]] == [{"epoch", "loss", "val_loss"}] * 4
    assert first["epochs"] == 1 and set(first["test"]) == {"top1", "top5", "loss"}
    checkpoint = tmp_path / "transfer" / stage1["checkpoint"]
    stamp = os.stat(checkpoint).st_mtime_ns
    second = training.train(training.TrainConfig(epochs=2, **config))
    assert [h["epoch"] for h in second["history"]] == [1, 2]
    assert second["history"][0] == first["history"][0]
    assert os.stat(checkpoint).st_mtime_ns == stamp  # stage 1 was complete: not run again


def test_transfer_epochs_is_checked(tmp_path):
    with pytest.raises(InputError, match="two-stage"):
        training.train(
            training.TrainConfig(
                model="resmlp_relu_h4",
                dataset="synthetic",
                output_dir=str(tmp_path),
                transfer_epochs=2,
            )
        )
    with pytest.raises(InputError, match=">= 0"):
        training.train(
            training.TrainConfig(
                model="resmlp_psa_h1",
                dataset="synthetic",
                output_dir=str(tmp_path),
                transfer_epochs=-1,
            )
        )


def test_learned_activations_count_as_nonlinear_units():
    # PSA at H has as many non-linear outputs per image as ReLU at 2H: 4 blocks x 64 tokens x
    # (96 + H) vs 4 x 64 x 2H.
    from effkeras.graph import nn_mass

    assert nn_mass.nonlinear_units(models.get("resmlp_psa_h1")) == 4 * 64 * (96 + 96)
    assert nn_mass.nonlinear_units(models.get("resmlp_relu_h2")) == 4 * 64 * 192
    assert nn_mass.nonlinear_units(models.get("resmlp_bspline_h05")) == 4 * 64 * (96 + 48)
