"""Training recipes as data: loss, optimizer, schedule, weight-decay groups and augmentation.

A Recipe composes small frozen dataclasses that hold a paper's numbers; plain functions look their
`kind`/`name` up in a table (LOSSES is in effkeras.training.losses, OPTIMIZERS and SCHEDULES here)
and build the Keras objects; RECIPES, below them, holds the recipes themselves. `compile_model`
does it for a given budget, so the schedule always spans the epochs actually asked for. The peak
learning rate is given at `base_batch_size` and scales linearly with the batch size.

Papers cited below: He et al. 2016 (arXiv 1512.03385); ReCU, Xu et al., ICCV 2021 (arXiv
2103.12369) and its official code; ERN, Efficiera Residual Networks (arXiv 2410.11553) and its
official code; MLPerf Tiny (Banbury et al., arXiv 2106.07597) and its reference code
(mlcommons/tiny, benchmark/training); MobileNetV2, Sandler et al. 2018 (arXiv 1801.04381);
EfficientNet, Tan & Le 2019 (arXiv 1905.11946) and its TPU reference code (tensorflow/tpu,
models/official/efficientnet); RANs, Restructurable Activation Networks (arXiv 2208.08562) and its
official code (ARM-software/ML-restructurable-activation-networks); ConvNeXt, Liu et al. 2022
(arXiv 2201.03545) and its official code, which RAN-i's training script follows; RANet, Yang et
al. 2020 (arXiv 2003.07326) and its official code (yangle15/RANet-pytorch); AutoAugment
(arXiv 1805.09501), RandAugment (arXiv 1909.13719), Mixup (arXiv 1710.09412), CutMix (arXiv
1905.04899), random erasing (arXiv 1708.04896); QuickNet, Bannink et al. 2021 (arXiv 2011.09398)
and Bi-Real Net, Liu et al. 2018 (arXiv 1808.00278), as Larq Zoo trains them.
"""

import dataclasses

import keras

from effkeras.errors import InputError
from effkeras.training import losses


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
            raise ValueError(f"distillation needs 0 <= alpha <= 1 and temperature > 0, got "
                             f"alpha={self.alpha}, temperature={self.temperature}")

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
        return isinstance(other, Optimizer) and dataclasses.astuple(self) == dataclasses.astuple(other)

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
                0 < m < 1 for m in self.milestones):
            raise ValueError(f"milestones must be increasing fractions of the run in (0, 1), "
                             f"got {self.milestones}")


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
        if (self.mixup_alpha < 0 or not 0 <= self.cutmix_alpha <= 1
                or not (self.mixup_alpha or self.cutmix_alpha)):
            raise ValueError(f"a Mix needs mixup_alpha >= 0 and cutmix_alpha in [0, 1] (Keras' "
                             f"CutMix takes no more), not both 0; got {self.mixup_alpha}, "
                             f"{self.cutmix_alpha}")
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
            raise ValueError("a recipe with a knowledge-transfer stage distils: it needs a "
                             "distillation loss")
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
        """Stage 1 as a recipe of its own: `blocks` x `epochs_per_block` (default the
        Transfer's) epochs at the Transfer's constant rate, with this recipe's batch and
        augmentation."""
        transfer = self.transfer
        return Recipe(transfer.optimizer, transfer.learning_rate,
                      epochs=blocks * (epochs_per_block or transfer.epochs_per_block),
                      batch_size=self.batch_size, base_batch_size=self.base_batch_size,
                      schedule=Schedule("constant"), augment=self.augment)


    def qat_stage(self):
        """int8 quantization-aware fine-tuning of a trained float model (effkeras.qat)
        as a recipe of its own: QAT_EPOCHS of Adam at QAT_LEARNING_RATE with a cosine decay,
        this recipe's batch, augmentation and label smoothing (no teacher)."""
        return Recipe(Optimizer("adam"), QAT_LEARNING_RATE, epochs=QAT_EPOCHS,
                      batch_size=self.batch_size, base_batch_size=self.base_batch_size,
                      loss=Loss(label_smoothing=self.loss.label_smoothing), augment=self.augment)


