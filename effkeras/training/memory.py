"""How much memory training a model needs, and how much this machine has.

The estimate for (model, input, batch) adds:
  parameter state: parameters x (weights + gradients + optimizer slots) x 4 bytes, twice (the
    step's temporaries: quantized kernels, the optimizer update, the checkpoint being saved);
  activations kept for the backward pass: every layer's output size per example x batch x bytes
    per element (2 under mixed precision) x ACTIVATION_FACTOR, plus QUANTIZED_INPUT_FACTOR x the
    input of each layer with an input quantizer (its float input and quantized copy, which the
    straight-through gradient needs);
  the data pipeline: the decoded dataset in memory (numpy arrays, their tf.data copy and the
    shuffle buffer) plus prefetched batches of float32 images;
  RUNTIME_OVERHEAD: what tracing the train step adds (graphs, kernels' caches, allocator arenas).
The factors are measured, not derived: peak RSS growth of a 3-step CPU fit (Keras 3.15, TF 2.21,
2 cores; `measure` below, tests/test_hostile_train.py runs it) against this estimate:
  model          input     batch  measured  estimate  estimate/measured
  resnet20       64x64x3   64     574 MiB   1002 MiB  1.75
  resnet20       64x64x3   128    990 MiB   1680 MiB  1.70
  resnet18       32x32x3   64     492 MiB    607 MiB  1.23
  mobilenet_v2   64x64x3   48     724 MiB    730 MiB  1.01
  ern18          64x64x3   48     866 MiB   1116 MiB  1.29
  recu_resnet18  32x32x3   96    2248 MiB   1676 MiB  0.75
Layer outputs over-count float nets (oneDNN fuses conv+BN+ReLU; an Add's output is not kept)
and under-count ReCU's (it standardises each input before the sign): one factor of 1 puts every
measured model within 0.5x-2x, and the refusal margin (USABLE_FRACTION) absorbs the rest.
"""

import dataclasses
import json
import math
import os
import resource
import subprocess
import sys

import keras

ACTIVATION_FACTOR = 1.0
QUANTIZED_INPUT_FACTOR = 2.0
PARAMETER_STATE_COPIES = 2
RUNTIME_OVERHEAD = 300 * 2**20
USABLE_FRACTION = 0.8  # refuse above this share of the machine's memory
PREFETCHED_BATCHES = 6  # train and test pipelines' prefetch and map buffers (AUTOTUNE)
DATA_COPIES = 3  # numpy arrays, their tf.data constant, the shuffle buffer
GIB = 2**30

# Optimizer slot variables per trainable parameter (Keras 3 optimizers).
SLOTS = {
    "sgd": lambda o: 1 if o.momentum else 0,
    "adam": lambda o: 2,
    "adamw": lambda o: 2,
    "rmsprop": lambda o: 1 + (1 if o.momentum else 0),
}


def optimizer_slots(optimizer):
    """Slot variables per parameter of a recipes.Optimizer (momentum, Adam's two moments...)."""
    return SLOTS[optimizer.name](optimizer)


def _dtype_bytes(dtype):
    return 2 if dtype in ("float16", "bfloat16") else 8 if dtype == "float64" else 4


def _elements(tensors):
    return sum(
        math.prod(d for d in t.shape[1:] if d is not None) for t in keras.tree.flatten(tensors)
    )


def activation_bytes_per_example(model):
    """Bytes one example's activations keep for the backward pass (before ACTIVATION_FACTOR is
    applied to layer outputs): every layer's outputs (nested models walked into), plus
    QUANTIZED_INPUT_FACTOR x the inputs of input-quantized layers."""
    total = 0.0
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            total += activation_bytes_per_example(layer)
            continue
        size = _dtype_bytes(getattr(layer, "compute_dtype", "float32"))
        quantized = getattr(layer, "input_quantizer", None) is not None
        for node in layer._inbound_nodes:
            total += ACTIVATION_FACTOR * _elements(node.output_tensors) * size
            if quantized:
                total += QUANTIZED_INPUT_FACTOR * _elements(node.input_tensors) * size
    return total


def _param_count(variables):
    return sum(math.prod(v.shape) for v in variables)


@dataclasses.dataclass
class Estimate:
    """Bytes that training needs; `per_example` is what each example of a batch adds."""

    batch_size: int
    parameters: int  # weights + gradients + optimizer slots, with temporaries
    activations: int  # at batch_size
    data: int  # the dataset in memory + prefetched batches at batch_size
    runtime: int  # tracing and the runtime's caches
    per_example: int  # activations + prefetch per example
    fixed: int  # what does not grow with the batch
    data_fixed: int = 0  # of which the dataset in memory

    @property
    def total(self):
        return self.parameters + self.activations + self.data + self.runtime

    def at_batch(self, batch_size):
        return self.fixed + self.per_example * batch_size

    def describe(self):
        return (
            f"~{gib(self.total)} (parameters, gradients and optimizer {gib(self.parameters)}, "
            f"activations at batch {self.batch_size} {gib(self.activations)}, data pipeline "
            f"{gib(self.data)}, runtime {gib(self.runtime)})"
        )


