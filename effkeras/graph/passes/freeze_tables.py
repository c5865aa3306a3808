"""Learned table activations frozen to constant tables for inference (LERP-PSA: Singh &
Bazargan, ACM TRETS 18(2), 2025, DOI 10.1145/3705926; B-splines: DeepSplines).

Every LerpPSA, ResPSA and BSplineActivation becomes a `LerpTable` of the same name holding its
(C, G) table, computed in float64:
- LerpPSA: PSA sampled on the grid (the softmax and the 3E + 2 parameters per channel are gone);
- ResPSA: that table plus the grid itself. Interpolating samples of the identity gives the
  identity everywhere, extrapolation included, so x + lerp(T)(x) = lerp(T + g)(x) exactly;
- BSplineActivation: its knot values (its knots are the same uniform grid).
An inference BatchNormalization over the last axis whose output only this layer reads (and that
is not a model output) folds into the table's input affine, x·scale + shift (fold_bn.py), and
disappears. The pass checks itself: the whole model against the original on a small random
batch of raw pixels (rewrite.check_models).

`form` "gather" is the TFLite builtin form (GATHER; deploy's default); "relu_sum" the same
function as a sum of ReLUs, for runtimes without GATHER (LerpTable).
"""

import keras
import numpy as np
from keras import ops

from effkeras.errors import InputError
from effkeras.graph.fold_bn import batch_norm_affine
from effkeras.graph.rewrite import check_models, readers, rewrite
from effkeras.layers.activations import (
    LERP_FORMS,
    BSplineActivation,
    LerpPSA,
    LerpTable,
    grid,
    psa_table_numpy,
)

TABLE_LAYERS = (LerpPSA, BSplineActivation)  # ResPSA is a LerpPSA


def freeze_tables(model, form="gather"):
    """(new model, number of frozen layers) of functional `model`; (model, 0) when it has no
    top-level LerpPSA/ResPSA/BSplineActivation.

    Each such layer becomes a `LerpTable` of the same name; an inference BN over the last axis
    that only it reads folds into the table's input affine.

    Reference:
        - [Singh & Bazargan, Compressing Neural Networks Using Learnable 1-D Non-Linear
            Functions, ACM TRETS 18(2), 2025](https://doi.org/10.1145/3705926)

    Args:
        model: keras.Model. A functional model.
        form: str. `"gather"`, the TFLite builtin form (GATHER; deploy's default), or
            `"relu_sum"`, the same function as a sum of ReLUs for runtimes without GATHER.
            Defaults to `"gather"`.

    Returns:
        A tuple `(new model, number of frozen layers)`.

    Raises:
        InputError: if `form` is unknown, or `model` is not a functional `keras.Model` (and
            has table layers).
        RuntimeError: naming the layers, if the frozen model does not compute the original
            (rewrite.MAX_REL_DIFF of max |output|).
    """
    if form not in LERP_FORMS:
        raise InputError(f"unknown lerp form {form!r}; choose from {', '.join(LERP_FORMS)}")
    learned = [layer for layer in model.layers if isinstance(layer, TABLE_LAYERS)]
    if not learned:
        return model, 0
    folded = foldable_batch_norms(model, learned)  # id(table layer) -> its BatchNormalization
    dropped = {id(bn) for bn in folded.values()}
    frozen = {}  # id(learned layer) -> its LerpTable (shared if the layer is called twice)

    def replace(layer, x, graph):
        if isinstance(layer, TABLE_LAYERS):
            if id(layer) not in frozen:
                frozen[id(layer)] = lerp_table(layer, folded.get(id(layer)), form)
            outputs = frozen[id(layer)](x)
            graph.record(outputs, frozen[id(layer)], x, original=layer)
            return outputs
        if id(layer) in dropped:
            return x  # folded into the table after it
        return None

    result = rewrite(model, replace)
    check_models(
        model,
        result,
        f"model with frozen tables ({form}) " + ", ".join(layer.name for layer in learned),
    )
    return result, len(learned)


def table_of(layer):
    """The (C, G) float64 table of a LerpPSA/ResPSA (the residual folded in) or
    BSplineActivation: y = lerp(table)(x) for its input x.

    Args:
        layer: LerpPSA, ResPSA or BSplineActivation. A built layer.

    Returns:
        A float64 numpy array of shape `(channels, grid_size)`.
    """
    if isinstance(layer, BSplineActivation):
        return np.asarray(ops.convert_to_numpy(layer.coefficients), np.float64)
    weights = [
        np.asarray(ops.convert_to_numpy(w), np.float64)
        for w in (layer.u, layer.w, layer.b, layer.o, layer.beta)
    ]
    table = psa_table_numpy(*weights, layer.eps, layer.grid_size, layer.grid_range)
    if layer.residual:  # x + lerp(T)(x) = lerp(T + g)(x): lerp of identity samples is exact
        table = table + grid(layer.grid_size, layer.grid_range)
    return table


def lerp_table(layer, batch_norm=None, form="gather"):
    """Returns the built LerpTable (same name) computing `batch_norm` (or nothing), then `layer`.

    Args:
        layer: LerpPSA, ResPSA or BSplineActivation. A built layer.
        batch_norm: keras.layers.BatchNormalization or None. An inference BN over the last
            axis to fold into the table's input affine. Defaults to `None`.
        form: str. `"gather"` or `"relu_sum"` (see `freeze_tables`). Defaults to `"gather"`.

    Returns:
        A built `LerpTable` with the table, scale and shift set.
    """
    table = LerpTable(
        layer.channels,
        grid_size=layer.grid_size,
        grid_range=layer.grid_range,
        form=form,
        name=layer.name,
    )
    table.build((None, layer.channels))
    scale = np.ones(layer.channels)
    shift = np.zeros(layer.channels)
    if batch_norm is not None:
        scale, shift = batch_norm_affine(batch_norm)
    table.set_weights(
        [
            table_of(layer).astype(np.float32),
            np.broadcast_to(scale, (layer.channels,)).astype(np.float32),
            np.broadcast_to(shift, (layer.channels,)).astype(np.float32),
        ]
    )
    return table


def foldable_batch_norms(model, learned):
    """{id(table layer): BatchNormalization} for each table layer called once on the output of
    an inference BN over the last axis, called once, read by nothing else and not a model
    output.

    Args:
        model: keras.Model. A functional model.
        learned: list of layers. The table layers of `model`.

    Returns:
        A dict from `id(table layer)` to its foldable `BatchNormalization`.
    """
    reading, outputs = readers(model)
    found = {}
    for layer in learned:
        if len(layer._inbound_nodes) != 1:
            continue
        (tensor,) = layer._inbound_nodes[0].input_tensors
        bn = tensor._keras_history[0]
        if (
            isinstance(bn, keras.layers.BatchNormalization)
            and len(bn._inbound_nodes) == 1
            and reading.get(id(bn)) == [layer]
            and id(bn) not in outputs
            and batch_norm_affine(bn) is not None
        ):
            found[id(layer)] = bn
    return found
