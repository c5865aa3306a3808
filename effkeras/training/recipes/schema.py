"""The schema of a training recipe and the builders that turn one into Keras objects.

A Recipe composes small frozen dataclasses that hold a paper's numbers (loss, optimizer, schedule,
weight-decay groups, augmentation, batch-level mixing, a knowledge-transfer stage); plain
functions look their `kind`/`name` up in a table (LOSSES is in effkeras.training.losses,
OPTIMIZERS here, SCHEDULES in schedules.py) and build the Keras objects. `compile_model` does it
for a given budget, so the schedule always spans the epochs actually asked for. The peak
learning rate is given at `base_batch_size` and scales linearly with the batch size (Goyal et
al., arXiv 1706.02677). The recipes themselves are data, one module per family beside this one
(effkeras.training.recipes).
"""

import dataclasses

import keras

from effkeras.errors import InputError
from effkeras.training import losses
from effkeras.training.recipes.schedules import SCHEDULES


@dataclasses.dataclass(frozen=True)
class Loss:
    """What the model minimises.

    kind "cross_entropy": CE of the labels, with label smoothing.
    kind "distillation" (needs a teacher, --teacher): α·T²·H(teacher_T, student_T) + (1-α)·CE,
    where H(p, q) = -Σ p·log q of the softmaxes at temperature T. H is KL(teacher_T || student_T)
    plus the teacher's entropy, a constant: same gradients as the KL form, and α=1, T=1 is
    exactly ReCU's stage-2 loss -Σ softmax(teacher)·log_softmax(student).
    output_weights: for a model with several outputs (early exits), the total is the weighted
    sum of the per-output losses; () weighs each output 1.0.
    """

    kind: str = "cross_entropy"
    label_smoothing: float = 0.0
    alpha: float = 1.0  # distillation: weight of the teacher term
    temperature: float = 1.0  # distillation
    output_weights: tuple = ()

    def __post_init__(self):
        if self.kind not in losses.LOSSES:
            raise ValueError(f"loss kind {self.kind!r} is not one of {sorted(losses.LOSSES)}")
        if not 0.0 <= self.alpha <= 1.0 or self.temperature <= 0:
            raise ValueError(
                f"distillation needs 0 <= alpha <= 1 and temperature > 0, got "
                f"alpha={self.alpha}, temperature={self.temperature}"
            )

    @property
    def needs_teacher(self):
        return self.kind == "distillation"


@dataclasses.dataclass(frozen=True, eq=False)
class Optimizer:
    """An optimizer and its hyper-parameters; epsilon None keeps Keras' default (1e-7).

    Compares equal to its name too (`recipe.optimizer == "adam"`).
    """

    name: str  # a key of OPTIMIZERS: "sgd", "adam", "adamw", "rmsprop"
    momentum: float = 0.0  # sgd, rmsprop
    nesterov: bool = False  # sgd
    rho: float = 0.9  # rmsprop: decay of the squared-gradient average
    epsilon: float = None  # adam, adamw, rmsprop

    def __post_init__(self):
        if self.name not in OPTIMIZERS:
            raise ValueError(f"optimizer {self.name!r} is not one of {sorted(OPTIMIZERS)}")

    def __eq__(self, other):
        if isinstance(other, str):
            return self.name == other
        return isinstance(other, Optimizer) and dataclasses.astuple(self) == dataclasses.astuple(
            other
        )

    def __hash__(self):
        return hash(dataclasses.astuple(self))


@dataclasses.dataclass(frozen=True)
class Schedule:
    """The learning rate over the run (`peak` is the recipe's rate scaled to the batch size).

    "cosine": linear warm-up from 0 for `warmup_epochs` of the recipe's epochs (the warm-up keeps
      its share of the run when --epochs changes), then cosine decay to `final_learning_rate` (0
      by default) at the last step: final + (peak - final)·(1 + cos(π·t))/2, as timm's min_lr.
      The final rate is absolute: it does not scale with the batch size.
    "multistep": peak·gamma^k after the k-th milestone; milestones are fractions of the run.
    "exponential": peak·gamma^epoch, decayed once per epoch.
    "linear": peak decayed linearly to 0 at the last step.
    "constant": peak throughout.
    """

    kind: str = "cosine"
    warmup_epochs: float = 0  # cosine only
    milestones: tuple = ()  # multistep
    gamma: float = 0.1  # multistep: factor per milestone; exponential: factor per epoch
    final_learning_rate: float = 0.0  # cosine only: the rate at the last step

    def __post_init__(self):
        if self.kind not in SCHEDULES:
            raise ValueError(f"schedule {self.kind!r} is not one of {sorted(SCHEDULES)}")
        if self.warmup_epochs and self.kind != "cosine":
            raise ValueError("only the cosine schedule has a warm-up")
        if self.final_learning_rate and self.kind != "cosine":
            raise ValueError("only the cosine schedule has a final learning rate")
        if self.final_learning_rate < 0:
            raise ValueError(f"final_learning_rate must be >= 0, got {self.final_learning_rate}")
        if list(self.milestones) != sorted(self.milestones) or not all(
            0 < m < 1 for m in self.milestones
        ):
            raise ValueError(
                f"milestones must be increasing fractions of the run in (0, 1), "
                f"got {self.milestones}"
            )


