"""What every deploy target reports about its flatbuffer: op census, size, agreement with Keras.

Target-neutral: LCE, float/int8 TFLite, TFLite Micro and Vela outputs are all TFLite
flatbuffers, read here with the schema TensorFlow ships.
"""

import dataclasses

import numpy as np
from tensorflow.lite.python import schema_py_generated as schema
from tensorflow.lite.python.schema_util import get_builtin_code_from_operator_code

from effkeras import fileio

_BUILTIN_NAMES = {code: name for name, code in vars(schema.BuiltinOperator).items()
                  if not name.startswith("_")}


@dataclasses.dataclass(frozen=True)
class Tensor:
    name: str
    shape: tuple
    data: bytes  # the constant's raw bytes; b"" for activations


@dataclasses.dataclass(frozen=True)
class Operator:
    type: str  # builtin name ("CONV_2D") or custom code ("LceBconv2d")
    inputs: tuple  # of Tensor; optional inputs left out
    outputs: tuple


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
        def tensor(index):
            t = subgraph.tensors[index]
            data = model.buffers[t.buffer].data
            shape = () if t.shape is None else tuple(int(d) for d in t.shape)
            return Tensor(t.name.decode(), shape, b"" if data is None else bytes(data))

        for op in subgraph.operators:
            result.append(Operator(op_type(model.operatorCodes[op.opcodeIndex]),
                                   tuple(tensor(i) for i in op.inputs if i >= 0),
                                   tuple(tensor(i) for i in op.outputs)))
    return result


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


@dataclasses.dataclass
class Report:
    """The checks of one conversion. Targets subclass it to add their own counts."""

    target: str
    size_bytes: int
    op_census: dict
    max_abs_diff: float
    max_rel_diff: float  # relative to max |Keras output|
    samples: int  # inputs the comparison ran on

    def as_dict(self):
        return dataclasses.asdict(self)

    def format(self):
        rows = [("target", self.target),
                ("size", f"{self.size_bytes:,} bytes"),
                ("ops", ", ".join(f"{name} {count}" for name, count in self.op_census.items())),
                ("vs Keras", f"max abs diff {self.max_abs_diff:.3g}, max rel diff "
                             f"{self.max_rel_diff:.3g} on {self.samples} inputs")]
        base = {field.name for field in dataclasses.fields(Report)}
        for field in dataclasses.fields(self):
            if field.name not in base:
                value = getattr(self, field.name)
                if isinstance(value, (list, tuple)):
                    value = ", ".join(map(str, value)) or "-"
                rows.append((field.name, value))
        return "\n".join(f"{name + ':':16s}{value}" for name, value in rows)
