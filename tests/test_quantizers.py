"""Quantizers: forward values and gradients equal larq 0.14's; names, configs and .keras files."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from effkeras import constraints, quantizers
from effkeras.errors import InputError
from effkeras.layers import QuantDense

ORACLE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "larq_oracle.py")

# (class name, kwargs): the same on both sides, larq's class names are ours.
SHARED = [
    ("SteSign", {}),
    ("SteSign", {"clip_value": 1.25}),
    ("SteSign", {"clip_value": None}),
    ("ApproxSign", {}),
    ("SwishSign", {}),
    ("SwishSign", {"beta": 2.0}),
    ("MagnitudeAwareSign", {}),
    ("MagnitudeAwareSign", {"clip_value": 1.25}),
    ("SteHeaviside", {}),
    ("SteHeaviside", {"clip_value": 0.5}),
    ("DoReFa", {"k_bit": 2}),
    ("DoReFa", {"k_bit": 3}),
    ("DoReFa", {"k_bit": 2, "mode": "weights"}),
    ("DoReFa", {"k_bit": 4, "mode": "weights"}),
]


def _edge_values():
    """0, +-1e-7, every clip edge +-1e-6, DoReFa rounding midpoints, then random values."""
    values = [0.0, -0.0, 1e-7, -1e-7]
    for edge in (0.5, 1.0, 1.25, 2.0):
        for delta in (0.0, 1e-6, -1e-6):
            values += [edge + delta, -edge - delta]
    for levels in (3, 7, 15):
        values += [(i + 0.5) / levels for i in range(levels)]
    values += list(np.random.default_rng(0).normal(0.0, 1.5, 200))
    values += [0.0] * (-len(values) % 8)
    # MagnitudeAwareSign scales per last axis: 8 "output channels".
    return np.array(values, dtype=np.float32).reshape(-1, 8)


@pytest.fixture(scope="module")
def larq_results(tmp_path_factory):
    """One larq subprocess computes every shared quantizer (TF import costs seconds)."""
    folder = tmp_path_factory.mktemp("larq")
    x = _edge_values()
    upstream = np.random.default_rng(1).uniform(0.5, 2.0, x.shape).astype(np.float32)
    np.savez(folder / "request.npz", x=x, upstream=upstream, specs=json.dumps(SHARED))
    env = {**os.environ, "TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run(
        [
            sys.executable,
            ORACLE,
            "quantizers",
            str(folder / "request.npz"),
            str(folder / "result.npz"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return x, upstream, dict(np.load(folder / "result.npz"))


def _forward_and_gradient(quantizer, x, upstream):
    x = tf.convert_to_tensor(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = quantizer(x)
    return y, tape.gradient(y, x, output_gradients=tf.convert_to_tensor(upstream))


@pytest.mark.parametrize(
    "index", range(len(SHARED)), ids=[f"{name}{kwargs}" for name, kwargs in SHARED]
)
def test_equals_larq(larq_results, index):
    x, upstream, expected = larq_results
    name, kwargs = SHARED[index]
    y, grad = _forward_and_gradient(
        quantizers.get({"class_name": name, "config": kwargs}), x, upstream
    )
    np.testing.assert_allclose(y, expected[f"y{index}"], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(grad, expected[f"grad{index}"], rtol=1e-6, atol=1e-7)


def test_graph_and_xla_match_eager():
    x = _edge_values()
    upstream = np.ones_like(x)
    for name in quantizers.ALIASES:
        quantizer = quantizers.get(name)
        eager = _forward_and_gradient(quantizer, x, upstream)
        compiled = tf.function(
            lambda v, q=quantizer: _forward_and_gradient(q, v, upstream), jit_compile=True
        )
        (y, grad), (xla_y, xla_grad) = eager, compiled(x)
        np.testing.assert_allclose(y, xla_y, rtol=1e-6, err_msg=name)  # XLA sums in its order
        # XLA's tanh/cosh differ in the last bits; SignSwish's 2 - bx tanh(bx/2) amplifies that.
        np.testing.assert_allclose(grad, xla_grad, rtol=1e-4, atol=1e-6, err_msg=name)


def _ern_reference(x, k_bit, max_value):
    """Codes counted against float32 thresholds (i - 1/2) / scale, straight-through mask."""
    levels = 2**k_bit - 1
    scale = np.float32(levels / max_value)
    thresholds = (np.arange(1, levels + 1, dtype=np.float32) - np.float32(0.5)) / scale
    codes = (x[..., None] >= thresholds).sum(-1).astype(np.float32)
    return codes / scale, ((x >= 0) & (x <= max_value)).astype(np.float32)


@pytest.mark.parametrize("k_bit,max_value", [(2, 2.0), (3, 1.0), (4, 6.0)])
def test_unsigned_quantizer(k_bit, max_value):
    rng = np.random.default_rng(k_bit)
    levels = 2**k_bit - 1
    edges = np.float32([(i - 0.5) * max_value / levels for i in range(levels + 1)] + [max_value])
    near = [np.nextafter(edges, np.float32(direction)) for direction in (-np.inf, np.inf)]
    x = np.concatenate([edges, *near, rng.uniform(-1, max_value + 1, 300).astype(np.float32)])
    upstream = rng.uniform(0.5, 2.0, x.shape).astype(np.float32)
    y, grad = _forward_and_gradient(quantizers.UnsignedQuantizer(k_bit, max_value), x, upstream)
    expected_y, mask = _ern_reference(x, k_bit, max_value)
    np.testing.assert_allclose(y, expected_y, rtol=1e-6)
    np.testing.assert_array_equal(grad, upstream * mask)


def test_ern_two_bit_levels_and_thresholds():
    """ERN's activations (official code; arXiv 2410.11553): codes 0..3 switch at 1/3, 1, 5/3;
    outputs codes * 2/3."""
    third = np.float32(1 / 3)
    just_below = np.nextafter(third, np.float32(0))
    x = np.float32([-1, 0, just_below, third, 0.9, 1.0, 1.6, 5 / 3, 2.0, 7.0])
    y, _ = _forward_and_gradient(quantizers.get("ste_unsigned"), x, np.ones_like(x))
    np.testing.assert_allclose(y * 1.5, [0, 0, 0, 1, 1, 2, 2, 3, 3, 3], atol=1e-6)
    assert quantizers.get("ste_unsigned").get_config() == {"k_bit": 2, "max_value": 2.0}


def test_binarizers_emit_select_of_constants():
    """LCE only turns Select(x >= 0, 1, -1) into LceQuantize (its converter, arXiv 2011.09398)."""
    graph = (
        tf.function(quantizers.ste_sign)
        .get_concrete_function(tf.TensorSpec([None, 4], tf.float32))
        .graph
    )
    kinds = {op.type for op in graph.get_operations()}
    assert "SelectV2" in kinds and "GreaterEqual" in kinds
    assert not kinds & {"Sign", "StopGradient", "Sub"}


def test_get_resolves_like_larq():
    assert quantizers.get(None) is None
    assert isinstance(quantizers.get("ste_sign"), quantizers.SteSign)
    assert quantizers.get("ste_sign").clip_value == 1.0
    assert quantizers.get("SwishSign").beta == 5.0
    instance = quantizers.SteSign(clip_value=2.0)
    assert quantizers.get(instance) is instance
    assert quantizers.get(np.sign) is np.sign
    assert quantizers.get(quantizers.serialize(instance)).clip_value == 2.0
    assert quantizers.get(quantizers.serialize(quantizers.approx_sign)) is quantizers.approx_sign
    with pytest.raises(InputError, match="ste_sign"):
        quantizers.get("ste_sgn")
    with pytest.raises(InputError):
        quantizers.get(3)


def test_bits_and_precision():
    for name in ("ste_sign", "approx_sign", "swish_sign", "magnitude_aware_sign", "ste_heaviside"):
        assert quantizers.get(name).bits == quantizers.get(name).precision == 1
    assert quantizers.DoReFa(k_bit=3).bits == 3
    assert quantizers.UnsignedQuantizer(k_bit=4, max_value=1.0).precision == 4


def test_weight_clip():
    clip = constraints.get("weight_clip")
    assert isinstance(clip, constraints.WeightClip) and clip.clip_value == 1.0
    w = np.float32([-3, -1.25, -0.5, 0.5, 1.3])
    np.testing.assert_array_equal(constraints.WeightClip(1.25)(w), [-1.25, -1.25, -0.5, 0.5, 1.25])
    assert (
        constraints.get(keras.saving.serialize_keras_object(constraints.WeightClip(0.5))).clip_value
        == 0.5
    )
    assert constraints.get(None) is None


def test_keras_file_round_trip(tmp_path):
    """Every quantizer and the constraint survive model.save / keras.saving.load_model."""
    all_quantizers = [
        quantizers.SteSign(1.25),
        quantizers.ApproxSign(),
        quantizers.SwishSign(2.0),
        quantizers.MagnitudeAwareSign(0.5),
        quantizers.SteHeaviside(0.75),
        quantizers.DoReFa(3, "weights"),
        quantizers.UnsignedQuantizer(3, 1.5),
    ]
    inputs = keras.Input((6,))
    outputs = [
        QuantDense(
            4,
            input_quantizer=q,
            kernel_quantizer=q,
            kernel_constraint=constraints.WeightClip(0.9),
            name=f"dense{i}",
        )(inputs)
        for i, q in enumerate(all_quantizers)
    ]
    model = keras.Model(inputs, keras.layers.Concatenate()(outputs))
    model.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras")
    x = np.random.default_rng(0).normal(size=(3, 6)).astype(np.float32)
    np.testing.assert_array_equal(model(x), loaded(x))
    for i, quantizer in enumerate(all_quantizers):
        layer = loaded.get_layer(f"dense{i}")
        for restored in (layer.input_quantizer, layer.kernel_quantizer):
            assert type(restored) is type(quantizer)
            assert restored.get_config() == quantizer.get_config()
        assert layer.kernel_constraint.get_config() == {"clip_value": 0.9}


def test_unsigned_codes_agree_in_eager_graph_and_constant_folding():
    """Exactly at 5/3 a graph optimizer once turned (codes - 0.5) / 1.5 into a product and moved
    the code; codes now come from one float32 threshold table in every mode."""
    import tensorflow as tf

    quantizer = quantizers.HalfWaveGaussianQuantizer()
    starts = np.array(quantizer.thresholds, np.float32)
    x = np.concatenate(
        [starts, np.nextafter(starts, -np.inf), np.nextafter(starts, np.inf), [0.0, 2.0, -1.0, 3.0]]
    ).astype(np.float32)
    eager = quantizer(tf.constant(x)).numpy()
    traced = tf.function(lambda v: quantizer(v))(tf.constant(x)).numpy()
    folded = tf.function(lambda: quantizer(tf.constant(x)))().numpy()
    expected = np.array([1, 2, 3, 0, 1, 2, 1, 2, 3, 0, 3, 0, 3]) * (2 / 3)
    for result in (eager, traced, folded):
        np.testing.assert_allclose(result, expected, rtol=1e-6)


def test_ste_unsigned_is_half_wave_gaussian_and_rewritable():
    """One class for both names: a w1a2 conv with larq's `ste_unsigned` input says its thresholds
    and step, so the w1a2 -> LCE rewrite accepts it."""
    from effkeras.graph.passes.w1a2 import unsupported_reason
    from effkeras.layers import QuantConv2D

    ste_unsigned, hwgq = quantizers.get("ste_unsigned"), quantizers.get("half_wave_gaussian")
    assert type(ste_unsigned) is type(hwgq) is quantizers.HalfWaveGaussianQuantizer
    assert ste_unsigned.thresholds == hwgq.thresholds and ste_unsigned.step == hwgq.step
    assert quantizers.UnsignedQuantizer is quantizers.HalfWaveGaussianQuantizer
    layer = QuantConv2D(
        4,
        3,
        use_bias=False,
        input_quantizer="ste_unsigned",
        kernel_quantizer="binary_channel_wise_mean_scaling",
    )
    layer(keras.Input((6, 6, 8)))
    assert unsupported_reason(layer) is None


def test_unsigned_quantizer_configs_saved_before_the_merge_load():
    old = {
        "module": "effkeras.quantizers",
        "class_name": "UnsignedQuantizer",
        "config": {"k_bit": 3, "max_value": 1.5},
        "registered_name": "effkeras>UnsignedQuantizer",
    }
    for restored in (quantizers.get(old), keras.saving.deserialize_keras_object(old)):
        assert isinstance(restored, quantizers.HalfWaveGaussianQuantizer)
        assert restored.get_config() == {"k_bit": 3, "max_value": 1.5}
        assert restored.thresholds == quantizers.HalfWaveGaussianQuantizer(3, 1.5).thresholds
