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
    """Returns the rows of an architecture table given by its columns.

    Args:
        filters: sequence of ints. Width of each stage.
        blocks: sequence of ints. Blocks of each stage.
        strides: sequence of ints or None. Stride of each stage's first block. Defaults to
            `None`: 1, 2, 2, ...: each stage after the first halves the resolution
            (arXiv 1512.03385, Table 1).

    Returns:
        A tuple of `Stage`, one per stage.

    Raises:
        ValueError: if `filters`, `blocks` and `strides` differ in length.
    """
    strides = tuple(strides) if strides else (1,) + (2,) * (len(filters) - 1)
    if not len(filters) == len(blocks) == len(strides):
        raise ValueError(
            f"a stage table needs as many filters, blocks and strides, got "
            f"{filters}, {blocks}, {strides}"
        )
    return tuple(Stage(f, b, s) for f, b, s in zip(filters, blocks, strides))


@dataclasses.dataclass(frozen=True)
class Block:
    """One block of the stage loop.

    Attributes:
        name: str. `stage{i}_block{j}`, 1-based.
        filters: int. The stage's width.
        stride: int. The stage's stride on its first block, 1 after.
        first: bool. Whether it opens its stage.
    """

    name: str  # stage{i}_block{j}, 1-based
    filters: int
    stride: int  # the stage's stride on its first block, 1 after
    first: bool  # whether it opens its stage


def each_block(stage_table):
    """Yields the blocks of an architecture table in order: the one stage loop.

    Args:
        stage_table: sequence of `Stage`.

    Yields:
        One `Block` per block, named `stage{i}_block{j}` (1-based).
    """
    for i, stage in enumerate(stage_table, start=1):
        for j in range(stage.blocks):
            yield Block(
                f"stage{i}_block{j + 1}", stage.filters, stage.stride if j == 0 else 1, j == 0
            )


def batch_norm(name, *, momentum=0.9, epsilon=1e-5, gamma=1.0, regularizer=None):
    """A BatchNormalization layer, by default with PyTorch's BatchNorm2d settings (its momentum
    0.1 is Keras' 0.9; ε = 1e-5), as the official code of ReCU and ERN trains. `gamma` is γ's
    initial value; `regularizer` applies to γ and β.

    Args:
        name: str. The layer name.
        momentum: float. Moving-average momentum (Keras' convention). Defaults to `0.9`.
        epsilon: float. Variance epsilon. Defaults to `1e-5`.
        gamma: float. Initial value of γ. Defaults to `1.0`.
        regularizer: keras regularizer or None. Of γ and β. Defaults to `None`.

    Returns:
        An `effkeras.layers.BatchNormalization` layer.
    """
    return BatchNormalization(
        momentum=momentum,
        epsilon=epsilon,
        gamma_initializer="ones" if gamma == 1.0 else keras.initializers.Constant(gamma),
        beta_regularizer=regularizer,
        gamma_regularizer=regularizer,
        name=name,
    )


def whole_map_logits(x, num_classes, **dense_options):
    """Applies Larq Zoo's head: an average pool over the whole (static) map, then Dense.

    Faster than a global pool on LCE. The layers are named `pool`, `flatten` and `logits`.

    Args:
        x: tensor of shape `(batch, height, width, channels)` with static height and width.
        num_classes: int. Number of logits.
        **dense_options: passed on to the `Dense` layer (e.g. `kernel_initializer`).

    Returns:
        The logits tensor, shape `(batch, num_classes)`.
    """
    x = layers.AveragePooling2D(tuple(x.shape[1:3]), name="pool")(x)
    x = layers.Flatten(name="flatten")(x)
    return layers.Dense(num_classes, name="logits", **dense_options)(x)


def coupled_l2(weight_decay):
    """The Keras regularizer for PyTorch's (coupled) weight decay `weight_decay`, as the official
    code of ReCU and ERN trains: wd·w added to the gradient is an L2 penalty of wd / 2.

    Args:
        weight_decay: float. PyTorch's `weight_decay`.

    Returns:
        A `keras.regularizers.L2(weight_decay / 2)`, or None for 0.
    """
    return keras.regularizers.L2(weight_decay / 2) if weight_decay else None
