"""The recipe of RANet (Yang et al., CVPR 2020, arXiv 2003.07326) as its official code
(yangle15/RANet-pytorch) trains it.
"""

from effkeras.training.recipes.schema import Loss, Optimizer, Recipe, Schedule

RECIPES = {
    # RANet (arXiv 2003.07326; official code, main.py and args.py): the sum of the exits'
    # cross-entropies, each weighed 1.0 (output_weights () = 1.0 per exit, whatever K); SGD
    # momentum 0.9 (not Nesterov), lr 0.1 at batch 64, x0.1 at half and at three quarters of the
    # run (epochs 150 and 225 of 300). Weight decay 1e-4 on every parameter, BN and biases
    # included, is coupled L2 in the models (Keras L2(5e-5)). CIFAR: 4-pixel pad-and-crop and
    # flip; ImageNet: random resized crop and flip (the code's ImageNet schedule, x0.1 every 30
    # epochs of 90, differs from this one).
    "ranet": Recipe(
        Optimizer("sgd", momentum=0.9),
        learning_rate=0.1,
        epochs=300,
        batch_size=64,
        base_batch_size=64,
        schedule=Schedule("multistep", milestones=(0.5, 0.75)),
        loss=Loss(output_weights=()),
        augment=(
            ("cifar10", ("crop", "flip")),
            ("cifar100", ("crop", "flip")),
            ("imagenet", ("random_resized_crop", "flip")),
        ),
    ),
}
