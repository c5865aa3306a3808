"""Model registry. Importing this package registers every model family."""

import os

from effkeras.errors import InputError
from effkeras.models.registry import ModelInfo, check_input_shape, get, info, names, register
from effkeras.models import ern, recu, resnet  # noqa: F401  (registers models)

__all__ = ["ModelInfo", "check_input_shape", "get", "info", "load_checkpoint", "names", "register"]


def load_checkpoint(path):
    """A saved .keras model, or InputError saying why it cannot be loaded."""
    import keras

    import effkeras.layers  # noqa: F401  (registers the custom layers a checkpoint names)
    from effkeras.training import distillation  # noqa: F401  (and the Distiller)

    if not path or not os.path.isfile(path):
        raise InputError(f"checkpoint {path!r} is not a file; give a .keras model file")
    try:
        return keras.models.load_model(path)
    except Exception as e:  # Keras raises many types for a bad file; all mean "not a model"
        first_line = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise InputError(f"cannot load {path} as a Keras model: {first_line}") from None
