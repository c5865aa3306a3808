"""The run plan: what a training run will do, computed and printed before it does anything.

A plan is made in two steps. `make_plan` reads the run directory's state.json (a resume must be
the same run) and fixes what needs no model and no data: the input shape and why, the global
batch and the batch per replica, gradient accumulation and the dtype policy; it prints them
first. Once the stage has built its model and the data is read, `RunPlan.with_data` adds the
epochs, the steps per epoch and the class count, and with them the run's identity: what
state.json records and a resume must match.
"""

import dataclasses
import os

from effkeras import data, models
from effkeras.errors import InputError
from effkeras.training import distribute
from effkeras.training.rundir import check_same_run, check_state_fields, log, read_state, shape_text

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


def default_input_shape(info, dataset):
    """The input shape a run trains at when --input_shape is not given, and why.

    A dataset whose images are smaller than the model's default input (Fashion-MNIST, CIFAR,
    synthetic) trains at its own size padded up to a multiple of the model's total stride
    (min_input_size), with its channels when the model takes them. ImageNet, and datasets of
    images at least as large as the default, train at the model's default input.

    Args:
        info: the model's registry entry (effkeras.models.info).
        dataset: a dataset name (effkeras.data.DATASETS).

    Returns:
        (input shape, why): a (height, width, channels) tuple and one phrase for the log.
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
    how = "padded to " + "x".join(map(str, padded)) if padded != (height, width) else "as is"
    if channels_used != channels:
        how += f", channels tiled to {channels_used}"
    default = (
        f"; its default {shape_text(info.input_shape)} is for ImageNet"
        if info.input_shape[0] > 32
        else ""
    )
    return shape, (
        f"{title}'s {shape_text((height, width, channels))} {how} ({info.name} takes "
        f"multiples of {step}{default})"
    )


def known_classes(dataset):
    """The class count of `dataset` when its table gives one (None: ImageNet, whose classes are
    its folders)."""
    if dataset == "synthetic":
        return SYNTHETIC_CLASSES
    return data.DATASETS[dataset][0]


@dataclasses.dataclass(frozen=True)
class RunPlan:
    """What one training run does.

    Attributes:
        model: the registry name.
        dataset: the dataset's name.
        stage: the stage's name (effkeras.training.stages).
        input_shape: (height, width, channels) the model trains at, and `input_why`, why.
        batch_size: the global batch, split over `replicas` replicas.
        accumulation: batches whose mean gradient makes one update.
        dtype_policy: the Keras dtype policy the model is built under.
        initial_epoch: epochs already done (a resume), 0 for a fresh run.
        validation_size: training examples held out (None: none).
        extra_identity: (key, value) pairs a stage adds to the identity (QAT: init_from, qat).
        strategy: the strategy in words (effkeras.training.distribute.describe).
        epochs, steps_per_epoch, num_classes: None until `with_data`.
    """

    model: str
    dataset: str
    stage: str
    input_shape: tuple
    input_why: str
    batch_size: int
    replicas: int
    accumulation: int
    dtype_policy: str
    initial_epoch: int
    validation_size: int
    extra_identity: tuple
    strategy: str
    epochs: int = None
    steps_per_epoch: int = None
    num_classes: int = None

    @property
    def batch_per_replica(self):
        return self.batch_size // self.replicas

    @property
    def update_batch(self):
        """Examples per optimizer update: the global batch x accumulation."""
        return self.batch_size * self.accumulation

    @property
    def identity(self):
        """What the run is, as state.json records it; a resume must match it."""
        return {
            "model": self.model,
            "dataset": self.dataset,
            "input_shape": list(self.input_shape),
            "num_classes": self.num_classes,
            "validation_size": self.validation_size,
            **dict(self.extra_identity),
        }

    def input_line(self):
        return f"input {shape_text(self.input_shape)}: {self.input_why}"

    def strategy_line(self):
        return (
            f"strategy: {self.strategy}; global batch {self.batch_size}"
            + (f" ({self.batch_per_replica} per replica)" if self.replicas > 1 else "")
            + (
                f" x {self.accumulation} accumulated = {self.update_batch} per update"
                if self.accumulation > 1
                else ""
            )
            + (f"; {self.dtype_policy}" if self.dtype_policy != "float32" else "")
        )

    def steps_line(self):
        return (
            f"plan: {self.epochs} epoch{'s' if self.epochs != 1 else ''} of "
            f"{self.steps_per_epoch} steps, {self.num_classes} classes"
        )

    def with_data(self, epochs, num_classes, num_examples, steps_per_epoch=None):
        """The plan completed with what the model and the data tell; prints its steps.

        Args:
            epochs: the run's epochs (the stage's: --epochs or its recipe's).
            num_classes: the classes of the train split.
            num_examples: the examples of the train split.
            steps_per_epoch: --steps_per_epoch (None: one pass over the train split).

        Returns:
            A RunPlan with epochs, steps_per_epoch (whole updates when accumulating: a
            checkpoint never holds half a sum) and num_classes.

        Raises:
            InputError: an epoch has fewer batches than --grad_accumulation.
        """
        steps = steps_per_epoch or max(1, num_examples // self.batch_size)
        if self.accumulation > 1:
            if steps < self.accumulation:
                raise InputError(
                    f"--grad_accumulation={self.accumulation} needs at least "
                    f"{self.accumulation} batches per epoch, there are {steps}: "
                    f"lower it or the batch size"
                )
            steps -= steps % self.accumulation
        plan = dataclasses.replace(
            self, epochs=epochs, steps_per_epoch=steps, num_classes=num_classes
        )
        log(plan.steps_line())
        return plan


def _input_shape(stage, state, state_path):
    """(input shape, why): the stage's own (a fine-tuned model's), --input_shape, the resumed
    run's, or the default for the dataset."""
    config = stage.config
    own = stage.input_shape()
    if own is not None:
        return own
    if config.input_shape:
        return tuple(config.input_shape), "--input_shape"
    if state is not None and state.get("input_shape"):
        return tuple(state["input_shape"]), f"the run's own, from {state_path}"
    return default_input_shape(stage.info, config.dataset)


