"""The deploy target registry: names -> `Target`s. It imports nothing else of deploy.

A target module (lce, tflite, tflm, ethos_u) registers its targets with `register_target` when
it is imported; `names()` and `get()` import them on first use (by name, so that the registry
stays below them and `import effkeras.deploy` stays light).
"""

import dataclasses
import importlib
import re
from typing import Callable

from effkeras.errors import InputError


@dataclasses.dataclass(frozen=True)
class Target:
    name: str
    convert: Callable
    description: str
    quantizes: bool = False  # takes calibration images (int8, tflm, ethos-u*)


TARGETS: dict = {}


def register_target(name, description, *, quantizes=False):
    """Decorator registering `fn(model, *, calibration=None, **options) -> (bytes, Report)`;
    `quantizes`: the target calibrates on `calibration` (others ignore it)."""

    def decorate(fn):
        if name in TARGETS:
            raise ValueError(f"deploy target {name!r} is registered twice")
        TARGETS[name] = Target(name, fn, description, quantizes)
        return fn

    return decorate


TARGET_MODULES = ("lce", "tflite", "tflm", "ethos_u")  # effkeras.deploy.<module> register targets


def _load_targets():
    for module in TARGET_MODULES:
        importlib.import_module(f"effkeras.deploy.{module}")


def names():
    """Target names, numbers in order (ethos-u55-32 before ethos-u55-128)."""
    _load_targets()
    return sorted(
        TARGETS, key=lambda name: [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]
    )


def get(name):
    _load_targets()
    if name not in TARGETS:
        raise InputError(f"unknown deploy target {name!r}; known targets: {', '.join(names())}")
    return TARGETS[name]
