"""Training: recipes as data, a run plan, stages (scratch, distillation, knowledge transfer, QAT,
fine-tuning) and a resumable trainer that runs them, on one device or many.

Importing it registers the training wrappers a distilling or transferring run checkpoints
(Distiller, FeatureTransfer), so those checkpoints load. The trainer (and its data pipelines)
loads on first use of `TrainConfig` or `train`.
"""

from effkeras.training import distillation, losses, recipes, transfer


def __getattr__(name):
    if name == "TrainConfig":
        from effkeras.training import config

        return config.TrainConfig
    if name == "train":
        from effkeras.training import trainer

        return trainer.train
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["TrainConfig", "distillation", "losses", "recipes", "train", "transfer"]
