import keras
import numpy as np
import pytest

from effkeras.data import augment
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


def compiled(recipe, *, epochs=10, steps_per_epoch=4, batch_size=None, model=None):
    model = model or keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    return recipes.compile_model(model, recipe, epochs=epochs, steps_per_epoch=steps_per_epoch,
                                 batch_size=batch_size or recipe.batch_size)


def test_every_recipe_builds_and_names_known_augmentations():
    for name, recipe in recipes.RECIPES.items():
        optimizer = compiled(recipe).optimizer
        assert recipe.optimizer == type(optimizer).__name__.lower(), name
        for _, names in recipe.augment:
            augment.check_augmentations(names)


def test_mlperf_tiny_decays_by_099_per_epoch():
    recipe = recipes.get("mlperf_tiny")
    assert (recipe.optimizer, recipe.batch_size, recipe.epochs) == ("adam", 32, 500)
    schedule = recipes.learning_rate_schedule(recipe, epochs=500, steps_per_epoch=10, batch_size=32)
    np.testing.assert_allclose(lr_at(schedule, [0, 9, 10, 25, 4999]),
                               1e-3 * 0.99 ** np.array([0, 0, 1, 2, 499]), rtol=1e-5)
    assert dict(recipe.augment)["cifar10"] == ("rotation", "shift", "flip")


def test_mlperf_tiny_vww_steps_at_epochs_20_and_30():
    recipe = recipes.get("mlperf_tiny_vww")
    schedule = recipes.learning_rate_schedule(recipe, epochs=50, steps_per_epoch=10, batch_size=32)
    np.testing.assert_allclose(lr_at(schedule, [0, 199, 200, 299, 300, 499]),
                               [1e-3, 1e-3, 5e-4, 5e-4, 2.5e-4, 2.5e-4], rtol=1e-6)
    shorter = recipes.learning_rate_schedule(recipe, epochs=10, steps_per_epoch=10, batch_size=64)
    np.testing.assert_allclose(lr_at(shorter, [39, 40, 60]), [2e-3, 1e-3, 5e-4], rtol=1e-6)


def test_mobilenet_v2_rmsprop_with_per_epoch_decay():
    optimizer = compiled(recipes.get("mobilenet_v2"), steps_per_epoch=5, batch_size=192).optimizer
    assert isinstance(optimizer, keras.optimizers.RMSprop)
    assert (optimizer.rho, optimizer.momentum, optimizer.weight_decay) == (0.9, 0.9, None)
    schedule = optimizer._learning_rate
    np.testing.assert_allclose(lr_at(schedule, [0, 4, 5, 10]), [0.09, 0.09, 0.09 * 0.98,
                                                                0.09 * 0.98 ** 2], rtol=1e-5)


def test_efficientnet_lite_warms_up_for_5_of_350_epochs_with_label_smoothing():
    recipe = recipes.get("efficientnet_lite")
    model = compiled(recipe, epochs=350, steps_per_epoch=2, batch_size=512)
    optimizer = model.optimizer
    assert isinstance(optimizer, keras.optimizers.RMSprop) and optimizer.epsilon == 1e-3
    schedule = optimizer._learning_rate
    assert float(schedule(10)) == pytest.approx(0.032)  # 0.016 per 256, peak after 5 epochs
    assert float(schedule(5)) == pytest.approx(0.016)
    assert float(schedule(700)) == pytest.approx(0.0, abs=1e-9)
    y_true, logits = np.array([0, 2]), np.array([[2.0, 0.0, -1.0], [0.5, 0.1, 3.0]], np.float32)
    expected = keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=0.1)(
        np.eye(3)[y_true], logits)
    assert float(model.loss(y_true, logits)) == pytest.approx(float(expected), rel=1e-6)