# QAT starts from a trained float model and only has to adapt it to int8 rounding: a short run
# at a low rate (Krishnamoorthi, arXiv 1806.08342 §3.2, fine-tunes float models this way).
QAT_EPOCHS = 2
QAT_LEARNING_RATE = 1e-4


# --- schedules: (schedule, recipe, peak, total steps, steps per epoch) -> Keras schedule ---------


def cosine(schedule, recipe, peak, total, steps_per_epoch):
    warmup = min(round(total * schedule.warmup_epochs / recipe.epochs), total - 1)
    # Keras decays to alpha·peak; a final rate above the peak (a tiny --learning_rate) stays flat.
    alpha = min(schedule.final_learning_rate / peak, 1.0) if peak > 0 else 0.0
    if warmup:
        return keras.optimizers.schedules.CosineDecay(0.0, total - warmup, alpha=alpha,
                                                      warmup_target=peak, warmup_steps=warmup)
    return keras.optimizers.schedules.CosineDecay(peak, total, alpha=alpha)


def multistep(schedule, recipe, peak, total, steps_per_epoch):
    # PiecewiseConstantDecay keeps values[k] while step <= boundaries[k]: the first step of the
    # milestone epoch already gets the lower rate.
    boundaries = [round(m * total) - 1 for m in schedule.milestones]
    values = [peak * schedule.gamma ** k for k in range(len(boundaries) + 1)]
    return keras.optimizers.schedules.PiecewiseConstantDecay(boundaries, values)


def exponential(schedule, recipe, peak, total, steps_per_epoch):
    return keras.optimizers.schedules.ExponentialDecay(peak, steps_per_epoch, schedule.gamma,
                                                       staircase=True)


def linear(schedule, recipe, peak, total, steps_per_epoch):
    return keras.optimizers.schedules.PolynomialDecay(peak, total, end_learning_rate=0.0, power=1.0)


def constant(schedule, recipe, peak, total, steps_per_epoch):
    return peak


SCHEDULES = {"cosine": cosine, "multistep": multistep, "exponential": exponential,
             "linear": linear, "constant": constant}


def peak_learning_rate(recipe, batch_size):
    """The recipe's peak rate scaled linearly to `batch_size` (Goyal et al., arXiv 1706.02677)."""
    return recipe.learning_rate * batch_size / recipe.base_batch_size


def describe_learning_rate(recipe, batch_size, learning_rate=None):
    """One line for the log: the peak rate this run uses and where it comes from."""
    if learning_rate is not None:
        return f"learning rate {learning_rate:g} (--learning_rate) at batch {batch_size}"
    return (f"learning rate {peak_learning_rate(recipe, batch_size):g} at batch {batch_size}: the "
            f"recipe's {recipe.learning_rate:g} at batch {recipe.base_batch_size}, scaled linearly")


def learning_rate_schedule(recipe, *, epochs, steps_per_epoch, batch_size, learning_rate=None):
    """The recipe's schedule over exactly `epochs` epochs of `steps_per_epoch` steps.

    learning_rate: the peak; None: the recipe's, scaled by batch_size / base_batch_size.
    """
    peak = (learning_rate if learning_rate is not None
            else peak_learning_rate(recipe, batch_size))
    total = max(1, epochs * steps_per_epoch)
    return SCHEDULES[recipe.schedule.kind](recipe.schedule, recipe, peak, total, steps_per_epoch)


# --- optimizers: (optimizer, learning rate, decoupled decay or None, **common keyword arguments
# of Keras optimizers) -> Keras optimizer --------------------------------------------------------


def _epsilon(optimizer):
    return {} if optimizer.epsilon is None else {"epsilon": optimizer.epsilon}


