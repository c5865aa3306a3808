"""The one verifier every deploy target shares: what is in the flatbuffer, and does it agree.

- `operators` / `op_census`: every op of every subgraph, read with the TFLite schema that
  TensorFlow ships (builtin names, or the custom code such as "LceBconv2d");
- `io_tensors`: input and output tensors with dtype, shape and quantization;
- `check_agreement`: the flatbuffer's outputs against the Keras model's on a sample batch, with
  the allowance for a model's own numerical sensitivity (deep binary nets flip signs at
  near-ties);
- `Report`: what a conversion reports; targets subclass it to add their own figures;
- `read_model` / `pack_model`: the flatbuffer as the schema's object tree and back, for the
  passes that edit a converted file (int8_tables.py);
- `save`: atomic writes of the flatbuffer, its artifacts and its app-facing JSON.
"""

import dataclasses

import numpy as np
from tensorflow.lite.python import schema_py_generated as schema
from tensorflow.lite.python.schema_util import get_builtin_code_from_operator_code

from effkeras import fileio
from effkeras.errors import InputError

_BUILTIN_NAMES = {code: name for name, code in vars(schema.BuiltinOperator).items()
                  if not name.startswith("_")}


@dataclasses.dataclass(frozen=True)
class Tensor:
    name: str
    shape: tuple
    data: bytes  # the constant's raw bytes; b"" for activations
    dtype: str = "float32"
    scale: tuple = ()  # quantization, empty when not quantized
    zero_point: tuple = ()


@dataclasses.dataclass(frozen=True)
class Operator:
    type: str  # builtin name ("CONV_2D") or custom code ("LceBconv2d")
    inputs: tuple  # of Tensor; optional inputs left out
    outputs: tuple


def read_model(flatbuffer):
    """The flatbuffer as the TFLite schema's object tree (schema.ModelT), to inspect or edit."""
    check_flatbuffer(flatbuffer)
    return schema.ModelT.InitFromPackedBuf(bytes(flatbuffer), 0)


def pack_model(model):
    """Flatbuffer bytes of a schema ModelT, its buffers 16-byte aligned as the converter writes
    them (the schema's own Pack aligns to 1, which misaligns int32 biases and float weights).
    Replaces `model.buffers` with aligned copies."""
    import flatbuffers

    class AlignedBuffer(schema.BufferT):
        def Pack(self, builder):
            data = None
            if self.data is not None and len(self.data):
                payload = np.asarray(self.data, np.uint8).tobytes()
                builder.StartVector(1, len(payload), 16)
                builder.head -= len(payload)
                builder.Bytes[builder.head:builder.head + len(payload)] = payload
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


def check_flatbuffer(flatbuffer):
    if not isinstance(flatbuffer, (bytes, bytearray)) or flatbuffer[4:8] != b"TFL3":
        raise ValueError("expected the bytes of a TFLite flatbuffer (file identifier TFL3)")


def operators(flatbuffer):
    """Every operator of every subgraph, in execution order."""
    check_flatbuffer(flatbuffer)
    model = schema.ModelT.InitFromPackedBuf(flatbuffer, 0)

    def op_type(code):
        if code.customCode:
            return code.customCode.decode()
        return _BUILTIN_NAMES.get(get_builtin_code_from_operator_code(code), "UNKNOWN")

    result = []
    for subgraph in model.subgraphs:
        def tensor(index, subgraph=subgraph):
            return _tensor(model, subgraph, index)

        for op in subgraph.operators:
            result.append(Operator(op_type(model.operatorCodes[op.opcodeIndex]),
                                   tuple(tensor(i) for i in op.inputs if i >= 0),
                                   tuple(tensor(i) for i in op.outputs)))
    return result


_TYPE_NAMES = {code: name.lower() for name, code in vars(schema.TensorType).items()
               if not name.startswith("_")}


def _tensor(model, subgraph, index):
    t = subgraph.tensors[index]
    data = model.buffers[t.buffer].data
    shape = () if t.shape is None else tuple(int(d) for d in t.shape)
    q = t.quantization
    scale = () if q is None or q.scale is None else tuple(float(v) for v in q.scale)
    zero_point = () if q is None or q.zeroPoint is None else tuple(int(v) for v in q.zeroPoint)
    return Tensor(t.name.decode(), shape, b"" if data is None else bytes(data),
                  _TYPE_NAMES.get(t.type, "unknown"), scale, zero_point)


