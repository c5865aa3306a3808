"""RANet: Resolution Adaptive Networks (Yang et al., "Resolution Adaptive Networks for Efficient
Inference", CVPR 2020, arXiv 2003.07326).

H dense sub-networks, one per input resolution, lowest first; an image that the cheap
low-resolution classifiers already recognise confidently stops there, the others go on into
finer sub-networks that reuse the coarser ones' features through fusion blocks (Fig. 2).
Every sub-network brings its features down to the lowest resolution, where all classifiers run
(Fig. 2: "Classifiers only operate on feature maps at the lowest resolution"). The model returns
the K exits' logits, outputs named exit1 ... exitK in forward order; training sums their
cross-entropies with equal weights (recipe "ranet").

The architecture is planned from the paper's arguments (channels, growth, steps, scales) in
`effkeras.models.ranet_plan`, which also counts each exit's cost; this file builds the Keras
model from that plan. Configs, as the official code's scripts run them (the exits' FLOPs are
the x values of the paper's accuracy-vs-FLOPs plots):

- ranet_cifar, the README's CIFAR network: --step 2 --stepmode lg --nChannels 16 --growthRate 6
  --scale-list 1-2-3 --grFactor 4-2-1 --bnFactor 4-2-1: 6 exits, 8.4-58.9M FLOPs, 2.55M
  parameters (CIFAR-10).
- ranet_cifar_anytime: the anytime-prediction network: --step 4 --stepmode even
  --scale-list 1-2-3-3 --grFactor 4-2-1-1 --bnFactor 4-2-1-1: 8 exits, 15.8-94.9M FLOPs, 3.26M.
- ranet_imagenet: --step 8 --growthRate 16 --nChannels 64 --scale-list 1-2-3-4 --grFactor
  4-2-2-1 --bnFactor 4-2-2-1: 8 exits, 0.43-3.33G FLOPs, 149M parameters (ImageNet anytime).
- ranet_imagenet_32: the same with --nChannels 32 (the README's ImageNet network, a
  budgeted-batch model): 0.25-2.83G FLOPs, 131M parameters.

Implementation choices: convs pad "same" (PyTorch's padding k // 2 puts one pixel more on the
top/left of even-sized maps at stride 2: a phase shift that matters only for ported weights);
the resize is bilinear with aligned corners as the official code (`Config.resize`:
"half_pixel" is the alternative most runtimes and NPUs take); BN momentum 0.9, ε 1e-5 (PyTorch's
defaults); He fan-out initialisation of convs; weight decay 1e-4 on every parameter as coupled
L2 (PyTorch SGD's `weight_decay`) in the model's regularizers; the classifiers' 2x2 average
pooling is a global average pooling (the same at the paper's input sizes, and it fits others).
"""

import dataclasses

import keras
from keras import layers

from effkeras.layers import BilinearResize, normalize_pixels
from effkeras.models.common import batch_norm, coupled_l2
from effkeras.models.ranet_plan import Config, build_plan
from effkeras.models.registry import register

# The networks of the paper's experiments, as the official training scripts set their flags.
RANET_CIFAR = Config(
    n_channels=16,
    growth_rate=6,
    step=2,
    stepmode="lg",
    scale_list=(1, 2, 3),
    gr_factor=(4, 2, 1),
    bn_factor=(4, 2, 1),
)
RANET_CIFAR_ANYTIME = Config(
    n_channels=16,
    growth_rate=6,
    step=4,
    stepmode="even",
    scale_list=(1, 2, 3, 3),
    gr_factor=(4, 2, 1, 1),
    bn_factor=(4, 2, 1, 1),
)
RANET_IMAGENET = Config(
    n_channels=64,
    growth_rate=16,
    step=8,
    stepmode="even",
    scale_list=(1, 2, 3, 4),
    gr_factor=(4, 2, 2, 1),
    bn_factor=(4, 2, 2, 1),
    stem="imagenet",
    head_width=None,
)
RANET_IMAGENET_32 = dataclasses.replace(RANET_IMAGENET, n_channels=32)
CONFIGS = {
    "ranet_cifar": RANET_CIFAR,
    "ranet_cifar_anytime": RANET_CIFAR_ANYTIME,
    "ranet_imagenet": RANET_IMAGENET,
    "ranet_imagenet_32": RANET_IMAGENET_32,
}

