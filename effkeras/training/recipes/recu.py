"""Recipes of ReCU (Xu et al., ICCV 2021, arXiv 2103.12369) as its paper and official code
train the models of effkeras.models.recu.
"""

from effkeras.training.recipes.schema import Loss, Optimizer, Recipe, Schedule

# ReCU's ImageNet train augmentation (names in effkeras.data.augment).
IMAGENET_RECU = (("imagenet", ("random_resized_crop", "lighting", "flip")),)

RECIPES = {
    # ReCU (arXiv 2103.12369 §5.1 and the official code's main.py/run.sh): SGD momentum 0.9 (not
    # Nesterov), 5-epoch linear warm-up then cosine; weight decay is coupled L2 in the models (5e-4
    # on everything for CIFAR, 1e-4 on conv/fc for ImageNet); τ set per epoch, Eq. (24).
    "recu_cifar": Recipe(
        Optimizer("sgd", momentum=0.9),
        learning_rate=0.1,
        epochs=600,
        batch_size=256,
        base_batch_size=256,
        schedule=Schedule(warmup_epochs=5),
        callbacks=("recu_tau",),
    ),
    # ImageNet, official code: batch 512, 200 epochs. RandomResizedCrop's area range is capped at
    # 1.0 (the code asks 0.08-1.25; areas over 1 cannot be cropped, so torchvision retries them),
    # then PCA lighting and flips.
    "recu_imagenet": Recipe(
        Optimizer("sgd", momentum=0.9),
        learning_rate=0.1,
        epochs=200,
        batch_size=512,
        base_batch_size=512,
        schedule=Schedule(warmup_epochs=5),
        callbacks=("recu_tau",),
        augment=IMAGENET_RECU,
    ),
    # Stage 2 of the two-stage recipe (official code, imagenet_two-stage run.sh): Adam, no weight
    # decay, distillation from a ResNet-34 teacher at temperature 1 replacing cross-entropy.
    "recu_two_stage": Recipe(
        Optimizer("adam"),
        learning_rate=1e-3,
        epochs=256,
        batch_size=512,
        base_batch_size=512,
        schedule=Schedule(warmup_epochs=5),
        loss=Loss("distillation", alpha=1.0, temperature=1.0),
        callbacks=("recu_tau",),
        augment=IMAGENET_RECU,
    ),
}
