"""The MAC counter against counts worked out by hand."""

import keras
import pytest
from keras import layers

from effkeras import models
from effkeras.graph import summary


def stats_by_name(model):
    return {row.name: row for row in summary.summarize(model)}


def test_mac_counts_match_hand_counts():
    inputs = keras.Input((16, 16, 4))
    x = layers.Conv2D(8, 3, strides=2, padding="same", name="conv")(inputs)  # -> 8x8x8
    x = layers.Conv2D(8, 3, padding="valid", groups=2, name="grouped")(x)  # -> 6x6x8
    x = layers.DepthwiseConv2D(3, depth_multiplier=2, padding="same", name="depthwise")(x)  # 6x6x16
    x = layers.SeparableConv2D(4, 3, padding="valid", name="separable")(x)  # -> 4x4x4
    x = layers.MaxPooling2D(2, name="maxpool")(x)  # -> 2x2x4
    x = layers.AveragePooling2D(2, strides=1, name="avgpool")(x)  # -> 1x1x4
    x = layers.Reshape((1, 4))(x)
    x = layers.Dense(6, name="dense_seq")(x)  # (1, 4) -> (1, 6)
    x = layers.GlobalAveragePooling1D()(x)
    x = layers.Dense(3, name="dense")(x)
    rows = stats_by_name(keras.Model(inputs, x))
    assert rows["conv"].macs == 8 * 8 * 8 * (3 * 3 * 4)  # 18,432
    assert rows["grouped"].macs == 6 * 6 * 8 * (3 * 3 * 4)  # 4 input channels per group: 10,368
    assert rows["depthwise"].macs == 6 * 6 * 16 * (3 * 3)  # 5,184
    assert rows["separable"].macs == 4 * 4 * 16 * 9 + 4 * 4 * 16 * 4  # depthwise + pointwise: 3,328
    assert rows["maxpool"].macs == 2 * 2 * 4 * 4  # one op per window element: 64
    assert rows["avgpool"].macs == 1 * 1 * 4 * 4  # 16
    assert rows["dense_seq"].macs == 1 * 4 * 6
    assert rows["dense"].macs == 6 * 3
    assert rows["conv"].params == {32: 3 * 3 * 4 * 8 + 8}


def test_resnet20_totals():
    model = models.get("resnet20")
    totals = summary.totals(summary.summarize(model))
    # Convs: stem 32*32*16*27 + stage1 6*(32*32*16*144) + stage2 16*16*32*(144 + 5*288)
    #        + stage3 8*8*64*(288 + 5*576) = 40,550,400; option-A subsampling 16*16*16 + 8*8*32;
    #        global pool 8*8*64; classifier 64*10.
    assert totals["float_macs"] == 40_550_400 + 6_144 + 4_096 + 640
    assert totals["binary_macs"] == 0
    assert totals["total_params"] == model.count_params() == 271_098
    assert totals["memory_bytes"] == pytest.approx(271_098 * 4)


def test_table_and_dict_agree():
    model = models.get("resnet20", input_shape=(16, 16, 1))
    as_dict = summary.as_dict(model)
    table = summary.format_table(model)
    assert f"{as_dict['totals']['float_macs']:,}" in table.splitlines()[-2]
    assert as_dict["input_shape"] == [16, 16, 1]


def test_w1a2_macs_count_as_low_bit():
    from effkeras.layers import QuantConv2D

    inputs = keras.Input((8, 8, 4))
    x = QuantConv2D(
        8,
        3,
        padding="same",
        input_quantizer="ste_unsigned",
        kernel_quantizer="ste_sign",
        name="w1a2",
    )(inputs)
    x = QuantConv2D(8, 1, input_quantizer="ste_sign", kernel_quantizer="ste_sign", name="w1a1")(x)
    rows = stats_by_name(keras.Model(inputs, x))
    assert (rows["w1a2"].input_bits, rows["w1a2"].kernel_bits) == (2, 1) and rows["w1a2"].low_bit
    assert rows["w1a1"].binary and not rows["w1a1"].low_bit
    totals = summary.totals(list(rows.values()))
    assert totals["low_bit_macs"] == 8 * 8 * 8 * 9 * 4 and totals["binary_macs"] == 8 * 8 * 8 * 8
    assert totals["params"]["1bit"] == 9 * 4 * 8 + 8 * 8
