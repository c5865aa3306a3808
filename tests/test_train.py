"""Training writes checkpoints atomically and resumes after the last complete epoch."""

import json
import os
import signal
import subprocess
import sys

import keras
import pytest
from conftest import REPO, run_app

from effkeras import training
from effkeras.errors import InputError


def read_json(path):
    with open(path) as f:
        return json.load(f)


def test_one_epoch_then_two_continues_at_epoch_two(tmp_path, capsys):
    config = dict(
        model="resnet20",
        dataset="synthetic",
        input_shape=(16, 16, 3),
        batch_size=16,
        steps_per_epoch=3,
        run_eagerly=True,  # a few steps: tracing would take most of the time
        output_dir=str(tmp_path),
        verbose=0,
    )
    first = training.train(training.TrainConfig(epochs=1, **config))
    assert [h["epoch"] for h in first["history"]] == [1]
    second = training.train(training.TrainConfig(epochs=2, **config))
    assert "Resuming resnet20 from epoch 1" in capsys.readouterr().out
    assert [h["epoch"] for h in second["history"]] == [1, 2]
    assert second["history"][0] == first["history"][0]
    metrics = read_json(tmp_path / "metrics.json")
    assert metrics["epochs"] == 2 and 0 <= metrics["test"]["top1"] <= 1
    assert sorted(os.listdir(tmp_path)) == [
        "checkpoint-2.keras",
        "logs",
        "metrics.json",
        "model.keras",
        "state.json",
    ]
    saved = keras.models.load_model(tmp_path / "checkpoint-2.keras")
    assert int(saved.optimizer.iterations) == 6  # 2 epochs x 3 steps: optimizer state carried over
    state = read_json(tmp_path / "state.json")  # what the run is: a resume must match it
    assert {k: state[k] for k in ("model", "dataset", "input_shape", "num_classes")} == {
        "model": "resnet20",
        "dataset": "synthetic",
        "input_shape": [16, 16, 3],
        "num_classes": 10,
    }


def test_validation_split_is_held_out_of_training_and_fixed_for_the_run(
    tmp_path, fashion_mnist_dir
):
    config = dict(
        model="resnet20",
        dataset="fashion_mnist",
        data_dir=str(fashion_mnist_dir),
        input_shape=(16, 16, 1),
        batch_size=10,
        output_dir=str(tmp_path),
        verbose=0,
    )
    first = training.train(training.TrainConfig(epochs=1, validation_size=10, **config))
    # 40 training images, 10 held out: 3 steps of 10 per epoch.
    saved = keras.models.load_model(tmp_path / "checkpoint-1.keras")
    assert int(saved.optimizer.iterations) == 3 and first["epochs"] == 1
    assert read_json(tmp_path / "state.json")["validation_size"] == 10
    with pytest.raises(InputError, match="held out 10 training examples, not 20"):
        training.train(training.TrainConfig(epochs=2, validation_size=20, **config))
    with pytest.raises(InputError, match="--validation_size must be a positive integer"):
        training.train(training.TrainConfig(epochs=2, validation_size=0, **config))


def test_output_dir_of_another_model_is_refused(tmp_path):
    (tmp_path / "state.json").write_text(json.dumps({"model": "other", "epoch": 1, "history": []}))
    with pytest.raises(InputError, match="holds a run of other"):
        training.train(
            training.TrainConfig(
                model="resnet20", dataset="synthetic", epochs=1, output_dir=str(tmp_path)
            )
        )


def test_killed_mid_epoch_resumes_from_last_complete_epoch(tmp_path):
    command = [
        sys.executable,
        "-m",
        "apps.train",
        "--model=resnet20",
        "--dataset=synthetic",
        "--input_shape=16,16,3",
        "--batch_size=8",
        "--steps_per_epoch=100",
        "--epochs=3",
        f"--output_dir={tmp_path}",
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    state_path = tmp_path / "state.json"
    # Keras prints "Epoch 2/3" when epoch 2 begins, after every epoch-end callback of epoch 1
    # (the checkpoint commit among them) has run, and 100 steps before epoch 2 can end.
    try:
        for line in process.stdout:
            if line.startswith("Epoch 2/"):
                break
        else:
            pytest.fail("the run ended before epoch 2 began")
        assert read_json(state_path)["epoch"] == 1  # committed before epoch 2 began
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
        process.stdout.close()
    state = read_json(state_path)
    assert state["epoch"] == 1, "the kill should land in epoch 2"
    assert not (tmp_path / "metrics.json").exists()
    keras.models.load_model(tmp_path / state["checkpoint"])  # the committed checkpoint is whole
    (tmp_path / ".tmp-x1y2.keras").write_bytes(b"PK")  # as a kill during a checkpoint write

    resumed = run_app(*command[2:])  # the same command (in a fork of a warm interpreter)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "Resuming resnet20 from epoch 1" in resumed.stdout
    metrics = read_json(tmp_path / "metrics.json")
    assert [h["epoch"] for h in metrics["history"]] == [1, 2, 3]
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".tmp-")]


