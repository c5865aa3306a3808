"""RAN-i (Bhardwaj et al., "Restructurable Activation Networks", arXiv 2208.08562) and its
ConvNeXt peers (Liu et al., "A ConvNet for the 2020s", arXiv 2201.03545).

RAN-i is ConvNeXt-T made deeper and thinner by a training-free rule: depth multiplier dm and
width multiplier wm, chosen with NN-Mass (Bhardwaj et al., arXiv 1910.00780) so that the network
keeps ConvNeXt's NN-Mass and its count of non-linear units (GELUs) at fewer MACs. Per stage,
depth = round(d·dm) and width = round(C·wm) from ConvNeXt-T's (3, 3, 9, 3) / (96, 192, 384, 768),
with Python's round; the (wm, dm) pairs are the released models' (arXiv 2208.08562, code of
ran_i_tiny/small/base). The block itself is an unmodified ConvNeXt block.

ConvNeXt (arXiv 2201.03545, §2 and Fig. 4): stem conv 4x4 stride 4 + LayerNorm; four stages
separated by LayerNorm + conv 2x2 stride 2; each block is depthwise 7x7 -> LayerNorm -> 1x1
C->4C -> GELU -> 1x1 4C->C -> layer scale (init 1e-6) -> stochastic depth -> residual add; head
global average pool -> LayerNorm -> linear classifier. LayerNorm ε = 1e-6, GELU exact (erf).

Why convnext_t/s/b are built here instead of taken from keras.applications.ConvNeXt: its pointwise
layers are Dense layers on 4-D NHWC tensors and its depthwise layer a grouped Conv2D. Exported
with a free batch dimension, each such Dense becomes FULLY_CONNECTED wrapped in shape handling
(SHAPE, GATHER, REDUCE_PROD, PACK, CONCATENATION and a RESHAPE fed by them), and the depthwise
layer a grouped CONV_2D. Here the pointwise layers are 1x1 Conv2D and the depthwise layer a
DepthwiseConv2D, so the float file is CONV_2D, DEPTHWISE_CONV_2D, GELU, LayerNorm's arithmetic
(MEAN, SQUARED_DIFFERENCE, RSQRT, MUL, ADD) and one FULLY_CONNECTED, with static shapes whatever
the batch; and the ConvNeXt peers share RAN-i's block, so a speed comparison between the two
measures the architectures, not two implementations.

Stochastic depth really applies (the released RAN-i training code ignores the drop-path rate its
scripts pass): a per-sample Dropout of the whole residual branch, its rate growing
linearly over the blocks from 0 to `drop_path_rate` (ConvNeXt's code: linspace over all blocks).
"""

import keras
from keras import layers

from effkeras.layers import LayerScale, normalize_pixels
from effkeras.models.common import each_block, stages
from effkeras.models.registry import register

# ConvNeXt variants: channels C and blocks B per stage, arXiv 2201.03545 §3 (T: C = (96, 192,
# 384, 768), B = (3, 3, 9, 3); S: B = (3, 3, 27, 3); B: C = (128, 256, 512, 1024)).
CONVNEXT = {
    "convnext_t": dict(depths=(3, 3, 9, 3), dims=(96, 192, 384, 768)),
    "convnext_s": dict(depths=(3, 3, 27, 3), dims=(96, 192, 384, 768)),
    "convnext_b": dict(depths=(3, 3, 27, 3), dims=(128, 256, 512, 1024)),
}
# RAN-i scaling of ConvNeXt-T: (wm, dm) of the released models (arXiv 2208.08562).
RAN_I_BASE = "convnext_t"
RAN_I_SCALES = {
    "ran_i_t": (0.666, 1.65),
    "ran_i_s": (0.789, 1.65),
    "ran_i_b": (0.9105, 2.30),
}
# Stochastic depth at the last block: ConvNeXt Appendix A.1 (Table 5: 0.1 / 0.4 / 0.5 for
# T / S / B); RAN-i's training scripts pass 0.1 / 0.2 / 0.4 (arXiv 2208.08562 code).
DROP_PATH = {
    "convnext_t": 0.1,
    "convnext_s": 0.4,
    "convnext_b": 0.5,
    "ran_i_t": 0.1,
    "ran_i_s": 0.2,
    "ran_i_b": 0.4,
}
EXPANSION = 4  # inverted bottleneck: 1x1 C -> 4C -> C (arXiv 2201.03545 §2.4)
KERNEL = 7  # depthwise kernel (§2.5)
STEM = 4  # "patchify" stem: 4x4 stride 4 (§2.2)
LN_EPSILON = 1e-6
LAYER_SCALE_INIT = 1e-6  # Appendix A.1
INIT_STD = 0.02  # trunc-normal std of conv and linear weights, zero biases (ConvNeXt code)