@dataclasses.dataclass(frozen=True)
class WeightDecay:
    """Decoupled weight decay in the optimizer (variable -= rate·lr·variable, as Keras and AdamW).

    Coupled L2 (a penalty in the loss, as PyTorch's SGD/Adam `weight_decay` and TF's l2_loss)
    lives in the models' kernel regularizers, not here.
    exclude: variable names (regular expressions searched in `variable.name`, e.g. "gamma",
      "beta", "bias") that get no decay; decay_vectors=False also spares every variable of rank
      <= 1 (BatchNorm, biases, scales).
    """

    rate: float = 0.0
    exclude: tuple = ()
    decay_vectors: bool = True


@dataclasses.dataclass(frozen=True)
class Mix:
    """Batch-level mixing of images and labels, after batching (effkeras.data.augment.mix_batches).

    Each batch gets CutMix with probability `switch_prob`, Mixup otherwise (one of them when only
    one alpha is set); λ ~ Beta(alpha, alpha). The labels become soft (one-hot, mixed), so the
    loss and metrics of a recipe with a Mix take one-hot labels, validation's too.
    """

    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    switch_prob: float = 0.5

    def __post_init__(self):
        if (
            self.mixup_alpha < 0
            or not 0 <= self.cutmix_alpha <= 1
            or not (self.mixup_alpha or self.cutmix_alpha)
        ):
            raise ValueError(
                f"a Mix needs mixup_alpha >= 0 and cutmix_alpha in [0, 1] (Keras' "
                f"CutMix takes no more), not both 0; got {self.mixup_alpha}, "
                f"{self.cutmix_alpha}"
            )
        if not 0 <= self.switch_prob <= 1:
            raise ValueError(f"switch_prob must be in [0, 1], got {self.switch_prob}")


@dataclasses.dataclass(frozen=True)
class Transfer:
    """Stage 1 of a two-stage recipe: blockwise knowledge transfer from the teacher
    (effkeras.training.transfer) for `epochs_per_block` epochs per block, at a constant
    `learning_rate` (at the recipe's base batch size) with one optimizer through all blocks;
    then the recipe itself runs as stage 2 from the transferred student."""

    epochs_per_block: int
    learning_rate: float
    optimizer: Optimizer


