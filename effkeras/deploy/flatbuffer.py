"""The one module that reads and writes TFLite flatbuffers, with the schema TensorFlow ships.

- `read_model` / `pack_model`: the file as the schema's object tree (schema.ModelT) and back,
  buffers 16-byte aligned, for the passes that edit a converted file (int8_tables.py);
- `check_flatbuffer`, `read_file`: the file identifier, a file read and parsed whole (writing
  is api.save's, as one set with the files beside it);
- `operators` / `op_census`: every op of every subgraph (builtin names, or the custom code such
  as "LceBconv2d"), as `Operator`s of `Tensor`s; `builtin_code` / `builtin_name` of an
  operator code;
- `io_tensors`: the main subgraph's inputs and outputs with dtype, shape and quantization;
- `signatures`: each signature's subgraph, inputs and outputs by name;
- `metadata` / `with_metadata`: a named metadata buffer, read without the weights, or written;
- `signature_file`: the file of one signature's subgraph alone (what TFLite Micro runs).
"""

import dataclasses

import numpy as np
from tensorflow.lite.python import schema_py_generated as schema
from tensorflow.lite.python.schema_util import get_builtin_code_from_operator_code

from effkeras.errors import InputError

_BUILTIN_NAMES = {
    code: name for name, code in vars(schema.BuiltinOperator).items() if not name.startswith("_")
}
_TYPE_NAMES = {
    code: name.lower() for name, code in vars(schema.TensorType).items() if not name.startswith("_")
}
# Ops that call other subgraphs: a file of one subgraph cannot hold them.
_CONTROL_FLOW = {"IF", "WHILE", "CALL_ONCE", "CALL"}


@dataclasses.dataclass(frozen=True)
class Tensor:
    """A tensor of a flatbuffer: name, shape, constant bytes, dtype and quantization."""

    name: str
    shape: tuple
    data: bytes  # the constant's raw bytes; b"" for activations
    dtype: str = "float32"
    scale: tuple = ()  # quantization, empty when not quantized
    zero_point: tuple = ()


@dataclasses.dataclass(frozen=True)
class Operator:
    """An operator of a flatbuffer, with its input and output `Tensor`s."""

    type: str  # builtin name ("CONV_2D") or custom code ("LceBconv2d")
    inputs: tuple  # of Tensor; optional inputs left out
    outputs: tuple


def check_flatbuffer(flatbuffer):
    """Checks that `flatbuffer` is the bytes of a TFLite file.

    Args:
        flatbuffer: anything.

    Raises:
        ValueError: not bytes with the file identifier TFL3.
    """
    if not isinstance(flatbuffer, (bytes, bytearray)) or flatbuffer[4:8] != b"TFL3":
        raise ValueError("expected the bytes of a TFLite flatbuffer (file identifier TFL3)")


def read_file(path):
    """The bytes of the .tflite file at `path`, checked to parse as a whole.

    Args:
        path: a file path.

    Returns:
        The file's bytes.

    Raises:
        InputError: a file that cannot be read, or is not a whole TFLite flatbuffer (text,
            empty, truncated).
    """
    try:
        with open(path, "rb") as f:
            flatbuffer = f.read()
        read_model(flatbuffer)
    except OSError as e:
        raise InputError(f"cannot read {path}: {e.strerror}") from None
    except Exception as e:  # noqa: BLE001 (the schema's parser raises struct, index, value errors)
        reason = str(e) if isinstance(e, ValueError) else "it is truncated or corrupt"
        raise InputError(f"cannot read {path} as a .tflite file: {reason}") from None
    return flatbuffer


def read_model(flatbuffer):
    """The flatbuffer as the TFLite schema's object tree, to inspect or edit.

    Args:
        flatbuffer: the bytes of a .tflite file.

    Returns:
        A schema.ModelT.

    Raises:
        ValueError: not a TFLite flatbuffer.
    """
    check_flatbuffer(flatbuffer)
    return schema.ModelT.InitFromPackedBuf(bytes(flatbuffer), 0)


