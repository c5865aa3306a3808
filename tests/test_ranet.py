"""RANet (arXiv 2003.07326): the plan against the worked tables of the official code's configs,
exact parameter counts and per-exit FLOPs (model and plan), the resize layer, conversion of the
K outputs, and the recipe. Full-size ImageNet RANets (131-149M parameters) are only planned."""

import math

import keras
import numpy as np
import pytest
from tensorflow.lite.python import schema_py_generated as schema

from effkeras import deploy, models
from effkeras.graph import summary
from effkeras.layers import BilinearResize
from effkeras.models import ranet
from effkeras.models.ranet_plan import Config, costs
from effkeras.training import recipes

# A RANet small enough to convert in seconds: every kind of block, one layer each, 3 exits.
TINY = dict(n_channels=4, growth_rate=4, step=1, n_blocks=1, block_step=1)


def trainable(model):
    return sum(math.prod(w.shape) for w in model.trainable_weights)


@pytest.fixture(scope="module")
def cifar():
    return models.get("ranet_cifar")


@pytest.fixture(scope="module")
def anytime():
    return models.get("ranet_cifar_anytime")


# --- the plan ----------------------------------------------------------------------------------

# The README CIFAR config, block by block: (sub-network, block, kind, layers, input channels @
# size, dense output @ size, conv_last channels (from), transition, output @ size, exit).
README_TABLE = [
    (1, 1, "normal", 2, (64, 8), (112, 8), (0, 0), False, (112, 8), 1),
    (1, 2, "normal", 4, (112, 8), (208, 8), (0, 0), False, (208, 8), 2),
    (2, 1, "fusion", 2, (32, 16), (56, 16), (14, 112), False, (70, 16), None),
    (2, 2, "fusion", 4, (70, 16), (118, 8), (29, 208), True, (73, 8), None),
    (2, 3, "normal", 6, (73, 8), (145, 8), (0, 0), False, (145, 8), 3),
    (2, 4, "normal", 8, (145, 8), (241, 8), (0, 0), False, (241, 8), 4),
    (3, 1, "fusion", 2, (16, 32), (28, 32), (7, 56), False, (35, 32), None),
    (3, 2, "fusion", 4, (35, 32), (59, 16), (14, 118), True, (36, 16), None),
    (3, 3, "fusion", 6, (36, 16), (72, 16), (18, 145), False, (90, 16), None),
    (3, 4, "fusion", 8, (90, 16), (138, 8), (34, 241), True, (86, 8), None),
    (3, 5, "normal", 10, (86, 8), (146, 8), (0, 0), False, (146, 8), 5),
    (3, 6, "normal", 12, (146, 8), (218, 8), (0, 0), False, (218, 8), 6),
]


def test_plan_reproduces_the_readme_cifar_table():
    plan = ranet.plan_of("ranet_cifar")
    assert [(s.channels, s.stride, s.size) for s in plan.initial] == [
        (16, 1, 32),
        (32, 2, 16),
        (64, 2, 8),
    ]
    rows = [
        (
            b.subnet,
            b.index,
            b.kind,
            len(b.layers),
            (b.in_channels, b.in_size),
            (b.dense_channels, b.size),
            (b.conv_last, b.conv_last_in),
            b.transition,
            (b.out_channels, b.size),
            b.exit,
        )
        for b in plan.blocks
    ]
    assert rows == README_TABLE
    assert [b.index for b in plan.blocks if b.down] == [2, 2, 4]  # S2B2, S3B2, S3B4
    # A down block's last full-resolution features (what a stage hand-off would carry).
    assert plan.block(2, 2).features(3) == (106, 16) and plan.block(3, 4).features(7) == (132, 16)
    # Growth and bottleneck widths: S1 g = 24 (bottleneck <= 96), S2 9 + 3 (18 / 12), S3 5 + 1.
    s1, s2, s3 = plan.subnets
    assert (s1.growth, s2.growth, s2.coarse_growth, s3.growth, s3.coarse_growth) == (
        24,
        12,
        3,
        6,
        1,
    )
    assert [layer.width for b in s1.blocks for layer in b.layers][:3] == [64, 88, 96]

    def paths(layer):
        return (layer.growth, layer.width, layer.coarse_growth, layer.coarse_width)

    assert paths(plan.block(2, 1).layers[0]) == (9, 18, 3, 12)
    assert paths(plan.block(3, 1).layers[0]) == (5, 5, 1, 2)
    assert {layer.width for b in s2.blocks[2:] for layer in b.layers} == {24}
    assert {layer.width for b in s3.blocks[4:] for layer in b.layers} == {6}


