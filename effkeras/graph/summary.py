"""Per-layer and total parameters by precision, memory and MACs (larq's summary, for Keras 3).

One shared MAC counter for every layer type. Precision comes from the quantizers a layer carries:
a layer whose input and kernel are both 1-bit does binary MACs; anything else counts as float.
The totals of `as_dict` and the table's footer add NN-Mass and non-linear units per image
(effkeras.graph.nn_mass). A model with several outputs (early exits) also gets, per exit, what it
needs from the input on: parameters and operations (cumulative, as early-exit papers plot them)
and the MACs of its stage alone (`exit_costs`).
"""

import dataclasses
import math

import keras

from effkeras.graph import FLOAT_BITS, layer_precision, leaf_layers
from effkeras.graph.nn_mass import NONLINEAR_LAYERS, model_mass, nonlinear_units


@dataclasses.dataclass
class LayerStats:
    """One leaf layer's row of the summary.

    Attributes:
        name: str. The layer name.
        kind: str. The layer's class name.
        output_shape: tuple. The output shape, batch dimension first.
        params: dict. Parameter count by bit width (`{bits: count}`).
        macs: int. Multiply-accumulates of one call (batch 1), as `layer_macs`.
        input_bits: int. Bit width of the layer's input. Defaults to 32 (float).
        kernel_bits: int. Bit width of its kernel. Defaults to 32 (float).
    """

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
        """Bytes of the layer's parameters at their bit widths."""
        return sum(count * bits / 8 for bits, count in self.params.items())


def _spatial(shape):
    return math.prod(d for d in shape[1:-1])


def layer_macs(layer):
    """Counts the multiply-accumulates of one call (batch 1) of a layer.

    Convs (separable, depthwise, grouped), Dense, pooling (one op per window element) and
    global pooling count; any other layer counts 0.

    Args:
        layer: keras.layers.Layer. A built layer of a functional model (it has `output`).

    Returns:
        The MAC count, an int.
    """
    L = keras.layers
    out = layer.output.shape
    if isinstance(layer, L.SeparableConv2D):
        kh, kw = layer.kernel_size
        cin = layer.input.shape[-1]
        return _spatial(out) * (
            kh * kw * cin * layer.depth_multiplier + cin * layer.depth_multiplier * layer.filters
        )
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
    """Counts a layer's parameters by bit width.

    Quantized kernels count at their bit width, everything else (biases, BN, latent weights
    of float layers) at 32 bits.

    Args:
        layer: keras.layers.Layer. A built layer.

    Returns:
        A dict `{bits: count}`.
    """
    _, kernel_bits = layer_precision(layer)
    kernels = [
        w
        for w in (
            getattr(layer, "kernel", None),
            getattr(layer, "depthwise_kernel", None),
            getattr(layer, "pointwise_kernel", None),
        )
        if w is not None
    ]
    quantized = {id(w) for w in kernels} if kernel_bits < FLOAT_BITS else set()
    params = {}
    for weight in layer.weights:
        bits = kernel_bits if id(weight) in quantized else FLOAT_BITS
        params[bits] = params.get(bits, 0) + math.prod(weight.shape)
    return params


def trainable_params(layer):
    """Counts the trainable parameters of a layer or model: what PyTorch code counts (BN's
    moving statistics left out).

    Args:
        layer: keras.layers.Layer or keras.Model.

    Returns:
        The count, an int.
    """
    return sum(math.prod(w.shape) for w in layer.trainable_weights)


def summarize(model):
    """Returns a `LayerStats` for every leaf layer of `model` (nested models walked into).

    Args:
        model: keras.Model. A built functional model.

    Returns:
        A list of `LayerStats`, in layer order.
    """
    rows = []
    for layer in leaf_layers(model):
        input_bits, kernel_bits = layer_precision(layer)
        rows.append(
            LayerStats(
                layer.name,
                type(layer).__name__,
                tuple(layer.output.shape),
                layer_params(layer),
                layer_macs(layer),
                input_bits,
                kernel_bits,
            )
        )
    return rows


