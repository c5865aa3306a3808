"""apps.train against hostile input: bad flags, busy or broken output dirs, resumes that are not
the same run, runs that would not fit in memory, and runs whose loss becomes NaN. Each fails with
one `error:` line and exit code 2, leaves an existing run's files as they were, and the run still
resumes."""

import dataclasses
import hashlib
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys

import keras
import pytest
from conftest import REPO, assert_one_error_line, run_app

from effkeras import models, training
from effkeras.errors import InputError
from effkeras.training import callbacks, memory, plan, rundir

TINY = [
    "--model=resnet20",
    "--dataset=synthetic",
    "--input_shape=16,16,3",
    "--batch_size=8",
    "--steps_per_epoch=1",
    "--run_eagerly",  # a few steps: tracing would take most of the time
]
TINY_CONFIG = dict(
    model="resnet20",
    dataset="synthetic",
    input_shape=(16, 16, 3),
    batch_size=8,
    steps_per_epoch=1,
    run_eagerly=True,  # a few steps: tracing would take most of the time
    verbose=0,
)


def snapshot(folder):
    """{relative path: sha256} of every file under `folder` but the lock."""
    found = {}
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            if name != ".lock":
                with open(path, "rb") as f:
                    found[os.path.relpath(path, folder)] = hashlib.sha256(f.read()).hexdigest()
    return found


def strict_json(path):
    with open(path) as f:
        return json.load(f, parse_constant=lambda name: pytest.fail(f"{path} holds {name}"))


@pytest.fixture(scope="module")
def one_epoch_run(tmp_path_factory):
    """A finished 1-epoch run of TINY_CONFIG; tests copy it."""
    folder = tmp_path_factory.mktemp("run")
    training.train(training.TrainConfig(epochs=1, output_dir=str(folder), **TINY_CONFIG))
    return folder


@pytest.fixture
def run_dir(one_epoch_run, tmp_path):
    folder = tmp_path / "run"
    shutil.copytree(one_epoch_run, folder)
    return folder


def assert_resumes(folder, *flags):
    result = run_app("apps.train", *TINY, "--epochs=2", f"--output_dir={folder}", *flags)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Resuming resnet20 from epoch 1" in result.stdout
    assert [h["epoch"] for h in strict_json(folder / "metrics.json")["history"]] == [1, 2]


# --- 0. input shape, memory, ETA --------------------------------------------------------------


class TestDefaultInputShape:
    def test_small_datasets_train_at_their_own_size_padded_to_the_model(self):
        ern18 = models.info("ern18")
        shape, why = plan.default_input_shape(ern18, "fashion_mnist")
        assert shape == (32, 32, 1)
        assert "Fashion-MNIST's 28x28x1 padded to 32x32" in why and "multiples of 32" in why
        assert plan.default_input_shape(ern18, "cifar100")[0] == (32, 32, 3)
        # resnet20's total stride is 4: 28 is already a multiple.
        assert plan.default_input_shape(models.info("resnet20"), "fashion_mnist")[0] == (28, 28, 1)
        rgb_only = dataclasses.replace(ern18, channels=(3,))
        shape, why = plan.default_input_shape(rgb_only, "fashion_mnist")
        assert shape == (32, 32, 3) and "channels tiled to 3" in why

    def test_imagenet_and_large_enough_defaults_keep_the_model_default(self):
        assert plan.default_input_shape(models.info("ern18"), "imagenet")[0] == (256, 256, 3)
        assert plan.default_input_shape(models.info("resnet20"), "cifar10")[0] == (32, 32, 3)

    def test_app_prints_shape_memory_and_eta(self, tmp_path):
        result = run_app(
            "apps.train",
            "--model=resnet20",
            "--dataset=synthetic",
            "--batch_size=4",
            "--steps_per_epoch=3",
            "--epochs=1",
            f"--output_dir={tmp_path}",
        )
        assert result.returncode == 0, result.stderr[-2000:]
        assert "input 32x32x3: resnet20's default" in result.stdout
        assert re.search(
            r"memory: training needs ~[\d.]+ [MG]iB .*activations at batch 4", result.stdout
        )
        assert re.search(r"ETA: an epoch takes ~\d+\w.*, 1 epoch ~", result.stdout)
        assert result.stdout.count("ETA:") == 1
        assert strict_json(tmp_path / "state.json")["input_shape"] == [32, 32, 3]