@pytest.fixture
def two_exit_model():
    """A registered test model whose output is two logits tensors (exit1, exit2), removed after."""
    from effkeras.models import registry

    def build(input_shape, num_classes):
        inputs = keras.Input(input_shape)
        x = keras.layers.Rescaling(1 / 255)(inputs)
        x = keras.layers.Conv2D(4, 3, strides=2, padding="same", activation="relu")(x)
        early = keras.layers.Dense(num_classes, name="exit1")(
            keras.layers.GlobalAveragePooling2D()(x)
        )
        x = keras.layers.Conv2D(8, 3, strides=2, padding="same", activation="relu")(x)
        late = keras.layers.Dense(num_classes, name="exit2")(
            keras.layers.GlobalAveragePooling2D()(x)
        )
        return keras.Model(inputs, [early, late], name="test_two_exit")

    registry.register(
        "test_two_exit",
        family="test",
        paper="-",
        input_shape=(16, 16, 3),
        num_classes=10,
        recipe="sgd_cosine",
        deploy="float",
        min_input_size=4,
    )(build)
    yield "test_two_exit"
    del registry._MODELS["test_two_exit"]


def test_model_with_two_outputs_trains_resumes_and_logs_each_output(tmp_path, two_exit_model):
    config = dict(
        model=two_exit_model,
        dataset="synthetic",
        input_shape=(16, 16, 3),
        batch_size=16,
        steps_per_epoch=2,
        run_eagerly=True,  # a few steps: tracing would take most of the time
        output_dir=str(tmp_path),
        verbose=0,
    )
    first = training.train(training.TrainConfig(epochs=1, **config))
    second = training.train(training.TrainConfig(epochs=2, **config))
    assert [h["epoch"] for h in second["history"]] == [1, 2]
    assert second["history"][0] == first["history"][0]
    per_output = {
        f"{prefix}exit{k}_{metric}"
        for prefix in ("", "val_")
        for k in (1, 2)
        for metric in ("top1", "top5", "loss")
    }
    assert per_output <= set(second["history"][1])
    test = read_json(tmp_path / "metrics.json")["test"]
    assert set(test) == {"loss"} | {
        f"exit{k}_{m}" for k in (1, 2) for m in ("top1", "top5", "loss")
    }
    assert test["loss"] == pytest.approx(test["exit1_loss"] + test["exit2_loss"], rel=1e-4)
    saved = keras.models.load_model(tmp_path / "checkpoint-2.keras")
    assert int(saved.optimizer.iterations) == 4
    assert len(keras.models.load_model(tmp_path / "model.keras").outputs) == 2
    events = os.listdir(tmp_path / "logs" / "train")
    assert events  # TensorBoard got the per-output logs too


# --- the weights' EMA (recipes with `ema`, e.g. ran_i) --------------------------------------------


