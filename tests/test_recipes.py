import numpy as np
import pytest

from effkeras.training import recipes


def lr_at(schedule, steps):
    return np.array([float(schedule(step)) for step in steps])


def test_recu_cifar_schedule_warms_up_then_decays_to_zero():
    recipe = recipes.get("recu_cifar")
    schedule = recipes.learning_rate_schedule(recipe, epochs=600, steps_per_epoch=10, batch_size=256)
    warmup = 5 * 10  # 5 of 600 epochs
    lrs = lr_at(schedule, [0, warmup // 2, warmup, warmup + (6000 - warmup) // 2, 6000])
    np.testing.assert_allclose(lrs, [0.0, 0.05, 0.1, 0.05, 0.0], atol=1e-6)


def test_schedule_scales_with_epochs_and_batch():
    recipe = recipes.get("recu_cifar")
    schedule = recipes.learning_rate_schedule(recipe, epochs=120, steps_per_epoch=10, batch_size=128)
    assert float(schedule(10)) == pytest.approx(0.05)  # warm-up is 1/120 of the run; lr x 128/256
    assert float(schedule(5)) == pytest.approx(0.025)
    flat = recipes.learning_rate_schedule(recipes.get("sgd_cosine"), epochs=2, steps_per_epoch=5,
                                          batch_size=128, learning_rate=0.3)
    assert float(flat(0)) == pytest.approx(0.3)  # no warm-up, explicit peak


def test_unknown_recipe():
    with pytest.raises(ValueError, match="known recipes"):
        recipes.get("nope")