def estimate(model, *, batch_size, optimizer_slots, input_shape, dataset_bytes=0, teacher=None):
    """The training memory of `model` at `batch_size` (an Estimate).

    optimizer_slots: slot variables per trainable parameter; dataset_bytes: the decoded dataset
    (uint8) held in memory; teacher: a frozen model run forward in each step (distillation).
    """
    trainable = _param_count(model.trainable_variables)
    frozen = _param_count(model.non_trainable_variables)
    parameters = PARAMETER_STATE_COPIES * 4 * (trainable * (2 + optimizer_slots) + frozen)
    activation_per_example = activation_bytes_per_example(model)
    if teacher is not None:  # forward only: its weights, and its outputs for one step
        parameters += 4 * teacher.count_params()
        activation_per_example += activation_bytes_per_example(teacher)
    prefetch_per_example = PREFETCHED_BATCHES * 4 * math.prod(input_shape)
    data_fixed = DATA_COPIES * dataset_bytes
    return Estimate(
        batch_size=batch_size,
        parameters=int(parameters),
        activations=int(activation_per_example * batch_size),
        data=int(data_fixed + prefetch_per_example * batch_size),
        runtime=RUNTIME_OVERHEAD,
        per_example=int(activation_per_example + prefetch_per_example),
        fixed=int(parameters + data_fixed + RUNTIME_OVERHEAD),
        data_fixed=int(data_fixed),
    )


def largest_batch(est, budget):
    """The largest batch size whose estimate fits in `budget` bytes (0 if not even 1)."""
    return max(0, int((budget - est.fixed) // est.per_example)) if est.per_example else 0


def power_of_two_at_most(n):
    return 1 << (n.bit_length() - 1) if n >= 1 else 0


def machine_memory():
    """Bytes of memory this process may use: physical memory, or the cgroup limit if smaller."""
    total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(path) as f:
                text = f.read().strip()
        except OSError:
            continue
        if text.isdigit():
            total = min(total, int(text))
    return total


def gpu_memory():
    """Bytes of memory of the first GPU TensorFlow sees (nvidia-smi), or None (no GPU, or no
    way to tell)."""
    import tensorflow as tf

    if not tf.config.list_physical_devices("GPU"):
        return None
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=memory.total", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=20,
        ).stdout.split()
        return int(out[0]) * 2**20
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None


def resident_bytes():
    """This process's resident memory now (the runtime, the loaded data, the built model)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def gib(n):
    return f"{n / GIB:.2f} GiB" if n >= GIB / 10 else f"{n / 2**20:.0f} MiB"


# --- measuring the estimate -----------------------------------------------------------------------


def _measure_here(name, input_shape, batch_size, steps):
    from effkeras import data, models
    from effkeras.training import recipes

    recipe = recipes.get(models.info(name).recipe)
    before = resident_bytes()
    split = data.load(
        "synthetic", "train", input_shape=input_shape, batch_size=batch_size, augment_with=()
    )
    model = models.get(name, input_shape=input_shape, num_classes=split.num_classes)
    recipes.compile_model(model, recipe, epochs=1, steps_per_epoch=steps, batch_size=batch_size)
    est = estimate(
        model,
        batch_size=batch_size,
        optimizer_slots=optimizer_slots(recipe.optimizer),
        input_shape=input_shape,
        dataset_bytes=split.num_examples * math.prod(input_shape),
    )
    model.fit(split.dataset.repeat(), epochs=1, steps_per_epoch=steps, verbose=0)
    return {"measured": peak_resident_bytes() - before, "estimate": est.total}


def peak_resident_bytes():
    """This process's peak resident memory (VmHWM). Not getrusage's ru_maxrss: Linux carries
    that over from the parent across fork and exec, so a child of a big process (pytest after
    many tests) reports the parent's size (measured: 6.9 GB for a 0.6 GB fit)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def measure(name, input_shape, batch_size, steps=3, timeout=600):
    """{"measured": peak RSS growth of a `steps`-step fit of registered model `name` on synthetic
    data, in a fresh process; "estimate": this module's estimate for it}, in bytes."""
    code = (
        "import json, sys; from effkeras.training import memory; "
        "print(json.dumps(memory._measure_here(*json.loads(sys.argv[1]))))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, json.dumps([name, list(input_shape), batch_size, steps])],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    if result.returncode:
        raise RuntimeError(result.stderr[-2000:])
    return json.loads(result.stdout.strip().splitlines()[-1])
