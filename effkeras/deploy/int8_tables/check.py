"""Step 4 of the int8 tables: each table's ops alone, on every code, in LiteRT and TFLite Micro
(package docstring)."""

import dataclasses
import functools
import re

import numpy as np
from tensorflow.lite.python import schema_py_generated as schema

from effkeras.deploy import runtime
from effkeras.deploy.flatbuffer import add_buffer, add_operator, add_tensor, pack_model, read_model
from effkeras.deploy.int8_tables.probe import CODES
from effkeras.deploy.int8_tables.write import TABLE65, _builtin, lerp65, table_for

# --- 4. check: each table's ops alone in LiteRT and TFLite Micro --------------------------------

# Tensors the table writers name "<layer>/int8_table/..." (256 entries) or ".../int8_table65/...".
_TABLE_TENSOR = re.compile(r"^(.*)/int8_table(65)?/")


@dataclasses.dataclass(frozen=True)
class TableOp:
    """The ops of one int8 table in a file: CAST -> ADD -> GATHER (256 entries per channel), or
    the 18 ops of the interpolated 65-entry form (write.lerp65)."""

    name: str  # the LerpTable layer's name
    subgraph: int
    channels: int
    entries: int  # per channel: 256 or 65
    x_quantization: tuple  # (scale, zero point)
    y_quantization: tuple
    offsets: np.ndarray  # (C,) int32, added to a code's table row
    lut: np.ndarray  # (C·entries,) int8, as stored
    operators: tuple  # OperatorT, in order


def table_ops(flatbuffer):
    """Every table of `flatbuffer` (written by insert_tables), in op order."""
    model = read_model(flatbuffer)
    found = []
    for s, subgraph in enumerate(model.subgraphs):
        regions = {}  # (layer name, entries) -> ops reading or writing its tensors
        for op in subgraph.operators:
            for t in [*op.inputs, *op.outputs]:
                match = _TABLE_TENSOR.match(subgraph.tensors[int(t)].name.decode()) if t >= 0 else 0
                if match:
                    key = (match[1], TABLE65 if match[2] else CODES)
                    regions.setdefault(key, []).append(op)
                    break
        for (name, entries), ops in regions.items():
            tensors = {
                subgraph.tensors[int(t)].name.decode(): subgraph.tensors[int(t)]
                for op in ops
                for t in op.inputs
                if t >= 0
            }
            prefix = f"{name}/int8_table{'65' if entries == TABLE65 else ''}/"
            table, offsets = tensors[prefix + "table"], tensors[prefix + "offsets"]
            x = subgraph.tensors[int(ops[0].inputs[0])]
            y = subgraph.tensors[int(ops[-1].outputs[0])]
            offsets = np.frombuffer(bytes(model.buffers[offsets.buffer].data), "<i4")
            found.append(
                TableOp(
                    name,
                    s,
                    len(offsets),
                    entries,
                    (float(x.quantization.scale[0]), int(x.quantization.zeroPoint[0])),
                    (float(y.quantization.scale[0]), int(y.quantization.zeroPoint[0])),
                    offsets,
                    np.frombuffer(bytes(model.buffers[table.buffer].data), np.int8),
                    tuple(ops),
                )
            )
    return found


def all_codes(channels):
    """(1, 256, C) int8: every code, in every channel."""
    codes = np.arange(-128, 128, dtype=np.int8)
    return np.repeat(codes[None, :, None], channels, axis=2)


def single_op_file(flatbuffer, table):
    """A flatbuffer with just `table`'s ops and their constants: input (1, 256, C) int8 with X's
    quantization, output Y's (every computed tensor takes that shape)."""
    source = read_model(flatbuffer)
    subgraph = source.subgraphs[table.subgraph]
    model = schema.ModelT()
    model.version, model.description = 3, b"effkeras int8 table check"
    model.buffers = [schema.BufferT()]
    model.operatorCodes = []
    graph = schema.SubGraphT()
    graph.tensors, graph.name = [], b"table"
    shape = [1, CODES, table.channels]
    names = {}

    def copy(index):
        index = int(index)
        if index not in names:
            tensor = subgraph.tensors[index]
            data = source.buffers[tensor.buffer].data
            constant = data is not None and len(data) > 0
            names[index] = add_tensor(
                graph,
                tensor.name.decode(),
                tensor.shape if constant else shape,
                tensor.type,
                add_buffer(model, bytes(data)) if constant else 0,
                tensor.quantization,
            )
        return names[index]

    graph.operators = [
        add_operator(
            model,
            (_builtin(source, op), source.operatorCodes[op.opcodeIndex].version),
            [copy(t) for t in op.inputs],
            [copy(t) for t in op.outputs],
            op.builtinOptionsType,
            op.builtinOptions,
        )
        for op in table.operators
    ]
    graph.inputs = [copy(table.operators[0].inputs[0])]
    graph.outputs = [copy(table.operators[-1].outputs[0])]
    model.subgraphs = [graph]
    return pack_model(model)


def check_tables(flatbuffer, layers):
    """The TableOps of `flatbuffer`, each checked: its stored table is the table of
    `layers[name]` (a LerpTable) on the file's own input and output quantization, and its ops,
    run alone on all 256 codes of every channel in LiteRT and in TFLite Micro, give exactly the
    lookup (256 entries) or the integer reference lerp65 (65 entries). RuntimeError otherwise.

    Returns:
        (the TableOps, the largest difference of a 65-entry table's output from the exact
        256-entry table's, in output steps; None without 65-entry tables).
    """
    tables = table_ops(flatbuffer)
    names = sorted({table.name for table in tables})
    if names != sorted(layers):
        raise RuntimeError(f"the int8 file has tables for {names}, expected {sorted(layers)}")
    worst = None
    for table in tables:
        layer = layers[table.name]
        quantizations = (table.x_quantization, table.y_quantization)
        expected = table_for(layer, *quantizations, max_code_step=np.inf, entries=table.entries)
        codes = all_codes(table.channels)
        rows = np.arange(table.channels) * table.entries
        if table.entries == TABLE65:
            wanted = lerp65(codes, expected)
            exact = table_for(layer, *quantizations, max_code_step=np.inf).T[None]
            error = int(np.abs(wanted.astype(int) - exact).max())
            worst = max(worst or 0, error)
        else:
            wanted = expected.T[None]  # (1, 256, C): code q of channel c -> LUT[c, q + 128]
            rows = rows + 128
        stored = table.lut.reshape(table.channels, table.entries)
        if not np.array_equal(stored, expected) or not np.array_equal(table.offsets, rows):
            raise RuntimeError(
                f"the int8 table of {table.name} in the file differs from the table of its function"
            )
        single = single_op_file(flatbuffer, table)
        # An arena for every tensor of the ops at once (at most int32, 256 codes x C each).
        arena = (len(table.operators) + 1) * 4 * codes.size + (64 << 10)
        for what, runner in (
            ("LiteRT", runtime.LiteRT),
            ("TFLite Micro", functools.partial(runtime.TFLiteMicro, arena_size=arena)),
        ):
            (got,) = runner(single).run_one([codes[0]])
            got = np.asarray(got)[None]
            if got.dtype != np.int8 or not np.array_equal(got, wanted):
                wrong = int(np.sum(got != wanted)) if got.shape == wanted.shape else "all"
                raise RuntimeError(
                    f"the int8 table ops of {table.name} in {what} differ from "
                    f"its table on {wrong} of {wanted.size} codes x channels"
                )
    return tables, worst
