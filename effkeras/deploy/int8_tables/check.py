"""Step 4 of the exact int8 tables: each table op alone, on every code, in LiteRT and TFLite Micro
(package docstring)."""

import dataclasses

import numpy as np
from tensorflow.lite.python import schema_py_generated as schema

from effkeras.deploy import runtime
from effkeras.deploy.flatbuffer import (
    add_buffer,
    add_operator,
    add_tensor,
    pack_model,
    read_model,
)
from effkeras.deploy.int8_tables.probe import CODES
from effkeras.deploy.int8_tables.write import _ADD, _CAST, _GATHER, _builtin, table_for

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
            offsets = np.frombuffer(
                bytes(model.buffers[subgraph.tensors[int(add.inputs[1])].buffer].data), "<i4"
            )
            found.append(
                TableOp(
                    name.removesuffix("/int8_table/table"),
                    s,
                    len(offsets),
                    (float(x.quantization.scale[0]), int(x.quantization.zeroPoint[0])),
                    (float(y.quantization.scale[0]), int(y.quantization.zeroPoint[0])),
                    offsets,
                    np.frombuffer(bytes(model.buffers[table.buffer].data), np.int8),
                    (cast, add, gather),
                )
            )
    return found


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
        buffer = 0 if data is None or not len(data) else add_buffer(model, bytes(data))
        quantization = tensor.quantization
        names[index] = add_tensor(
            graph,
            tensor.name.decode(),
            new_shape or tensor.shape,
            tensor.type,
            buffer,
            quantization,
        )
        return names[index]

    x = copy(cast.inputs[0], shape)
    code = copy(cast.outputs[0], shape)
    index = copy(add.outputs[0], shape)
    y = copy(gather.outputs[0], shape)
    graph.operators = [
        add_operator(model, _CAST, [x], [code]),
        add_operator(
            model,
            _ADD,
            [code, copy(add.inputs[1])],
            [index],
            add.builtinOptionsType,
            add.builtinOptions,
        ),
        add_operator(
            model,
            _GATHER,
            [copy(gather.inputs[0]), index],
            [y],
            gather.builtinOptionsType,
            gather.builtinOptions,
        ),
    ]
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
        expected = table_for(
            layer, table.x_quantization, table.y_quantization, max_code_step=np.inf
        )
        codes = all_codes(table.channels)
        wanted = expected.T[None]  # (1, 256, C): code q of channel c -> LUT[c, q + 128]
        stored = table.lut.reshape(table.channels, CODES)
        if not np.array_equal(stored, expected) or not np.array_equal(
            table.offsets, np.arange(table.channels) * CODES + 128
        ):
            raise RuntimeError(
                f"the int8 table of {table.name} in the file differs from the table of its function"
            )
        single = single_op_file(flatbuffer, table)
        for what, runner in (("LiteRT", runtime.LiteRT), ("TFLite Micro", runtime.TFLiteMicro)):
            (got,) = runner(single).run_one([codes[0]])
            got = np.asarray(got)[None]
            if got.dtype != np.int8 or not np.array_equal(got, wanted):
                wrong = int(np.sum(got != wanted)) if got.shape == wanted.shape else "all"
                raise RuntimeError(
                    f"the int8 table op of {table.name} in {what} differs from "
                    f"its table on {wrong} of {wanted.size} codes x channels"
                )
    return tables
