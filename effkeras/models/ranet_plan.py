"""The plan of a RANet (Yang et al., "Resolution Adaptive Networks for Efficient Inference", CVPR
2020, arXiv 2003.07326): every sub-network, block and layer with its channels, strides,
resolutions and exits, worked out in plain Python from the paper's arguments, before (and
without) building a model. `effkeras.models.ranet` builds the Keras model from it; `costs` counts
parameters and the cumulative operations at each exit from it alone (so a 150M-parameter
ImageNet RANet is counted without being built).

The rules (arXiv 2003.07326, Fig. 2, as the official code builds it; its flags in brackets):

- H sub-networks, one per entry of `scale_list` [--scale-list], lowest resolution first; scale
  s is s-1 halvings above the lowest resolution. Sub-network i (0-based) has width
  n_channels·gr_factor[i] [--nChannels, --grFactor] and growth g_i = growth_rate·gr_factor[i]
  [--growthRate], and n_i = n_blocks + block_step·i blocks [--nBlocks, --block-step].
- Block j (1-based) has `step` layers, or j·step with stepmode "lg" [--step, --stepmode].
- An initial layer runs from the highest resolution down: a stem (CIFAR: 3x3 conv; ImageNet:
  7x7 stride-2 conv with a bias, then 3x3 stride-2 max pooling), then a 3x3 conv per further
  sub-network, stride 2 where the scale drops, 1 where two sub-networks share it. Its outputs
  are the sub-networks' inputs.
- Sub-network 1 has normal (dense) blocks only. Block j <= n_{i-1} of a later sub-network is a
  fusion block with block j of the sub-network before it; the others are normal blocks.
- A normal block's layer is a bottleneck (1x1 conv to min(C, bn_factor[i]·g), 3x3 conv to g,
  each conv + BN + ReLU) [--bnFactor] concatenated to its input: C grows by g.
- A fusion block's layer t adds g_c = floor(g·compress_factor) channels [--compress-factor]
  computed by a bottleneck (width min(C_c, bn_factor[i-1]·g_c)) from the coarse block's t-th
  intermediate features (its input for t = 0), resized to the fine size ("up-sampling conv";
  at equal scales, no resize: a "regular conv"), and g - g_c from its own input: output =
  [input, coarse, fine]. After its layers, a 1x1 conv of the coarse block's final dense output
  to floor(compress_factor·C) channels, resized, is concatenated ("conv_last").
- Fusion block j of sub-network i halves the resolution in its last layer (stride-2 fine
  path, the layer's input resized to half) iff j is among the last scale_list[i] - 1 of
  [0, n_0, ..., n_{i-1}]: every sub-network reaches the lowest resolution before its own
  normal blocks.
- Block j of sub-network i ends with a transition, a 1x1 conv to floor(reduction·C) channels
  [--reduction], iff j = floor(m·n_i / scale_list[i]) for some m in 1..scale_list[i]-1.
- Every normal block of sub-network i is followed by a classifier (an exit), on the lowest
  resolution: two 3x3 stride-2 convs (CIFAR: to 128 channels; ImageNet: keeping C), global
  average pooling (2x2 at the paper's input sizes) and a linear layer. Exits are numbered in
  forward order.

Counting conventions of `costs` (those of the official code's op counter, which the paper's
"MUL-ADD" axes use): a conv counts C_in·C_out·k²·H_out·W_out (its bias nothing), a ReLU one per
element, pooling C·H_out·W_out·k², a linear layer in·out + out; BN, concatenation, resizing and
slicing nothing. Exit k's figure is the running total of everything computed up to and
including its linear layer, so it includes earlier exits' classifiers and the whole initial
layer. Parameters are the trainable ones (BN: γ and β).
"""

import dataclasses
import math

STEMS = ("cifar", "imagenet")
RESIZES = ("align_corners", "half_pixel")


