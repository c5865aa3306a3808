"""Weights saved by Keras 2 (larq, Larq Zoo): read from `.h5` (or `.npz`) files without running
anything from them, and set on an imported model in layer order, every shape checked first."""

import os

import numpy as np

from effkeras.errors import InputError


def read_h5_weights(path):
    """Reads tf_keras' HDF5 weights file (model.save_weights('x.h5')).

    Args:
        path: str. The `.h5` file.

    Returns:
        A dict `{layer name: [numpy arrays]}`, in the file's layer order.

    Raises:
        InputError: if the file has no tf_keras layer list.
        OSError: from h5py, if the file cannot be opened as HDF5.
    """
    import h5py

    with h5py.File(path, "r") as f:
        if "layer_names" not in f.attrs:
            raise InputError(
                f"{path} is not a tf_keras HDF5 weights file; save it with "
                f"model.save_weights('model.h5') or "
                f"np.savez(path, *model.get_weights())."
            )
        names = [n.decode() if isinstance(n, bytes) else n for n in f.attrs["layer_names"]]
        weights = {}
        for name in names:
            group = f[name]
            weight_names = [
                n.decode() if isinstance(n, bytes) else n for n in group.attrs["weight_names"]
            ]
            weights[name] = [np.asarray(group[w]) for w in weight_names]
        return weights


def set_weights(model, weights):
    if isinstance(weights, (str, os.PathLike)):
        path = os.fspath(weights)
        if path.endswith(".h5"):
            weights = read_h5_weights(path)
        elif path.endswith(".npz"):
            with np.load(path) as archive:
                weights = [archive[f"arr_{i}"] for i in range(len(archive.files))]
        else:
            raise InputError(
                f"weights file {path!r} must be .h5 (model.save_weights) or .npz "
                f"(np.savez(path, *model.get_weights()))."
            )
    # tf_keras orders each layer's weights trainable first, then the rest, layer after layer.
    layers = [
        (layer, layer.trainable_weights + layer.non_trainable_weights) for layer in model.layers
    ]
    if not isinstance(weights, dict):
        expected = sum(len(variables) for _, variables in layers)
        if len(weights) != expected:
            raise InputError(
                f"the model has {expected} weights, got {len(weights)}: pass "
                f"model.get_weights() of the same larq model."
            )
        arrays = iter(weights)
        weights = {layer.name: [next(arrays) for _ in variables] for layer, variables in layers}
    pairs = []
    for layer, variables in layers:
        arrays = weights.get(layer.name, [])
        if len(arrays) != len(variables):
            raise InputError(
                f"layer {layer.name!r} has {len(variables)} weights, the file has "
                f"{len(arrays)} for it: is it the same model?"
            )
        pairs += zip(variables, arrays)
    for variable, array in pairs:
        if tuple(variable.shape) != np.shape(array):
            raise InputError(
                f"weight {variable.path} has shape {tuple(variable.shape)}, got "
                f"{np.shape(array)}: is it the same model?"
            )
        variable.assign(array)