class TestMemoryEstimate:
    @pytest.mark.parametrize(
        "name, input_shape, batch_size", [("resnet20", (64, 64, 3), 64), ("ern18", (64, 64, 3), 32)]
    )
    def test_estimate_is_within_half_and_twice_the_measured_peak(
        self, name, input_shape, batch_size
    ):
        # Peak RSS growth of a 3-step fit in a fresh process (memory.py's table: 0.74-1.75).
        result = memory.measure(name, input_shape, batch_size)
        ratio = result["estimate"] / result["measured"]
        assert 0.5 <= ratio <= 2.0, result

    def test_estimate_grows_with_batch_and_counts_optimizer_slots(self):
        model = models.get("resnet20", input_shape=(32, 32, 3))
        sgd = memory.estimate(model, batch_size=8, optimizer_slots=0, input_shape=(32, 32, 3))
        adam = memory.estimate(model, batch_size=8, optimizer_slots=2, input_shape=(32, 32, 3))
        params = sum(math.prod(v.shape) for v in model.trainable_variables)
        assert adam.parameters - sgd.parameters == memory.PARAMETER_STATE_COPIES * 4 * 2 * params
        assert sgd.at_batch(16) - sgd.at_batch(8) == 8 * sgd.per_example
        assert memory.largest_batch(sgd, sgd.at_batch(37) + 1) == 37

    def test_huge_batch_is_refused_naming_a_batch_that_fits(self, tmp_path, monkeypatch):
        monkeypatch.setattr(memory, "machine_memory", lambda: 4 * memory.GIB)
        monkeypatch.setattr(memory, "gpu_memory", lambda: None)
        monkeypatch.setattr(memory, "resident_bytes", lambda: 0)
        config = dict(TINY_CONFIG, input_shape=(64, 64, 3), batch_size=4096)
        with pytest.raises(InputError, match=r"--batch_size=(\d+) or less") as caught:
            training.train(
                training.TrainConfig(epochs=1, output_dir=str(tmp_path / "out"), **config)
            )
        fits = int(re.search(r"--batch_size=(\d+)", str(caught.value)).group(1))
        model = models.get("resnet20", input_shape=(64, 64, 3))
        est = memory.estimate(
            model,
            batch_size=fits,
            optimizer_slots=1,
            input_shape=(64, 64, 3),
            dataset_bytes=3 * 640 * 64 * 64 * 3,
        )
        assert 16 <= fits < 4096 and est.total < 0.8 * 4 * memory.GIB
        assert not (tmp_path / "out").exists()  # refused before anything was written

    def test_app_refuses_at_once_naming_batch_or_input_shape(self, tmp_path):
        huge_batch = run_app(
            "apps.train",
            "--model=resnet20",
            "--dataset=synthetic",
            "--input_shape=64,64,3",
            "--batch_size=10000000",
            f"--output_dir={tmp_path}/a",
        )
        assert_one_error_line(huge_batch, "needs ~", "--batch_size=", "or less")
        huge_input = run_app(
            "apps.train",
            "--model=resnet20",
            "--dataset=synthetic",
            "--input_shape=16384,16384,3",
            "--batch_size=1",
            f"--output_dir={tmp_path}/b",
        )
        assert_one_error_line(huge_input, "even at batch 1", "--input_shape=")
        assert os.listdir(tmp_path) == []