WEIGHT_DECAY = 1e-4  # SGD weight decay on all parameters, BN and biases included (official code)
# Pixel statistics the official code normalises by: CIFAR-10's, and ImageNet's.
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4824, 0.4467), (0.2471, 0.2435, 0.2616)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# As configs, so that every layer gets its own initializer (one unseeded Keras 3 initializer
# object gives every layer of the same shape the same weights).
CONV_INIT = {
    "class_name": "VarianceScaling",
    "config": {"scale": 2.0, "mode": "fan_out", "distribution": "untruncated_normal"},
}
DENSE_INIT = {
    "class_name": "VarianceScaling",  # ±1/sqrt(fan_in)
    "config": {"scale": 1 / 3, "mode": "fan_in", "distribution": "uniform"},
}


def _conv(x, filters, kernel, name, stride=1, bias=False):
    return layers.Conv2D(
        filters,
        kernel,
        strides=stride,
        padding="same",
        use_bias=bias,
        kernel_initializer=CONV_INIT,
        kernel_regularizer=coupled_l2(WEIGHT_DECAY),
        bias_regularizer=coupled_l2(WEIGHT_DECAY) if bias else None,
        name=name,
    )(x)


def conv_bn_relu(x, filters, kernel, name, stride=1, bias=False):
    """Applies a "same"-padded conv, BN and ReLU (layers `{name}_conv`, `_bn`, `_relu`).

    Args:
        x: tensor of shape `(batch, height, width, channels)`.
        filters: int. Output channels.
        kernel: int. Kernel size.
        name: str. Prefix of the layer names.
        stride: int. Stride. Defaults to `1`.
        bias: bool. Whether the conv has a bias. Defaults to `False`.

    Returns:
        The output tensor with `filters` channels.
    """
    x = _conv(x, filters, kernel, f"{name}_conv", stride, bias)
    x = batch_norm(f"{name}_bn", regularizer=coupled_l2(WEIGHT_DECAY))(x)
    return layers.ReLU(name=f"{name}_relu")(x)


def bottleneck(x, filters, width, stride, name):
    """1x1 conv to `width` then 3x3 conv to `filters` (stride 1, or 2 in a down layer), each
    with BN and ReLU; the 3x3 conv alone when width is 0 (no bottleneck).

    Args:
        x: tensor of shape `(batch, height, width, channels)`.
        filters: int. Output channels of the 3x3 conv.
        width: int. Output channels of the 1x1 conv; 0 for none.
        stride: int. Stride of the 3x3 conv (1, or 2 in a down layer).
        name: str. Prefix of the layer names.

    Returns:
        The output tensor with `filters` channels.
    """
    if width:
        x = conv_bn_relu(x, width, 1, f"{name}_1x1")
    return conv_bn_relu(x, filters, 3, f"{name}_3x3", stride)


def resize_like(x, reference, config, name):
    """Returns `x` bilinearly resized to the spatial size of `reference`.

    Args:
        x: tensor of shape `(batch, height, width, channels)`.
        reference: tensor whose height and width to take.
        config: Config. Its `resize` picks aligned corners or half-pixel centres.
        name: str. Name of the resize layer.

    Returns:
        The resized tensor, or `x` itself when it already has the size.
    """
    size = tuple(reference.shape[1:3])
    if tuple(x.shape[1:3]) == size:
        return x
    return BilinearResize(size, align_corners=config.resize == "align_corners", name=name)(x)


