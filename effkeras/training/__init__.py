from effkeras.training import losses, recipes


def __getattr__(name):
    """The trainer (and its data pipelines) loads on first use: `import effkeras` imports
    `training.distillation` to register the Distiller, not the trainer."""
    if name in ("TrainConfig", "train"):
        from effkeras.training import trainer

        return getattr(trainer, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = ["TrainConfig", "losses", "recipes", "train"]
