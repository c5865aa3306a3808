"""Resumable training: a checkpoint and a state file per epoch, both written atomically.

<output_dir>/checkpoint-<epoch>.keras   model + optimizer after that epoch
<output_dir>/state.json                 the commit point: what the run is (model, dataset, input
                                        shape, classes), last complete epoch, history, time
<output_dir>/.lock                      while a run trains here: its pid and host (flock'ed)
<output_dir>/logs/                      TensorBoard  (the lock, state and checkpoints: rundir.py)
<output_dir>/model.keras, metrics.json  the final results
Re-running with the same output_dir continues after the last complete epoch, with the learning
rate schedule stretched over the epochs now asked for. A resume must be the same run: another
model, dataset, input shape or class count is refused, as are a corrupt state.json and a missing
or unreadable checkpoint (nothing is deleted). A second run into a busy output_dir is refused.

Before training, the input shape is chosen (the dataset's own size, padded to what the model
takes, when the dataset's images are smaller than the model's default input), the memory of
training is estimated (effkeras.training.memory) and a run that would not fit is refused with
a --batch_size (or --input_shape) that does. A loss that becomes NaN or infinite stops the run
with an error; the last good checkpoint stays the commit point.

A model whose output is a list of K logits tensors (early exits) trains on the recipe's weighted
sum of per-output cross-entropies; its metrics are logged per output as <output name>_top1,
<output name>_top5 and <output name>_loss (Keras' names), next to the total `loss`.

A two-stage recipe (one with a `transfer` stage: LERP-PSA's) first runs its knowledge transfer
(effkeras.training.transfer) as a run of its own in <output_dir>/transfer/, resumable the same
way, for --transfer_epochs epochs per block (0 skips it); stage 2, the recipe itself, then starts
from the transferred student (<output_dir>/transfer/model.keras).

With `qat` (apps.train --qat --init_from=FLOAT.keras) the run is int8 quantization-aware
training of that trained float model (effkeras.qat.quantize_model, its activation
ranges first calibrated on QAT_CALIBRATION_IMAGES training images) with the recipe's qat_stage:
a short run at a low learning rate. `finetune` is the same run without quantization, the control
QAT is compared with. A resume must name the same --init_from, and the same kind of run.

A recipe with a Mix mixes each train batch (Mixup/CutMix) after batching; its labels, and the
test split's, are then one-hot. A recipe with an `ema` validates, checkpoints and saves the EMA of
the weights (effkeras.training.callbacks.EmaWeights): checkpoint-<epoch>.keras and model.keras
hold the EMA as their weights; a checkpoint keeps the raw weights in the optimizer's EMA slots,
and a resume trains on from them with the EMA's state restored.

Beyond one device (effkeras.training.distribute): `strategy` mirrored, multi_worker or tpu builds
and compiles the model under that tf.distribute strategy; `batch_size` is the global batch (split
over the replicas) and the learning rate scales with it. On a cluster only the chief writes (it
alone takes the lock); every worker reads the same state.json. `grad_accumulation` N applies the
mean gradient of N batches (Keras' gradient_accumulation_steps): the learning rate scales with
the effective batch, batch x N. `dtype_policy` picks mixed precision (default: the recipe's,
on a GPU); the model.keras it writes is float32, for evaluation and export anywhere.
`jit_compile` compiles the train step with XLA (default: Keras' choice, XLA on a GPU when every
layer supports it, never under a multi-replica strategy).
"""

import contextlib
import dataclasses
import math
import numbers
import os
import sys
import time

import keras

from effkeras import data, models
from effkeras.data import augment
from effkeras.errors import InputError
from effkeras.fileio import atomic_path, check_writable, write_json
from effkeras.training import callbacks as recipe_callbacks
from effkeras.training import distribute, memory, recipes
from effkeras.training.rundir import (EpochCheckpoint, OutputDirLock, check_same_run,
                                      check_state_fields, finite_or_none, is_int, log, read_state,
                                      restore, shape_text)
from effkeras.training.distillation import Distiller, load_teacher
from effkeras.training.transfer import BlockSchedule, FeatureTransfer, block_names

