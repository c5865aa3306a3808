"""effkeras: efficient image classifiers in Keras 3, deployed to edge hardware.

Importing effkeras registers every custom layer, quantizer, constraint and model with Keras (as
`import larq` does): after `import effkeras`, `effkeras.saving.load_model("ern18.keras")` (or
`keras.models.load_model(path, compile=False)`) loads any model apps.train saved.
Deployment (`effkeras.deploy`), training (`effkeras.training`) and the rest load when imported.
What a run compiles and checkpoints beyond the model (its losses, e.g. label smoothing; the
distilling wrappers Distiller, FeatureTransfer) registers with `import effkeras.training`, which
the trainer does before it resumes.
"""

__version__ = "0.1.0"

from effkeras import constraints, layers, models, quantizers, saving  # noqa: E402

__all__ = ["constraints", "layers", "models", "quantizers", "saving"]
