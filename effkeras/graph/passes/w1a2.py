"""w1a2 convs rewritten as binary convs that Larq Compute Engine accelerates.

ERN (Efficiera Residual Networks, arXiv 2410.11553) is w1a2 throughout; the decomposition below
is derived here (it follows from the quantizer's definition) and checked exactly by the tests.

LCE has 1-bit x 1-bit kernels only (its converter matches no multi-bit pattern), so a conv with
1-bit weights and a 2-bit input (ERN's every conv) would stay a float CONV_2D.
`w1a2_to_binary(model)` returns the same network with every such conv replaced by a
`PlaneConv2D`: ±1 "planes" of the input, each a `where(cond, 1, -1)` that LCE turns into
`LceQuantize`, feeding `LceBconv2d`s that share one ±1 filter, with every constant folded into
the bconv's multiplier and bias. Outputs equal the original's up to float rounding (the binary
accumulators are exact integers).

The algebra. A w1a2 conv computes y_o = s·λ_o·Σ_{k,c} B_o[k,c]·q_c(p+k): codes
q = #{m : x >= θ_m} in 0..L (L = 3 thresholds, 1/3, 1, 5/3 for ERN), step s (2/3 or 1), ±1
kernel B with per-channel scale λ_o (mean|W_o|, or 1/32). Zero padding pads x (or q) with 0:
a padded position has q = 0.

We use planes that are +1 BELOW a threshold, u_m = +1 iff x < θ_m (negated planes),
so that the padded q = 0 is +1 in every plane: LCE's native one-padding (pad value +1, the
fastest bconv padding) is then exact, and the sign flip goes into the filter (-B):

- thermometer form: q = L/2 - ½·Σ_m u_m, so
      y_o = ½·s·λ_o · BConv(-B̃_o, [u_1 .. u_L]) + (L/2)·s·λ_o·ΣB_o
  one bconv over the L planes concatenated before a single sign (C_in' = L·C_in, B̃ = B tiled
  L times along the input channels); any number of levels.
- bit-plane form (L = 3 only): with u_hi = +1 iff q < 2 (x < θ_2) and u_lo = +1 iff q is even
  (x < θ_1 or θ_2 <= x < θ_3), q = 3/2 - u_hi - ½·u_lo, so
      y_o = s·λ_o · BConv(-B_o, u_hi) + ½·s·λ_o · BConv(-B_o, u_lo) + (3/2)·s·λ_o·ΣB_o
  two bconvs on ONE filter tensor (LCE stores it once) and one float ADD.

Padding, exactly:
- where the original padding is TF "SAME" geometry (3x3 stride 1; stride 2 on odd maps) the
  planes are padded with +1 (`pad(where(...), 1.0)` + VALID conv: LCE's one-padded bconv);
- elsewhere (3x3 stride 2 on an even map: PyTorch pads 1 on each side, SAME pads 0 before and 1
  after) x itself is padded with 0 (q = 0) before the planes, and the bconv is VALID. Measured:
  LCE 0.16 takes a symmetric +1 pad before a stride-2 VALID conv on an even map for SAME
  one-padding and shifts the outputs by one pixel (max error ~200 on a unit test), so one-padding
  is used only where the geometry really is SAME.

The first layer. ERN's stem conv reads the `PixelEmbedding` codes z[10c + i] = #{l : pixel_c >=
T[i, l]}; its planes are thresholds of the raw pixels (pixel_c < T[i, ⌈θ_m⌉ - 1]), so the
rewrite reads the image directly: 90 thermometer planes (or 2 x 30 bit planes) of the 3 colours,
so the embedding drops out of the graph, and the image is padded with 0 (code 0).

The classifier stays a binary 1x1 conv before the average pool. The algebra also allows GAP then
a float FULLY_CONNECTED (exact too), but that stores 512x1000 float32 weights (2 MB, more than
the whole binary ERN18) for a conv that costs 2.5 of ERN18's 263 ms below.

A BatchNormalization that alone reads a rewritten conv is folded into its multiplier and bias:
LCE fuses a BN into one bconv but not across the bit-plane form's ADD.

Form choice (form="auto"), by single-thread latency in the LCE interpreter on this project's x86
machine (portable kernels: the aarch64 ratios may differ; measured with `python
python -m tools.bench_ern_lce --layers [--model=ern50]`, 224x224, median ms of 9-15 runs, both forms
taking turns), thermometer T and bit-plane B, with LCE's default bconv kernel | its indirect
BGEMM kernel (use_indirect_bgemm=True, ~4.4x faster on x86):

    conv (ERN18 unless named)   input -> output      k s     T      B   B/T |    T     B   B/T
    stem_conv1 (embedding)     224²x3 -> 112²x64     3 2  41.2   35.3  0.86 | 14.2  14.7  1.03
    stem_conv2                112²x64 -> 112²x64     3 1  66.0   47.4  0.72 | 13.4  10.1  0.76
    stem_downsample           112²x64 -> 56²x64      3 2  18.4   12.6  0.69 |  5.2   3.3  0.63
    stem_conv1_2               56²x64 -> 56²x64      1 1   2.9    2.8  0.96 |  0.9   0.7  0.73
    stage1 3x3 (x4)            56²x64 -> 56²x64      3 1  16.4   11.7  0.72 |  3.3   2.4  0.74
    stage2_block1_conv1        56²x64 -> 28²x128     3 2   8.4    5.9  0.70 |  1.9   1.3  0.67
    stage2 shortcut            56²x64 -> 28²x128     1 2   1.7    1.5  0.87 |  0.7   0.4  0.58
    stage3 3x3 (x3)           14²x256 -> 14²x256     3 1  14.8   10.3  0.70 |  2.7   1.8  0.68
    stage4 3x3 (x3)            7²x512 -> 7²x512      3 1  14.5   10.0  0.69 |  2.5   1.7  0.68
    classifier                 7²x512 -> 7²x1000     1 1   3.5    2.5  0.73 |  0.6   0.5  0.73
    ERN50 stage1 conv3 (x4)    56²x64 -> 56²x256     1 1  10.1   10.8  1.07 |  2.4   2.5  1.03
    ERN50 stage1 conv1        56²x256 -> 56²x64      1 1   9.8    6.9  0.71 |  3.5   2.0  0.57
    ERN50 stage2 conv3        28²x128 -> 28²x512     1 1   8.3    7.4  0.89 |  1.7   1.6  0.94
    ERN50 classifier          7²x2048 -> 7²x1000     1 1  13.0    9.0  0.69 |  2.4   1.6  0.66
    all 25 convs of ERN18                                  363    263  0.73 |   79    60  0.76
    all 57 convs of ERN50 (auto: 531 | 116)                714    534  0.75 |  157   117  0.74

The bit-plane form does 2/3 of the thermometer's XNOR-popcount work (2·C_in against 3·C_in
bits per tap) and stores the packed filter once instead of three times (ERN18 at 224: 1.63 MB
against 4.51 MB of flatbuffer for 1.47 MB of 1-bit weights), at the cost of a second output
pass, a few float ops on the input and one float ADD. So "auto" takes the bit-plane form except
for 1x1 convs from <= 64 code channels to >= 4x as many filters (ERN50/101's stage-1 conv3 and
shortcut, 64 -> 256: the only shape where the thermometer was faster with both kernels), and the
thermometer for inputs of more than 2 bits (the bit-plane form is 2-bit only).
"""