# Datasets of fixed-size images: (name in messages, image shape, train + test examples).
# ImageNet's images come in every size: a model trains on them at its own default input.
DATASET_IMAGES = {
    "fashion_mnist": ("Fashion-MNIST", (28, 28, 1), 70_000),
    "cifar10": ("CIFAR-10", (32, 32, 3), 60_000),
    "cifar100": ("CIFAR-100", (32, 32, 3), 60_000),
    "synthetic": ("synthetic", (32, 32, 3), None),  # generated at the input shape
}
SYNTHETIC_CLASSES = 10  # data.load's default for synthetic
SYNTHETIC_EXAMPLES = 640  # its train + test examples
MAX_SEED = 2 ** 31 - 1  # numpy seeds must be < 2**32; the data seed adds the epoch
QAT_CALIBRATION_IMAGES = 512  # training images that set a QAT run's first activation ranges


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
    input_shape: tuple = None  # None: the run's own on resume, else see default_input_shape
    seed: int = 0
    teacher: str = None  # .keras file or registry name, for recipes that distil
    # Training examples held out (data's `validation` split, the same in every run): early-exit
    # thresholds are calibrated on them (apps.evaluate --early_exit=budgeted, same size).
    validation_size: int = None
    # Two-stage recipes: knowledge-transfer epochs per block (None: the recipe's; 0: none).
    transfer_epochs: int = None
    # int8 quantization-aware training of the trained float model in `init_from` (a .keras file;
    # `model` defaults to its registry name), with the recipe's qat_stage; `finetune`: the same
    # run without quantization, the control that QAT's gain is measured against.
    qat: bool = False
    finetune: bool = False
    init_from: str = None
    verbose: int = None  # None: progress bars on a terminal, one line per epoch otherwise
    # Beyond one device (effkeras.training.distribute): the tf.distribute strategy's name, and
    # the logical CPU devices to split this machine's CPU into (multi-replica runs without GPUs).
    strategy: str = "default"
    cpu_devices: int = None
    grad_accumulation: int = None  # apply the mean gradient of this many batches (None: 1)
    dtype_policy: str = None  # None: the recipe's (mixed_float16 on a GPU for mixed recipes)
    jit_compile: object = "auto"  # True/False: XLA or not; "auto": Keras' choice
    deterministic: bool = False  # TensorFlow's deterministic ops: reruns give the same losses


# --- checking the configuration --------------------------------------------------------------


def _check_positive(name, value):
    if value is not None and (not is_int(value) or value < 1):
        raise InputError(f"--{name} must be a positive integer, got {value!r}")


def check_config(config, recipe):
    """InputError for any flag that cannot be right, before anything is read or written."""
    for name in ("epochs", "batch_size", "steps_per_epoch", "validation_size",
                 "grad_accumulation"):
        _check_positive(name, getattr(config, name))
    recipes.dtype_policy(recipe, config.dtype_policy)  # InputError for one this machine lacks
    if config.jit_compile not in ("auto", True, False):
        raise InputError(f"--jit_compile must be auto, true or false, got {config.jit_compile!r}")
    rate = config.learning_rate
    if rate is not None and (isinstance(rate, bool) or not isinstance(rate, numbers.Real)
                             or not math.isfinite(rate) or rate <= 0):
        raise InputError(f"--learning_rate must be a finite number > 0, got {rate!r}; leave it out "
                         f"for the recipe's ({recipe.learning_rate:g} at batch "
                         f"{recipe.base_batch_size}, scaled with the batch size)")
    if not is_int(config.seed) or not 0 <= config.seed <= MAX_SEED:
        raise InputError(f"--seed must be an integer in [0, {MAX_SEED}], got {config.seed!r}")
    if config.verbose not in (None, 0, 1, 2):
        raise InputError(f"verbose must be 0, 1 or 2, got {config.verbose!r}")
    if config.dataset not in data.DATASETS:
        raise InputError(f"unknown dataset {config.dataset!r}; choose from {', '.join(data.names())}")
    if not config.output_dir or not isinstance(config.output_dir, str):
        raise InputError(f"--output_dir must be a directory path, got {config.output_dir!r}")
    check_writable(config.output_dir, "--output_dir", directory=True)
    if config.transfer_epochs is not None and (not is_int(config.transfer_epochs)
                                               or config.transfer_epochs < 0):
        raise InputError(f"--transfer_epochs must be an integer >= 0, got "
                         f"{config.transfer_epochs!r}")
    if config.transfer_epochs and recipe.transfer is None:
        raise InputError(f"--transfer_epochs is for two-stage recipes (knowledge transfer, then "
                         f"distillation); {config.model}'s recipe has one stage: leave it out")
    if config.init_from and not (config.qat or config.finetune):
        raise InputError("--init_from is the trained float model that --qat (or --finetune) "
                         "starts from: add one of them")
    if (config.qat or config.finetune) and (config.teacher or config.transfer_epochs):
        raise InputError("--qat and --finetune fine-tune a trained model on labels: leave "
                         "--teacher and --transfer_epochs out")
    if config.teacher and not recipe.loss.needs_teacher:
        raise InputError(f"--teacher is only for recipes that distil; {config.model}'s recipe "
                         f"does not: leave --teacher out")


