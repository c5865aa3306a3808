"""RAN-e (arXiv 2208.08562): the released networks' sizes, the collapsible blocks in them, their
export through the collapse pass, and the search tool at a small input size."""

import json

import keras
import numpy as np
import pytest

from effkeras import deploy, models
from effkeras.deploy.flatbuffer import op_census, operators
from effkeras.graph import summary
from effkeras.layers import CollapsibleConv2D
from effkeras.models import rans


def macs_and_params(model):
    totals = summary.totals(summary.summarize(model))
    return totals["float_macs"], totals["total_params"]


# Parameters (all, trainable) and MACs of the released networks at 224x224x3, 1000 classes.
RELEASED = {"ran_e_gt": (4_524_408, 4_486_680, 434.4e6), "ran_e_c": (4_673_272, 4_634_872, 489.2e6)}


@pytest.mark.parametrize("name", ["ran_e_gt", "ran_e_c"])
def test_released_networks_match_their_tables(name):
    params, trainable, macs = RELEASED[name]
    for variant in (name, name + "_relu6"):
        model = models.get(variant)
        got_macs, got_params = macs_and_params(model)
        assert got_params == params
        assert sum(int(np.prod(w.shape)) for w in model.trainable_weights) == trainable
        assert abs(got_macs - macs) / macs < 1e-3
    activations = {
        layer.get_config()["activation"]
        for layer in model.layers
        if isinstance(layer, keras.layers.Activation)
    }
    assert activations == {"relu6"}


def test_tables_hold_the_blocks_they_name():
    gt, c = models.get("ran_e_gt"), models.get("ran_e_c")

    def count(model):
        return sum(isinstance(layer, CollapsibleConv2D) for layer in model.layers)

    # GT: 6 collapsible blocks, one of them the double 128 -> 64 -> 128 (7 convs); C: 7.
    assert count(gt) == 7 and count(c) == 7
    assert gt.get_layer("stage7_block2_conv1").filters == 64
    assert gt.get_layer("stem_conv").output.shape[1:] == (112, 112, 16)
    # C's downsample pair: 128 -> 64 -> 128, both expansions 768 wide, one residual over both.
    assert c.get_layer("stage7_block2a_expand_conv").filters == 768
    assert c.get_layer("stage7_block2b_expand_conv").filters == 768
    assert c.get_layer("stage7_block2a_project_conv").filters == 64
    assert c.get_layer("stage7_block2_add") is not None
    assert gt.get_layer("head_dwconv").kernel_size == (7, 7)


def test_expanded_training_adds_the_linear_expansion_only():
    plain, expanded = models.get("ran_e_gt"), models.get("ran_e_gt", expansion=2)
    extra = 0
    for layer in plain.layers:
        if isinstance(layer, CollapsibleConv2D):
            cin, cout = layer.input.shape[-1], layer.filters
            width = 2 * max(cin, cout)
            extra += 9 * cin * width + width * cout - 9 * cin * cout
    assert expanded.count_params() - plain.count_params() == extra
    assert macs_and_params(expanded)[0] == macs_and_params(plain)[0]  # inference MACs


def test_expanded_ran_e_exports_one_conv_per_collapsible_block():
    keras.utils.set_random_seed(0)
    model = models.get("ran_e_gt_32", expansion=2)
    flatbuffer, report = deploy.convert(model, "float")
    census = op_census(operators(flatbuffer))
    convs = sum(
        isinstance(layer, keras.layers.Conv2D)
        and not isinstance(layer, keras.layers.DepthwiseConv2D)
        for layer in model.layers
    )
    assert report.collapsed_blocks == 7
    assert census["CONV_2D"] == convs  # one CONV_2D per collapsible conv, nothing of the expansion
    assert report.max_rel_diff < 1e-4


def test_search_tool_keeps_faster_trials_and_tabulates(tmp_path, monkeypatch):
    from absl import flags

    from tools import search_ran_e

    # Vela's part replaced by a fixed cost model (Vela itself runs in the deploy tests): stage 1
    # gets slower as a collapsible block, stage 2's blocks faster; MACs per cycle rank stage 1
    # worst, then stage2_block2, then stage2_block1.
    efficiency = {
        "stage1_block1": (10, 1000),
        "stage2_block1": (100, 100),
        "stage2_block2": (50, 100),
        "stage6_block1": (900, 100),
    }

    def compile_row(model, name, collapsed, stage_filters):
        ips = (
            40.0
            + 5 * sum(b.startswith("stage2") for b in collapsed)
            - 10 * ("stage1_block1" in collapsed)
        )
        macs, params = search_ran_e.macs_and_params(model)
        row = search_ran_e.Row(
            name, tuple(sorted(collapsed)), tuple(stage_filters), ips, macs, params, 1000
        )
        return row, {b: cost for b, cost in efficiency.items() if b not in collapsed}

    monkeypatch.setattr(search_ran_e, "compile_row", compile_row)
    flags.FLAGS(
        ["search_ran_e", f"--output_dir={tmp_path}", "--input_size=32", "--steps=3", "--compare="]
    )
    try:
        search_ran_e.main([])
    finally:
        flags.FLAGS.unparse_flags()
    rows = json.loads((tmp_path / "search.json").read_text())
    assert [(row["name"], row["accepted"]) for row in rows] == [
        ("lite0_hswish", True),
        ("step1: stage1_block1 (rejected)", False),
        ("step2: stage2_block2", True),
        ("step3: stage2_block1", True),
    ]
    assert rows[-1]["collapsed"] == ["stage2_block1", "stage2_block2"]
    assert rows[-1]["pareto"]  # the fastest; the others trade speed for MACs (capacity)
    assert (tmp_path / "search.png").stat().st_size > 0
    assert "| step2: stage2_block2 |" in (tmp_path / "search.md").read_text()


