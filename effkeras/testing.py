"""Weights for tests and benchmarks: BN statistics as after training, and weights under which a
conversion must be exact.

Binary accumulators are integers, so with random float weights some outputs land within float
rounding of a quantizer threshold and two correct computations (Keras, and the converted
flatbuffer with its own summation order) round to different codes; in a deep low-bit net one
flipped code then moves the logits far more than rounding. These weights keep every such value
away from the thresholds, so any disagreement is a real conversion error.
"""

import keras
import numpy as np

from effkeras.errors import InputError
from effkeras.graph.passes.w1a2 import is_w1a2
from effkeras.graph.rewrite import as_list


def tie_free_weights(model, seed=0, spread=0.7):
    """Sets weights under which `model` and its rewrite must agree to float rounding; returns it.

    Binary accumulators are integers, so with random float weights some BN outputs land within
    float rounding of a threshold (1/3, 1, 5/3) and the two computations round to different
    codes; a flipped code then changes the logits by far more than rounding (measured). Here
    every w1a2 kernel is ±2^-k (k per output channel, so λ = mean|W| = 2^-k), every BN input
    is then a multiple of a grid g = step·λ (or 1/32 on the residual stream), and every
    BN has γ = ±2^b with γ·g <= 1/2 (power-of-two part), mean 0, variance 1 - ε and β an odd
    multiple of half the grid. Its outputs are then odd multiples of 2^(e-1) (e = log2 |γ·g|)
    over 1 or 3 and keep a distance >= 2^(e-1)/3 from every threshold (which is a third of an
    odd or even integer): ~1e-3, far above float32 rounding. γ is set so BN outputs spread about
    `spread` around β; β is drawn in [0.2, 1.4] so the codes use all 4 levels.

    Supports graphs whose BNs read a w1a2 conv or an Add of such convs (ERN).

    Args:
        model: keras.Model. A functional w1a2 model (ERN), built.
        seed: int. Seed of the random signs, exponents and β. Defaults to `0`.
        spread: float. About how far BN outputs spread around β. Defaults to `0.7`.

    Returns:
        `model`, with its w1a2 kernels and BN weights set.

    Raises:
        InputError: if a w1a2 conv's step·λ is not a power of two (times 2/3), an Add mixes
            tensors without a common grid, or a BN reads something other than a w1a2 conv or
            an Add of them.
    """
    rng = np.random.default_rng(seed)
    grids = {}  # id(layer) -> (power-of-two grid per channel, has a 2/3 factor, std per channel)
    for layer in model.layers:
        producers = (
            [t._keras_history[0] for t in as_list(getattr(layer, "input", None))]
            if not isinstance(layer, keras.layers.InputLayer)
            else []
        )
        if is_w1a2(layer) and isinstance(layer, keras.layers.Conv2D):
            kh, kw, fan_in, filters = layer.kernel.shape
            exponent = -rng.integers(1, 4, filters)
            signs = np.where(rng.random(layer.kernel.shape) < 0.5, -1.0, 1.0)
            kernel = signs * 2.0**exponent
            layer.kernel.assign(kernel.astype(np.float32))
            scale = np.asarray(layer.kernel_quantizer.scale(layer.kernel), np.float64)
            step = layer.input_quantizer.step
            third = not float(step).is_integer()
            grid = scale * (1.5 * step if third else step)  # step = 2/3 -> grid 1 (and the 2/3)
            if not np.all(np.log2(grid) == np.round(np.log2(grid))):
                raise InputError(
                    f"{layer.name}: step·λ {step}·{scale[0]} is not a power of two (times 2/3)"
                )
            std = step * scale * np.sqrt(3.5 * kh * kw * fan_in)  # codes ~ uniform on 0..3
            grids[id(layer)] = (grid, third, std)
        elif isinstance(layer, keras.layers.Add):
            inputs = [grids.get(id(p)) for p in producers]
            if any(i is None for i in inputs) or len({i[1] for i in inputs}) != 1:
                raise InputError(f"{layer.name}: adds tensors without a common grid")
            grids[id(layer)] = (
                np.min([i[0] for i in inputs], axis=0),
                inputs[0][1],
                np.sqrt(np.sum([i[2] ** 2 for i in inputs], axis=0)),
            )
        elif isinstance(layer, keras.layers.BatchNormalization):
            source = grids.get(id(producers[0]))
            if source is None:
                raise InputError(
                    f"{layer.name}: reads {producers[0].name}, not a w1a2 conv or an Add of them"
                )
            grid, _, std = (
                np.broadcast_to(v, layer.gamma.shape) for v in (source[0], source[1], source[2])
            )
            # γ = ±2^b: spread/std rounded to a power of two, capped so that γ·grid <= 1/2.
            b = np.minimum(np.round(np.log2(spread / std)), -1 - np.log2(grid))
            e = b + np.log2(grid)
            gamma = np.where(rng.random(b.shape) < 0.2, -1.0, 1.0) * 2.0**b
            half = 2.0 ** (e - 1)
            beta = (2 * np.floor(rng.uniform(0.2, 1.4, b.shape) / (2 * half)) + 1) * half
            layer.set_weights(
                [gamma, beta, np.zeros_like(gamma), np.full_like(gamma, 1 - layer.epsilon)]
            )
        elif isinstance(layer, keras.layers.ZeroPadding2D) and id(producers[0]) in grids:
            grids[id(layer)] = grids[id(producers[0])]
    return model


def set_batch_norm_statistics(model, seed=0, beta_std=0.1, mean_std=0.2, variance=(0.2, 2.0)):
    """Gives every BatchNormalization of `model` random statistics as after training, in place.

    An untrained BN (γ 1, β 0, mean 0, variance 1) folds into nothing; these make folding and
    quantization points non-trivial: γ ~ U[0.5, 1.5], β ~ N(0, beta_std), the moving mean ~
    N(0, mean_std) and the moving variance ~ U(variance), drawn in that order per layer.

    Args:
        model: keras.Model. Its top-level BatchNormalization layers are set.
        seed: int. The NumPy random seed. Defaults to `0`.
        beta_std: float. Defaults to `0.1`.
        mean_std: float. Defaults to `0.2`.
        variance: (low, high). Defaults to `(0.2, 2.0)`.

    Returns:
        `model`.
    """
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            channels = layer.gamma.shape[0]
            layer.set_weights(
                [
                    rng.uniform(0.5, 1.5, channels),
                    rng.normal(0, beta_std, channels),
                    rng.normal(0, mean_std, channels),
                    rng.uniform(*variance, channels),
                ]
            )
    return model
