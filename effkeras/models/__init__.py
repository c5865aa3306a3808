"""Model registry. Importing this package registers every model family."""

from effkeras.models import (  # noqa: F401  (registers models)  # noqa: F401  (peers)  # noqa: F401  (Larq Zoo's binary peers)
    birealnet,
    convnext,  # noqa: F401  (RAN-i and its ConvNeXt peers)
    efficientnet_lite,
    ern,
    mlperf_tiny,
    mobilenet,
    quicknet,
    ranet,  # noqa: F401  (early exits)
    rans,
    recu,
    resmlp,  # noqa: F401  (LERP-PSA and its ResMLP)
    resnet,
)
from effkeras.models.registry import ModelInfo, check_input_shape, get, info, names, register
from effkeras.saving import load_model as load_checkpoint  # the loader under its old name

__all__ = ["ModelInfo", "check_input_shape", "get", "info", "load_checkpoint", "names", "register"]
