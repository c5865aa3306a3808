"""Folding inference BatchNormalization into the layer before it.

A BN at inference is y = scale·x + shift per channel, scale = γ/√(var + ε), shift = β - mean·scale.
TFLite's converter folds a BN into the conv before it; passes that build their own conv-like
layers (the w1a2 planes, collapsed blocks) fold it themselves with these helpers.
"""

import numpy as np
from keras import ops


def batch_norm_affine(batch_norm):
    """(scale, shift) per channel (float64) of an inference BatchNormalization over the last
    axis; None when it normalises another axis.

    Args:
        batch_norm: keras.layers.BatchNormalization. A built layer.

    Returns:
        A tuple `(scale, shift)` of float64 numpy arrays of shape `(channels,)`, or None.
    """
    if batch_norm.axis not in (-1, len(batch_norm.input.shape) - 1):
        return None
    weights = {
        w.path.split("/")[-1]: np.asarray(ops.convert_to_numpy(w), np.float64)
        for w in batch_norm.weights
    }
    scale = weights.get("gamma", 1.0) / np.sqrt(weights["moving_variance"] + batch_norm.epsilon)
    return scale, weights.get("beta", 0.0) - weights["moving_mean"] * scale


def fold_into_output(multiplier, bias, batch_norm):
    """(multiplier, bias) of a per-output-channel affine layer y = m·conv + b with `batch_norm`
    applied after it folded in; None when the BN cannot be folded.

    Args:
        multiplier: numpy array `(channels,)` (or scalar). The layer's m.
        bias: numpy array `(channels,)` (or scalar). The layer's b.
        batch_norm: keras.layers.BatchNormalization. The BN after the layer.

    Returns:
        A tuple `(multiplier, bias)` of the folded affine, or None when the BN normalises an
        axis other than the last.
    """
    affine = batch_norm_affine(batch_norm)
    if affine is None:
        return None
    scale, shift = affine
    return multiplier * scale, bias * scale + shift
