import dataclasses

import keras
import numpy as np
import pytest

from effkeras.data import augment
from effkeras.training import recipes


def lr_at(schedule, steps):
    return np.array([float(schedule(step)) for step in steps])


def test_recu_cifar_schedule_warms_up_then_decays_to_zero():
    recipe = recipes.get("recu_cifar")
    schedule = recipes.learning_rate_schedule(
        recipe, epochs=600, steps_per_epoch=10, batch_size=256
    )
    warmup = 5 * 10  # 5 of 600 epochs
    lrs = lr_at(schedule, [0, warmup // 2, warmup, warmup + (6000 - warmup) // 2, 6000])
    np.testing.assert_allclose(lrs, [0.0, 0.05, 0.1, 0.05, 0.0], atol=1e-6)


def test_schedule_scales_with_epochs_and_batch():
    recipe = recipes.get("recu_cifar")
    schedule = recipes.learning_rate_schedule(
        recipe, epochs=120, steps_per_epoch=10, batch_size=128
    )
    assert float(schedule(10)) == pytest.approx(0.05)  # warm-up is 1/120 of the run; lr x 128/256
    assert float(schedule(5)) == pytest.approx(0.025)
    flat = recipes.learning_rate_schedule(
        recipes.get("sgd_cosine"), epochs=2, steps_per_epoch=5, batch_size=128, learning_rate=0.3
    )
    assert float(flat(0)) == pytest.approx(0.3)  # no warm-up, explicit peak


def test_unknown_recipe():
    with pytest.raises(ValueError, match="known recipes"):
        recipes.get("nope")


def compiled(recipe, *, epochs=10, steps_per_epoch=4, batch_size=None, model=None):
    model = model or keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    return recipes.compile_model(
        model,
        recipe,
        epochs=epochs,
        steps_per_epoch=steps_per_epoch,
        batch_size=batch_size or recipe.batch_size,
    )


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
    np.testing.assert_allclose(
        lr_at(schedule, [0, 9, 10, 25, 4999]), 1e-3 * 0.99 ** np.array([0, 0, 1, 2, 499]), rtol=1e-5
    )
    assert dict(recipe.augment)["cifar10"] == ("rotation", "shift", "flip")


def test_mlperf_tiny_vww_steps_at_epochs_20_and_30():
    recipe = recipes.get("mlperf_tiny_vww")
    schedule = recipes.learning_rate_schedule(recipe, epochs=50, steps_per_epoch=10, batch_size=32)
    np.testing.assert_allclose(
        lr_at(schedule, [0, 199, 200, 299, 300, 499]),
        [1e-3, 1e-3, 5e-4, 5e-4, 2.5e-4, 2.5e-4],
        rtol=1e-6,
    )
    shorter = recipes.learning_rate_schedule(recipe, epochs=10, steps_per_epoch=10, batch_size=64)
    np.testing.assert_allclose(lr_at(shorter, [39, 40, 60]), [2e-3, 1e-3, 5e-4], rtol=1e-6)


def test_mobilenet_v2_rmsprop_with_per_epoch_decay():
    optimizer = compiled(recipes.get("mobilenet_v2"), steps_per_epoch=5, batch_size=192).optimizer
    assert isinstance(optimizer, keras.optimizers.RMSprop)
    assert (optimizer.rho, optimizer.momentum, optimizer.weight_decay) == (0.9, 0.9, None)
    schedule = optimizer._learning_rate
    np.testing.assert_allclose(
        lr_at(schedule, [0, 4, 5, 10]), [0.09, 0.09, 0.09 * 0.98, 0.09 * 0.98**2], rtol=1e-5
    )


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
        np.eye(3)[y_true], logits
    )
    assert float(model.loss(y_true, logits)) == pytest.approx(float(expected), rel=1e-6)


def test_sgd_nesterov_adamw_and_weight_decay_groups():
    recipe = recipes.Recipe(
        recipes.Optimizer("sgd", momentum=0.9, nesterov=True),
        learning_rate=0.1,
        epochs=1,
        batch_size=8,
        base_batch_size=8,
    )
    assert compiled(recipe).optimizer.nesterov
    recipe = recipes.Recipe(
        recipes.Optimizer("adamw", epsilon=1e-8),
        learning_rate=0.1,
        epochs=1,
        batch_size=8,
        base_batch_size=8,
        schedule=recipes.Schedule("multistep", milestones=(0.5,)),
        weight_decay=recipes.WeightDecay(0.5, decay_vectors=False),
    )
    model = keras.Sequential(
        [
            keras.Input((4,)),
            keras.layers.Dense(3, bias_initializer="ones"),
            keras.layers.BatchNormalization(),
        ]
    )
    optimizer = compiled(recipe, epochs=1, steps_per_epoch=10, model=model).optimizer
    assert isinstance(optimizer, keras.optimizers.AdamW) and optimizer.weight_decay == 0.5
    before = [v.numpy().copy() for v in model.trainable_variables]
    optimizer.apply_gradients(
        [(np.zeros(v.shape, np.float32), v) for v in model.trainable_variables]
    )
    decayed = [not np.allclose(b, v.numpy()) for b, v in zip(before, model.trainable_variables)]
    assert decayed == [True, False, False, False]  # zero gradients: only decay moves the kernel
    np.testing.assert_allclose(
        model.trainable_variables[0].numpy(), before[0] * (1 - 0.5 * 0.1), rtol=1e-6
    )


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
    expected = alpha * temperature**2 * (kl + entropy) + (1 - alpha) * ce
    distiller = Distiller(student, teacher, alpha=alpha, temperature=temperature)
    assert float(distiller.compute_loss(x, y, student(x))) == pytest.approx(expected, rel=1e-5)
    assert Distiller.from_config(distiller.get_config()).temperature == temperature


def test_several_outputs_get_weighted_losses_and_metrics_per_output():
    inputs = keras.Input((4,))
    outputs = [keras.layers.Dense(3, name=f"exit{k}")(inputs) for k in (1, 2)]
    model = keras.Model(inputs, outputs)
    recipe = recipes.Recipe(
        recipes.Optimizer("adam"),
        learning_rate=1e-3,
        epochs=1,
        batch_size=4,
        base_batch_size=4,
        loss=recipes.Loss(output_weights=(0.25, 1.0)),
    )
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


# --- RAN-e and RAN-i (arXiv 2208.08562) --------------------------------------------------------


def test_ran_e_rmsprop_lr_per_128_images_warm_up_then_cosine_to_zero():
    recipe = recipes.get("ran_e")
    assert (recipe.epochs, recipe.batch_size, recipe.ema, recipe.mix) == (350, 768, 0.0, None)
    model = compiled(recipe, epochs=350, steps_per_epoch=4)
    optimizer = model.optimizer
    assert isinstance(optimizer, keras.optimizers.RMSprop) and not optimizer.use_ema
    assert (optimizer.rho, optimizer.momentum, optimizer.epsilon) == (0.9, 0.9, 1e-3)
    assert optimizer.weight_decay is None  # L2 5e-6 is in the model's regularizers
    warmup, total = 5 * 4, 350 * 4
    np.testing.assert_allclose(
        lr_at(optimizer._learning_rate, [0, warmup // 2, warmup, total]),
        [0.0, 0.015, 0.03, 0.0],
        atol=1e-7,
    )  # 0.005 x 768 / 128
    at_128 = recipes.learning_rate_schedule(recipe, epochs=350, steps_per_epoch=4, batch_size=128)
    assert float(at_128(warmup)) == pytest.approx(0.005)
    y_true, logits = np.array([0, 2]), np.array([[2.0, 0.0, -1.0], [0.5, 0.1, 3.0]], np.float32)
    expected = keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=0.1)(
        np.eye(3)[y_true], logits
    )
    assert float(model.loss(y_true, logits)) == pytest.approx(float(expected), rel=1e-6)
    assert dict(recipe.augment) == {"imagenet": ("inception_crop", "flip", "randaugment_m9")}


def test_ran_i_adamw_warms_up_20_of_300_epochs_then_cosine_to_1e_6():
    recipe = recipes.get("ran_i")
    optimizer = compiled(recipe, epochs=300, steps_per_epoch=4).optimizer
    assert isinstance(optimizer, keras.optimizers.AdamW)
    assert (optimizer.beta_1, optimizer.beta_2, optimizer.epsilon, optimizer.weight_decay) == (
        0.9,
        0.999,
        1e-8,
        0.05,
    )
    assert optimizer.use_ema and optimizer.ema_momentum == 0.9999
    warmup, total = 20 * 4, 300 * 4
    middle = warmup + (total - warmup) // 2
    np.testing.assert_allclose(
        lr_at(optimizer._learning_rate, [0, warmup // 2, warmup, middle, total, total + 50]),
        [0.0, 2e-3, 4e-3, 1e-6 + (4e-3 - 1e-6) / 2, 1e-6, 1e-6],
        rtol=1e-5,
        atol=1e-12,
    )
    # The peak scales with the batch (4e-3 at 2560); the floor does not.
    half = recipes.learning_rate_schedule(recipe, epochs=300, steps_per_epoch=4, batch_size=1280)
    np.testing.assert_allclose(lr_at(half, [warmup, total]), [2e-3, 1e-6], rtol=1e-5)
    # Other cosine recipes still end at 0.
    recu = recipes.learning_rate_schedule(
        recipes.get("recu_cifar"), epochs=10, steps_per_epoch=4, batch_size=256
    )
    assert float(recu(40)) == 0.0


def test_ran_i_takes_soft_labels_with_label_smoothing():
    recipe = recipes.get("ran_i")
    assert recipe.soft_labels and recipe.mix == recipes.Mix(0.8, 1.0, 0.5)
    model = compiled(recipe)
    soft = np.array([[0.7, 0.3, 0.0], [0.0, 0.2, 0.8]], np.float32)  # mixed targets
    logits = np.array([[2.0, 0.0, -1.0], [0.5, 0.1, 3.0]], np.float32)
    smoothed = soft * 0.9 + 0.1 / 3
    log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    assert float(model.loss(soft, logits)) == pytest.approx(
        float(-np.mean(np.sum(smoothed * log_p, -1))), rel=1e-5
    )
    logs = model.evaluate(np.zeros((2, 4), np.float32), soft, return_dict=True, verbose=0)
    assert {"loss", "top1", "top5"} <= set(logs)  # one-hot labels: Categorical metrics


def test_ran_i_adamw_decays_kernels_but_not_1d_weights():
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, name="conv")(inputs)
    x = keras.layers.LayerNormalization(name="norm")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(3, bias_initializer="ones", name="head")(x)
    model = keras.Model(inputs, outputs)
    recipes.compile_model(
        model,
        recipes.get("ran_i"),
        epochs=300,
        steps_per_epoch=1,
        batch_size=2560,
        learning_rate=1.0,
    )
    optimizer = model.optimizer
    for variable in model.trainable_variables:
        variable.assign(np.full(variable.shape, 0.5, np.float32))
    optimizer.build(model.trainable_variables)
    optimizer.iterations.assign(20)  # the end of the 20-epoch warm-up: lr = peak = 1.0
    optimizer.apply_gradients(
        [(np.zeros(v.shape, np.float32), v) for v in model.trainable_variables]
    )
    for variable in model.trainable_variables:  # zero gradients: only the decay moves a weight
        expected = 0.5 * (1 - 0.05 * 1.0) if len(variable.shape) > 1 else 0.5
        np.testing.assert_allclose(variable.numpy(), expected, rtol=1e-6, err_msg=variable.path)
    assert sum(len(v.shape) > 1 for v in model.trainable_variables) == 2  # conv and head kernels


def test_schedule_final_rate_and_mix_are_checked():
    with pytest.raises(ValueError, match="only the cosine"):
        recipes.Schedule("exponential", final_learning_rate=1e-6)
    with pytest.raises(ValueError, match=">= 0"):
        recipes.Schedule(final_learning_rate=-1.0)
    with pytest.raises(ValueError, match="not both 0"):
        recipes.Mix()
    with pytest.raises(ValueError, match="cutmix_alpha in"):
        recipes.Mix(cutmix_alpha=2.0)
    with pytest.raises(ValueError, match="ema"):
        dataclasses.replace(recipes.get("ran_i"), ema=1.0)
    with pytest.raises(ValueError, match="cannot have a Mix"):
        dataclasses.replace(recipes.get("recu_two_stage"), mix=recipes.Mix(0.8))


def test_mixup_and_cutmix_labels_weigh_the_images_they_mix():
    import tensorflow as tf

    # Image k is uniformly 10·k with label k, so a mixed image's pixels are its label's mean.
    values = np.arange(8, dtype=np.float32) * 10
    images = np.broadcast_to(values[:, None, None, None], (8, 32, 32, 3)).copy()
    labels = np.arange(8)
    # CutMix's label weight is the box's exact area, its mask whole pixels: a rounding at the edges.
    for mix, tolerance in (({"mixup_alpha": 0.8}, 1e-3), ({"cutmix_alpha": 1.0}, 2.5)):
        mixed_images, soft = augment.mix_batches(8, seed=1, **mix)(
            tf.constant(images), tf.constant(labels)
        )
        mixed_images, soft = mixed_images.numpy(), soft.numpy()
        assert soft.shape == (8, 8) and np.all(soft >= 0)
        np.testing.assert_allclose(soft.sum(-1), 1.0, rtol=1e-5)
        np.testing.assert_allclose(mixed_images.mean(axis=(1, 2, 3)), soft @ values, atol=tolerance)
    switching = augment.mix_batches(8, mixup_alpha=0.8, cutmix_alpha=1.0, seed=2)
    kinds = set()
    for _ in range(12):  # Mixup blends every pixel, CutMix pastes a box of whole images
        mixed_images = switching(tf.constant(images), tf.constant(labels))[0].numpy()
        kinds.add(bool(np.all(np.isin(mixed_images, values))))
    assert kinds == {True, False}


def test_ran_e_augmentations_run_on_fashion_mnist_at_32x32x1_and_on_imagenet(
    fashion_mnist_dir, imagenet_dir
):
    from effkeras import data

    recipe = recipes.get("ran_e")
    train = data.load(
        "fashion_mnist",
        "train",
        input_shape=(32, 32, 1),
        batch_size=8,
        data_dir=str(fashion_mnist_dir),
        augment_with=dict(recipe.augment).get("fashion_mnist"),
    )
    images, labels = next(iter(train.dataset))
    assert images.shape == (8, 32, 32, 1) and labels.shape == (8,)
    assert 0 <= float(np.min(images)) and float(np.max(images)) <= 255
    train = data.load(
        "imagenet",
        "train",
        input_shape=(32, 32, 3),
        batch_size=6,
        data_dir=str(imagenet_dir),
        augment_with=dict(recipe.augment)["imagenet"],
    )
    images, _ = next(iter(train.dataset))
    assert images.shape == (6, 32, 32, 3) and np.all(np.isfinite(images))


def test_inception_crop_falls_back_to_the_centre_crop():
    import tensorflow as tf

    image = tf.reshape(tf.range(40 * 60 * 3, dtype=tf.float32), (40, 60, 3))
    crops = [augment.inception_crop(image, 24, 24, seed=i) for i in range(4)]
    assert all(c.shape == (24, 24, 3) for c in crops)
    # A 1-pixel-high image cannot hold a box of aspect 3/4-4/3 and 5% of the area: centre crop.
    strip = tf.reshape(tf.range(60 * 3, dtype=tf.float32), (1, 60, 3))
    np.testing.assert_allclose(
        augment.inception_crop(strip, 8, 8), augment.resize_and_centre_crop(strip, 8, 8)
    )


def test_ran_i_per_image_augmentations_run_on_cifar(cifar10_dir):
    from effkeras import data

    recipe = recipes.get("ran_i")
    names = dict(recipe.augment)["cifar10"]
    assert names == ("crop", "flip", "randaugment_m9", "random_erasing")
    train = data.load(
        "cifar10",
        "train",
        input_shape=(32, 32, 3),
        batch_size=10,
        data_dir=str(cifar10_dir),
        augment_with=names,
    )
    images, _ = next(iter(train.dataset))
    assert images.shape == (10, 32, 32, 3) and 0 <= float(np.min(images))
    assert float(np.max(images)) <= 255


def test_random_erasing_erases_a_quarter_of_the_images():
    import tensorflow as tf

    erased = augment.random_erasing(seed=0)(tf.fill((400, 16, 16, 1), 128.0)).numpy() != 128
    assert 0.2 < np.mean(np.any(erased, axis=(1, 2, 3))) < 0.3  # each image on its own


def test_larq_zoo_recipes():
    """QuickNet: Adam 1e-2 at batch 2048, 5 of 600 epochs of warm-up, cosine (one optimizer for
    Larq Zoo's two); Bi-Real Net: Adam 5e-3 at batch 512 decayed linearly to 0 over 300."""
    quicknet = recipes.get("quicknet")
    assert (quicknet.optimizer, quicknet.epochs, quicknet.batch_size) == ("adam", 600, 2048)
    schedule = recipes.learning_rate_schedule(
        quicknet, epochs=600, steps_per_epoch=2, batch_size=2048
    )
    np.testing.assert_allclose(lr_at(schedule, [0, 10, 1200]), [0.0, 1e-2, 0.0], atol=1e-7)
    bireal = recipes.get("birealnet")
    schedule = recipes.learning_rate_schedule(bireal, epochs=300, steps_per_epoch=2, batch_size=256)
    np.testing.assert_allclose(lr_at(schedule, [0, 300, 600]), [2.5e-3, 1.25e-3, 0.0], atol=1e-8)
