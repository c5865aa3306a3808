"""ReCU binary networks (Xu et al., ICCV 2021, arXiv 2103.12369), as the official code
(github.com/z-hXu/ReCU) builds them: the paper's Tables 4-5 models.

Float layers only where the code keeps them: the stem conv, the 1x1 downsample convs and the
classifier. Every other conv is a ReCUConv2D followed by BatchNorm (α and BN fold into LCE's
bconv multiplier at conversion). BatchNorm has PyTorch's settings (`common.batch_norm`).
"""

import dataclasses

import keras
from keras import layers

from effkeras.layers import LearnableBias, ReCUConv2D, normalize_pixels, option_a_shortcut
from effkeras.models.common import batch_norm, coupled_l2, each_block, stages
from effkeras.models.registry import register

PAPER = "ReCU, Xu et al., ICCV 2021"
# The official code's CIFAR-100 normalisation (CIFAR-10 uses ImageNet's mean and std there).
CIFAR100_MEAN, CIFAR100_STD = (0.507, 0.487, 0.441), (0.267, 0.256, 0.276)

WIDTHS = (64, 128, 256, 512)
# CIFAR resnet20_1w1a: Bi-Real double skip, 18 binary convs.
RESNET20_CIFAR = stages(filters=(16, 32, 64), blocks=(3, 3, 3))
# CIFAR resnet18_1w1a: single skip per block in the code (the paper's §5.1 says double), 16.
RESNET18_CIFAR = stages(filters=WIDTHS, blocks=(2, 2, 2, 2))
# ImageNet one-stage resnet18/34_1w1a: double skip, 16 / 32 binary convs.
RESNET18_IMAGENET = stages(filters=WIDTHS, blocks=(2, 2, 2, 2))
RESNET34_IMAGENET = stages(filters=WIDTHS, blocks=(3, 4, 6, 3))
# ImageNet two-stage, ReActNet-like (arXiv 2003.03488): one conv per block, the same 16 / 32.
REACTNET18 = stages(filters=WIDTHS, blocks=(4, 4, 4, 4))
REACTNET34 = stages(filters=WIDTHS, blocks=(6, 8, 12, 6))


@dataclasses.dataclass(frozen=True)
class VggConv:
    filters: int
    max_pool: bool  # a 2x2 max-pool after the conv (before its BN, as in the code)


# CIFAR vgg_small_1w1a: conv0 is float, the other five binary.
VGG_SMALL = (VggConv(128, False), VggConv(128, True), VggConv(256, False), VggConv(256, True),
             VggConv(512, False), VggConv(512, True))


def hardtanh(name):
    return layers.Activation("hard_tanh", name=name)


def float_conv(filters, kernel, stride, name, regularizer=None):
    return layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False,
                         kernel_initializer="he_normal", kernel_regularizer=regularizer, name=name)


def classifier(x, num_classes, regularizer, batch_norm_first=True):
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    if batch_norm_first:
        x = batch_norm("pool_bn", regularizer=regularizer)(x)
    return layers.Dense(num_classes, kernel_regularizer=regularizer, bias_regularizer=regularizer,
                        name="logits")(x)


def cifar_input(input_shape, num_classes):
    inputs = keras.Input(input_shape, name="image")
    if num_classes == 100:
        return inputs, normalize_pixels(inputs, CIFAR100_MEAN, CIFAR100_STD)
    return inputs, normalize_pixels(inputs)  # CIFAR-10 uses ImageNet's mean/std in the code


# --- CIFAR (the code's cifar/): weight decay 5e-4 on every parameter ----------------------------


def cifar_double_skip_block(x, filters, stride, name, reg):
    """u = htanh(BN(bconv_s(x)) + SC(x)); out = htanh(BN(bconv(u)) + u)."""
    shortcut = option_a_shortcut(x, filters, stride, f"{name}_shortcut", pool="average")
    u = ReCUConv2D(filters, 3, stride, kernel_regularizer=reg, name=f"{name}_conv1")(x)
    u = layers.Add(name=f"{name}_add1")([batch_norm(f"{name}_bn1", regularizer=reg)(u), shortcut])
    u = hardtanh(f"{name}_act1")(u)
    v = ReCUConv2D(filters, 3, 1, kernel_regularizer=reg, name=f"{name}_conv2")(u)
    v = layers.Add(name=f"{name}_add2")([batch_norm(f"{name}_bn2", regularizer=reg)(v), u])
    return hardtanh(f"{name}_act2")(v)