def _ema_model():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    model.compile(
        keras.optimizers.SGD(0.5, use_ema=True, ema_momentum=0.5),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model


def test_ema_callback_validates_and_checkpoints_the_ema_and_resumes_from_the_raw_weights(tmp_path):
    import numpy as np

    from effkeras.training.callbacks import EmaWeights
    from effkeras.training.rundir import restore

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(16, 4)).astype(np.float32), np.arange(16) % 3
    raw = []  # the model's weights after each step: what training sees

    class Steps(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            raw.append(self.model.get_weights())

    saved = {}

    class Checkpoint(keras.callbacks.Callback):  # sees the epoch's end as EpochCheckpoint does
        def on_epoch_end(self, epoch, logs=None):
            self.model.save(tmp_path / f"checkpoint-{epoch + 1}.keras")
            saved[epoch + 1] = (self.model.get_weights(), dict(logs))

    model = _ema_model()
    fit = dict(x=x, y=y, batch_size=4, validation_data=(x, y), shuffle=False, verbose=0)
    model.fit(epochs=2, callbacks=[Steps(), EmaWeights(Checkpoint())], **fit)
    ema = [raw[0]]  # Keras' EMA: the weights after the first step, then 0.5·ema + 0.5·weights
    for weights in raw[1:]:
        ema.append([0.5 * e + 0.5 * w for e, w in zip(ema[-1], weights)])

    def close(a, b):
        return all(np.allclose(u, v, rtol=1e-5, atol=1e-6) for u, v in zip(a, b))

    twin = _ema_model()
    for epoch, steps in ((1, 4), (2, 8)):
        weights, logs = saved[epoch]
        assert close(weights, ema[steps - 1]) and not close(weights, raw[steps - 1])
        twin.set_weights(ema[steps - 1])
        assert logs["val_loss"] == pytest.approx(twin.evaluate(x, y, verbose=0), rel=1e-5)
    assert close(model.get_weights(), ema[7])  # after fit, the model is the EMA
    checkpoint = keras.models.load_model(tmp_path / "checkpoint-1.keras")
    averages = checkpoint.optimizer._model_variables_moving_average
    assert close([v.numpy() for v in averages], raw[3])  # the raw weights ride in the EMA slots

    # A resume from checkpoint-1 trains on from the raw weights with the EMA's state: it ends
    # exactly where the uninterrupted run did (same data order, plain SGD).
    resumed, first = _ema_model(), []

    class First(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            if not first:
                first.append(self.model.get_weights())

    restore(
        resumed,
        str(tmp_path),
        "checkpoint-1.keras",
        {"model": "test", "input_shape": [4], "num_classes": 3},
    )
    resumed.fit(epochs=2, initial_epoch=1, callbacks=[First(), EmaWeights(restored=True)], **fit)
    assert close(first[0], raw[3])
    assert close(resumed.get_weights(), model.get_weights())


@pytest.fixture
def tiny_ran_i_model():
    """A registered ConvNeXt-like test model (patchify conv, LayerNorm, head), ran_i recipe."""
    from effkeras.models import registry

    def build(input_shape, num_classes):
        inputs = keras.Input(input_shape)
        x = keras.layers.Rescaling(1 / 255)(inputs)
        x = keras.layers.Conv2D(8, 4, strides=4)(x)
        x = keras.layers.LayerNormalization(epsilon=1e-6)(x)
        x = keras.layers.Conv2D(8, 1, activation="gelu")(x)
        x = keras.layers.GlobalAveragePooling2D()(x)
        return keras.Model(inputs, keras.layers.Dense(num_classes)(x), name="test_ran_i")

    registry.register(
        "test_ran_i",
        family="test",
        paper="-",
        input_shape=(32, 32, 3),
        num_classes=10,
        recipe="ran_i",
        deploy="float",
        min_input_size=4,
    )(build)
    yield "test_ran_i"
    del registry._MODELS["test_ran_i"]


def test_ran_i_recipe_trains_with_mixing_and_saves_the_ema(tmp_path, cifar10_dir, tiny_ran_i_model):
    import numpy as np

    config = dict(
        model=tiny_ran_i_model,
        dataset="cifar10",
        data_dir=str(cifar10_dir),
        input_shape=(32, 32, 3),
        batch_size=8,
        steps_per_epoch=2,
        run_eagerly=True,  # a few steps: tracing would take most of the time
        learning_rate=0.01,
        output_dir=str(tmp_path / "run"),
        verbose=0,
    )
    first = training.train(training.TrainConfig(epochs=1, **config))
    assert 0 <= first["test"]["top1"] <= 1 and np.isfinite(first["test"]["loss"])
    checkpoint = keras.models.load_model(tmp_path / "run" / "checkpoint-1.keras")
    final = keras.models.load_model(tmp_path / "run" / "model.keras")
    ema = [v.numpy() for v in final.trainable_variables]
    assert all(np.array_equal(a, v.numpy()) for a, v in zip(ema, checkpoint.trainable_variables))
    assert all(
        np.array_equal(a, v.numpy())
        for a, v in zip(ema, final.optimizer._model_variables_moving_average)
    )
    raw = [v.numpy() for v in checkpoint.optimizer._model_variables_moving_average]
    assert not any(np.allclose(a, r) for a, r in zip(ema, raw) if a.ndim > 1)  # 2 steps at 0.01
    assert isinstance(final.loss, keras.losses.CategoricalCrossentropy)  # soft labels

    second = training.train(training.TrainConfig(epochs=2, **config))
    assert [h["epoch"] for h in second["history"]] == [1, 2]
    resumed = keras.models.load_model(tmp_path / "run" / "checkpoint-2.keras")
    assert int(resumed.optimizer.iterations) == 4