import keras
import numpy as np
from keras import ops

from effkeras.errors import InputError
from effkeras.graph import FLOAT_BITS, layer_precision, leaf_layers
from effkeras.graph.fold_bn import fold_into_output
from effkeras.graph.rewrite import rewrite
from effkeras.layers.ern import PixelEmbedding
from effkeras.layers.quantized import QuantConv2D, same_padding
from effkeras.layers.w1a2 import PLANE_FORMS, PlaneConv2D

FORMS = ("auto", *PLANE_FORMS)


# --- which layers, which form --------------------------------------------------------------------


def is_w1a2(layer):
    """Tells whether a layer is w1a2: a 1-bit kernel and a quantized multi-bit input (ERN's).

    LCE has no kernel for such a layer.

    Args:
        layer: keras.layers.Layer.

    Returns:
        True if its kernel has 1 bit and its input 2 to 31 bits.
    """
    input_bits, kernel_bits = layer_precision(layer)
    return kernel_bits == 1 and 1 < input_bits < FLOAT_BITS


def w1a2_layers(model):
    """Returns the w1a2 leaf layers of `model` (nested models walked into), in order."""
    return [layer for layer in leaf_layers(model) if is_w1a2(layer)]


def unsupported_reason(layer):
    """Says why a w1a2 layer cannot be rewritten as binary convs.

    Args:
        layer: keras.layers.Layer. A w1a2 layer (`is_w1a2`).

    Returns:
        A str with the reason, or None when it can be rewritten.
    """
    if not isinstance(layer, QuantConv2D):
        return f"{type(layer).__name__} (only Conv2D has an LCE binary kernel)"
    if layer.data_format != "channels_last" or layer.groups != 1 or layer.dilation_rate != (1, 1):
        return "channels_first, grouped or dilated"
    for attribute in ("thresholds", "step"):
        if not hasattr(layer.input_quantizer, attribute):
            return (
                f"its input quantizer {type(layer.input_quantizer).__name__} does not say its "
                f"thresholds and step (HalfWaveGaussianQuantizer does)"
            )
    if min(layer.input_quantizer.thresholds) <= 0:
        return "its input quantizer's code 0 does not contain 0 (zero padding would not be code 0)"
    for attribute in ("signs", "scale"):
        if not hasattr(layer.kernel_quantizer, attribute):
            return (
                f"its kernel quantizer {type(layer.kernel_quantizer).__name__} does not give "
                f"signs and scale (BinaryChannelWiseMeanScaling does)"
            )
    if layer.padding == "same" and layer.pad_values:
        return "it pads the quantized input with a non-zero value"
    return None