def cifar_single_skip_block(x, filters, stride, name, reg):
    """u = htanh(BN(bconv_s(x))); out = htanh(BN(bconv(u)) + SC(x))."""
    shortcut = option_a_shortcut(x, filters, stride, f"{name}_shortcut", pool="average")
    u = ReCUConv2D(filters, 3, stride, kernel_regularizer=reg, name=f"{name}_conv1")(x)
    u = hardtanh(f"{name}_act1")(batch_norm(f"{name}_bn1", regularizer=reg)(u))
    v = ReCUConv2D(filters, 3, 1, kernel_regularizer=reg, name=f"{name}_conv2")(u)
    v = layers.Add(name=f"{name}_add")([batch_norm(f"{name}_bn2", regularizer=reg)(v), shortcut])
    return hardtanh(f"{name}_act2")(v)


def cifar_resnet(stage_table, block, stem_filters, stem_activation, name, input_shape,
                 num_classes, weight_decay):
    reg = coupled_l2(weight_decay)
    inputs, x = cifar_input(input_shape, num_classes)
    x = batch_norm("stem_bn", regularizer=reg)(float_conv(stem_filters, 3, 1, "stem_conv", reg)(x))
    if stem_activation:
        x = hardtanh("stem_act")(x)
    for spec in each_block(stage_table):
        x = block(x, spec.filters, spec.stride, spec.name, reg)
    return keras.Model(inputs, classifier(x, num_classes, reg), name=name)


CIFAR = dict(family="recu", paper=PAPER, input_shape=(32, 32, 3), num_classes=10,
             recipe="recu_cifar", deploy="arm")


@register("recu_resnet20", min_input_size=4, **CIFAR)
def recu_resnet20(input_shape=(32, 32, 3), num_classes=10, weight_decay=5e-4):
    return cifar_resnet(RESNET20_CIFAR, cifar_double_skip_block, 16, True, "recu_resnet20",
                        input_shape, num_classes, weight_decay)


@register("recu_resnet18", min_input_size=8, **CIFAR)
def recu_resnet18(input_shape=(32, 32, 3), num_classes=10, weight_decay=5e-4):
    # The code's CIFAR ResNet-18 has no activation after the stem BN.
    return cifar_resnet(RESNET18_CIFAR, cifar_single_skip_block, 64, False, "recu_resnet18",
                        input_shape, num_classes, weight_decay)


@register("recu_vgg_small", min_input_size=8, **CIFAR)
def recu_vgg_small(input_shape=(32, 32, 3), num_classes=10, weight_decay=5e-4):
    reg = coupled_l2(weight_decay)
    inputs, x = cifar_input(input_shape, num_classes)
    for i, conv in enumerate(VGG_SMALL):
        if i == 0:
            x = float_conv(conv.filters, 3, 1, "conv0", reg)(x)
        else:
            x = ReCUConv2D(conv.filters, 3, 1, kernel_regularizer=reg, name=f"conv{i}")(x)
        if conv.max_pool:
            x = layers.MaxPooling2D(2, name=f"pool{i}")(x)
        x = hardtanh(f"act{i}")(batch_norm(f"bn{i}", regularizer=reg)(x))
    x = layers.Flatten(name="flatten")(x)
    outputs = layers.Dense(num_classes, kernel_regularizer=reg, bias_regularizer=reg,
                           name="logits")(x)
    return keras.Model(inputs, outputs, name="recu_vgg_small")


# --- ImageNet one-stage (the code's imagenet/): Bi-Real double skip, float 1x1 downsample -------


def imagenet_input(input_shape):
    inputs = keras.Input(input_shape, name="image")
    return inputs, normalize_pixels(inputs)