OPTIMIZERS = {
    "sgd": lambda o, lr, wd, **kw: keras.optimizers.SGD(lr, momentum=o.momentum,
                                                        nesterov=o.nesterov, weight_decay=wd, **kw),
    "adam": lambda o, lr, wd, **kw: keras.optimizers.Adam(lr, weight_decay=wd, **_epsilon(o),
                                                          **kw),
    "adamw": lambda o, lr, wd, **kw: keras.optimizers.AdamW(lr, weight_decay=wd or 0.0,
                                                            **_epsilon(o), **kw),
    "rmsprop": lambda o, lr, wd, **kw: keras.optimizers.RMSprop(lr, rho=o.rho, momentum=o.momentum,
                                                                weight_decay=wd, **_epsilon(o),
                                                                **kw),
}


def make_optimizer(recipe, schedule, model=None, accumulation=1):
    """The recipe's optimizer on `schedule`, with its decoupled weight-decay groups (`model`
    supplies the variables when rank <= 1 ones are spared), its weights' EMA (Keras' use_ema,
    ema_momentum = recipe.ema) and, for accumulation > 1, Keras' gradient_accumulation_steps
    (the schedule still counts batches: Keras evaluates it at every batch)."""
    decay = recipe.weight_decay
    options = {"use_ema": True, "ema_momentum": recipe.ema} if recipe.ema else {}
    if accumulation > 1:
        options["gradient_accumulation_steps"] = accumulation
    optimizer = OPTIMIZERS[recipe.optimizer.name](recipe.optimizer, schedule, decay.rate or None,
                                                  **options)
    if decay.rate and (decay.exclude or not decay.decay_vectors):
        vectors = [] if decay.decay_vectors or model is None else [
            v for v in model.trainable_variables if len(v.shape) <= 1]
        optimizer.exclude_from_weight_decay(var_list=vectors, var_names=list(decay.exclude))
    return optimizer


# --- the recipes ----------------------------------------------------------------------------------

# Train augmentations shared by recipes (names in effkeras.data.augment).
IMAGENET_RECU = (("imagenet", ("random_resized_crop", "lighting", "flip")),)
# ConvNeXt's per-image steps (arXiv 2201.03545 Table 5; its official code builds them with timm):
# random resized crop (timm: bicubic; bilinear here), flip, RandAugment rand-m9-mstd0.5 (the Keras
# stand-in is described at effkeras.data.augment.RANDAUGMENT_M9_FACTOR), random erasing p 0.25.
# CIFAR keeps its pad-and-crop in place of the resized crop. Fashion-MNIST keeps its defaults:
# RandAugment's colour ops are for RGB.
CONVNEXT_AUGMENT = tuple(
    (dataset, (crop, "flip", "randaugment_m9", "random_erasing"))
    for dataset, crop in (("imagenet", "random_resized_crop"), ("cifar10", "crop"),
                          ("cifar100", "crop")))

# LERP-PSA's CIFAR augmentation (official code): RandomCrop(32, padding 4), flip, RandAugment.
LERP_PSA_AUGMENT = tuple((dataset, ("crop", "flip", "randaugment_m9"))
                         for dataset in ("cifar10", "cifar100"))

