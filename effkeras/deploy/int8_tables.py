"""Exact int8 tables for frozen LERP activations: 256 int8 entries per channel, one per input
code (LERP-PSA, Singh & Bazargan, ACM TRETS 18(2), 2025, DOI 10.1145/3705926: the paper's int8
LUT export, here on TFLite's own quantization).

TFLite's int8 converter cannot quantize the gather form of a `LerpTable` (FLOOR and CAST stay
float), so the int8 target writes each table into the converted file itself:

1. Calibrate. Each gather-form LerpTable is swapped for a `_Probe` named
   `effkeras_int8_probe_<i>x` that computes the same float function as a sum of ReLUs (which
   the converter quantizes fully) and reads its input X with two MULs by constants. Two
   readers keep the converter from folding the first one into the op before it (it folds a
   MUL or ADD by a constant into a single-use FULLY_CONNECTED, so X would become the lerp's
   grid position), and a MUL, unlike a RESHAPE, has a scale of its own (a RESHAPE reading X
   tied X's scale to the wide range of the grid position, a tenth of X's precision). So X and
   the probe's output Y get their int8 scale and zero point from the calibration set as in any
   int8 model.
2. Find. In the int8 file, the probe's ops are those whose output names lie in its name scope
   (and the op writing a model output, which the converter names after the signature, when it
   adds two of their tensors: `_with_output_ops`). X must be their only non-constant input from outside, Y their only output read outside; an op
   whose name mixes the probe's scope with another layer's (the converter fused across the
   boundary), a probe found nowhere, more than one X or Y, or X/Y shapes that differ: an error,
   never a guess.
3. Write. The probe's ops are replaced by CAST(X int8 -> int32), ADD(+ c·256 + 128 per channel,
   over the last axis), GATHER(table, axis 0) -> Y, with the (C·256,) int8 table
   LUT[c, q + 128] = clip(round(f_c((q - zp_X)·s_X) / s_Y) + zp_Y, -128, 127), f_c in float64
   (`LerpTable.function`), rounding half away from zero as TFLite's quantizer does, and the
   table tensor carrying Y's scale and zero point.
4. Check. Every table op is cut out into a file of its own (input (1, 256, C): every code in
   every channel) and run in LiteRT and TFLite Micro: both must give exactly the NumPy table
   lookup (`check_tables`), else RuntimeError.

When is a table ambiguous (an InputError naming the layer)? When an input code does not name one
input value: X not int8, or without exactly one scale and one zero point (per-channel or missing
quantization). And when the input codes are so far apart that the table no longer holds the
learned function: every int8 table rounds the input to its codes (the paper's FPGA tables do
too), but if adjacent codes lie more than `max_code_step` (default MAX_CODE_STEP = 8) grid
segments apart on a channel whose code range reaches the table's inner knots (the step is
s_X·|a_c|·(G-1)/(2R) segments, a_c the folded BN scale), fewer than (G-1)/8, about 8, codes
read the 64-point table: the learned shape between them is gone, and tables that differ there
give the same file. A trained ResMLP-PSA on Fashion-MNIST, calibrated on its training images,
has steps of about 2 segments (its hidden tables read Dense outputs of about ±36).
"""

import dataclasses
import re

import keras
import numpy as np
from keras import ops
from tensorflow.lite.python import schema_py_generated as schema

from effkeras.deploy import runtime
from effkeras.deploy.flatbuffer import builtin_code, pack_model, read_model
from effkeras.graph.rewrite import check_models, copy_call, rewrite
from effkeras.errors import InputError
from effkeras.layers.activations import LerpTable

MAX_CODE_STEP = 8.0  # grid segments between adjacent int8 input codes (module docstring)
CODES = 256
PROBE = "effkeras_int8_probe_{}x"
_PROBE_SCOPE = re.compile(r"(?:^|/)effkeras_int8_probe_(\d+)x(?:_\d+)?/")
# (builtin, version) as TensorFlow 2.21's converter writes these ops for these dtypes.
_CAST = (schema.BuiltinOperator.CAST, 3)  # int8 -> int32
_ADD = (schema.BuiltinOperator.ADD, 1)  # int32
_GATHER = (schema.BuiltinOperator.GATHER, 2)  # int8 params


@dataclasses.dataclass(frozen=True)
class Tables:
    """What the table rewrite did: `count` tables, `table_bytes` int8 entries (C·256 each)."""

    count: int = 0
    table_bytes: int = 0


