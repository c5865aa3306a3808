"""Training writes checkpoints atomically and resumes after the last complete epoch."""

import json
import os
import signal
import subprocess
import sys
import time

import keras
import pytest

from effkeras import training
from effkeras.errors import InputError
from conftest import REPO


def read_json(path):
    with open(path) as f:
        return json.load(f)


def test_one_epoch_then_two_continues_at_epoch_two(tmp_path, capsys):
    config = dict(model="resnet20", dataset="synthetic", input_shape=(16, 16, 3), batch_size=16,
                  steps_per_epoch=3, output_dir=str(tmp_path), verbose=0)
    first = training.train(training.TrainConfig(epochs=1, **config))
    assert [h["epoch"] for h in first["history"]] == [1]
    second = training.train(training.TrainConfig(epochs=2, **config))
    assert "Resuming resnet20 from epoch 1" in capsys.readouterr().out
    assert [h["epoch"] for h in second["history"]] == [1, 2]
    assert second["history"][0] == first["history"][0]
    metrics = read_json(tmp_path / "metrics.json")
    assert metrics["epochs"] == 2 and 0 <= metrics["test"]["top1"] <= 1
    assert sorted(os.listdir(tmp_path)) == ["checkpoint-2.keras", "logs", "metrics.json",
                                            "model.keras", "state.json"]
    saved = keras.models.load_model(tmp_path / "checkpoint-2.keras")
    assert int(saved.optimizer.iterations) == 6  # 2 epochs x 3 steps: optimizer state carried over


def test_output_dir_of_another_model_is_refused(tmp_path):
    (tmp_path / "state.json").write_text(json.dumps({"model": "other", "epoch": 1, "history": []}))
    with pytest.raises(InputError, match="holds a run of other"):
        training.train(training.TrainConfig(model="resnet20", dataset="synthetic", epochs=1,
                                            output_dir=str(tmp_path)))


def test_killed_mid_epoch_resumes_from_last_complete_epoch(tmp_path):
    command = [sys.executable, "-m", "apps.train", "--model=resnet20", "--dataset=synthetic",
               "--input_shape=32,32,3", "--batch_size=32", "--steps_per_epoch=40", "--epochs=3",
               f"--output_dir={tmp_path}"]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state_path = tmp_path / "state.json"
    deadline = time.time() + 240
    while not state_path.exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.05)
    time.sleep(1.0)  # well inside epoch 2
    process.send_signal(signal.SIGKILL)
    process.wait()
    state = read_json(state_path)
    assert state["epoch"] == 1, "the kill should land in epoch 2"
    assert not (tmp_path / "metrics.json").exists()
    keras.models.load_model(tmp_path / state["checkpoint"])  # the committed checkpoint is whole

    resumed = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "Resuming resnet20 from epoch 1" in resumed.stdout
    metrics = read_json(tmp_path / "metrics.json")
    assert [h["epoch"] for h in metrics["history"]] == [1, 2, 3]
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".tmp-")]
