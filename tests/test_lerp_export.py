"""Deploying learned table activations (LERP-PSA, B-splines): the freeze_tables pass, float TFLite
in the gather and sum-of-ReLUs forms, exact int8 tables (bit-exact on every code, in LiteRT and
TFLite Micro), TFLite Micro and Ethos-U, and the refusals of an ambiguous int8 table."""

import keras
import numpy as np
import pytest
from keras import layers

from effkeras import deploy, models
from effkeras.deploy import ethos_u, int8_tables, runtime, tflite, verify
from effkeras.deploy.converter import float_ops
from effkeras.deploy.flatbuffer import op_census, operators, pack_model, read_model
from effkeras.errors import InputError
from effkeras.graph.passes import freeze_tables as freeze_module
from effkeras.graph.passes.freeze_tables import freeze_tables
from effkeras.layers import BSplineActivation, LerpPSA, LerpTable

CALIBRATION = 32


def trained_like(name, seed=0):
    """`name` (32x32x3) with weights away from init: PSA and spline functions far from the
    identity and from ReLU, layer scales up to 1, and each BatchNormalization holding the
    statistics of its input on random images (as after training), so that the tables' inputs
    fill their grid as a trained model's do."""
    keras.utils.set_random_seed(seed)
    model = models.get(name)
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, LerpPSA):
            c, e = layer.u.shape
            layer.set_weights(
                [
                    rng.normal(0, 0.7, (c, e)),
                    rng.uniform(0.5, 1.5, (c, e)),
                    rng.uniform(-2, 2, (c, e)),
                    rng.uniform(0.5, 1.5, c),
                    rng.normal(0, 0.2, c),
                ]
            )
        elif isinstance(layer, BSplineActivation):
            c, g = layer.coefficients.shape
            knots = np.linspace(-layer.grid_range, layer.grid_range, g)
            layer.set_weights(
                [np.maximum(knots, 0) + np.cumsum(rng.normal(0, 0.1, (c, g)), axis=1)]
            )
        elif type(layer).__name__ == "LayerScale":
            scale, *rest = layer.get_weights()
            layer.set_weights(
                [rng.uniform(0.3, 1.0, scale.shape)] + [rng.normal(0, 0.1, w.shape) for w in rest]
            )
    x = rng.uniform(0, 255, (16, 32, 32, 3)).astype(np.float32)
    for layer in model.layers:
        if isinstance(layer, layers.BatchNormalization):
            inputs = keras.ops.convert_to_numpy(keras.Model(model.input, layer.input)(x))
            inputs = inputs.reshape(-1, inputs.shape[-1])
            c = inputs.shape[-1]
            layer.set_weights(
                [rng.uniform(0.8, 1.2, c), rng.normal(0, 0.2, c), inputs.mean(0), inputs.var(0)]
            )
    return model


def rel_diff(expected, actual):
    expected, actual = np.asarray(expected, np.float64), np.asarray(actual, np.float64)
    return float(np.max(np.abs(actual - expected)) / np.max(np.abs(expected)))


@pytest.fixture(scope="module")
def psa():
    return trained_like("resmlp_psa_h025")


@pytest.fixture(scope="module")
def sample(psa):
    return verify.random_sample(psa, size=8)


@pytest.fixture(scope="module")
def tflm_psa(psa):
    """(int8 flatbuffer, TflmReport) of the PSA model: the int8 target, then TFLite Micro."""
    calibration = verify.random_sample(psa, size=CALIBRATION, seed=2)
    return deploy.convert(psa, "tflm", calibration=calibration)


# --- the freeze pass --------------------------------------------------------------------------


def test_freeze_folds_residual_and_batch_norm_and_is_exact(psa, sample):
    frozen, count = freeze_tables(psa)
    assert count == 8
    assert not any(isinstance(layer, LerpPSA) for layer in frozen.layers)
    tables = [layer for layer in frozen.layers if isinstance(layer, LerpTable)]
    assert [t.name for t in tables] == [f"block{b}_mlp_psa{i}" for b in range(1, 5) for i in (1, 2)]
    assert all(t.form == "gather" and t.weights and not t.trainable_weights for t in tables)
    names = {layer.name for layer in frozen.layers}
    assert not any(f"block{b}_norm2" in names for b in range(1, 5))  # folded into psa1
    assert {f"block{b}_norm1" for b in range(1, 5)} <= names  # read by a Permute: kept
    scale = keras.ops.convert_to_numpy(frozen.get_layer("block1_mlp_psa1").input_scale)
    assert not np.allclose(scale, 1.0)
    assert rel_diff(psa.predict(sample, verbose=0), frozen.predict(sample, verbose=0)) <= 1e-5


