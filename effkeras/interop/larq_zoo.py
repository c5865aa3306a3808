"""Larq Zoo's pretrained ImageNet weights in effkeras' registry models (local files only).

effkeras builds QuickNet-Small/QuickNet/QuickNet-Large (`quicknet_small`, `quicknet`,
`quicknet_large`) and Bi-Real Net 18 (`birealnet18`) layer for layer as Larq Zoo 2.4 does, so
Larq Zoo's weight files load into them. Nothing is downloaded here:

1. Get the file of the model from Larq Zoo's GitHub releases (`RELEASES`; the URL is
   https://github.com/larq/zoo/releases/download/<tag>/<file>) on a machine with internet, and
   check its sha256. A machine where Larq Zoo ran already has it in
   ~/.keras/larq/models/<quicknet or birealnet>/.
2. Put it anywhere on this machine.
3. One call builds the registry model and loads it:

       from effkeras.interop import larq_zoo
       model = larq_zoo.pretrained("quicknet", "/data/quicknet_weights.h5")

   (or `larq_zoo.load_weights(model, path)` for a model built already). The model takes raw
   [0, 255] RGB pixels (it normalises them as Larq Zoo's `preprocess_input` does) and outputs
   the 1000 ImageNet logits; `effkeras.deploy.convert(model, "arm")` makes the LCE file.

The files are tf_keras `model.save_weights(...h5)` files, which list the layers in the model's
order with their arrays; layer names differ between the libraries, so weights are matched by
the order of the layers that hold weights, and every array's shape is checked before any is set.
The `_notop` files (no classifier) load with `skip_classifier=True`, which also leaves the
classifier of a model built for other classes as it is (fine-tuning).
"""

import os

import numpy as np

from effkeras import models
from effkeras.errors import InputError
from effkeras.interop.weights import max_weight_bytes, read_h5_weights

# Registry name -> (Larq Zoo release tag, weights file, its sha256 as Larq Zoo 2.4 checks it).
# The same tag holds "<file stem>_notop.h5", the weights without the classifier.
RELEASES = {
    "quicknet_small": (
        "quicknet-v1.0",
        "quicknet_small_weights.h5",
        "1ac3b07df7f5a911dd0b49febb2486428ddf1ca130297c403815dfae5a1c71a2",
    ),
    "quicknet": (
        "quicknet-v1.0",
        "quicknet_weights.h5",
        "8aba9e4e5f8d342faef04a0b2ae8e562da57dbb7d15162e8b3e091c951ba756c",
    ),
    "quicknet_large": (
        "quicknet-v1.0",
        "quicknet_large_weights.h5",
        "c5158e8a59147b31370becd937825f4db8a5cdf308314874f678f596629be45c",
    ),
    "birealnet18": (
        "birealnet-v0.3.0",
        "birealnet_weights.h5",
        "6e6efac1584fcd60dd024198c87f42eb53b5ec719a5ca1f527e1fe7e8b997117",
    ),
}
URL = "https://github.com/larq/zoo/releases/download/{tag}/{file}"


def pretrained(name, path, *, input_shape=None, skip_classifier=False, num_classes=None):
    """Builds registry model `name` with the Larq Zoo weights file at `path` loaded.

    Example:

    ```python
    model = larq_zoo.pretrained("quicknet", "/data/quicknet_weights.h5")
    ```

    Args:
        name: str. A registry name or alias with Larq Zoo weights: one of `RELEASES`.
        path: str or path. The local weights file (Larq Zoo's release file).
        input_shape: tuple of 3 ints or None. Defaults to `None`: the registry's (224x224x3).
        skip_classifier: bool. Leave the classifier as built (the file may lack it: _notop).
            Defaults to `False`.
        num_classes: int or None. Classes of the model; other than 1000 only with
            `skip_classifier`. Defaults to `None` (1000).

    Returns:
        The built `keras.Model` with the weights loaded.

    Raises:
        InputError: if Larq Zoo has no weights for `name`, `num_classes` differs from 1000
            without `skip_classifier`, the model cannot be built, or `load_weights` refuses
            the file.
    """
    info = models.info(name)
    if info.name not in RELEASES:
        raise InputError(
            f"Larq Zoo has no weights for {info.name}; it has weights for {', '.join(RELEASES)}"
        )
    if num_classes is not None and num_classes != info.num_classes and not skip_classifier:
        raise InputError(
            f"Larq Zoo's classifier has {info.num_classes} classes; pass "
            f"skip_classifier=True to build {num_classes} (a new classifier)"
        )
    model = models.get(info.name, input_shape=input_shape, num_classes=num_classes)
    return load_weights(model, path, skip_classifier=skip_classifier)


