"""Recipes of RANs, Restructurable Activation Networks (arXiv 2208.08562), as its official code
(ARM-software/ML-restructurable-activation-networks) trains RAN-e and RAN-i. RAN-i follows
ConvNeXt (Liu et al. 2022, arXiv 2201.03545). Augmentations: AutoAugment (arXiv 1805.09501),
RandAugment (arXiv 1909.13719), Mixup (arXiv 1710.09412), CutMix (arXiv 1905.04899), random
erasing (arXiv 1708.04896).
"""

from effkeras.training.recipes.schema import Loss, Mix, Optimizer, Recipe, Schedule, WeightDecay

# ConvNeXt's per-image steps (arXiv 2201.03545 Table 5; its official code builds them with timm):
# random resized crop (timm: bicubic; bilinear here), flip, RandAugment rand-m9-mstd0.5 (the Keras
# stand-in is described at effkeras.data.augment.RANDAUGMENT_M9_FACTOR), random erasing p 0.25.
# CIFAR keeps its pad-and-crop in place of the resized crop. Fashion-MNIST keeps its defaults:
# RandAugment's colour ops are for RGB.
CONVNEXT_AUGMENT = tuple(
    (dataset, (crop, "flip", "randaugment_m9", "random_erasing"))
    for dataset, crop in (
        ("imagenet", "random_resized_crop"),
        ("cifar10", "crop"),
        ("cifar100", "crop"),
    )
)

RECIPES = {
    # RAN-e (arXiv 2208.08562; official code, RAN_e/scripts/train_RAN_e_*_350ep.sh and utils/): the
    # EfficientNet recipe (peers.py, efficientnet_lite) as those scripts run it: RMSprop rho 0.9,
    # momentum 0.9, ε 1e-3; lr 0.005 per 128 images scaled linearly (0.03 at the scripts' global
    # batch 768 = 8 GPUs x 96); 350 epochs, 5-epoch linear warm-up from 0, cosine to 0; label
    # smoothing 0.1; no EMA. Weight decay is coupled L2(5e-6) on conv and FC kernels and the FC
    # bias, and dropout 0.2 is before the FC: both in the models. ImageNet: the Inception-style
    # crop, flip and AutoAugment policy v0 (arXiv 1805.09501). Keras has no AutoAugment layer; its
    # RandAugment stands in, with N=2 ops (a v0 sub-policy applies two) at M=9, the setting with
    # which RandAugment matches AutoAugment on ImageNet ResNet-50 (arXiv 1909.13719, Table 2).
    # Fashion-MNIST and CIFAR keep their defaults (pad-and-crop, flip).
    "ran_e": Recipe(
        Optimizer("rmsprop", rho=0.9, momentum=0.9, epsilon=1e-3),
        learning_rate=0.005,
        epochs=350,
        batch_size=768,
        base_batch_size=128,
        schedule=Schedule(warmup_epochs=5),
        loss=Loss(label_smoothing=0.1),
        augment=(("imagenet", ("inception_crop", "flip", "randaugment_m9")),),
    ),
    # RAN-i (arXiv 2208.08562; official code, RAN_i/train_eval_img_cls_imagenet.py and scripts):
    # ConvNeXt's recipe (arXiv 2201.03545 §2 and Table 5). AdamW lr 4e-3, betas (0.9, 0.999),
    # ε 1e-8; the code's effective batch is 2560 (80 per GPU x 8 GPUs x 4 accumulation steps) and
    # it does not rescale the 4e-3 that ConvNeXt gives for batch 4096: the rate is 4e-3 at 2560
    # here, and scales linearly from there with --batch_size. Decoupled weight decay 0.05, none on
    # 1-D weights (biases, LayerNorm, layer scale); 300 epochs, 20-epoch linear warm-up from 0,
    # cosine to 1e-6; label smoothing 0.1 on Mixup 0.8 / CutMix 1.0 soft targets (switch 0.5
    # per batch); model EMA 0.9999, whose weights are the ones reported and released.
    "ran_i": Recipe(
        Optimizer("adamw", epsilon=1e-8),
        learning_rate=4e-3,
        epochs=300,
        batch_size=2560,
        base_batch_size=2560,
        schedule=Schedule(warmup_epochs=20, final_learning_rate=1e-6),
        loss=Loss(label_smoothing=0.1),
        weight_decay=WeightDecay(0.05, decay_vectors=False),
        augment=CONVNEXT_AUGMENT,
        mix=Mix(mixup_alpha=0.8, cutmix_alpha=1.0, switch_prob=0.5),
        ema=0.9999,
    ),
}