def test_freeze_checks_itself(psa, monkeypatch):
    original = freeze_module.table_of

    def without_identity(layer):  # forgets the residual of ResPSA
        return original(layer) - freeze_module.grid(layer.grid_size, layer.grid_range)

    monkeypatch.setattr(freeze_module, "table_of", without_identity)
    with pytest.raises(RuntimeError, match="frozen tables.*block1_mlp_psa1.*disagrees"):
        freeze_tables(psa)


def test_a_model_without_tables_is_unchanged_and_forms_are_checked():
    model = models.get("resmlp_relu_h025")
    assert freeze_tables(model) == (model, 0)
    with pytest.raises(InputError, match="lerp form"):
        freeze_tables(model, form="table")
    with pytest.raises(InputError, match="lerp form"):
        deploy.convert(model, "float", lerp_form="table")


# --- float TFLite ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["resmlp_psa_h025", "resmlp_bspline_h025"])
def test_float_gather_form_is_builtin_and_matches_keras(name, psa, sample):
    model = psa if name == "resmlp_psa_h025" else trained_like(name)
    flatbuffer, report = deploy.convert(model, "float", sample=sample)
    assert (report.frozen_tables, report.lerp_form) == (8, "gather")
    assert "frozen tables:" in report.format()
    census = report.op_census
    assert census["GATHER"] == 16 and census["FLOOR"] == 8 and census["CAST"] == 8
    assert not {"LESS", "SELECT_V2", "SOFTMAX", "EXP"} & set(census)
    assert all(op.isupper() for op in census)  # builtins only: no Flex or custom op
    error = rel_diff(model.predict(sample, verbose=0), runtime.LiteRT(flatbuffer).predict(sample))
    print(f"{name} float gather vs Keras: {error:.3g}")
    assert error <= 5e-5


def test_float_relu_sum_form_has_no_gather(psa, sample):
    flatbuffer, report = deploy.convert(psa, "float", sample=sample, lerp_form="relu_sum")
    assert report.lerp_form == "relu_sum" and "GATHER" not in report.op_census
    assert report.op_census["SUM"] == 8
    error = rel_diff(psa.predict(sample, verbose=0), runtime.LiteRT(flatbuffer).predict(sample))
    print(f"float relu_sum vs Keras: {error:.3g}")
    assert error <= 5e-5


# --- exact int8 tables ---------------------------------------------------------------------------


def expected_table(layer, x_quantization, y_quantization):
    """(256, C) int8: the table of `layer` on every input code, from its float64 function."""
    (s_x, z_x), (s_y, z_y) = x_quantization, y_quantization
    codes = np.arange(-128, 128, dtype=np.float64)
    y = layer.function(np.repeat(((codes - z_x) * s_x)[:, None], layer.channels, axis=1)) / s_y
    return np.clip(np.sign(y) * np.floor(np.abs(y) + 0.5) + z_y, -128, 127).astype(np.int8)


def test_int8_tables_are_bit_exact_on_every_code_in_litert_and_tflite_micro(psa, tflm_psa):
    flatbuffer, report = tflm_psa
    frozen = {
        layer.name: layer for layer in freeze_tables(psa)[0].layers if isinstance(layer, LerpTable)
    }
    tables = int8_tables.table_ops(flatbuffer)
    assert sorted(t.name for t in tables) == sorted(frozen)
    for table in tables:
        single = int8_tables.single_op_file(flatbuffer, table)
        assert op_census(operators(single)) == {"ADD": 1, "CAST": 1, "GATHER": 1}
        codes = int8_tables.all_codes(table.channels)  # (1, 256, C)
        want = expected_table(frozen[table.name], table.x_quantization, table.y_quantization)
        for runner in (runtime.LiteRT, runtime.TFLiteMicro):
            (got,) = runner(single).run_one([codes[0]])
            assert got.dtype == np.int8
            np.testing.assert_array_equal(got, want, err_msg=f"{table.name} {runner.__name__}")
    assert report.int8_tables == 8
    assert report.table_bytes == 4 * (96 + 24) * 256


