"""ERN (arXiv 2410.11553): quantizers and pixel embedding against the official code's formulas,
architectures against Table 2 and the code's networks, recipe, training, ten-crop TTA."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import run_app

from effkeras import evaluation, graph, models, quantizers, training
from effkeras.data import augment
from effkeras.errors import InputError
from effkeras.graph import summary
from effkeras.layers import PixelEmbedding, QuantConv2D
from effkeras.layers.ern import thermometer_thresholds
from effkeras.training import recipes

F32 = np.float32


def forward_and_gradient(function, x, upstream):
    variable = tf.Variable(x)
    with tf.GradientTape() as tape:
        y = function(variable)
        loss = tf.reduce_sum(y * upstream)
    return y.numpy(), tape.gradient(loss, variable).numpy()


# --- activation quantizer (the official code's HalfWaveGaussianQuantization) --------------------


def numpy_hwgq(x, post_scale, delta, upstream):
    """The official code's HWGQ in float64: q = floor(clip(x, 0, 2)·1.5 + 0.5); a = q·2/3 or q;
    STE in [0, 2] (×1.5 without post-scale), then EWGS against q·2/3."""
    q = np.floor(np.clip(x.astype(np.float64), 0, 2) * 1.5 + 0.5)
    inside = (x >= 0) & (x <= 2)
    g = upstream * inside * (1.0 if post_scale else 1.5)
    g = g * (1 + delta * np.sign(g) * (x - q * 2 / 3))
    return (q * 2 / 3 if post_scale else q), g


@pytest.mark.parametrize(
    "post_scale, delta", [(True, 0.0), (False, 0.0), (True, 0.01), (False, 0.5)]
)
def test_activation_quantizer_matches_numpy(post_scale, delta):
    rng = np.random.default_rng(0)
    # Away from the thresholds (float64 and float32 agree there); the thresholds are tested below.
    x = rng.uniform(-1, 3, 400).astype(F32)
    x = x[np.min(np.abs(x[:, None] - np.float32([1 / 3, 1, 5 / 3])), axis=1) > 1e-5]
    x = np.concatenate([x, F32([0, 2, -1e-7, 2 + 2.4e-7])])  # the STE window's edges
    upstream = rng.uniform(-2, 2, x.shape).astype(F32)
    quantizer = quantizers.HalfWaveGaussianQuantizer(post_scale=post_scale, ewgs_delta=delta)
    y, grad = forward_and_gradient(quantizer, x, upstream)
    expected_y, expected_grad = numpy_hwgq(x, post_scale, delta, upstream)
    np.testing.assert_allclose(y, expected_y, rtol=1e-6)
    np.testing.assert_allclose(grad, expected_grad, rtol=1e-5, atol=1e-7)
    assert quantizer.bits == 2 and quantizer.step == pytest.approx(2 / 3 if post_scale else 1)


def test_activation_thresholds_are_one_third_one_five_thirds():
    quantizer = quantizers.HalfWaveGaussianQuantizer(post_scale=False)
    thresholds = F32(quantizer.thresholds)
    np.testing.assert_array_equal(thresholds, F32([1 / 3, 1, 5 / 3]))
    below = np.nextafter(thresholds, F32(-np.inf))
    y, _ = forward_and_gradient(quantizer, np.concatenate([below, thresholds]), F32(np.ones(6)))
    np.testing.assert_array_equal(y, [0, 1, 2, 1, 2, 3])  # code m starts exactly at threshold m


def test_activation_quantizer_defaults_equal_ste_unsigned():
    x = np.random.default_rng(1).uniform(-1, 3, 500).astype(F32)
    upstream = np.ones_like(x)
    ours = forward_and_gradient(quantizers.HalfWaveGaussianQuantizer(), x, upstream)
    larq_style = forward_and_gradient(quantizers.UnsignedQuantizer(2, 2.0), x, upstream)
    for a, b in zip(ours, larq_style):
        np.testing.assert_array_equal(a, b)


# --- weight quantizers (the official code's) ----------------------------------------------------


def test_channel_mean_scaled_weights():
    rng = np.random.default_rng(2)
    kernel = rng.normal(size=(3, 3, 8, 5)).astype(F32)
    kernel[0, 0, 0, :] = 0  # sign(0) = +1
    upstream = rng.normal(size=kernel.shape).astype(F32)
    alpha = np.abs(kernel).mean(axis=(0, 1, 2))
    expected = np.where(kernel >= 0, 1, -1) * alpha
    for delta in (0.0, 0.01):
        quantizer = quantizers.BinaryChannelWiseMeanScaling(ewgs_delta=delta)
        y, grad = forward_and_gradient(quantizer, kernel, upstream)
        np.testing.assert_allclose(y, expected, rtol=1e-6)
        # Identity STE (no clip, nothing through α), then EWGS.
        ewgs = 1 + delta * np.sign(upstream) * (kernel - expected)
        np.testing.assert_allclose(grad, upstream * ewgs, rtol=1e-6)
    np.testing.assert_allclose(quantizer.scale(kernel), alpha, rtol=1e-6)
    np.testing.assert_array_equal(quantizer.signs(kernel) * quantizer.scale(kernel), y)
    assert quantizer.bits == 1


def test_shared_one_over_32_weights():
    rng = np.random.default_rng(3)
    kernel = rng.normal(size=(1, 1, 6, 4)).astype(F32)
    kernel[0, 0, 0, 0] = 0
    upstream = rng.normal(size=kernel.shape).astype(F32)
    quantizer = quantizers.BinaryPower2Scaling(32, ewgs_delta=0.01)
    y, grad = forward_and_gradient(quantizer, kernel, upstream)
    np.testing.assert_array_equal(y, np.where(kernel >= 0, 1, -1) / 32)
    ewgs = 1 + 0.01 * np.sign(upstream) * (kernel - y)
    np.testing.assert_allclose(grad, upstream * ewgs, rtol=1e-6)
    np.testing.assert_array_equal(quantizer.scale(kernel), np.full(4, 1 / 32))
    _, plain = forward_and_gradient(quantizers.BinaryPower2Scaling(), kernel, upstream)
    np.testing.assert_array_equal(plain, upstream)
    assert quantizer.bits == 1


def test_quantizer_names_configs_and_bad_arguments():
    for name, cls in (
        ("half_wave_gaussian", quantizers.HalfWaveGaussianQuantizer),
        ("binary_channel_wise_mean_scaling", quantizers.BinaryChannelWiseMeanScaling),
        ("binary_power2_scaling", quantizers.BinaryPower2Scaling),
    ):
        assert isinstance(quantizers.get(name), cls)
    quantizer = quantizers.HalfWaveGaussianQuantizer(2, 3.0, post_scale=False, ewgs_delta=0.01)
    restored = quantizers.get(quantizers.serialize(quantizer))
    assert restored.get_config() == quantizer.get_config()
    assert restored.thresholds == (0.5, 1.5, 2.5)
    for bad in (
        lambda: quantizers.BinaryPower2Scaling(24),
        lambda: quantizers.BinaryChannelWiseMeanScaling(-0.1),
        lambda: quantizers.HalfWaveGaussianQuantizer(0),
    ):
        with pytest.raises(InputError):
            bad()


# --- pixel embedding (§3.3; the official code's PixelEmbeddingV3) -------------------------------


def spec_thermometer(x):
    """The official code's float formula in float32: y = x/80 - b_i - 1e-4,
    z = floor(clip(y, 0, 4 - 1e-6))."""
    b = (np.arange(10, dtype=F32) + 1) / F32(10) - 1
    y = F32(x)[..., None] * F32(1 / 80) - b - F32(1e-4)
    return np.floor(np.clip(y, 0, F32(4 - 1e-6)))


def test_thermometer_matches_the_spec_for_every_byte():
    values = np.arange(256, dtype=F32)
    image = np.stack([values, 255 - values, (values * 7) % 256], -1)[None, :, None, :]  # 1x256x1x3
    z = PixelEmbedding()(image).numpy()[0, :, 0, :]  # (256, 30)
    assert z.shape == (256, 30) and set(np.unique(z)) == {0, 1, 2, 3}
    for c in range(3):
        channel = image[0, :, 0, c]
        block = z[:, 10 * c : 10 * c + 10]  # colour-major: channel 10·c + i
        np.testing.assert_array_equal(block, spec_thermometer(channel))
        integer_form = sum(
            channel[:, None] > 8 * (10 * (m - 1) + np.arange(10) + 1) for m in (1, 2, 3)
        )
        np.testing.assert_array_equal(block, integer_form)
    total = z[:, :10].sum(axis=1)
    np.testing.assert_array_equal(total[1:], np.minimum(30, (values[1:] - 1) // 8))  # 31 levels
    steps = lambda i: list(np.flatnonzero(np.diff(z[:, i])) + 1)  # noqa: E731
    assert steps(0) == [9, 89, 169] and steps(9) == [81, 161, 241]


def test_thermometer_rounds_fractional_pixels_and_encodes_grayscale():
    x = np.random.default_rng(4).uniform(0, 255, (2, 4, 4, 1)).astype(F32)
    z = PixelEmbedding()(x).numpy()
    assert z.shape == (2, 4, 4, 10)  # one channel -> 10 embedding channels
    rounded = np.floor(x + 0.5)
    np.testing.assert_array_equal(z, PixelEmbedding()(rounded).numpy())
    np.testing.assert_array_equal(thermometer_thresholds()[:, 0], 8 * np.arange(1, 11) + 0.5)
    variable = tf.Variable(x)
    with tf.GradientTape() as tape:
        out = tf.reduce_sum(PixelEmbedding()(variable))
    gradient = tape.gradient(out, variable)
    assert gradient is None or not np.any(gradient)
    assert PixelEmbedding().trainable is False and not PixelEmbedding().weights


# --- architectures (Table 2; the official code's networks) --------------------------------------

# model: (#binary convs, binary weights (derived), Table 2 size in MiB, conv GMACs @256 (derived))
TABLE = {
    "ern18_075": (25, 8.216e6, 0.98, 3.09),
    "ern18": (25, 11.769e6, 1.40, 3.32),
    "ern34": (41, 21.869e6, 2.61, 5.73),
    "ern50": (57, 25.589e6, 3.05, 6.37),
    "ern101": (108, 44.529e6, 5.31, 11.22),
}


@pytest.mark.parametrize("name", sorted(TABLE))
def test_weight_size_convs_and_macs_match_the_table(name):
    convs, binary_weights, mib, gmacs = TABLE[name]
    # 32x32 is the total stride: every map is 1/8 of its size at 256, so MACs scale by 64.
    model = models.get(name, input_shape=(32, 32, 3))
    totals = summary.as_dict(model)["totals"]
    assert totals["params"]["1bit"] == pytest.approx(binary_weights, abs=500)
    assert totals["params"]["1bit"] / 8 / 2**20 == pytest.approx(mib, rel=0.01)
    rows = summary.summarize(model)
    w1a2 = [r for r in rows if r.kind == "QuantConv2D"]
    assert len(w1a2) == convs
    assert sum(r.macs for r in w1a2) * 64 / 1e9 == pytest.approx(gmacs, abs=0.005)
    # Every conv is w1a2; the only float parameters are BatchNorm's.
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            assert graph.layer_precision(layer) == (2, 1), layer.name
        assert not isinstance(layer, (keras.layers.Dense, keras.layers.MaxPooling2D))
    bn = sum(
        4 * l.gamma.shape[0] for l in model.layers if isinstance(l, keras.layers.BatchNormalization)
    )
    assert totals["params"]["32bit"] == bn


def test_registry_metadata_and_alias():
    for name in TABLE:
        info = models.info(name)
        assert (
            info.family,
            info.deploy,
            info.input_shape,
            info.num_classes,
            info.min_input_size,
        ) == ("ern", "arm", (256, 256, 3), 1000, 32)
        assert recipes.get(info.recipe).optimizer == "adam"
    assert models.info("ern18x075").name == "ern18_075"
    with pytest.raises(InputError, match=">= 32"):
        models.get("ern18", input_shape=(16, 16, 3))


def quantizer_map(model):
    return {
        l.name: (l.input_quantizer, l.kernel_quantizer)
        for l in model.layers
        if isinstance(l, QuantConv2D)
    }


def test_ern18_layout_scales_and_ewgs_placement():
    model = models.get("ern18", input_shape=(256, 256, 3), ewgs_delta=0.01)
    shapes = {l.name: l.output.shape[1:] for l in model.layers}
    assert shapes["pixel_embedding"] == (256, 256, 30)
    assert shapes["stem_conv1_2"] == (64, 64, 64)  # the code's stem: 64 @ 64x64
    for stage, (size, channels) in enumerate([(64, 64), (32, 128), (16, 256), (8, 512)], 1):
        assert shapes[f"stage{stage}_block2_add"] == (size, size, channels)
    assert shapes["classifier"] == (8, 8, 1000) and shapes["logits"] == (1000,)
    convs = quantizer_map(model)
    # A shortcut conv opens every stage (layer1 too, 64 -> 64); the second block is identity.
    assert [n for n in convs if "shortcut" in n] == [
        f"stage{s}_block1_shortcut_conv" for s in range(1, 5)
    ]
    for name, (inputs, kernel) in convs.items():
        shared = name.endswith(("conv2", "shortcut_conv")) and name.startswith("stage")
        assert isinstance(
            kernel,
            quantizers.BinaryPower2Scaling if shared else quantizers.BinaryChannelWiseMeanScaling,
        ), name
        # Q2ᶦ (integer codes) before every ±1/32 conv and in the shortcut blocks' conv1.
        integer = shared or name.endswith("block1_conv1") or name == "stem_conv1"
        assert inputs.post_scale is not integer, name
        # δ only where the official code forwards it: stem, shortcut kernels, head.
        in_block = name.startswith("stage")
        assert kernel.ewgs_delta == (0.0 if in_block and "shortcut" not in name else 0.01), name
        assert inputs.ewgs_delta == (0.0 if in_block or name == "stem_conv1" else 0.01), name
    stem = convs["stem_conv1"][0]
    assert (stem.max_value, stem.thresholds) == (3.0, (0.5, 1.5, 2.5))  # identity on codes 0..3
    default = quantizer_map(models.get("ern18", (32, 32, 3)))  # ERNs18's best config: δ = 0
    assert all(k.ewgs_delta == 0 for _, k in default.values())


def test_bottleneck_layout():
    model = models.get("ern50", input_shape=(32, 32, 3), num_classes=10)
    convs = quantizer_map(model)
    assert sum("shortcut" in n for n in convs) == 4  # first block of each stage only
    assert model.get_layer("stage1_block1_shortcut_conv").output.shape[-1] == 256
    assert model.get_layer("stage4_block3_add").output.shape[1:] == (1, 1, 2048)
    assert isinstance(convs["stage2_block1_conv3"][1], quantizers.BinaryPower2Scaling)
    assert convs["stage2_block1_conv2"][1].ewgs_delta == 0 and model.get_layer(
        "stage2_block1_conv2"
    ).strides == (2, 2)  # stride on the 3x3, as the code
    assert convs["stage2_block2_conv1"][0].post_scale  # identity block: Q2⁺


def test_padding_is_explicit_zero_then_valid():
    model = models.get("ern18", input_shape=(32, 32, 3), num_classes=10)
    for layer in model.layers:
        if isinstance(layer, QuantConv2D):
            assert layer.padding == "valid"
            if layer.kernel_size == (3, 3):
                assert model.get_layer(f"{layer.name}_pad").padding == ((1, 1), (1, 1))


# --- serialization ------------------------------------------------------------------------------


def test_new_layers_and_quantizers_round_trip(tmp_path):
    inputs = keras.Input((8, 8, 3))
    x = PixelEmbedding(name="embed")(inputs)
    outputs = []
    for i, (input_quantizer, kernel_quantizer) in enumerate(
        [
            (
                quantizers.HalfWaveGaussianQuantizer(2, 3.0, post_scale=False),
                quantizers.BinaryChannelWiseMeanScaling(0.01),
            ),
            (
                quantizers.HalfWaveGaussianQuantizer(ewgs_delta=0.01),
                quantizers.BinaryPower2Scaling(16, 0.02),
            ),
        ]
    ):
        outputs.append(
            QuantConv2D(
                4,
                3,
                input_quantizer=input_quantizer,
                use_bias=False,
                kernel_quantizer=kernel_quantizer,
                name=f"conv{i}",
            )(x)
        )
    model = keras.Model(inputs, keras.layers.Concatenate()(outputs))
    model.save(tmp_path / "layers.keras")
    loaded = keras.saving.load_model(tmp_path / "layers.keras")
    x = np.random.default_rng(5).uniform(0, 255, (2, 8, 8, 3)).astype(F32)
    np.testing.assert_array_equal(model(x), loaded(x))
    assert loaded.get_layer("embed").get_config() == model.get_layer("embed").get_config()
    for i in range(2):
        for attribute in ("input_quantizer", "kernel_quantizer"):
            a, b = (getattr(m.get_layer(f"conv{i}"), attribute) for m in (model, loaded))
            assert type(a) is type(b) and a.get_config() == b.get_config()


def test_model_round_trip(tmp_path):
    model = models.get("ern18_075", input_shape=(32, 32, 3), num_classes=10)
    x = np.random.default_rng(6).uniform(0, 255, (2, 32, 32, 3)).astype(F32)
    model(x, training=True)  # move the BN statistics off their initial values
    model.save(tmp_path / "ern.keras")
    loaded = keras.saving.load_model(tmp_path / "ern.keras")
    np.testing.assert_array_equal(model(x), loaded(x))


# --- recipe and training (§4.1; the official code's "best" configs) -----------------------------


def test_recipe():
    recipe = recipes.get("ern")
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    recipes.compile_model(model, recipe, epochs=4, steps_per_epoch=10, batch_size=512)
    optimizer = model.optimizer
    assert optimizer.epsilon == 1e-4 and not optimizer.weight_decay
    schedule = optimizer._learning_rate
    assert float(schedule(0)) == pytest.approx(8e-4)  # 4e-4 at 256, linear in batch, no warm-up
    assert float(schedule(20)) == pytest.approx(4e-4)  # cosine: half way is half the peak
    assert recipes.get("ern18").epochs == 800 and recipes.get("ern18").epsilon == 1e-8
    for name in ("ern", "ern_simple", "ern18"):
        for _, names in recipes.get(name).augment:
            augment.check_augmentations(names)
    expected = "mixed_float16" if tf.config.list_physical_devices("GPU") else "float32"
    assert recipes.dtype_policy(recipe) == expected
    # L2 coupled on conv kernels only: one 5e-6 penalty per conv, none on BN.
    model = models.get("ern18", input_shape=(32, 32, 3), num_classes=10)
    regularized = [l for l in model.layers if getattr(l, "kernel_regularizer", None) is not None]
    assert len(regularized) == 25 and all(isinstance(l, QuantConv2D) for l in regularized)
    assert regularized[0].kernel_regularizer.l2 == pytest.approx(5e-6)


def test_a_few_training_steps_reduce_the_loss():
    keras.utils.set_random_seed(0)
    model = models.get("ern18", input_shape=(32, 32, 3), num_classes=4)
    x = np.random.default_rng(7).uniform(0, 255, (16, 32, 32, 3)).astype(F32)
    y = np.arange(16) % 4
    recipes.compile_model(
        model, recipes.get("ern18"), epochs=8, steps_per_epoch=1, batch_size=16, learning_rate=2e-3
    )
    before = [w.numpy().copy() for w in model.trainable_weights]
    history = model.fit(x, y, epochs=8, batch_size=16, verbose=0).history["loss"]
    assert np.all(np.isfinite(history)) and history[-1] < history[0]
    changed = [not np.array_equal(a, b.numpy()) for a, b in zip(before, model.trainable_weights)]
    assert all(changed)  # every kernel and BN parameter gets a gradient


def test_fashion_mnist_grayscale_end_to_end_with_ten_crop(tmp_path, fashion_mnist_dir):
    metrics = training.train(
        training.TrainConfig(
            model="ern18_075",
            dataset="fashion_mnist",
            data_dir=str(fashion_mnist_dir),
            input_shape=(32, 32, 1),
            batch_size=8,
            steps_per_epoch=2,
            run_eagerly=True,  # a few steps: tracing would take most of the time
            epochs=1,
            output_dir=str(tmp_path),
            verbose=0,
        )
    )
    assert metrics["epochs"] == 1 and np.isfinite(metrics["test"]["loss"])
    result = evaluation.evaluate_checkpoint(
        str(tmp_path / "model.keras"),
        "fashion_mnist",
        data_dir=str(fashion_mnist_dir),
        batch_size=8,
        tta="tencrop",
        resize=40,
        crop=32,
    )
    assert result["examples"] == 20
    assert (result["tta"], result["resize"], result["crop"]) == ("tencrop", 40, 32)
    assert sum(map(sum, result["confusion"])) == 20


# --- ten-crop TTA (§4.1, Table 4) ----------------------------------------------------------------


def test_ten_crop_geometry():
    assert augment.five_crop_offsets(308, 308, 288) == [
        (0, 0),
        (0, 20),
        (20, 0),
        (20, 20),
        (10, 10),
    ]
    assert augment.five_crop_offsets(9, 12, 6)[-1] == (2, 3)  # round(1.5) = 2, as torchvision
    images = np.arange(2 * 9 * 12 * 1, dtype=F32).reshape(2, 9, 12, 1)
    crops = augment.ten_crop(tf.constant(images), 6).numpy()
    assert crops.shape == (10, 2, 6, 6, 1)
    flipped = images[:, :, ::-1]
    for k, (top, left) in enumerate(augment.five_crop_offsets(9, 12, 6)):
        np.testing.assert_array_equal(crops[k], images[:, top : top + 6, left : left + 6])
        np.testing.assert_array_equal(crops[5 + k], flipped[:, top : top + 6, left : left + 6])
    # The flipped image's top-left crop is the original's top-right crop, mirrored.
    np.testing.assert_array_equal(crops[5], crops[1][:, :, ::-1])
    with pytest.raises(InputError):
        augment.ten_crop(tf.constant(images), 10)


def test_ten_crop_averages_logits():
    inputs = keras.Input((6, 6, 1))
    # Flatten + Dense: logits depend on where each pixel is.
    model = keras.Model(inputs, keras.layers.Dense(3)(keras.layers.Flatten()(inputs)))
    images = np.random.default_rng(8).normal(size=(4, 8, 8, 1)).astype(F32)
    crops = augment.ten_crop(tf.constant(images), 6).numpy()
    expected = np.mean([model(c).numpy() for c in crops], axis=0)
    averaged = evaluation.predict_logits(model, tf.constant(images), tta="tencrop", crop=6)
    np.testing.assert_allclose(averaged, expected, rtol=1e-5, atol=1e-6)
    centre = evaluation.predict_logits(model, tf.constant(images), crop=6)
    np.testing.assert_allclose(centre, model(crops[4]).numpy(), rtol=1e-6)


def test_model_runs_at_the_crop_size_with_shared_weights():
    model = models.get("ern18", input_shape=(32, 32, 3), num_classes=10)
    larger = evaluation.with_input_size(model, 40, 40)
    assert larger.input_shape == (None, 40, 40, 3)
    assert evaluation.with_input_size(model, 32, 32) is model
    assert {id(w) for w in larger.weights} == {id(w) for w in model.weights}
    assert larger(np.zeros((1, 40, 40, 3), F32)).shape == (1, 10)


def test_tta_flags_are_checked():
    with pytest.raises(InputError, match="must not exceed"):
        evaluation.check_tta("tencrop", 256, 288)
    with pytest.raises(InputError, match="tencrop"):
        evaluation.check_tta("fivecrop", None, None)
    result = run_app(
        "apps.evaluate", "--checkpoint=nowhere.keras", "--tta=tencrop", "--resize=256", "--crop=288"
    )
    assert result.returncode == 2 and result.stderr.strip().startswith("error: --crop=288")
    assert len(result.stderr.strip().splitlines()) == 1


def test_ten_crop_on_imagenet_folders_squashes_first(tmp_path, imagenet_dir):
    """Images of several aspect ratios are squashed to resize x resize (as the official
    evaluation), then ten-cropped."""
    models.get("ern18", input_shape=(32, 32, 3), num_classes=2).save(tmp_path / "ern18.keras")
    result = evaluation.evaluate_checkpoint(
        str(tmp_path / "ern18.keras"),
        "imagenet",
        data_dir=str(imagenet_dir),
        batch_size=3,
        tta="tencrop",
        resize=36,
        crop=32,
    )
    assert result["examples"] == 4 and sum(map(sum, result["confusion"])) == 4
