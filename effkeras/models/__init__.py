"""Model registry. Importing this package registers every model family."""

from effkeras.models.registry import ModelInfo, check_input_shape, get, info, names, register
from effkeras.models import resnet  # noqa: F401  (registers models)

__all__ = ["ModelInfo", "check_input_shape", "get", "info", "names", "register"]
