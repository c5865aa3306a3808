"""NN-Mass (arXiv 1910.00780) and non-linear units against values worked out by hand."""

import json

import keras
import pytest
from conftest import run_app
from keras import layers

from effkeras import models
from effkeras.graph import summary
from effkeras.graph.nn_mass import dense_cells, model_mass, nonlinear_units


def test_dense_cells_by_hand():
    # Cell (d=5, w=4, t=6): layers 2, 3, 4 could take p = 4, 8, 12 skip channels (all earlier
    # layers but the direct predecessor) and take t = 4, 6, 6: ρ = 16/24, mass ρ·w·d = 40/3.
    assert dense_cells([(5, 4, 6)]) == pytest.approx(40 / 3)
    # Cell (d=3, w=2, t=10): p = 2, t = 2, ρ = 1: mass = w·d = 6. Cells add up.
    assert dense_cells([(5, 4, 6), (3, 2, 10)]) == pytest.approx(40 / 3 + 6)
    assert dense_cells([(6, 8, 1000)]) == pytest.approx(6 * 8)  # every link present: ρ = 1
    assert dense_cells([(6, 8, 0)]) == 0  # no skips
    assert dense_cells([(2, 8, 5)]) == 0  # too shallow for a skip


def block_model(branch, c_in=8, skip=None):
    """x -> branch(x) + skip(x) (identity by default) as a model."""
    inputs = keras.Input((8, 8, c_in))
    x = layers.Conv2D(c_in, 3, padding="same", name="stem")(inputs)
    y = branch(x)
    shortcut = x if skip is None else skip(x)
    return keras.Model(inputs, layers.Add()([y, shortcut]))


def seq(*layer_list):
    def apply(x):
        for layer in layer_list:
            x = layer(x)
        return x

    return apply


def conv(filters, kernel=3, stride=1):
    return layers.Conv2D(filters, kernel, strides=stride, padding="same")


def test_block_formulas_by_hand():
    bn = layers.BatchNormalization
    # Basic block, C_in = C_out = 8: 8 + 8.
    assert model_mass(block_model(seq(conv(8), bn(), layers.ReLU(), conv(8), bn()))) == 16
    # Bottleneck 16 -> 4 -> 4 -> 16: (16 + 2·4)·16 / (2·16 + 4) = 384 / 36.
    assert model_mass(
        block_model(seq(conv(4, 1), layers.ReLU(), conv(4), layers.ReLU(), conv(16, 1)), c_in=16)
    ) == pytest.approx(384 / 36)
    # Inverted residual 8 -> 48 -> 8: (8 + 2·48)·8 / (2·8 + 48) = 13; without expansion E = C_in.
    assert (
        model_mass(
            block_model(
                seq(
                    conv(48, 1),
                    layers.ReLU(6.0),
                    layers.DepthwiseConv2D(3, padding="same"),
                    conv(8, 1),
                )
            )
        )
        == 13
    )
    assert model_mass(
        block_model(seq(layers.DepthwiseConv2D(3, padding="same"), conv(8, 1)))
    ) == pytest.approx((8 + 16) * 8 / (16 + 8))
    # ConvNeXt block, C = 8: 2·8, with 1x1 convs or with Dense layers on the feature map.
    for pointwise in (lambda f: conv(f, 1), layers.Dense):
        branch = seq(
            layers.DepthwiseConv2D(7, padding="same"),
            layers.LayerNormalization(),
            pointwise(32),
            layers.Activation("gelu"),
            pointwise(8),
        )
        assert model_mass(block_model(branch)) == 16
    # A 1x1 projection shortcut (8 -> 16, stride 2) counts as its basic block: 8 + 16.
    assert (
        model_mass(
            block_model(
                seq(conv(16, stride=2), layers.ReLU(), conv(16)), skip=conv(16, 1, stride=2)
            )
        )
        == 24
    )


def test_not_defined():
    # A one-conv branch is none of the kinds; a net without a skip has none.
    assert model_mass(block_model(seq(conv(8), layers.ReLU()))) is None
    inputs = keras.Input((8, 8, 3))
    plain = keras.Model(inputs, conv(4)(conv(4)(inputs)))
    assert model_mass(plain) is None
    # A skip whose path holds a 3x3 conv is no identity or projection shortcut.
    assert model_mass(block_model(seq(conv(8), conv(8)), skip=conv(8))) is None


def test_registered_networks():
    # ResNet-20: option-A shortcuts are identity skips; 3 basic blocks per stage:
    # 3·(16+16) + (16+32) + 2·(32+32) + (32+64) + 2·(64+64) = 624.
    assert model_mass(models.get("resnet20")) == 624
    # MobileNetV2 (expansion 6): residual blocks at 24, 32 (x2), 64 (x3), 96 (x2), 160 (x2)
    # channels, each (C + 12C)·C / (2C + 6C) = 13C/8: 13/8 · 792 = 1287.
    assert model_mass(models.get("mobilenet_v2", input_shape=(32, 32, 3))) == pytest.approx(1287)


def test_nonlinear_units_by_hand():
    inputs = keras.Input((8, 8, 3))
    x = layers.Conv2D(4, 3, padding="same", activation="relu")(inputs)  # 8·8·4 = 256
    x = layers.Conv2D(4, 3, padding="same")(x)  # linear: 0
    x = layers.Activation("gelu")(x)  # 256
    x = layers.Activation("linear")(x)  # 0
    x = layers.MaxPooling2D(2)(x)
    x = layers.ReLU(6.0)(x)  # 4·4·4 = 64
    x = layers.GlobalAveragePooling2D()(x)
    outputs = layers.Dense(10)(x)  # logits: 0
    assert nonlinear_units(keras.Model(inputs, outputs)) == 256 + 256 + 64
    # ResNet-20: stem ReLU 32·32·16, then two ReLUs per block:
    # 3·2·(32·32·16 + 16·16·32 + 8·8·64).
    assert nonlinear_units(models.get("resnet20")) == 16_384 + 6 * (16_384 + 8_192 + 4_096)


def test_summary_shows_nn_mass_and_nonlinear_units():
    model = models.get("resnet20")
    totals = summary.as_dict(model)["totals"]
    assert totals["nn_mass"] == 624 and totals["nonlinear_units"] == 188_416
    table = summary.format_table(model)
    assert "NN-Mass: 624" in table.splitlines()[-1]
    assert "non-linear units/image: 188,416" in table.splitlines()[-1]
    inputs = keras.Input((8, 8, 3))
    plain = keras.Model(inputs, layers.Dense(2)(layers.GlobalAveragePooling2D()(conv(4)(inputs))))
    assert summary.as_dict(plain)["totals"]["nn_mass"] is None
    assert "NN-Mass: n/a" in summary.format_table(plain)


def test_summary_app_json():
    result = run_app("apps.summary", "--model=ran_i_t", "--input_shape=32,32,3", "--json")
    assert result.returncode == 0, result.stderr[-2000:]
    totals = json.loads(result.stdout)["totals"]
    # NN-Mass depends on widths and depths only: 2·(5·64 + 5·128 + 15·256 + 5·511).
    assert totals["nn_mass"] == 14_710
    # GELUs at 32x32 (maps 8, 4, 2, 1): 4·(5·64·64 + 5·128·16 + 15·256·4 + 5·511·1).
    assert totals["nonlinear_units"] == 4 * (5 * 64 * 64 + 5 * 128 * 16 + 15 * 256 * 4 + 5 * 511)