class TestEta:
    def test_durations(self):
        assert callbacks.format_duration(42.3) == "42s"
        assert callbacks.format_duration(3725) == "1h 2m"
        assert callbacks.format_duration(90061) == "1d 1h"

    def test_prints_once_after_the_first_steps(self):
        printed = []
        eta = callbacks.Eta(
            epochs=10, steps_per_epoch=100, validation_steps=30, print_fn=printed.append
        )
        eta.on_train_begin()
        for batch in range(6):
            eta.on_train_batch_end(batch)
            assert len(printed) == (1 if batch >= 3 else 0)
        assert re.match(
            r"ETA: an epoch takes ~\d+s \(100 steps of [\d.]+s\), 10 epochs ~", printed[0]
        )


# --- 1. one run per output dir ----------------------------------------------------------------


class TestOutputDirLock:
    def test_second_concurrent_run_is_refused_and_a_killed_runs_lock_is_taken_over(self, tmp_path):
        command = [
            sys.executable,
            "-m",
            "apps.train",
            "--model=resnet20",
            "--dataset=synthetic",
            "--input_shape=16,16,3",
            "--batch_size=8",
            "--steps_per_epoch=100000",
            "--epochs=1",
            f"--output_dir={tmp_path}",
        ]
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "TF_CPP_MIN_LOG_LEVEL": "3"}
        first = subprocess.Popen(
            command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
        )
        try:
            for line in first.stdout:
                if line.startswith("ETA:"):  # training: the lock is held
                    break
            else:
                pytest.fail("the first run ended early")
            second = run_app("apps.train", *TINY, "--epochs=1", f"--output_dir={tmp_path}")
            assert_one_error_line(
                second, "in use by another run", f"pid {first.pid}", "--output_dir"
            )
        finally:
            first.send_signal(signal.SIGKILL)
            first.wait()
            first.stdout.close()
        assert f"pid {first.pid}" in (tmp_path / ".lock").read_text()  # left by the killed run
        third = run_app("apps.train", *TINY, "--epochs=1", f"--output_dir={tmp_path}")
        assert third.returncode == 0, third.stderr[-2000:]
        assert f"taking over the lock of pid {first.pid}" in third.stdout
        assert not (tmp_path / ".lock").exists()

    def test_stale_lock_file_is_taken_over_with_a_message(self, tmp_path, capsys):
        (tmp_path / ".lock").write_text("pid 999999999 on elsewhere\n")
        training.train(training.TrainConfig(epochs=1, output_dir=str(tmp_path), **TINY_CONFIG))
        assert "taking over the lock of pid 999999999 on elsewhere" in capsys.readouterr().out
        assert not (tmp_path / ".lock").exists()

    def test_held_lock_refuses_in_process_too(self, tmp_path):
        with rundir.OutputDirLock(str(tmp_path)):
            with pytest.raises(InputError, match="in use by another run"):
                training.train(
                    training.TrainConfig(epochs=1, output_dir=str(tmp_path), **TINY_CONFIG)
                )
        assert os.listdir(tmp_path) == []


# --- 2. a resume must be the same run, from whole files ------------------------------------------


class TestResumeIsTheSameRun:
    @pytest.mark.parametrize(
        "flag, fragments",
        [
            ("--dataset=cifar10", ("holds a run on synthetic, not cifar10", "--dataset=synthetic")),
            (
                "--input_shape=32,32,3",
                ("holds a run at input 16x16x3, not 32x32x3", "--input_shape=16,16,3"),
            ),
            ("--model=recu_resnet20", ("holds a run of resnet20, not recu_resnet20",)),
        ],
    )
    def test_another_dataset_shape_or_model_is_refused(self, run_dir, flag, fragments):
        before = snapshot(run_dir)
        flags = [f for f in TINY if f.split("=")[0] != flag.split("=")[0]] + [flag]
        result = run_app("apps.train", *flags, "--epochs=2", f"--output_dir={run_dir}")
        assert_one_error_line(result, *fragments, "--output_dir")
        assert snapshot(run_dir) == before

    def test_another_class_count_is_refused_and_the_run_still_resumes(self, run_dir):
        state = strict_json(run_dir / "state.json")
        (run_dir / "state.json").write_text(json.dumps({**state, "num_classes": 5}))
        before = snapshot(run_dir)
        result = run_app("apps.train", *TINY, "--epochs=2", f"--output_dir={run_dir}")
        assert_one_error_line(result, "holds a run with 5 classes, but the data now has 10")
        assert snapshot(run_dir) == before
        (run_dir / "state.json").write_text(json.dumps(state))
        assert_resumes(run_dir)

    def test_resume_without_input_shape_takes_the_runs_own(self, run_dir):
        flags = [f for f in TINY if not f.startswith("--input_shape")]
        result = run_app("apps.train", *flags, "--epochs=2", f"--output_dir={run_dir}")
        assert result.returncode == 0, result.stderr[-2000:]
        assert "input 16x16x3: the run's own" in result.stdout