def io_tensors(flatbuffer):
    """(inputs, outputs) of the main subgraph, as Tensors (dtype, shape, quantization)."""
    check_flatbuffer(flatbuffer)
    model = schema.ModelT.InitFromPackedBuf(flatbuffer, 0)
    subgraph = model.subgraphs[0]
    return ([_tensor(model, subgraph, i) for i in subgraph.inputs],
            [_tensor(model, subgraph, i) for i in subgraph.outputs])


def op_census(ops):
    """{op type: count}, sorted by op type, of `operators(flatbuffer)`."""
    counts = {}
    for op in ops:
        counts[op.type] = counts.get(op.type, 0) + 1
    return dict(sorted(counts.items()))


def max_diffs(expected, actual):
    """(max |actual - expected|, that divided by max |expected|) over all outputs.

    Relative to the output's scale rather than per element: per element, outputs near 0 would
    turn float rounding into huge ratios.
    """
    expected = expected if isinstance(expected, (list, tuple)) else [expected]
    actual = actual if isinstance(actual, (list, tuple)) else [actual]
    if len(expected) != len(actual):
        raise ValueError(f"{len(expected)} Keras outputs but {len(actual)} flatbuffer outputs")
    abs_diff, scale = 0.0, 0.0
    for e, a in zip(expected, actual):
        e, a = np.asarray(e, np.float64), np.asarray(a, np.float64)
        if e.shape != a.shape:
            raise ValueError(f"Keras output shape {e.shape} != flatbuffer output shape {a.shape}")
        abs_diff = max(abs_diff, float(np.max(np.abs(a - e), initial=0.0)))
        scale = max(scale, float(np.max(np.abs(e), initial=0.0)))
    return abs_diff, (abs_diff / scale if scale else abs_diff)


def save(path, flatbuffer):
    """Writes atomically: a failure (or a kill) never leaves a partial file at `path`."""
    check_flatbuffer(flatbuffer)
    fileio.write_bytes(path, bytes(flatbuffer))


# --- agreement with Keras -------------------------------------------------------------------------

SAMPLE_SIZE = 4
PIXEL_RANGE = (0.0, 255.0)  # registry models take raw pixels (e.g. models/resnet.py)


def batch_size(sample):
    return len(sample[0] if isinstance(sample, (list, tuple)) else sample)


def random_sample(model, input_range=PIXEL_RANGE, size=SAMPLE_SIZE, seed=0):
    """`size` uniform random inputs in `input_range` for each of `model`'s inputs."""
    return random_inputs(input_shapes(model), input_range, size, seed)


def random_inputs(shapes, input_range=PIXEL_RANGE, size=SAMPLE_SIZE, seed=0):
    """`size` uniform random inputs in `input_range` of each shape (without the batch axis): an
    array, or a list of arrays for several inputs."""
    rng = np.random.default_rng(seed)
    low, high = input_range
    sample = [rng.uniform(low, high, (size, *shape)).astype("float32") for shape in shapes]
    return sample[0] if len(sample) == 1 else sample


def input_shapes(model):
    """Each input's shape without the batch axis; InputError unless all are fixed."""
    shapes = [tuple(tensor.shape[1:]) for tensor in model.inputs]
    for shape in shapes:
        if None in shape:
            raise InputError(f"deployment needs a fixed input shape (TFLite Micro and Vela take "
                             f"static shapes only), and {model.name} takes {shape}: build it "
                             f"with one, e.g. models.get(name, input_shape=(224, 224, 3)) or "
                             f"--input_shape=224,224,3")
    return shapes


def check_sample(model, sample, what="sample"):
    """InputError unless `sample` is a batch (or list of batches) of the model's input shapes."""
    arrays = sample if isinstance(sample, (list, tuple)) else [sample]
    shapes = input_shapes(model)
    got = [tuple(np.shape(a)[1:]) for a in arrays]
    if len(got) != len(shapes) or got != shapes or any(np.ndim(a) < 2 for a in arrays):
        raise InputError(f"the {what} has shape {[np.shape(a) for a in arrays]}, but {model.name} "
                         f"takes batches of {shapes}; give images of the model's input shape")