def gather_tables(model):
    """The top-level gather-form LerpTable layers of `model` (the int8 target writes those)."""
    return [layer for layer in getattr(model, "layers", [])
            if isinstance(layer, LerpTable) and layer.form == "gather"]


def quantize(model, calibration, io, quantize_fn, max_code_step=MAX_CODE_STEP):
    """(int8 flatbuffer, Tables) of `model`, whose gather LerpTables become exact int8 tables
    (module docstring). quantize_fn(model, calibration, io) -> int8 flatbuffer: the converter."""
    if not max_code_step > 0:  # NaN too
        raise InputError(f"max_code_step must be > 0 (grid segments between adjacent int8 input "
                         f"codes), got {max_code_step}")
    probed, probes = probe_model(model)
    flatbuffer = quantize_fn(probed, calibration, io)
    flatbuffer = insert_tables(flatbuffer, probes, max_code_step)
    checked = check_tables(flatbuffer, {layer.name: layer for layer in probes.values()})
    if len(checked) != len(probes):
        raise RuntimeError(f"the int8 file has {len(checked)} tables for {len(probes)} calls of "
                           f"table layers")
    return flatbuffer, Tables(len(checked), sum(table.lut.size for table in checked))


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
        raise InputError(f"layer names of the form {PROBE.format('<n>')} are reserved for the "
                         f"int8 table export; rename {', '.join(taken)}")
    probes = {}

    def replace(layer, x, graph):
        if isinstance(layer, LerpTable) and layer.form == "gather":
            name = PROBE.format(len(probes))
            probes[name] = layer
            return _Probe(layer, name=name)(x)
        return None

    probed = rewrite(model, replace)
    check_models(model, probed, "model with int8 calibration probes for "
                 + ", ".join(layer.name for layer in probes.values()))
    return probed, probes


# --- 2. and 3. find the probes in the int8 file and write the tables ----------------------------


def insert_tables(flatbuffer, probes, max_code_step=MAX_CODE_STEP):
    """`flatbuffer` (int8, converted from a probe model) with each probe's ops replaced by its
    exact table (module docstring)."""
    model = read_model(flatbuffer)
    if any(getattr(b, "offset", 0) for b in model.buffers):
        raise InputError("the int8 file keeps its weights outside the flatbuffer (over 2 GB); "
                         "the int8 table rewrite needs them inside")
    found = set()
    for subgraph in model.subgraphs:
        regions = _with_dequantize(model, subgraph, _with_output_ops(
            model, subgraph, _regions(subgraph, probes)))
        replaced = {}  # first op index of a region -> its new ops
        dropped = set()
        for name, region in regions.items():
            layer = probes[name]
            x, y = _boundary(model, subgraph, region, layer)
            lut = table_for(layer, _quantization(subgraph, x, layer, "input"),
                            _quantization(subgraph, y, layer, "output"), max_code_step)
            replaced[min(region)] = _table_ops(model, subgraph, layer, x, y, lut)
            dropped |= set(region)
            subgraph.tensors[y].name = re.sub(r"effkeras_int8_probe_\d+x(?:_\d+)?", layer.name,
                                              subgraph.tensors[y].name.decode()).encode()
            found.add(name)
        operators = []
        for index, op in enumerate(subgraph.operators):
            operators.extend(replaced.get(index, []))
            if index not in dropped:
                operators.append(op)
        subgraph.operators = operators
    missing = [probes[name].name for name in probes if name not in found]
    if missing:
        raise RuntimeError(f"the int8 converter left no ops named after the calibration probes "
                           f"of {', '.join(missing)}: cannot tell where their int8 tables go")
    _compact(model)
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
            raise InputError(f"the int8 converter merged an op of {what} with "
                             f"{', '.join(sorted(others)) or 'another table'} "
                             f"(tensor {subgraph.tensors[op.outputs[0]].name.decode()!r}): "
                             f"cannot tell where its int8 table starts and ends")
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
        if (_builtin(model, op) == schema.BuiltinOperator.DEQUANTIZE
                and set(op.outputs) <= set(subgraph.outputs)):
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
                if t in made or j is None or j in region or _builtin(
                        model, subgraph.operators[j]) != schema.BuiltinOperator.DEQUANTIZE:
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
    inputs = {t for i in region for t in subgraph.operators[i].inputs
              if t >= 0 and t not in made and not _constant(model, subgraph, t)}
    read_outside = {t for i, op in enumerate(subgraph.operators) if i not in inside
                    for t in op.inputs if t in made} | (made & set(subgraph.outputs))
    if len(inputs) != 1 or len(read_outside) != 1:
        raise InputError(
            f"the int8 converter split {layer.name} into ops with {len(inputs)} input(s) and "
            f"{len(read_outside)} output(s) (expected 1 and 1: its input and its output): "
            f"cannot tell which tensors its int8 table reads and writes")
    (x,), (y,) = inputs, read_outside
    shape_x, shape_y = (tuple(subgraph.tensors[t].shape) for t in (x, y))
    if shape_x != shape_y or not shape_x or shape_x[-1] != layer.channels:
        raise InputError(f"{layer.name}'s input {shape_x} and output {shape_y} in the int8 file "
                         f"are not both (..., {layer.channels}): cannot write its int8 table")
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
            f"{len(zero)} zero point(s)), so an int8 code does not name one {role} value")
    if not (np.isfinite(scale[0]) and scale[0] > 0 and -128 <= zero[0] <= 127):
        raise InputError(f"the int8 table of {layer.name} is ambiguous: its {role} has scale "
                         f"{scale[0]} and zero point {zero[0]}")
    return scale[0], zero[0]


