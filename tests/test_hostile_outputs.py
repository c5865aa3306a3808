"""Output paths and files: checked before the work, written atomically, never half-written or
lost, with the umask's permissions."""

import json
import os
import stat

import keras
import numpy as np
import pytest
from conftest import assert_one_error_line, run_app

from effkeras import fileio
from effkeras.errors import InputError


@pytest.fixture
def a_file(tmp_path):
    path = tmp_path / "a_file"
    path.write_text("not a folder")
    return path


@pytest.mark.parametrize(
    "output, message",
    [
        ("{tmp}", "is a folder"),  # a directory as the output file
        ("{file}/model.tflite", "is a file, not a folder"),  # a file where a folder should be
        ("{file}/deeper/model.tflite", "is a file, not a folder"),
        ("/proc/effkeras/model.tflite", "cannot write"),  # a read-only place (even for root)
    ],
)
def test_convert_refuses_unwritable_outputs_before_converting(tmp_path, a_file, output, message):
    output = output.format(tmp=tmp_path, file=a_file)
    result = run_app("apps.convert", "--model=resnet20", "--target=float", f"--output={output}")
    assert_one_error_line(result, "--output", message)
    assert a_file.read_text() == "not a folder"
    assert "target:" not in result.stdout  # refused before the conversion ran


def test_convert_refuses_an_unwritable_report_and_writes_nothing(tmp_path, a_file):
    output = tmp_path / "model.tflite"
    result = run_app(
        "apps.convert",
        "--model=resnet20",
        "--target=float",
        f"--output={output}",
        f"--report={a_file}/report.json",
    )
    assert_one_error_line(result, "--report")
    assert not output.exists()


def test_evaluate_checks_its_output_first(tmp_path, a_file):
    checkpoint = tmp_path / "m.keras"
    inputs = keras.Input((8, 8, 1))
    keras.Model(inputs, keras.layers.Dense(10)(keras.layers.Flatten()(inputs))).save(checkpoint)
    for output in (tmp_path, f"{a_file}/eval.json"):
        result = run_app(
            "apps.evaluate",
            f"--checkpoint={checkpoint}",
            "--dataset=synthetic",
            f"--output={output}",
        )
        assert_one_error_line(result, "--output")
        assert result.stdout == ""


def test_a_failed_conversion_keeps_the_previous_file(tmp_path):
    from effkeras.layers import QuantDense

    inputs = keras.Input((4, 4, 32))
    outputs = QuantDense(
        8, input_quantizer="ste_sign", kernel_quantizer="ste_sign", name="binary_dense"
    )(keras.layers.Flatten()(inputs))
    checkpoint = tmp_path / "dense.keras"
    keras.Model(inputs, outputs).save(checkpoint)
    output = tmp_path / "model.tflite"
    output.write_bytes(b"the previous, good file")
    result = run_app(
        "apps.convert", f"--checkpoint={checkpoint}", "--target=arm", f"--output={output}"
    )
    assert_one_error_line(result, "binary_dense")
    assert output.read_bytes() == b"the previous, good file"
    assert sorted(os.listdir(tmp_path)) == ["dense.keras", "model.tflite"]  # no temporaries


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o077])
def test_written_files_keep_the_umask_permissions(tmp_path, umask):
    previous = os.umask(umask)
    try:
        fileio.write_bytes(tmp_path / "a.bin", b"x")
        fileio.write_json(tmp_path / "a.json", {"a": 1})
        with fileio.atomic_path(tmp_path / "m.keras") as tmp:
            keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)]).save(tmp)
    finally:
        os.umask(previous)
    for name in ("a.bin", "a.json", "m.keras"):
        assert mode(tmp_path / name) == 0o666 & ~umask, name


def test_apps_write_files_with_the_umask_permissions(tmp_path):
    output = tmp_path / "model.tflite"
    previous = os.umask(0o002)  # the app process inherits it
    try:
        run = run_app(
            "apps.convert",
            "--model=resnet20",
            "--target=float",
            "--input_shape=16,16,3",
            f"--output={output}",
            f"--report={tmp_path}/report.json",
        )
    finally:
        os.umask(previous)
    assert run.returncode == 0, run.stderr[-2000:]
    for name in ("model.tflite", "model.tflite.json", "report.json"):
        assert mode(tmp_path / name) == 0o664, name


def test_json_files_are_always_valid_json(tmp_path):
    for bad in (float("nan"), float("inf"), {"loss": float("-inf")}):
        with pytest.raises(ValueError):
            fileio.write_json(tmp_path / "metrics.json", {"value": bad})
    assert not (tmp_path / "metrics.json").exists()
    fileio.write_json(tmp_path / "metrics.json", {"top1": np.float64(0.5).item()})
    assert json.loads((tmp_path / "metrics.json").read_text()) == {"top1": 0.5}


def test_check_writable_in_the_library(tmp_path, a_file):
    fileio.check_writable(tmp_path / "new" / "deeper" / "file.json")  # folders made later
    fileio.check_writable(tmp_path / "runs", directory=True)
    with pytest.raises(InputError, match="is a file"):
        fileio.check_writable(a_file, "--output_dir", directory=True)
    assert not (tmp_path / "new").exists()  # the check creates nothing