def test_plan_reproduces_the_anytime_cifar_table():
    plan = ranet.plan_of("ranet_cifar_anytime")
    # S4's input comes first in the initial layer, S3's from it at stride 1 (the same scale).
    assert [(s.subnet, s.channels, s.stride, s.size) for s in plan.initial] == [
        (4, 16, 1, 32),
        (3, 16, 1, 32),
        (2, 32, 2, 16),
        (1, 64, 2, 8),
    ]
    outs = [[(b.out_channels, b.size) for b in s.blocks] for s in plan.subnets]
    assert outs == [
        [(160, 8), (256, 8)],
        [(100, 16), (92, 8), (140, 8), (188, 8)],
        [(50, 32), (46, 16), (87, 16), (69, 8), (93, 8), (117, 8)],
        [(50, 32), (46, 32), (87, 32), (138, 16), (101, 16), (156, 8), (180, 8), (204, 8)],
    ]
    downs = [[b.index for b in s.blocks if b.down] for s in plan.subnets]
    transitions = [[b.index for b in s.blocks if b.transition] for s in plan.subnets]
    assert downs == [[], [2], [2, 4], [4, 6]] and transitions == [[], [2], [2, 4], [2, 5]]
    assert plan.block(2, 2).dense_channels + plan.block(2, 2).conv_last == 185
    assert plan.block(4, 5).dense_channels + plan.block(4, 5).conv_last == 202
    assert {len(b.layers) for b in plan.blocks} == {4}
    assert [e.channels for e in plan.exits] == [160, 256, 140, 188, 93, 117, 180, 204]
    # S4's first block fuses with S3's at the same resolution: a regular conv, nothing resized.
    layer = plan.block(4, 1).layers[0]
    assert layer.coarse_size == layer.in_size == 32


@pytest.mark.parametrize(
    "name,heads",
    [
        ("ranet_imagenet", [768, 1280, 716, 972, 975, 1231, 588, 716]),
        ("ranet_imagenet_32", [640, 1152, 666, 922, 936, 1192, 573, 701]),
    ],
)
def test_plan_reproduces_the_imagenet_config(name, heads):
    plan = ranet.plan_of(name)
    assert [len(s.blocks) for s in plan.subnets] == [2, 4, 6, 8]
    assert {len(b.layers) for b in plan.blocks} == {8}
    assert [e.channels for e in plan.exits] == heads
    assert [(s.growth - s.coarse_growth, s.coarse_growth) for s in plan.subnets] == [
        (64, 0),
        (24, 8),
        (24, 8),
        (12, 4),
    ]
    if name == "ranet_imagenet":
        assert [(s.base_size, s.base_channels) for s in plan.subnets] == [
            (7, 256),
            (14, 128),
            (28, 128),
            (56, 64),
        ]


