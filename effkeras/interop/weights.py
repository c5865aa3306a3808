"""Weights saved by Keras 2 (larq, Larq Zoo): read from `.h5` (or `.npz`) files without running
anything from them, and set on an imported model in layer order, every shape checked first."""

import os

import numpy as np

from effkeras.errors import InputError


def max_weight_bytes(model):
    """The most bytes a weights file of `model` can declare: every weight in float64, plus 1 MiB.
    Readers refuse a file declaring more before reading any array (a small file whose headers
    claim gigabytes must not take the memory)."""
    return 8 * sum(int(np.prod(v.shape)) for v in model.weights) + (1 << 20)


def _check_declared(path, declared, max_bytes):
    if max_bytes is not None and declared > max_bytes:
        raise InputError(
            f"{path} declares {declared:,} bytes of weights, more than the model's "
            f"{max_bytes:,} at most: it is not this model's weights file"
        )


def _text(name):
    return name.decode() if isinstance(name, bytes) else str(name)


def read_h5_weights(path, max_bytes=None):
    """Reads tf_keras' HDF5 weights file (model.save_weights('x.h5')), its declared sizes
    checked before any array is read.

    Args:
        path: str. The `.h5` file.
        max_bytes: the most bytes of weights to read (max_weight_bytes); None: no limit
            beyond the file's own size (tf_keras stores weights uncompressed).

    Returns:
        A dict `{layer name: [numpy arrays]}`, in the file's layer order.

    Raises:
        InputError: if the file has no tf_keras layer list, lacks a layer group or weight it
            lists, holds something other than numeric arrays, or declares more bytes than it
            holds or than `max_bytes`.
        OSError: from h5py, if the file cannot be opened as HDF5.
    """
    import h5py

    not_weights = (
        f"{path} is not a tf_keras weights file (HDF5 from model.save_weights('model.h5'), or "
        f"give np.savez(path, *model.get_weights()))"
    )
    with h5py.File(path, "r") as f:
        if "layer_names" not in f.attrs:
            raise InputError(not_weights)
        datasets = {}
        try:
            for name in map(_text, f.attrs["layer_names"]):
                group = f[name]
                datasets[name] = [group[_text(w)] for w in group.attrs["weight_names"]]
        except (KeyError, TypeError) as e:
            raise InputError(f"{not_weights} ({e})") from None
        arrays = [d for found in datasets.values() for d in found]
        if not all(isinstance(d, h5py.Dataset) and d.dtype.kind in "biuf" for d in arrays):
            raise InputError(f"{not_weights} (a weight is not a numeric array)")
        declared = sum(d.size * d.dtype.itemsize for d in arrays)
        if declared > os.path.getsize(path):
            raise InputError(
                f"{path} declares {declared:,} bytes of weights in a file of "
                f"{os.path.getsize(path):,} bytes; tf_keras stores weights uncompressed: "
                f"save the model's weights again"
            )
        _check_declared(path, declared, max_bytes)
        return {name: [np.asarray(d) for d in found] for name, found in datasets.items()}


HEADER_READERS = {1: np.lib.format.read_array_header_1_0, 2: np.lib.format.read_array_header_2_0}


def read_npz_weights(path, max_bytes=None):
    """The arrays arr_0, arr_1, ... of an np.savez file, their headers checked against
    `max_bytes` before any array is read (InputError)."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            declared = 0
            for member in archive.namelist():
                with archive.open(member) as f:
                    read_header = HEADER_READERS[np.lib.format.read_magic(f)[0]]
                    shape, _, dtype = read_header(f)
                declared += int(np.prod(shape)) * dtype.itemsize
        _check_declared(path, declared, max_bytes)
        with np.load(path, allow_pickle=False) as archive:
            return [archive[f"arr_{i}"] for i in range(len(archive.files))]
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
        raise InputError(
            f"cannot read {path} as np.savez(path, *model.get_weights()) arrays ({e})"
        ) from None


def set_weights(model, weights):
    if isinstance(weights, (str, os.PathLike)):
        path = os.fspath(weights)
        if path.endswith(".h5"):
            weights = read_h5_weights(path, max_weight_bytes(model))
        elif path.endswith(".npz"):
            weights = read_npz_weights(path, max_weight_bytes(model))
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
