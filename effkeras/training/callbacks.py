"""Callbacks: the ones recipes ask for by name, and the ones every run gets (NaN stop, ETA)."""

import math
import time

import keras

from effkeras.graph import leaf_layers


def recu_tau(epoch, epochs, tau_min=0.85, tau_max=0.99):
    """ReCU's exponential τ schedule, Eq. (24): τ_i = τ_s + (τ_e - τ_s)(e^{i/I} - 1)/(e - 1)."""
    return tau_min + (tau_max - tau_min) * (math.exp(epoch / epochs) - 1) / (math.e - 1)


class TauSchedule(keras.callbacks.Callback):
    """Sets τ of every ReCU layer at the start of each epoch (ReCU, arXiv 2103.12369, Eq. (24)).

    τ is a model weight, so it is saved in checkpoints and restored on resume; setting it at
    each epoch start keeps it exact whatever the resume point.
    """

    def __init__(self, epochs, tau_min=0.85, tau_max=0.99):
        super().__init__()
        self.epochs, self.tau_min, self.tau_max = epochs, tau_min, tau_max

    def on_epoch_begin(self, epoch, logs=None):
        tau = recu_tau(epoch, self.epochs, self.tau_min, self.tau_max)
        for layer in leaf_layers(self.model):
            if hasattr(layer, "tau"):
                layer.tau.assign(tau)


CALLBACKS = {"recu_tau": TauSchedule}


def make(names, epochs):
    return [CALLBACKS[name](epochs) for name in names]


# --- the weights' EMA as the model (recipes with `ema`) ------------------------------------------


def _ema_optimizer(model):
    optimizer = getattr(model, "optimizer", None)
    optimizer = getattr(optimizer, "inner_optimizer", optimizer)  # under a LossScaleOptimizer
    if optimizer is None or not getattr(optimizer, "use_ema", False):
        raise ValueError(
            "EmaWeights needs a model compiled with an optimizer with use_ema=True "
            "(a recipe with ema > 0)"
        )
    return optimizer


def swap_ema(model):
    """Swaps the model's trainable weights with the optimizer's EMA of them (use_ema=True).

    The copy goes through host memory, so no variable is created. Does nothing when the
    optimizer is not built yet (no step taken, no EMA).
    """
    optimizer = _ema_optimizer(model)
    averages = getattr(optimizer, "_model_variables_moving_average", None)
    if not averages:
        return False
    for variable, average in zip(optimizer._trainable_variables, averages):
        raw = keras.ops.convert_to_numpy(variable)
        variable.assign(average)
        average.assign(raw)
    return True


class EmaWeights(keras.callbacks.Callback):
    """Puts the optimizer's EMA of the weights into the model while validation runs and while
    the callbacks it wraps handle an epoch's end (the checkpoint), and the raw weights back for
    training. As the model EMA of ConvNeXt's recipe (arXiv 2201.03545), whose EMA weights are the
    ones evaluated, saved and released.

    Keras' SwapEMAWeights(swap_on_epoch=True) also shows the EMA to the callbacks after it, but
    at the last epoch it copies the EMA over the raw weights kept in the optimizer, so the last
    checkpoint could not resume training. Here a checkpoint written by a wrapped callback holds
    the EMA as the model's weights and the raw weights in the optimizer's EMA slots ("average");
    `restored=True` says that the model was just loaded from such a checkpoint, and the raw
    weights go back into the model before training resumes (the EMA keeps its state). When fit
    ends, Keras copies the EMA into the model (optimizer.finalize_variable_values): after fit
    the model holds the EMA, for the final evaluation and model.keras.

    Only trainable weights have an EMA: BatchNormalization's moving statistics stay those of
    the raw weights (timm's ModelEma also averages them; ConvNeXt has no BatchNorm).
    The wrapped callbacks get every train- and epoch-level hook, not the batch ones.
    """

    def __init__(self, *wrapped, restored=False):
        super().__init__()
        self.wrapped = wrapped
        self.restored = restored
        self.ema_in_model = False

    def set_model(self, model):
        super().set_model(model)
        for callback in self.wrapped:
            callback.set_model(model)

    def set_params(self, params):
        super().set_params(params)
        for callback in self.wrapped:
            callback.set_params(params)

    def _swap(self):
        if swap_ema(self.model):
            self.ema_in_model = not self.ema_in_model

    def on_train_begin(self, logs=None):
        _ema_optimizer(self.model)  # fail early when there is no EMA
        if self.restored:  # the checkpoint's model weights are the EMA, its "average" the raw
            self.ema_in_model = True
            self._swap()
            self.restored = False
        for callback in self.wrapped:
            callback.on_train_begin(logs)

    def on_train_end(self, logs=None):
        for callback in self.wrapped:
            callback.on_train_end(logs)

    def on_epoch_begin(self, epoch, logs=None):
        for callback in self.wrapped:
            callback.on_epoch_begin(epoch, logs)

    def on_epoch_end(self, epoch, logs=None):
        self._swap()
        try:
            for callback in self.wrapped:
                callback.on_epoch_end(epoch, logs)
        finally:
            if self.ema_in_model:
                self._swap()

    def on_test_begin(self, logs=None):
        if not self.ema_in_model:
            self._swap()

    def on_test_end(self, logs=None):
        if self.ema_in_model:
            self._swap()


