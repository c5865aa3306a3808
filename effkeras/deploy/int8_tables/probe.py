"""Step 1 of the exact int8 tables: the probe model the converter calibrates (package
docstring)."""

import re

import keras
import numpy as np
from keras import ops

from effkeras.errors import InputError
from effkeras.graph.rewrite import check_models, rewrite
from effkeras.layers.activations import LerpTable

MAX_CODE_STEP = 8.0  # grid segments between adjacent int8 input codes (package docstring)
CODES = 256
PROBE = "effkeras_int8_probe_{}x"
_PROBE_SCOPE = re.compile(r"(?:^|/)effkeras_int8_probe_(\d+)x(?:_\d+)?/")


# --- 1. calibrate: the probe model ------------------------------------------------------------


class _Probe(keras.layers.Layer):
    """A LerpTable's function for the int8 converter: f(x) = T0 + s0·t + Σ_k κ_k·ReLU(t - k),
    t = A·x + B in grid units (A = a·(G-1)/(2R), B = (b + R)·(G-1)/(2R)), written as
    x·(s0·A) + (T0 + s0·B) + Σ_k κ_k·ReLU(A·x + B - k): x is read by two MULs (module
    docstring, step 1)."""

    def __init__(self, table, **kwargs):
        super().__init__(dtype="float32", **kwargs)
        size, grid_range = table.grid_size, table.grid_range
        unit = (size - 1) / (2 * grid_range)
        values = _numpy(table.values)
        scale = _numpy(table.input_scale) * unit
        offset = (_numpy(table.input_offset) + grid_range) * unit
        slopes = values[:, 1:] - values[:, :-1]
        self.scale = scale.astype(np.float32)
        self.shift = (offset[:, None] - np.arange(1, size - 1)).astype(np.float32)
        self.kinks = (slopes[:, 1:] - slopes[:, :-1]).astype(np.float32)
        self.linear = (slopes[:, 0] * scale).astype(np.float32)
        self.constant = (values[:, 0] + slopes[:, 0] * offset).astype(np.float32)

    def call(self, x):
        ramps = ops.relu(ops.expand_dims(x * self.scale, -1) + self.shift)
        return x * self.linear + self.constant + ops.sum(ramps * self.kinks, axis=-1)

    def compute_output_shape(self, input_shape):
        return input_shape


def probe_model(model):
    """(copy of `model` with a _Probe for each gather LerpTable call, {probe name: LerpTable}),
    checked to compute `model`."""
    taken = [layer.name for layer in model.layers if _PROBE_SCOPE.search(layer.name + "/")]
    if taken:
        raise InputError(
            f"layer names of the form {PROBE.format('<n>')} are reserved for the "
            f"int8 table export; rename {', '.join(taken)}"
        )
    probes = {}

    def replace(layer, x, graph):
        if isinstance(layer, LerpTable) and layer.form == "gather":
            name = PROBE.format(len(probes))
            probes[name] = layer
            return _Probe(layer, name=name)(x)
        return None

    probed = rewrite(model, replace)
    check_models(
        model,
        probed,
        "model with int8 calibration probes for "
        + ", ".join(layer.name for layer in probes.values()),
    )
    return probed, probes


def _numpy(variable):
    return np.asarray(ops.convert_to_numpy(variable), np.float64)


def gather_tables(model):
    """The top-level gather-form LerpTable layers of `model` (the int8 target writes those)."""
    return [
        layer
        for layer in getattr(model, "layers", [])
        if isinstance(layer, LerpTable) and layer.form == "gather"
    ]
