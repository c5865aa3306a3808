from effkeras.training import recipes
from effkeras.training.trainer import TrainConfig, train

__all__ = ["TrainConfig", "recipes", "train"]
