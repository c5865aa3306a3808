"""A clone-and-replace rewriter for functional Keras models, the base of every graph pass.

`rewrite(model, replace)` copies `model` layer call by layer call. Before each call it asks
`replace(layer, inputs, graph)`: None keeps the layer (copied with its weights), anything else is
the new output tensor(s) of that call. `graph` tells a pass what it needs to look upstream:

- `graph.producer(tensor)`: (original layer, its new input) of a tensor made in the copy, or
  (replacement layer, ...) when a pass recorded one;
- `graph.consumers(layer)`: how many layer calls of the original model read `layer`'s output;
- `graph.through_padding(tensor)`: (tensor before an explicit ZeroPadding2D, its pads).

Passes check themselves with `check_models` (the whole model before vs after, on a small random
batch of raw pixels) and `check_outputs` (any two outputs): a rewrite that changes what the model
computes by more than MAX_REL_DIFF of its largest output is a RuntimeError, never a file.
"""

import keras
import numpy as np

from effkeras.errors import InputError


class Graph:
    """What a pass may ask about the model being copied (module docstring).

    Args:
        model: keras.Model. The functional model being rewritten.
    """

    def __init__(self, model):
        self._consumers = {}
        for layer in model.layers:
            for tensor in as_list(getattr(layer, "input", None)):
                producer = tensor._keras_history[0]
                self._consumers[id(producer)] = self._consumers.get(id(producer), 0) + 1
        self._made = {}  # id(new tensor) -> (layer that made it, its first new input, original)

    def consumers(self, layer):
        """Returns how many layer calls of the original model read `layer`'s output."""
        return self._consumers.get(id(layer), 0)

    def record(self, tensor, layer, source, original=None):
        """Records which layer made `tensor` in the copy, for `producer` and `original`.

        Args:
            tensor: the new tensor.
            layer: keras.layers.Layer. The (original or replacement) layer that made it.
            source: the new input tensor it was made from.
            original: keras.layers.Layer or None. The original layer whose call `tensor`
                replaces. Defaults to `None`: `layer` itself.
        """
        self._made[id(tensor)] = (layer, source, original if original is not None else layer)

    def producer(self, tensor):
        """Returns (layer, its new input) that made `tensor` in the copy.

        Args:
            tensor: a tensor of the copy.

        Returns:
            A tuple `(layer, source)`; `(None, None)` for inputs and unrecorded tensors.
        """
        layer, source, _ = self._made.get(id(tensor), (None, None, None))
        return layer, source

    def original(self, tensor):
        """Returns the original layer whose call `tensor` replaces (itself when not replaced).

        Args:
            tensor: a tensor of the copy.

        Returns:
            A `keras.layers.Layer`, or None for an unrecorded tensor.
        """
        return self._made.get(id(tensor), (None, None, None))[2]

    def through_padding(self, tensor):
        """(tensor before a channels-last ZeroPadding2D that made `tensor`, its ((top, bottom),
        (left, right)) pads); (tensor, zeros) when no such padding made it.

        Args:
            tensor: a tensor of the copy.

        Returns:
            A tuple `(tensor, pads)`, pads an int numpy array of shape `(2, 2)`.
        """
        layer, source = self.producer(tensor)
        if isinstance(layer, keras.layers.ZeroPadding2D) and layer.data_format == "channels_last":
            return source, np.asarray(layer.padding, int)
        return tensor, np.zeros((2, 2), int)


def rewrite(model, replace):
    """Returns a copy of functional `model` with each layer call offered to `replace` first.

    Kept layers are cloned from their configs and get the original's weights.

    Args:
        model: keras.Model. A functional model.
        replace: callable. `replace(layer, inputs, graph)` gets each original layer, its first
            new input and the `Graph`; it returns None to keep the layer, or the new output
            tensor(s) of that call.

    Returns:
        The rewritten functional `keras.Model`.

    Raises:
        InputError: if `model` is not a functional `keras.Model`.
    """
    if not isinstance(model, keras.Model) or not hasattr(model, "_run_through_graph"):
        raise InputError(f"graph passes need a functional keras.Model, got {type(model).__name__}")
    graph = Graph(model)
    originals = {}  # id(copy) -> original layer

    def clone(layer):
        copy = layer.__class__.from_config(layer.get_config())
        originals[id(copy)] = layer
        return copy

    def call(copy, *args, **kwargs):
        original = originals[id(copy)]
        outputs = replace(original, args[0] if args else None, graph)
        if outputs is None:
            outputs = copy(*args, **kwargs)
            kept.add(id(original))
            if args and not isinstance(outputs, (list, tuple)):
                graph.record(outputs, original, args[0])
        return outputs

    kept = set()
    rewritten = keras.models.clone_model(model, clone_function=clone, call_function=call)
    for layer in rewritten.layers:
        original = originals.get(id(layer))
        if original is not None and id(original) in kept:
            layer.set_weights(original.get_weights())
    return rewritten


