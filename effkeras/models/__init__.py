"""Model registry. Importing this package registers every model family."""

from effkeras.models.registry import ModelInfo, check_input_shape, get, info, names, register
from effkeras.saving import load_model as load_checkpoint  # the loader under its old name
from effkeras.models import ern, rans, recu, resnet  # noqa: F401  (registers models)
from effkeras.models import efficientnet_lite, mlperf_tiny, mobilenet  # noqa: F401  (peers)
from effkeras.models import convnext  # noqa: F401  (RAN-i and its ConvNeXt peers)
from effkeras.models import ranet  # noqa: F401  (early exits)
from effkeras.models import resmlp  # noqa: F401  (LERP-PSA and its ResMLP)
from effkeras.models import birealnet, quicknet  # noqa: F401  (Larq Zoo's binary peers)

__all__ = ["ModelInfo", "check_input_shape", "get", "info", "load_checkpoint", "names",
           "register"]
