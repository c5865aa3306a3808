"""apps.benchmark / effkeras.benchmark: every model on every target in one run, measured side by
side, failures as rows, and ARM device latencies merged in (tools/device_benchmark.py)."""

import json
import os

import numpy as np
import pytest
from conftest import assert_one_error_line, run_app

from effkeras import benchmark, models
from effkeras.benchmark import pipeline
from effkeras.errors import InputError
from effkeras.graph import summary

TARGETS = ["arm", "int8", "tflm", "ethos-u55-128"]
FLOAT_NET, BINARY_NET = "mlperf_tiny_resnet8", "recu_resnet20@12"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("benchmark")
    rows = benchmark.run(
        [FLOAT_NET, BINARY_NET],
        TARGETS,
        runs=3,
        warmup=1,
        baseline=FLOAT_NET,
        output_dir=str(output_dir),
        progress=False,
    )
    return {(row.model, row.target): row for row in rows}, output_dir


def test_every_model_on_every_target_is_a_row(run):
    rows, _ = run
    assert len(rows) == 2 * len(TARGETS)
    for target in TARGETS:
        assert rows[FLOAT_NET, target].error is None
    for target in TARGETS:  # a binary net: LCE's binary ops, or lowered to int8 builtins
        assert rows[BINARY_NET, target].error is None
    assert rows[BINARY_NET, "ethos-u55-128"].npu_mac_share == pytest.approx(1.0)


def test_latencies_are_timed_together_and_given_as_ratios(run):
    rows, _ = run
    timed = [rows[FLOAT_NET, t] for t in ("arm", "int8", "tflm")] + [rows[BINARY_NET, "arm"]]
    for row in timed:
        assert 0 < row.p25_ms <= row.median_ms <= row.p75_ms
        assert row.inferences_per_second == pytest.approx(1e3 / row.median_ms)
    for target in TARGETS:  # the baseline against itself, target by target
        assert rows[FLOAT_NET, target].ratio == pytest.approx(1.0)
    binary = rows[BINARY_NET, "arm"]
    assert binary.ratio == pytest.approx(binary.median_ms / rows[FLOAT_NET, "arm"].median_ms)
    assert binary.baseline == f"{FLOAT_NET} (arm)"
    assert {rows[FLOAT_NET, t].runtime for t in TARGETS} == {
        "lce",
        "litert",
        "tflm",
        "vela (estimate)",
    }


def test_target_figures_and_mac_shares(run):
    rows, _ = run
    totals = summary.totals(summary.summarize(models.get("recu_resnet20", input_shape=(12, 12, 3))))
    macs = totals["binary_macs"] + totals["low_bit_macs"] + totals["float_macs"]
    binary = rows[BINARY_NET, "arm"]
    assert binary.macs == macs and binary.params == totals["total_params"]
    # ReCU's stem conv and classifier stay float: the share is that of its 18 binary convs.
    assert binary.binary_mac_share == pytest.approx(totals["binary_macs"] / macs)
    assert 0.9 < binary.binary_mac_share < 1.0 and binary.ops["LceBconv2d"] == 18
    assert rows[FLOAT_NET, "arm"].binary_mac_share == 0.0
    npu = rows[FLOAT_NET, "ethos-u55-128"]
    assert npu.npu_mac_share == pytest.approx(1.0) and npu.cycles > 0
    assert npu.median_ms == pytest.approx(1e3 / npu.inferences_per_second)
    assert rows[FLOAT_NET, "tflm"].arena_bytes > 0 and rows[FLOAT_NET, "int8"].arena_bytes is None
    # Vela's flash per binary weight: about a bit, plus each channel's scale and bias.
    assert 1.0 < rows[BINARY_NET, "ethos-u55-128"].bits_per_binary_weight < 2.0
    assert npu.bits_per_binary_weight is None
    assert "flash bits / binary weight" in benchmark.table(list(rows.values()))


