"""An activation quantizer (sign, heaviside, 2-bit) computed exactly by TFLite's int8 builtins.

A binary or w1a2 conv multiplies ±1 weights with the codes of a step function of its input;
in an int8 file the weights are int8 codes ±127 (the scale in the quantization parameters) and
the step function must output codes whose differences are exact multiples of one value, so
that the accumulator is the binary layer's sum times a constant. `Int8Step` is that step
function (graph.passes.binary_int8 puts one in front of every lowered binary layer).

On the int8 grid of its input (scale s, zero point z: the value of code k is s·(k - z)) any
monotone step function is a staircase in code space: code k reaches level m from code c_m on.
Each step is one 1x1 DEPTHWISE_CONV_2D, y_m = G_m·(k - c_m + 1/2) (weight G_m/s, bias
-G_m·(c_m - z - 1/2)), at least G_m/2 away from 0 on every code, which saturates to its output
range:
- sign-like (levels -1, +1; sign(0) = +1 as larq): one step, clipped to [-1, 1] (TFLite fuses
  the clip as RELU_N1_TO_1), output range [-128/127, 1]: scale 1/127, zero point 0, codes ±127;
  zero padding pads 0, as larq's zero-padded binary conv;
- unsigned (levels 0, Δ, ..., LΔ: heaviside, ERN's 2-bit quantizer, DoReFa): L steps, each
  saturating to [0, Δ] (codes -128 and 127), summed by L - 1 ADDs, the sum of j steps at
  scale Δ/n (n = 255 // j), so every partial sum is on its grid.
The thresholds c_m are found by evaluating the quantizer itself on the 256 values of its input
grid (`freeze`), so the int8 ops equal the Keras quantizer on every code by construction;
`freeze` checks it. ERN's pixel embedding followed by the stem's quantizer is one such function
per output channel (`embedding`: the DEPTHWISE_CONV_2D has a depth multiplier).

Before `freeze` (and in "float" or "calibrate" mode, effkeras.qat.set_mode) the layer computes
the quantizer as it is; the int8 form needs its input's grid, known once the QAT model is
calibrated.
"""

import keras
import numpy as np
from keras import layers, ops

from effkeras import quantizers
from effkeras.layers.ern import PixelEmbedding
from effkeras.layers.qat import fake_quant

SIGN, UNSIGNED = "sign", "unsigned"
_PROBE = np.linspace(-64.0, 320.0, 384 * 64 + 1, dtype=np.float32)  # finds the levels