def ranet_block(x, spec, coarse, config, name):
    """One block of the plan (`spec`, a BlockPlan) on input `x`: its dense layers, fused in a
    fusion block with `coarse`, the paired coarser block's features [input, after layer 1, ...,
    after its last layer]; then conv_last and the transition. Returns (output, [input, after
    layer 1, ..., after the last layer]): what the next sub-network's paired block reads.

    Args:
        x: tensor of shape `(batch, height, width, channels)`.
        spec: BlockPlan. The block's plan.
        coarse: list of tensors or None. The paired coarser block's features (fusion blocks).
        config: Config. The network's config (its resize mode).
        name: str. Prefix of the block's layer names.

    Returns:
        A tuple `(output, features)`.
    """
    features = [x]
    for t, layer in enumerate(spec.layers):
        prefix = f"{name}_layer{t + 1}"
        new = bottleneck(x, layer.growth, layer.width, layer.stride, prefix)
        if layer.coarse_in:  # a fusion layer: [x, coarse path, own path], all at `new`'s size
            up = bottleneck(
                coarse[t], layer.coarse_growth, layer.coarse_width, 1, f"{prefix}_coarse"
            )
            parts = [
                resize_like(x, new, config, f"{prefix}_down"),
                resize_like(up, new, config, f"{prefix}_coarse_resize"),
                new,
            ]
        else:  # a dense layer: [x, new]
            parts = [x, new]
        x = layers.Concatenate(name=f"{prefix}_concat")(parts)
        features.append(x)
    if spec.conv_last:  # the coarse block's dense output, compressed and resized
        last = conv_bn_relu(coarse[-1], spec.conv_last, 1, f"{name}_conv_last")
        last = resize_like(last, x, config, f"{name}_conv_last_resize")
        x = layers.Concatenate(name=f"{name}_conv_last_concat")([x, last])
    if spec.transition:
        x = conv_bn_relu(x, spec.out_channels, 1, f"{name}_transition")
    return x, features


def classifier(x, width, num_classes, name):
    """Applies an exit: two 3x3 stride-2 convs, global average pooling and the linear layer.

    Args:
        x: tensor of shape `(batch, height, width, channels)`.
        width: int. Output channels of the two convs.
        num_classes: int. Number of logits.
        name: str. The exit's name (its Dense layer and so the model output, e.g. `exit1`).

    Returns:
        The logits tensor, shape `(batch, num_classes)`.
    """
    x = conv_bn_relu(x, width, 3, f"{name}_head1", stride=2)
    x = conv_bn_relu(x, width, 3, f"{name}_head2", stride=2)
    x = layers.GlobalAveragePooling2D(name=f"{name}_pool")(x)
    return layers.Dense(
        num_classes,
        kernel_initializer=DENSE_INIT,
        bias_initializer="zeros",
        kernel_regularizer=coupled_l2(WEIGHT_DECAY),
        bias_regularizer=coupled_l2(WEIGHT_DECAY),
        name=name,
    )(x)


def ranet(config, name, input_shape, num_classes):
    """Builds the Keras model of `config` (a ranet_plan.Config): outputs exit1 ... exitK.

    Args:
        config: Config. The paper's arguments.
        name: str. The model name.
        input_shape: tuple of 3 ints. Square `(size, size, channels)` of raw [0, 255] pixels.
        num_classes: int. Number of classes of every exit.

    Returns:
        A functional `keras.Model` with one logits output per exit, in forward order.

    Raises:
        ValueError: if the input is not square.
    """
    if input_shape[0] != input_shape[1]:
        raise ValueError(
            f"RANet takes square inputs (its plan halves one size), got {input_shape[:2]}"
        )
    layout = build_plan(config, input_shape[0])
    inputs = keras.Input(input_shape, name="image")  # raw pixels in [0, 255]
    cifar = config.stem == "cifar"
    x = normalize_pixels(
        inputs, *((CIFAR_MEAN, CIFAR_STD) if cifar else (IMAGENET_MEAN, IMAGENET_STD))
    )
    bases = {}  # the initial layer, highest resolution first: each conv makes a sub-network's input
    for k, stem in enumerate(layout.initial):
        if k == 0 and not cifar:  # 7x7 stride-2 conv (with a bias), BN, ReLU, 3x3/2 max pooling
            x = conv_bn_relu(x, stem.channels, 7, "stem", stride=2, bias=True)
            x = layers.MaxPooling2D(3, strides=2, padding="same", name="stem_pool")(x)
        else:
            x = conv_bn_relu(
                x, stem.channels, 3, "stem" if k == 0 else f"initial{k}", stride=stem.stride
            )
        bases[stem.subnet] = x
    outputs, coarse_features = [], None
    for subnet in layout.subnets:
        x, features = bases[subnet.index], []
        for spec in subnet.blocks:
            coarse = coarse_features[spec.index - 1] if spec.kind == "fusion" else None
            x, block_features = ranet_block(
                x, spec, coarse, config, f"subnet{spec.subnet}_block{spec.index}"
            )
            features.append(block_features)
            if spec.exit:
                outputs.append(
                    classifier(
                        x, config.head_width or spec.out_channels, num_classes, f"exit{spec.exit}"
                    )
                )
        coarse_features = features
    return keras.Model(inputs, outputs, name=name)


