"""Learnable per-channel 1-D activations read from a table by linear interpolation (LERP).

LERP-PSA (Singh & Bazargan, "Compressing Neural Networks Using Learnable 1-D Non-Linear
Functions", ACM TRETS 18(2), 2025, DOI 10.1145/3705926): every channel c has its own function
f_c, a table of G values on the fixed grid g_j = -R + j·2R/(G-1), read by linear interpolation
with linear extrapolation outside [-R, R]. The table is not free: it is PSA ("personal
self-attention") sampled on the grid, with E slots per channel,

    PSA_c(x) = o_c · Σ_e softmax_e(-(x - b_ce)² / (w_ce² + ε)) · x·u_ce + β_c,

recomputed from its 3E + 2 parameters on every training step (G·C·E work, whatever the batch).
`ResPSA` adds the input back (x + f(x)), as the paper's ResMLP uses it.

The B-spline baseline (DeepSplines: Bohra et al., IEEE OJSP 2020; Aziznejad et al., IEEE TNN
2020) is the same piecewise-linear class with its `size` knot values as free parameters,
initialised to a leaky ReLU, and a TV(2) penalty λ·Σ|c_{k+1} - 2c_k + c_{k-1}|/T on them.

`LerpTable` is what both become for inference (effkeras.graph.passes.freeze_tables): a constant
table per channel, with an input affine (a folded BatchNormalization) in front, and the residual
folded in: interpolating samples of the identity is exact, so x + lerp(T)(x) = lerp(T + g)(x).
Its `form` "gather" lowers to TFLite builtins (CAST, FLOOR, MINIMUM/MAXIMUM, GATHER, MUL, ADD);
"relu_sum" is the same function as a sum of ReLUs, T[0] + s_0·t + Σ_k (s_k - s_{k-1})·ReLU(t - k)
(t in grid units, s_k = T[k+1] - T[k]), for runtimes without GATHER.

Every layer here computes in float32, also under mixed precision: in bfloat16 or float16 a grid
position in [0, 63] keeps too few fractional bits for the interpolation weights.
"""

import math

import keras
import numpy as np
from keras import ops


def grid(grid_size, grid_range):
    """Returns the G grid points, float64: -R + j·2R/(G-1).

    Args:
        grid_size: int. G, the number of points.
        grid_range: float. R.

    Returns:
        A float64 numpy array of shape `(grid_size,)`.
    """
    return np.linspace(-grid_range, grid_range, grid_size)


def _check_grid(grid_size, grid_range):
    if isinstance(grid_size, bool) or not isinstance(grid_size, int) or grid_size < 2:
        raise ValueError(
            f"grid_size must be an int >= 2 (a table needs two points to "
            f"interpolate), got {grid_size!r}"
        )
    if not (isinstance(grid_range, (int, float)) and math.isfinite(grid_range) and grid_range > 0):
        raise ValueError(
            f"grid_range R must be a finite number > 0 (the grid runs from -R to R "
            f"and must be increasing), got {grid_range!r}"
        )


def _check_positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def _gather(values, indices):
    """values[indices] for in-range indices; tf.gather on TensorFlow (keras.ops.take would add
    LESS and SELECT_V2 to the TFLite file to wrap negative indices, which never occur here)."""
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        return tf.gather(values, indices)
    return ops.take(values, indices)


def lerp(x, table, grid_range):
    """Per-channel linear interpolation of `table` (C, G) at `x` (..., C), linear extrapolation
    outside [-R, R]: t = (x + R)(G-1)/(2R), k = clip(floor(t), 0, G-2), f = t - k (not clipped),
    y = T[k] + f·(T[k+1] - T[k]).

    Args:
        x: tensor of shape `(..., C)`.
        table: tensor of shape `(C, G)`.
        grid_range: float. R.

    Returns:
        A tensor of the shape of `x`.
    """
    channels, size = table.shape
    t = (x + grid_range) * ((size - 1) / (2 * grid_range))
    k = ops.clip(ops.floor(t), 0, size - 2)
    fraction = t - k
    index = ops.cast(k, "int32") + ops.arange(channels, dtype="int32") * size
    slopes = ops.concatenate(
        [table[:, 1:] - table[:, :-1], ops.zeros((channels, 1), table.dtype)], axis=1
    )
    return _gather(ops.reshape(table, (-1,)), index) + fraction * _gather(
        ops.reshape(slopes, (-1,)), index
    )