def choose_form(kernel_size, input_channels, filters, levels=3):
    """The faster form for a conv of this shape, as measured (module docstring): bit-plane,
    except 1x1 convs reading <= 64 code channels into >= 4x as many filters, whose binary work
    is too small to pay for the bit-plane form's second output pass and ADD.

    Args:
        kernel_size: tuple of 2 ints. The conv's kernel size.
        input_channels: int. Code channels of its input.
        filters: int. Its output channels.
        levels: int. Thresholds of the input quantizer; the bit-plane form needs 3 (2-bit
            codes). Defaults to `3`.

    Returns:
        `"thermometer"` or `"bitplane"`.
    """
    if levels != 3:
        return "thermometer"
    if tuple(kernel_size) == (1, 1) and input_channels <= 64 and filters >= 4 * input_channels:
        return "thermometer"
    return "bitplane"


# --- the rewrite ---------------------------------------------------------------------------------


def w1a2_to_binary(model, form="auto", *, strict=True):
    """A copy of functional `model` with every w1a2 conv as a `PlaneConv2D` (LCE binary convs).

    form: "thermometer", "bitplane" (2-bit inputs only) or "auto" (per layer, by measured
    speed, `choose_form`). Other layers are copied with their weights; a `ZeroPadding2D` or
    `PixelEmbedding` read only through rewritten convs drops out, and a BatchNormalization that
    alone reads a rewritten conv is folded into its multiplier and bias (LCE would fuse it into a
    single bconv, but not across the bit-plane form's ADD). With `strict`, a w1a2 layer
    that cannot be rewritten (not a plain Conv2D, or quantizers without thresholds/signs) is an
    InputError naming it; otherwise it stays as it is (float in LCE).

    Reference:
        - [LeapMind, Efficiera Residual Networks](https://arxiv.org/abs/2410.11553)

    Args:
        model: keras.Model. A functional model.
        form: str. `"thermometer"`, `"bitplane"` (2-bit inputs only) or `"auto"`. Defaults to
            `"auto"`.
        strict: bool. Whether a w1a2 layer that cannot be rewritten (or one inside a nested
            model) is an error. Defaults to `True`.

    Returns:
        The rewritten functional `keras.Model`; its outputs equal the original's up to float
        rounding.

    Raises:
        InputError: if `form` is unknown; with `strict`, if a w1a2 layer cannot be rewritten;
            if `form="bitplane"` meets an input quantizer without 3 thresholds; if a stem conv
            does not read the pixel embedding's codes one by one; or if `model` is not a
            functional `keras.Model`.
    """
    if form not in FORMS:
        raise InputError(f"unknown w1a2 rewrite form {form!r}; use one of {', '.join(FORMS)}")
    targets = {}
    unsupported = []
    for layer in model.layers:
        if is_w1a2(layer):
            reason = unsupported_reason(layer)
            if reason is None:
                targets[id(layer)] = layer
            else:
                unsupported.append(f"{layer.name}: {reason}")
    unsupported += [
        f"{layer.name}: inside nested model {outer.name}"
        for outer in model.layers
        if isinstance(outer, keras.Model)
        for layer in w1a2_layers(outer)
    ]
    if unsupported and strict:
        raise InputError(
            f"cannot rewrite {len(unsupported)} w1a2 layer(s) as LCE binary convs: "
            + "; ".join(unsupported)
        )

    def replace(layer, x, graph):
        if id(layer) in targets:
            new, outputs = _rewrite(layer, x, form, graph)
            graph.record(outputs, new, x, original=layer)
            return outputs
        if isinstance(layer, keras.layers.BatchNormalization):
            producer, _ = graph.producer(x)
            if (
                isinstance(producer, PlaneConv2D)
                and graph.consumers(graph.original(x)) == 1
                and _fold_batch_norm(producer, layer)
            ):
                return x
        return None

    return rewrite(model, replace)


