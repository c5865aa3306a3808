"""Steps 2 and 3 of the exact int8 tables: find each probe in the int8 file and write its table
in its place (package docstring)."""

import re

import numpy as np
from tensorflow.lite.python import schema_py_generated as schema

from effkeras.deploy.flatbuffer import (
    add_buffer,
    add_operator,
    add_tensor,
    builtin_code,
    compact,
    pack_model,
    quantization_params,
    read_model,
)
from effkeras.deploy.int8_tables.probe import (
    _PROBE_SCOPE,
    CODES,
    MAX_CODE_STEP,
    PROBE,
    _numpy,
    gather_tables,
)
from effkeras.errors import InputError
from effkeras.graph.rewrite import copy_call, rewrite
from effkeras.layers.activations import LerpTable

_CAST = (schema.BuiltinOperator.CAST, 3)  # int8 -> int32
_ADD = (schema.BuiltinOperator.ADD, 1)  # int32
_GATHER = (schema.BuiltinOperator.GATHER, 2)  # int8 params
_MUL = (schema.BuiltinOperator.MUL, 1)  # int32
_SUB = (schema.BuiltinOperator.SUB, 1)  # int32

# The interpolated form: 65 entries per channel, every 4th input code and code 128 (one past
# the int8 range), read between neighbours with the code's 2 low bits (LERP-PSA, Singh &
# Bazargan, ACM TRETS 18(2), 2025: the FPGA's 64(+1)-entry LUT, int8 option B of the spec).
TABLE65 = 65
ENTRIES = (CODES, TABLE65)
# Its constants, the same in every file: code + 128 -> its 4-code step and the 2 low bits (TFLite
# Micro has no int32 FLOOR_DIV nor int32 GATHER, so both come from int8 tables), and the
# rounded shift floor(v / 4) for v = 4·T0 + (T1 - T0)·lo + 2 in [-510, 510], index v + 512.
_STEP = (np.arange(CODES) // 4).astype(np.int8)
_LOW_BITS = (np.arange(CODES) % 4).astype(np.int8)
_SHIFT_OFFSET = 512
_SHIFT = np.floor_divide(np.arange(-_SHIFT_OFFSET, _SHIFT_OFFSET), 4).astype(np.int8)


def lerp65(codes, table):
    """The integer reference of the 65-entry form: int8 `codes` (..., C) through the (C, 65) int8
    `table`: u = code + 128, T0 = table[c, u // 4], T1 = table[c, u // 4 + 1], and
    y = T0 + floor(((T1 - T0)·(u mod 4) + 2) / 4), the rounded shift of the spec (halves round
    up). y lies between T0 and T1, so it is an int8 code without clipping."""
    u = np.asarray(codes, np.int64) + 128
    channel = np.arange(table.shape[0])
    t0 = table[channel, u // 4].astype(np.int64)
    t1 = table[channel, u // 4 + 1].astype(np.int64)
    return (t0 + np.floor_divide((t1 - t0) * (u % 4) + 2, 4)).astype(np.int8)


# --- 2. and 3. find the probes in the int8 file and write the tables ----------------------------


def insert_tables(flatbuffer, probes, max_code_step=MAX_CODE_STEP, entries=CODES):
    """`flatbuffer` (int8, converted from a probe model) with each probe's ops replaced by its
    int8 table (package docstring): the exact 256-entry one, or with `entries`=65 the
    interpolated one (lerp65)."""
    if entries not in ENTRIES:
        raise InputError(f"an int8 table has 256 or 65 entries per channel, not {entries!r}")
    model = read_model(flatbuffer)
    shared = {}  # the 65-entry form's constants: one buffer each per file
    if any(getattr(b, "offset", 0) for b in model.buffers):
        raise InputError(
            "the int8 file keeps its weights outside the flatbuffer (over 2 GB); "
            "the int8 table rewrite needs them inside"
        )
    found = set()
    for subgraph in model.subgraphs:
        regions = _with_dequantize(
            model, subgraph, _with_output_ops(model, subgraph, _regions(subgraph, probes))
        )
        replaced = {}  # first op index of a region -> its new ops
        dropped = set()
        for name, region in regions.items():
            layer = probes[name]
            x, y = _boundary(model, subgraph, region, layer)
            lut = table_for(
                layer,
                _quantization(subgraph, x, layer, "input"),
                _quantization(subgraph, y, layer, "output"),
                max_code_step,
                entries,
            )
            replaced[min(region)] = (
                _table_ops(model, subgraph, layer, x, y, lut)
                if entries == CODES
                else _table65_ops(model, subgraph, layer, x, y, lut, shared)
            )
            dropped |= set(region)
            subgraph.tensors[y].name = re.sub(
                r"effkeras_int8_probe_\d+x(?:_\d+)?", layer.name, subgraph.tensors[y].name.decode()
            ).encode()
            found.add(name)
        operators = []
        for index, op in enumerate(subgraph.operators):
            operators.extend(replaced.get(index, []))
            if index not in dropped:
                operators.append(op)
        subgraph.operators = operators
    missing = [probes[name].name for name in probes if name not in found]
    if missing:
        raise RuntimeError(
            f"the int8 converter left no ops named after the calibration probes "
            f"of {', '.join(missing)}: cannot tell where their int8 tables go"
        )
    compact(model)
    return pack_model(model)


def _owners(subgraph, op):
    """(probe names, other names) in the names of `op`'s outputs (';'-joined fused names;
    empty, numeric and converter-made 'tfl.*' parts name nothing)."""
    probes, others = set(), set()
    for index in op.outputs:
        for part in subgraph.tensors[index].name.decode().split(";"):
            if not part or part.isdigit() or part.startswith("tfl."):
                continue
            match = _PROBE_SCOPE.search(part)
            if match:
                probes.add(PROBE.format(match.group(1)))
            else:
                others.add(part)
    return probes, others


def _regions(subgraph, probes):
    """{probe name: [op indices]} of the probes in `subgraph`; InputError where the converter
    fused a probe's op with another layer's."""
    regions = {}
    for index, op in enumerate(subgraph.operators):
        names, others = _owners(subgraph, op)
        if not names:
            continue
        unknown = names - set(probes)
        if unknown or len(names) > 1 or others:
            what = ", ".join(sorted(probes[n].name if n in probes else n for n in names))
            raise InputError(
                f"the int8 converter merged an op of {what} with "
                f"{', '.join(sorted(others)) or 'another table'} "
                f"(tensor {subgraph.tensors[op.outputs[0]].name.decode()!r}): "
                f"cannot tell where its int8 table starts and ends"
            )
        regions.setdefault(names.pop(), []).append(index)
    return regions


def _with_output_ops(model, subgraph, regions):
    """`regions` with the op of a probe that writes a model output (or the int8 tensor that a
    DEQUANTIZE makes the float model output): the converter names that tensor after the
    signature ("StatefulPartitionedCall:0"), not after the probe. It joins a
    probe's ops when it reads two or more tensors they make and nothing else from outside: the
    probe's last op adds its two branches, while a layer after the probe reads one tensor."""
    outputs = set(subgraph.outputs)
    for op in subgraph.operators:  # io="float": int8 output -> DEQUANTIZE -> model output
        if _builtin(model, op) == schema.BuiltinOperator.DEQUANTIZE and set(op.outputs) <= set(
            subgraph.outputs
        ):
            outputs |= {t for t in op.inputs if t >= 0}
    claimed = {i for region in regions.values() for i in region}
    for index, op in enumerate(subgraph.operators):
        if index in claimed or not set(op.outputs) <= outputs:
            continue
        read = {t for t in op.inputs if t >= 0 and not _constant(model, subgraph, t)}
        for region in regions.values():
            made = {t for i in region for t in subgraph.operators[i].outputs}
            if len(read & made) >= 2 and read <= made:
                region.append(index)
    return regions


def _with_dequantize(model, subgraph, regions):
    """`regions` with the DEQUANTIZE in front of a probe that computes in float (a QAT model:
    the converter runs the table's ops in float between its two quantization points), so that
    the region reads the int8 X itself."""
    producer = {t: i for i, op in enumerate(subgraph.operators) for t in op.outputs}
    for region in regions.values():
        made = {t for i in region for t in subgraph.operators[i].outputs}
        for i in list(region):
            for t in subgraph.operators[i].inputs:
                j = producer.get(t)
                if (
                    t in made
                    or j is None
                    or j in region
                    or _builtin(model, subgraph.operators[j]) != schema.BuiltinOperator.DEQUANTIZE
                ):
                    continue
                readers = [k for k, op in enumerate(subgraph.operators) if t in op.inputs]
                if set(readers) <= set(region):
                    region.append(j)
    return regions


def named_probes(model):
    """(copy of `model` with each gather LerpTable renamed as a probe, {probe name:
    LerpTable}): for a QAT model, whose tables the converter leaves in float between their
    quantization points; insert_tables then writes them as int8 tables. (model, {}) when it
    has none."""
    if not gather_tables(model):
        return model, {}
    probes = {}

    def replace(layer, x, graph):
        if isinstance(layer, LerpTable) and layer.form == "gather":
            name = PROBE.format(len(probes))
            probes[name] = layer
            return copy_call(layer, x, name=name)
        return None

    return rewrite(model, replace), probes


def _boundary(model, subgraph, region, layer):
    """(X, Y) tensor indices of a probe's ops: the one non-constant tensor they read from
    outside, and the one they give to an op outside (or as a subgraph output)."""
    inside = set(region)
    made = {t for i in region for t in subgraph.operators[i].outputs}
    inputs = {
        t
        for i in region
        for t in subgraph.operators[i].inputs
        if t >= 0 and t not in made and not _constant(model, subgraph, t)
    }
    read_outside = {
        t
        for i, op in enumerate(subgraph.operators)
        if i not in inside
        for t in op.inputs
        if t in made
    } | (made & set(subgraph.outputs))
    if len(inputs) != 1 or len(read_outside) != 1:
        raise InputError(
            f"the int8 converter split {layer.name} into ops with {len(inputs)} input(s) and "
            f"{len(read_outside)} output(s) (expected 1 and 1: its input and its output): "
            f"cannot tell which tensors its int8 table reads and writes"
        )
    (x,), (y,) = inputs, read_outside
    shape_x, shape_y = (tuple(subgraph.tensors[t].shape) for t in (x, y))
    if shape_x != shape_y or not shape_x or shape_x[-1] != layer.channels:
        raise InputError(
            f"{layer.name}'s input {shape_x} and output {shape_y} in the int8 file "
            f"are not both (..., {layer.channels}): cannot write its int8 table"
        )
    return x, y


def _constant(model, subgraph, index):
    data = model.buffers[subgraph.tensors[index].buffer].data
    return data is not None and len(data) > 0


def _quantization(subgraph, index, layer, role):
    """(scale, zero point) of an int8 tensor with exactly one of each; InputError otherwise."""
    tensor = subgraph.tensors[index]
    q = tensor.quantization
    scale = [] if q is None or q.scale is None else [float(v) for v in q.scale]
    zero = [] if q is None or q.zeroPoint is None else [int(v) for v in q.zeroPoint]
    if tensor.type != schema.TensorType.INT8 or len(scale) != 1 or len(zero) != 1:
        raise InputError(
            f"the int8 table of {layer.name} is ambiguous: its {role} {tensor.name.decode()!r} "
            f"is not an int8 tensor with one scale and one zero point ({len(scale)} scale(s), "
            f"{len(zero)} zero point(s)), so an int8 code does not name one {role} value"
        )
    if not (np.isfinite(scale[0]) and scale[0] > 0 and -128 <= zero[0] <= 127):
        raise InputError(
            f"the int8 table of {layer.name} is ambiguous: its {role} has scale "
            f"{scale[0]} and zero point {zero[0]}"
        )
    return scale[0], zero[0]


def table_for(layer, x_quantization, y_quantization, max_code_step=MAX_CODE_STEP, entries=CODES):
    """The (C, 256) int8 table of `layer` between input and output quantizations (scale, zero
    point) (package docstring), or with `entries`=65 the same rule at codes -128, -124, ...,
    128 (lerp65); InputError when the input codes are too far apart."""
    (s_x, z_x), (s_y, z_y) = x_quantization, y_quantization
    codes = np.arange(-128, 129, 4) if entries == TABLE65 else np.arange(-128, 128)
    codes = codes.astype(np.float64)
    x = np.broadcast_to(((codes - z_x) * s_x)[:, None], (len(codes), layer.channels))
    unit = (layer.grid_size - 1) / (2 * layer.grid_range)
    scale, offset = _numpy(layer.input_scale), _numpy(layer.input_offset)
    step = s_x * np.abs(scale) * unit  # grid segments between adjacent codes, per channel
    t = (x[[0, -1]] * scale + offset + layer.grid_range) * unit  # first and last code
    reaches = (t.max(axis=0) >= 1) & (t.min(axis=0) <= layer.grid_size - 2)  # inner knots
    coarse = np.flatnonzero(reaches & (step > max_code_step))
    if coarse.size:
        c = int(coarse[np.argmax(step[coarse])])
        raise InputError(
            f"the int8 table of {layer.name} is ambiguous: its input's int8 step "
            f"({s_x:.4g}, scale {scale[c]:.4g} folded in) spans {step[c]:.2f} grid segments of "
            f"2R/(G-1) = {1 / unit:.4g} on channel {c} ({coarse.size} channel(s) over "
            f"max_code_step={max_code_step:g}), so only about "
            f"{int((layer.grid_size - 1) / step[c])} input codes read its "
            f"{layer.grid_size}-point table and the learned function between them is lost. "
            f"Calibrate on the training data (a narrower input range), deploy with "
            f"lerp_form='relu_sum' or a float target, or accept it with "
            f"max_code_step={np.ceil(step.max()):g} (apps.convert "
            f"--max_code_step={np.ceil(step.max()):g})"
        )
    y = layer.function(x) / s_y
    rounded = np.sign(y) * np.floor(np.abs(y) + 0.5)  # half away from zero, as TFLite rounds
    return np.clip(rounded + z_y, -128, 127).astype(np.int8).T.copy()


def _table_ops(model, subgraph, layer, x, y, lut):
    """The CAST, ADD and GATHER ops (new tensors added to `subgraph`) computing Y = LUT[X]."""
    channels = layer.channels
    shape = list(subgraph.tensors[x].shape)
    prefix = f"{layer.name}/int8_table"
    code = add_tensor(subgraph, f"{prefix}/code", shape, schema.TensorType.INT32)
    offsets = add_tensor(
        subgraph,
        f"{prefix}/offsets",
        [channels],
        schema.TensorType.INT32,
        add_buffer(
            model, (np.arange(channels, dtype=np.int32) * CODES + 128).astype("<i4").tobytes()
        ),
    )
    index = add_tensor(subgraph, f"{prefix}/index", shape, schema.TensorType.INT32)
    out_q = subgraph.tensors[y].quantization
    table = add_tensor(
        subgraph,
        f"{prefix}/table",
        [channels * CODES],
        schema.TensorType.INT8,
        add_buffer(model, lut.tobytes()),
        quantization_params(out_q.scale[0], out_q.zeroPoint[0]),
    )
    add_options = schema.AddOptionsT()
    add_options.potScaleInt16 = True
    gather_options = schema.GatherOptionsT()
    gather_options.axis, gather_options.batchDims = 0, 0
    return [
        add_operator(model, _CAST, [x], [code]),
        add_operator(
            model, _ADD, [code, offsets], [index], schema.BuiltinOptions.AddOptions, add_options
        ),
        add_operator(
            model, _GATHER, [table, index], [y], schema.BuiltinOptions.GatherOptions, gather_options
        ),
    ]


def _table65_ops(model, subgraph, layer, x, y, lut, shared):
    """The 18 int32/int8 builtin ops computing Y = lerp65(X, LUT) (new tensors in `subgraph`,
    constants of the form in `shared` buffers)."""
    channels = layer.channels
    shape = list(subgraph.tensors[x].shape)
    prefix = f"{layer.name}/int8_table65"
    int8, int32 = schema.TensorType.INT8, schema.TensorType.INT32

    def constant(name, array, quantization=None, own=False):
        """A constant tensor of the form: one buffer per file, and one tensor per subgraph
        that every table reads (named without a layer), unless it is the table's `own` or
        carries its output `quantization`."""
        own = own or quantization is not None
        buffer = ("buffer", name, array.tobytes())
        if buffer not in shared:
            shared[buffer] = add_buffer(model, array.tobytes())
        tensor = ("tensor", id(subgraph), *buffer[1:])
        if not own and tensor in shared:
            return shared[tensor]
        index = add_tensor(
            subgraph,
            f"{prefix if own else 'int8_table65'}/{name}",
            list(array.shape),
            int8 if array.dtype == np.int8 else int32,
            shared[buffer],
            quantization,
        )
        if not own:
            shared[tensor] = index
        return index

    def tensor(name, kind=int32):
        return add_tensor(subgraph, f"{prefix}/{name}", shape, kind)

    def scalar(value):
        return np.array([value], "<i4")

    ops = []

    def op(code, inputs, name, kind=int32, options=None, output=None):
        """Appends an op writing a new tensor `name` (or the existing `output`); returns it."""
        output = tensor(name, kind) if output is None else output
        option_type = {
            _ADD: schema.BuiltinOptions.AddOptions,
            _SUB: schema.BuiltinOptions.SubOptions,
            _MUL: schema.BuiltinOptions.MulOptions,
            _GATHER: schema.BuiltinOptions.GatherOptions,
        }.get(code, 0)
        ops.append(add_operator(model, code, inputs, [output], option_type, options))
        return output

    gather_options = schema.GatherOptionsT()
    gather_options.axis, gather_options.batchDims = 0, 0
    add, sub, mul = schema.AddOptionsT(), schema.SubOptionsT(), schema.MulOptionsT()

    def gather(params, index, name, output=None):
        return op(_GATHER, [params, index], name, int8, gather_options, output)

    def to_int32(tensor_index, name):
        return op(_CAST, [tensor_index], name)

    out_q = subgraph.tensors[y].quantization
    y_quantization = quantization_params(out_q.scale[0], out_q.zeroPoint[0])
    table = add_tensor(
        subgraph,
        f"{prefix}/table",
        [channels * TABLE65],
        int8,
        add_buffer(model, lut.tobytes()),
        y_quantization,
    )
    u = op(_ADD, [to_int32(x, "code"), constant("code_offset", scalar(128))], "u", options=add)
    step = to_int32(gather(constant("step", _STEP), u, "step8"), "step")
    low = to_int32(gather(constant("low_bits", _LOW_BITS), u, "low_bits8"), "low_bits")
    offsets = (np.arange(channels) * TABLE65).astype("<i4")
    i0 = op(_ADD, [step, constant("offsets", offsets, own=True)], "index0", options=add)
    i1 = op(_ADD, [i0, constant("one", scalar(1))], "index1", options=add)
    t0 = to_int32(gather(table, i0, "t0_8"), "t0")
    t1 = to_int32(gather(table, i1, "t1_8"), "t1")
    w0 = op(_SUB, [constant("four", scalar(4)), low], "weight0", options=sub)
    a = op(_MUL, [t0, w0], "t0_weighted", options=mul)
    b = op(_MUL, [t1, low], "t1_weighted", options=mul)
    s = op(_ADD, [a, b], "sum", options=add)
    v = op(
        _ADD, [s, constant("shift_offset", scalar(_SHIFT_OFFSET + 2))], "shift_index", options=add
    )
    gather(constant("shift", _SHIFT, y_quantization), v, "y", output=y)
    return ops


def _builtin(model, op):
    return builtin_code(model.operatorCodes[op.opcodeIndex])
