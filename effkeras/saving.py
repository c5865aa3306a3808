"""The one loader of saved models, for the apps, the trainer and distillation.

`import effkeras` registers every layer, quantizer and constraint, so a `.keras` file of any
effkeras model loads here. A file saved by `apps.train` also holds its training configuration
(loss, optimizer); loading for inference (convert, evaluate, benchmark, a teacher) skips it,
so that a loss registered by effkeras.training (label smoothing) need not be imported; resuming
a run loads it (`compile=True`, from effkeras.training, which registers its losses).
"""

import os
import zipfile

import keras

from effkeras.errors import InputError


def load_model(path, *, compile=False):
    """Loads the Keras model saved at `path` (a .keras file).

    Args:
        path: str. Path of a `.keras` model file.
        compile: bool. Also restore its loss, metrics and optimizer state (to resume training).
            Defaults to `False`: the model for inference.

    Returns:
        The loaded `keras.Model`.

    Raises:
        InputError: saying why it cannot be loaded: `path` is empty or not a file, or Keras
            cannot load it as a model (the first line of Keras' error); a truncated file is
            named as such.
    """
    if not path or not os.path.isfile(path):
        raise InputError(f"checkpoint {path!r} is not a file; give a .keras model file")
    if not str(path).endswith(".h5") and not zipfile.is_zipfile(path):  # Keras: "File not found"
        raise InputError(
            f"cannot load {path}: it is not a .keras model file (a zip archive), or it is "
            f"truncated; copy or save it again"
        )
    try:
        return keras.models.load_model(path, compile=compile)
    except Exception as e:  # Keras raises many types for a bad file; all mean "not a model"
        first_line = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise InputError(f"cannot load {path} as a Keras model: {first_line}") from None
