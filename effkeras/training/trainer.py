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

A run is plan -> data -> model -> stage -> compile -> fit -> finish (`_run`): the plan
(effkeras.training.plan) is computed and printed first, then the stage (effkeras.training.stages:
scratch, distillation, knowledge transfer, QAT or fine-tuning) builds, compiles and saves its
models. Before training, the input shape is chosen (the dataset's own size, padded to what the model
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
layer supports it, never under a multi-replica strategy); `run_eagerly` runs each step op by op
instead (nothing traced: for debugging, and for runs of a few steps, which tracing would dominate).
"""

import contextlib
import math
import os
import sys
import time

import keras

from effkeras import data
from effkeras.data import augment
from effkeras.errors import InputError
from effkeras.fileio import atomic_path, plain, write_json
from effkeras.training import callbacks as recipe_callbacks
from effkeras.training import distribute, memory, recipes, stages
from effkeras.training.config import TrainConfig, check_config
from effkeras.training.plan import DATASET_IMAGES, SYNTHETIC_EXAMPLES, known_classes, make_plan
from effkeras.training.rundir import (
    EpochCheckpoint,
    OutputDirLock,
    log,
    open_state,
    restore,
    shape_text,
)

__all__ = ["TrainConfig", "train"]


def train(config):
    """Trains (or resumes) the run `config` asks for: each of its stages in turn.

    Args:
        config: a TrainConfig.

    Returns:
        The metrics dict also written to <output_dir>/metrics.json (of the last stage).

    Raises:
        InputError: a flag, the run directory or the data that cannot be right (the message
            says what to do); training that diverged.
    """
    if config.qat and config.finetune:
        raise InputError("--qat and --finetune are two runs: give one")
    if not (config.model or config.qat or config.finetune):
        raise InputError("--model is required (or --qat with --init_from)")
    strategy = distribute.make_strategy(  # before any op
        config.strategy, config.cpu_devices, config.cluster_timeout
    )
    if config.deterministic:
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()
    run_stages = stages.make_stages(config, strategy)
    check_config(run_stages[-1].config, run_stages[-1].recipe)
    chief = distribute.is_chief(strategy)
    with OutputDirLock(config.output_dir) if chief else contextlib.nullcontext():
        for stage in run_stages:
            if stage.banner:
                log(stage.banner)
            metrics = _run(stage, strategy=strategy, chief=chief)
        return metrics


def _run(stage, *, strategy, chief=True):
    """One run of `stage` into its config.output_dir under `strategy`: plan -> data -> model
    -> stage -> compile -> fit -> finish. `chief`: whether this process writes the run's
    files."""
    config = stage.config
    plan, state = make_plan(stage, strategy)
    keras.utils.set_random_seed(config.seed)
    # The model (and so the memory estimate) before the data: a synthetic set is generated at
    # the input shape, so a shape that cannot fit must be refused before it is made.
    classes = known_classes(config.dataset)
    splits = None if classes else _load_splits(config, plan, stage.recipe)  # ImageNet: folders
    built = stage.build(plan, classes or splits[0].num_classes, strategy)
    check_memory(
        built.student,
        info=stage.info,
        recipe=built.recipe,
        plan=plan,
        teacher=built.teacher,
        batch_from_flag=bool(config.batch_size),
    )
    train_split, test_split = splits or _load_splits(config, plan, stage.recipe)
    if train_split.num_classes != built.num_classes:  # defensive: the data and its table differ
        built = stage.build(plan, train_split.num_classes, strategy)
    stage.prepare(built, train_split, fresh=state is None)
    plan = plan.with_data(
        stage.epochs(built.recipe),
        built.num_classes,
        train_split.num_examples,
        config.steps_per_epoch,
    )
    state = open_state(config.output_dir, state, plan.identity)
    if plan.replicas > 1:
        distribute.synchronize_batch_norm(built.student)
    train_data, test_data = _fit_data(train_split, test_split, built, plan, config.seed)
    log(recipes.describe_learning_rate(built.recipe, plan.update_batch, config.learning_rate))
    with strategy.scope():
        stage.compile(built, plan)
        if plan.accumulation > 1:
            distribute.accumulate_across_replicas(built.model.optimizer)
        if state.get("checkpoint"):
            restore(built.model, config.output_dir, state["checkpoint"], plan.identity)
            log(f"Resuming {plan.model} from epoch {plan.initial_epoch} in {config.output_dir}")
    distribute.build_for_fit(built.model, strategy, train_data)
    started = time.time()
    with train_split.errors_as_input_errors(), test_split.errors_as_input_errors():
        test = _fit(
            stage,
            built,
            plan,
            state,
            train_data,
            test_data,
            test_steps=-(-test_split.num_examples // plan.batch_size),
            chief=chief,
        )
    return _finish(stage, built, plan, state, test, started, chief=chief)


def _load_splits(config, plan, recipe):
    """(train, test) DataSplits at the plan's input shape and batch; the train split's epochs
    from the resumed one on, in the order an uninterrupted run sees them."""
    train_augment = dict(recipe.augment).get(config.dataset)
    train_split = data.load(
        config.dataset,
        "train",
        input_shape=plan.input_shape,
        batch_size=plan.batch_size,
        data_dir=config.data_dir,
        seed=config.seed,
        first_epoch=plan.initial_epoch,
        augment_with=train_augment,
        validation_size=config.validation_size,
    )
    # A recipe that trains on squashed images validates on them too (ERN's official code).
    test_split = data.load(
        config.dataset,
        "test",
        input_shape=plan.input_shape,
        batch_size=plan.batch_size,
        data_dir=config.data_dir,
        augment_with=("squash",) if "squash" in (train_augment or ()) else None,
    )
    return train_split, test_split


def _fit_data(train_split, test_split, built, plan, seed):
    """The (train, test) datasets fit takes: the train split endless (fit's epochs are
    `steps_per_epoch` batches), batches mixed for a recipe with a Mix (soft labels, test labels
    one-hot too), labels repeated for a model with several outputs."""
    train_data, test_data = train_split.dataset, test_split.dataset
    mix = built.recipe.mix
    if mix is not None:
        train_data = train_data.map(
            augment.mix_batches(
                plan.num_classes,
                mixup_alpha=mix.mixup_alpha,
                cutmix_alpha=mix.cutmix_alpha,
                switch_prob=mix.switch_prob,
                seed=seed + plan.initial_epoch,
            )
        )
        test_data = test_data.map(augment.one_hot_labels(plan.num_classes))
    num_outputs = len(built.student.outputs)
    return (
        recipes.repeat_labels(train_data, num_outputs),
        recipes.repeat_labels(test_data, num_outputs),
    )


def _fit(stage, built, plan, state, train_data, test_data, *, test_steps, chief):
    """Fits built.model from the plan's initial epoch to its last, one checkpoint per epoch;
    returns evaluate's logs on the test data. InputError when the loss diverged."""
    config, recipe, model = stage.config, built.recipe, built.model
    guard = recipe_callbacks.StopOnNaN()
    checkpoint = EpochCheckpoint(config.output_dir, state, guard, write=chief)
    if recipe.ema:  # validation and checkpoints see the EMA weights
        checkpoint = recipe_callbacks.EmaWeights(checkpoint, restored=bool(state.get("checkpoint")))
    callbacks = [
        guard,
        recipe_callbacks.Eta(
            plan.epochs - plan.initial_epoch, plan.steps_per_epoch, test_steps, print_fn=log
        ),
        *recipe_callbacks.make(recipe.callbacks, plan.epochs),
        *stage.callbacks(built, plan),
        checkpoint,
        *([keras.callbacks.TensorBoard(os.path.join(config.output_dir, "logs"))] if chief else []),
    ]
    verbose = config.verbose if config.verbose is not None else 1 if sys.stdout.isatty() else 2
    if plan.initial_epoch < plan.epochs:
        model.fit(
            train_data,
            epochs=plan.epochs,
            initial_epoch=plan.initial_epoch,
            steps_per_epoch=plan.steps_per_epoch,
            validation_data=test_data,
            callbacks=callbacks,
            shuffle=False,
            verbose=verbose,
        )
    if guard.failed:
        kept = (
            f"{config.output_dir} keeps the last good checkpoint, {state['checkpoint']} "
            f"(epoch {state['epoch']}): rerun with a lower --learning_rate to resume from it"
            if state.get("checkpoint")
            else "no epoch was saved: rerun with a lower --learning_rate"
        )
        raise InputError(f"training diverged: {guard.failed}; {kept}")
    stage.trained(built)
    return model.evaluate(test_data, return_dict=True, verbose=0)


