"""ReCU binary networks (Xu et al., ICCV 2021), as the official code builds them (recu_ern.md §A5).

Float layers only where the code keeps them: the stem conv, the 1x1 downsample convs and the
classifier. Every other conv is a ReCUConv2D followed by BatchNorm (α and BN fold into LCE's
bconv multiplier at conversion).
"""

import keras
from keras import layers

from effkeras.layers import LearnableBias, ReCUConv2D, normalize_pixels, option_a_shortcut
from effkeras.models.registry import register

PAPER = "ReCU, Xu et al., ICCV 2021"
BN = dict(momentum=0.9, epsilon=1e-5)  # PyTorch's BatchNorm defaults (§A8)
CIFAR100_MEAN, CIFAR100_STD = (0.507, 0.487, 0.441), (0.267, 0.256, 0.276)  # §A6

# (filters, blocks, first stride) per stage.
RESNET20_CIFAR = [(16, 3, 1), (32, 3, 2), (64, 3, 2)]  # §A5.1: double skip, 18 binary convs
RESNET18_CIFAR = [(64, 2, 1), (128, 2, 2), (256, 2, 2), (512, 2, 2)]  # §A5.2: single skip, 16
RESNET18_IMAGENET = [(64, 2, 1), (128, 2, 2), (256, 2, 2), (512, 2, 2)]  # §A5.4: 16 binary convs
RESNET34_IMAGENET = [(64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)]  # §A5.4: 32 binary convs
REACTNET18 = [(64, 4, 1), (128, 4, 2), (256, 4, 2), (512, 4, 2)]  # §A5.5: single-conv blocks, 16
REACTNET34 = [(64, 6, 1), (128, 8, 2), (256, 12, 2), (512, 6, 2)]  # §A5.5: 32
# §A5.3: (filters, max-pool after the conv); conv0 is float.
VGG_SMALL = [(128, False), (128, True), (256, False), (256, True), (512, False), (512, True)]


def hardtanh(name):
    return layers.Activation("hard_tanh", name=name)


def batch_norm(name, regularizer=None, gamma=1.0):
    return layers.BatchNormalization(**BN, gamma_initializer=keras.initializers.Constant(gamma),
                                     beta_regularizer=regularizer, gamma_regularizer=regularizer,
                                     name=name)


def l2(weight_decay):
    """PyTorch's coupled weight decay wd equals a Keras L2 penalty of wd / 2 (§A8)."""
    return keras.regularizers.L2(weight_decay / 2) if weight_decay else None


def float_conv(filters, kernel, stride, name, regularizer=None):
    return layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False,
                         kernel_initializer="he_normal", kernel_regularizer=regularizer, name=name)


def classifier(x, num_classes, regularizer, batch_norm_first=True):
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    if batch_norm_first:
        x = batch_norm("pool_bn", regularizer)(x)
    return layers.Dense(num_classes, kernel_regularizer=regularizer, bias_regularizer=regularizer,
                        name="logits")(x)


def cifar_input(input_shape, num_classes):
    inputs = keras.Input(input_shape, name="image")
    if num_classes == 100:
        return inputs, normalize_pixels(inputs, CIFAR100_MEAN, CIFAR100_STD)
    return inputs, normalize_pixels(inputs)  # CIFAR-10 uses ImageNet's mean/std in the code


# --- CIFAR (§A5.1-A5.3): weight decay 5e-4 on every parameter ---------------------------------


def cifar_double_skip_block(x, filters, stride, name, reg):
    """u = htanh(BN(bconv_s(x)) + SC(x)); out = htanh(BN(bconv(u)) + u)."""
    shortcut = option_a_shortcut(x, filters, stride, f"{name}_shortcut", pool="average")
    u = ReCUConv2D(filters, 3, stride, kernel_regularizer=reg, name=f"{name}_conv1")(x)
    u = layers.Add(name=f"{name}_add1")([batch_norm(f"{name}_bn1", reg)(u), shortcut])
    u = hardtanh(f"{name}_act1")(u)
    v = ReCUConv2D(filters, 3, 1, kernel_regularizer=reg, name=f"{name}_conv2")(u)
    v = layers.Add(name=f"{name}_add2")([batch_norm(f"{name}_bn2", reg)(v), u])
    return hardtanh(f"{name}_act2")(v)