def table_for(layer, x_quantization, y_quantization, max_code_step=MAX_CODE_STEP):
    """The (C, 256) int8 table of `layer` between input and output quantizations (scale, zero
    point) (module docstring); InputError when the input codes are too far apart."""
    (s_x, z_x), (s_y, z_y) = x_quantization, y_quantization
    codes = np.arange(-128, 128, dtype=np.float64)
    x = np.broadcast_to(((codes - z_x) * s_x)[:, None], (CODES, layer.channels))
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
            f"--max_code_step={np.ceil(step.max()):g})")
    y = layer.function(x) / s_y
    rounded = np.sign(y) * np.floor(np.abs(y) + 0.5)  # half away from zero, as TFLite rounds
    return np.clip(rounded + z_y, -128, 127).astype(np.int8).T.copy()


def _table_ops(model, subgraph, layer, x, y, lut):
    """The CAST, ADD and GATHER ops (new tensors added to `subgraph`) computing Y = LUT[X]."""
    channels = layer.channels
    shape = list(subgraph.tensors[x].shape)
    prefix = f"{layer.name}/int8_table"
    code = _add_tensor(subgraph, f"{prefix}/code", shape, schema.TensorType.INT32)
    offsets = _add_tensor(subgraph, f"{prefix}/offsets", [channels], schema.TensorType.INT32,
                          _add_buffer(model, (np.arange(channels, dtype=np.int32) * CODES
                                              + 128).astype("<i4").tobytes()))
    index = _add_tensor(subgraph, f"{prefix}/index", shape, schema.TensorType.INT32)
    out_q = subgraph.tensors[y].quantization
    table = _add_tensor(subgraph, f"{prefix}/table", [channels * CODES], schema.TensorType.INT8,
                        _add_buffer(model, lut.tobytes()),
                        _quantization_params(out_q.scale[0], out_q.zeroPoint[0]))
    add_options = schema.AddOptionsT()
    add_options.potScaleInt16 = True
    gather_options = schema.GatherOptionsT()
    gather_options.axis, gather_options.batchDims = 0, 0
    return [_operator(model, _CAST, [x], [code]),
            _operator(model, _ADD, [code, offsets], [index],
                      schema.BuiltinOptions.AddOptions, add_options),
            _operator(model, _GATHER, [table, index], [y],
                      schema.BuiltinOptions.GatherOptions, gather_options)]


def _quantization_params(scale, zero_point):
    q = schema.QuantizationParametersT()
    q.scale, q.zeroPoint, q.quantizedDimension = [float(scale)], [int(zero_point)], 0
    return q


def _add_buffer(model, data):
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(data, np.uint8).copy()
    model.buffers.append(buffer)
    return len(model.buffers) - 1


def _add_tensor(subgraph, name, shape, dtype, buffer=0, quantization=None):
    tensor = schema.TensorT()
    tensor.name, tensor.shape, tensor.type, tensor.buffer = name.encode(), list(shape), dtype, buffer
    tensor.quantization = quantization
    subgraph.tensors.append(tensor)
    return len(subgraph.tensors) - 1