@dataclasses.dataclass(frozen=True)
class Config:
    """The paper's arguments (the official code's flags in brackets, one comment per field).

    Lists given for `scale_list`, `gr_factor` and `bn_factor` (JSON, flags) become tuples.

    Raises:
        ValueError: if `scale_list`, `gr_factor` and `bn_factor` differ in length or are
            empty; `scale_list` does not start at 1 and rise by 0 or 1 per sub-network (1 only
            first); a width, growth, step, block count or factor is not a positive int
            (`block_step` may be 0 with one sub-network); `stepmode`, `stem` or `resize` is
            unknown; `head_width` is neither a positive int nor None; `compress_factor` is
            outside (0, 1) or `reduction` outside (0, 1]; or a fusion layer would get no
            channels on one of its paths.
    """

    n_channels: int = 16  # [--nChannels] base width; sub-network i: n_channels·gr_factor[i]
    growth_rate: int = 6  # [--growthRate] sub-network i grows by growth_rate·gr_factor[i]
    step: int = 4  # [--step] layers in block 1
    stepmode: str = "even"  # [--stepmode] "even": every block `step` layers; "lg": j·step
    scale_list: tuple = (1, 2, 3)  # [--scale-list] scale of each sub-network, lowest first
    gr_factor: tuple = (4, 2, 1)  # [--grFactor] width/growth multiplier per sub-network
    bn_factor: tuple = (4, 2, 1)  # [--bnFactor] bottleneck width = min(C_in, bn_factor·C_out)
    n_blocks: int = 2  # [--nBlocks] blocks (and exits) of sub-network 1
    block_step: int = 2  # [--block-step] extra blocks per further sub-network
    compress_factor: float = 0.25  # [--compress-factor] share of a fusion layer's growth
    reduction: float = 0.5  # [--reduction] transition compression
    bottleneck: bool = True  # False: one 3x3 conv per layer path instead of 1x1 + 3x3
    stem: str = "cifar"  # "cifar": 3x3 conv; "imagenet": 7x7/2 conv (bias) + 3x3/2 max pool
    head_width: int = 128  # width of the classifiers' two convs; None: their input's width
    # How features change resolution (no effect on the plan or its costs): "align_corners",
    # bilinear with aligned corners as the official code; "half_pixel", bilinear with
    # half-pixel centres (x2 down = 2x2 average pooling), which more runtimes and NPUs take.
    resize: str = "align_corners"

    def __post_init__(self):
        for field in ("scale_list", "gr_factor", "bn_factor"):  # lists (JSON, flags) as tuples
            object.__setattr__(self, field, tuple(getattr(self, field)))
        scales = self.scale_list
        if not len(scales) == len(self.gr_factor) == len(self.bn_factor) >= 1:
            raise ValueError(
                f"scale_list, gr_factor and bn_factor need one entry per "
                f"sub-network, got {self.scale_list}, {self.gr_factor}, "
                f"{self.bn_factor}"
            )
        steps = [b - a for a, b in zip(scales, scales[1:])]
        if scales[0] != 1 or any(d not in (0, 1) for d in steps) or 1 in scales[1:]:
            raise ValueError(
                f"scale_list must start at 1 and rise by 0 or 1 per sub-network, "
                f"with 1 only first (e.g. 1-2-3 or 1-2-3-3), got {self.scale_list}"
            )
        positive = (
            self.n_channels,
            self.growth_rate,
            self.step,
            self.n_blocks,
            *self.gr_factor,
            *self.bn_factor,
        )
        least_step = 1 if len(scales) > 1 else 0  # block_step: the exits each sub-network adds
        if not all(isinstance(v, int) and v > 0 for v in positive) or not (
            isinstance(self.block_step, int) and self.block_step >= least_step
        ):
            raise ValueError(
                "n_channels, growth_rate, step, n_blocks, gr_factor and bn_factor "
                "must be positive ints, and block_step too with several "
                "sub-networks"
            )
        if self.stepmode not in ("even", "lg"):
            raise ValueError(f"stepmode must be 'even' or 'lg', got {self.stepmode!r}")
        if self.stem not in STEMS:
            raise ValueError(f"stem must be one of {STEMS}, got {self.stem!r}")
        if self.resize not in RESIZES:
            raise ValueError(f"resize must be one of {RESIZES}, got {self.resize!r}")
        if self.head_width is not None and not (
            isinstance(self.head_width, int) and self.head_width > 0
        ):
            raise ValueError(f"head_width must be a positive int or None, got {self.head_width}")
        if not 0 < self.compress_factor < 1 or not 0 < self.reduction <= 1:
            raise ValueError("compress_factor must be in (0, 1) and reduction in (0, 1]")
        for i in range(1, len(scales)):  # a fusion layer needs both paths
            growth = self.growth_rate * self.gr_factor[i]
            if not 1 <= math.floor(growth * self.compress_factor) < growth:
                raise ValueError(
                    f"sub-network {i + 1}'s growth {growth} leaves no channels for "
                    f"one of its fusion paths at compress_factor "
                    f"{self.compress_factor}; raise growth_rate or gr_factor"
                )


