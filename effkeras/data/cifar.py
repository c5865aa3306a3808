"""CIFAR-10/100 python pickle batches, read through a restricted unpickler.

The stock unpickler runs whatever a pickle names, and CPython's C unpickler sizes its memo by an
index read from the file (a ten-byte pickle can make it allocate gigabytes). A batch only ever
needs numpy arrays, dicts, lists, ints and bytes, so it loads through the pure-Python unpickler
(its memo is a dict) with stand-ins for the few globals an array pickle names. Each stand-in
checks its arguments before anything is allocated: an array's bytes must be in the file (so no
array can claim more than the file holds), its dtype must be a plain number, and nothing else is
ever called.
"""

import io
import math
import os
import pickle
import reprlib

import numpy as np

from effkeras.errors import InputError

# (folder in the official archive, train files, test files, label key)
LAYOUTS = {
    10: (
        "cifar-10-batches-py",
        [f"data_batch_{i}" for i in range(1, 6)],
        ["test_batch"],
        b"labels",
    ),
    100: ("cifar-100-python", ["train"], ["test"], b"fine_labels"),
}
IMAGE_BYTES = 3 * 32 * 32  # one channel-planar 32x32 RGB row of b"data"
# The globals an array pickle names (numpy 1 and 2 module names; `_frombuffer` is protocol 5's
# in-band form), and the bytes helper of Python 3 protocol-2 pickles. find_class hands out a
# checking stand-in for each, never the real callable.
ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
    ("__builtin__", "bytes"),
    ("builtins", "bytes"),  # b"" in protocol 2 is `bytes()`
}
PLAIN_DTYPES = {"b1", "i1", "u1", "i2", "u2", "i4", "u4", "i8", "u8", "f2", "f4", "f8"}
MAX_DIMS = 32  # numpy's own limit on array dimensions


class NotCallable:
    """Stands for numpy.ndarray: a pickle may name it (as _reconstruct's subtype), never call it."""

    def __call__(self, *args, **kwargs):
        raise pickle.UnpicklingError(
            "refusing to call numpy.ndarray: arrays come from _reconstruct"
        )


NDARRAY = NotCallable()


def _text(value):
    """Python 2 pickles loaded with encoding="bytes" spell str values as bytes."""
    return value.decode("ascii", "replace") if isinstance(value, bytes) else value


class Dtype:
    """numpy.dtype(name, align, copy) then BUILD(state): a plain numeric dtype, nothing else."""

    def __init__(self, name, align=False, copy=False):
        name = _text(name)
        if not isinstance(name, str) or name not in PLAIN_DTYPES:
            raise pickle.UnpicklingError(f"refusing dtype {reprlib.repr(name)}: only plain numbers")
        self.dtype = np.dtype(name)

    def __setstate__(self, state):
        # (version, byte order, subarray, names, fields, elsize, alignment, flags[, metadata])
        if not isinstance(state, tuple) or len(state) < 5 or any(s is not None for s in state[2:5]):
            raise pickle.UnpicklingError("refusing a structured or sub-array dtype")
        order = _text(state[1])
        if order not in ("<", ">", "=", "|"):
            raise pickle.UnpicklingError(f"refusing dtype byte order {reprlib.repr(order)}")
        if order in "<>":
            self.dtype = self.dtype.newbyteorder(order)


class ArrayStub:
    """What `_reconstruct(ndarray, (0,), b"b")` returns; BUILD(state) then makes its array."""

    def __init__(self, file_bytes):
        self.file_bytes = file_bytes
        self.array = None

    def __setstate__(self, state):
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise pickle.UnpicklingError("refusing an array state that is not numpy's")
        shape, dtype, fortran, raw = state[-4:]  # version 1 states start with the version
        self.array = make_array(raw, dtype, shape, fortran, self.file_bytes)


def make_array(raw, dtype, shape, fortran, file_bytes):
    """A view of `raw` (bytes from the file), after checking shape and size against it."""
    if not isinstance(dtype, Dtype):
        raise pickle.UnpicklingError("refusing an array without a plain numeric dtype")
    if (
        not isinstance(shape, tuple)
        or len(shape) > MAX_DIMS
        or not all(type(d) is int and d >= 0 for d in shape)
    ):
        raise pickle.UnpicklingError(f"refusing array shape {reprlib.repr(shape)}")
    if not isinstance(raw, (bytes, bytearray)):  # object arrays pickle a list here
        raise pickle.UnpicklingError("refusing an array whose data is not raw bytes")
    claimed = math.prod(shape) * dtype.dtype.itemsize
    if claimed > file_bytes:
        raise pickle.UnpicklingError(
            f"an array of shape {shape} claims {claimed} bytes but the whole "
            f"file holds {file_bytes}"
        )
    if claimed != len(raw):
        raise pickle.UnpicklingError(
            f"an array of shape {shape} needs {claimed} bytes but its data has {len(raw)}"
        )
    return np.frombuffer(raw, dtype.dtype).reshape(shape, order="F" if fortran else "C")


