"""Recipes of the reference models (effkeras.models.resnet): He et al. 2016 (arXiv
1512.03385).
"""

from effkeras.training.recipes.schema import Optimizer, Recipe

RECIPES = {
    # He et al. 2016 §4.2 (lr 0.1, batch 128, momentum 0.9; L2 1e-4 in the model), cosine as
    # is usual now.
    "sgd_cosine": Recipe(
        Optimizer("sgd", momentum=0.9),
        learning_rate=0.1,
        epochs=200,
        batch_size=128,
        base_batch_size=128,
    ),
}
