"""Resumable training: a checkpoint and a state file per epoch, both written atomically.

<output_dir>/checkpoint-<epoch>.keras   model + optimizer after that epoch
<output_dir>/state.json                 the commit point: last complete epoch, history, time
<output_dir>/logs/                      TensorBoard
<output_dir>/model.keras, metrics.json  the final results
Re-running with the same output_dir continues after the last complete epoch, with the learning
rate schedule stretched over the epochs now asked for.

A model whose output is a list of K logits tensors (early exits) trains on the recipe's weighted
sum of per-output cross-entropies; its metrics are logged per output as <output name>_top1,
<output name>_top5 and <output name>_loss (Keras' names), next to the total `loss`.
"""

import dataclasses
import json
import os
import sys
import time

import keras

from effkeras import data, models, saving
from effkeras.errors import InputError
from effkeras.fileio import atomic_path, write_json
from effkeras.training import callbacks as recipe_callbacks
from effkeras.training import recipes
from effkeras.training.distillation import Distiller, load_teacher


@dataclasses.dataclass
class TrainConfig:
    model: str
    output_dir: str
    dataset: str = "fashion_mnist"
    data_dir: str = None
    epochs: int = None  # None: the recipe's
    batch_size: int = None  # None: the recipe's
    learning_rate: float = None  # None: the recipe's, scaled with batch size
    steps_per_epoch: int = None  # None: one pass over the train split
    input_shape: tuple = None  # None: the model's default
    seed: int = 0
    teacher: str = None  # .keras file or registry name, for recipes that distil
    verbose: int = None  # None: progress bars on a terminal, one line per epoch otherwise