@dataclasses.dataclass(frozen=True)
class Recipe:
    """How a model trains, as a paper gives it: the fields below, each one of the small
    dataclasses above or a plain value.

    Raises:
        ValueError: a knowledge-transfer stage without a distillation loss, an `ema` outside
            [0, 1), or a Mix in a distilling recipe (it takes integer labels).
    """

    optimizer: Optimizer
    learning_rate: float  # peak, at base_batch_size
    epochs: int
    batch_size: int
    base_batch_size: int  # the learning rate scales linearly with batch_size / base_batch_size
    schedule: Schedule = dataclasses.field(default_factory=Schedule)
    loss: Loss = dataclasses.field(default_factory=Loss)
    weight_decay: WeightDecay = dataclasses.field(default_factory=WeightDecay)
    augment: tuple = ()  # (dataset, augmentation names) pairs; other datasets keep their defaults
    callbacks: tuple = ()  # names in effkeras.training.callbacks.CALLBACKS
    mixed_precision: bool = False  # the paper trained in fp16 AMP: see dtype_policy()
    mix: Mix = None  # batch-level Mixup/CutMix on every dataset; None: integer labels
    # Decay of an exponential moving average of the trainable weights, updated every step (the
    # optimizer's use_ema); 0: none. With one, the EMA weights are the model: validation, every
    # checkpoint and the final model.keras (effkeras.training.callbacks.EmaWeights).
    ema: float = 0.0
    transfer: Transfer = None  # a stage 1 before this recipe (needs a teacher)

    def __post_init__(self):
        if self.transfer is not None and not self.loss.needs_teacher:
            raise ValueError(
                "a recipe with a knowledge-transfer stage distils: it needs a distillation loss"
            )
        if not 0 <= self.ema < 1:
            raise ValueError(f"ema must be in [0, 1), got {self.ema}")
        if self.mix is not None and self.loss.needs_teacher:
            raise ValueError("a distilling recipe takes integer labels: it cannot have a Mix")

    @property
    def epsilon(self):
        return self.optimizer.epsilon

    @property
    def soft_labels(self):
        """True when the loss and metrics take one-hot (mixed) labels rather than integers."""
        return self.mix is not None

    def transfer_stage(self, blocks, epochs_per_block=None):
        """Stage 1 (knowledge transfer) as a recipe of its own.

        Args:
            blocks: the student's block count.
            epochs_per_block: epochs per block (None: the Transfer's).

        Returns:
            A Recipe of blocks x epochs_per_block epochs at the Transfer's constant rate and
            optimizer, with this recipe's batch and augmentation.
        """
        transfer = self.transfer
        return Recipe(
            transfer.optimizer,
            transfer.learning_rate,
            epochs=blocks * (epochs_per_block or transfer.epochs_per_block),
            batch_size=self.batch_size,
            base_batch_size=self.base_batch_size,
            schedule=Schedule("constant"),
            augment=self.augment,
        )

    def qat_stage(self):
        """int8 quantization-aware fine-tuning of a trained float model (effkeras.qat) as a
        recipe of its own.

        Returns:
            A Recipe of QAT_EPOCHS of Adam at QAT_LEARNING_RATE with a cosine decay, with this
            recipe's batch, augmentation and label smoothing (no teacher).
        """
        return Recipe(
            Optimizer("adam"),
            QAT_LEARNING_RATE,
            epochs=QAT_EPOCHS,
            batch_size=self.batch_size,
            base_batch_size=self.base_batch_size,
            loss=Loss(label_smoothing=self.loss.label_smoothing),
            augment=self.augment,
        )


# QAT starts from a trained float model and only has to adapt it to int8 rounding: a short run
# at a low rate (Krishnamoorthi, arXiv 1806.08342 §3.2, fine-tunes float models this way).
QAT_EPOCHS = 2
QAT_LEARNING_RATE = 1e-4


def peak_learning_rate(recipe, batch_size):
    """The recipe's peak rate scaled linearly to `batch_size` (Goyal et al., arXiv 1706.02677).

    Args:
        recipe: a Recipe.
        batch_size: the examples of one optimizer update.

    Returns:
        recipe.learning_rate x batch_size / recipe.base_batch_size.
    """
    return recipe.learning_rate * batch_size / recipe.base_batch_size


def describe_learning_rate(recipe, batch_size, learning_rate=None):
    """One line for the log: the peak rate this run uses and where it comes from.

    Args:
        recipe: a Recipe.
        batch_size: the examples of one optimizer update.
        learning_rate: --learning_rate (None: the recipe's, scaled).

    Returns:
        The line, without a newline.
    """
    if learning_rate is not None:
        return f"learning rate {learning_rate:g} (--learning_rate) at batch {batch_size}"
    return (
        f"learning rate {peak_learning_rate(recipe, batch_size):g} at batch {batch_size}: the "
        f"recipe's {recipe.learning_rate:g} at batch {recipe.base_batch_size}, scaled linearly"
    )


def learning_rate_schedule(recipe, *, epochs, steps_per_epoch, batch_size, learning_rate=None):
    """The recipe's schedule over exactly `epochs` epochs of `steps_per_epoch` steps.

    Args:
        recipe: a Recipe.
        epochs: the run's epochs.
        steps_per_epoch: optimizer steps (batches) per epoch.
        batch_size: the examples of one update, which the recipe's rate scales with.
        learning_rate: the peak; None: the recipe's, scaled by batch_size / base_batch_size.

    Returns:
        A Keras LearningRateSchedule, or the rate itself for a constant schedule.
    """
    peak = learning_rate if learning_rate is not None else peak_learning_rate(recipe, batch_size)
    total = max(1, epochs * steps_per_epoch)
    return SCHEDULES[recipe.schedule.kind](recipe.schedule, recipe, peak, total, steps_per_epoch)


