"""Recipes of LERP-PSA (Singh & Bazargan, ACM TRETS 2025, DOI 10.1145/3705926) as its official
code trains the ResMLP teacher and the two-stage students.
"""

from effkeras.training.recipes.schema import Loss, Optimizer, Recipe, Schedule, Transfer

# LERP-PSA's CIFAR augmentation (official code): RandomCrop(32, padding 4), flip, RandAugment.
LERP_PSA_AUGMENT = tuple(
    (dataset, ("crop", "flip", "randaugment_m9")) for dataset in ("cifar10", "cifar100")
)

RECIPES = {
    # The ResMLP teacher of LERP-PSA (Singh & Bazargan, ACM TRETS 2025, DOI 10.1145/3705926;
    # official code, scripts/run_resmlp_teacher.sh): AdamW lr 1e-3 (betas 0.9/0.999, ε 1e-8),
    # weight decay 0, batch 128, 300 epochs, cosine to 1e-5; CIFAR: pad-and-crop, flip and
    # RandAugment (torchvision's 2 ops at 9/31; Keras' layer stands in). The paper's teacher
    # itself distils from a CIFAR ResNet; here it learns from the labels.
    "resmlp_teacher": Recipe(
        Optimizer("adamw", epsilon=1e-8),
        learning_rate=1e-3,
        epochs=300,
        batch_size=128,
        base_batch_size=128,
        schedule=Schedule(final_learning_rate=1e-5),
        augment=LERP_PSA_AUGMENT,
    ),
    # LERP-PSA's two-stage student recipe (same sources): stage 1, knowledge transfer, 50 epochs
    # per block of feature MSE at a constant 1e-3 with one AdamW (wd 0) through the blocks;
    # stage 2, 300 epochs of 0.8·soft-CE(teacher, T=1)·T² + 0.2·CE, AdamW 1e-3, wd 0, cosine to
    # 1e-5 (the B-spline models add their TV(2) penalty through their regularizers). The code's
    # B-spline coefficients get their own Adam (lr 1e-3, no decay, the same cosine): with wd 0
    # that is what one AdamW does to them too.
    "lerp_psa_distill": Recipe(
        Optimizer("adamw", epsilon=1e-8),
        learning_rate=1e-3,
        epochs=300,
        batch_size=128,
        base_batch_size=128,
        schedule=Schedule(final_learning_rate=1e-5),
        loss=Loss("distillation", alpha=0.8, temperature=1.0),
        augment=LERP_PSA_AUGMENT,
        transfer=Transfer(
            epochs_per_block=50, learning_rate=1e-3, optimizer=Optimizer("adamw", epsilon=1e-8)
        ),
    ),
}