RECIPES = {
    # He et al. 2016 §4.2 (lr 0.1, batch 128, momentum 0.9; L2 1e-4 in the model), cosine as is usual now.
    "sgd_cosine": Recipe(Optimizer("sgd", momentum=0.9), learning_rate=0.1, epochs=200,
                         batch_size=128, base_batch_size=128),
    # ReCU (arXiv 2103.12369 §5.1 and the official code's main.py/run.sh): SGD momentum 0.9 (not
    # Nesterov), 5-epoch linear warm-up then cosine; weight decay is coupled L2 in the models (5e-4
    # on everything for CIFAR, 1e-4 on conv/fc for ImageNet); τ set per epoch, Eq. (24).
    "recu_cifar": Recipe(Optimizer("sgd", momentum=0.9), learning_rate=0.1, epochs=600,
                         batch_size=256, base_batch_size=256, schedule=Schedule(warmup_epochs=5),
                         callbacks=("recu_tau",)),
    # ImageNet, official code: batch 512, 200 epochs. RandomResizedCrop's area range is capped at
    # 1.0 (the code asks 0.08-1.25; areas over 1 cannot be cropped, so torchvision retries them),
    # then PCA lighting and flips.
    "recu_imagenet": Recipe(Optimizer("sgd", momentum=0.9), learning_rate=0.1, epochs=200,
                            batch_size=512, base_batch_size=512, schedule=Schedule(warmup_epochs=5),
                            callbacks=("recu_tau",), augment=IMAGENET_RECU),
    # Stage 2 of the two-stage recipe (official code, imagenet_two-stage run.sh): Adam, no weight
    # decay, distillation from a ResNet-34 teacher at temperature 1 replacing cross-entropy.
    "recu_two_stage": Recipe(Optimizer("adam"), learning_rate=1e-3, epochs=256, batch_size=512,
                             base_batch_size=512, schedule=Schedule(warmup_epochs=5),
                             loss=Loss("distillation", alpha=1.0, temperature=1.0),
                             callbacks=("recu_tau",), augment=IMAGENET_RECU),
    # ERN (arXiv 2410.11553 §4.1; the official code's per-model "best" configs): Adam lr 4e-4 at
    # batch 256, ε 1e-4, cosine to 0 with no warm-up, plain cross-entropy, fp16 AMP. Weight decay
    # 1e-5 is coupled L2 on conv kernels only, in the models (Keras L2(5e-6)). ImageNet images are
    # squashed to the input size (Resize((256, 256))); not in effkeras.data: RandAugment(2, 7)
    # (ern34, ern50, ern101) and ern101's ColorJitter, RandomGrayscale and RandomRotation(15).
    # ern34, ern50: `imagenet_with_randaugment_only` (no flip): the paper's recipe.
    "ern": Recipe(Optimizer("adam", epsilon=1e-4), learning_rate=4e-4, epochs=400, batch_size=256,
                  base_batch_size=256, mixed_precision=True,
                  augment=(("imagenet", ("squash", "randaugment")),)),
    # ern101: `imagenet_with_randaugment`.
    "ern_randaugment": Recipe(Optimizer("adam", epsilon=1e-4), learning_rate=4e-4, epochs=400,
                              batch_size=256, base_batch_size=256, mixed_precision=True,
                              augment=(("imagenet", ("squash", "flip", "color_jitter", "grayscale",
                                                     "rotation", "randaugment")),)),
    # ern18_075: `simple` (squash + flip).
    "ern_simple": Recipe(Optimizer("adam", epsilon=1e-4), learning_rate=4e-4, epochs=400,
                         batch_size=256, base_batch_size=256, mixed_precision=True,
                         augment=(("imagenet", ("squash", "flip")),)),
    # ern18's best config in the official code (= its exp11): `simple`, 800 epochs, Adam's default
    # ε 1e-8 (EWGS δ = 0 is the model's default). The paper-style run is `--epochs=400` with the
    # `ern` recipe's ε.
    "ern18": Recipe(Optimizer("adam", epsilon=1e-8), learning_rate=4e-4, epochs=800,
                    batch_size=256, base_batch_size=256, mixed_precision=True,
                    augment=(("imagenet", ("squash", "flip")),)),
    # MLPerf Tiny image classification (arXiv 2106.07597; reference code
    # benchmark/training/image_classification/train.py): Adam (Keras defaults), batch 32, 500
    # epochs, lr 1e-3·0.99^epoch; ImageDataGenerator(rotation_range=15, width_shift_range=0.1,
    # height_shift_range=0.1, horizontal_flip=True) on CIFAR-10, no crop. ImageDataGenerator fills
    # uncovered pixels with the nearest edge pixel, the Keras layers used here reflect. L2 1e-4 on
    # the convs is in the model (keras_model.py).
    "mlperf_tiny": Recipe(Optimizer("adam"), learning_rate=1e-3, epochs=500, batch_size=32,
                          base_batch_size=32, schedule=Schedule("exponential", gamma=0.99),
                          augment=(("cifar10", ("rotation", "shift", "flip")),)),
    # MLPerf Tiny Visual Wake Words (reference code benchmark/training/visual_wake_words/
    # train_vww.py): MobileNet v1 0.25 at 96x96, Adam, 20 epochs at 1e-3, 10 at 5e-4, 20 at
    # 2.5e-4 (milestones at 20/50 and 30/50 of the run, gamma 0.5). Its generators batch 32
    # (BATCH_SIZE; the `batch_size = 50` in main() is never used). Each of its three stages
    # compiles a fresh Adam (moments reset); here one Adam runs through. Its augmentation
    # (rotation 10°, shifts 0.05, zoom 0.1, flip, on a folder of person/non-person images) is not
    # in effkeras.data: datasets keep their defaults.
    "mlperf_tiny_vww": Recipe(Optimizer("adam"), learning_rate=1e-3, epochs=50, batch_size=32,
                              base_batch_size=32,
                              schedule=Schedule("multistep", milestones=(0.4, 0.6), gamma=0.5)),
    # MobileNetV2 (arXiv 1801.04381 §6.1): RMSprop with decay (rho) and momentum 0.9, lr 0.045 at
    # batch 96, decayed 0.98 per epoch; ε is not given (Keras' default here). Its weight decay 4e-5
    # is coupled L2 (TF l2_loss, = Keras L2(2e-5)) and belongs in the model's regularizers. The
    # paper gives no epoch count: 300 is ours (the rate ends near 1e-4).
    "mobilenet_v2": Recipe(Optimizer("rmsprop", rho=0.9, momentum=0.9), learning_rate=0.045,
                           epochs=300, batch_size=96, base_batch_size=96,
                           schedule=Schedule("exponential", gamma=0.98)),
    # EfficientNet (arXiv 1905.11946 §5.2: RMSprop decay 0.9, momentum 0.9) as trained for
    # EfficientNet-Lite by the TPU reference (main.py: base lr 0.016 per 256 images scaled
    # linearly, ε 1e-3, label smoothing 0.1, 5 warm-up epochs, 350 epochs), with the cosine decay
    # to 0 of the RAN-e reference scripts (arXiv 2208.08562); the TPU default is 0.97 every 2.4
    # epochs. Its weight decay 1e-5 is coupled L2 on non-BN variables (l2_loss, = Keras
    # L2(5e-6)), in the model.
    "efficientnet_lite": Recipe(Optimizer("rmsprop", rho=0.9, momentum=0.9, epsilon=1e-3),
                                learning_rate=0.016, epochs=350, batch_size=256,
                                base_batch_size=256, schedule=Schedule(warmup_epochs=5),
                                loss=Loss(label_smoothing=0.1)),
    # RAN-e (arXiv 2208.08562; official code, RAN_e/scripts/train_RAN_e_*_350ep.sh and utils/):
    # the EfficientNet recipe above as those scripts run it: RMSprop rho 0.9, momentum 0.9, ε 1e-3;
    # lr 0.005 per 128 images scaled linearly (0.03 at the scripts' global batch 768 = 8 GPUs x
    # 96); 350 epochs, 5-epoch linear warm-up from 0, cosine to 0; label smoothing 0.1; no EMA.
    # Weight decay is coupled L2(5e-6) on conv and FC kernels and the FC bias, and dropout 0.2 is
    # before the FC: both in the models. ImageNet: the Inception-style crop, flip and AutoAugment
    # policy v0 (arXiv 1805.09501). Keras has no AutoAugment layer; its RandAugment stands in,
    # with N=2 ops (a v0 sub-policy applies two) at M=9, the setting with which RandAugment
    # matches AutoAugment on ImageNet ResNet-50 (arXiv 1909.13719, Table 2). Fashion-MNIST and
    # CIFAR keep their defaults (pad-and-crop, flip).
    "ran_e": Recipe(Optimizer("rmsprop", rho=0.9, momentum=0.9, epsilon=1e-3),
                    learning_rate=0.005, epochs=350, batch_size=768, base_batch_size=128,
                    schedule=Schedule(warmup_epochs=5), loss=Loss(label_smoothing=0.1),
                    augment=(("imagenet", ("inception_crop", "flip", "randaugment_m9")),)),
    # RAN-i (arXiv 2208.08562; official code, RAN_i/train_eval_img_cls_imagenet.py and scripts):
    # ConvNeXt's recipe (arXiv 2201.03545 §2 and Table 5). AdamW lr 4e-3, betas (0.9, 0.999),
    # ε 1e-8; the code's effective batch is 2560 (80 per GPU x 8 GPUs x 4 accumulation steps) and
    # it does not rescale the 4e-3 that ConvNeXt gives for batch 4096: the rate is 4e-3 at 2560
    # here, and scales linearly from there with --batch_size. Decoupled weight decay 0.05, none on
    # 1-D weights (biases, LayerNorm, layer scale); 300 epochs, 20-epoch linear warm-up from 0,
    # cosine to 1e-6; label smoothing 0.1 on Mixup 0.8 / CutMix 1.0 soft targets (switch 0.5
    # per batch); model EMA 0.9999, whose weights are the ones reported and released.
    "ran_i": Recipe(Optimizer("adamw", epsilon=1e-8), learning_rate=4e-3, epochs=300,
                    batch_size=2560, base_batch_size=2560,
                    schedule=Schedule(warmup_epochs=20, final_learning_rate=1e-6),
                    loss=Loss(label_smoothing=0.1),
                    weight_decay=WeightDecay(0.05, decay_vectors=False),
                    augment=CONVNEXT_AUGMENT,
                    mix=Mix(mixup_alpha=0.8, cutmix_alpha=1.0, switch_prob=0.5), ema=0.9999),
    # RANet (arXiv 2003.07326; official code, main.py and args.py): the sum of the exits'
    # cross-entropies, each weighed 1.0 (output_weights () = 1.0 per exit, whatever K); SGD
    # momentum 0.9 (not Nesterov), lr 0.1 at batch 64, x0.1 at half and at three quarters of the
    # run (epochs 150 and 225 of 300). Weight decay 1e-4 on every parameter, BN and biases
    # included, is coupled L2 in the models (Keras L2(5e-5)). CIFAR: 4-pixel pad-and-crop and
    # flip; ImageNet: random resized crop and flip (the code's ImageNet schedule, x0.1 every 30
    # epochs of 90, differs from this one).
    "ranet": Recipe(Optimizer("sgd", momentum=0.9), learning_rate=0.1, epochs=300, batch_size=64,
                    base_batch_size=64, schedule=Schedule("multistep", milestones=(0.5, 0.75)),
                    loss=Loss(output_weights=()),
                    augment=(("cifar10", ("crop", "flip")), ("cifar100", ("crop", "flip")),
                             ("imagenet", ("random_resized_crop", "flip")))),
    # The ResMLP teacher of LERP-PSA (Singh & Bazargan, ACM TRETS 2025, DOI 10.1145/3705926;
    # official code, scripts/run_resmlp_teacher.sh): AdamW lr 1e-3 (betas 0.9/0.999, ε 1e-8),
    # weight decay 0, batch 128, 300 epochs, cosine to 1e-5; CIFAR: pad-and-crop, flip and
    # RandAugment (torchvision's 2 ops at 9/31; Keras' layer stands in). The paper's teacher
    # itself distils from a CIFAR ResNet; here it learns from the labels.
    "resmlp_teacher": Recipe(Optimizer("adamw", epsilon=1e-8), learning_rate=1e-3, epochs=300,
                             batch_size=128, base_batch_size=128,
                             schedule=Schedule(final_learning_rate=1e-5),
                             augment=LERP_PSA_AUGMENT),
    # LERP-PSA's two-stage student recipe (same sources): stage 1, knowledge transfer, 50 epochs
    # per block of feature MSE at a constant 1e-3 with one AdamW (wd 0) through the blocks;
    # stage 2, 300 epochs of 0.8·soft-CE(teacher, T=1)·T² + 0.2·CE, AdamW 1e-3, wd 0, cosine to
    # 1e-5 (the B-spline models add their TV(2) penalty through their regularizers). The code's
    # B-spline coefficients get their own Adam (lr 1e-3, no decay, the same cosine): with wd 0
    # that is what one AdamW does to them too.
    "lerp_psa_distill": Recipe(Optimizer("adamw", epsilon=1e-8), learning_rate=1e-3, epochs=300,
                               batch_size=128, base_batch_size=128,
                               schedule=Schedule(final_learning_rate=1e-5),
                               loss=Loss("distillation", alpha=0.8, temperature=1.0),
                               augment=LERP_PSA_AUGMENT,
                               transfer=Transfer(epochs_per_block=50, learning_rate=1e-3,
                                                 optimizer=Optimizer("adamw", epsilon=1e-8))),
    # QuickNet (arXiv 2011.09398, as Larq Zoo 2.4 trains it): 600 epochs at batch
    # 2048, a 5-epoch warm-up then cosine decay, with two optimizers: Adam at 1e-2 for the binary
    # kernels and SGD momentum 0.9 at 0.1 for every other variable. The trainer has one
    # optimizer: Adam at the binary kernels' 1e-2 on the same schedule for all. Larq Zoo's
    # ImageNet crop and flip; its crop also keeps >= 10% of the image.
    "quicknet": Recipe(Optimizer("adam"), learning_rate=1e-2, epochs=600, batch_size=2048,
                       base_batch_size=2048, schedule=Schedule(warmup_epochs=5),
                       augment=(("imagenet", ("random_resized_crop", "flip")),)),
    # Bi-Real Net 18 as Larq Zoo 2.4 trains it: Adam lr 5e-3, batch
    # 512, 300 epochs, decayed linearly to 0; the same crop and flip as QuickNet.
    "birealnet": Recipe(Optimizer("adam"), learning_rate=5e-3, epochs=300, batch_size=512,
                        base_batch_size=512, schedule=Schedule("linear"),
                        augment=(("imagenet", ("random_resized_crop", "flip")),)),
}


