"""Training recipes as data: one registry of every family's recipes, and the schema they use.

A recipe names its loss, optimizer, schedule, weight-decay groups and augmentation
(effkeras.training.recipes.schema, with the builders that turn it into Keras objects). Each
family keeps its recipes as data in its own module beside this one, as keras-hub keeps presets
beside each model: `reference`, `recu`, `ern`, `rans`, `ranet`, `lerp_psa` and `peers` (the
models effkeras compares with). A registry model names its recipe (effkeras.models.info(name)
.recipe); `get(name)` returns it.
"""

from effkeras.errors import InputError
from effkeras.training.recipes import ern, lerp_psa, peers, ranet, rans, recu, reference
from effkeras.training.recipes.schedules import SCHEDULES
from effkeras.training.recipes.schema import (
    DTYPE_POLICIES,
    OPTIMIZERS,
    QAT_EPOCHS,
    QAT_LEARNING_RATE,
    Loss,
    Mix,
    Optimizer,
    Recipe,
    Schedule,
    Transfer,
    WeightDecay,
    accuracy_metrics,
    compile_model,
    describe_learning_rate,
    dtype_policy,
    learning_rate_schedule,
    loss_weights,
    make_loss,
    make_optimizer,
    peak_learning_rate,
    repeat_labels,
)

FAMILIES = (reference, recu, ern, peers, rans, ranet, lerp_psa)


def _registry(families):
    """{recipe name: Recipe} of every family module's RECIPES; a name given twice is an error."""
    recipes = {}
    for family in families:
        for name, recipe in family.RECIPES.items():
            if name in recipes:
                raise ValueError(f"recipe {name!r} is defined twice (again in {family.__name__})")
            recipes[name] = recipe
    return recipes


RECIPES = _registry(FAMILIES)


def get(name):
    """The registered recipe `name`.

    Args:
        name: a recipe name, as a registry model names it (`effkeras.models.info(m).recipe`).

    Returns:
        The `Recipe`.

    Raises:
        InputError: `name` is not a registered recipe (the message lists the known ones).
    """
    if name not in RECIPES:
        raise InputError(f"unknown recipe {name!r}; known recipes: {', '.join(sorted(RECIPES))}")
    return RECIPES[name]


__all__ = [
    "DTYPE_POLICIES",
    "OPTIMIZERS",
    "QAT_EPOCHS",
    "QAT_LEARNING_RATE",
    "RECIPES",
    "SCHEDULES",
    "Loss",
    "Mix",
    "Optimizer",
    "Recipe",
    "Schedule",
    "Transfer",
    "WeightDecay",
    "accuracy_metrics",
    "compile_model",
    "describe_learning_rate",
    "dtype_policy",
    "get",
    "learning_rate_schedule",
    "loss_weights",
    "make_loss",
    "make_optimizer",
    "peak_learning_rate",
    "repeat_labels",
]
