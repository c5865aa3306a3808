"""What the ResNet-like families share: stage tables as data, the stage loop, BatchNormalization.

A model file writes its architecture table as `stages(filters=..., blocks=...)` and builds with

    for spec in each_block(STAGES):
        x = my_block(x, spec.filters, spec.stride, spec.name)

so every family names its blocks `stage{i}_block{j}` (1-based; checkpoints rely on it) and strides
only in a stage's first block, as ResNet's table does (He et al., arXiv 1512.03385, Table 1).
"""

import dataclasses

import keras
from keras import layers

from effkeras.layers import BatchNormalization


@dataclasses.dataclass(frozen=True)
class Stage:
    """One row of an architecture table: `blocks` blocks of width `filters`; the first block has
    stride `stride`, the others 1."""

    filters: int
    blocks: int
    stride: int = 1


def stages(filters, blocks, strides=None):
    """The rows of a table given by its columns; strides default to 1, 2, 2, ...: each stage after
    the first halves the resolution (arXiv 1512.03385, Table 1)."""
    strides = tuple(strides) if strides else (1,) + (2,) * (len(filters) - 1)
    if not len(filters) == len(blocks) == len(strides):
        raise ValueError(f"a stage table needs as many filters, blocks and strides, got "
                         f"{filters}, {blocks}, {strides}")
    return tuple(Stage(f, b, s) for f, b, s in zip(filters, blocks, strides))


@dataclasses.dataclass(frozen=True)
class Block:
    """One block of the stage loop."""

    name: str  # stage{i}_block{j}, 1-based
    filters: int
    stride: int  # the stage's stride on its first block, 1 after
    first: bool  # whether it opens its stage


def each_block(stage_table):
    """The blocks of `stage_table` (a sequence of Stage) in order: the one stage loop."""
    for i, stage in enumerate(stage_table, start=1):
        for j in range(stage.blocks):
            yield Block(f"stage{i}_block{j + 1}", stage.filters,
                        stage.stride if j == 0 else 1, j == 0)


def batch_norm(name, *, momentum=0.9, epsilon=1e-5, gamma=1.0, regularizer=None):
    """A BatchNormalization layer, by default with PyTorch's BatchNorm2d settings (its momentum
    0.1 is Keras' 0.9; ε = 1e-5), as the official code of ReCU and ERN trains. `gamma` is γ's
    initial value; `regularizer` applies to γ and β."""
    return BatchNormalization(
        momentum=momentum, epsilon=epsilon,
        gamma_initializer="ones" if gamma == 1.0 else keras.initializers.Constant(gamma),
        beta_regularizer=regularizer, gamma_regularizer=regularizer, name=name)


def whole_map_logits(x, num_classes, **dense_options):
    """Logits from an average pool over the whole (static) map, then Dense: Larq Zoo's head,
    faster than a global pool on LCE."""
    x = layers.AveragePooling2D(tuple(x.shape[1:3]), name="pool")(x)
    x = layers.Flatten(name="flatten")(x)
    return layers.Dense(num_classes, name="logits", **dense_options)(x)


def coupled_l2(weight_decay):
    """The Keras regularizer for PyTorch's (coupled) weight decay `weight_decay`, as the official
    code of ReCU and ERN trains: wd·w added to the gradient is an L2 penalty of wd / 2; None
    for 0."""
    return keras.regularizers.L2(weight_decay / 2) if weight_decay else None