def ran_i_config(wm, dm, base=CONVNEXT[RAN_I_BASE]):
    """Returns RAN-i's depths and dims: round(d·dm) and round(C·wm) per stage of the base.

    Args:
        wm: float. Width multiplier.
        dm: float. Depth multiplier.
        base: dict. The base network's `depths` and `dims`. Defaults to ConvNeXt-T's.

    Returns:
        A dict with `depths` and `dims`, tuples of ints (Python's `round`).
    """
    return dict(
        depths=tuple(round(d * dm) for d in base["depths"]),
        dims=tuple(round(c * wm) for c in base["dims"]),
    )


CONFIGS = {**CONVNEXT, **{name: ran_i_config(*scale) for name, scale in RAN_I_SCALES.items()}}


def _init():
    return dict(
        kernel_initializer=keras.initializers.TruncatedNormal(stddev=INIT_STD),
        bias_initializer="zeros",
    )


def _conv(filters, kernel, name, stride=1):
    return layers.Conv2D(filters, kernel, strides=stride, name=name, **_init())


def _layer_norm(name):
    return layers.LayerNormalization(epsilon=LN_EPSILON, name=name)


def convnext_block(x, drop_rate, name):
    """Applies a ConvNeXt block (arXiv 2201.03545, Fig. 4).

    depthwise 7x7 -> LN -> 1x1 C->4C -> GELU -> 1x1 4C->C -> layer scale -> drop path -> + x.

    Args:
        x: tensor of shape `(batch, height, width, channels)`.
        drop_rate: float. Stochastic depth rate of the residual branch; 0 adds no Dropout.
        name: str. Prefix of the block's layer names.

    Returns:
        A tensor of the same shape as `x`.
    """
    channels = x.shape[-1]
    y = layers.DepthwiseConv2D(
        KERNEL,
        padding="same",
        name=f"{name}_dwconv",
        depthwise_initializer=keras.initializers.TruncatedNormal(stddev=INIT_STD),
        bias_initializer="zeros",
    )(x)
    y = _layer_norm(f"{name}_ln")(y)
    # 1x1 convs, not Dense: static shapes in TFLite (module docstring).
    y = _conv(EXPANSION * channels, 1, f"{name}_pwconv1")(y)
    y = layers.Activation("gelu", name=f"{name}_gelu")(y)  # keras' gelu is exact (erf) by default
    y = _conv(channels, 1, f"{name}_pwconv2")(y)
    y = LayerScale(LAYER_SCALE_INIT, name=f"{name}_layer_scale")(y)
    if drop_rate > 0:  # stochastic depth: drop the whole branch per sample
        y = layers.Dropout(drop_rate, noise_shape=(None, 1, 1, 1), name=f"{name}_drop_path")(y)
    return layers.Add(name=f"{name}_add")([x, y])


def convnext(depths, dims, name, input_shape, num_classes, drop_path_rate):
    """Builds a ConvNeXt-style network (RAN-i and the ConvNeXt peers).

    Args:
        depths: tuple of ints. Blocks per stage.
        dims: tuple of ints. Channels per stage.
        name: str. The model name.
        input_shape: tuple of 3 ints. `(height, width, channels)` of raw [0, 255] pixels.
        num_classes: int. Number of classes.
        drop_path_rate: float. Stochastic depth at the last block, growing linearly from 0.

    Returns:
        A functional `keras.Model` returning logits of shape `(batch, num_classes)`.
    """
    stage_table = stages(filters=dims, blocks=depths)
    total = sum(depths)
    inputs = keras.Input(input_shape, name="image")  # raw pixels in [0, 255]
    x = normalize_pixels(inputs)  # ImageNet mean/std, as ConvNeXt trains
    for index, spec in enumerate(each_block(stage_table)):
        stage = spec.name.split("_")[0]
        if index == 0:
            x = _conv(spec.filters, STEM, "stem_conv", stride=STEM)(x)
            x = _layer_norm("stem_ln")(x)
        elif spec.first:  # downsampling between stages (§2.6)
            x = _layer_norm(f"{stage}_downsample_ln")(x)
            x = _conv(spec.filters, 2, f"{stage}_downsample_conv", stride=spec.stride)(x)
        drop_rate = drop_path_rate * index / max(1, total - 1)
        x = convnext_block(x, drop_rate, spec.name)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    x = _layer_norm("head_ln")(x)
    outputs = layers.Dense(num_classes, name="logits", **_init())(x)
    return keras.Model(inputs, outputs, name=name)


