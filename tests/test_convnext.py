"""RAN-i and its ConvNeXt peers: the architecture table, the block, stochastic depth, the float
TFLite file and the CPU benchmark tool."""

import json
import math

import keras
import numpy as np
import pytest
from conftest import run_app

from effkeras import deploy, models
from effkeras.deploy.flatbuffer import operators
from effkeras.graph import nn_mass, summary
from effkeras.layers import LayerScale
from effkeras.models import convnext

# RAN-i paper (arXiv 2208.08562) and ConvNeXt (arXiv 2201.03545) at 224x224x3, 1000 classes:
# depths, dims, params, MACs, NN-Mass (2·Σ depth·width), GELU outputs per image.
TABLE = {
    "convnext_t": ((3, 3, 9, 3), (96, 192, 384, 768), 28.59e6, 4.46e9, 13_248, 8.58e6),
    "convnext_s": ((3, 3, 27, 3), (96, 192, 384, 768), 50.22e6, 8.68e9, 27_072, 14.00e6),
    "convnext_b": ((3, 3, 27, 3), (128, 256, 512, 1024), 88.59e6, 15.35e9, 36_096, 18.67e6),
    "ran_i_t": ((5, 5, 15, 5), (64, 128, 256, 511), 20.76e6, 3.28e9, 14_710, 9.53e6),
    "ran_i_s": ((5, 5, 15, 5), (76, 151, 303, 606), 28.93e6, 4.58e9, 17_420, 11.29e6),
    "ran_i_b": ((7, 7, 21, 7), (87, 175, 350, 699), 52.89e6, 8.43e9, 28_154, 18.20e6),
}
SMALL = dict(dims=(16, 32, 64, 128))


def small(name, size=32, **kwargs):
    keras.utils.set_random_seed(0)
    return models.get(name, input_shape=(size, size, 3), num_classes=10, **{**SMALL, **kwargs})


@pytest.mark.parametrize("name", sorted(convnext.RAN_I_SCALES))
def test_ran_i_scaling_rule_gives_the_table(name):
    depths, dims = TABLE[name][:2]
    assert convnext.ran_i_config(*convnext.RAN_I_SCALES[name]) == dict(depths=depths, dims=dims)
    assert convnext.CONFIGS[name] == dict(depths=depths, dims=dims)


@pytest.mark.parametrize("name", sorted(TABLE))
def test_table_row(name):
    depths, dims, params, macs, mass, gelus = TABLE[name]
    info = models.info(name)
    assert (info.family, info.recipe, info.deploy) == (
        "rans" if name.startswith("ran_i") else "peer",
        "ran_i",
        "float",
    )
    model = models.get(name)  # 224x224x3, 1000 classes: built symbolically, never run
    totals = summary.totals(summary.summarize(model))
    assert totals["total_params"] == model.count_params()
    assert totals["total_params"] == pytest.approx(params, rel=0.01)
    assert totals["float_macs"] == pytest.approx(macs, rel=0.01)
    assert nn_mass.model_mass(model) == mass == 2 * sum(d * c for d, c in zip(depths, dims))
    assert nn_mass.nonlinear_units(model) == pytest.approx(gelus, rel=0.01)
    blocks = [layer for layer in model.layers if layer.name.endswith("_add")]
    assert len(blocks) == sum(depths)
    for stage, (depth, width) in enumerate(zip(depths, dims), start=1):
        assert model.get_layer(f"stage{stage}_block{depth}_add").output.shape[-1] == width


def test_block_layers_in_order():
    model = small("ran_i_t")
    block = [layer for layer in model.layers if layer.name.startswith("stage2_block2_")]
    kinds = [type(layer).__name__ for layer in block]
    assert kinds == [
        "DepthwiseConv2D",
        "LayerNormalization",
        "Conv2D",
        "Activation",
        "Conv2D",
        "LayerScale",
        "Dropout",
        "Add",
    ]
    dw, ln, expand, gelu, project, scale, drop, _ = block
    assert dw.kernel_size == (7, 7) and dw.use_bias
    assert ln.epsilon == 1e-6 and ln.axis in (-1, [-1], [3], 3)
    assert expand.kernel_size == project.kernel_size == (1, 1)
    assert (expand.filters, project.filters) == (4 * 32, 32)
    np.testing.assert_array_equal(scale.gamma.numpy(), np.full(32, 1e-6, np.float32))
    assert drop.noise_shape == (None, 1, 1, 1)
    # Exact GELU: 0.5·x·(1 + erf(x/√2)), not the tanh approximation.
    x = np.linspace(-4, 4, 81, dtype=np.float32).reshape(1, 1, 9, 9)
    exact = 0.5 * x * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(gelu(x)), exact, atol=1e-6)
    # Stem 4x4/4, downsampling LN + 2x2/2, head GAP -> LN -> Dense; pixels normalised in-model.
    stem = model.get_layer("stem_conv")
    assert stem.kernel_size == stem.strides == (4, 4)
    assert model.get_layer("stage2_downsample_conv").strides == (2, 2)
    assert [type(layer).__name__ for layer in model.layers[-3:]] == [
        "GlobalAveragePooling2D",
        "LayerNormalization",
        "Dense",
    ]
    assert type(model.layers[1]).__name__ == "PixelNormalization"