# Cumulative FLOPs (M) at each exit and parameters (M) as the official code counts them, for
# classes 10 / 100 / 1000; the README CIFAR-10 config exactly.
COSTS = [
    ("ranet_cifar", {}, 10, [8360714, 21765140, 32844062, 41523752, 53225778, 58921020], 2547601),
    ("ranet_cifar", {}, 100, [8.372, 21.788, 32.879, 41.570, 53.284, 58.991], 2.617),
    (
        "ranet_cifar",
        dict(scale_list=(1, 2, 2, 3), gr_factor=(4, 2, 2, 1), bn_factor=(4, 2, 2, 1)),
        10,
        [10.73, 24.13, 35.21, 43.89, 93.01, 114.61, 163.94, 175.65],
        5.094,
    ),
    (
        "ranet_cifar",
        dict(scale_list=(1, 2, 3, 3), gr_factor=(4, 2, 1, 1), bn_factor=(4, 2, 1, 1)),
        10,
        [10.74, 24.14, 35.22, 43.90, 55.60, 61.30, 105.56, 117.27],
        3.968,
    ),
    (
        "ranet_cifar_anytime",
        {},
        10,
        [15.814, 31.283, 44.655, 50.358, 60.655, 63.648, 90.174, 94.905],
        3.262,
    ),
    (
        "ranet_cifar_anytime",
        {},
        100,
        [15.826, 31.306, 44.690, 50.405, 60.713, 63.718, 90.255, 94.997],
        3.355,
    ),
    (
        "ranet_imagenet",
        {},
        1000,
        [434.97, 888.67, 1153.36, 1352.45, 2279.91, 2588.47, 3235.52, 3333.48],
        149.14,
    ),
    (
        "ranet_imagenet_32",
        {},
        1000,
        [246.47, 631.16, 860.40, 1041.14, 1869.85, 2160.38, 2734.28, 2828.31],
        131.12,
    ),
    # The official train_imagenet.sh (not a paper model): nChannels 16, grFactor 4-2-1-1.
    (
        "ranet_imagenet",
        dict(n_channels=16, gr_factor=(4, 2, 1, 1), bn_factor=(4, 2, 1, 1)),
        1000,
        [168.1, 520.5, 731.9, 903.8, 1052.3, 1118.8, 1589.0, 1681.0],
        87.97,
    ),
]


@pytest.mark.parametrize("name,overrides,classes,flops,params", COSTS)
def test_plan_costs_match_the_official_counts(name, overrides, classes, flops, params):
    counted = costs(ranet.plan_of(name, **overrides), classes)
    got_flops, got_params = [f for f, _ in counted], counted[-1][1]
    if isinstance(params, int):  # exact
        assert (got_flops, got_params) == (flops, params)
        return
    for got, want in zip(got_flops, flops, strict=True):
        decimals = len(str(want).split(".")[1])
        assert round(got / 1e6, decimals) == pytest.approx(want, abs=1e-9)
    # Rounded to 10k parameters, well within the ImageNet stem conv's bias (+n_channels).
    assert round(got_params / 1e6, len(str(params).split(".")[1])) == pytest.approx(params)


def test_config_is_checked():
    with pytest.raises(ValueError, match="scale_list"):
        Config(scale_list=(1, 1, 2), gr_factor=(4, 2, 1), bn_factor=(4, 2, 1))
    with pytest.raises(ValueError, match="one entry per"):
        Config(scale_list=(1, 2), gr_factor=(4, 2, 1))
    with pytest.raises(ValueError, match="no channels"):
        Config(growth_rate=1)  # sub-network 3 grows by 1: nothing for its coarse path
    with pytest.raises(ValueError, match="resize"):
        Config(resize="nearest")
    with pytest.raises(TypeError, match="no argument depth"):
        models.get("ranet_cifar", depth=3)
    with pytest.raises(ValueError, match="square"):
        models.get("ranet_cifar", input_shape=(32, 16, 3))


# --- the Keras model ------------------------------------------------------------------------------


def test_models_have_the_official_parameter_counts(cifar, anytime):
    assert trainable(cifar) == 2_547_601
    assert trainable(anytime) == 3_261_830
    assert cifar.output_names == [f"exit{k}" for k in range(1, 7)]
    assert len(anytime.outputs) == 8 and all(o.shape[-1] == 10 for o in anytime.outputs)
    assert trainable(models.get("ranet_cifar", num_classes=100)) == 2_617_261


