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


RECIPES = {
    # He et al. 2016 §4.2 (lr 0.1, batch 128, momentum 0.9; L2 1e-4 in the model), cosine as is usual now.
    "sgd_cosine": Recipe(optimizer="sgd", learning_rate=0.1, epochs=200, batch_size=128,
                         base_batch_size=128),
}


def get(name):
    if name not in RECIPES:
        raise InputError(f"unknown recipe {name!r}; known recipes: {', '.join(sorted(RECIPES))}")
    return RECIPES[name]


def learning_rate_schedule(recipe, *, epochs, steps_per_epoch, batch_size, learning_rate=None):
    """Linear warm-up then cosine decay to 0 over exactly `epochs` epochs."""
    peak = learning_rate or recipe.learning_rate * batch_size / recipe.base_batch_size
    total = max(1, epochs * steps_per_epoch)
    warmup = min(recipe.warmup_epochs * steps_per_epoch, total - 1)
    if warmup:
        return keras.optimizers.schedules.CosineDecay(0.0, total - warmup, warmup_target=peak,
                                                      warmup_steps=warmup)
    return keras.optimizers.schedules.CosineDecay(peak, total)


def make_optimizer(recipe, schedule):
    if recipe.optimizer == "sgd":
        return keras.optimizers.SGD(schedule, momentum=recipe.momentum,
                                    weight_decay=recipe.weight_decay or None)
    if recipe.optimizer == "adam":
        return keras.optimizers.Adam(schedule, weight_decay=recipe.weight_decay or None)
    raise ValueError(f"recipe optimizer {recipe.optimizer!r} is not supported")


def compile_model(model, recipe, *, epochs, steps_per_epoch, batch_size, learning_rate=None):
    schedule = learning_rate_schedule(recipe, epochs=epochs, steps_per_epoch=steps_per_epoch,
                                      batch_size=batch_size, learning_rate=learning_rate)
    model.compile(
        optimizer=make_optimizer(recipe, schedule),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="top1"),
                 keras.metrics.SparseTopKCategoricalAccuracy(k=5, name="top5")])
    return model