# --- callbacks every run gets (effkeras.training.trainer) -----------------------------------------


def _finite(value):
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return True  # not a number: nothing to check


class StopOnNaN(keras.callbacks.Callback):
    """Stops training at the first batch whose loss (or any logged value) is NaN or infinite.

    `failed` then says where; the epoch checkpoint skips that epoch (it asks `failed`), so the
    last good checkpoint stays the commit point. Keras' TerminateOnNaN only stops.
    """

    def __init__(self):
        super().__init__()
        self.failed = None
        self.epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def fail(self, epoch, where, logs):
        if self.failed is None:
            bad = {k: float(v) for k, v in (logs or {}).items() if not _finite(v)}
            shown = ", ".join(f"{k}={v}" for k, v in bad.items()) or "the weights are not finite"
            self.failed = f"{shown} in epoch {epoch + 1}, {where}"
        self.model.stop_training = True

    def on_train_batch_end(self, batch, logs=None):
        if logs and not all(_finite(v) for v in logs.values()):
            self.fail(self.epoch, f"step {batch + 1}", logs)


def format_duration(seconds):
    """3725 -> '1h 2m'; 90061 -> '1d 1h'; 42.3 -> '42s'."""
    seconds = int(round(seconds))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    if minutes:
        return f"{minutes}m {secs}s"
    return f"{secs}s"


class Eta(keras.callbacks.Callback):
    """Prints once, early in the first epoch of a run: 'ETA: an epoch takes ~X, N epochs ~Y'.

    The time per step is measured after the first step (which traces and compiles the step),
    over up to `measure_steps` steps; an evaluation step is taken as a third of a training step
    (forward only).
    """

    def __init__(
        self, epochs, steps_per_epoch, validation_steps=0, measure_steps=3, print_fn=print
    ):
        super().__init__()
        self.epochs, self.steps, self.validation_steps = epochs, steps_per_epoch, validation_steps
        self.measure_steps = measure_steps
        self.print_fn = print_fn
        self.started = self.first_step_done = None
        self.printed = False

    def on_train_begin(self, logs=None):
        self.started = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        if self.printed:
            return
        now = time.perf_counter()
        if self.first_step_done is None:
            self.first_step_done, self.first_batch = now, batch
            if self.steps > 1:
                return
            per_step, measured = now - self.started, "its only step, tracing included"
        else:
            counted = batch - self.first_batch
            if counted < min(self.measure_steps, self.steps - 1 - self.first_batch):
                return
            per_step = (now - self.first_step_done) / counted
            measured = f"{counted} step{'s' if counted > 1 else ''} after the first"
        epoch = per_step * (self.steps + self.validation_steps / 3)
        self.print_fn(
            f"ETA: an epoch takes ~{format_duration(epoch)} ({self.steps} steps of "
            f"{per_step:.2f}s), {self.epochs} epoch{'s' if self.epochs != 1 else ''} "
            f"~{format_duration(epoch * self.epochs)} (measured over {measured})"
        )
        self.printed = True