def test_results_are_written_and_read_back(run):
    rows, output_dir = run
    for row in rows.values():
        if row.error is None:
            data = (output_dir / row.file).read_bytes()
            assert len(data) == row.size_bytes
    read, threads, runs = benchmark.read(str(output_dir))
    assert (threads, runs) == (1, 3) and read == list(rows.values())
    table = (output_dir / "benchmark.md").read_text()
    assert f"| {BINARY_NET} | int8 |" in table
    assert "× mlperf_tiny_resnet8" in table
    assert (output_dir / "benchmark.png").read_bytes()[:4] == b"\x89PNG"
    # A model is quantized once: its tflm file and the file Vela compiled are its int8 file.
    for model in (FLOAT_NET, BINARY_NET):
        int8 = (output_dir / rows[model, "int8"].file).read_bytes()
        assert (output_dir / rows[model, "tflm"].file).read_bytes() == int8
        vela_input = (output_dir / rows[model, "ethos-u55-128"].file).with_suffix("")
        assert vela_input.with_name(vela_input.name + "_int8.tflite").read_bytes() == int8


def test_given_files_benchmark_as_what_they_are(run, tmp_path):
    rows, output_dir = run
    lce_file = str(output_dir / rows[BINARY_NET, "arm"].file)
    int8_file = str(tmp_path / "resnet8_int8.tflite")
    with open(int8_file, "wb") as f:
        f.write((output_dir / rows[FLOAT_NET, "int8"].file).read_bytes())
    (lce,) = benchmark.run([lce_file], ["arm"], runs=2, warmup=0, progress=False)
    assert lce.model == os.path.splitext(os.path.basename(lce_file))[0] and lce.median_ms > 0
    (tflm,) = benchmark.run([int8_file], ["tflm"], runs=0, progress=False)
    assert tflm.arena_bytes == rows[FLOAT_NET, "tflm"].arena_bytes
    # A file given to a target it does not run on is refused before any work.
    for spec, target, kind in ((lce_file, "tflm", "an arm"), (int8_file, "arm", "an int8")):
        with pytest.raises(InputError, match=f"is {kind} file; it benchmarks on"):
            benchmark.run([spec], [target], runs=0, progress=False)


def test_what_the_user_typed_wrong_is_refused_before_any_work(tmp_path):
    def refused(specs, message, targets=("int8",), **kwargs):
        with pytest.raises(InputError, match=message):
            benchmark.run(list(specs), list(targets), runs=0, progress=False, **kwargs)

    refused(["no_such_model"], "--models no_such_model: unknown model 'no_such_model'")
    refused([f"{FLOAT_NET}:no_option=1"], f"--models {FLOAT_NET}:no_option=1 does not build")
    refused([str(tmp_path / "missing.tflite")], "cannot read")
    (tmp_path / "text.tflite").write_text("not a flatbuffer")
    refused([str(tmp_path / "text.tflite")], "text.tflite")
    refused([FLOAT_NET], "unknown --dataset=mnist", dataset="mnist")
    refused([FLOAT_NET], "--calibration_samples must be", calibration_samples=0)
    refused([FLOAT_NET], "--input_shape must be three positive", input_shape=(0, 0, 3))
    refused([FLOAT_NET], "--num_classes must be an integer >= 2", num_classes=1)
    # Output files over an input, or over each other.
    given = tmp_path / "out" / "x_int8.tflite"
    given.parent.mkdir()
    given.write_bytes(b"kept")
    first = tmp_path / "x.tflite"
    first.write_bytes(given.read_bytes())
    refused([str(first), str(given)], "over the input .*x_int8.tflite", output_dir=given.parent)
    same = tmp_path / "mlperf_tiny_resnet8_32.tflite"
    same.write_bytes(b"x")
    refused(
        [f"{FLOAT_NET}@32", str(same)],
        "would both be written to",
        output_dir=tmp_path / "out2",
    )
    assert given.read_bytes() == b"kept"
    assert not (tmp_path / "out2").exists()


def test_app_exits_1_when_a_valid_model_fails_on_a_target(tmp_path):
    result = run_app(  # LCE has no early-exit form: a row that says so, the report written
        "apps.benchmark",
        "--models=ranet_cifar",
        "--targets=arm",
        "--runs=0",
        f"--output_dir={tmp_path}",
    )
    assert result.returncode == 1, result.stderr[-2000:]
    assert "1 of 1 rows failed" in result.stderr and "Traceback" not in result.stderr
    assert "**failed**" in (tmp_path / "benchmark.md").read_text()


