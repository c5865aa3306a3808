"""Per-layer and total parameters by precision, memory and MACs (larq's summary, for Keras 3).

One shared MAC counter for every layer type. Precision comes from the quantizers a layer carries:
a layer whose input and kernel are both 1-bit does binary MACs; anything else counts as float.
The totals of `as_dict` and the table's footer add NN-Mass and non-linear units per image
(effkeras.nn_mass).
"""

import dataclasses
import math

import keras

from effkeras.graph import FLOAT_BITS, layer_precision, leaf_layers
from effkeras.nn_mass import model_mass, nonlinear_units


@dataclasses.dataclass
class LayerStats:
    name: str
    kind: str
    output_shape: tuple
    params: dict  # bits -> count
    macs: int
    input_bits: int = FLOAT_BITS
    kernel_bits: int = FLOAT_BITS

    @property
    def binary(self):
        """1-bit x 1-bit MACs: what LCE's bconv runs."""
        return self.input_bits == 1 and self.kernel_bits == 1

    @property
    def low_bit(self):
        """Quantized but not binary MACs, e.g. ERN's w1a2."""
        return not self.binary and min(self.input_bits, self.kernel_bits) < FLOAT_BITS

    @property
    def memory_bytes(self):
        return sum(count * bits / 8 for bits, count in self.params.items())


def _spatial(shape):
    return math.prod(d for d in shape[1:-1])


def layer_macs(layer):
    """Multiply-accumulates of one call (batch 1). Pooling counts one op per window element."""
    L = keras.layers
    out = layer.output.shape
    if isinstance(layer, L.SeparableConv2D):
        kh, kw = layer.kernel_size
        cin = layer.input.shape[-1]
        return _spatial(out) * (kh * kw * cin * layer.depth_multiplier
                                + cin * layer.depth_multiplier * layer.filters)
    if isinstance(layer, L.DepthwiseConv2D):
        kh, kw = layer.kernel_size
        return _spatial(out) * out[-1] * kh * kw
    if isinstance(layer, L.Conv2D):
        kh, kw = layer.kernel_size
        cin = layer.input.shape[-1] // layer.groups
        return _spatial(out) * out[-1] * kh * kw * cin
    if isinstance(layer, L.Dense):
        return math.prod(out[1:-1]) * layer.input.shape[-1] * layer.units
    if isinstance(layer, (L.MaxPooling2D, L.AveragePooling2D)):
        ph, pw = layer.pool_size
        return _spatial(out) * out[-1] * ph * pw
    if isinstance(layer, (L.GlobalAveragePooling2D, L.GlobalMaxPooling2D)):
        return _spatial(layer.input.shape) * layer.input.shape[-1]
    return 0


def layer_params(layer):
    """Parameter counts by bits: quantized kernels at their bit width, everything else 32-bit."""
    _, kernel_bits = layer_precision(layer)
    kernels = [w for w in (getattr(layer, "kernel", None), getattr(layer, "depthwise_kernel", None),
                           getattr(layer, "pointwise_kernel", None)) if w is not None]
    quantized = {id(w) for w in kernels} if kernel_bits < FLOAT_BITS else set()
    params = {}
    for weight in layer.weights:
        bits = kernel_bits if id(weight) in quantized else FLOAT_BITS
        params[bits] = params.get(bits, 0) + math.prod(weight.shape)
    return params


def summarize(model):
    """LayerStats for every leaf layer of `model`."""
    rows = []
    for layer in leaf_layers(model):
        input_bits, kernel_bits = layer_precision(layer)
        rows.append(LayerStats(layer.name, type(layer).__name__, tuple(layer.output.shape),
                               layer_params(layer), layer_macs(layer), input_bits, kernel_bits))
    return rows


def totals(rows):
    params = {}
    for row in rows:
        for bits, count in row.params.items():
            params[bits] = params.get(bits, 0) + count
    binary_macs = sum(row.macs for row in rows if row.binary)
    low_bit_macs = sum(row.macs for row in rows if row.low_bit)
    float_macs = sum(row.macs for row in rows) - binary_macs - low_bit_macs
    macs = binary_macs + low_bit_macs + float_macs
    return {
        "params": {f"{bits}bit": count for bits, count in sorted(params.items())},
        "total_params": sum(params.values()),
        "memory_bytes": sum(row.memory_bytes for row in rows),
        "binary_macs": binary_macs,
        "low_bit_macs": low_bit_macs,
        "float_macs": float_macs,
        "binarized_mac_ratio": binary_macs / macs if macs else 0.0,
    }


def as_dict(model):
    rows = summarize(model)
    return {
        "model": model.name,
        "input_shape": list(model.input_shape[1:]),
        "layers": [{"name": r.name, "kind": r.kind, "input_bits": r.input_bits,
                    "output_shape": list(r.output_shape[1:]),
                    "params": {f"{b}bit": c for b, c in sorted(r.params.items())},
                    "kernel_bits": r.kernel_bits, "memory_bytes": r.memory_bytes, "macs": r.macs,
                    "binary": r.binary, "low_bit": r.low_bit}
                   for r in rows],
        "totals": {**totals(rows), **topology(model)},
    }


def topology(model):
    """NN-Mass (None where not defined: effkeras.nn_mass) and non-linear units per image."""
    return {"nn_mass": model_mass(model), "nonlinear_units": nonlinear_units(model)}


def _format_mass(mass):
    if mass is None:
        return "n/a"
    return f"{mass:,}" if isinstance(mass, int) else f"{mass:,.1f}"


def format_table(model):
    rows = summarize(model)
    bit_widths = sorted({bits for row in rows for bits in row.params}) or [FLOAT_BITS]
    header = ["Layer", "Type", "Input bits", "Output", *[f"{b}-bit params" for b in bit_widths],
              "Memory kB", "Binary MACs", "Low-bit MACs", "Float MACs"]
    table = [header]
    for r in rows:
        table.append([r.name, r.kind, str(r.input_bits), "x".join(str(d) for d in r.output_shape[1:]),
                      *[f"{r.params.get(b, 0):,}" for b in bit_widths], f"{r.memory_bytes / 1024:.2f}",
                      *[f"{r.macs:,}" if kind else "0"
                        for kind in (r.binary, r.low_bit, not (r.binary or r.low_bit))]])
    t = totals(rows)
    topo = topology(model)
    macs = t["binary_macs"] + t["low_bit_macs"] + t["float_macs"]
    table.append(["Total", "", "", "", *[f"{t['params'].get(f'{b}bit', 0):,}" for b in bit_widths],
                  f"{t['memory_bytes'] / 1024:.2f}", f"{t['binary_macs']:,}", f"{t['low_bit_macs']:,}",
                  f"{t['float_macs']:,}"])
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in table]
    lines.insert(1, "-" * len(lines[0]))
    lines.insert(len(lines) - 1, "-" * len(lines[0]))
    lines.append(f"Model: {model.name}  parameters: {t['total_params']:,}  "
                 f"memory: {t['memory_bytes'] / 1024:.2f} kB  "
                 f"binarized MACs: {100 * t['binarized_mac_ratio']:.1f}%  "
                 f"low-bit MACs: {100 * t['low_bit_macs'] / max(1, macs):.1f}%  "
                 f"NN-Mass: {_format_mass(topo['nn_mass'])}  "
                 f"non-linear units/image: {topo['nonlinear_units']:,}")
    return "\n".join(lines)