def test_lerp65_reads_the_65th_entry_and_rounds_halves_up():
    # u = code + 128; y = T[u//4] + floor(((T[u//4+1] - T[u//4]) * (u % 4) + 2) / 4)
    rising = np.array([[-128, -120, *[0] * 61, 100, 127]], np.int8)  # (1, 65)
    codes = np.array([[-128], [-127], [-126], [-125], [-124], [124], [125], [127]], np.int8)
    got = int8_tables.lerp65(codes, rising)[:, 0]
    assert got.tolist() == [-128, -126, -124, -122, -120, 100, 107, 120]  # 127: T[64] read
    falling = np.array([[0] * 63 + [-3, -128]], np.int8)  # negative steps, the top codes
    got = int8_tables.lerp65(np.array([[124], [125], [126], [127]], np.int8), falling)[:, 0]
    assert got.tolist() == [-3, -34, -65, -97]  # -3 + floor((-125 * k + 2) / 4)
    halves = np.array([[0, 2, 0, -2, *[0] * 61]], np.int8)  # steps of +-0.5: halves round up
    got = int8_tables.lerp65(np.array([[-127], [-121], [-119], [-117]], np.int8), halves)[:, 0]
    assert got.tolist() == [1, 1, 0, -1]  # 0.5, 2 - 1.5, -0.5, -1.5


def test_table65_file_is_bit_exact_against_its_integer_reference(psa, tflm_psa):
    gather_file, gather_report = tflm_psa
    calibration = verify.random_sample(psa, size=CALIBRATION, seed=2)
    flatbuffer, report = deploy.convert(psa, "tflm", calibration=calibration, lerp_form="table65")
    frozen = {
        layer.name: layer for layer in freeze_tables(psa)[0].layers if isinstance(layer, LerpTable)
    }
    tables = int8_tables.table_ops(flatbuffer)
    assert sorted(t.name for t in tables) == sorted(frozen) and {t.entries for t in tables} == {65}
    for table in tables:
        lut = table.lut.reshape(table.channels, 65)
        quantizations = (table.x_quantization, table.y_quantization)
        exact = expected_table(frozen[table.name], *quantizations)  # (256, C)
        np.testing.assert_array_equal(lut[:, :64], exact[::4].T)  # codes -128, -124, ..., 124
        # The 65th entry: the function at code 128, one past the int8 range.
        (s_x, z_x), (s_y, z_y) = quantizations
        top = frozen[table.name].function(np.full((1, table.channels), (128 - z_x) * s_x)) / s_y
        top = np.clip(np.sign(top) * np.floor(np.abs(top) + 0.5) + z_y, -128, 127)
        np.testing.assert_array_equal(lut[:, 64], top[0])
        codes = int8_tables.all_codes(table.channels)
        want = int8_tables.lerp65(codes, lut)
        single = int8_tables.single_op_file(flatbuffer, table)
        assert op_census(operators(single)) == {
            "ADD": 5,
            "CAST": 5,
            "GATHER": 5,
            "MUL": 2,
            "SUB": 1,
        }
        for runner in (runtime.LiteRT, lambda f: runtime.TFLiteMicro(f, arena_size=1 << 21)):
            (got,) = runner(single).run_one([codes[0]])
            np.testing.assert_array_equal(got[None], want, err_msg=table.name)
        assert np.abs(want.astype(int) - exact[None]).max() <= report.table_max_lsb
    assert (report.table_entries, report.table_bytes) == (65, 4 * (96 + 24) * 65)
    assert report.table_bytes < gather_report.table_bytes / 3.9
    # The 18 ops and their tensors per table cost about 2 KB of the 3/4 of the table bytes saved.
    saved = gather_report.table_bytes - report.table_bytes
    assert len(gather_file) - len(flatbuffer) > 0.75 * saved
    print(
        f"65-entry tables: at most {report.table_max_lsb} output steps off the exact ones; "
        f"{len(flatbuffer)} bytes against {len(gather_file)}"
    )
    with pytest.raises(InputError, match="table65.*int8 targets"):
        deploy.convert(psa, "float", lerp_form="table65")


