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


def save_killed_at(step, path, flatbuffer, report, metadata):
    """Runs deploy.save in a forked child that SIGKILLs itself at its `step`-th file operation
    (an fsync, a rename, or a write, which then writes half its bytes first). Returns whether
    the child was killed (False: it finished with fewer steps)."""
    import signal

    from effkeras import deploy

    pid = os.fork()
    if pid == 0:  # the child: file operations only, no TensorFlow
        count = iter(range(1 << 30))

        def point():
            if next(count) == step:
                os.kill(os.getpid(), signal.SIGKILL)

        replace, fsync, fdopen = os.replace, os.fsync, os.fdopen

        class HalfWrite:
            def __init__(self, f):
                self.f = f

            def write(self, data):
                if next(count) == step:
                    self.f.write(data[: len(data) // 2])
                    self.f.flush()
                    os.kill(os.getpid(), signal.SIGKILL)
                return self.f.write(data)

            def __getattr__(self, name):
                return getattr(self.f, name)

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                return self.f.__exit__(*exc)

        os.replace = lambda *a: (point(), replace(*a))[1]
        os.fsync = lambda fd: (point(), fsync(fd))[1]
        os.fdopen = lambda *a, **k: HalfWrite(fdopen(*a, **k))
        try:
            deploy.save(str(path), flatbuffer, report, metadata)
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    return os.WIFSIGNALED(status)


@pytest.mark.parametrize("target", ["float", "tflm"])
def test_a_kill_at_any_point_of_a_save_leaves_the_old_set_or_the_new(tmp_path, target):
    from effkeras import deploy, models

    def converted(seed):
        keras.utils.set_random_seed(seed)
        model = models.get("mlperf_tiny_resnet8", input_shape=(8, 8, 1), num_classes=4)
        flatbuffer, report = deploy.convert(model, target)
        return flatbuffer, report, {"size_bytes": len(flatbuffer), "seed": seed}

    def files(directory):
        return {
            name: (directory / name).read_bytes()
            for name in os.listdir(directory)
            if not name.startswith(".")
        }

    sets = []
    for seed in (0, 1):
        directory, new_args = tmp_path / f"set{seed}", converted(seed)
        deploy.save(str(directory / "m.tflite"), *new_args)
        sets.append(files(directory))
    old, new = sets
    assert len(old) == (4 if target == "tflm" else 2) and old.keys() == new.keys()
    assert old["m.tflite"] != new["m.tflite"] and old["m.tflite.json"] != new["m.tflite.json"]
    work = tmp_path / "work"
    seen, step = set(), 0
    while True:
        if work.exists():
            for name in os.listdir(work):
                os.remove(work / name)
        work.mkdir(exist_ok=True)
        for name, data in old.items():
            (work / name).write_bytes(data)
        killed = save_killed_at(step, work / "m.tflite", *new_args)
        journal = (work / ".m.tflite.commit").exists()
        on_disk = files(work)
        assert on_disk in (old, new) or journal, f"a mixed set after a kill at step {step}"
        fileio.finish_file_set(str(work / "m.tflite"))  # as the next save does first
        after = files(work)
        assert after in (old, new) and sorted(os.listdir(work)) == sorted(old)
        assert json.loads(after["m.tflite.json"])["size_bytes"] == len(after["m.tflite"])
        seen.add("new" if after == new else "old")
        if not killed:
            break
        step += 1
    # Every file written (halfway, fsync), the journal, every rename: all were kill points.
    assert step >= 3 * len(old) + 1 and seen == {"old", "new"}