class RestrictedUnpickler(pickle._Unpickler):  # the pure-Python unpickler: its memo is a dict
    """Loads numpy arrays, dicts, lists, ints and bytes; refuses every other global.

    file_bytes: the size of the pickle; no array may claim more.
    """

    def __init__(self, file, *, file_bytes):
        super().__init__(file, encoding="bytes")
        self.file_bytes = file_bytes

    def find_class(self, module, name):
        if (module, name) not in ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return {
            "_reconstruct": self.reconstruct,
            "_frombuffer": self.frombuffer,
            "ndarray": NDARRAY,
            "dtype": Dtype,
            "encode": encode,
            "bytes": empty_bytes,
        }[name]

    def reconstruct(self, subtype, shape, typecode):
        if subtype is not NDARRAY or shape != (0,) or _text(typecode) != "b":
            raise pickle.UnpicklingError("refusing a _reconstruct call that numpy does not write")
        return ArrayStub(self.file_bytes)

    def frombuffer(self, buffer, dtype, shape, order):
        return make_array(buffer, dtype, shape, _text(order) == "F", self.file_bytes)

    def load_build(self):
        """State may only be applied to the array and dtype stand-ins."""
        if not isinstance(self.stack[-2] if len(self.stack) > 1 else None, (ArrayStub, Dtype)):
            raise pickle.UnpicklingError(
                "refusing to set the state of anything but an array or dtype"
            )
        super().load_build()

    dispatch = {**pickle._Unpickler.dispatch, pickle.BUILD[0]: load_build}


def encode(text, encoding="utf-8", errors="strict"):
    """`_codecs.encode(text, "latin1")`: how a protocol-2 pickle written by Python 3 spells
    bytes."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"refusing _codecs.encode to {reprlib.repr(encoding)}")
    return text.encode("latin1")


def empty_bytes(*args):
    if args:  # bytes(n) would allocate n bytes
        raise pickle.UnpicklingError("refusing bytes() with arguments")
    return b""


def resolve(value):
    return value.array if isinstance(value, ArrayStub) else value


def check_labels(path, key, value, count, num_classes):
    """int32 labels from a list of ints or a 1-D integer array, each in [0, num_classes)."""
    value = resolve(value)
    where = f"{path}: {key!r}"
    if isinstance(value, np.ndarray):
        if value.ndim != 1 or value.dtype.kind not in "iu":
            raise InputError(
                f"{where} must be integer class indices, got a {value.dtype} array of "
                f"shape {value.shape}; replace the file with a copy from the official archive"
            )
        values = value
    elif isinstance(value, (list, tuple)):
        for i, label in enumerate(value):
            if type(label) is not int:
                raise InputError(
                    f"{where}[{i}] is {reprlib.repr(label)}, not an integer class index; "
                    f"replace the file with a copy from the official archive"
                )
        values = value
    else:
        raise InputError(
            f"{where} must be a list of integer class indices, got "
            f"{type(value).__name__}; replace the file with a copy from the official archive"
        )
    if len(values) != count:
        raise InputError(
            f"{path} holds {count} images but {len(values)} labels; replace the file "
            f"with a copy from the official archive"
        )
    if isinstance(values, np.ndarray):
        outside = np.flatnonzero((values < 0) | (values >= num_classes))
        first = int(outside[0]) if len(outside) else None
    else:
        first = next((i for i, label in enumerate(values) if not 0 <= label < num_classes), None)
    if first is not None:
        raise InputError(
            f"{where}[{first}] is {values[first]}, outside 0..{num_classes - 1} "
            f"(CIFAR-{num_classes} has {num_classes} classes); fix the label or use the "
            f"right dataset"
        )
    return np.asarray(values, dtype=np.int64).astype(np.int32)


def load_batch(path, label_key, num_classes):
    """(images uint8 [N, 32, 32, 3], labels int32 [N]) of one pickled batch, checked."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise InputError(f"cannot read {path} ({e.strerror}); check its permissions") from None
    try:
        batch = RestrictedUnpickler(io.BytesIO(raw), file_bytes=len(raw)).load()
    except Exception as e:  # noqa: BLE001 - whatever a hostile pickle trips, the file is refused
        raise InputError(
            f"{path} is not a valid CIFAR batch ({type(e).__name__}: {e}); replace it "
            f"with a copy from the official python archive"
        ) from None
    if not isinstance(batch, dict) or b"data" not in batch or label_key not in batch:
        raise InputError(
            f"{path} is not a CIFAR batch: expected a dict with b'data' and {label_key}; "
            f"replace it with a copy from the official python archive"
        )
    data = resolve(batch[b"data"])
    if not isinstance(data, np.ndarray):
        raise InputError(
            f"{path}: b'data' is a {type(data).__name__}, not an array; replace it with "
            f"a copy from the official python archive"
        )
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != IMAGE_BYTES:
        raise InputError(
            f"{path}: b'data' must be uint8 [N, {IMAGE_BYTES}] (one 32x32 RGB image a row), "
            f"got {data.dtype} {data.shape}; replace it with a copy from the official archive"
        )
    if not len(data):
        raise InputError(
            f"{path} holds no images; replace it with a copy from the official archive"
        )
    labels = check_labels(path, label_key, batch[label_key], len(data), num_classes)
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)  # stored channel-planar
    return images, labels


def read(data_dir, split, num_classes):
    """(images uint8 [N, 32, 32, 3], labels int32 [N]); `data_dir` is the extracted folder or
    its parent."""
    folder, train_files, test_files, label_key = LAYOUTS[num_classes]
    layout = (
        f"expected the python version of CIFAR-{num_classes} extracted, i.e. "
        f"{folder}/{{{','.join(train_files + test_files)}}}; "
        f"pass --data_dir=<dir containing {folder}>"
    )
    if not data_dir:
        raise InputError(f"CIFAR-{num_classes} needs --data_dir: {layout}")
    if os.path.isdir(os.path.join(data_dir, folder)):
        data_dir = os.path.join(data_dir, folder)
    names = train_files if split == "train" else test_files
    missing = [n for n in names if not os.path.isfile(os.path.join(data_dir, n))]
    if missing:
        raise InputError(
            f"CIFAR-{num_classes} files missing in {data_dir} ({', '.join(missing)}): {layout}"
        )
    parts = [load_batch(os.path.join(data_dir, n), label_key, num_classes) for n in names]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