def test_device_latencies_merge_into_the_table(run, tmp_path):
    rows, output_dir = run
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(output_dir, copy)
    float_file, binary_file = rows[FLOAT_NET, "arm"].file, rows[BINARY_NET, "arm"].file
    merged = benchmark.merge_device(
        str(copy), {float_file: {1: 4.0, 4: 1.5}, binary_file: {1: 2.0}}, "RPi 4B"
    )
    by_file = {row.file: row for row in merged}
    assert by_file[binary_file].device_ms == {"1": 2.0}
    table = (copy / "benchmark.md").read_text()
    assert "RPi 4B ms, 4 threads" in table
    line = next(line for line in table.splitlines() if line.startswith(f"| {BINARY_NET} | arm"))
    assert line.endswith("| 2.0 | – | 0.50 |")  # 2.0 ms over the baseline's 4.0 on the device
    assert json.loads((copy / "benchmark.json").read_text())["rows"][0]["device"] == "RPi 4B"
    with pytest.raises(InputError, match="not a file of"):
        benchmark.merge_device(str(copy), {"other.tflite": {1: 1.0}}, "RPi 4B")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"targets": ["arm", "tpu"]}, "unknown target(s) tpu"),
        ({"baseline": "quicknet"}, "--baseline=quicknet is not one of --models"),
        ({"specs": [FLOAT_NET, FLOAT_NET]}, "names mlperf_tiny_resnet8 twice"),
        ({"runs": -1}, "--runs must be an integer >= 0"),
        ({"threads": 100000}, "--threads must be at most 256"),
        ({"specs": ["mobilenet_v2@x"]}, "the size after @ must be a number"),
    ],
)
def test_bad_arguments_are_refused_before_any_work(kwargs, message):
    arguments = {"specs": [FLOAT_NET], "targets": ["int8"], **kwargs}
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        benchmark.run(arguments.pop("specs"), arguments.pop("targets"), progress=False, **arguments)


def test_app_refuses_bad_flags_with_one_line(tmp_path):
    assert_one_error_line(
        run_app("apps.benchmark", f"--output_dir={tmp_path}"), "--models is required"
    )
    assert_one_error_line(
        run_app(
            "apps.benchmark",
            "--models=mlperf_tiny_resnet8",
            "--targets=int9",
            f"--output_dir={tmp_path}",
        ),
        "unknown target(s) int9",
        "known targets:",
    )