def imagenet_double_skip_block(x, filters, stride, name, reg):
    """u = htanh(BN(bconv_s(x)) + D(x)); out = htanh(BN(bconv(u)) + u). BN γ starts at 1e-8."""
    shortcut = x
    # Float downsample, no weight decay: the code decays only parameters named "conv" or "fc".
    if stride > 1 or x.shape[-1] != filters:
        shortcut = float_conv(filters, 1, stride, f"{name}_downsample_conv")(x)
        shortcut = batch_norm(f"{name}_downsample_bn", gamma=1e-8)(shortcut)
    u = ReCUConv2D(filters, 3, stride, kernel_regularizer=reg, name=f"{name}_conv1")(x)
    u = layers.Add(name=f"{name}_add1")([batch_norm(f"{name}_bn1", gamma=1e-8)(u), shortcut])
    u = hardtanh(f"{name}_act1")(u)
    v = ReCUConv2D(filters, 3, 1, kernel_regularizer=reg, name=f"{name}_conv2")(u)
    v = layers.Add(name=f"{name}_add2")([batch_norm(f"{name}_bn2", gamma=1e-8)(v), u])
    return hardtanh(f"{name}_act2")(v)


def imagenet_resnet(stage_table, name, input_shape, num_classes, weight_decay):
    # Decay on "conv"/"fc" parameters only, as the code: binary kernels, α, stem conv, classifier.
    reg = coupled_l2(weight_decay)
    inputs, x = imagenet_input(input_shape)
    x = batch_norm("stem_bn", gamma=1e-8)(float_conv(64, 7, 2, "stem_conv", reg)(x))
    x = hardtanh("stem_act")(x)
    x = layers.MaxPooling2D(3, strides=2, padding="same", name="stem_pool")(x)
    for spec in each_block(stage_table):
        x = imagenet_double_skip_block(x, spec.filters, spec.stride, spec.name, reg)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    x = batch_norm("pool_bn")(x)
    outputs = layers.Dense(num_classes, kernel_regularizer=reg, bias_regularizer=reg, name="logits")(x)
    return keras.Model(inputs, outputs, name=name)


IMAGENET = dict(family="recu", paper=PAPER, input_shape=(224, 224, 3), num_classes=1000,
                deploy="arm", min_input_size=32)


@register("recu_resnet18_imagenet", recipe="recu_imagenet", **IMAGENET)
def recu_resnet18_imagenet(input_shape=(224, 224, 3), num_classes=1000, weight_decay=1e-4):
    return imagenet_resnet(RESNET18_IMAGENET, "recu_resnet18_imagenet", input_shape, num_classes,
                           weight_decay)


@register("recu_resnet34_imagenet", recipe="recu_imagenet", **IMAGENET)
def recu_resnet34_imagenet(input_shape=(224, 224, 3), num_classes=1000, weight_decay=1e-4):
    return imagenet_resnet(RESNET34_IMAGENET, "recu_resnet34_imagenet", input_shape, num_classes,
                           weight_decay)


# --- ImageNet two-stage (the code's imagenet_two-stage/), ReActNet-like -------------------------


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


def reactnet(stage_table, name, input_shape, num_classes):
    inputs, x = imagenet_input(input_shape)
    x = batch_norm("stem_bn")(float_conv(64, 7, 2, "stem_conv")(x))
    x = layers.MaxPooling2D(3, strides=2, padding="same", name="stem_pool")(x)
    for spec in each_block(stage_table):
        x = reactnet_block(x, spec.filters, spec.stride, spec.name)
    return keras.Model(inputs, classifier(x, num_classes, None, batch_norm_first=False), name=name)


@register("recu_reactnet18", recipe="recu_two_stage", **IMAGENET)
def recu_reactnet18(input_shape=(224, 224, 3), num_classes=1000):
    return reactnet(REACTNET18, "recu_reactnet18", input_shape, num_classes)


@register("recu_reactnet34", recipe="recu_two_stage", **IMAGENET)
def recu_reactnet34(input_shape=(224, 224, 3), num_classes=1000):
    return reactnet(REACTNET34, "recu_reactnet34", input_shape, num_classes)
