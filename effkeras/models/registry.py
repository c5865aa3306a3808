"""One registry: every model is known by one name (plus aliases) in every app."""

import dataclasses
from typing import Callable

from effkeras.errors import InputError


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """What the registry knows about one model: its builder and its defaults.

    Attributes:
        name: str. The registered name (aliases resolve to it).
        builder: callable. `builder(input_shape, num_classes, **kwargs)` returns a functional
            `keras.Model`.
        family: str. The model family, e.g. `"recu"`, `"ern"`, `"rans"`, `"ranet"`.
        paper: str. The paper the architecture follows.
        input_shape: tuple. The default `(height, width, channels)`.
        num_classes: int. The default number of classes.
        recipe: str. The key into `effkeras.training.recipes`.
        deploy: str. The default deploy target: `"arm"` (LCE), `"float"`, `"int8"`, `"tflm"`,
            `"ethos-u55-128"`, ...
        min_input_size: int. The smallest height and width the architecture accepts (its total
            stride).
        channels: tuple. The input channel counts the model accepts. Defaults to `(1, 3)`.
        small: dict. Builder kwargs that shrink the model for the shared test harness; empty when
            the model is small already.
    """

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


def register(
    name,
    *,
    family,
    paper,
    input_shape,
    num_classes,
    recipe,
    deploy,
    min_input_size,
    channels=(1, 3),
    aliases=(),
    small=None,
):
    """Returns a decorator that registers a model builder under `name`.

    The decorated builder is called as `fn(input_shape, num_classes, **kwargs)` and returns a
    functional `keras.Model`; the decorator returns the builder unchanged.

    Args:
        name: str. The model's registered name.
        family: str. The model family (e.g. `"recu"`, `"ern"`, `"rans"`, `"ranet"`).
        paper: str. The paper the architecture follows.
        input_shape: tuple of 3 ints. The default `(height, width, channels)`.
        num_classes: int. The default number of classes.
        recipe: str. The key into `effkeras.training.recipes`.
        deploy: str. The default deploy target (`"arm"`, `"float"`, `"int8"`, `"tflm"`,
            `"ethos-u55-128"`, ...).
        min_input_size: int. The smallest height and width the model accepts (its total stride).
        channels: tuple of ints. The input channel counts the model accepts. Defaults to
            `(1, 3)`.
        aliases: iterable of str. Other names that resolve to `name`. Defaults to none.
        small: dict or None. Builder kwargs that shrink the model for the shared test harness.
            Defaults to `None` (the model is small already).

    Returns:
        A decorator `decorate(builder) -> builder`.

    Raises:
        ValueError: when the decorator runs and `name` is already registered as a name or an
            alias.
    """

    def decorate(builder):
        if name in _MODELS or name in _ALIASES:
            raise ValueError(f"model name {name!r} is registered twice")
        _MODELS[name] = ModelInfo(
            name,
            builder,
            family,
            paper,
            tuple(input_shape),
            num_classes,
            recipe,
            deploy,
            min_input_size,
            tuple(channels),
            dict(small or {}),
        )
        for alias in aliases:
            _ALIASES[alias] = name
        return builder

    return decorate


def names():
    """Returns the sorted list of registered model names (aliases excluded)."""
    return sorted(_MODELS)


def info(name):
    """Returns the `ModelInfo` of a registered model.

    Args:
        name: str. A registered model name or one of its aliases.

    Returns:
        The model's `ModelInfo`.

    Raises:
        InputError: if `name` is neither a registered name nor an alias; the message lists the
            known models.
    """
    name = _ALIASES.get(name, name)
    if name not in _MODELS:
        raise InputError(f"unknown model {name!r}; known models: {', '.join(names())}")
    return _MODELS[name]


def check_input_shape(model_info, input_shape):
    """Checks that a model can take an input shape.

    Args:
        model_info: ModelInfo. The model, as returned by `info()`.
        input_shape: sequence of 3 ints. The `(height, width, channels)` to check.

    Returns:
        `input_shape` as a tuple.

    Raises:
        InputError: unless `input_shape` is three positive ints, its height and width are at
            least `model_info.min_input_size` (the model's total stride), and its channel count
            is one of `model_info.channels`.
    """
    shape = tuple(input_shape)
    if len(shape) != 3 or not all(isinstance(d, int) and d > 0 for d in shape):
        raise InputError(f"input shape {shape} is not (height, width, channels) of positive ints")
    height, width, channels = shape
    if min(height, width) < model_info.min_input_size:
        raise InputError(
            f"{model_info.name} needs height and width >= {model_info.min_input_size} "
            f"(its total stride), got {height}x{width}"
        )
    if channels not in model_info.channels:
        raise InputError(
            f"{model_info.name} takes {model_info.channels} input channels, got {channels}"
        )
    return shape


def get(name, input_shape=None, num_classes=None, **kwargs):
    """Builds a registered model as a functional `keras.Model`.

    Example:

    ```python
    model = effkeras.models.get("recu_resnet18", input_shape=(32, 32, 3), num_classes=10)
    ```

    Args:
        name: str. A registered model name or alias (see `names()`).
        input_shape: tuple of 3 ints or None. `(height, width, channels)`. Defaults to `None`:
            the model's registered default shape.
        num_classes: int or None. Number of classes, at least 2. Defaults to `None`: the model's
            registered default.
        **kwargs: passed on to the model's builder (its config options).

    Returns:
        A functional `keras.Model` built by the registered builder.

    Raises:
        InputError: if `name` is unknown, `input_shape` does not fit the model (see
            `check_input_shape`), or `num_classes` is not an int >= 2.
    """
    model_info = info(name)
    shape = check_input_shape(model_info, input_shape or model_info.input_shape)
    classes = model_info.num_classes if num_classes is None else num_classes
    if not isinstance(classes, int) or classes < 2:
        raise InputError(f"num_classes must be an int >= 2, got {classes!r}")
    return model_info.builder(input_shape=shape, num_classes=classes, **kwargs)