def test_b_spline_tables_take_the_65_entry_form_too():
    """A B-spline activation freezes to the same LerpTable as PSA, and so converts to 65 entries
    read by interpolation, equal to lerp65 on every code in LiteRT and TFLite Micro."""
    keras.utils.set_random_seed(5)
    inputs = keras.Input((8, 6))
    x = layers.Dense(5, name="dense_in")(inputs)
    spline = BSplineActivation(5, size=9, name="spline")
    x = layers.Dense(3, name="dense_out")(spline(x))
    model = keras.Model(inputs, x, name="spline_net")
    c, g = spline.coefficients.shape
    knots = np.linspace(-spline.grid_range, spline.grid_range, g)
    rng = np.random.default_rng(5)
    spline.set_weights([np.abs(knots) + np.cumsum(rng.normal(0, 0.3, (c, g)), axis=1)])
    draw = np.random.default_rng(6)
    calibration = draw.normal(0, 1, (CALIBRATION, 8, 6)).astype(np.float32)
    sample = draw.normal(0, 1, (8, 8, 6)).astype(np.float32)
    flatbuffer, report = deploy.convert(
        model, "tflm", calibration=calibration, sample=sample, lerp_form="table65"
    )
    (table,) = int8_tables.table_ops(flatbuffer)
    assert (table.name, table.entries, report.table_entries) == ("spline", 65, 65)
    assert report.table_bytes == 5 * 65 and report.float_ops == ()
    codes = int8_tables.all_codes(table.channels)
    want = int8_tables.lerp65(codes, table.lut.reshape(table.channels, 65))
    single = int8_tables.single_op_file(flatbuffer, table)
    for runner in (runtime.LiteRT, lambda f: runtime.TFLiteMicro(f, arena_size=1 << 20)):
        (got,) = runner(single).run_one([codes[0]])
        np.testing.assert_array_equal(got[None], want)
    assert 0 <= report.table_max_lsb <= 8 and report.top1_agreement >= 0.75


def test_int8_file_is_integer_only_and_agrees_with_keras(psa, sample, tflm_psa):
    flatbuffer, report = tflm_psa
    assert float_ops(operators(flatbuffer)) == [] and report.float_ops == ()
    census = report.op_census
    assert census["GATHER"] == census["CAST"] == 8
    assert not {"FLOOR", "DEQUANTIZE", "QUANTIZE", "SUM"} & set(census)
    error = rel_diff(psa.predict(sample, verbose=0), runtime.LiteRT(flatbuffer).predict(sample))
    print(
        f"int8 tables vs Keras: {error:.3g} (report {report.max_rel_diff:.3g}, top-1 "
        f"{report.top1_agreement}); {report.table_bytes} table bytes, {len(flatbuffer)} bytes"
    )
    assert error <= tflite.MAX_REL_DIFF["int8"] and report.max_rel_diff <= 0.25


def test_tflite_micro_runs_the_int8_tables(tflm_psa):
    flatbuffer, report = tflm_psa
    print(
        f"TFLite Micro: arena {report.arena_bytes} bytes, max {report.max_lsb_diff} LSB, mean "
        f"{report.mean_lsb_diff} LSB vs LiteRT"
    )
    assert report.arena_bytes > 0 and report.max_lsb_diff <= 8


def has_vela():
    try:
        return bool(ethos_u.vela_binary())
    except InputError:
        return False


@pytest.mark.skipif(not has_vela(), reason="Vela is not installed")
def test_ethos_u_runs_the_tables_on_the_cpu(tflm_psa):
    flatbuffer, _ = tflm_psa
    with pytest.raises(InputError, match="off the ethos-u55-128 NPU"):
        deploy.convert(flatbuffer, "ethos-u55-128")
    _, report = deploy.convert(flatbuffer, "ethos-u55-128", allow_cpu_ops=True)
    print(f"Vela: {report.npu_ops} NPU ops, CPU {report.cpu_op_types}")
    assert report.cpu_op_types == {"CAST": 8, "GATHER": 8} and report.npu_ops > 0


# --- refusals: an int8 table that would be ambiguous ---------------------------------------------


def tiny_model():
    """Raw pixels -> Dense(4) -> B-spline (9 knots on [-4, 4]) as the model's output: the Dense
    output spans tens of thousands, so its int8 step spans hundreds of grid segments."""
    keras.utils.set_random_seed(3)
    inputs = keras.Input((4, 3))
    x = layers.Dense(
        4, kernel_initializer=keras.initializers.RandomNormal(stddev=50.0), name="dense_in"
    )(inputs)
    return keras.Model(inputs, BSplineActivation(4, size=9, name="spline")(x), name="tiny")