def default_input_shape(info, dataset):
    """(input shape, why) when --input_shape is not given.

    A dataset whose images are smaller than the model's default input (Fashion-MNIST, CIFAR,
    synthetic) trains at its own size padded up to a multiple of the model's total stride
    (min_input_size), with its channels when the model takes them. ImageNet, and datasets of
    images at least as large as the default, train at the model's default input.
    """
    if dataset not in DATASET_IMAGES:
        return info.input_shape, f"{info.name}'s default"
    title, (height, width, channels), _ = DATASET_IMAGES[dataset]
    if height >= info.input_shape[0] and width >= info.input_shape[1]:
        return info.input_shape, f"{info.name}'s default ({title}'s images are {height}x{width})"
    step = info.min_input_size
    padded = tuple(max(step, -(-size // step) * step) for size in (height, width))
    channels_used = channels if channels in info.channels else info.channels[-1]
    shape = (*padded, channels_used)
    how = ("padded to " + "x".join(map(str, padded)) if padded != (height, width) else "as is")
    if channels_used != channels:
        how += f", channels tiled to {channels_used}"
    default = (f"; its default {shape_text(info.input_shape)} is for ImageNet"
               if info.input_shape[0] > 32 else "")
    return shape, (f"{title}'s {shape_text((height, width, channels))} {how} ({info.name} takes "
                   f"multiples of {step}{default})")


# --- memory -----------------------------------------------------------------------------------


def check_memory(model, *, info, recipe, input_shape, batch_size, dataset, teacher=None,
                 batch_from_flag=False, replicas=1):
    """Prints the memory estimate; InputError naming a --batch_size (or --input_shape) that fits
    when training would take more than memory.USABLE_FRACTION of this machine's memory (of one
    GPU, for its share of the global batch, when there are GPUs)."""
    if dataset in DATASET_IMAGES:
        _, shape, count = DATASET_IMAGES[dataset]
        dataset_bytes = (count * math.prod(shape) if count
                         else SYNTHETIC_EXAMPLES * math.prod(input_shape))
    else:
        dataset_bytes = 0  # files decoded as they are read
    slots = memory.optimizer_slots(recipe.optimizer) + (1 if recipe.ema else 0)  # EMA: a copy
    est = memory.estimate(model, batch_size=batch_size, input_shape=input_shape,
                          optimizer_slots=slots,
                          dataset_bytes=dataset_bytes, teacher=teacher)
    gpu = memory.gpu_memory()
    if gpu and replicas > 1:  # each GPU holds the model and its share of the batch
        est = memory.estimate(model, batch_size=batch_size // replicas, input_shape=input_shape,
                              optimizer_slots=slots, dataset_bytes=dataset_bytes, teacher=teacher)
    if gpu:
        limit, where, in_use = gpu, "this GPU's", 0
        est.data = 0  # the data pipeline stays in host memory
    else:
        limit, where, in_use = memory.machine_memory(), "this machine's", memory.resident_bytes()
    budget = memory.USABLE_FRACTION * limit - in_use
    log(f"memory: training needs {est.describe()}"
        + (f", + {memory.gib(in_use)} in use now" if in_use else "")
        + f"; {where} memory is {memory.gib(limit)}")
    if est.total <= budget:
        return est
    need = (f"training {info.name} at input {shape_text(input_shape)} with batch {batch_size} "
            f"needs ~{memory.gib(est.total)}, more than {memory.USABLE_FRACTION:.0%} of {where} "
            f"{memory.gib(limit)}" + (f" ({memory.gib(in_use)} in use)" if in_use else ""))
    fits = memory.power_of_two_at_most(memory.largest_batch(est, budget))
    fits *= replicas if gpu else 1  # a global batch
    if fits:
        source = "" if batch_from_flag else f" (the recipe's batch is {batch_size})"
        raise InputError(f"{need}{source}: use --batch_size={fits} or less, or a smaller "
                         f"--input_shape")
    # Not even batch 1: activations and prefetch grow with height x width.
    height, width, channels = input_shape
    step = info.min_input_size
    generated = dataset == "synthetic"  # generated at the input shape: it shrinks with it
    for side in range(max(step, (min(height, width) // step) * step), step - 1, -step):
        scale = side * side / (height * width)
        room = budget - est.fixed + (est.data_fixed * (1 - scale) if generated else 0)
        per_example = est.per_example * scale
        if room >= per_example:
            batch = memory.power_of_two_at_most(int(room // per_example))
            raise InputError(f"{need}, even at batch 1: use --input_shape={side},{side},{channels} "
                             f"with --batch_size={batch}" + (" or less" if batch > 1 else ""))
    raise InputError(f"{need}: its parameters and optimizer state alone need "
                     f"{memory.gib(est.parameters + est.runtime)}; train it on a machine with more "
                     f"memory")


# --- training ----------------------------------------------------------------------------------


def _test_metrics(logs, num_outputs):
    """Today's {top1, top5, loss} for one output; every logged metric for several."""
    if num_outputs == 1:
        return {"top1": logs["top1"], "top5": logs["top5"], "loss": logs["loss"]}
    return {name: float(value) for name, value in logs.items()}


def _build(info, input_shape, num_classes, policy="float32"):
    """The registry model under the dtype `policy`; under mixed precision its output layers (the
    logits) compute in float32, as the loss, its softmax and the metrics do."""
    keras.config.set_dtype_policy(policy)
    try:
        model = models.get(info.name, input_shape=input_shape, num_classes=num_classes)
    finally:
        keras.config.set_dtype_policy("float32")
    if policy != "float32":
        for output in model.outputs:
            output._keras_history.operation.dtype_policy = "float32"
    return model


def _saveable(student, info, policy):
    """The model to write as model.keras: float32 (rebuilt with the trained weights) when it
    trained under mixed precision, with per-replica BatchNormalization statistics again."""
    if policy != "float32":
        trained = student
        student = _build(info, tuple(trained.input_shape[1:]), trained.output_shape[-1])
        student.set_weights(trained.get_weights())
    for layer in student._flatten_layers(include_self=False):
        if getattr(layer, "synchronized", False):
            layer.synchronized = False
    return student


def train(config):
    """Trains (or resumes) `config.model`; returns the metrics dict also written to metrics.json."""
    if config.qat and config.finetune:
        raise InputError("--qat and --finetune are two runs: give one")
    if not (config.model or config.qat or config.finetune):
        raise InputError("--model is required (or --qat with --init_from)")
    strategy = distribute.make_strategy(config.strategy, config.cpu_devices)  # before any op
    if config.deterministic:
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()
    float_model = None
    if config.qat or config.finetune:
        with strategy.scope():
            float_model = _load_float_model(config)
        config = dataclasses.replace(config, model=config.model or float_model.name)
    info = models.info(config.model)
    recipe = recipes.get(info.recipe)
    if float_model is not None:
        recipe = recipe.qat_stage()
    check_config(config, recipe)
    chief = distribute.is_chief(strategy)
    run = dict(strategy=strategy, chief=chief)
    with OutputDirLock(config.output_dir) if chief else contextlib.nullcontext():
        if float_model is not None:
            return _train(config, info, recipe, stage="qat" if config.qat else "finetune",
                          float_model=float_model, **run)
        if recipe.transfer is None or config.transfer_epochs == 0:
            return _train(config, info, recipe, **run)
        transfer_dir = os.path.join(config.output_dir, "transfer")
        log(f"stage 1 of 2: knowledge transfer from the teacher, in {transfer_dir}")
        _train(dataclasses.replace(config, output_dir=transfer_dir), info, recipe,
               stage="transfer", **run)
        log(f"stage 2 of 2: distillation, in {config.output_dir}")
        return _train(config, info, recipe, initial=os.path.join(transfer_dir, "model.keras"),
                      **run)


def _load_float_model(config):
    """The trained float model --qat (or --finetune) starts from (config.init_from)."""
    from effkeras import qat, saving

    if not config.init_from:
        raise InputError(f"--{'qat' if config.qat else 'finetune'} needs "
                         f"--init_from=FLOAT_MODEL.keras, the trained float model to fine-tune")
    model = saving.load_model(config.init_from)
    if qat.is_qat_model(model):
        raise InputError(f"{config.init_from} is already a QAT model: give the float model it "
                         f"came from, or resume its run with its --output_dir")
    if config.model is None and model.name not in models.names():
        raise InputError(f"{config.init_from} holds {model.name!r}, not a registry model: give "
                         f"--model=<registry name> whose recipe to fine-tune with")
    return model


def _calibration_images(dataset, count=QAT_CALIBRATION_IMAGES):
    """Up to `count` images from the batches of `dataset`."""
    import numpy as np

    images, total = [], 0
    for batch, _ in dataset:
        images.append(batch.numpy())
        total += len(images[-1])
        if total >= count:
            break
    return np.concatenate(images)[:count]


def _train(config, info, recipe, stage=None, initial=None, float_model=None, *, strategy,
           chief=True):
    """One run into config.output_dir under `strategy`. stage "transfer": the recipe's
    knowledge-transfer stage; stage "qat": int8 QAT of `float_model`; "finetune": `float_model`
    trained on as it is, with the same recipe; initial: a .keras file whose weights a fresh run
    starts from. `chief`: whether this process writes the run's files."""
    epochs = config.epochs or recipe.epochs
    batch_size = config.batch_size or recipe.batch_size
    replicas = strategy.num_replicas_in_sync
    accumulation = config.grad_accumulation or 1
    if batch_size % replicas:
        raise InputError(f"the global batch {batch_size} does not split over {replicas} replicas: "
                         f"use a --batch_size that is a multiple of {replicas}")
    policy = recipes.dtype_policy(recipe, config.dtype_policy)
    if float_model is not None or stage == "transfer":
        policy = "float32"  # fine-tuning a float32 model; feature matching in float32
    state_path = os.path.join(config.output_dir, "state.json")
    state = read_state(config.output_dir)
    if state is not None:
        check_same_run(config.output_dir, state,
                        {"model": info.name, "dataset": config.dataset,
                         "input_shape": config.input_shape and tuple(config.input_shape)})
        check_state_fields(state_path, state)

    if float_model is not None:
        input_shape = tuple(float_model.input_shape[1:])
        why = f"the float model's, {config.init_from}"
        if config.input_shape and tuple(config.input_shape) != input_shape:
            raise InputError(f"{config.init_from} takes input {shape_text(input_shape)}: leave "
                             f"--input_shape out")
    elif config.input_shape:
        input_shape, why = tuple(config.input_shape), "--input_shape"
    elif state is not None and state.get("input_shape"):
        input_shape, why = tuple(state["input_shape"]), f"the run's own, from {state_path}"
    else:
        input_shape, why = default_input_shape(info, config.dataset)
    input_shape = models.check_input_shape(info, input_shape)
    log(f"input {shape_text(input_shape)}: {why}")
    keras.utils.set_random_seed(config.seed)

    # The model (and so the memory estimate) before the data: a synthetic set is generated at
    # the input shape, so a shape that cannot fit must be refused before it is made.
    fixed_classes = data.DATASETS[config.dataset][0]
    if config.dataset == "synthetic":
        fixed_classes = SYNTHETIC_CLASSES
    initial_epoch = state["epoch"] if state else 0
    train_augment = dict(recipe.augment).get(config.dataset)

    def load_splits():
        # Epochs from the resumed one on, in the order an uninterrupted run sees them.
        train_split = data.load(config.dataset, "train", input_shape=input_shape,
                                batch_size=batch_size, data_dir=config.data_dir,
                                seed=config.seed, first_epoch=initial_epoch,
                                augment_with=train_augment,
                                validation_size=config.validation_size)
        # A recipe that trains on squashed images validates on them too (ERN's official code).
        test_split = data.load(config.dataset, "test", input_shape=input_shape,
                               batch_size=batch_size, data_dir=config.data_dir,
                               augment_with=("squash",) if "squash" in (train_augment or ()) else None)
        return train_split, test_split

    splits = None if fixed_classes else load_splits()  # ImageNet: classes are the folders
    num_classes = fixed_classes or splits[0].num_classes
    if float_model is not None:
        from effkeras import qat

        if float_model.output_shape[-1] != num_classes:
            raise InputError(f"{config.init_from} has {float_model.output_shape[-1]} classes, "
                             f"{config.dataset} {num_classes}: fine-tune it on its own dataset")
        with strategy.scope():
            student = (qat.quantize_model(float_model) if stage == "qat"  # calibrated
                       else float_model)
    else:
        with strategy.scope():
            student = _build(info, input_shape, num_classes, policy)
    with strategy.scope():
        teacher = (load_teacher(config.teacher, input_shape, num_classes)
                   if recipe.loss.needs_teacher else None)
    check_memory(student, info=info, recipe=recipe, input_shape=input_shape, batch_size=batch_size,
                 dataset=config.dataset, teacher=teacher, batch_from_flag=bool(config.batch_size),
                 replicas=replicas)
    train_split, test_split = splits or load_splits()
    transfer = stage == "transfer"
    if transfer:  # stage 1: its own recipe, blocks x epochs per block
        blocks = len(block_names(student))
        recipe = recipe.transfer_stage(blocks, config.transfer_epochs)
        epochs = recipe.epochs
    elif stage == "qat" and state is None:
        images = _calibration_images(train_split.dataset)
        qat.calibrate(student, images)
        log(f"int8 QAT of {config.init_from}: activation ranges calibrated on {len(images)} "
            f"training images")
    elif initial is not None and state is None:
        from effkeras import saving

        student.set_weights(saving.load_model(initial).get_weights())
        log(f"starting from the transferred student, {initial}")
    if train_split.num_classes != num_classes:  # defensive: the data disagrees with its table
        num_classes = train_split.num_classes
        with strategy.scope():
            student = _build(info, input_shape, num_classes, policy)
            teacher = teacher and load_teacher(config.teacher, input_shape, num_classes)
    if replicas > 1:
        distribute.synchronize_batch_norm(student)

    identity = {"model": info.name, "dataset": config.dataset, "input_shape": list(input_shape),
                "num_classes": num_classes, "validation_size": config.validation_size}
    if float_model is not None:
        identity.update(init_from=os.path.abspath(config.init_from), qat=stage == "qat")
    if state is not None:
        check_same_run(config.output_dir, state, identity)
        state.update(identity)
    else:
        state = {**identity, "epoch": 0, "checkpoint": None, "history": [], "train_seconds": 0.0}

    steps = config.steps_per_epoch or max(1, train_split.num_examples // batch_size)
    if accumulation > 1:  # whole updates per epoch: a checkpoint never holds half a sum
        if steps < accumulation:
            raise InputError(f"--grad_accumulation={accumulation} needs at least {accumulation} "
                             f"batches per epoch, there are {steps}: lower it or the batch size")
        steps -= steps % accumulation
    log(f"strategy: {distribute.describe(strategy)}; global batch {batch_size}"
        + (f" ({batch_size // replicas} per replica)" if replicas > 1 else "")
        + (f" x {accumulation} accumulated = {batch_size * accumulation} per update"
           if accumulation > 1 else "")
        + (f"; {policy}" if policy != "float32" else ""))
    train_data = train_split.dataset  # endless: fit's epochs are `steps` batches
    model = student
    with strategy.scope():
        if transfer:
            model = FeatureTransfer(student, teacher)
            model.copy_stem()
        elif teacher is not None:
            model = Distiller(student, teacher, alpha=recipe.loss.alpha,
                              temperature=recipe.loss.temperature,
                              label_smoothing=recipe.loss.label_smoothing)
    test_data = test_split.dataset
    if recipe.mix is not None:  # batch-level mixing: soft labels, test labels one-hot too
        mix = recipe.mix
        train_data = train_data.map(augment.mix_batches(
            num_classes, mixup_alpha=mix.mixup_alpha, cutmix_alpha=mix.cutmix_alpha,
            switch_prob=mix.switch_prob, seed=config.seed + initial_epoch))
        test_data = test_data.map(augment.one_hot_labels(num_classes))
    num_outputs = len(student.outputs)
    train_data = recipes.repeat_labels(train_data, num_outputs)
    test_data = recipes.repeat_labels(test_data, num_outputs)
    log(recipes.describe_learning_rate(recipe, batch_size * accumulation, config.learning_rate))
    with strategy.scope():
        if transfer:
            model.compile(recipes.make_optimizer(recipe, recipes.learning_rate_schedule(
                recipe, epochs=epochs, steps_per_epoch=steps, batch_size=batch_size)))
        else:
            recipes.compile_model(model, recipe, epochs=epochs, steps_per_epoch=steps,
                                  batch_size=batch_size * accumulation,
                                  learning_rate=config.learning_rate,
                                  accumulation=accumulation, jit_compile=config.jit_compile)
        if accumulation > 1:
            distribute.accumulate_across_replicas(model.optimizer)
        if state.get("checkpoint"):
            restore(model, config.output_dir, state["checkpoint"], identity)
            log(f"Resuming {info.name} from epoch {initial_epoch} in {config.output_dir}")

    distribute.build_for_fit(model, strategy, train_data)
    guard = recipe_callbacks.StopOnNaN()
    test_steps = -(-test_split.num_examples // batch_size)
    checkpoint = EpochCheckpoint(config.output_dir, state, guard, write=chief)
    if recipe.ema:  # validation and checkpoints see the EMA weights
        checkpoint = recipe_callbacks.EmaWeights(checkpoint,
                                                 restored=bool(state.get("checkpoint")))
    callbacks = [guard,
                 recipe_callbacks.Eta(epochs - initial_epoch, steps, test_steps, print_fn=log),
                 *recipe_callbacks.make(recipe.callbacks, epochs),
                 *([BlockSchedule(epochs // blocks, print_fn=log)] if transfer else []),
                 checkpoint,
                 *([keras.callbacks.TensorBoard(os.path.join(config.output_dir, "logs"))]
                   if chief else [])]
    verbose = config.verbose if config.verbose is not None else 1 if sys.stdout.isatty() else 2
    started = time.time()
    with train_split.errors_as_input_errors(), test_split.errors_as_input_errors():
        if initial_epoch < epochs:
            model.fit(train_data, epochs=epochs, initial_epoch=initial_epoch, steps_per_epoch=steps,
                      validation_data=test_data, callbacks=callbacks, shuffle=False, verbose=verbose)
        if guard.failed:
            kept = (f"{config.output_dir} keeps the last good checkpoint, {state['checkpoint']} "
                    f"(epoch {state['epoch']}): rerun with a lower --learning_rate to resume from it"
                    if state.get("checkpoint") else
                    "no epoch was saved: rerun with a lower --learning_rate")
            raise InputError(f"training diverged: {guard.failed}; {kept}")
        test = model.evaluate(test_data, return_dict=True, verbose=0)

    if chief:
        with atomic_path(os.path.join(config.output_dir, "model.keras")) as tmp:
            _saveable(student, info, policy).save(tmp)
    metrics = {
        "model": info.name, "dataset": config.dataset, "input_shape": list(input_shape),
        "epochs": state["epoch"], "batch_size": batch_size, "steps_per_epoch": steps,
        "params": student.count_params(), "history": state["history"],
        "test": {"loss": test["loss"]} if transfer else _test_metrics(test, num_outputs),
        "train_seconds": state["train_seconds"], "wall_seconds_this_run": time.time() - started,
    }
    metrics = finite_or_none(metrics)
    if chief:
        write_json(os.path.join(config.output_dir, "metrics.json"), metrics)
    return metrics
