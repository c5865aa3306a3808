"""Collapsible linear blocks written out as one plain Conv2D each (RANs, arXiv 2208.08562;
SESR, arXiv 2103.09404).

A `CollapsibleConv2D` is linear inside, so at inference it is exactly one k×k conv with its
collapsed kernel (expansion multiplied out, identity residual at the centre tap). An inference
BatchNormalization that alone reads the block folds in as well (fold_bn.py):
W' = Wc·scale, b' = shift. The pass checks itself: each collapsed layer against the block on a
random input, then the whole model against the original on a small random batch.
"""

import keras
import numpy as np

from effkeras.graph.fold_bn import batch_norm_affine
from effkeras.graph.rewrite import check_models, check_outputs, readers, rewrite
from effkeras.layers.collapsible import CollapsibleConv2D


def collapse(model):
    """Writes out every top-level `CollapsibleConv2D` of a model as one plain Conv2D.

    An inference BatchNormalization that alone reads a block (called once, not a model
    output) folds into its conv.

    Reference:
        - [Bhardwaj et al., Restructurable Activation Networks, 2022](
            https://arxiv.org/abs/2208.08562)
        - [Bhardwaj et al., Collapsible Linear Blocks for Super-Efficient Super Resolution
            (SESR), MLSys 2022](https://arxiv.org/abs/2103.09404)

    Args:
        model: keras.Model. A functional model.

    Returns:
        A tuple `(new model, number of collapsed blocks)`; `(model, 0)` when it has no
        top-level CollapsibleConv2D.

    Raises:
        InputError: if `model` is not a functional `keras.Model` (and has collapsible blocks).
        RuntimeError: naming the layers, if a collapsed layer or the collapsed model does not
            agree with the original to rewrite.MAX_REL_DIFF (relative to max |output|).
    """
    blocks = [layer for layer in model.layers if isinstance(layer, CollapsibleConv2D)]
    if not blocks:
        return model, 0
    folded = _foldable_batch_norms(model)  # id(block) -> its BatchNormalization
    convs = {}  # id(block) -> its Conv2D (one per block, shared if the block is called twice)

    def replace(layer, x, graph):
        if isinstance(layer, CollapsibleConv2D):
            if id(layer) not in convs:
                convs[id(layer)] = _collapsed_conv(layer, folded.get(id(layer)))
            outputs = convs[id(layer)](x)
            graph.record(outputs, convs[id(layer)], x, original=layer)
            return outputs
        if id(layer) in {id(bn) for bn in folded.values()}:
            return x  # folded into the conv before it
        return None

    collapsed = rewrite(model, replace)
    check_models(
        model, collapsed, "model with collapsed layers " + ", ".join(block.name for block in blocks)
    )
    return collapsed, len(blocks)


def _foldable_batch_norms(model):
    """{id(block): BatchNormalization} for each BN called once on the output of a block that is
    called once, read by nothing else and not itself a model output."""
    reading, outputs = readers(model)
    found = {}
    for layer in model.layers:
        if (
            not isinstance(layer, CollapsibleConv2D)
            or len(layer._inbound_nodes) != 1
            or len(reading.get(id(layer), [])) != 1
            or id(layer) in outputs
        ):
            continue
        reader = reading[id(layer)][0]
        if (
            isinstance(reader, keras.layers.BatchNormalization)
            and len(reader._inbound_nodes) == 1
            and batch_norm_affine(reader) is not None
        ):
            found[id(layer)] = reader
    return found


def _collapsed_conv(block, batch_norm=None):
    """The built Conv2D (same name, "same" padding) computing `block`, then `batch_norm`."""
    kernel = np.asarray(block.collapsed_kernel(), np.float64)
    weights = [kernel]
    if batch_norm is not None:
        scale, shift = batch_norm_affine(batch_norm)
        weights = [kernel * scale, np.broadcast_to(shift, (block.filters,))]
    conv = keras.layers.Conv2D(
        block.filters,
        block.kernel_size,
        strides=block.strides,
        padding="same",
        use_bias=batch_norm is not None,
        name=block.name,
        dtype=block.dtype_policy,
    )
    conv.build(_input_shape(block))
    conv.set_weights([w.astype(np.float32) for w in weights])
    _check_layer(block, batch_norm, conv)
    return conv


def _input_shape(layer):
    return layer._inbound_nodes[0].input_tensors[0].shape


def _check_layer(block, batch_norm, conv):
    shape = [2 if d is None else d for d in _input_shape(block)]
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    expected = block(x)
    if batch_norm is not None:
        expected = batch_norm(expected, training=False)
    check_outputs(expected, conv(x), f"collapsed layer {block.name}")
