"""Recipes of ERN, Efficiera Residual Networks (arXiv 2410.11553), from its paper and the official
code's per-model "best" configs.
"""

from effkeras.training.recipes.schema import Optimizer, Recipe

RECIPES = {
    # ERN (arXiv 2410.11553 §4.1; the official code's per-model "best" configs): Adam lr 4e-4 at
    # batch 256, ε 1e-4, cosine to 0 with no warm-up, plain cross-entropy, fp16 AMP. Weight decay
    # 1e-5 is coupled L2 on conv kernels only, in the models (Keras L2(5e-6)). ImageNet images are
    # squashed to the input size (Resize((256, 256))); not in effkeras.data: RandAugment(2, 7)
    # (ern34, ern50, ern101) and ern101's ColorJitter, RandomGrayscale and RandomRotation(15).
    # ern34, ern50: `imagenet_with_randaugment_only` (no flip): the paper's recipe.
    "ern": Recipe(
        Optimizer("adam", epsilon=1e-4),
        learning_rate=4e-4,
        epochs=400,
        batch_size=256,
        base_batch_size=256,
        mixed_precision=True,
        augment=(("imagenet", ("squash", "randaugment")),),
    ),
    # ern101: `imagenet_with_randaugment`.
    "ern_randaugment": Recipe(
        Optimizer("adam", epsilon=1e-4),
        learning_rate=4e-4,
        epochs=400,
        batch_size=256,
        base_batch_size=256,
        mixed_precision=True,
        augment=(
            (
                "imagenet",
                ("squash", "flip", "color_jitter", "grayscale", "rotation", "randaugment"),
            ),
        ),
    ),
    # ern18_075: `simple` (squash + flip).
    "ern_simple": Recipe(
        Optimizer("adam", epsilon=1e-4),
        learning_rate=4e-4,
        epochs=400,
        batch_size=256,
        base_batch_size=256,
        mixed_precision=True,
        augment=(("imagenet", ("squash", "flip")),),
    ),
    # ern18's best config in the official code (= its exp11): `simple`, 800 epochs, Adam's default
    # ε 1e-8 (EWGS δ = 0 is the model's default). The paper-style run is `--epochs=400` with the
    # `ern` recipe's ε.
    "ern18": Recipe(
        Optimizer("adam", epsilon=1e-8),
        learning_rate=4e-4,
        epochs=800,
        batch_size=256,
        base_batch_size=256,
        mixed_precision=True,
        augment=(("imagenet", ("squash", "flip")),),
    ),
}