def _opcode(model, builtin, version):
    """Index of an operator code for `builtin` at `version` or later, added when missing."""
    for index, code in enumerate(model.operatorCodes):
        if (not code.customCode and builtin_code(code) == builtin
                and code.version >= version):
            return index
    code = schema.OperatorCodeT()
    code.builtinCode, code.deprecatedBuiltinCode = builtin, min(builtin, 127)
    code.version = version
    model.operatorCodes.append(code)
    return len(model.operatorCodes) - 1


def _operator(model, kind, inputs, outputs, options_type=0, options=None):
    op = schema.OperatorT()
    op.opcodeIndex = _opcode(model, *kind)
    op.inputs, op.outputs = list(inputs), list(outputs)
    op.builtinOptionsType, op.builtinOptions = options_type, options
    return op


def _compact(model):
    """Drops the tensors, buffers and operator codes no op, subgraph or signature uses."""
    for s, subgraph in enumerate(model.subgraphs):
        used = set(subgraph.inputs) | set(subgraph.outputs)
        for op in subgraph.operators:
            for field in (op.inputs, op.outputs, op.intermediates):
                used |= {int(t) for t in (field if field is not None else []) if t >= 0}
        keep = sorted(used)
        remap = {old: new for new, old in enumerate(keep)}
        subgraph.tensors = [subgraph.tensors[i] for i in keep]

        def moved(indices):
            return None if indices is None else [remap[int(t)] if t >= 0 else -1 for t in indices]

        for op in subgraph.operators:
            op.inputs, op.outputs = moved(op.inputs), moved(op.outputs)
            op.intermediates = moved(op.intermediates)
        subgraph.inputs, subgraph.outputs = moved(subgraph.inputs), moved(subgraph.outputs)
        for signature in model.signatureDefs or []:
            if signature.subgraphIndex == s:
                for entry in (signature.inputs or []) + (signature.outputs or []):
                    entry.tensorIndex = remap[entry.tensorIndex]
    used = {0} | {t.buffer for g in model.subgraphs for t in g.tensors}
    used |= {m.buffer for m in model.metadata or []}
    used |= {int(b) for b in (model.metadataBuffer if model.metadataBuffer is not None else [])}
    keep = sorted(used)
    remap = {old: new for new, old in enumerate(keep)}
    model.buffers = [model.buffers[i] for i in keep]
    for subgraph in model.subgraphs:
        for tensor in subgraph.tensors:
            tensor.buffer = remap[tensor.buffer]
    for entry in model.metadata or []:
        entry.buffer = remap[entry.buffer]
    if model.metadataBuffer is not None:
        model.metadataBuffer = [remap[int(b)] for b in model.metadataBuffer]
    codes = sorted({op.opcodeIndex for g in model.subgraphs for op in g.operators})
    remap = {old: new for new, old in enumerate(codes)}
    model.operatorCodes = [model.operatorCodes[i] for i in codes]
    for subgraph in model.subgraphs:
        for op in subgraph.operators:
            op.opcodeIndex = remap[op.opcodeIndex]


# --- 4. check: each table op alone in LiteRT and TFLite Micro -----------------------------------


@dataclasses.dataclass(frozen=True)
class TableOp:
    """One CAST -> ADD -> GATHER table in an int8 file."""

    name: str  # the LerpTable layer's name
    subgraph: int
    channels: int
    x_quantization: tuple  # (scale, zero point)
    y_quantization: tuple
    offsets: np.ndarray  # (C,) int32
    lut: np.ndarray  # (C·256,) int8, as stored
    operators: tuple  # (cast, add, gather) OperatorT


def table_ops(flatbuffer):
    """Every table op chain of `flatbuffer` (written by insert_tables)."""
    model = read_model(flatbuffer)
    found = []
    for s, subgraph in enumerate(model.subgraphs):
        producer = {int(t): op for op in subgraph.operators for t in op.outputs}
        for gather in subgraph.operators:
            if _builtin(model, gather) != schema.BuiltinOperator.GATHER:
                continue
            table, index = (subgraph.tensors[int(t)] for t in gather.inputs)
            name = table.name.decode()
            add = producer.get(int(gather.inputs[1]))
            if not name.endswith("/int8_table/table") or add is None:
                continue
            cast = producer.get(int(add.inputs[0]))
            x = subgraph.tensors[int(cast.inputs[0])]
            y = subgraph.tensors[int(gather.outputs[0])]
            offsets = np.frombuffer(bytes(model.buffers[subgraph.tensors[int(add.inputs[1])]
                                                       .buffer].data), "<i4")
            found.append(TableOp(
                name.removesuffix("/int8_table/table"), s, len(offsets),
                (float(x.quantization.scale[0]), int(x.quantization.zeroPoint[0])),
                (float(y.quantization.scale[0]), int(y.quantization.zeroPoint[0])),
                offsets, np.frombuffer(bytes(model.buffers[table.buffer].data), np.int8),
                (cast, add, gather)))
    return found