@dataclasses.dataclass(frozen=True)
class LayerPlan:
    """One layer of a block: a path from the block's running features (in_channels -> growth),
    and in a fusion block a coarse path from the paired block's features (coarse_in ->
    coarse_growth). Widths are the bottlenecks' 1x1 outputs (0: no bottleneck)."""

    in_channels: int
    growth: int  # channels of the fine (own) path
    width: int
    stride: int  # 2: the block's down-sampling layer
    in_size: int
    coarse_in: int = 0  # 0: a normal layer
    coarse_growth: int = 0
    coarse_width: int = 0
    coarse_size: int = 0  # spatial size of the coarse features it reads

    @property
    def out_channels(self):
        return self.in_channels + self.coarse_growth + self.growth

    @property
    def out_size(self):
        return _half(self.in_size) if self.stride == 2 else self.in_size


@dataclasses.dataclass(frozen=True)
class BlockPlan:
    """One block: its layers, then (fusion blocks) conv_last from the coarse block's dense
    output, then optionally a transition; a classifier after it when `exit` is set."""

    subnet: int  # 1-based, lowest resolution first
    index: int  # 1-based within its sub-network
    kind: str  # "normal" or "fusion"
    layers: tuple  # of LayerPlan
    scale: int  # resolution level of its input (1: the lowest)
    down: bool  # its last layer halves the resolution
    conv_last_in: int  # channels of the coarse block's dense output (0: a normal block)
    conv_last: int  # channels conv_last adds
    conv_last_size: int  # spatial size conv_last runs at
    transition: bool
    out_channels: int  # after conv_last and the transition
    exit: int = None  # 1-based index of the classifier after it

    @property
    def in_channels(self):
        return self.layers[0].in_channels

    @property
    def in_size(self):
        return self.layers[0].in_size

    @property
    def dense_channels(self):
        """Channels after its layers: the coarse features a finer block's conv_last reads."""
        return self.layers[-1].out_channels

    @property
    def size(self):
        """Spatial size of its output."""
        return self.layers[-1].out_size

    def features(self, t):
        """(channels, spatial size) of its t-th intermediate features, t = 0..L: its input for
        t = 0, the output of its layer t after that; what layer t of the paired finer block
        reads.

        Args:
            t: int. 0 for the block's input, 1..L for the output of layer t.

        Returns:
            A tuple `(channels, size)` of ints.
        """
        if t == 0:
            return self.in_channels, self.in_size
        return self.layers[t - 1].out_channels, self.layers[t - 1].out_size


@dataclasses.dataclass(frozen=True)
class SubnetPlan:
    """One sub-network: its scale, growth, input and blocks (fields commented below)."""

    index: int  # 1-based, lowest resolution first
    scale: int
    growth: int  # g_i
    coarse_growth: int  # of its fusion layers' coarse path (0 for sub-network 1)
    base_channels: int  # of its input, from the initial layer
    base_size: int
    blocks: tuple  # of BlockPlan


@dataclasses.dataclass(frozen=True)
class StemPlan:
    """One conv of the initial layer, in the order it runs (highest resolution first)."""

    subnet: int  # the sub-network whose input it makes
    channels: int
    stride: int  # 1 or 2 (ImageNet's first conv: 2, then the max pooling's 2)
    size: int  # spatial size of its output


