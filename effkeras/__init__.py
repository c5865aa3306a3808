"""effkeras: efficient image classifiers in Keras 3, deployed to edge hardware.

Importing effkeras registers every custom layer, quantizer, constraint and model with Keras (as
`import larq` does): after `import effkeras`, `keras.models.load_model("ern18.keras")` works.
Deployment (`effkeras.deploy`), training (`effkeras.training`) and the rest load when imported.
The training wrappers a distilling run checkpoints (Distiller, FeatureTransfer) register with
`import effkeras.training`, which the trainer does before it resumes.
"""

__version__ = "0.1.0"

from effkeras import constraints, layers, models, quantizers, saving  # noqa: E402

__all__ = ["constraints", "layers", "models", "quantizers", "saving"]