def test_pareto_front_drops_dominated_networks():
    from tools.search_ran_e import Row, mark_pareto

    rows = [
        Row(name, (), (), ips, macs, 0, 0)
        for name, ips, macs in (
            ("a", 50.0, 400),
            ("b", 40.0, 390),
            ("c", 60.0, 300),
            ("d", 50.0, 400),
        )
    ]
    mark_pareto(rows)
    assert [row.pareto for row in rows] == [True, False, True, True]  # b is beaten by a


def test_block_efficiency_sums_vela_per_layer_rows_per_block():
    from tools.search_ran_e import block_efficiency

    header = (
        "Original Operator,NNG Operator,Target,Staging Usage,Peak% (Staging),Op Cycles,"
        "Network% (cycles),NPU,SRAM AC,DRAM AC,OnFlash AC,OffFlash AC,MAC Count,"
        "Network% (MAC),Util% (MAC),Name"
    )
    rows = [
        "Conv2D,Conv2D,NPU,1,1,400,1,400,1,0,0,0,8000,1,1,m/stage2_block1_expand_act/mul;x",
        "DepthwiseConv2D,DepthwiseConv2D,NPU,1,1,600,1,600,1,0,0,0,2000,1,1,"
        "m/stage2_block1_dw_act/mul",
        "Add,Add,NPU,1,1,50,1,50,1,0,0,0,0,0,0,m/stage2_block2_add/add",
        "Mul,Mul,NPU,1,1,70,1,70,1,0,0,0,0,0,0,m/rescale/mul",
    ]
    blocks = block_efficiency("\n".join([header, *rows]).encode())
    assert blocks == {"stage2_block1": (10000, 1000), "stage2_block2": (0, 50)}


def test_search_space_collapses_the_named_blocks():
    model = rans.lite0_search_space(("stage2_block1",), input_shape=(64, 64, 3))
    assert isinstance(model.get_layer("stage2_block1_conv"), CollapsibleConv2D)
    assert model.get_layer("stage2_block2_dwconv")
    widened = rans.lite0_search_space((), (16, 32, 40, 80, 112, 192, 320), input_shape=(64, 64, 3))
    assert widened.get_layer("stage2_block2_project_conv").filters == 32


def test_search_rejects_a_block_with_its_identical_twins():
    from tools.search_ran_e import twins

    blocks = {f"stage6_block{i}": (1, 1) for i in range(1, 5)} | {"stage5_block2": (1, 1)}
    assert twins("stage6_block3", blocks) == {"stage6_block2", "stage6_block3", "stage6_block4"}
    assert twins("stage6_block1", blocks) == {"stage6_block1"}  # it strides or changes width


def test_pixel_normalization_is_a_weightless_per_channel_affine():
    from effkeras.layers import PixelNormalization, normalize_pixels

    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    x = np.random.default_rng(0).uniform(0, 255, (2, 5, 5, 3)).astype(np.float32)
    layer = PixelNormalization(mean, std)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(layer(x)),
        (x / 255 - np.array(mean)) / np.array(std),
        rtol=1e-5,
        atol=1e-5,
    )
    assert layer.weights == []
    gray = keras.Model(*(lambda i: (i, normalize_pixels(i)))(keras.Input((5, 5, 1))))
    assert gray.layers[1].mean == (pytest.approx(np.mean(mean)),)
    with pytest.raises(ValueError, match="as many means as stds"):
        PixelNormalization(mean, std[:2])
    # Deploys as one DEPTHWISE_CONV_2D, which Vela runs on the MAC array (a broadcast MUL/SUB
    # pair costs ethos-u55-128 about 85x the cycles).
    inputs = keras.Input((8, 8, 3))
    model = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(normalize_pixels(inputs)))
    flatbuffer, _ = deploy.convert(model, "float")
    assert op_census(operators(flatbuffer)) == {"DEPTHWISE_CONV_2D": 1, "MEAN": 1}