def build(name, input_shape, num_classes, *, drop_path_rate=None, dims=None, depths=None):
    """Builds model `name` of the tables above (a RAN-i or a ConvNeXt).

    Args:
        name: str. A key of `CONFIGS`: `ran_i_t`, `ran_i_s`, `ran_i_b`, `convnext_t`,
            `convnext_s` or `convnext_b`.
        input_shape: tuple of 3 ints. `(height, width, channels)` of raw [0, 255] pixels.
        num_classes: int. Number of classes.
        drop_path_rate: float or None. Stochastic depth at the last block, in [0, 1). Defaults
            to `None`: the model's (`DROP_PATH`).
        dims: sequence of ints or None. Overrides the stage widths (e.g. a narrow copy for
            tests). Defaults to `None`.
        depths: sequence of ints or None. Overrides the stage depths. Defaults to `None`.

    Returns:
        A functional `keras.Model` returning logits of shape `(batch, num_classes)`.

    Raises:
        ValueError: if `depths` and `dims` differ in length or hold a value that is not a
            positive int, or `drop_path_rate` is not in [0, 1).
    """
    depths = tuple(depths or CONFIGS[name]["depths"])
    dims = tuple(dims or CONFIGS[name]["dims"])
    if len(depths) != len(dims) or not all(isinstance(v, int) and v > 0 for v in depths + dims):
        raise ValueError(
            f"depths and dims need one positive int per stage, got {depths} and {dims}"
        )
    drop_path_rate = DROP_PATH[name] if drop_path_rate is None else drop_path_rate
    if not 0 <= drop_path_rate < 1:
        raise ValueError(f"drop_path_rate must be in [0, 1), got {drop_path_rate}")
    return convnext(depths, dims, name, input_shape, num_classes, drop_path_rate)


COMMON = dict(
    input_shape=(224, 224, 3),
    num_classes=1000,
    recipe="ran_i",
    deploy="float",
    min_input_size=32,  # total stride: 4 * 2 * 2 * 2
    # The test harness's copy: the same blocks at 1/6 of ConvNeXt-T's widths, in the
    # 1:1:3:1 stage ratio (§2.2) once (conversion time grows with the block count).
    small=dict(dims=(16, 32, 64, 128), depths=(1, 1, 3, 1)),
)


def _registered(name, family, paper):
    """Registers model `name` of the tables above; returns its public builder."""

    def builder(
        input_shape=(224, 224, 3), num_classes=1000, *, drop_path_rate=None, dims=None, depths=None
    ):
        """Builds a RAN-i (ConvNeXt-T scaled by NN-Mass) or a ConvNeXt.

        RAN-i-T/S/B scale ConvNeXt-T's depths and widths by the released models' (wm, dm);
        ConvNeXt-T/S/B follow §3 of the ConvNeXt paper.

        Reference:
            - [Bhardwaj et al., Restructurable Activation Networks, 2022](
                https://arxiv.org/abs/2208.08562)
            - [Liu et al., A ConvNet for the 2020s, CVPR 2022](
                https://arxiv.org/abs/2201.03545)

        Args:
            input_shape: tuple of 3 ints. `(height, width, channels)` of raw [0, 255] pixels.
                Defaults to `(224, 224, 3)`.
            num_classes: int. Number of classes. Defaults to `1000`.
            drop_path_rate: float or None. Stochastic depth at the last block, in [0, 1).
                Defaults to `None`: the model's (0.1 / 0.2 / 0.4 for RAN-i-T/S/B, 0.1 / 0.4 /
                0.5 for ConvNeXt-T/S/B).
            dims: sequence of ints or None. Overrides the stage widths. Defaults to `None`.
            depths: sequence of ints or None. Overrides the stage depths. Defaults to `None`.

        Returns:
            A functional `keras.Model` returning logits of shape `(batch, num_classes)`.

        Raises:
            ValueError: if `depths` and `dims` are not one positive int per stage, or
                `drop_path_rate` is not in [0, 1).
        """
        return build(
            name, input_shape, num_classes, drop_path_rate=drop_path_rate, dims=dims, depths=depths
        )

    builder.__name__ = builder.__qualname__ = name
    return register(name, family=family, paper=paper, **COMMON)(builder)


RAN_I_PAPER = "Bhardwaj et al., 2022 ({}, arXiv 2208.08562)"
CONVNEXT_PAPER = "Liu et al., CVPR 2022 ({}, arXiv 2201.03545)"
ran_i_t = _registered("ran_i_t", "rans", RAN_I_PAPER.format("RAN-i-T"))
ran_i_s = _registered("ran_i_s", "rans", RAN_I_PAPER.format("RAN-i-S"))
ran_i_b = _registered("ran_i_b", "rans", RAN_I_PAPER.format("RAN-i-B"))
convnext_t = _registered("convnext_t", "peer", CONVNEXT_PAPER.format("ConvNeXt-T"))
convnext_s = _registered("convnext_s", "peer", CONVNEXT_PAPER.format("ConvNeXt-S"))
convnext_b = _registered("convnext_b", "peer", CONVNEXT_PAPER.format("ConvNeXt-B"))
