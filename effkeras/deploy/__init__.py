"""Deployment: one entry point, `convert(model, target, *, calibration=None, **options)`.

    registry.py  the target registry (Target, register_target, names, get); imports no deploy
    api.py       convert, default_target, save (+ the app-facing JSON)
    flatbuffer.py  reads and writes .tflite files: operators, op census, io tensors,
                 signatures, metadata, one signature's subgraph alone, atomic save
    report.py    the Report dataclasses of every target (and of early-exit files)
    verify.py    the one verifier: the sample, agreement with Keras, the model's sensitivity
    runtime.py   runs .tflite files: LiteRT, TFLite Micro, LCE's interpreter
    app_file.py  the file an app embeds: probabilities, uint8 pixels, TFLite Metadata
    early_exit/  multi-exit models: the stage split, the file's description, Runner, convert
    int8_tables.py  exact int8 LERP tables written into the converted int8 file, checked
    lce.py       target arm: Larq Compute Engine (binary and w1a2 nets) for ARM CPUs
    tflite.py    targets float, float16, int8: TFLite builtins for LiteRT
    tflm.py      target tflm: int8 in TFLite Micro, arena bytes, C array
    ethos_u.py   targets ethos-u55-*, ethos-u65-*, ethos-u85-*: int8 compiled by Vela

The target modules (they import TensorFlow's and LCE's converters) load when a target is first
asked for, so that `import effkeras` (which registers the passes' layers) stays light.
"""

from effkeras.deploy.api import (
    app_info,
    app_metadata,
    convert,
    default_target,
    save,
)
from effkeras.deploy.app_file import with_metadata
from effkeras.deploy.registry import TARGETS, Target, get, names, register_target

__all__ = [
    "TARGETS",
    "Target",
    "app_info",
    "app_metadata",
    "convert",
    "default_target",
    "get",
    "names",
    "register_target",
    "save",
    "with_metadata",
]