# --- optimizers: (optimizer, learning rate, decoupled decay or None, **common keyword arguments
# of Keras optimizers) -> Keras optimizer --------------------------------------------------------


def _epsilon(optimizer):
    return {} if optimizer.epsilon is None else {"epsilon": optimizer.epsilon}


OPTIMIZERS = {
    "sgd": lambda o, lr, wd, **kw: keras.optimizers.SGD(
        lr, momentum=o.momentum, nesterov=o.nesterov, weight_decay=wd, **kw
    ),
    "adam": lambda o, lr, wd, **kw: keras.optimizers.Adam(lr, weight_decay=wd, **_epsilon(o), **kw),
    "adamw": lambda o, lr, wd, **kw: keras.optimizers.AdamW(
        lr, weight_decay=wd or 0.0, **_epsilon(o), **kw
    ),
    "rmsprop": lambda o, lr, wd, **kw: keras.optimizers.RMSprop(
        lr, rho=o.rho, momentum=o.momentum, weight_decay=wd, **_epsilon(o), **kw
    ),
}


def make_optimizer(recipe, schedule, model=None, accumulation=1):
    """The recipe's optimizer on `schedule`, with its decoupled weight-decay groups (`model`
    supplies the variables when rank <= 1 ones are spared), its weights' EMA (Keras' use_ema,
    ema_momentum = recipe.ema) and, for accumulation > 1, Keras' gradient_accumulation_steps
    (the schedule still counts batches: Keras evaluates it at every batch).

    Args:
        recipe: a Recipe.
        schedule: the learning rate (learning_rate_schedule's).
        model: the model it will train (needed when rank <= 1 variables are spared decay).
        accumulation: batches whose mean gradient makes one update.

    Returns:
        A Keras optimizer.
    """
    decay = recipe.weight_decay
    options = {"use_ema": True, "ema_momentum": recipe.ema} if recipe.ema else {}
    if accumulation > 1:
        options["gradient_accumulation_steps"] = accumulation
    optimizer = OPTIMIZERS[recipe.optimizer.name](
        recipe.optimizer, schedule, decay.rate or None, **options
    )
    if decay.rate and (decay.exclude or not decay.decay_vectors):
        vectors = (
            []
            if decay.decay_vectors or model is None
            else [v for v in model.trainable_variables if len(v.shape) <= 1]
        )
        optimizer.exclude_from_weight_decay(var_list=vectors, var_names=list(decay.exclude))
    return optimizer


DTYPE_POLICIES = ("float32", "mixed_float16", "mixed_bfloat16")


def dtype_policy(recipe, asked=None):
    """The Keras dtype policy to build the model under: `asked` (one of DTYPE_POLICIES), else
    "mixed_float16" for a mixed-precision recipe on a machine with a GPU, else "float32".

    Layers whose maths needs float32 keep it under either mixed policy: the kernel quantizers
    with their scales (effkeras.layers.quantized), LerpPSA and the B-spline activations
    (effkeras.layers.activations), and the loss's softmax (Keras computes losses in float32).
    Export needs a float32 model: the trainer writes model.keras rebuilt under "float32".

    Args:
        recipe: a Recipe.
        asked: --dtype_policy (None: the recipe's).

    Returns:
        A name in DTYPE_POLICIES.

    Raises:
        InputError: an unknown policy, or mixed_float16 on a machine without a GPU.
    """
    import tensorflow as tf

    gpu = bool(tf.config.list_physical_devices("GPU"))
    if asked is None:
        return "mixed_float16" if recipe.mixed_precision and gpu else "float32"
    if asked not in DTYPE_POLICIES:
        raise InputError(
            f"--dtype_policy must be one of {', '.join(DTYPE_POLICIES)}, got "
            f"{asked!r} (leave it out for the recipe's)"
        )
    if asked == "mixed_float16" and not gpu:
        raise InputError(
            "mixed_float16 needs a GPU (CPUs have no fast float16 kernels); use "
            "--dtype_policy=mixed_bfloat16 or float32 here"
        )
    return asked


# --- loss and metrics ----------------------------------------------------------------------------


def loss_weights(recipe, num_outputs):
    """The recipe's weight per output; 1.0 each by default (RANet, arXiv 2003.00634, sums its
    exits' losses).

    Args:
        recipe: a Recipe.
        num_outputs: the model's outputs.

    Returns:
        A list of num_outputs floats.

    Raises:
        InputError: the recipe weighs another number of outputs.
    """
    weights = tuple(recipe.loss.output_weights) or (1.0,) * num_outputs
    if len(weights) != num_outputs:
        raise InputError(
            f"the recipe weighs {len(weights)} outputs but the model has {num_outputs}"
        )
    return list(weights)