def totals(rows):
    """Adds up `summarize` rows.

    Args:
        rows: list of `LayerStats`.

    Returns:
        A dict with `params` (`{"{bits}bit": count}`), `total_params`, `memory_bytes`,
        `binary_macs`, `low_bit_macs`, `float_macs` and `binarized_mac_ratio` (binary MACs
        over all MACs, 0.0 for none).
    """
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
    """Returns the whole summary of `model` as a JSON-ready dict.

    Args:
        model: keras.Model. A built functional model.

    Returns:
        A dict with `model` (name), `input_shape`, `layers` (one dict per leaf layer: name,
        kind, bits, output shape, params, memory, MACs, binary, low_bit), `totals` (`totals`
        plus `topology`) and, for a model with several outputs, `exits` (`exit_costs`).
    """
    rows = summarize(model)
    return {
        "model": model.name,
        "input_shape": list(model.input_shape[1:]),
        "layers": [
            {
                "name": r.name,
                "kind": r.kind,
                "input_bits": r.input_bits,
                "output_shape": list(r.output_shape[1:]),
                "params": {f"{b}bit": c for b, c in sorted(r.params.items())},
                "kernel_bits": r.kernel_bits,
                "memory_bytes": r.memory_bytes,
                "macs": r.macs,
                "binary": r.binary,
                "low_bit": r.low_bit,
            }
            for r in rows
        ],
        "totals": {**totals(rows), **topology(model)},
        **({"exits": exit_costs(model)} if _several_outputs(model) else {}),
    }


def topology(model):
    """Returns NN-Mass and the non-linear units per image of `model`.

    Args:
        model: keras.Model. A built functional model.

    Returns:
        A dict with `nn_mass` (None where not defined: effkeras.graph.nn_mass) and
        `nonlinear_units` (an int).
    """
    return {"nn_mass": model_mass(model), "nonlinear_units": nonlinear_units(model)}


def _format_mass(mass):
    if mass is None:
        return "n/a"
    return f"{mass:,}" if isinstance(mass, int) else f"{mass:,.1f}"


def format_table(model):
    """Formats the summary of `model` as larq's text table.

    One row per leaf layer (input bits, output shape, parameters by bit width, memory, binary,
    low-bit and float MACs), a total row and a footer line with the parameters, memory,
    binarized and low-bit MAC shares, NN-Mass and non-linear units; a model with several
    outputs gets the per-exit table after it.

    Args:
        model: keras.Model. A built functional model.

    Returns:
        The table, a multi-line str.
    """
    rows = summarize(model)
    bit_widths = sorted({bits for row in rows for bits in row.params}) or [FLOAT_BITS]
    header = [
        "Layer",
        "Type",
        "Input bits",
        "Output",
        *[f"{b}-bit params" for b in bit_widths],
        "Memory kB",
        "Binary MACs",
        "Low-bit MACs",
        "Float MACs",
    ]
    table = [header]
    for r in rows:
        table.append(
            [
                r.name,
                r.kind,
                str(r.input_bits),
                "x".join(str(d) for d in r.output_shape[1:]),
                *[f"{r.params.get(b, 0):,}" for b in bit_widths],
                f"{r.memory_bytes / 1024:.2f}",
                *[
                    f"{r.macs:,}" if kind else "0"
                    for kind in (r.binary, r.low_bit, not (r.binary or r.low_bit))
                ],
            ]
        )
    t = totals(rows)
    topo = topology(model)
    macs = t["binary_macs"] + t["low_bit_macs"] + t["float_macs"]
    table.append(
        [
            "Total",
            "",
            "",
            "",
            *[f"{t['params'].get(f'{b}bit', 0):,}" for b in bit_widths],
            f"{t['memory_bytes'] / 1024:.2f}",
            f"{t['binary_macs']:,}",
            f"{t['low_bit_macs']:,}",
            f"{t['float_macs']:,}",
        ]
    )
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in table]
    lines.insert(1, "-" * len(lines[0]))
    lines.insert(len(lines) - 1, "-" * len(lines[0]))
    lines.append(
        f"Model: {model.name}  parameters: {t['total_params']:,}  "
        f"memory: {t['memory_bytes'] / 1024:.2f} kB  "
        f"binarized MACs: {100 * t['binarized_mac_ratio']:.1f}%  "
        f"low-bit MACs: {100 * t['low_bit_macs'] / max(1, macs):.1f}%  "
        f"NN-Mass: {_format_mass(topo['nn_mass'])}  "
        f"non-linear units/image: {topo['nonlinear_units']:,}"
    )
    if _several_outputs(model):
        lines.extend(["", _format_exits(exit_costs(model))])
    return "\n".join(lines)