def cifar_single_skip_block(x, filters, stride, name, reg):
    """u = htanh(BN(bconv_s(x))); out = htanh(BN(bconv(u)) + SC(x))."""
    shortcut = option_a_shortcut(x, filters, stride, f"{name}_shortcut", pool="average")
    u = ReCUConv2D(filters, 3, stride, kernel_regularizer=reg, name=f"{name}_conv1")(x)
    u = hardtanh(f"{name}_act1")(batch_norm(f"{name}_bn1", reg)(u))
    v = ReCUConv2D(filters, 3, 1, kernel_regularizer=reg, name=f"{name}_conv2")(u)
    v = layers.Add(name=f"{name}_add")([batch_norm(f"{name}_bn2", reg)(v), shortcut])
    return hardtanh(f"{name}_act2")(v)


def cifar_resnet(stages, block, stem_filters, stem_activation, name, input_shape, num_classes,
                 weight_decay):
    reg = l2(weight_decay)
    inputs, x = cifar_input(input_shape, num_classes)
    x = batch_norm("stem_bn", reg)(float_conv(stem_filters, 3, 1, "stem_conv", reg)(x))
    if stem_activation:
        x = hardtanh("stem_act")(x)
    for stage, (filters, blocks, stride) in enumerate(stages, start=1):
        for b in range(blocks):
            x = block(x, filters, stride if b == 0 else 1, f"stage{stage}_block{b + 1}", reg)
    return keras.Model(inputs, classifier(x, num_classes, reg), name=name)


CIFAR = dict(family="recu", paper=PAPER, input_shape=(32, 32, 3), num_classes=10,
             recipe="recu_cifar", deploy="lce")


@register("recu_resnet20", min_input_size=4, **CIFAR)
def recu_resnet20(input_shape=(32, 32, 3), num_classes=10, weight_decay=5e-4):
    return cifar_resnet(RESNET20_CIFAR, cifar_double_skip_block, 16, True, "recu_resnet20",
                        input_shape, num_classes, weight_decay)


@register("recu_resnet18", min_input_size=8, **CIFAR)
def recu_resnet18(input_shape=(32, 32, 3), num_classes=10, weight_decay=5e-4):
    # §A5.2: no activation after the stem BN.
    return cifar_resnet(RESNET18_CIFAR, cifar_single_skip_block, 64, False, "recu_resnet18",
                        input_shape, num_classes, weight_decay)


@register("recu_vgg_small", min_input_size=8, **CIFAR)
def recu_vgg_small(input_shape=(32, 32, 3), num_classes=10, weight_decay=5e-4):
    reg = l2(weight_decay)
    inputs, x = cifar_input(input_shape, num_classes)
    for i, (filters, pool) in enumerate(VGG_SMALL):
        if i == 0:
            x = float_conv(filters, 3, 1, "conv0", reg)(x)
        else:
            x = ReCUConv2D(filters, 3, 1, kernel_regularizer=reg, name=f"conv{i}")(x)
        if pool:  # pooling comes before BN in the code
            x = layers.MaxPooling2D(2, name=f"pool{i}")(x)
        x = hardtanh(f"act{i}")(batch_norm(f"bn{i}", reg)(x))
    x = layers.Flatten(name="flatten")(x)
    outputs = layers.Dense(num_classes, kernel_regularizer=reg, bias_regularizer=reg,
                           name="logits")(x)
    return keras.Model(inputs, outputs, name="recu_vgg_small")


# --- ImageNet one-stage (§A5.4): Bi-Real double skip, float 1x1 downsample -----------------------


def imagenet_input(input_shape):
    inputs = keras.Input(input_shape, name="image")
    return inputs, normalize_pixels(inputs)


def imagenet_double_skip_block(x, filters, stride, name, reg):
    """u = htanh(BN(bconv_s(x)) + D(x)); out = htanh(BN(bconv(u)) + u). BN γ starts at 1e-8."""
    shortcut = x
    if stride > 1 or x.shape[-1] != filters:  # float downsample, no weight decay (§A6)
        shortcut = float_conv(filters, 1, stride, f"{name}_downsample_conv")(x)
        shortcut = batch_norm(f"{name}_downsample_bn", gamma=1e-8)(shortcut)
    u = ReCUConv2D(filters, 3, stride, kernel_regularizer=reg, name=f"{name}_conv1")(x)
    u = layers.Add(name=f"{name}_add1")([batch_norm(f"{name}_bn1", gamma=1e-8)(u), shortcut])
    u = hardtanh(f"{name}_act1")(u)
    v = ReCUConv2D(filters, 3, 1, kernel_regularizer=reg, name=f"{name}_conv2")(u)
    v = layers.Add(name=f"{name}_add2")([batch_norm(f"{name}_bn2", gamma=1e-8)(v), u])
    return hardtanh(f"{name}_act2")(v)