def accuracy_metrics(soft_labels=False):
    """top1/top5 of integer labels, or of one-hot (mixed) labels, whose argmax counts.

    Args:
        soft_labels: whether the labels are one-hot (recipe.soft_labels).

    Returns:
        [top1, top5] Keras metrics.
    """
    if soft_labels:
        return [
            keras.metrics.CategoricalAccuracy(name="top1"),
            keras.metrics.TopKCategoricalAccuracy(k=5, name="top5"),
        ]
    return [
        keras.metrics.SparseCategoricalAccuracy(name="top1"),
        keras.metrics.SparseTopKCategoricalAccuracy(k=5, name="top5"),
    ]


def make_loss(recipe):
    """Cross-entropy against logits with the recipe's label smoothing: of integer labels, or of
    soft labels for a recipe that mixes batches (timm's SoftTargetCrossEntropy on smoothed
    targets is Keras' CategoricalCrossentropy with label_smoothing).

    Args:
        recipe: a Recipe.

    Returns:
        A Keras loss.
    """
    if recipe.soft_labels:
        return keras.losses.CategoricalCrossentropy(
            from_logits=True, label_smoothing=recipe.loss.label_smoothing
        )
    return losses.cross_entropy(recipe.loss.label_smoothing)


def compile_model(
    model,
    recipe,
    *,
    epochs,
    steps_per_epoch,
    batch_size,
    learning_rate=None,
    accumulation=1,
    jit_compile="auto",
    run_eagerly=False,
):
    """Compiles `model` with the recipe's optimizer, schedule and loss, and top-1/top-5.

    A model with K > 1 outputs (a list of logits, e.g. early exits) gets one cross-entropy and
    one top1/top5 pair per output (logged as <output name>_top1 ...), the loss being their sum
    weighted by the recipe's `loss.output_weights`; its labels must be repeated per output
    (see repeat_labels). A recipe with a Mix takes one-hot labels (recipe.soft_labels).
    With accumulation > 1, `batch_size` is the batch of one update (batch x accumulation), which
    the learning rate scales with; jit_compile (XLA) and run_eagerly are Keras'.

    Args:
        model: the Keras model.
        recipe: a Recipe.
        epochs: the run's epochs; the schedule spans them.
        steps_per_epoch: batches per epoch.
        batch_size: the examples of one update.
        learning_rate: the peak (None: the recipe's, scaled with batch_size).
        accumulation: batches whose mean gradient makes one update.
        jit_compile: True, False or "auto", as Keras' compile takes it.
        run_eagerly: Keras' compile(run_eagerly=...): every step op by op, nothing traced.

    Returns:
        `model`, compiled.

    Raises:
        InputError: the recipe weighs another number of outputs than the model has.
    """
    schedule = learning_rate_schedule(
        recipe,
        epochs=epochs,
        steps_per_epoch=steps_per_epoch,
        batch_size=batch_size,
        learning_rate=learning_rate,
    )
    count = len(model.outputs) if getattr(model, "outputs", None) else 1
    weights = loss_weights(recipe, count)
    loss = make_loss(recipe)
    soft = recipe.soft_labels
    if count == 1:  # a weight of 1.0 is Keras' default: compile exactly as without one
        compiled = dict(
            loss=loss,
            metrics=accuracy_metrics(soft),
            **({} if weights == [1.0] else {"loss_weights": weights}),
        )
    else:
        compiled = dict(
            loss=[loss] * count,
            loss_weights=weights,
            metrics=[accuracy_metrics(soft) for _ in range(count)],
        )
    model.compile(
        optimizer=make_optimizer(recipe, schedule, model, accumulation),
        jit_compile=False if run_eagerly else jit_compile,
        run_eagerly=run_eagerly,
        **compiled,
    )
    return model


def repeat_labels(dataset, num_outputs):
    """(images, labels) -> (images, (labels,) * num_outputs) for a model with several outputs.

    Args:
        dataset: a tf.data.Dataset of (images, labels).
        num_outputs: the model's outputs.

    Returns:
        The dataset, unchanged for one output.
    """
    if num_outputs == 1:
        return dataset
    return dataset.map(lambda images, labels: (images, (labels,) * num_outputs))