# --- early exits ----------------------------------------------------------------------------------


def layer_flops(layer):
    """Operations of one call (batch 1) as the op counter of MSDNet and RANet counts them (RANet,
    arXiv 2003.07326, reports its exits' "MUL-ADD" so): `layer_macs` (convs, linear layers,
    pooling), plus one per element of a ReLU (or other non-linear activation) and one per bias
    of a linear layer; BN, concatenation and resizing count nothing, nor do conv biases.

    Args:
        layer: keras.layers.Layer. A built layer of a functional model.

    Returns:
        The operation count, an int.
    """
    flops = layer_macs(layer)
    activation = getattr(layer, "activation", None)
    if isinstance(layer, NONLINEAR_LAYERS) or (
        callable(activation) and getattr(activation, "__name__", "") != "linear"
    ):
        flops += math.prod(layer.output.shape[1:])
    if isinstance(layer, keras.layers.Dense) and layer.use_bias:
        flops += math.prod(layer.output.shape[1:])
    return flops


def _several_outputs(model):
    return len(getattr(model, "outputs", None) or ()) > 1


def _leaves(operation):
    if isinstance(operation, keras.Model):
        return list(leaf_layers(operation))
    return [operation] if isinstance(operation, keras.layers.Layer) else []


def _needed_layers(tensor):
    """The leaf layers computing `tensor` from the model's inputs (nested models walked into)."""
    operation, node_index, _ = tensor._keras_history
    stack, seen, found = [operation._inbound_nodes[node_index]], set(), {}
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        for layer in _leaves(node.operation):
            found[id(layer)] = layer
        stack.extend(node.parent_nodes)
    return found


def exit_costs(model):
    """Per output of `model`, in output order, what running it up to that output costs: for an
    early-exit network, exit k's stage holds the layers its output needs that no earlier exit
    needed (exit 1's: the initial layers too).

    params, trainable_params: weights needed up to this exit (cumulative; the trainable ones
    are what PyTorch code counts, without BN's moving statistics);
    flops: operations up to and including this exit's classifier (cumulative), counted as
    `layer_flops`: the x axis of early-exit papers' accuracy-vs-cost plots;
    stage_macs: MACs (`layer_macs`) of this exit's stage alone.

    Args:
        model: keras.Model. A built functional model, one or more outputs.

    Returns:
        A list of dicts, one per output: `output` (its name, or `exit{k}`), `params`,
        `trainable_params`, `flops` and `stage_macs`, all ints.
    """
    rows, done = [], {}
    params = trainable = flops = 0
    names = list(getattr(model, "output_names", None) or [])
    for k, tensor in enumerate(model.outputs):
        stage = {key: layer for key, layer in _needed_layers(tensor).items() if key not in done}
        done.update(stage)
        params += sum(sum(layer_params(layer).values()) for layer in stage.values())
        trainable += sum(trainable_params(layer) for layer in stage.values())
        flops += sum(layer_flops(layer) for layer in stage.values())
        rows.append(
            {
                "output": names[k] if len(names) == len(model.outputs) else f"exit{k + 1}",
                "params": params,
                "trainable_params": trainable,
                "flops": flops,
                "stage_macs": sum(layer_macs(layer) for layer in stage.values()),
            }
        )
    return rows


def _format_exits(exits):
    header = ["Exit", "Params (cum.)", "Trainable (cum.)", "FLOPs (cum.)", "Stage MACs"]
    table = [header] + [
        [
            e["output"],
            f"{e['params']:,}",
            f"{e['trainable_params']:,}",
            f"{e['flops']:,}",
            f"{e['stage_macs']:,}",
        ]
        for e in exits
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines = [
        "  ".join(
            cell.ljust(w) if i == 0 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths))
        )
        for row in table
    ]
    lines.insert(1, "-" * len(lines[0]))
    lines.append(
        "FLOPs: operations up to and including each exit, as early-exit papers count "
        "them (MACs of convs and linear layers,\n"
        "one per ReLU element and linear bias); stage MACs: the layers each exit adds."
    )
    return "\n".join(lines)