def get(name):
    if name not in RECIPES:
        raise InputError(f"unknown recipe {name!r}; known recipes: {', '.join(sorted(RECIPES))}")
    return RECIPES[name]


DTYPE_POLICIES = ("float32", "mixed_float16", "mixed_bfloat16")


def dtype_policy(recipe, asked=None):
    """The Keras dtype policy to build the model under: `asked` (one of DTYPE_POLICIES), else
    "mixed_float16" for a mixed-precision recipe on a machine with a GPU, else "float32".

    Layers whose maths needs float32 keep it under either mixed policy: the kernel quantizers
    with their scales (effkeras.layers.quantized), LerpPSA and the B-spline activations
    (effkeras.layers.activations), and the loss's softmax (Keras computes losses in float32).
    Export needs a float32 model: the trainer writes model.keras rebuilt under "float32".
    """
    import tensorflow as tf

    gpu = bool(tf.config.list_physical_devices("GPU"))
    if asked is None:
        return "mixed_float16" if recipe.mixed_precision and gpu else "float32"
    if asked not in DTYPE_POLICIES:
        raise InputError(f"--dtype_policy must be one of {', '.join(DTYPE_POLICIES)}, got "
                         f"{asked!r} (leave it out for the recipe's)")
    if asked == "mixed_float16" and not gpu:
        raise InputError("mixed_float16 needs a GPU (CPUs have no fast float16 kernels); use "
                         "--dtype_policy=mixed_bfloat16 or float32 here")
    return asked