def pack_model(model):
    """Flatbuffer bytes of a schema ModelT, its buffers 16-byte aligned as the converter writes
    them (the schema's own Pack aligns to 1, which misaligns int32 biases and float weights).
    Replaces `model.buffers` with aligned copies.

    Args:
        model: a schema.ModelT (`read_model`).

    Returns:
        The bytes of the .tflite file.
    """
    import flatbuffers

    class AlignedBuffer(schema.BufferT):
        def Pack(self, builder):
            data = None
            if self.data is not None and len(self.data):
                payload = np.asarray(self.data, np.uint8).tobytes()
                builder.StartVector(1, len(payload), 16)
                builder.head -= len(payload)
                builder.Bytes[builder.head : builder.head + len(payload)] = payload
                builder.vectorNumElems = len(payload)
                data = builder.EndVector()
            schema.BufferStart(builder)
            if data is not None:
                schema.BufferAddData(builder, data)
            return schema.BufferEnd(builder)

    model.buffers = [AlignedBuffer(data=b.data) for b in model.buffers]
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def builtin_code(code):
    """The builtin op of a schema OperatorCodeT, from either of its two code fields.

    Args:
        code: a schema.OperatorCodeT.

    Returns:
        A schema.BuiltinOperator value.
    """
    return get_builtin_code_from_operator_code(code)


def builtin_name(code):
    """The builtin op name of a schema OperatorCodeT ("UNKNOWN" for a code TF does not know).

    Args:
        code: a schema.OperatorCodeT.

    Returns:
        The name, e.g. "CONV_2D".
    """
    return _BUILTIN_NAMES.get(builtin_code(code), "UNKNOWN")


def type_name(code):
    """The lower-case name of a schema TensorType code ("float32", "int8", ...)."""
    return _TYPE_NAMES.get(code, "unknown")


def tensor(model, subgraph, index):
    """The `Tensor` at `index` of `subgraph` (a schema SubGraphT of the ModelT `model`).

    Args:
        model: a schema.ModelT.
        subgraph: one of its subgraphs.
        index: the tensor's index in the subgraph.

    Returns:
        A Tensor.
    """
    t = subgraph.tensors[index]
    data = model.buffers[t.buffer].data
    shape = () if t.shape is None else tuple(int(d) for d in t.shape)
    q = t.quantization
    scale = () if q is None or q.scale is None else tuple(float(v) for v in q.scale)
    zero_point = () if q is None or q.zeroPoint is None else tuple(int(v) for v in q.zeroPoint)
    return Tensor(
        t.name.decode(),
        shape,
        b"" if data is None else bytes(data),
        type_name(t.type),
        scale,
        zero_point,
    )


def operators(flatbuffer):
    """Every operator of every subgraph, in execution order.

    Args:
        flatbuffer: the bytes of a .tflite file.

    Returns:
        A list of Operator.

    Raises:
        ValueError: not a TFLite flatbuffer.
    """
    check_flatbuffer(flatbuffer)
    model = schema.ModelT.InitFromPackedBuf(flatbuffer, 0)

    def op_type(code):
        if code.customCode:
            return code.customCode.decode()
        return builtin_name(code)

    result = []
    for subgraph in model.subgraphs:

        def tensor_at(index, subgraph=subgraph):
            return tensor(model, subgraph, index)

        for op in subgraph.operators:
            result.append(
                Operator(
                    op_type(model.operatorCodes[op.opcodeIndex]),
                    tuple(tensor_at(i) for i in op.inputs if i >= 0),
                    tuple(tensor_at(i) for i in op.outputs),
                )
            )
    return result