def _finish(stage, built, plan, state, test, started, *, chief):
    """Writes model.keras (the stage's saveable student) and metrics.json; returns the
    metrics."""
    output_dir, student = stage.config.output_dir, built.student
    if chief:
        with atomic_path(os.path.join(output_dir, "model.keras")) as tmp:
            stage.saveable(student, plan.dtype_policy).save(tmp)
    metrics = {
        "model": plan.model,
        "dataset": plan.dataset,
        "input_shape": list(plan.input_shape),
        "epochs": state["epoch"],
        "batch_size": plan.batch_size,
        "steps_per_epoch": plan.steps_per_epoch,
        "params": student.count_params(),
        "history": state["history"],
        "test": stage.test_metrics(test, len(student.outputs)),
        "train_seconds": state["train_seconds"],
        "wall_seconds_this_run": time.time() - started,
    }
    metrics = plain(metrics)
    if chief:
        write_json(os.path.join(output_dir, "metrics.json"), metrics)
    return metrics


# --- memory -----------------------------------------------------------------------------------


def check_memory(model, *, info, recipe, plan, teacher=None, batch_from_flag=False):
    """Prints the memory estimate of training `model` as `plan` says, and refuses a run that
    would take more than memory.USABLE_FRACTION of this machine's memory (of one GPU, for its
    share of the global batch, when there are GPUs).

    Args:
        model: the student (effkeras.training.memory.estimate walks its layers).
        info: its registry entry (the input sizes it takes).
        recipe: the run's recipe (optimizer slots, EMA).
        plan: the RunPlan (input shape, global batch, replicas, dataset).
        teacher: the frozen teacher a distilling run also holds, or None.
        batch_from_flag: whether --batch_size gave the batch (else the recipe did).

    Returns:
        The memory.Estimate.

    Raises:
        InputError: naming a --batch_size (or --input_shape) that fits.
    """
    input_shape, batch_size, dataset = plan.input_shape, plan.batch_size, plan.dataset
    replicas = plan.replicas
    if dataset in DATASET_IMAGES:
        _, shape, count = DATASET_IMAGES[dataset]
        dataset_bytes = (
            count * math.prod(shape) if count else SYNTHETIC_EXAMPLES * math.prod(input_shape)
        )
    else:
        dataset_bytes = 0  # files decoded as they are read
    slots = memory.optimizer_slots(recipe.optimizer) + (1 if recipe.ema else 0)  # EMA: a copy
    est = memory.estimate(
        model,
        batch_size=batch_size,
        input_shape=input_shape,
        optimizer_slots=slots,
        dataset_bytes=dataset_bytes,
        teacher=teacher,
    )
    gpu = memory.gpu_memory()
    if gpu and replicas > 1:  # each GPU holds the model and its share of the batch
        est = memory.estimate(
            model,
            batch_size=batch_size // replicas,
            input_shape=input_shape,
            optimizer_slots=slots,
            dataset_bytes=dataset_bytes,
            teacher=teacher,
        )
    if gpu:
        limit, where, in_use = gpu, "this GPU's", 0
        est.data = 0  # the data pipeline stays in host memory
    else:
        limit, where, in_use = memory.machine_memory(), "this machine's", memory.resident_bytes()
    budget = memory.USABLE_FRACTION * limit - in_use
    log(
        f"memory: training needs {est.describe()}"
        + (f", + {memory.gib(in_use)} in use now" if in_use else "")
        + f"; {where} memory is {memory.gib(limit)}"
    )
    if est.total <= budget:
        return est
    need = (
        f"training {info.name} at input {shape_text(input_shape)} with batch {batch_size} "
        f"needs ~{memory.gib(est.total)}, more than {memory.USABLE_FRACTION:.0%} of {where} "
        f"{memory.gib(limit)}" + (f" ({memory.gib(in_use)} in use)" if in_use else "")
    )
    fits = memory.power_of_two_at_most(memory.largest_batch(est, budget))
    fits *= replicas if gpu else 1  # a global batch
    if fits:
        source = "" if batch_from_flag else f" (the recipe's batch is {batch_size})"
        raise InputError(
            f"{need}{source}: use --batch_size={fits} or less, or a smaller --input_shape"
        )
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
            raise InputError(
                f"{need}, even at batch 1: use --input_shape={side},{side},{channels} "
                f"with --batch_size={batch}" + (" or less" if batch > 1 else "")
            )
    raise InputError(
        f"{need}: its parameters and optimizer state alone need "
        f"{memory.gib(est.parameters + est.runtime)}; train it on a machine with more "
        f"memory"
    )
