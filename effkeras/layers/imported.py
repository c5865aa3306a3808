"""Layers that imported Keras 2 (larq, Larq Zoo) models are made of (effkeras.interop.larq).

`TFOpCall` recomputes, with keras.ops, a TensorFlow function call that Keras 2 recorded as a
TFOpLambda layer (`x + y`, `tf.nn.relu(x)`, `x[..., :4]`, `tf.concat`, ...); `AddToLastChannels`
is MeliusNet's improvement-block merge; `clip_by_value_activation` is DoReFaNet's activation.
They live here so that `import effkeras` registers them and an imported model round-trips
through `.keras` files.
"""

import keras
import numpy as np
from keras import ops

from effkeras.errors import InputError

_register = keras.saving.register_keras_serializable(package="effkeras")


# --- TensorFlow functions that Keras 2 records as TFOpLambda layers, recomputed with keras.ops ---
# Each takes TensorFlow's parameter names, the names Keras 2 records the call's arguments under.


def _binary(op):
    def call(x, y):
        return op(x, y)

    return call


def _unary(op):
    def call(x):
        return op(x)

    return call


def _activation(op):
    def call(features):
        return op(features)

    return call


def _reduction(op):
    def call(input_tensor, axis=None, keepdims=False):
        return op(
            input_tensor, axis=tuple(axis) if isinstance(axis, list) else axis, keepdims=keepdims
        )

    return call


def _concat(values, axis):
    return ops.concatenate(values, axis=axis)


def _split(value, num_or_size_splits, axis=0, num=None):
    if isinstance(num_or_size_splits, int):
        return ops.split(value, num_or_size_splits, axis=axis)
    sizes = list(num_or_size_splits)  # TensorFlow takes sizes, keras.ops the split points
    if -1 in sizes:
        sizes[sizes.index(-1)] = value.shape[axis] - sum(sizes) - 1
    return ops.split(value, [int(point) for point in np.cumsum(sizes)[:-1]], axis=axis)


def _reshape(tensor, shape):
    return ops.reshape(tensor, shape)


def _transpose(a, perm=None, conjugate=False):
    return ops.transpose(a, axes=perm)


def _expand_dims(input, axis):  # noqa: A002 (TensorFlow's name)
    return ops.expand_dims(input, axis)


def _squeeze(input, axis=None, squeeze_dims=None):  # noqa: A002 (squeeze_dims: tf.compat.v1's)
    axis = squeeze_dims if axis is None else axis
    return ops.squeeze(input, axis=tuple(axis) if isinstance(axis, list) else axis)


def _identity(input):  # noqa: A002
    return input


def _pad(tensor, paddings, mode="CONSTANT", constant_values=0):
    return ops.pad(
        tensor,
        paddings,
        mode=mode.lower(),
        constant_values=constant_values if constant_values else None,
    )


def _clip_by_value(t, clip_value_min, clip_value_max):
    return ops.clip(t, clip_value_min, clip_value_max)


def _softmax(logits, axis=None):
    return ops.softmax(logits, axis=-1 if axis is None else axis)


def _index(item):
    """One recorded slice_spec item: {"start", "stop", "step"} is a slice, "..." Ellipsis,
    None a new axis, an int an index."""
    if isinstance(item, dict):
        return slice(item["start"], item["stop"], item["step"])
    return Ellipsis if item == "..." else item


def _getitem(tensor, slice_spec):
    if isinstance(slice_spec, list):
        return tensor[tuple(_index(item) for item in slice_spec)]
    return tensor[_index(slice_spec)]


