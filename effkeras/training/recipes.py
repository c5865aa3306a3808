"""Training recipes: optimizer, learning-rate schedule and loss per model family.

A recipe is data (its paper's numbers); `compile_model` turns it into a compiled model for a
given budget, so the schedule always spans the epochs actually asked for.
"""

import dataclasses

import keras

from effkeras.errors import InputError


@dataclasses.dataclass(frozen=True)
class Recipe:
    optimizer: str  # "sgd" | "adam"
    learning_rate: float  # at base_batch_size
    epochs: int
    batch_size: int
    base_batch_size: int  # learning rate scales linearly with batch_size / base_batch_size
    momentum: float = 0.9
    weight_decay: float = 0.0  # decoupled, in the optimizer (L2 lives in the model's regularizers)
    warmup_epochs: int = 0
    callbacks: tuple = ()  # names in effkeras.training.callbacks.CALLBACKS
    distill: bool = False  # the loss is cross-entropy to a teacher's softmax (--teacher)
    augment: tuple = ()  # (dataset, augmentation names) pairs; other datasets keep their defaults
    epsilon: float = None  # Adam's ε; None: Keras' default (1e-7)
    mixed_precision: bool = False  # the paper trained in fp16 AMP: see dtype_policy()


RECIPES = {
    # He et al. 2016 §4.2 (lr 0.1, batch 128, momentum 0.9; L2 1e-4 in the model), cosine as is usual now.
    "sgd_cosine": Recipe(optimizer="sgd", learning_rate=0.1, epochs=200, batch_size=128,
                         base_batch_size=128),
    # ReCU, recu_ern.md §A6: 5-epoch linear warm-up then cosine; weight decay is coupled L2 in
    # the models (5e-4 on everything for CIFAR, 1e-4 on conv/fc for ImageNet); τ per epoch.
    "recu_cifar": Recipe(optimizer="sgd", learning_rate=0.1, epochs=600, batch_size=256,
                         base_batch_size=256, warmup_epochs=5, callbacks=("recu_tau",)),
    # RandomResizedCrop's area range is capped at 1.0 (the code asks 0.08-1.25; areas over 1
    # cannot be cropped, so torchvision retries them), then PCA lighting and flips.
    "recu_imagenet": Recipe(optimizer="sgd", learning_rate=0.1, epochs=200, batch_size=512,
                            base_batch_size=512, warmup_epochs=5, callbacks=("recu_tau",),
                            augment=(("imagenet", ("random_resized_crop", "lighting", "flip")),)),
    # Stage 2 of the two-stage recipe: Adam, no weight decay, distillation from a teacher.
    "recu_two_stage": Recipe(optimizer="adam", learning_rate=1e-3, epochs=256, batch_size=512,
                             base_batch_size=512, warmup_epochs=5, callbacks=("recu_tau",),
                             distill=True,
                             augment=(("imagenet", ("random_resized_crop", "lighting", "flip")),)),
    # ERN, recu_ern.md §B5 (the official per-model "best" configs): Adam lr 4e-4 at batch 256,
    # ε 1e-4, cosine to 0 with no warm-up, plain cross-entropy, fp16 AMP. Weight decay 1e-5 is
    # coupled L2 on conv kernels only, in the models (Keras L2(5e-6), §B8). ImageNet images are
    # squashed to the input size (Resize((256, 256))); not in effkeras.data: RandAugment(2, 7)
    # (ern34, ern50, ern101) and ern101's ColorJitter, RandomGrayscale and RandomRotation(15).
    # ern34, ern50: `imagenet_with_randaugment_only` (no flip): the paper's recipe.
    "ern": Recipe(optimizer="adam", learning_rate=4e-4, epochs=400, batch_size=256,
                  base_batch_size=256, epsilon=1e-4, mixed_precision=True,
                  augment=(("imagenet", ("squash", "randaugment")),)),
    # ern101: `imagenet_with_randaugment`.
    "ern_randaugment": Recipe(optimizer="adam", learning_rate=4e-4, epochs=400, batch_size=256,
                              base_batch_size=256, epsilon=1e-4, mixed_precision=True,
                              augment=(("imagenet", ("squash", "flip", "color_jitter", "grayscale",
                                                     "rotation", "randaugment")),)),
    # ern18_075: `simple` (squash + flip).
    "ern_simple": Recipe(optimizer="adam", learning_rate=4e-4, epochs=400, batch_size=256,
                         base_batch_size=256, epsilon=1e-4, mixed_precision=True,
                         augment=(("imagenet", ("squash", "flip")),)),
    # ern18's best config (= exp11): `simple`, 800 epochs, Adam's default ε 1e-8 (EWGS δ = 0 is
    # the model's default). The paper-style run is `--epochs=400` with the `ern` recipe's ε.
    "ern18": Recipe(optimizer="adam", learning_rate=4e-4, epochs=800, batch_size=256,
                    base_batch_size=256, epsilon=1e-8, mixed_precision=True,
                    augment=(("imagenet", ("squash", "flip")),)),
}


def get(name):
    if name not in RECIPES:
        raise InputError(f"unknown recipe {name!r}; known recipes: {', '.join(sorted(RECIPES))}")
    return RECIPES[name]


def learning_rate_schedule(recipe, *, epochs, steps_per_epoch, batch_size, learning_rate=None):
    """Linear warm-up then cosine decay to 0 over exactly `epochs` epochs.

    The warm-up keeps its share of the recipe's run (5 of 600 epochs stays 1/120 of a shorter
    or longer run), so overriding --epochs scales the whole schedule.
    """
    peak = learning_rate or recipe.learning_rate * batch_size / recipe.base_batch_size
    total = max(1, epochs * steps_per_epoch)
    warmup = min(round(total * recipe.warmup_epochs / recipe.epochs), total - 1)
    if warmup:
        return keras.optimizers.schedules.CosineDecay(0.0, total - warmup, warmup_target=peak,
                                                      warmup_steps=warmup)
    return keras.optimizers.schedules.CosineDecay(peak, total)


def make_optimizer(recipe, schedule):
    if recipe.optimizer == "sgd":
        return keras.optimizers.SGD(schedule, momentum=recipe.momentum,
                                    weight_decay=recipe.weight_decay or None)
    if recipe.optimizer == "adam":
        epsilon = {} if recipe.epsilon is None else {"epsilon": recipe.epsilon}
        return keras.optimizers.Adam(schedule, weight_decay=recipe.weight_decay or None, **epsilon)
    raise ValueError(f"recipe optimizer {recipe.optimizer!r} is not supported")


def dtype_policy(recipe):
    """"mixed_float16" for a mixed-precision recipe on a machine with a GPU, else "float32".

    Set it (keras.config.set_dtype_policy) before building the model. Export for LCE needs a
    float32 model: rebuild under "float32" and copy the weights (LCE rejects mixed precision).
    """
    if not recipe.mixed_precision:
        return "float32"
    import tensorflow as tf

    return "mixed_float16" if tf.config.list_physical_devices("GPU") else "float32"


def compile_model(model, recipe, *, epochs, steps_per_epoch, batch_size, learning_rate=None):
    schedule = learning_rate_schedule(recipe, epochs=epochs, steps_per_epoch=steps_per_epoch,
                                      batch_size=batch_size, learning_rate=learning_rate)
    model.compile(
        optimizer=make_optimizer(recipe, schedule),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="top1"),
                 keras.metrics.SparseTopKCategoricalAccuracy(k=5, name="top5")])
    return model