def _fold_batch_norm(conv, batch_norm):
    """Folds an inference BatchNormalization that alone reads `conv` into its multiplier and
    bias (so the bit-plane form's two bconvs both carry it); False where it cannot."""
    kernel, multiplier, bias = (np.asarray(w, np.float64) for w in conv.get_weights())
    folded = None if conv.activation is not None else fold_into_output(multiplier, bias, batch_norm)
    if folded is None:
        return False
    conv.set_weights([kernel, *folded])
    return True


def _rewrite(layer, x, form, graph):
    """(PlaneConv2D, its output) replacing w1a2 `layer`, called on new tensor `x` (its input)."""
    quantizer = layer.input_quantizer
    levels = len(quantizer.thresholds)
    kernel_size, strides = tuple(layer.kernel_size), tuple(layer.strides)
    pads = np.zeros((2, 2), int)
    if layer.padding == "same":
        pads += [
            same_padding(size, k, s, 1) for size, k, s in zip(x.shape[1:3], kernel_size, strides)
        ]
    # Look through an explicit zero padding (ERN: ZeroPadding2D(1) then a VALID conv).
    x, explicit = graph.through_padding(x)
    pads += explicit
    producer, source = graph.producer(x)
    thresholds = np.float32(quantizer.thresholds)
    code_channels = None
    # The stem reads the pixel embedding's codes: threshold the raw pixels instead.
    if isinstance(producer, PixelEmbedding):
        thresholds, code_channels = _embedding_planes(producer, quantizer, layer.name)
        x = source

    if form == "auto":
        form = choose_form(kernel_size, layer.kernel.shape[2], layer.filters, levels)
    elif form == "bitplane" and levels != 3:
        raise InputError(
            f"{layer.name}: the bit-plane form needs 2-bit input codes, its input "
            f"quantizer has {levels} thresholds; use form='thermometer' or 'auto'"
        )
    pads = tuple(map(tuple, pads.tolist()))
    one_padding = any(map(any, pads)) and _is_same_geometry(
        x.shape[1:3], kernel_size, strides, pads
    )

    signs = np.asarray(layer.kernel_quantizer.signs(layer.kernel), np.float64)
    scale = np.asarray(layer.kernel_quantizer.scale(layer.kernel), np.float64)
    step_scale = quantizer.step * scale  # s·λ_o
    kernel = -signs  # planes are +1 below a threshold: the flip goes into the filter
    if form == "thermometer":
        kernel = np.tile(kernel, (1, 1, levels, 1))  # plane block m, then the code channel
        multiplier = 0.5 * step_scale
    else:
        multiplier = step_scale
    bias = levels / 2 * step_scale * signs.sum(axis=(0, 1, 2))
    if layer.use_bias:
        bias = bias + ops.convert_to_numpy(layer.bias)

    new = PlaneConv2D(
        layer.filters,
        kernel_size,
        strides,
        pads,
        thresholds=thresholds,
        form=form,
        pad_planes=one_padding,
        code_channels=code_channels,
        activation=keras.activations.serialize(layer.activation),
        name=layer.name,
    )
    outputs = new(x)
    new.set_weights(
        [kernel.astype(np.float32), multiplier.astype(np.float32), bias.astype(np.float32)]
    )
    return new, outputs


def _embedding_planes(embedding, quantizer, name):
    """(thresholds (levels, codes), code_channels) on raw pixels for a conv reading the
    embedding's codes z: plane m of code channel expansion·c + i is z < θ_m, i.e.
    pixel_c < T[i, ⌈θ_m⌉ - 1] (z is an integer)."""
    table = embedding.thresholds  # (expansion, embedding levels)
    expansion, embedding_levels = table.shape
    level = np.ceil(np.float64(quantizer.thresholds)).astype(int)
    if (
        quantizer.step != 1
        or level.min() < 1
        or level.max() > embedding_levels
        or np.any(np.diff(level) <= 0)
        or table.min() <= 0
    ):
        raise InputError(
            f"{name}: its input quantizer does not read the pixel embedding's codes "
            f"one by one (thresholds {quantizer.thresholds}, step {quantizer.step})"
        )
    channels = embedding.input.shape[-1]
    thresholds = np.stack([np.tile(table[:, m - 1], channels) for m in level])
    return thresholds, [c for c in range(channels) for _ in range(expansion)]


def _is_same_geometry(spatial, kernel_size, strides, pads):
    """True when `pads` is TF's SAME padding for this map, kernel and stride (LCE one-padding)."""
    if None in tuple(spatial):
        return False
    return all(
        tuple(pad) == same_padding(size, k, s, 1)
        for size, k, s, pad in zip(spatial, kernel_size, strides, pads)
    )