class _TableActivation(keras.layers.Layer):
    """What the table activations share: channels on the last axis, float32, a grid."""

    def __init__(self, channels, grid_size, grid_range, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        _check_positive_int("channels", channels)
        _check_grid(grid_size, grid_range)
        self.channels, self.grid_size, self.grid_range = channels, grid_size, float(grid_range)

    def _check_input(self, input_shape):
        if input_shape[-1] != self.channels:
            raise ValueError(
                f"{self.name} has {self.channels} channels but its input has "
                f"{input_shape[-1]} on the last axis"
            )

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {
            **super().get_config(),
            "channels": self.channels,
            "grid_size": self.grid_size,
            "grid_range": self.grid_range,
        }


@keras.saving.register_keras_serializable(package="effkeras")
class LerpPSA(_TableActivation):
    """f_c(x) = lerp of PSA_c sampled on the grid (module docstring); `residual`: x + f_c(x).

    Initialisation (the official code's, for a function inside a residual trained by
    distillation): u ~ N(0, 4²), w = 1, b ~ U(-1, 1), o = 1, β = 0; outside a residual
    u ~ U(±√(6/(1+E))). Computes in float32, also under mixed precision.

    Reference:
        - [Singh & Bazargan, Compressing Neural Networks Using Learnable 1-D Non-Linear
            Functions, ACM TRETS 18(2), 2025](https://doi.org/10.1145/3705926)

    Args:
        channels: int > 0. C, the size of the input's last axis.
        expansion: int > 0. E, the PSA slots per channel. Defaults to `8`.
        grid_size: int >= 2. G, the table's points. Defaults to `64`.
        grid_range: float > 0. R: the grid runs from -R to R. Defaults to `4.0`.
        eps: float > 0. ε, which keeps the score width √(w² + ε) away from 0. Defaults to
            `1.0`.
        residual: bool or None. Whether to output x + f_c(x). Defaults to `None`: False for
            LerpPSA, True for ResPSA.
        **kwargs: base layer arguments (e.g. `name`).

    Raises:
        ValueError: if `channels`, `expansion`, `grid_size`, `grid_range` or `eps` is out of
            range; when built, if the input's last axis is not `channels`.
    """

    residual_default = False

    def __init__(
        self, channels, expansion=8, grid_size=64, grid_range=4.0, eps=1.0, residual=None, **kwargs
    ):
        super().__init__(channels, grid_size, grid_range, **kwargs)
        _check_positive_int("expansion", expansion)
        if not (isinstance(eps, (int, float)) and math.isfinite(eps) and eps > 0):
            raise ValueError(
                f"eps must be a finite number > 0 (it keeps the score width "
                f"√(w² + ε) away from 0), got {eps!r}"
            )
        self.expansion, self.eps = expansion, float(eps)
        self.residual = self.residual_default if residual is None else bool(residual)

    def build(self, input_shape):
        self._check_input(input_shape)
        shape = (self.channels, self.expansion)
        if self.residual:
            values = keras.initializers.RandomNormal(stddev=4.0)
        else:
            limit = math.sqrt(6 / (1 + self.expansion))
            values = keras.initializers.RandomUniform(-limit, limit)
        self.u = self.add_weight(shape=shape, initializer=values, name="u")
        self.w = self.add_weight(shape=shape, initializer="ones", name="w")
        self.b = self.add_weight(
            shape=shape, initializer=keras.initializers.RandomUniform(-1, 1), name="b"
        )
        self.o = self.add_weight(shape=(self.channels,), initializer="ones", name="o")
        self.beta = self.add_weight(shape=(self.channels,), initializer="zeros", name="beta")

    def table(self):
        """PSA on the grid, (C, G): T[c, j] = PSA_c(g_j)."""
        g = ops.convert_to_tensor(grid(self.grid_size, self.grid_range), self.compute_dtype)[
            :, None, None
        ]
        scores = ops.square(g - self.b) / (ops.square(self.w) + self.eps)  # (G, C, E)
        attention = ops.softmax(-scores, axis=-1)
        values = ops.sum(attention * g * self.u, axis=-1)  # (G, C)
        return ops.transpose(self.o * values + self.beta)

    def call(self, x):
        y = lerp(x, self.table(), self.grid_range)
        return x + y if self.residual else y

    def get_config(self):
        return {
            **super().get_config(),
            "expansion": self.expansion,
            "eps": self.eps,
            "residual": self.residual,
        }


@keras.saving.register_keras_serializable(package="effkeras")
class ResPSA(LerpPSA):
    """x + LerpPSA(x): the form in the paper's ResMLP (module docstring).

    Takes `LerpPSA`'s arguments; `residual` defaults to True.
    """

    residual_default = True


@keras.saving.register_keras_serializable(package="effkeras")
class TotalVariation2(keras.regularizers.Regularizer):
    """TV(2) of piecewise-linear functions given by their values on a grid of step T (rows of a
    (C, K) weight): λ·Σ_c Σ_k |c_{k+1} - 2c_k + c_{k-1}| / T, the l1 norm of the slope changes,
    which favours few breakpoints (DeepSplines, Aziznejad et al. 2020).

    Args:
        strength: float. λ.
        step: float. T, the grid step.
    """

    def __init__(self, strength, step):
        self.strength, self.step = float(strength), float(step)

    def __call__(self, coefficients):
        second = coefficients[:, 2:] - 2 * coefficients[:, 1:-1] + coefficients[:, :-2]
        return self.strength * ops.sum(ops.abs(second)) / self.step

    def get_config(self):
        return {"strength": self.strength, "step": self.step}


@keras.saving.register_keras_serializable(package="effkeras")
class BSplineActivation(_TableActivation):
    """A linear B-spline per channel: `size` free values on the knots -R..R (step R/(size//2)),
    interpolated linearly and extrapolated with the end slopes, initialised to a leaky ReLU
    (slope 0.01), with the TV(2) penalty `tv2` (λ) on the values (module docstring).
    DeepSplines needs an odd size, so that 0 is a knot: 65 knots = 64 intervals on [-4, 4].

    Args:
        channels: int > 0. C, the size of the input's last axis.
        size: int. The number of knots, odd and >= 3. Defaults to `65`.
        grid_range: float > 0. R: the knots run from -R to R. Defaults to `4.0`.
        tv2: float >= 0. λ of the TV(2) penalty; 0 adds none. Defaults to `0.0`.
        negative_slope: float. Slope of the initial leaky ReLU below 0. Defaults to `0.01`.
        **kwargs: base layer arguments (e.g. `name`).

    Raises:
        ValueError: if `size` is not an odd int >= 3, `tv2` is negative or not finite, or
            `channels` or `grid_range` is out of range.
    """

    def __init__(self, channels, size=65, grid_range=4.0, tv2=0.0, negative_slope=0.01, **kwargs):
        if isinstance(size, bool) or not isinstance(size, int) or size < 3:
            raise ValueError(f"size (the number of knots) must be an odd int >= 3, got {size!r}")
        super().__init__(channels, size, grid_range, **kwargs)
        if size % 2 == 0:
            raise ValueError(f"a B-spline activation needs an odd size (0 is a knot), got {size}")
        if not (isinstance(tv2, (int, float)) and math.isfinite(tv2) and tv2 >= 0):
            raise ValueError(f"tv2 (λ) must be a finite number >= 0, got {tv2!r}")
        self.tv2, self.negative_slope = float(tv2), float(negative_slope)

    @property
    def size(self):
        return self.grid_size

    def build(self, input_shape):
        self._check_input(input_shape)
        knots = grid(self.grid_size, self.grid_range)
        initial = np.where(knots >= 0, knots, self.negative_slope * knots)
        step = 2 * self.grid_range / (self.grid_size - 1)
        self.coefficients = self.add_weight(
            shape=(self.channels, self.grid_size),
            name="coefficients",
            initializer=keras.initializers.Constant(np.tile(initial, (self.channels, 1))),
            regularizer=TotalVariation2(self.tv2, step) if self.tv2 else None,
        )

    def table(self):
        return ops.convert_to_tensor(self.coefficients)

    def call(self, x):
        return lerp(x, self.coefficients, self.grid_range)

    def get_config(self):
        config = super().get_config()
        config["size"] = config.pop("grid_size")
        return {**config, "tv2": self.tv2, "negative_slope": self.negative_slope}


LERP_FORMS = ("gather", "relu_sum")


@keras.saving.register_keras_serializable(package="effkeras")
class LerpTable(_TableActivation):
    """A frozen table activation: y_c = lerp(T_c)(a_c·x + b_c), T (C, G) on the grid -R..R.

    Non-trainable weights `values` (T), `input_scale` (a) and `input_offset` (b). `form`: "gather"
    (builtin TFLite ops, 2 GATHERs per element) or "relu_sum" (the same function as
    T[0] + s_0·t + Σ_{k=1}^{G-2} (s_k - s_{k-1})·ReLU(t - k); no GATHER, about 4(G-2) ops per
    element).

    Args:
        channels: int > 0. C, the size of the input's last axis.
        grid_size: int >= 2. G, the table's points. Defaults to `64`.
        grid_range: float > 0. R: the grid runs from -R to R. Defaults to `4.0`.
        form: str. `"gather"` or `"relu_sum"`. Defaults to `"gather"`.
        **kwargs: base layer arguments (e.g. `name`).

    Raises:
        ValueError: if `form` is unknown or another argument is out of range.
    """

    def __init__(self, channels, grid_size=64, grid_range=4.0, form="gather", **kwargs):
        super().__init__(channels, grid_size, grid_range, **kwargs)
        if form not in LERP_FORMS:
            raise ValueError(f"form must be one of {LERP_FORMS}, got {form!r}")
        self.form = form

    def build(self, input_shape):
        self._check_input(input_shape)
        self.values = self.add_weight(
            shape=(self.channels, self.grid_size),
            name="table",
            initializer="zeros",
            trainable=False,
        )
        self.input_scale = self.add_weight(
            shape=(self.channels,), name="input_scale", initializer="ones", trainable=False
        )
        self.input_offset = self.add_weight(
            shape=(self.channels,), name="input_offset", initializer="zeros", trainable=False
        )

    def function(self, x):
        """Evaluates the float64 NumPy function f_c at x, as the layer computes it.

        Args:
            x: array-like of shape `(..., C)`.

        Returns:
            A float64 numpy array of the shape of `x`.
        """
        table = np.asarray(ops.convert_to_numpy(self.values), np.float64)
        x = np.asarray(x, np.float64) * ops.convert_to_numpy(
            self.input_scale
        ) + ops.convert_to_numpy(self.input_offset)
        return lerp_numpy(x, table, self.grid_range)

    def call(self, x):
        x = x * self.input_scale + self.input_offset
        if self.form == "gather":
            return lerp(x, self.values, self.grid_range)
        size = self.grid_size
        t = (x + self.grid_range) * ((size - 1) / (2 * self.grid_range))
        slopes = self.values[:, 1:] - self.values[:, :-1]  # (C, G-1)
        kinks = slopes[:, 1:] - slopes[:, :-1]  # (C, G-2): at k = 1 .. G-2
        knots = ops.arange(1, size - 1, dtype=x.dtype)
        ramps = ops.relu(ops.expand_dims(t, -1) - knots)
        return self.values[:, 0] + slopes[:, 0] * t + ops.sum(ramps * kinks, axis=-1)

    def get_config(self):
        return {**super().get_config(), "form": self.form}


def lerp_numpy(x, table, grid_range):
    """`lerp` in float64 NumPy: the reference the layers and the int8 tables are checked with.

    Args:
        x: array-like of shape `(..., C)`.
        table: numpy array of shape `(C, G)`.
        grid_range: float. R.

    Returns:
        A float64 numpy array of the shape of `x`.
    """
    channels, size = table.shape
    t = (np.asarray(x, np.float64) + grid_range) * ((size - 1) / (2 * grid_range))
    k = np.clip(np.floor(t), 0, size - 2).astype(np.int64)
    fraction = t - k
    c = np.broadcast_to(np.arange(channels), k.shape)
    return table[c, k] + fraction * (table[c, k + 1] - table[c, k])


def psa_table_numpy(u, w, b, o, beta, eps, grid_size, grid_range):
    """Samples PSA on the grid in float64 NumPy (module docstring's formula).

    Args:
        u: numpy array `(C, E)`. Slot values' slopes.
        w: numpy array `(C, E)`. Score widths.
        b: numpy array `(C, E)`. Score centres.
        o: numpy array `(C,)`. Output scales.
        beta: numpy array `(C,)`. Output offsets.
        eps: float. ε.
        grid_size: int. G.
        grid_range: float. R.

    Returns:
        A float64 numpy array of shape `(C, G)`.
    """
    g = grid(grid_size, grid_range)[:, None, None]
    scores = (g - b) ** 2 / (w**2 + eps)
    scores = scores - scores.min(axis=-1, keepdims=True)
    attention = np.exp(-scores)
    attention /= attention.sum(axis=-1, keepdims=True)
    return (o * np.sum(attention * g * u, axis=-1) + beta).T