class TestBrokenRunFiles:
    @pytest.mark.parametrize(
        "damage, fragments",
        [
            (
                lambda d: (d / "state.json").write_text((d / "state.json").read_text()[:40]),
                ("state.json cannot be read as JSON", "nothing was deleted"),
            ),
            (
                lambda d: (d / "state.json").write_text("[1, 2]"),
                ("state.json is not a JSON object",),
            ),
            (
                lambda d: (d / "state.json").write_text(
                    json.dumps({**json.loads((d / "state.json").read_text()), "checkpoint": None})
                ),
                ("names no checkpoint",),
            ),
            (
                lambda d: (d / "checkpoint-1.keras").unlink(),
                ("checkpoint-1.keras, which is missing",),
            ),
            (
                lambda d: (d / "checkpoint-1.keras").write_bytes(
                    (d / "checkpoint-1.keras").read_bytes()[:500]
                ),
                ("cannot load", "checkpoint-1.keras", "truncated", "nothing was deleted"),
            ),
        ],
        ids=[
            "truncated_state",
            "state_not_object",
            "no_checkpoint_named",
            "missing_checkpoint",
            "truncated_checkpoint",
        ],
    )
    def test_broken_file_is_a_clear_error_and_nothing_is_deleted(self, run_dir, damage, fragments):
        damage(run_dir)
        before = snapshot(run_dir)
        result = run_app("apps.train", *TINY, "--epochs=2", f"--output_dir={run_dir}")
        assert_one_error_line(result, *fragments)
        assert snapshot(run_dir) == before

    def test_restored_files_resume(self, run_dir, tmp_path):
        good = (run_dir / "checkpoint-1.keras").read_bytes()
        (run_dir / "checkpoint-1.keras").write_bytes(good[:100])
        assert run_app("apps.train", *TINY, "--epochs=2", f"--output_dir={run_dir}").returncode == 2
        (run_dir / "checkpoint-1.keras").write_bytes(good)
        assert_resumes(run_dir)


# --- 3. numeric flags, and runs whose loss becomes NaN ------------------------------------------


class TestNumericFlags:
    @pytest.mark.parametrize(
        "flag, fragment",
        [
            ("--learning_rate=0", "--learning_rate must be a finite number > 0"),
            ("--learning_rate=-0.1", "--learning_rate must be a finite number > 0"),
            ("--learning_rate=nan", "--learning_rate must be a finite number > 0"),
            ("--learning_rate=inf", "--learning_rate must be a finite number > 0"),
            ("--epochs=-1", "--epochs must be a positive integer"),
            ("--batch_size=0", "--batch_size must be a positive integer"),
            ("--steps_per_epoch=-3", "--steps_per_epoch must be a positive integer"),
            ("--seed=-1", "--seed must be an integer in"),
            ("--epochs=1.5", "epochs"),
            ("--input_shape=0,16,3", "positive ints"),
            ("--dataset=mnist", "unknown dataset 'mnist'"),
            ("--teacher=resnet20", "--teacher is only for recipes that distil"),
            ("--jit_compile=true", "--run_eagerly runs op by op"),  # TINY runs eagerly
        ],
    )
    def test_bad_flag_is_one_error_line(self, tmp_path, flag, fragment):
        flags = [f for f in [*TINY, "--epochs=1"] if f.split("=")[0] != flag.split("=")[0]]
        result = run_app("apps.train", *flags, flag, f"--output_dir={tmp_path}/out")
        assert_one_error_line(result, fragment)
        assert not (tmp_path / "out").exists()

    def test_library_checks_types_too(self, tmp_path):
        for field, value in (
            ("learning_rate", True),
            ("epochs", True),
            ("seed", 2**40),
            ("learning_rate", float("nan")),
            ("verbose", 7),
        ):
            with pytest.raises(InputError):
                training.train(
                    training.TrainConfig(
                        output_dir=str(tmp_path), **{**TINY_CONFIG, "epochs": 1, field: value}
                    )
                )