def copy_call(layer, x, **config):
    """`layer` copied (its config with `config` over it, and its weights) and called on x: a
    layer a pass keeps, or keeps under another name, in a graph it builds itself.

    Args:
        layer: keras.layers.Layer. The built layer to copy.
        x: the input tensor.
        **config: config entries to override (e.g. `name`).

    Returns:
        The copy's output tensor.
    """
    copy = layer.__class__.from_config({**layer.get_config(), **config})
    y = copy(x)
    copy.set_weights(layer.get_weights())
    return y


def readers(model):
    """({id(layer): [layers calling on its output]}, {id(layer) of every model output}): what a
    pass checks before it folds one layer into another.

    Args:
        model: keras.Model. A functional model.

    Returns:
        A tuple `(readers, outputs)`: a dict from `id(layer)` to the list of layers that call
        on its output, and the set of `id`s of the layers that make the model's outputs.
    """
    found = {}
    for layer in model.layers:
        for node in layer._inbound_nodes:
            for tensor in node.input_tensors:
                found.setdefault(id(tensor._keras_history[0]), []).append(layer)
    return found, {id(tensor._keras_history[0]) for tensor in model.outputs}


def as_list(x):
    """Returns `x` as a list: `[]` for None, a list of a list or tuple, else `[x]`."""
    if x is None:
        return []
    return list(x) if isinstance(x, (list, tuple)) else [x]


MAX_REL_DIFF = 1e-5  # max |rewritten - original| / max |original|: float reassociation only
_FLOOR = 1e-12  # keeps the ratio finite for an all-zero output
_SAMPLES = 2


def check_models(original, rewritten, what, samples=_SAMPLES):
    """RuntimeError unless `rewritten` computes `original` (MAX_REL_DIFF) on `samples` random
    raw-pixel inputs in [0, 255] (32 for an unknown dimension); `what` names the rewritten
    model in the error.

    Args:
        original: keras.Model. The model before the rewrite.
        rewritten: keras.Model. The model after it.
        what: str. Names the rewritten model in the error message.
        samples: int. Batch size of the random inputs. Defaults to `2`.

    Raises:
        RuntimeError: if the outputs differ by more than `MAX_REL_DIFF` of max |output|.
    """
    rng = np.random.default_rng(0)
    inputs = [
        rng.uniform(0, 255, [samples] + [32 if d is None else d for d in t.shape[1:]]).astype(
            np.float32
        )
        for t in original.inputs
    ]
    inputs = inputs[0] if len(inputs) == 1 else inputs
    check_outputs(original(inputs, training=False), rewritten(inputs, training=False), what)


def check_outputs(expected, actual, what, max_rel_diff=MAX_REL_DIFF):
    """RuntimeError unless `actual` equals `expected` (nested outputs) within `max_rel_diff` of
    max |expected|; returns that relative difference.

    Args:
        expected: tensor, array or nested structure of them. The reference outputs.
        actual: the same structure. The outputs to check.
        what: str. Names what computed `actual` in the error message.
        max_rel_diff: float. The largest allowed max |actual - expected| / max |expected|.
            Defaults to `MAX_REL_DIFF` (1e-5).

    Returns:
        The relative difference, a float.

    Raises:
        RuntimeError: if the relative difference exceeds `max_rel_diff` (or is NaN).
    """
    expected = [
        np.asarray(keras.ops.convert_to_numpy(t), np.float64) for t in keras.tree.flatten(expected)
    ]
    actual = [
        np.asarray(keras.ops.convert_to_numpy(t), np.float64) for t in keras.tree.flatten(actual)
    ]
    diff = max(float(np.max(np.abs(a - e), initial=0.0)) for e, a in zip(expected, actual))
    scale = max(float(np.max(np.abs(e), initial=0.0)) for e in expected)
    rel = diff / max(scale, _FLOOR)
    if not rel <= max_rel_diff:
        raise RuntimeError(
            f"the {what} disagrees with the original: max abs diff {diff:.3g}, "
            f"{rel:.3g} of max |output| > {max_rel_diff:g}"
        )
    return rel
