"""`PlaneConv2D`: a w1a2 conv computed as binary convs over ±1 planes of its input.

What the w1a2 pass (effkeras.graph.passes.w1a2) rewrites ERN's w1a2 convs into for LCE; it lives
here so that `import effkeras.layers` registers it and a rewritten model round-trips through
`.keras` files.
"""

import keras
import numpy as np
from keras import ops

from effkeras.errors import InputError

PLANE_FORMS = ("thermometer", "bitplane")

_register = keras.saving.register_keras_serializable(package="effkeras")


@_register
class PlaneConv2D(keras.layers.Layer):
    """A w1aK conv as binary convs over ±1 planes of its (pre-quantizer) input x.

    `thresholds`: (levels,) or (levels, code channels) floats, code >= m <=> x >= thresholds[m-1]
    (the input quantizer's own comparisons). y = Σ_p w_p · multiplier · conv(plane_p, kernel) +
    bias with planes +1 below thresholds (module docstring): "thermometer" has one plane block
    [x < θ_1, .., x < θ_L] (w = 1), "bitplane" has u_lo (w = ½) and u_hi (w = 1).
    `code_channels` (optional) picks the x channel of every code channel (the pixel embedding's
    10 codes per colour). `padding` ((top, bottom), (left, right)) pads the planes with +1 when
    `pad_planes`, else x with 0, before a VALID conv. `kernel` is ±1; `multiplier` and `bias`
    are per output channel and fuse into LCE's bconv.

    Every plane is `where(v >= 0, 1, -1)` of a float v (θ⁻ - x, with θ⁻ the float32 just below
    θ, so v >= 0 <=> x < θ exactly): LCE quantizes v directly. Boolean planes (less, not_equal,
    logical ops) convert too but ran 5-65 % slower per layer in the LCE interpreter.

    Args:
        filters: int. Output channels.
        kernel_size: int or tuple of 2 ints. The kernel size.
        strides: int or tuple of 2 ints. Defaults to `(1, 1)`.
        padding: `((top, bottom), (left, right))` ints. Defaults to no padding.
        thresholds: array-like, `(levels,)` or `(levels, code channels)`, increasing along
            the levels.
        form: str. `"thermometer"` or `"bitplane"` (3 thresholds only). Defaults to
            `"thermometer"`.
        pad_planes: bool. Pad the planes with +1 (True) or x with 0. Defaults to `False`.
        code_channels: sequence of ints or None. The x channel of every code channel.
            Defaults to `None` (x's channels are the codes).
        activation: activation or None, applied to the output. Defaults to `None`.
        **kwargs: base layer arguments (e.g. `name`).

    Raises:
        InputError: for an unknown `form`, thresholds that are not increasing or of another
            rank, or `"bitplane"` without exactly 3 thresholds.
    """

    def __init__(
        self,
        filters,
        kernel_size,
        strides=(1, 1),
        padding=((0, 0), (0, 0)),
        *,
        thresholds,
        form="thermometer",
        pad_planes=False,
        code_channels=None,
        activation=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        thresholds = np.asarray(thresholds, np.float32)
        if form not in PLANE_FORMS:
            raise InputError(f"PlaneConv2D form must be one of {PLANE_FORMS}, got {form!r}")
        if thresholds.ndim not in (1, 2) or np.any(np.diff(thresholds, axis=0) <= 0):
            raise InputError(
                f"PlaneConv2D needs increasing thresholds, shape (levels,) or "
                f"(levels, code channels), got {thresholds.tolist()}"
            )
        if form == "bitplane" and len(thresholds) != 3:
            raise InputError(
                f"the bit-plane form needs 2-bit codes (3 thresholds), got "
                f"{len(thresholds)}; use form='thermometer'"
            )
        self.filters = int(filters)
        self.kernel_size = tuple(int(k) for k in np.broadcast_to(kernel_size, 2))
        self.strides = tuple(int(s) for s in np.broadcast_to(strides, 2))
        self.padding = tuple(tuple(int(p) for p in pair) for pair in padding)
        self.thresholds = thresholds
        self.form = form
        self.pad_planes = bool(pad_planes)
        self.code_channels = None if code_channels is None else [int(c) for c in code_channels]
        activation = keras.activations.get(activation)
        self.activation = None if activation is keras.activations.linear else activation

    @property
    def levels(self):
        """The number of thresholds (code levels above 0)."""
        return len(self.thresholds)

    def build(self, input_shape):
        codes = input_shape[-1] if self.code_channels is None else len(self.code_channels)
        planes = codes * self.levels if self.form == "thermometer" else codes
        constant = dict(initializer="zeros", trainable=False)
        shape = (*self.kernel_size, planes, self.filters)
        self.kernel = self.add_weight(name="kernel", shape=shape, **constant)
        self.multiplier = self.add_weight(name="multiplier", shape=(self.filters,), **constant)
        self.bias = self.add_weight(name="bias", shape=(self.filters,), **constant)

    def _pads(self):
        return [[0, 0], list(self.padding[0]), list(self.padding[1]), [0, 0]]

    def _bconv(self, v, weight):
        """weight · multiplier · conv(where(v >= 0, 1, -1)): LCE folds the product in."""
        plane = ops.where(ops.greater_equal(v, 0.0), 1.0, -1.0)
        if self.pad_planes and any(map(any, self.padding)):
            plane = ops.pad(plane, self._pads(), constant_values=1.0)  # +1 everywhere: code 0
        outputs = ops.conv(plane, self.kernel, strides=self.strides, padding="valid")
        return outputs * (self.multiplier * weight)

    def call(self, x):
        if not self.pad_planes and any(map(any, self.padding)):
            x = ops.pad(x, self._pads(), constant_values=0.0)  # code 0
        if self.code_channels is not None:
            x = ops.take(x, self.code_channels, axis=-1)
        theta = self.thresholds.reshape(self.levels, -1)  # (levels, 1 or code channels)
        below = np.nextafter(theta, np.float32(-np.inf))  # x < θ <=> θ⁻ - x >= 0
        if self.form == "thermometer":
            if theta.shape[1] == 1:
                below = np.repeat(below, x.shape[-1], axis=1)
            v = ops.convert_to_tensor(below.reshape(-1)) - ops.concatenate(
                [x] * self.levels, axis=-1
            )
            outputs = self._bconv(v, 1.0) + self.bias
        else:
            below, theta = below.reshape(3, -1), theta.reshape(3, -1)
            hi = below[1] - x  # q < 2
            # q even: x < θ_1, or θ_2 <= x < θ_3.
            lo = ops.maximum(below[0] - x, ops.minimum(x - theta[1], below[2] - x))
            # The bias on one bconv (it fuses there), then one float ADD.
            outputs = self._bconv(lo, 0.5) + (self._bconv(hi, 1.0) + self.bias)
        return outputs if self.activation is None else self.activation(outputs)

    def bconv_kernels(self):
        """The ±1 kernels (kh, kw, in, out) that each become one LceBconv2d."""
        kernel = np.where(ops.convert_to_numpy(self.kernel) >= 0, 1.0, -1.0)
        return [kernel] * (1 if self.form == "thermometer" else 2)

    def compute_output_shape(self, input_shape):
        size = []
        for axis, (kernel, stride, pads) in enumerate(
            zip(self.kernel_size, self.strides, self.padding)
        ):
            length = input_shape[1 + axis]
            size.append(None if length is None else (length + sum(pads) - kernel) // stride + 1)
        return (input_shape[0], *size, self.filters)

    def get_config(self):
        activation = (
            None if self.activation is None else keras.activations.serialize(self.activation)
        )
        return {
            **super().get_config(),
            "filters": self.filters,
            "kernel_size": self.kernel_size,
            "strides": self.strides,
            "padding": self.padding,
            "thresholds": self.thresholds.tolist(),
            "form": self.form,
            "pad_planes": self.pad_planes,
            "code_channels": self.code_channels,
            "activation": activation,
        }