class TestNaNLoss:
    def test_nan_stops_with_an_error_and_keeps_the_last_good_checkpoint(self, run_dir):
        result = run_app(
            "apps.train", *TINY, "--epochs=3", "--learning_rate=1e30", f"--output_dir={run_dir}"
        )
        assert_one_error_line(
            result, "training diverged", "loss=nan", "checkpoint-1.keras", "--learning_rate"
        )
        state = strict_json(run_dir / "state.json")
        assert state["epoch"] == 1 and state["checkpoint"] == "checkpoint-1.keras"
        assert sorted(f for f in os.listdir(run_dir) if f.startswith("checkpoint")) == [
            "checkpoint-1.keras"
        ]
        strict_json(run_dir / "metrics.json")  # the earlier run's, still valid JSON
        saved = keras.models.load_model(run_dir / "checkpoint-1.keras")
        assert all(math.isfinite(float(abs(w).max())) for w in saved.get_weights())
        assert_resumes(run_dir)

    def test_nan_in_the_first_epoch_saves_nothing(self, tmp_path):
        flags = [f for f in TINY if not f.startswith("--steps_per_epoch")]
        result = run_app(
            "apps.train",
            *flags,
            "--epochs=2",
            "--steps_per_epoch=3",
            "--learning_rate=1e30",
            f"--output_dir={tmp_path}",
        )
        assert_one_error_line(result, "training diverged", "no epoch was saved")
        assert not [f for f in os.listdir(tmp_path) if f.endswith((".keras", ".json"))]


# --- 4. the teacher goes through the checked loader ----------------------------------------------


class TestTeacher:
    CONFIG = dict(
        model="recu_reactnet18",
        dataset="synthetic",
        input_shape=(32, 32, 3),
        batch_size=4,
        steps_per_epoch=1,
        run_eagerly=True,  # a few steps: tracing would take most of the time
        epochs=1,
        verbose=0,
    )

    def test_corrupt_or_missing_teacher_file(self, tmp_path):
        (tmp_path / "teacher.keras").write_bytes(b"not a zip")
        with pytest.raises(InputError, match="--teacher: cannot load .*teacher.keras"):
            training.train(
                training.TrainConfig(
                    teacher=str(tmp_path / "teacher.keras"),
                    output_dir=str(tmp_path / "a"),
                    **self.CONFIG,
                )
            )
        with pytest.raises(InputError, match="--teacher: .*nowhere.keras"):
            training.train(
                training.TrainConfig(
                    teacher=str(tmp_path / "nowhere.keras"),
                    output_dir=str(tmp_path / "b"),
                    **self.CONFIG,
                )
            )

    def test_app_with_a_teacher_of_another_shape(self, tmp_path):
        teacher = models.get("resnet20", input_shape=(16, 16, 3), num_classes=10)
        teacher.save(tmp_path / "teacher.keras")
        result = run_app(
            "apps.train",
            "--model=recu_reactnet18",
            "--dataset=synthetic",
            "--input_shape=32,32,3",
            "--batch_size=4",
            "--steps_per_epoch=1",
            "--run_eagerly",
            "--epochs=1",
            f"--teacher={tmp_path}/teacher.keras",
            f"--output_dir={tmp_path}/out",
        )
        assert_one_error_line(result, "teacher takes (16, 16, 3)")