def test_app_writes_the_table(tmp_path):
    result = run_app(
        "apps.benchmark",
        "--models=mlperf_tiny_resnet8@16",
        "--targets=float",
        "--runs=2",
        "--warmup=0",
        f"--output_dir={tmp_path}",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "| mlperf_tiny_resnet8@16 | float | 16x16x3 |" in result.stdout
    saved = json.loads((tmp_path / "benchmark.json").read_text())
    assert np.isfinite(saved["rows"][0]["median_ms"])


def test_an_early_exit_network_gets_a_row_per_stage():
    stages = [
        {
            "stage": k,
            "stage_macs": 1000 * k,
            "file_bytes": 100 * k,
            "cycles_total": 10 * k,
            "inferences_per_second": 1000.0 / k,
            "sram_bytes": 64 * k,
            "cpu_ops": k - 1,
            "npu_macs": 1000 * k,
        }
        for k in (1, 2)
    ]
    report = type("Report", (), {"stages": stages})()
    row = benchmark.Row(model="ranet", target="ethos-u55-128", input="32x32x3")
    pipeline._vela(row, stages)  # the whole network: its stages in turn
    assert row.median_ms == pytest.approx(1.0 + 2.0) and row.cycles == 30 and row.cpu_ops == 1
    first, second = benchmark.stage_rows(row, report)
    assert (second.model, second.macs, second.size_bytes, second.sram_bytes) == (
        "ranet stage 2",
        2000,
        200,
        128,
    )
    assert second.median_ms == pytest.approx(2.0) and second.npu_mac_share == 1.0


def test_checkpoints_get_their_accuracy(tmp_path, monkeypatch):
    from effkeras import evaluation

    run_dir = tmp_path / "r8"
    run_dir.mkdir()
    models.get(FLOAT_NET, input_shape=(16, 16, 3)).save(run_dir / "model.keras")
    (run_dir / "metrics.json").write_text(
        json.dumps({"dataset": "synthetic", "test": {"top1": 0.5}})
    )
    spec = str(run_dir / "model.keras")
    keras_only = benchmark.run([spec], ["int8"], runs=0, progress=False)
    assert keras_only[0].accuracy == 0.5 and "(Keras)" in benchmark.table(keras_only)
    evaluated = []
    evaluate_tflite = evaluation.evaluate_tflite
    monkeypatch.setattr(
        evaluation,
        "evaluate_tflite",
        lambda path, *args, **kwargs: (
            evaluated.append(path) or evaluate_tflite(path, *args, **kwargs)
        ),
    )
    rows = benchmark.run(
        [spec],
        ["int8", "ethos-u55-128"],
        runs=0,
        dataset="synthetic",
        output_dir=str(tmp_path / "out"),
        progress=False,
    )
    for row in rows:  # each file itself, on the test split; Vela's through its int8 input
        assert row.model == "r8" and 0 <= row.accuracy <= 1 and row.accuracy != 0.5
        assert row.accuracy_source.startswith("synthetic test")
    assert "(Keras)" not in benchmark.table(rows)
    assert len(evaluated) == 1  # the file Vela compiled is the int8 file: evaluated once
    assert rows[0].accuracy == rows[1].accuracy


def _benchmark_dir(tmp_path):
    """An apps.benchmark output with two ARM files and one microcontroller file."""
    from effkeras import benchmark

    rows = [
        benchmark.Row(model=m, target=t, file=f"{m}_{t}.tflite", median_ms=ms, size_bytes=n)
        for m, t, ms, n in (
            ("quicknet", "arm", 9.0, 12000),
            ("ern18", "arm", 6.0, 6000),
            ("resnet8", "tflm", 7.0, 3000),
        )
    ]
    for row in rows:
        (tmp_path / row.file).write_bytes(b"x" * row.size_bytes)
    benchmark.set_ratios(rows, "quicknet")
    benchmark.write(rows, str(tmp_path))
    return tmp_path


def test_device_benchmark_merges_the_device_latencies(tmp_path):
    directory = _benchmark_dir(tmp_path)
    fake = tmp_path / "lce_benchmark_model"
    # Prints what lce_benchmark_model prints, with a latency of (bytes / threads) microseconds.
    fake.write_text(
        '#!/bin/sh\nfor a in "$@"; do case $a in --num_threads=*) n=${a#*=};; '
        "--graph=*) g=${a#*=};; esac; done\n"
        'echo "count=50 first=1 curr=1 min=1 max=2 avg=3 std=0"\n'
        'echo "Inference timings in us: Init: 100, First inference: 9000, '
        'Warmup (avg): 8000, Inference (avg): $(( $(wc -c < $g) / n ))"\n'
    )
    fake.chmod(0o755)
    result = run_app(
        "apps.device_benchmark",
        f"--benchmark_dir={directory}",
        f"--binary={fake}",
        "--threads=1,4",
        "--device=RPi 4B",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    saved = {
        row["file"]: row for row in json.loads((directory / "benchmark.json").read_text())["rows"]
    }
    assert saved["ern18_arm.tflite"]["device_ms"] == {"1": 6.0, "4": 1.5}
    assert saved["resnet8_tflm.tflite"]["device_ms"] is None  # not a file for an ARM CPU
    line = next(
        l
        for l in (directory / "benchmark.md").read_text().splitlines()
        if l.startswith("| ern18 | arm")
    )
    assert line.endswith("| 6.0 | 1.5 | 0.50 |")  # 1 thread, 4 threads, x quicknet on the Pi


def test_device_benchmark_says_what_is_missing(tmp_path):
    directory = _benchmark_dir(tmp_path)
    assert_one_error_line(
        run_app(
            "apps.device_benchmark",
            f"--benchmark_dir={directory}",
            f"--binary={tmp_path / 'missing'}",
        ),
        "is not an executable benchmark binary",
        "GitHub releases",
    )
    assert_one_error_line(
        run_app("apps.device_benchmark", f"--benchmark_dir={tmp_path / 'x'}"),
        "cannot read",
        "apps.benchmark",
    )
    fake = tmp_path / "bin"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    env_path = os.environ["PATH"]
    try:
        os.environ["PATH"] = str(tmp_path)  # no adb here
        result = run_app(
            "apps.device_benchmark", f"--benchmark_dir={directory}", f"--binary={fake}", "--adb"
        )
    finally:
        os.environ["PATH"] = env_path
    assert_one_error_line(result, "`adb` is not installed")