def load_weights(model, path, *, skip_classifier=False):
    """Sets `model`'s weights from Larq Zoo's weights file `path` (tf_keras save_weights .h5) of
    the same architecture; returns `model`. Raises InputError, leaving `model` as it was, when
    the file is not such a file or holds another architecture. `skip_classifier`: leave the
    last weighted layer (the Dense classifier) as it is; the file may then lack it (_notop).

    Weights are matched by the order of the layers that hold them, and every array's shape is
    checked before any is set.

    Args:
        model: keras.Model. A registry model of the file's architecture.
        path: str or path. The local weights file.
        skip_classifier: bool. Leave the classifier as it is. Defaults to `False`.

    Returns:
        `model`, with the weights set.

    Raises:
        InputError: if `path` is not a file or not a tf_keras weights file, or it holds
            another architecture (layer count or shapes), or a _notop file without
            `skip_classifier`.
    """
    path = os.fspath(path)
    expected_file = RELEASES.get(model.name, (None, "a Larq Zoo weights file"))[1]
    if not os.path.isfile(path):
        raise InputError(
            f"no weights file at {path!r}: download {expected_file} from Larq Zoo's "
            f"releases (see effkeras/interop/larq_zoo.py) and pass its local path"
        )
    try:
        saved = read_h5_weights(path, max_weight_bytes(model))
    except OSError:  # not HDF5
        raise InputError(
            f"{path} is not a tf_keras weights file (model.save_weights, .h5) as "
            f"Larq Zoo publishes them; pass Larq Zoo's {expected_file}"
        ) from None
    except InputError as error:  # HDF5, but not a complete or plausible weights file
        raise InputError(f"{error}; pass Larq Zoo's {expected_file}") from None
    theirs = [(name, arrays) for name, arrays in saved.items() if arrays]
    ours = [layer for layer in model.layers if layer.weights]
    if skip_classifier:
        ours = ours[:-1]
        if len(theirs) == len(ours) + 1:
            theirs = theirs[:-1]
    _check_same_model(model.name, path, expected_file, theirs, ours, skip_classifier)
    for (_, arrays), layer in zip(theirs, ours):
        for variable, array in zip(layer.weights, arrays):
            variable.assign(np.asarray(array, dtype=variable.dtype))
    return model


def _check_same_model(name, path, expected_file, theirs, ours, skip_classifier):
    not_it = f"{path} does not hold {name}'s weights (Larq Zoo's {expected_file})"
    if len(theirs) == len(ours) - 1 and not skip_classifier:
        raise InputError(
            f"{path} has one weighted layer fewer than {name}: a _notop file (no "
            f"classifier)? Pass skip_classifier=True to load it without one"
        )
    if len(theirs) != len(ours):
        raise InputError(
            f"{not_it}: it has {len(theirs)} layers with weights, {name} has {len(ours)}"
        )
    for index, ((their_name, arrays), layer) in enumerate(zip(theirs, ours)):
        got = [tuple(array.shape) for array in arrays]
        wanted = [tuple(variable.shape) for variable in layer.weights]
        if got == wanted:
            continue
        if index == len(ours) - 1:
            raise InputError(
                f"{path}: its classifier ({their_name}) has shapes {got}, {name}'s "
                f"{layer.name} {wanted}: build {name} with the file's classes, or "
                f"pass skip_classifier=True to leave the classifier out"
            )
        raise InputError(
            f"{not_it}: weighted layer {index + 1} ({their_name}) holds shapes "
            f"{got}, {name}'s {layer.name} needs {wanted}"
        )