@pytest.fixture(scope="module")
def tiny_probe_file():
    """(the probe model's int8 file with float io, its probes) of the frozen tiny model: the
    table's last op writes the int8 tensor that a DEQUANTIZE makes the model's output."""
    model = freeze_tables(tiny_model())[0]
    probed, probes = int8_tables.probe_model(model)
    calibration = [verify.random_sample(model, size=CALIBRATION, seed=2)]
    return tflite._quantize(probed, calibration, "float"), probes


def test_a_coarse_input_step_is_an_ambiguous_table(tiny_probe_file):
    flatbuffer, probes = tiny_probe_file
    with pytest.raises(InputError, match=r"int8 table of spline is ambiguous.*grid segments"):
        int8_tables.insert_tables(flatbuffer, probes)
    written = int8_tables.insert_tables(flatbuffer, probes, max_code_step=np.inf)
    (table,), _ = int8_tables.check_tables(written, {"spline": probes[int8_tables.PROBE.format(0)]})
    assert table.channels == 4
    assert float_ops(operators(written)) == []
    assert op_census(operators(written)) == {
        "ADD": 1,
        "CAST": 1,
        "DEQUANTIZE": 1,
        "FULLY_CONNECTED": 1,
        "GATHER": 1,
        "QUANTIZE": 1,
    }


def test_convert_names_the_ambiguous_table_and_relu_sum_quantizes_without_one():
    model = tiny_model()
    with pytest.raises(InputError, match="spline is ambiguous.*max_code_step"):
        deploy.convert(model, "int8", calibration_samples=CALIBRATION)
    # The no-GATHER form quantizes like any other op, with TFLite's own int8 kernels.
    flatbuffer, report = deploy.convert(
        model, "int8", calibration_samples=CALIBRATION, lerp_form="relu_sum"
    )
    assert report.int8_tables == 0 and report.float_ops == () and report.lerp_form == "relu_sum"
    assert "GATHER" not in report.op_census and report.op_census["SUM"] == 1
    print(f"tiny int8 relu_sum vs Keras: {report.max_rel_diff:.3g}")


def _edited(flatbuffer, edit):
    model = read_model(flatbuffer)
    subgraph = model.subgraphs[0]
    (fc,) = [
        op
        for op in subgraph.operators
        if "dense_in" in subgraph.tensors[op.outputs[0]].name.decode()
    ]
    edit(subgraph.tensors[fc.outputs[0]])
    return pack_model(model)


def test_a_per_channel_or_unquantized_input_is_ambiguous(tiny_probe_file):
    flatbuffer, probes = tiny_probe_file

    def per_channel(tensor):
        tensor.quantization.scale = list(tensor.quantization.scale) * 4
        tensor.quantization.zeroPoint = list(tensor.quantization.zeroPoint) * 4
        tensor.quantization.quantizedDimension = 2

    with pytest.raises(InputError, match="ambiguous.*one scale and one zero point"):
        int8_tables.insert_tables(_edited(flatbuffer, per_channel), probes, np.inf)


def test_a_probe_fused_into_another_op_is_refused(tiny_probe_file):
    flatbuffer, probes = tiny_probe_file

    def fused(tensor):
        tensor.name += b";tiny_1/effkeras_int8_probe_0x_1/mul"

    with pytest.raises(InputError, match="merged an op of spline with"):
        int8_tables.insert_tables(_edited(flatbuffer, fused), probes, np.inf)


def test_convert_app_passes_max_code_step_to_int8_targets_only(tmp_path):
    from conftest import assert_one_error_line, run_app

    output = f"--output={tmp_path / 'psa.tflite'}"
    assert_one_error_line(
        run_app(
            "apps.convert", "--model=resmlp_psa_h025", "--target=float", "--max_code_step=3", output
        ),
        "--max_code_step does not apply to --target=float",
    )
    for flag in ("--max_code_step=3", "--lerp_form=relu_sum"):  # flags that would do nothing
        assert_one_error_line(
            run_app("apps.convert", "--model=resnet20", "--target=int8", flag, output),
            f"{flag.split('=')[0]} applies to models with learned table activations",
            "resnet20 has none",
        )
    assert_one_error_line(
        run_app(
            "apps.convert",
            "--model=resmlp_psa_h025",
            "--target=tflm",
            "--max_code_step=0.01",
            output,
        ),
        "block1_mlp_psa1 is ambiguous",
        "--max_code_step=1",
    )
    assert not (tmp_path / "psa.tflite").exists()
    with pytest.raises(InputError, match="max_code_step must be > 0"):
        deploy.convert(tiny_model(), "int8", max_code_step=0.0)