def make_plan(stage, strategy):
    """The first part of a run's plan, printed; and its state.json when it resumes.

    Args:
        stage: the run's stage (effkeras.training.stages.Stage: its config, model and recipe).
        strategy: the tf.distribute strategy the run trains under.

    Returns:
        (RunPlan without epochs, steps and classes yet, the run's state dict or None).

    Raises:
        InputError: the global batch does not split over the replicas; state.json is broken or
            holds another run; the input shape does not suit the model.
    """
    config, info, recipe = stage.config, stage.info, stage.recipe
    batch_size = config.batch_size or recipe.batch_size
    replicas = strategy.num_replicas_in_sync
    if batch_size % replicas:
        raise InputError(
            f"the global batch {batch_size} does not split over {replicas} replicas: "
            f"use a --batch_size that is a multiple of {replicas}"
        )
    policy = stage.dtype_policy()
    state_path = os.path.join(config.output_dir, "state.json")
    state = read_state(config.output_dir)
    if state is not None:
        check_same_run(
            config.output_dir,
            state,
            {
                "model": info.name,
                "dataset": config.dataset,
                "input_shape": config.input_shape and tuple(config.input_shape),
            },
        )
        check_state_fields(state_path, state)
    input_shape, why = _input_shape(stage, state, state_path)
    plan = RunPlan(
        model=info.name,
        dataset=config.dataset,
        stage=stage.name,
        input_shape=models.check_input_shape(info, input_shape),
        input_why=why,
        batch_size=batch_size,
        replicas=replicas,
        accumulation=config.grad_accumulation or 1,
        dtype_policy=policy,
        initial_epoch=state["epoch"] if state else 0,
        validation_size=config.validation_size,
        extra_identity=tuple(stage.identity().items()),
        strategy=distribute.describe(strategy),
    )
    log(plan.input_line())
    log(plan.strategy_line())
    return plan, state
