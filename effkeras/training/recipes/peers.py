"""Recipes of the peer models effkeras compares with, each as its paper or reference code trains
it: MLPerf Tiny (Banbury et al., arXiv 2106.07597; mlcommons/tiny, benchmark/training),
MobileNetV2 (Sandler et al. 2018, arXiv 1801.04381), EfficientNet-Lite (Tan & Le 2019, arXiv
1905.11946; tensorflow/tpu, models/official/efficientnet), QuickNet (Bannink et al. 2021, arXiv
2011.09398) and Bi-Real Net (Liu et al. 2018, arXiv 1808.00278), the last two as Larq Zoo
trains them.
"""

from effkeras.training.recipes.schema import Loss, Optimizer, Recipe, Schedule

RECIPES = {
    # MLPerf Tiny image classification (arXiv 2106.07597; reference code
    # benchmark/training/image_classification/train.py): Adam (Keras defaults), batch 32, 500
    # epochs, lr 1e-3·0.99^epoch; ImageDataGenerator(rotation_range=15, width_shift_range=0.1,
    # height_shift_range=0.1, horizontal_flip=True) on CIFAR-10, no crop. ImageDataGenerator fills
    # uncovered pixels with the nearest edge pixel, the Keras layers used here reflect. L2 1e-4 on
    # the convs is in the model (keras_model.py).
    "mlperf_tiny": Recipe(
        Optimizer("adam"),
        learning_rate=1e-3,
        epochs=500,
        batch_size=32,
        base_batch_size=32,
        schedule=Schedule("exponential", gamma=0.99),
        augment=(("cifar10", ("rotation", "shift", "flip")),),
    ),
    # MLPerf Tiny Visual Wake Words (reference code benchmark/training/visual_wake_words/
    # train_vww.py): MobileNet v1 0.25 at 96x96, Adam, 20 epochs at 1e-3, 10 at 5e-4, 20 at
    # 2.5e-4 (milestones at 20/50 and 30/50 of the run, gamma 0.5). Its generators batch 32
    # (BATCH_SIZE; the `batch_size = 50` in main() is never used). Each of its three stages
    # compiles a fresh Adam (moments reset); here one Adam runs through. Its augmentation
    # (rotation 10°, shifts 0.05, zoom 0.1, flip, on a folder of person/non-person images) is not
    # in effkeras.data: datasets keep their defaults.
    "mlperf_tiny_vww": Recipe(
        Optimizer("adam"),
        learning_rate=1e-3,
        epochs=50,
        batch_size=32,
        base_batch_size=32,
        schedule=Schedule("multistep", milestones=(0.4, 0.6), gamma=0.5),
    ),
    # MobileNetV2 (arXiv 1801.04381 §6.1): RMSprop with decay (rho) and momentum 0.9, lr 0.045 at
    # batch 96, decayed 0.98 per epoch; ε is not given (Keras' default here). Its weight decay 4e-5
    # is coupled L2 (TF l2_loss, = Keras L2(2e-5)) and belongs in the model's regularizers. The
    # paper gives no epoch count: 300 is ours (the rate ends near 1e-4).
    "mobilenet_v2": Recipe(
        Optimizer("rmsprop", rho=0.9, momentum=0.9),
        learning_rate=0.045,
        epochs=300,
        batch_size=96,
        base_batch_size=96,
        schedule=Schedule("exponential", gamma=0.98),
    ),
    # EfficientNet (arXiv 1905.11946 §5.2: RMSprop decay 0.9, momentum 0.9) as trained for
    # EfficientNet-Lite by the TPU reference (main.py: base lr 0.016 per 256 images scaled
    # linearly, ε 1e-3, label smoothing 0.1, 5 warm-up epochs, 350 epochs), with the cosine decay
    # to 0 of the RAN-e reference scripts (arXiv 2208.08562); the TPU default is 0.97 every 2.4
    # epochs. Its weight decay 1e-5 is coupled L2 on non-BN variables (l2_loss, = Keras
    # L2(5e-6)), in the model.
    "efficientnet_lite": Recipe(
        Optimizer("rmsprop", rho=0.9, momentum=0.9, epsilon=1e-3),
        learning_rate=0.016,
        epochs=350,
        batch_size=256,
        base_batch_size=256,
        schedule=Schedule(warmup_epochs=5),
        loss=Loss(label_smoothing=0.1),
    ),
    # QuickNet (arXiv 2011.09398, as Larq Zoo 2.4 trains it): 600 epochs at batch
    # 2048, a 5-epoch warm-up then cosine decay, with two optimizers: Adam at 1e-2 for the binary
    # kernels and SGD momentum 0.9 at 0.1 for every other variable. The trainer has one
    # optimizer: Adam at the binary kernels' 1e-2 on the same schedule for all. Larq Zoo's
    # ImageNet crop and flip; its crop also keeps >= 10% of the image.
    "quicknet": Recipe(
        Optimizer("adam"),
        learning_rate=1e-2,
        epochs=600,
        batch_size=2048,
        base_batch_size=2048,
        schedule=Schedule(warmup_epochs=5),
        augment=(("imagenet", ("random_resized_crop", "flip")),),
    ),
    # Bi-Real Net 18 as Larq Zoo 2.4 trains it: Adam lr 5e-3, batch
    # 512, 300 epochs, decayed linearly to 0; the same crop and flip as QuickNet.
    "birealnet": Recipe(
        Optimizer("adam"),
        learning_rate=5e-3,
        epochs=300,
        batch_size=512,
        base_batch_size=512,
        schedule=Schedule("linear"),
        augment=(("imagenet", ("random_resized_crop", "flip")),),
    ),
}