def test_truncated_normal_init_and_zero_biases():
    keras.utils.set_random_seed(0)
    model = models.get("convnext_t", input_shape=(32, 32, 3), num_classes=10)
    kernel = model.get_layer("stage3_block1_pwconv1").kernel.numpy()
    assert kernel.std() == pytest.approx(0.02 * 0.88, rel=0.05)  # trunc-normal at 2σ: 0.88·σ
    assert np.abs(kernel).max() <= 2 * 0.02 + 1e-7
    for layer in model.layers:
        if getattr(layer, "bias", None) is not None:
            assert not np.any(layer.bias.numpy()), layer.name


def test_stochastic_depth_drops_branches_in_training_only():
    rate = 0.5
    model = small("convnext_t", drop_path_rate=rate)
    drops = [layer for layer in model.layers if isinstance(layer, keras.layers.Dropout)]
    # Linear in the block index, from 0 (first block: no dropout layer) to drop_path_rate.
    total = sum(convnext.CONFIGS["convnext_t"]["depths"])
    assert len(drops) == total - 1
    np.testing.assert_allclose(
        [d.rate for d in drops], [rate * i / (total - 1) for i in range(1, total)]
    )
    last = drops[-1]
    add = model.get_layer(last.name.replace("_drop_path", "_add"))
    assert last.output in add.input  # the dropped branch is what the residual add reads
    probe = keras.Model(model.input, [last.input, last.output])
    x = np.random.default_rng(0).uniform(0, 255, (64, 32, 32, 3)).astype(np.float32)
    branch, dropped = (keras.ops.convert_to_numpy(t) for t in probe(x, training=True))
    kept = np.array(
        [
            np.allclose(d, b / (1 - rate), rtol=1e-5, atol=0) and np.any(d)
            for b, d in zip(branch, dropped)
        ]
    )
    zeroed = np.array([not np.any(d) for d in dropped])
    assert np.all(kept | zeroed) and 0 < zeroed.sum() < len(x)  # whole samples dropped, some kept
    branch, out = (keras.ops.convert_to_numpy(t) for t in probe(x, training=False))
    np.testing.assert_array_equal(out, branch)


def test_drop_path_defaults_follow_the_papers():
    for name, rate in [
        ("convnext_t", 0.1),
        ("convnext_s", 0.4),
        ("convnext_b", 0.5),
        ("ran_i_t", 0.1),
        ("ran_i_s", 0.2),
        ("ran_i_b", 0.4),
    ]:
        model = small(name)
        last = [layer for layer in model.layers if isinstance(layer, keras.layers.Dropout)][-1]
        assert last.rate == pytest.approx(rate), name
    assert not any(
        isinstance(layer, keras.layers.Dropout)
        for layer in small("ran_i_t", drop_path_rate=0.0).layers
    )


def test_overrides_and_bad_values():
    model = small("ran_i_t", depths=(1, 1, 2, 1))
    assert sum(layer.name.endswith("_add") for layer in model.layers) == 5
    assert model.get_layer("stage4_block1_add").output.shape[-1] == 128
    with pytest.raises(ValueError, match="one positive int per stage"):
        small("ran_i_t", dims=(16, 32, 64))
    with pytest.raises(ValueError, match="drop_path_rate"):
        small("ran_i_t", drop_path_rate=1.0)
    assert models.info("ran_i_t").small == dict(dims=(16, 32, 64, 128), depths=(1, 1, 3, 1))


def test_layer_scale_config_round_trip():
    layer = LayerScale(0.5, name="scale")
    clone = LayerScale.from_config(layer.get_config())
    assert clone.init_value == 0.5 and clone.name == "scale"
    out = clone(np.ones((2, 3, 3, 4), np.float32))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(out), 0.5)
    assert keras.saving.get_registered_object("effkeras>LayerScale") is LayerScale


def test_float_tflite_has_static_shapes_only():
    model = small("ran_i_t", size=64, depths=(1, 1, 2, 1))  # the harness converts all blocks
    flatbuffer, report = deploy.convert(model, "float")
    census = report.op_census
    assert not {"SHAPE", "GATHER", "PACK", "CONCATENATION", "REDUCE_PROD"} & set(census), census
    assert census["GELU"] == 5  # one per block
    assert census["DEPTHWISE_CONV_2D"] == 5 + 1  # each block's, and the pixel normalisation
    assert census["CONV_2D"] == 2 * 5 + 4 and census["FULLY_CONNECTED"] == 1
    for op in operators(flatbuffer):
        if op.type == "RESHAPE":  # only with a constant target shape
            assert len(op.inputs) == 2 and op.inputs[1].data, op
    assert report.max_rel_diff < 1e-4


def test_cpu_benchmark_tool_at_a_tiny_size(tmp_path):
    result = run_app(
        "tools.bench_ran_i_cpu",
        "--input_size=32",
        "--small",
        "--runs=3",
        "--warmup=1",
        f"--output_dir={tmp_path}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "bench_ran_i_cpu.json").read_text())
    rows = {row["model"]: row for row in report["models"]}
    assert set(rows) == {"ran_i_t", "convnext_t"}
    assert all(
        row["median_ms"] > 0 and row["macs"] > 0 and row["runs"] == 3 for row in rows.values()
    )
    assert report["speedup"] == pytest.approx(
        rows["convnext_t"]["median_ms"] / rows["ran_i_t"]["median_ms"]
    )
    assert (tmp_path / "bench_ran_i_cpu.png").stat().st_size > 0
    assert "| ran_i_t |" in result.stdout and "| convnext_t |" in result.stdout