def test_sgd_nesterov_adamw_and_weight_decay_groups():
    recipe = recipes.Recipe(recipes.Optimizer("sgd", momentum=0.9, nesterov=True),
                            learning_rate=0.1, epochs=1, batch_size=8, base_batch_size=8)
    assert compiled(recipe).optimizer.nesterov
    recipe = recipes.Recipe(recipes.Optimizer("adamw", epsilon=1e-8), learning_rate=0.1, epochs=1,
                            batch_size=8, base_batch_size=8,
                            schedule=recipes.Schedule("multistep", milestones=(0.5,)),
                            weight_decay=recipes.WeightDecay(0.5, decay_vectors=False))
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, bias_initializer="ones"),
                              keras.layers.BatchNormalization()])
    optimizer = compiled(recipe, epochs=1, steps_per_epoch=10, model=model).optimizer
    assert isinstance(optimizer, keras.optimizers.AdamW) and optimizer.weight_decay == 0.5
    before = [v.numpy().copy() for v in model.trainable_variables]
    optimizer.apply_gradients([(np.zeros(v.shape, np.float32), v) for v in model.trainable_variables])
    decayed = [not np.allclose(b, v.numpy()) for b, v in zip(before, model.trainable_variables)]
    assert decayed == [True, False, False, False]  # zero gradients: only decay moves the kernel
    np.testing.assert_allclose(model.trainable_variables[0].numpy(), before[0] * (1 - 0.5 * 0.1),
                               rtol=1e-6)


def test_distillation_loss_alpha_and_temperature():
    from effkeras.training.distillation import Distiller

    rng = np.random.default_rng(0)
    x = rng.normal(size=(6, 4)).astype(np.float32)
    y = np.arange(6) % 3
    student = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    teacher = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    s, t = student(x).numpy().astype(np.float64), teacher(x).numpy().astype(np.float64)

    def log_softmax(z):
        z = z - z.max(-1, keepdims=True)
        return z - np.log(np.exp(z).sum(-1, keepdims=True))

    # α = 1, T = 1 (ReCU stage 2): -Σ softmax(teacher)·log_softmax(student), nothing else.
    today = -np.mean(np.sum(np.exp(log_softmax(t)) * log_softmax(s), -1))
    loss = Distiller(student, teacher).compute_loss(x, y, student(x))
    assert float(loss) == pytest.approx(today, rel=1e-5)
    alpha, temperature = 0.7, 4.0
    p_t, log_p_s = np.exp(log_softmax(t / temperature)), log_softmax(s / temperature)
    kl = np.mean(np.sum(p_t * (np.log(p_t) - log_p_s), -1))
    entropy = -np.mean(np.sum(p_t * np.log(p_t), -1))
    ce = -np.mean(log_softmax(s)[np.arange(6), y])
    expected = alpha * temperature ** 2 * (kl + entropy) + (1 - alpha) * ce
    distiller = Distiller(student, teacher, alpha=alpha, temperature=temperature)
    assert float(distiller.compute_loss(x, y, student(x))) == pytest.approx(expected, rel=1e-5)
    assert Distiller.from_config(distiller.get_config()).temperature == temperature


def test_several_outputs_get_weighted_losses_and_metrics_per_output():
    inputs = keras.Input((4,))
    outputs = [keras.layers.Dense(3, name=f"exit{k}")(inputs) for k in (1, 2)]
    model = keras.Model(inputs, outputs)
    recipe = recipes.Recipe(recipes.Optimizer("adam"), learning_rate=1e-3, epochs=1, batch_size=4,
                            base_batch_size=4, loss=recipes.Loss(output_weights=(0.25, 1.0)))
    compiled(recipe, model=model)
    x, y = np.random.default_rng(1).normal(size=(4, 4)).astype(np.float32), np.arange(4) % 3
    logs = model.evaluate(x, (y, y), return_dict=True, verbose=0)
    assert {"exit1_top1", "exit1_top5", "exit2_top1", "exit2_top5"} <= set(logs)
    assert logs["loss"] == pytest.approx(0.25 * logs["exit1_loss"] + logs["exit2_loss"], rel=1e-5)
    with pytest.raises(ValueError, match="weighs 2 outputs"):
        compiled(recipe, model=keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)]))


def test_recipe_data_is_checked():
    with pytest.raises(ValueError, match="optimizer 'lamb'"):
        recipes.Optimizer("lamb")
    with pytest.raises(ValueError, match="only the cosine"):
        recipes.Schedule("exponential", warmup_epochs=2)
    with pytest.raises(ValueError, match="milestones"):
        recipes.Schedule("multistep", milestones=(0.6, 0.4))
    with pytest.raises(ValueError, match="loss kind"):
        recipes.Loss("focal")
