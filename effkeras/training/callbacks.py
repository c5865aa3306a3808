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

    def __init__(self, epochs, steps_per_epoch, validation_steps=0, measure_steps=3, print_fn=print):
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
        self.print_fn(f"ETA: an epoch takes ~{format_duration(epoch)} ({self.steps} steps of "
                      f"{per_step:.2f}s), {self.epochs} epoch{'s' if self.epochs != 1 else ''} "
                      f"~{format_duration(epoch * self.epochs)} (measured over {measured})")
        self.printed = True