def test_model_follows_its_plan(cifar):
    plan = ranet.plan_of("ranet_cifar")
    for block in plan.blocks:
        name = f"subnet{block.subnet}_block{block.index}"
        last = (
            f"{name}_transition_relu"
            if block.transition
            else f"{name}_conv_last_concat"
            if block.conv_last
            else f"{name}_layer{len(block.layers)}_concat"
        )
        shape = cifar.get_layer(last).output.shape
        assert shape[1:] == (block.size, block.size, block.out_channels), name
        dense = cifar.get_layer(f"{name}_layer{len(block.layers)}_concat").output.shape
        assert dense[1:] == (block.size, block.size, block.dense_channels), name
        if block.exit:
            head = cifar.get_layer(f"exit{block.exit}_head1_conv")
            assert head.input.shape[-1] == block.out_channels
    # A fusion layer's output: [input, coarse path, own path], prefixes of the block's output.
    concat = cifar.get_layer("subnet2_block1_layer1_concat")
    assert [t.shape[-1] for t in concat.input] == [32, 3, 9]


def test_exit_flops_of_the_keras_model_match_the_paper(cifar, anytime):
    exits = summary.exit_costs(cifar)
    assert [e["flops"] for e in exits] == [
        8360714,
        21765140,
        32844062,
        41523752,
        53225778,
        58921020,
    ]
    assert exits[-1]["trainable_params"] == 2_547_601
    assert exits[-1]["params"] == cifar.count_params()  # BN's moving statistics too
    # Stage MACs add up to the model's MACs.
    totals = summary.totals(summary.summarize(cifar))
    assert sum(e["stage_macs"] for e in exits) == totals["float_macs"]
    assert [e["flops"] for e in summary.exit_costs(anytime)] == [
        f for f, _ in costs(ranet.plan_of("ranet_cifar_anytime"), 10)
    ]


@pytest.mark.parametrize(
    "name,small",
    [
        # The ImageNet stem (7x7/2 conv with a bias, max pooling), half-pixel resize.
        ("ranet_imagenet", dict(n_channels=4, growth_rate=4, step=2, resize="half_pixel")),
        ("ranet_cifar_anytime", dict(TINY, bottleneck=False)),
    ],
)
def test_keras_counts_equal_plan_counts(name, small):
    model = models.get(name, input_shape=(64, 64, 1), num_classes=7, **small)  # grayscale
    counted = costs(ranet.plan_of(name, 64, **small), 7, in_channels=1)
    exits = summary.exit_costs(model)
    assert [(e["flops"], e["trainable_params"]) for e in exits] == counted
    assert model.get_layer("stem_conv").use_bias == (name == "ranet_imagenet")


def test_summary_lists_exits_of_multi_output_models_only(cifar):
    as_dict = summary.as_dict(cifar)
    assert [e["output"] for e in as_dict["exits"]] == cifar.output_names
    table = summary.format_table(cifar)
    assert "58,921,020" in table and "Stage MACs" in table
    single = models.get("resnet20", input_shape=(16, 16, 1))
    assert "exits" not in summary.as_dict(single)
    assert "Stage MACs" not in summary.format_table(single)


# --- resize, serialisation, conversion ------------------------------------------------------------