def sensitivity(model, sample, input_range, noise=1e-4):
    """Max rel diff of `model`'s outputs when `sample` gets Gaussian noise of `noise` x range."""
    low, high = input_range
    rng = np.random.default_rng(1)
    inputs = sample if isinstance(sample, (list, tuple)) else [sample]
    noisy = [x + rng.normal(0.0, noise * (high - low), np.shape(x)).astype(np.float32) for x in inputs]
    noisy = noisy if isinstance(sample, (list, tuple)) else noisy[0]
    return max_diffs(model.predict(sample, verbose=0), model.predict(noisy, verbose=0))[1]


ABS_FLOOR = 1e-6  # outputs this close agree whatever their scale (an untrained net's ~0 logits)


def check_agreement(expected, actual, *, max_rel_diff, what, model=None, sample=None,
                    input_range=PIXEL_RANGE):
    """(max abs diff, max rel diff, sensitivity) of `actual` (flatbuffer) against `expected`
    (Keras). Beyond `max_rel_diff` (and ABS_FLOOR), `model`'s own sensitivity to input noise of
    1e-4 of the range is measured (when a model is given): within twice that, it passes
    (sensitivity reported); otherwise, or with no model, RuntimeError."""
    abs_diff, rel_diff = max_diffs(expected, actual)
    measured = None
    if not (rel_diff <= max_rel_diff or abs_diff <= ABS_FLOOR):
        measured = sensitivity(model, sample, input_range) if model is not None else 0.0
        if not rel_diff <= 2 * measured:
            raise RuntimeError(
                f"the {what} disagrees with Keras: max abs diff {abs_diff:.3g}, max rel diff "
                f"{rel_diff:.3g} > {max_rel_diff:g}, and Keras itself moves only "
                f"{measured:.3g} under input noise")
    return abs_diff, rel_diff, measured


@dataclasses.dataclass
class Report:
    """The checks of one conversion. Targets subclass it to add their own figures; the keys of
    `as_dict` are stable (README, "Deploy")."""

    target: str
    size_bytes: int
    op_census: dict
    max_abs_diff: float  # None when there is no Keras model (a given .tflite file)
    max_rel_diff: float  # relative to max |Keras output|
    samples: int  # inputs the comparison ran on
    collapsed_blocks: int = 0  # CollapsibleConv2D written as one Conv2D each (passes/collapse.py)
    frozen_tables: int = 0  # LerpPSA/ResPSA/BSpline frozen to LerpTable (passes/freeze_tables.py)
    lerp_form: str = ""  # the LerpTable form in the model ("gather", "relu_sum"), "" without one
    # Files written beside the flatbuffer by `api.save`: {suffix: bytes}; not part of as_dict.
    artifacts: dict = dataclasses.field(default_factory=dict, repr=False,
                                        metadata={"internal": True})

    def as_dict(self):
        return {field.name: _plain(getattr(self, field.name)) for field in dataclasses.fields(self)
                if not field.metadata.get("internal")}

    def format(self):
        rows = [("target", self.target),
                ("size", f"{self.size_bytes:,} bytes"),
                ("ops", ", ".join(f"{name} {count}" for name, count in self.op_census.items())),
                ("vs Keras", "- (a given file: no Keras model to compare with)"
                 if self.max_abs_diff is None else
                 f"max abs diff {self.max_abs_diff:.3g}, max rel diff {self.max_rel_diff:.3g} on "
                 f"{self.samples} inputs"),
                ("collapsed blocks", self.collapsed_blocks),
                ("frozen tables", f"{self.frozen_tables}"
                 + (f" ({self.lerp_form} form)" if self.lerp_form else ""))]
        base = {field.name for field in dataclasses.fields(Report)}
        for field in dataclasses.fields(self):
            if field.name not in base:
                value = getattr(self, field.name)
                if isinstance(value, dict):
                    value = ", ".join(f"{k} {v}" for k, v in value.items()) or "-"
                elif isinstance(value, (list, tuple)):
                    value = ", ".join(map(str, value)) or "-"
                elif isinstance(value, float):
                    value = f"{value:.4g}"
                rows.append((field.name, value))
        return "\n".join(f"{name + ':':24s}{value}" for name, value in rows)


def extend(report, cls, **changes):
    """`report` as a `cls` (a subclass adding fields), with `changes` applied."""
    fields = {field.name: getattr(report, field.name) for field in dataclasses.fields(report)}
    return cls(**{**fields, **changes})


def _plain(value):
    """JSON-ready: tuples as lists, numpy scalars as Python numbers."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value
