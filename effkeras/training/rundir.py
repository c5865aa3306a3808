"""The run directory of one training run: its lock, its state.json and its checkpoints.

<output_dir>/.lock                      while a run trains here: its pid and host (flock'ed)
<output_dir>/state.json                 the commit point: what the run is (model, dataset, input
                                        shape, classes), last complete epoch, history, time
<output_dir>/checkpoint-<epoch>.keras   model + optimizer after that epoch

One run at a time; a resume must be the same run; an epoch is committed only when it is whole
and finite (checkpoint first, then state.json, then the older checkpoint goes).
"""

import errno
import fcntl
import json
import math
import numbers
import os
import shutil
import socket
import time

import keras
import numpy as np

from effkeras import saving
from effkeras.errors import InputError
from effkeras.fileio import TEMP_PREFIX, atomic_path, write_json


def log(message):
    print(message, flush=True)


def is_int(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def shape_text(shape):
    return "x".join(str(d) for d in shape)


# --- the output directory: one run at a time ---------------------------------------------------


class OutputDirLock:
    """An exclusive flock on <output_dir>/.lock, which holds the owner's pid and host.

    The kernel drops a flock when its process dies, so a killed run's lock is never stuck: the
    next run takes it over (and says so). A run that ends removes the file; a run that created
    the output directory and leaves it empty, or fails before committing its first epoch,
    removes it too.
    """

    NAME = ".lock"

    def __init__(self, output_dir):
        self.output_dir = output_dir
        self.path = os.path.join(output_dir, self.NAME)
        self.fd = None
        self.created_dir = False

    def __enter__(self):
        try:
            self.created_dir = not os.path.isdir(self.output_dir)
            os.makedirs(self.output_dir, exist_ok=True)
            while True:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError as e:
                    holder = _read_fd(fd) or "another process"
                    os.close(fd)
                    if e.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                        raise InputError(
                            f"{self.output_dir} is in use by another run ({holder}); wait for it "
                            f"to end, or give this run another --output_dir"
                        ) from None
                    raise
                if _same_file(fd, self.path):  # not unlinked by a run that just ended
                    break
                os.close(fd)
            self.fd = fd
            previous = _read_fd(fd)
            if previous:
                log(f"{self.path}: taking over the lock of {previous}, which is no longer running")
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
            for name in os.listdir(self.output_dir):  # a killed run's half-written files
                if name.startswith(TEMP_PREFIX):
                    log(f"{self.output_dir}: removing {name}, left by a run that was killed")
                    os.remove(os.path.join(self.output_dir, name))
        except OSError as e:
            self._cleanup_dir()
            raise InputError(
                f"cannot lock {self.output_dir} ({e.strerror or e}); give a writable --output_dir"
            ) from None
        return self

    def __exit__(self, exc_type, *exc):
        if self.fd is not None:
            try:
                os.remove(self.path)
            except OSError:
                pass
            os.close(self.fd)  # releases the flock
            self.fd = None
        self._cleanup_dir(failed=exc_type is not None)
        return False

    def _cleanup_dir(self, failed=True):
        """Removes the output directory this run created if it is empty, or if the run failed
        before committing any epoch (no state.json anywhere in it, a two-stage run's first
        stage included: its TensorBoard logs are all it has)."""
        if not self.created_dir:
            return
        committed = any("state.json" in files for _, _, files in os.walk(self.output_dir))
        if failed and not committed:
            shutil.rmtree(self.output_dir, ignore_errors=True)
        try:
            os.rmdir(self.output_dir)  # only if empty
        except OSError:
            pass


def _read_fd(fd):
    try:
        return os.pread(fd, 200, 0).decode(errors="replace").strip()
    except OSError:
        return ""


def _same_file(fd, path):
    try:
        return os.fstat(fd).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False


# --- state.json: what the run is and how far it got ---------------------------------------------

IDENTITY = ("model", "dataset", "input_shape", "num_classes", "validation_size", "init_from", "qat")


def _state_error(path, problem):
    return InputError(
        f"{path} {problem}; it records the run in {os.path.dirname(path)}: restore "
        f"it, or start afresh with another --output_dir (nothing was deleted)"
    )


def read_state(output_dir):
    """The run's state.json (checked), or None for a fresh run."""
    path = os.path.join(output_dir, "state.json")
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            state = json.load(f)
    except (OSError, ValueError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise _state_error(path, f"cannot be read as JSON ({str(e).splitlines()[0]})") from None
    if not isinstance(state, dict):
        raise _state_error(path, "is not a JSON object")
    return state


def check_state_fields(path, state):
    epoch, checkpoint = state.get("epoch"), state.get("checkpoint")
    if not is_int(epoch) or epoch < 0:
        raise _state_error(path, f"has no valid 'epoch' (got {epoch!r})")
    if epoch and (not isinstance(checkpoint, str) or os.path.basename(checkpoint) != checkpoint):
        raise _state_error(
            path, f"says {epoch} epochs are done but names no checkpoint (got {checkpoint!r})"
        )
    if not isinstance(state.get("history", []), list) or not isinstance(
        state.get("train_seconds", 0.0), numbers.Real
    ):
        raise _state_error(path, "has a malformed 'history' or 'train_seconds'")
    state.setdefault("history", [])
    state.setdefault("train_seconds", 0.0)


def check_same_run(output_dir, state, asked):
    """InputError naming the first difference between the run in output_dir and `asked`."""
    way_out = "or start a new run with another --output_dir"
    for key in IDENTITY:
        if key not in state or asked.get(key) is None:
            continue  # a state.json from before the key was recorded, or not asked yet
        before, now = state[key], asked[key]
        if key == "input_shape":
            before, now = list(before), list(now)
        if before == now:
            continue
        if key == "model":
            raise InputError(
                f"{output_dir} holds a run of {before}, not {now}; use another --output_dir"
            )
        if key == "dataset":
            raise InputError(
                f"{output_dir} holds a run on {before}, not {now}: resume with "
                f"--dataset={before}, {way_out}"
            )
        if key == "input_shape":
            raise InputError(
                f"{output_dir} holds a run at input {shape_text(before)}, not "
                f"{shape_text(now)}: resume with --input_shape="
                f"{','.join(map(str, before))} (or leave it out), {way_out}"
            )
        if key == "init_from":
            raise InputError(
                f"{output_dir} holds a run from {before}, not {now}: resume with "
                f"--init_from={before}, {way_out}"
            )
        if key == "qat":
            raise InputError(
                f"{output_dir} holds a {'QAT' if before else 'float fine-tuning'} "
                f"run: resume it with {'--qat' if before else '--finetune'}, "
                f"{way_out}"
            )
        if key == "validation_size":
            raise InputError(
                f"{output_dir} holds a run that held out {before} training examples, "
                f"not {now}: resume with --validation_size={before}, {way_out}"
            )
        raise InputError(
            f"{output_dir} holds a run with {before} classes, but the data now has "
            f"{now}: resume with the run's --data_dir, {way_out}"
        )


def open_state(output_dir, state, identity):
    """The state a run commits its epochs to: the resumed run's, once it is checked to be the
    same run (and brought up to date with `identity`), or a fresh one.

    Args:
        output_dir: the run directory.
        state: its state.json as read_state returned it (None: a fresh run).
        identity: what the run is (effkeras.training.plan.RunPlan.identity).

    Returns:
        The state dict (identity, epoch, checkpoint, history, train_seconds).

    Raises:
        InputError: the run in output_dir is another one (check_same_run).
    """
    if state is None:
        return {**identity, "epoch": 0, "checkpoint": None, "history": [], "train_seconds": 0.0}
    check_same_run(output_dir, state, identity)
    state.update(identity)
    return state


# --- epochs: checkpoint, then commit --------------------------------------------------------------


class EpochCheckpoint(keras.callbacks.Callback):
    """Saves checkpoint-<n>.keras, then commits it in state.json, then drops the older one.

    An epoch whose logs or weights are not finite is not saved (the guard reports it).
    write=False (a cluster's non-chief worker) checks and records the epoch without writing.
    """

    def __init__(self, output_dir, state, guard, write=True):
        super().__init__()
        self.output_dir = output_dir
        self.state = state
        self.guard = guard
        self.write = write
        self.epoch_started = None

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch_started = time.time()

    def on_epoch_end(self, epoch, logs=None):
        logs = {k: float(v) for k, v in (logs or {}).items()}
        if (
            self.guard.failed
            or not all(map(math.isfinite, logs.values()))
            or not all(
                np.isfinite(w).all()
                for w in self.model.get_weights()
                if np.issubdtype(w.dtype, np.floating)
            )
        ):
            self.guard.fail(epoch, "at the end of the epoch", logs)
            return
        previous = self.state.get("checkpoint")
        checkpoint = f"checkpoint-{epoch + 1}.keras"
        if self.write:
            with atomic_path(os.path.join(self.output_dir, checkpoint)) as tmp:
                self.model.save(tmp)
        self.state["history"].append({"epoch": epoch + 1, **logs})
        seconds = self.state["train_seconds"] + time.time() - self.epoch_started
        self.state.update(epoch=epoch + 1, checkpoint=checkpoint, train_seconds=seconds)
        if not self.write:
            return
        write_json(os.path.join(self.output_dir, "state.json"), self.state)
        if previous and previous != checkpoint:
            os.remove(os.path.join(self.output_dir, previous))


def restore(model, output_dir, checkpoint, expected):
    """Copies weights and optimizer slots from the run's checkpoint into a freshly compiled
    `model`, after checking that it is this run's model."""
    path = os.path.join(output_dir, checkpoint)
    way_out = "restore it, or start afresh with another --output_dir (nothing was deleted)"
    if not os.path.isfile(path):
        raise InputError(f"{output_dir}/state.json names {checkpoint}, which is missing; {way_out}")
    try:
        saved = saving.load_model(path, compile=True)  # its optimizer slots
    except InputError as e:
        raise InputError(f"{e}; it is the run's last checkpoint: {way_out}") from None
    inner = getattr(saved, "student", saved)  # a distilling run saves its Distiller
    saved_in = tuple(getattr(inner, "input_shape", (None,))[1:])
    if saved_in and saved_in != tuple(expected["input_shape"]):
        raise InputError(
            f"{path} is a model for input {shape_text(saved_in)}, not "
            f"{shape_text(expected['input_shape'])}: resume with "
            f"--input_shape={','.join(map(str, saved_in))}, or start a new run with "
            f"another --output_dir"
        )
    weights = saved.get_weights()
    ours = model.get_weights()
    if len(weights) != len(ours) or any(a.shape != b.shape for a, b in zip(weights, ours)):
        raise InputError(
            f"{path} holds weights of another shape than {expected['model']} at input "
            f"{shape_text(expected['input_shape'])} with {expected['num_classes']} "
            f"classes; start a new run with another --output_dir"
        )
    model.set_weights(weights)
    model.optimizer.build(model.trainable_variables)
    slots = saved.optimizer.variables if saved.optimizer else []
    if len(slots) != len(model.optimizer.variables) or any(
        tuple(a.shape) != tuple(b.shape) for a, b in zip(slots, model.optimizer.variables)
    ):
        raise InputError(
            f"{path} holds another optimizer's state than {expected['model']}'s "
            f"recipe; start a new run with another --output_dir"
        )
    for variable, value in zip(model.optimizer.variables, slots):
        variable.assign(value)