def build(name, input_shape, num_classes, **overrides):
    """Builds registered RANet `name`, with `overrides` of its Config fields.

    Args:
        name: str. A key of `CONFIGS`.
        input_shape: tuple of 3 ints. Square `(size, size, channels)`.
        num_classes: int. Number of classes of every exit.
        **overrides: Config fields to change (e.g. n_channels, step, growth_rate for a small
            copy; resize="half_pixel").

    Returns:
        A functional `keras.Model` with outputs exit1 ... exitK.

    Raises:
        TypeError: if an override is not a Config field.
        ValueError: if the input is not square or the config is invalid.
    """
    fields = {field.name for field in dataclasses.fields(Config)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise TypeError(
            f"{name} takes no argument {', '.join(unknown)}; its config fields are "
            f"{', '.join(sorted(fields))}"
        )
    return ranet(
        dataclasses.replace(CONFIGS[name], **overrides), name, tuple(input_shape), num_classes
    )


def plan_of(name, input_size=None, **overrides):
    """Returns the ranet_plan.Plan of registered RANet `name` (no model is built).

    Args:
        name: str. A key of `CONFIGS`.
        input_size: int or None. Height and width of the square input. Defaults to `None`: 32
            for the CIFAR stem, 224 for ImageNet's.
        **overrides: Config fields to change.

    Returns:
        A `ranet_plan.Plan`.
    """
    return build_plan(dataclasses.replace(CONFIGS[name], **overrides), input_size)


PAPER = "Yang et al., CVPR 2020 (RANet, arXiv 2003.07326)"
# The test harness's copies: the same sub-networks with one block fewer each (still fusion,
# down-sampling and transition blocks, one exit per sub-network), fewer layers and channels.
SMALL = dict(n_blocks=1, block_step=1, step=1, growth_rate=4)
CIFAR = dict(
    family="ranet",
    paper=PAPER,
    input_shape=(32, 32, 3),
    num_classes=10,
    recipe="ranet",
    deploy="float",
    min_input_size=4,  # 2 halvings to the classifiers
    small=dict(SMALL, n_channels=8),
)
IMAGENET = dict(
    family="ranet",
    paper=PAPER,
    input_shape=(224, 224, 3),
    num_classes=1000,
    recipe="ranet",
    deploy="float",
    min_input_size=32,  # stem 4 x 3 halvings to the classifiers
    small=dict(SMALL, n_channels=4),
)


@register("ranet_cifar", **CIFAR)
def ranet_cifar(input_shape=(32, 32, 3), num_classes=10, **overrides):
    """RANet for CIFAR, the official README's network.

    --step 2 --stepmode lg --nChannels 16 --growthRate 6 --scale-list 1-2-3 --grFactor 4-2-1
    --bnFactor 4-2-1: 6 exits, 8.4-58.9M FLOPs, 2.55M parameters (CIFAR-10); the FLOPs are the
    x values of the paper's accuracy-vs-FLOPs plots.

    Reference:
        - [Yang et al., Resolution Adaptive Networks for Efficient Inference, CVPR 2020](
            https://arxiv.org/abs/2003.07326)

    Args:
        input_shape: tuple of 3 ints. Square `(size, size, channels)` of raw [0, 255] pixels,
            normalised with CIFAR-10's mean and std. Defaults to `(32, 32, 3)`.
        num_classes: int. Number of classes of every exit. Defaults to `10`.
        **overrides: fields of `ranet_plan.Config` to change (e.g. `n_channels`, `step`,
            `growth_rate` for a small copy; `resize="half_pixel"`).

    Returns:
        A functional `keras.Model` with K outputs `exit1` ... `exitK` (forward order), each
        logits of shape `(batch, num_classes)`.

    Raises:
        TypeError: if an override is not a `Config` field.
        ValueError: if the input is not square or the overridden config is invalid.
    """
    return build("ranet_cifar", input_shape, num_classes, **overrides)


@register("ranet_cifar_anytime", **CIFAR)
def ranet_cifar_anytime(input_shape=(32, 32, 3), num_classes=10, **overrides):
    """RANet for CIFAR, the anytime-prediction network.

    --step 4 --stepmode even --scale-list 1-2-3-3 --grFactor 4-2-1-1 --bnFactor 4-2-1-1:
    8 exits, 15.8-94.9M FLOPs, 3.26M parameters; the FLOPs are the x values of the paper's
    accuracy-vs-FLOPs plots.

    Reference:
        - [Yang et al., Resolution Adaptive Networks for Efficient Inference, CVPR 2020](
            https://arxiv.org/abs/2003.07326)

    Args:
        input_shape: tuple of 3 ints. Square `(size, size, channels)` of raw [0, 255] pixels,
            normalised with CIFAR-10's mean and std. Defaults to `(32, 32, 3)`.
        num_classes: int. Number of classes of every exit. Defaults to `10`.
        **overrides: fields of `ranet_plan.Config` to change (e.g. `n_channels`, `step`,
            `growth_rate` for a small copy; `resize="half_pixel"`).

    Returns:
        A functional `keras.Model` with K outputs `exit1` ... `exitK` (forward order), each
        logits of shape `(batch, num_classes)`.

    Raises:
        TypeError: if an override is not a `Config` field.
        ValueError: if the input is not square or the overridden config is invalid.
    """
    return build("ranet_cifar_anytime", input_shape, num_classes, **overrides)


@register("ranet_imagenet", **IMAGENET)
def ranet_imagenet(input_shape=(224, 224, 3), num_classes=1000, **overrides):
    """RANet for ImageNet, the anytime-prediction network.

    --step 8 --growthRate 16 --nChannels 64 --scale-list 1-2-3-4 --grFactor 4-2-2-1
    --bnFactor 4-2-2-1: 8 exits, 0.43-3.33G FLOPs, 149M parameters; the FLOPs are the x
    values of the paper's accuracy-vs-FLOPs plots.

    Reference:
        - [Yang et al., Resolution Adaptive Networks for Efficient Inference, CVPR 2020](
            https://arxiv.org/abs/2003.07326)

    Args:
        input_shape: tuple of 3 ints. Square `(size, size, channels)` of raw [0, 255] pixels,
            normalised with ImageNet's mean and std. Defaults to `(224, 224, 3)`.
        num_classes: int. Number of classes of every exit. Defaults to `1000`.
        **overrides: fields of `ranet_plan.Config` to change (e.g. `n_channels`, `step`,
            `growth_rate` for a small copy; `resize="half_pixel"`).

    Returns:
        A functional `keras.Model` with K outputs `exit1` ... `exitK` (forward order), each
        logits of shape `(batch, num_classes)`.

    Raises:
        TypeError: if an override is not a `Config` field.
        ValueError: if the input is not square or the overridden config is invalid.
    """
    return build("ranet_imagenet", input_shape, num_classes, **overrides)


@register("ranet_imagenet_32", **IMAGENET)
def ranet_imagenet_32(input_shape=(224, 224, 3), num_classes=1000, **overrides):
    """RANet for ImageNet with --nChannels 32, the README's (budgeted-batch) network.

    As `ranet_imagenet` with 32 base channels: 8 exits, 0.25-2.83G FLOPs, 131M parameters;
    the FLOPs are the x values of the paper's accuracy-vs-FLOPs plots.

    Reference:
        - [Yang et al., Resolution Adaptive Networks for Efficient Inference, CVPR 2020](
            https://arxiv.org/abs/2003.07326)

    Args:
        input_shape: tuple of 3 ints. Square `(size, size, channels)` of raw [0, 255] pixels,
            normalised with ImageNet's mean and std. Defaults to `(224, 224, 3)`.
        num_classes: int. Number of classes of every exit. Defaults to `1000`.
        **overrides: fields of `ranet_plan.Config` to change (e.g. `n_channels`, `step`,
            `growth_rate` for a small copy; `resize="half_pixel"`).

    Returns:
        A functional `keras.Model` with K outputs `exit1` ... `exitK` (forward order), each
        logits of shape `(batch, num_classes)`.

    Raises:
        TypeError: if an override is not a `Config` field.
        ValueError: if the input is not square or the overridden config is invalid.
    """
    return build("ranet_imagenet_32", input_shape, num_classes, **overrides)
