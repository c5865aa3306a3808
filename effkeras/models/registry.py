"""One registry: every model is known by one name (plus aliases) in every app."""

import dataclasses
from typing import Callable

from effkeras.errors import InputError


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    name: str
    builder: Callable
    family: str
    paper: str
    input_shape: tuple  # default (H, W, C)
    num_classes: int  # default
    recipe: str  # key into effkeras.training.recipes
    deploy: str  # default deploy target: "arm" (LCE), "float", "int8", "tflm", "ethos-u55-128", ...
    min_input_size: int  # smallest H and W the architecture accepts (its total stride)
    channels: tuple = (1, 3)  # input channel counts the model accepts
    # Builder kwargs that shrink the model for the shared test harness (same blocks, fewer
    # channels, and fewer repeats where conversion time would grow with depth), e.g.
    # {"dims": (16, 32, 64, 128)}; empty: the model is small already.
    small: dict = dataclasses.field(default_factory=dict)


_MODELS: dict = {}
_ALIASES: dict = {}


def register(name, *, family, paper, input_shape, num_classes, recipe, deploy,
             min_input_size, channels=(1, 3), aliases=(), small=None):
    """Decorator: registers a builder `fn(input_shape, num_classes, **kwargs) -> keras.Model`."""

    def decorate(builder):
        if name in _MODELS or name in _ALIASES:
            raise ValueError(f"model name {name!r} is registered twice")
        _MODELS[name] = ModelInfo(name, builder, family, paper, tuple(input_shape), num_classes,
                                  recipe, deploy, min_input_size, tuple(channels),
                                  dict(small or {}))
        for alias in aliases:
            _ALIASES[alias] = name
        return builder

    return decorate


def names():
    return sorted(_MODELS)


def info(name):
    name = _ALIASES.get(name, name)
    if name not in _MODELS:
        raise InputError(f"unknown model {name!r}; known models: {', '.join(names())}")
    return _MODELS[name]


def check_input_shape(model_info, input_shape):
    """Raises InputError unless `input_shape` is (H, W, C) that the model can take."""
    shape = tuple(input_shape)
    if len(shape) != 3 or not all(isinstance(d, int) and d > 0 for d in shape):
        raise InputError(f"input shape {shape} is not (height, width, channels) of positive ints")
    height, width, channels = shape
    if min(height, width) < model_info.min_input_size:
        raise InputError(
            f"{model_info.name} needs height and width >= {model_info.min_input_size} "
            f"(its total stride), got {height}x{width}")
    if channels not in model_info.channels:
        raise InputError(f"{model_info.name} takes {model_info.channels} input channels, "
                         f"got {channels}")
    return shape


def get(name, input_shape=None, num_classes=None, **kwargs):
    """Builds registered model `name` (defaults from its metadata) as a functional keras.Model."""
    model_info = info(name)
    shape = check_input_shape(model_info, input_shape or model_info.input_shape)
    classes = model_info.num_classes if num_classes is None else num_classes
    if not isinstance(classes, int) or classes < 2:
        raise InputError(f"num_classes must be an int >= 2, got {classes!r}")
    return model_info.builder(input_shape=shape, num_classes=classes, **kwargs)