# --- loss and metrics ----------------------------------------------------------------------------


def loss_weights(recipe, num_outputs):
    """The recipe's weight per output; 1.0 each by default (RANet, arXiv 2003.00634, sums its
    exits' losses)."""
    weights = tuple(recipe.loss.output_weights) or (1.0,) * num_outputs
    if len(weights) != num_outputs:
        raise InputError(f"the recipe weighs {len(weights)} outputs but the model has "
                         f"{num_outputs}")
    return list(weights)


def accuracy_metrics(soft_labels=False):
    """top1/top5 of integer labels, or of one-hot (mixed) labels, whose argmax counts."""
    if soft_labels:
        return [keras.metrics.CategoricalAccuracy(name="top1"),
                keras.metrics.TopKCategoricalAccuracy(k=5, name="top5")]
    return [keras.metrics.SparseCategoricalAccuracy(name="top1"),
            keras.metrics.SparseTopKCategoricalAccuracy(k=5, name="top5")]


def make_loss(recipe):
    """Cross-entropy against logits with the recipe's label smoothing: of integer labels, or of
    soft labels for a recipe that mixes batches (timm's SoftTargetCrossEntropy on smoothed
    targets is Keras' CategoricalCrossentropy with label_smoothing)."""
    if recipe.soft_labels:
        return keras.losses.CategoricalCrossentropy(from_logits=True,
                                                    label_smoothing=recipe.loss.label_smoothing)
    return losses.cross_entropy(recipe.loss.label_smoothing)