def align_corners_reference(x, size):
    """Bilinear resize with corner centres aligned, straight from its definition."""

    def weights(n_in, n_out):
        m = np.zeros((n_out, n_in))
        for i in range(n_out):
            src = i * (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
            lo = min(int(np.floor(src)), n_in - 1)
            hi = min(lo + 1, n_in - 1)
            m[i, lo] += 1 - (src - lo)
            m[i, hi] += src - lo
        return m

    return np.einsum(
        "hH,bHWc,wW->bhwc", weights(x.shape[1], size[0]), x, weights(x.shape[2], size[1])
    )


def test_bilinear_resize():
    x = np.random.default_rng(0).normal(size=(2, 4, 6, 3)).astype(np.float32)
    up = BilinearResize((8, 11), align_corners=True)(x)
    np.testing.assert_allclose(up, align_corners_reference(x, (8, 11)), atol=1e-5)
    np.testing.assert_allclose(np.asarray(up)[:, ::7, ::10], x[:, ::3, ::5], atol=1e-6)  # corners
    # Half-pixel centres: halving an even size averages 2x2 blocks.
    down = BilinearResize((2, 3), align_corners=False)(x)
    np.testing.assert_allclose(down, keras.layers.AveragePooling2D(2)(x), atol=1e-6)
    layer = BilinearResize((5, 7), align_corners=False, name="r")
    clone = BilinearResize.from_config(layer.get_config())
    assert (clone.size, clone.align_corners, clone.name) == ((5, 7), False, "r")
    with pytest.raises(ValueError, match="size"):
        BilinearResize((0, 3))


def resize_options(flatbuffer):
    """(align_corners, half_pixel_centers) of every RESIZE_BILINEAR, in every subgraph (an
    early-exit file has one per stage)."""
    model = schema.ModelT.InitFromPackedBuf(flatbuffer, 0)
    return {
        (op.builtinOptions.alignCorners, op.builtinOptions.halfPixelCenters)
        for subgraph in model.subgraphs
        for op in subgraph.operators
        if model.operatorCodes[op.opcodeIndex].builtinCode == schema.BuiltinOperator.RESIZE_BILINEAR
    }


@pytest.mark.parametrize(
    "resize,flags", [("align_corners", {(True, False)}), ("half_pixel", {(False, True)})]
)
def test_k_outputs_round_trip_and_convert(resize, flags, tmp_path):
    keras.utils.set_random_seed(0)
    model = models.get("ranet_cifar", input_shape=(16, 16, 1), num_classes=3, resize=resize, **TINY)
    assert model.output_names == ["exit1", "exit2", "exit3"]
    x = np.random.default_rng(0).uniform(0, 255, (2, 16, 16, 1)).astype(np.float32)
    model.save(tmp_path / "ranet.keras")
    loaded = keras.models.load_model(tmp_path / "ranet.keras")
    # Called eagerly: predict() would trace each model into a tf.function first (seconds each).
    for a, b in zip(loaded(x, training=False), model(x, training=False), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    flatbuffer, report = deploy.convert(model, "float")  # checks all 3 outputs against Keras
    assert report.op_census["FULLY_CONNECTED"] == 3 and report.max_rel_diff <= 1e-4
    assert resize_options(flatbuffer) == flags


# --- the recipe --------------------------------------------------------------------------------


def test_ranet_recipe_sums_the_exits_and_decays_everything():
    recipe = recipes.get(models.info("ranet_cifar").recipe)
    model = models.get("ranet_cifar", input_shape=(16, 16, 3), num_classes=3, **TINY)
    recipes.compile_model(model, recipe, epochs=300, steps_per_epoch=10, batch_size=64)
    assert recipes.loss_weights(recipe, 3) == [1.0, 1.0, 1.0]
    optimizer = model.optimizer
    assert (optimizer.momentum, optimizer.nesterov) == (0.9, False)
    schedule = recipes.learning_rate_schedule(recipe, epochs=300, steps_per_epoch=10, batch_size=64)
    rates = [float(schedule(step)) for step in (0, 1499, 1500, 2249, 2250)]
    assert rates == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001])
    # Coupled L2 on every trainable weight (kernels, BN's gamma and beta, the classifiers' biases).
    assert len(model.losses) == len(model.trainable_weights)
    assert dict(recipe.augment)["cifar10"] == ("crop", "flip")
    x = np.random.default_rng(0).uniform(0, 255, (4, 16, 16, 3)).astype(np.float32)
    y = np.arange(4) % 3
    logs = model.train_on_batch(x, (y,) * 3, return_dict=True)
    assert np.isfinite(logs["loss"])