@dataclasses.dataclass(frozen=True)
class ExitPlan:
    """One exit (classifier): the block it follows and the features it reads."""

    index: int  # 1-based
    subnet: int
    block: int
    channels: int  # of the classifier's input
    size: int  # spatial size of the classifier's input


@dataclasses.dataclass(frozen=True)
class Plan:
    """A whole RANet: its config, input size, initial layer and sub-networks.

    `blocks` lists every block in forward order, `exits` every exit as an `ExitPlan`.
    """

    config: Config
    input_size: int
    initial: tuple  # of StemPlan, in running order
    subnets: tuple  # of SubnetPlan

    @property
    def blocks(self):
        return tuple(block for subnet in self.subnets for block in subnet.blocks)

    @property
    def exits(self):
        return tuple(
            ExitPlan(b.exit, b.subnet, b.index, b.out_channels, b.size)
            for b in self.blocks
            if b.exit
        )

    def block(self, subnet, index):
        """Returns the `BlockPlan` of block `index` (1-based) of sub-network `subnet` (1-based)."""
        return self.subnets[subnet - 1].blocks[index - 1]


def _half(size):
    return -(-size // 2)  # a stride-2 conv with "same" padding (PyTorch's k // 2 alike)


def _width(config, channels, growth, factor):
    return min(channels, factor * growth) if config.bottleneck else 0


def build_plan(config, input_size=None):
    """Plans a RANet under the rules of the module docstring, without building a model.

    Args:
        config: Config. The paper's arguments.
        input_size: int or None. Height and width of the square input. Defaults to `None`: 32
            for the CIFAR stem, 224 for ImageNet's.

    Returns:
        The `Plan` of `config` at `input_size`.
    """
    input_size = input_size or (32 if config.stem == "cifar" else 224)
    scales = tuple(config.scale_list)
    count = len(scales)
    top = max(scales)
    size_of = {top: input_size if config.stem == "cifar" else _half(_half(input_size))}
    for scale in range(top - 1, 0, -1):
        size_of[scale] = _half(size_of[scale + 1])

    initial, previous = [], None
    for i in reversed(range(count)):  # the initial layer runs from the highest resolution down
        stride = (
            2
            if config.stem == "imagenet" and previous is None
            else (1 if previous in (None, scales[i]) else 2)
        )
        initial.append(
            StemPlan(i + 1, config.n_channels * config.gr_factor[i], stride, size_of[scales[i]])
        )
        previous = scales[i]

    blocks_of = [config.n_blocks + config.block_step * i for i in range(count)]
    subnets, coarse_blocks, exits = [], None, 0
    for i, scale in enumerate(scales):
        growth = config.growth_rate * config.gr_factor[i]
        coarse_growth = math.floor(growth * config.compress_factor) if i else 0
        # the last scale - 1 of [0, n_0, ..., n_{i-1}] (none for scale 1)
        down_at = set(([0] + blocks_of[:i])[-(scale - 1) :]) if scale > 1 else set()
        transition_at = {math.floor(m * blocks_of[i] / scale) for m in range(1, scale)}
        channels = config.n_channels * config.gr_factor[i]
        size = size_of[scale]
        subnet_scale, blocks = scale, []
        for j in range(1, blocks_of[i] + 1):
            count_layers = config.step * (j if config.stepmode == "lg" else 1)
            coarse = coarse_blocks[j - 1] if i and j <= blocks_of[i - 1] else None
            down = coarse is not None and j in down_at
            layers = []
            for t in range(count_layers):
                stride = 2 if down and t == count_layers - 1 else 1
                if coarse is None:
                    layer = LayerPlan(
                        channels,
                        growth,
                        _width(config, channels, growth, config.bn_factor[i]),
                        stride,
                        size,
                    )
                else:
                    coarse_in, coarse_size = coarse.features(t)
                    fine = growth - coarse_growth
                    layer = LayerPlan(
                        channels,
                        fine,
                        _width(config, channels, fine, config.bn_factor[i]),
                        stride,
                        size,
                        coarse_in,
                        coarse_growth,
                        _width(config, coarse_in, coarse_growth, config.bn_factor[i - 1]),
                        coarse_size,
                    )
                layers.append(layer)
                channels, size = layer.out_channels, layer.out_size
            conv_last = math.floor(config.compress_factor * channels) if coarse else 0
            out = channels + conv_last
            if j in transition_at:
                out = math.floor(config.reduction * out)
            exit_index = None
            if coarse is None:
                exits += 1
                exit_index = exits
            blocks.append(
                BlockPlan(
                    i + 1,
                    j,
                    "normal" if coarse is None else "fusion",
                    tuple(layers),
                    subnet_scale,
                    down,
                    coarse.dense_channels if coarse else 0,
                    conv_last,
                    coarse.size if coarse else 0,
                    j in transition_at,
                    out,
                    exit_index,
                )
            )
            channels = out
            subnet_scale -= int(down)
        subnets.append(
            SubnetPlan(
                i + 1,
                scale,
                growth,
                coarse_growth,
                config.n_channels * config.gr_factor[i],
                size_of[scale],
                tuple(blocks),
            )
        )
        coarse_blocks = blocks
    return Plan(config, input_size, tuple(initial), tuple(subnets))


# --- costs ----------------------------------------------------------------------------------------


def _conv(c_in, c_out, kernel, size, bias=False):
    """(ops, parameters) of conv + BN + ReLU with a size x size output."""
    ops = c_in * c_out * kernel * kernel * size * size + c_out * size * size  # conv, ReLU
    return ops, c_in * c_out * kernel * kernel + (c_out if bias else 0) + 2 * c_out  # BN: γ, β


def _path(c_in, growth, width, stride, size):
    out = _half(size) if stride == 2 else size
    if not width:
        return _conv(c_in, growth, 3, out)
    a, b = _conv(c_in, width, 1, size), _conv(width, growth, 3, out)
    return a[0] + b[0], a[1] + b[1]


def costs(plan, num_classes, in_channels=3):
    """Counts the operations and parameters up to each exit of a plan.

    Uses the counting conventions of the module docstring (the official code's op counter).

    Args:
        plan: Plan. As `build_plan` returns it.
        num_classes: int. Outputs of each exit's linear layer.
        in_channels: int. Channels of the input image. Defaults to `3`.

    Returns:
        A list `[(ops, parameters)]` of int pairs, one per exit in forward order, both
        cumulative.
    """
    config = plan.config
    total = [0, 0]

    def add(cost):
        total[0] += cost[0]
        total[1] += cost[1]

    channels = in_channels
    for k, stem in enumerate(plan.initial):
        if k == 0 and config.stem == "imagenet":  # 7x7/2 conv with a bias, BN, ReLU, max pool
            conv_size = _half(plan.input_size)
            add(_conv(channels, stem.channels, 7, conv_size, bias=True))
            add((stem.channels * stem.size * stem.size * 9, 0))
        else:
            add(_conv(channels, stem.channels, 3, stem.size))
        channels = stem.channels

    result = []
    for block in plan.blocks:
        for layer in block.layers:
            add(_path(layer.in_channels, layer.growth, layer.width, layer.stride, layer.in_size))
            if layer.coarse_in:
                add(
                    _path(
                        layer.coarse_in,
                        layer.coarse_growth,
                        layer.coarse_width,
                        1,
                        layer.coarse_size,
                    )
                )
        if block.conv_last:
            add(_conv(block.conv_last_in, block.conv_last, 1, block.conv_last_size))
        if block.transition:
            add(_conv(block.dense_channels + block.conv_last, block.out_channels, 1, block.size))
        if block.exit:
            width = config.head_width or block.out_channels
            first, second = _half(block.size), _half(_half(block.size))
            add(_conv(block.out_channels, width, 3, first))
            add(_conv(width, width, 3, second))
            add((width * second * second, 0))  # global average pooling
            add((width * num_classes + num_classes, width * num_classes + num_classes))
            result.append(tuple(total))
    return result