def compile_model(model, recipe, *, epochs, steps_per_epoch, batch_size, learning_rate=None,
                  accumulation=1, jit_compile="auto"):
    """Compiles `model` with the recipe's optimizer, schedule and loss, and top-1/top-5.

    A model with K > 1 outputs (a list of logits, e.g. early exits) gets one cross-entropy and
    one top1/top5 pair per output (logged as <output name>_top1 ...), the loss being their sum
    weighted by the recipe's `loss.output_weights`; its labels must be repeated per output
    (see repeat_labels). A recipe with a Mix takes one-hot labels (recipe.soft_labels).
    With accumulation > 1, `batch_size` is the batch of one update (batch x accumulation), which
    the learning rate scales with; jit_compile is Keras' (XLA).
    """
    schedule = learning_rate_schedule(recipe, epochs=epochs, steps_per_epoch=steps_per_epoch,
                                      batch_size=batch_size, learning_rate=learning_rate)
    count = len(model.outputs) if getattr(model, "outputs", None) else 1
    weights = loss_weights(recipe, count)
    loss = make_loss(recipe)
    soft = recipe.soft_labels
    if count == 1:  # a weight of 1.0 is Keras' default: compile exactly as without one
        compiled = dict(loss=loss, metrics=accuracy_metrics(soft),
                        **({} if weights == [1.0] else {"loss_weights": weights}))
    else:
        compiled = dict(loss=[loss] * count, loss_weights=weights,
                        metrics=[accuracy_metrics(soft) for _ in range(count)])
    model.compile(optimizer=make_optimizer(recipe, schedule, model, accumulation),
                  jit_compile=jit_compile, **compiled)
    return model


def repeat_labels(dataset, num_outputs):
    """(images, labels) -> (images, (labels,) * num_outputs) for a model with several outputs."""
    if num_outputs == 1:
        return dataset
    return dataset.map(lambda images, labels: (images, (labels,) * num_outputs))