def _builtin(model, op):
    return builtin_code(model.operatorCodes[op.opcodeIndex])


def all_codes(channels):
    """(1, 256, C) int8: every code, in every channel."""
    codes = np.arange(-128, 128, dtype=np.int8)
    return np.repeat(codes[None, :, None], channels, axis=2)


def single_op_file(flatbuffer, table):
    """A flatbuffer with just `table`'s CAST, ADD and GATHER and its constants, input
    (1, 256, C) int8 with X's quantization, output Y's."""
    source = read_model(flatbuffer)
    subgraph = source.subgraphs[table.subgraph]
    cast, add, gather = table.operators
    model = schema.ModelT()
    model.version, model.description = 3, b"effkeras int8 table check"
    empty = schema.BufferT()
    model.buffers = [empty]
    model.operatorCodes = []
    graph = schema.SubGraphT()
    graph.tensors, graph.name = [], b"table"
    shape = [1, CODES, table.channels]
    names = {}

    def copy(index, new_shape=None):
        index = int(index)
        if index in names:
            return names[index]
        tensor = subgraph.tensors[index]
        data = source.buffers[tensor.buffer].data
        buffer = 0 if data is None or not len(data) else _add_buffer(model, bytes(data))
        quantization = tensor.quantization
        names[index] = _add_tensor(graph, tensor.name.decode(), new_shape or tensor.shape,
                                   tensor.type, buffer, quantization)
        return names[index]

    x = copy(cast.inputs[0], shape)
    code = copy(cast.outputs[0], shape)
    index = copy(add.outputs[0], shape)
    y = copy(gather.outputs[0], shape)
    graph.operators = [
        _operator(model, _CAST, [x], [code]),
        _operator(model, _ADD, [code, copy(add.inputs[1])], [index], add.builtinOptionsType,
                  add.builtinOptions),
        _operator(model, _GATHER, [copy(gather.inputs[0]), index], [y],
                  gather.builtinOptionsType, gather.builtinOptions)]
    graph.inputs, graph.outputs = [x], [y]
    model.subgraphs = [graph]
    return pack_model(model)


def check_tables(flatbuffer, layers):
    """The TableOps of `flatbuffer`, each checked: run alone on all 256 codes of every channel in
    LiteRT and in TFLite Micro, it gives exactly the table of `layers[name]` (a LerpTable) on
    the file's own input and output quantization. RuntimeError otherwise."""
    tables = table_ops(flatbuffer)
    names = sorted({table.name for table in tables})
    if names != sorted(layers):
        raise RuntimeError(f"the int8 file has tables for {names}, expected {sorted(layers)}")
    for table in tables:
        layer = layers[table.name]
        expected = table_for(layer, table.x_quantization, table.y_quantization,
                             max_code_step=np.inf)
        codes = all_codes(table.channels)
        wanted = expected.T[None]  # (1, 256, C): code q of channel c -> LUT[c, q + 128]
        stored = table.lut.reshape(table.channels, CODES)
        if not np.array_equal(stored, expected) or not np.array_equal(
                table.offsets, np.arange(table.channels) * CODES + 128):
            raise RuntimeError(f"the int8 table of {table.name} in the file differs from the "
                               f"table of its function")
        single = single_op_file(flatbuffer, table)
        for what, runner in (("LiteRT", runtime.LiteRT), ("TFLite Micro", runtime.TFLiteMicro)):
            (got,) = runner(single).run_one([codes[0]])
            got = np.asarray(got)[None]
            if got.dtype != np.int8 or not np.array_equal(got, wanted):
                wrong = int(np.sum(got != wanted)) if got.shape == wanted.shape else "all"
                raise RuntimeError(f"the int8 table op of {table.name} in {what} differs from "
                                   f"its table on {wrong} of {wanted.size} codes x channels")
    return tables


def _numpy(variable):
    return np.asarray(ops.convert_to_numpy(variable), np.float64)
