"""effkeras: efficient image classifiers in Keras 3, deployed to edge hardware."""

__version__ = "0.1.0"