@keras.saving.register_keras_serializable(package="effkeras")
class Int8Step(layers.Layer):
    """An elementwise activation quantizer as exact int8 step ops (module docstring).

    Args:
        quantizer: str, dict or quantizer. An elementwise quantizer (`effkeras.quantizers.get`)
            with levels -1, +1 or 0, Δ, ..., LΔ.
        embedding: dict or None. The config of a `PixelEmbedding` applied before the
            quantizer (ERN's stem). Defaults to `None`.
        grid: (scale, zero point) of the input's int8 codes, or None until `freeze` sets it.
            Defaults to `None`.
        **kwargs: base layer arguments (e.g. `name`).

    Raises:
        ValueError: if the quantizer's levels are neither -1, +1 nor evenly spaced from 0.
    """

    def __init__(self, quantizer, embedding=None, grid=None, **kwargs):
        kwargs.setdefault("dtype", "float32")
        kwargs.setdefault("trainable", False)
        super().__init__(**kwargs)
        self.quantizer = quantizers.get(quantizer)  # None: the embedding's codes as they are
        self.embedding = None if embedding is None else PixelEmbedding.from_config(embedding)
        self.expansion = 1 if embedding is None else self.embedding.expansion
        levels = np.unique(self._float(_PROBE[None, None, :, None]))
        if levels.size == 2 and levels[0] == -1.0 and levels[1] == 1.0:
            self.form, self.jump, self.steps = SIGN, 2.0, 1
        else:
            jumps = np.diff(levels)
            if levels[0] != 0.0 or levels.size < 2 or np.ptp(jumps) > 1e-6 * jumps[0]:
                raise ValueError(
                    f"{self.name}: the levels of {self.quantizer!r} are "
                    f"{levels.tolist()[:6]}: Int8Step takes -1, +1 or 0, Δ, 2Δ, ..."
                )
            self.form, self.jump, self.steps = UNSIGNED, float(jumps[0]), levels.size - 1
        self.mode = "quantize"
        self.grid = None if grid is None else (float(grid[0]), int(grid[1]))

    @property
    def output_range(self):
        """The fixed range of its int8 output (module docstring)."""
        if self.form == SIGN:
            return (-128 / 127, 1.0)
        return (0.0, self._sum_range(self.steps))

    def _sum_range(self, steps):
        """The high end of a sum of `steps` steps: scale Δ / (255 // steps), so that every
        multiple of Δ is a code (and each partial sum has a scale of its own)."""
        return self.jump if steps == 1 else 255 / (255 // steps) * self.jump

    def build(self, input_shape):
        self.channels = input_shape[-1]
        if self.grid is not None:
            self.freeze(*self.grid)

    def _float(self, x):
        x = ops.cast(x, "float32")
        if self.embedding is not None:
            x = self.embedding(x)
        return x if self.quantizer is None else self.quantizer(x)

    def call(self, x):
        if self.mode != "quantize" or self.grid is None:
            return self._float(x)
        return self._int8(ops.cast(x, "float32"))

    def _int8(self, x):
        if len(x.shape) == 2:  # a Dense layer's input: (B, F) as (B, 1, 1, F), a RESHAPE
            flat = ops.reshape(x, (-1, 1, 1, x.shape[-1]))
            return ops.reshape(self._int8(flat), (-1, x.shape[-1] * self.expansion))
        total = None
        for m in range(self.steps):
            gain = np.float32(self._gains[m])
            kernel = np.full((1, 1, x.shape[-1], self.expansion), gain, np.float32)
            kernel = fake_quant(kernel, -gain, gain, narrow_range=True)  # codes 127, per tensor
            y = ops.depthwise_conv(x, kernel, padding="valid") + self._offsets[m]
            if self.form == SIGN:
                return ops.clip(y, -1.0, 1.0)  # the output FakeQuant follows (quantize_model)
            y = fake_quant(y, 0.0, self.jump)
            total = y if total is None else total + y
            if 0 < m < self.steps - 1:  # the last sum is quantized by the FakeQuant after it
                total = fake_quant(total, 0.0, self._sum_range(m + 1))
        return total

    def freeze(self, scale, zero_point):
        """Sets the int8 form for an input grid of (scale, zero point), and checks it.

        Args:
            scale: float. The input's int8 scale.
            zero_point: int. The input's int8 zero point.

        Returns:
            The thresholds c_m in code space, an int array (steps, channels).

        Raises:
            ValueError: if the quantizer on this grid is not the staircase its levels say, or
                the int8 form misses it on a code.
        """
        scale, zero_point = float(scale), int(zero_point)
        codes = np.arange(-128, 128)
        grid = np.float32(scale) * (codes - zero_point).astype(np.float32)
        probe = np.broadcast_to(grid[None, None, :, None], (1, 1, 256, self.channels))
        levels = np.asarray(ops.convert_to_numpy(self._float(probe)), np.float64)[0, 0]
        low = -1.0 if self.form == SIGN else 0.0
        thresholds = np.full((self.steps, levels.shape[-1]), 128)
        for m in range(self.steps):
            reached = levels >= low + (m + 1) * self.jump - 1e-6 * self.jump
            thresholds[m] = np.where(reached.any(axis=0), reached.argmax(axis=0), 256) - 128
        staircase = low + self.jump * (codes[:, None, None] >= thresholds[None]).sum(axis=1)
        if not np.allclose(staircase, levels, rtol=0, atol=1e-6 * self.jump):
            raise ValueError(f"{self.name}: {self.quantizer!r} is not monotone on its int8 grid")
        # G_m = (4 + m)·Δ: a margin of at least 2Δ, and kernels that differ, so that the
        # converter does not merge the steps' convs into one (their biases then stay float ADDs).
        gains = (4.0 + np.arange(self.steps)) * self.jump
        self._gains = gains / scale
        self._offsets = (-gains[:, None] * (thresholds - zero_point - 0.5)).astype(np.float32)
        self.grid = (scale, zero_point)
        exact = np.asarray(ops.convert_to_numpy(self._int8(probe)), np.float64)[0, 0]
        exact = np.asarray(ops.convert_to_numpy(fake_quant(exact, *self.output_range)))
        if not np.allclose(exact, levels, rtol=0, atol=1e-5 * self.jump):
            self.grid = None
            raise ValueError(f"{self.name}: the int8 form misses the quantizer on its grid")
        return thresholds

    def compute_output_shape(self, input_shape):
        channels = None if input_shape[-1] is None else input_shape[-1] * self.expansion
        return (*input_shape[:-1], channels)

    def get_config(self):
        return {
            **super().get_config(),
            "quantizer": quantizers.serialize(self.quantizer),
            "embedding": None if self.embedding is None else self.embedding.get_config(),
            "grid": self.grid,
        }