TF_FUNCTIONS = {
    "__operators__.add": _binary(ops.add),  # x + y
    "math.add": _binary(ops.add),
    "math.subtract": _binary(ops.subtract),  # x - y
    "math.multiply": _binary(ops.multiply),  # x * y
    "math.truediv": _binary(ops.true_divide),  # x / y
    "math.divide": _binary(ops.true_divide),
    "math.maximum": _binary(ops.maximum),
    "math.minimum": _binary(ops.minimum),
    "math.pow": _binary(ops.power),  # x ** y
    "math.negative": _unary(ops.negative),  # -x
    "math.abs": _unary(ops.abs),
    "math.square": _unary(ops.square),
    "math.sqrt": _unary(ops.sqrt),
    "math.exp": _unary(ops.exp),
    "math.sigmoid": _unary(ops.sigmoid),  # also tf.nn.sigmoid
    "math.tanh": _unary(ops.tanh),  # also tf.nn.tanh
    "nn.relu": _activation(ops.relu),
    "nn.relu6": _activation(ops.relu6),
    "nn.softmax": _softmax,
    "math.softmax": _softmax,
    "math.reduce_mean": _reduction(ops.mean),
    "math.reduce_sum": _reduction(ops.sum),
    "math.reduce_max": _reduction(ops.max),
    "math.reduce_min": _reduction(ops.min),
    "concat": _concat,
    "split": _split,
    "reshape": _reshape,
    "transpose": _transpose,
    "compat.v1.transpose": _transpose,  # what tf.transpose records
    "expand_dims": _expand_dims,
    "squeeze": _squeeze,
    "compat.v1.squeeze": _squeeze,  # what tf.squeeze records
    "identity": _identity,
    "pad": _pad,
    "compat.v1.pad": _pad,  # what tf.pad records
    "clip_by_value": _clip_by_value,
    "__operators__.getitem": _getitem,  # x[...], recorded as a SlicingOpLambda
}
INPUT = "__input__"  # {"__input__": i} in TFOpCall.arguments: the call's i-th input tensor


def _fill(arguments, tensors):
    if isinstance(arguments, dict):
        if set(arguments) == {INPUT}:
            return tensors[arguments[INPUT]]
        return {key: _fill(value, tensors) for key, value in arguments.items()}
    if isinstance(arguments, list):
        return [_fill(value, tensors) for value in arguments]
    return arguments


@_register
class TFOpCall(keras.layers.Layer):
    """A TensorFlow function call that Keras 2 recorded as a TFOpLambda layer, in keras.ops.

    `function` is its name in `TF_FUNCTIONS` ("__operators__.add" for x + y) and `arguments` its
    keyword arguments (TensorFlow's names) as JSON, with {"__input__": i} where the layer's i-th
    input tensor goes. E.g. `tf.concat([a, b], axis=-1)` is TFOpCall("concat", {"values":
    [{"__input__": 0}, {"__input__": 1}], "axis": -1}) called on [a, b].

    Args:
        function: str. A key of `TF_FUNCTIONS`.
        arguments: dict. The call's keyword arguments as JSON, with input placeholders.
        **kwargs: base layer arguments (e.g. `name`).

    Raises:
        InputError: if `function` has no keras.ops equivalent here.
    """

    def __init__(self, function, arguments, **kwargs):
        super().__init__(**kwargs)
        if function not in TF_FUNCTIONS:
            raise InputError(
                f"TFOpCall: no keras.ops equivalent of tf.{function}; supported: "
                f"{sorted(TF_FUNCTIONS)}."
            )
        self.function = function
        self.arguments = arguments

    def call(self, inputs):
        tensors = list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
        return TF_FUNCTIONS[self.function](**_fill(self.arguments, tensors))

    def get_config(self):
        return {**super().get_config(), "function": self.function, "arguments": self.arguments}


@_register
class AddToLastChannels(keras.layers.Layer):
    """[x, y] -> x + y added onto the last C_y channels of x: x + pad(y, C_x - C_y zero
    channels in front).

    MeliusNet's Improvement Block (Bethge et al., arXiv 2001.05936, Sec. 3.2): the 64 channels
    its binary conv computes are added to the newest 64 channels of the Dense Block's output.

    Takes no arguments but the base layer's; when built, raises `InputError` unless y has x's
    rank and no more channels than x.
    """

    def build(self, input_shape):
        x_shape, y_shape = input_shape
        if len(x_shape) != len(y_shape) or y_shape[-1] > x_shape[-1]:
            raise InputError(
                f"{self.name}: AddToLastChannels adds y {tuple(y_shape)} onto the "
                f"last channels of x {tuple(x_shape)}: y needs x's rank and no more "
                f"channels than x."
            )

    def call(self, inputs):
        x, y = inputs
        rank = len(y.shape)
        return ops.add(x, ops.pad(y, [[0, 0]] * (rank - 1) + [[x.shape[-1] - y.shape[-1], 0]]))

    def compute_output_shape(self, input_shape):
        return input_shape[0]


@_register
def clip_by_value_activation(x):
    """clip(x, 0, 1): the activation before Larq Zoo DoReFaNet's last Dense (DoReFa-Net, Zhou
    et al., arXiv 1606.06160), stored in its config as a function name.

    Args:
        x: tensor.

    Returns:
        A tensor of the shape of `x`.
    """
    return ops.clip(x, 0.0, 1.0)