def op_census(ops):
    """How many ops of each type.

    Args:
        ops: Operators (`operators(flatbuffer)`).

    Returns:
        {op type: count}, sorted by op type.
    """
    counts = {}
    for op in ops:
        counts[op.type] = counts.get(op.type, 0) + 1
    return dict(sorted(counts.items()))


def io_tensors(flatbuffer):
    """The inputs and outputs of the main subgraph.

    Args:
        flatbuffer: the bytes of a .tflite file.

    Returns:
        (inputs, outputs): lists of Tensor (dtype, shape, quantization).

    Raises:
        ValueError: not a TFLite flatbuffer.
    """
    check_flatbuffer(flatbuffer)
    model = schema.ModelT.InitFromPackedBuf(flatbuffer, 0)
    subgraph = model.subgraphs[0]
    return (
        [tensor(model, subgraph, i) for i in subgraph.inputs],
        [tensor(model, subgraph, i) for i in subgraph.outputs],
    )


def signatures(flatbuffer):
    """The file's signatures, in the file's order.

    Args:
        flatbuffer: the bytes of a .tflite file.

    Returns:
        {signature key: (subgraph index, {input name: Tensor}, {output name: Tensor})}.

    Raises:
        ValueError: not a TFLite flatbuffer.
    """
    model = read_model(flatbuffer)
    found = {}
    for signature in model.signatureDefs or []:
        subgraph = model.subgraphs[signature.subgraphIndex]

        def tensors(maps, subgraph=subgraph):
            return {m.name.decode(): tensor(model, subgraph, m.tensorIndex) for m in maps or []}

        found[signature.signatureKey.decode()] = (
            signature.subgraphIndex,
            tensors(signature.inputs),
            tensors(signature.outputs),
        )
    return found


def metadata(flatbuffer, name):
    """The bytes of the metadata entry `name`, read from the metadata table alone (not the
    weights).

    Args:
        flatbuffer: the bytes of a .tflite file.
        name: the metadata entry's name.

    Returns:
        bytes, or None when the file has no such entry.

    Raises:
        ValueError: not a TFLite flatbuffer.
    """
    check_flatbuffer(flatbuffer)
    model = schema.Model.GetRootAs(bytes(flatbuffer), 0)
    for i in range(model.MetadataLength()):
        entry = model.Metadata(i)
        if entry.Name() and entry.Name().decode() == name:
            data = model.Buffers(entry.Buffer()).DataAsNumpy()
            return np.asarray(data, np.uint8).tobytes()
    return None


def with_metadata(flatbuffer, name, data):
    """`flatbuffer` carrying `data` as its metadata entry `name` (replaced if there).

    Args:
        flatbuffer: the bytes of a .tflite file.
        name: the metadata entry's name.
        data: its bytes.

    Returns:
        The bytes of the new file.

    Raises:
        ValueError: not a TFLite flatbuffer.
    """
    model = read_model(flatbuffer)
    model.metadata = [m for m in model.metadata or [] if m.name.decode() != name]
    model.buffers.append(schema.BufferT(data=np.frombuffer(data, np.uint8)))
    entry = schema.MetadataT()
    entry.name, entry.buffer = name.encode(), len(model.buffers) - 1
    model.metadata.append(entry)
    return pack_model(model)


