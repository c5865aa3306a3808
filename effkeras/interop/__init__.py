"""Moving models in from other libraries."""

from effkeras.interop.larq import import_larq_model

__all__ = ["import_larq_model"]
