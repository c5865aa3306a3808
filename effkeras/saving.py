"""The one loader of saved models, for the apps, the trainer and distillation.

`import effkeras` registers every custom object, so a `.keras` file of any effkeras model loads
here (or with plain `keras.models.load_model` after `import effkeras`).
"""

import os

import keras

from effkeras.errors import InputError


def load_model(path):
    """Loads the Keras model saved at `path` (a .keras file).

    Args:
        path: str. Path of a `.keras` model file.

    Returns:
        The loaded `keras.Model`.

    Raises:
        InputError: saying why it cannot be loaded: `path` is empty or not a file, or Keras
            cannot load it as a model (the first line of Keras' error).
    """
    if not path or not os.path.isfile(path):
        raise InputError(f"checkpoint {path!r} is not a file; give a .keras model file")
    try:
        return keras.models.load_model(path)
    except Exception as e:  # Keras raises many types for a bad file; all mean "not a model"
        first_line = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise InputError(f"cannot load {path} as a Keras model: {first_line}") from None
