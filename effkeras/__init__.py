"""effkeras: efficient image classifiers in Keras 3, deployed to edge hardware.

Importing effkeras registers every custom layer, quantizer, constraint and model with Keras (as
`import larq` does): after `import effkeras`, `keras.models.load_model("ern18.keras")` works.
"""

__version__ = "0.1.0"

# Registration happens on import; the trainer itself stays unloaded until used.
from effkeras import constraints, layers, models, quantizers, saving  # noqa: E402
from effkeras.training import distillation  # noqa: E402,F401  (registers the Distiller)
from effkeras.training import transfer  # noqa: E402,F401  (registers FeatureTransfer)
from effkeras.deploy.passes import w1a2  # noqa: E402,F401  (registers PlaneConv2D)
from effkeras import quantization  # noqa: E402  (registers the QAT layers)
from effkeras import interop  # noqa: E402,F401  (registers the layers larq imports become)

__all__ = ["constraints", "layers", "models", "quantization", "quantizers", "saving"]
