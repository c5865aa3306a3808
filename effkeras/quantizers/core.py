"""The pieces every quantizer is made of: registration, the custom-gradient wrapper, the LCE
sign form and the `Quantizer` base class (larq's: a function plus a thin serializable class)."""

import keras
from keras import ops

_register = keras.saving.register_keras_serializable(package="effkeras")


def _constant(value, like):
    return ops.convert_to_tensor(value, dtype=keras.backend.standardize_dtype(like.dtype))


def _tensor(x):
    """A variable (a kernel) read once, as a tensor: what a custom gradient must take (or TF asks
    for variable gradients), and what lets ops on it be shared (one |W| for scale and gradient)."""
    return ops.copy(x) if isinstance(x, keras.Variable) else x


def _with_gradient(forward, gradient):
    """`forward` whose backward pass is `gradient(x, upstream)` instead of autodiff."""

    @ops.custom_gradient
    def quantize(x):
        def grad(*args, upstream=None):
            if upstream is None:
                (upstream,) = args
            return gradient(x, upstream)

        return forward(x), grad

    return lambda x: quantize(_tensor(x))


def _sign(x):
    """+1 where x >= 0 (0 included, as larq.math.sign and LCE), -1 elsewhere."""
    return ops.where(ops.greater_equal(x, 0), _constant(1.0, x), _constant(-1.0, x))


def _masked(mask, upstream):
    """upstream where mask, else 0, as a product with the 0/1 mask: one pass fewer than a select
    against a zero tensor (the values are the same for every finite upstream)."""
    return upstream * ops.cast(mask, upstream.dtype)


def _clipped(clip_value):
    """Straight-through gradient, zero where |x| > clip_value (never zero for None)."""
    if clip_value is None:
        return lambda x, upstream: upstream
    return lambda x, upstream: _masked(ops.less_equal(ops.abs(x), clip_value), upstream)


class Quantizer:
    """Base class: a callable with its output precision in `bits` and a complete config."""

    bits = None

    @property
    def precision(self):
        """larq's name for `bits`."""
        return self.bits

    def __call__(self, x):
        raise NotImplementedError

    def get_config(self):
        return {}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        args = ", ".join(f"{key}={value!r}" for key, value in self.get_config().items())
        return f"{type(self).__name__}({args})"


def channel_mean_abs(kernel):
    """α_o = mean |W| over everything but the last (output channel) axis."""
    return ops.mean(ops.abs(kernel), axis=tuple(range(len(kernel.shape) - 1)))