def signature_file(flatbuffer, key):
    """The file of signature `key` alone: its subgraph (as subgraph 0, which TFLite Micro
    runs), the buffers and op codes that subgraph uses, the signature and the file's metadata.
    Same bytes for the same ops: it computes exactly what the signature computes.

    Args:
        flatbuffer: the bytes of a .tflite file with a signature `key`.
        key: the signature key.

    Returns:
        The bytes of the one-subgraph file.

    Raises:
        InputError: the signature's subgraph calls other subgraphs (control flow).
        ValueError: not a TFLite flatbuffer.
    """
    model = read_model(flatbuffer)
    signature = next(s for s in model.signatureDefs if s.signatureKey.decode() == key)
    subgraph = model.subgraphs[signature.subgraphIndex]
    codes, buffers, kept_codes = {}, {0: 0}, []
    new_buffers = [schema.BufferT()]  # buffer 0 stays the empty one, as the converter writes it
    for op in subgraph.operators:
        code = model.operatorCodes[op.opcodeIndex]
        if _CONTROL_FLOW & {(code.customCode or b"").decode(), builtin_name(code)}:
            raise InputError(
                f"signature {key} calls other subgraphs ({builtin_name(code)}), "
                f"which a single-stage file cannot hold"
            )
        if op.opcodeIndex not in codes:
            codes[op.opcodeIndex] = len(kept_codes)
            kept_codes.append(code)
        op.opcodeIndex = codes[op.opcodeIndex]
    for t in subgraph.tensors:
        if t.buffer not in buffers:
            buffers[t.buffer] = len(new_buffers)
            new_buffers.append(model.buffers[t.buffer])
        t.buffer = buffers[t.buffer]
    for entry in model.metadata or []:
        if entry.buffer not in buffers:
            buffers[entry.buffer] = len(new_buffers)
            new_buffers.append(model.buffers[entry.buffer])
        entry.buffer = buffers[entry.buffer]
    signature.subgraphIndex = 0
    model.subgraphs, model.operatorCodes, model.buffers = [subgraph], kept_codes, new_buffers
    model.signatureDefs = [signature]
    return pack_model(model)


# --- writing: the object API's pieces, for passes that edit a converted file -------------------


def quantization_params(scale, zero_point):
    """Per-tensor quantization parameters (one scale, one zero point) for a new tensor."""
    q = schema.QuantizationParametersT()
    q.scale, q.zeroPoint, q.quantizedDimension = [float(scale)], [int(zero_point)], 0
    return q


def add_buffer(model, data):
    """Appends a buffer holding `data` (bytes) to `model`; returns its index."""
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(data, np.uint8).copy()
    model.buffers.append(buffer)
    return len(model.buffers) - 1


def add_tensor(subgraph, name, shape, dtype, buffer=0, quantization=None):
    """Appends a tensor to `subgraph` (schema object API); returns its index."""
    tensor = schema.TensorT()
    tensor.name, tensor.shape, tensor.type, tensor.buffer = (
        name.encode(),
        list(shape),
        dtype,
        buffer,
    )
    tensor.quantization = quantization
    subgraph.tensors.append(tensor)
    return len(subgraph.tensors) - 1


def opcode(model, builtin, version):
    """Index of an operator code for `builtin` at `version` or later, added when missing."""
    for index, code in enumerate(model.operatorCodes):
        if not code.customCode and builtin_code(code) == builtin and code.version >= version:
            return index
    code = schema.OperatorCodeT()
    code.builtinCode, code.deprecatedBuiltinCode = builtin, min(builtin, 127)
    code.version = version
    model.operatorCodes.append(code)
    return len(model.operatorCodes) - 1


def add_operator(model, kind, inputs, outputs, options_type=0, options=None):
    """A new operator of `kind` = (builtin code, least version) on tensor indices."""
    op = schema.OperatorT()
    op.opcodeIndex = opcode(model, *kind)
    op.inputs, op.outputs = list(inputs), list(outputs)
    op.builtinOptionsType, op.builtinOptions = options_type, options
    return op


def compact(model):
    """Drops the tensors, buffers and operator codes no op, subgraph or signature uses."""
    for s, subgraph in enumerate(model.subgraphs):
        used = set(subgraph.inputs) | set(subgraph.outputs)
        for op in subgraph.operators:
            for field in (op.inputs, op.outputs, op.intermediates):
                used |= {int(t) for t in (field if field is not None else []) if t >= 0}
        keep = sorted(used)
        remap = {old: new for new, old in enumerate(keep)}
        subgraph.tensors = [subgraph.tensors[i] for i in keep]

        def moved(indices, remap=remap):
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