def imagenet_resnet(stages, name, input_shape, num_classes, weight_decay):
    # Decay on "conv"/"fc" parameters only: binary kernels, α, stem conv, classifier (§A6).
    reg = l2(weight_decay)
    inputs, x = imagenet_input(input_shape)
    x = batch_norm("stem_bn", gamma=1e-8)(float_conv(64, 7, 2, "stem_conv", reg)(x))
    x = hardtanh("stem_act")(x)
    x = layers.MaxPooling2D(3, strides=2, padding="same", name="stem_pool")(x)
    for stage, (filters, blocks, stride) in enumerate(stages, start=1):
        for b in range(blocks):
            x = imagenet_double_skip_block(x, filters, stride if b == 0 else 1,
                                           f"stage{stage}_block{b + 1}", reg)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    x = batch_norm("pool_bn")(x)
    outputs = layers.Dense(num_classes, kernel_regularizer=reg, bias_regularizer=reg, name="logits")(x)
    return keras.Model(inputs, outputs, name=name)


IMAGENET = dict(family="recu", paper=PAPER, input_shape=(224, 224, 3), num_classes=1000,
                deploy="lce", min_input_size=32)


@register("recu_resnet18_imagenet", recipe="recu_imagenet", **IMAGENET)
def recu_resnet18_imagenet(input_shape=(224, 224, 3), num_classes=1000, weight_decay=1e-4):
    return imagenet_resnet(RESNET18_IMAGENET, "recu_resnet18_imagenet", input_shape, num_classes,
                           weight_decay)


@register("recu_resnet34_imagenet", recipe="recu_imagenet", **IMAGENET)
def recu_resnet34_imagenet(input_shape=(224, 224, 3), num_classes=1000, weight_decay=1e-4):
    return imagenet_resnet(RESNET34_IMAGENET, "recu_resnet34_imagenet", input_shape, num_classes,
                           weight_decay)


# --- ImageNet two-stage, ReActNet-like (§A5.5) ------------------------------------------------


def reactnet_block(x, filters, stride, name):
    """u = BN(bconv_s(x + b0)) + D(x); out = PReLU(u + b1) + b2."""
    shortcut = x
    if stride > 1 or x.shape[-1] != filters:
        shortcut = layers.AveragePooling2D(stride, name=f"{name}_downsample_pool")(x) if stride > 1 else x
        shortcut = float_conv(filters, 1, 1, f"{name}_downsample_conv")(shortcut)
        shortcut = batch_norm(f"{name}_downsample_bn")(shortcut)
    u = LearnableBias(name=f"{name}_bias0")(x)
    u = batch_norm(f"{name}_bn")(ReCUConv2D(filters, 3, stride, name=f"{name}_conv")(u))
    u = layers.Add(name=f"{name}_add")([u, shortcut])
    u = LearnableBias(name=f"{name}_bias1")(u)
    u = layers.PReLU(alpha_initializer=keras.initializers.Constant(0.25), shared_axes=[1, 2],
                     name=f"{name}_prelu")(u)
    return LearnableBias(name=f"{name}_bias2")(u)


def reactnet(stages, name, input_shape, num_classes):
    inputs, x = imagenet_input(input_shape)
    x = batch_norm("stem_bn")(float_conv(64, 7, 2, "stem_conv")(x))
    x = layers.MaxPooling2D(3, strides=2, padding="same", name="stem_pool")(x)
    for stage, (filters, blocks, stride) in enumerate(stages, start=1):
        for b in range(blocks):
            x = reactnet_block(x, filters, stride if b == 0 else 1, f"stage{stage}_block{b + 1}")
    return keras.Model(inputs, classifier(x, num_classes, None, batch_norm_first=False), name=name)


@register("recu_reactnet18", recipe="recu_two_stage", **IMAGENET)
def recu_reactnet18(input_shape=(224, 224, 3), num_classes=1000):
    return reactnet(REACTNET18, "recu_reactnet18", input_shape, num_classes)


@register("recu_reactnet34", recipe="recu_two_stage", **IMAGENET)
def recu_reactnet34(input_shape=(224, 224, 3), num_classes=1000):
    return reactnet(REACTNET34, "recu_reactnet34", input_shape, num_classes)