def _read_state(output_dir):
    path = os.path.join(output_dir, "state.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def _check_positive(name, value):
    if value is not None and (not isinstance(value, int) or value < 1):
        raise InputError(f"{name} must be a positive integer, got {value!r}")


class EpochCheckpoint(keras.callbacks.Callback):
    """Saves checkpoint-<n>.keras, then commits it in state.json, then drops the older one."""

    def __init__(self, output_dir, state):
        super().__init__()
        self.output_dir = output_dir
        self.state = state
        self.epoch_started = None

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch_started = time.time()

    def on_epoch_end(self, epoch, logs=None):
        previous = self.state.get("checkpoint")
        checkpoint = f"checkpoint-{epoch + 1}.keras"
        with atomic_path(os.path.join(self.output_dir, checkpoint)) as tmp:
            self.model.save(tmp)
        self.state["history"].append({"epoch": epoch + 1, **{k: float(v) for k, v in logs.items()}})
        self.state.update(epoch=epoch + 1, checkpoint=checkpoint,
                          train_seconds=self.state["train_seconds"] + time.time() - self.epoch_started)
        write_json(os.path.join(self.output_dir, "state.json"), self.state)
        if previous and previous != checkpoint:
            os.remove(os.path.join(self.output_dir, previous))


def _restore(model, checkpoint_path):
    """Copies weights and optimizer slots from a checkpoint into a freshly compiled `model`."""
    saved = saving.load_model(checkpoint_path)
    model.set_weights(saved.get_weights())
    model.optimizer.build(model.trainable_variables)
    for variable, value in zip(model.optimizer.variables, saved.optimizer.variables):
        variable.assign(value)


def _test_metrics(logs, num_outputs):
    """Today's {top1, top5, loss} for one output; every logged metric for several."""
    if num_outputs == 1:
        return {"top1": logs["top1"], "top5": logs["top5"], "loss": logs["loss"]}
    return {name: float(value) for name, value in logs.items()}


def train(config):
    """Trains (or resumes) `config.model`; returns the metrics dict also written to metrics.json."""
    info = models.info(config.model)
    recipe = recipes.get(info.recipe)
    for name in ("epochs", "batch_size", "steps_per_epoch"):
        _check_positive(name, getattr(config, name))
    epochs = config.epochs or recipe.epochs
    batch_size = config.batch_size or recipe.batch_size
    input_shape = models.check_input_shape(info, config.input_shape or info.input_shape)
    keras.utils.set_random_seed(config.seed)

    state = _read_state(config.output_dir)
    if state and state["model"] != info.name:
        raise InputError(f"{config.output_dir} holds a run of {state['model']}, not {info.name}; "
                         f"use another --output_dir")
    state = state or {"model": info.name, "dataset": config.dataset, "epoch": 0, "history": [],
                      "train_seconds": 0.0}
    initial_epoch = state["epoch"]

    # Shuffle differently after a resume, as an uninterrupted run would.
    train_augment = dict(recipe.augment).get(config.dataset)
    train_split = data.load(config.dataset, "train", input_shape=input_shape, batch_size=batch_size,
                            data_dir=config.data_dir, seed=config.seed + initial_epoch,
                            augment_with=train_augment)
    # A recipe that trains on squashed images validates on them too (ERN's official code).
    test_split = data.load(config.dataset, "test", input_shape=input_shape, batch_size=batch_size,
                           data_dir=config.data_dir,
                           augment_with=("squash",) if "squash" in (train_augment or ()) else None)
    steps = config.steps_per_epoch or max(1, train_split.num_examples // batch_size)
    train_data = train_split.dataset.repeat() if config.steps_per_epoch else train_split.dataset

    keras.config.set_dtype_policy(recipes.dtype_policy(recipe))  # mixed precision on a GPU only
    try:
        model = models.get(info.name, input_shape=input_shape, num_classes=train_split.num_classes)
    finally:
        keras.config.set_dtype_policy("float32")
    student = model
    if recipe.loss.needs_teacher:
        model = Distiller(student, load_teacher(config.teacher, input_shape, train_split.num_classes),
                          alpha=recipe.loss.alpha, temperature=recipe.loss.temperature,
                          label_smoothing=recipe.loss.label_smoothing)
    num_outputs = len(student.outputs)
    train_data = recipes.repeat_labels(train_data, num_outputs)
    test_data = recipes.repeat_labels(test_split.dataset, num_outputs)
    recipes.compile_model(model, recipe, epochs=epochs, steps_per_epoch=steps,
                          batch_size=batch_size, learning_rate=config.learning_rate)
    if state.get("checkpoint"):
        _restore(model, os.path.join(config.output_dir, state["checkpoint"]))
        print(f"Resuming {info.name} from epoch {initial_epoch} in {config.output_dir}")

    callbacks = [*recipe_callbacks.make(recipe.callbacks, epochs),
                 EpochCheckpoint(config.output_dir, state),
                 keras.callbacks.TensorBoard(os.path.join(config.output_dir, "logs"))]
    verbose = config.verbose if config.verbose is not None else 1 if sys.stdout.isatty() else 2
    started = time.time()
    with train_split.errors_as_input_errors(), test_split.errors_as_input_errors():
        if initial_epoch < epochs:
            model.fit(train_data, epochs=epochs, initial_epoch=initial_epoch, steps_per_epoch=steps,
                      validation_data=test_data, callbacks=callbacks, shuffle=False, verbose=verbose)
        test = model.evaluate(test_data, return_dict=True, verbose=0)

    with atomic_path(os.path.join(config.output_dir, "model.keras")) as tmp:
        student.save(tmp)
    metrics = {
        "model": info.name, "dataset": config.dataset, "input_shape": list(input_shape),
        "epochs": state["epoch"], "batch_size": batch_size, "steps_per_epoch": steps,
        "params": student.count_params(), "history": state["history"],
        "test": _test_metrics(test, num_outputs),
        "train_seconds": state["train_seconds"], "wall_seconds_this_run": time.time() - started,
    }
    write_json(os.path.join(config.output_dir, "metrics.json"), metrics)
    return metrics
