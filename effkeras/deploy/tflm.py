"""`tflm`: an int8 file for microcontrollers, run in the TFLite Micro interpreter.

The int8 file (`tflite.convert_int8`, or an int8 .tflite given as bytes) is run with TFLite
Micro's kernels, and the target reports:
- `max_lsb_diff` and `mean_lsb_diff`: the largest and the mean difference between TFLite Micro's
  int8 outputs on the sample and those of LiteRT's reference kernels (`OpResolverType.
  BUILTIN_REF`), in units of the output's quantization step. Both implement TFLite's integer
  reference arithmetic; LiteRT's default XNNPack kernels round some ties differently, and in a
  binary net one flipped sign cascades (random-weight ReCU-20: 79 LSB between TFLite Micro and
  XNNPack, 0 against the reference kernels). Beyond MAX_LSB_DIFF (a tenth of the int8 range) or
  MAX_MEAN_LSB_DIFF, TFLite Micro computes something else, which is an error;
- `micro_top1_agreement`: TFLite Micro's argmax against the Keras model's, on the sample;
- with `int4_weights` (`--int4_weights`), a binary net's file stores its binary weights as INT4
  codes ±7, two per byte (binary_int8.pack_int4; TFLite Micro unpacks them op by op into
  scratch memory): half their flash. `int4_layers` counts them, and `int4_top1_agreement` is
  TFLite Micro's argmax on the packed file against the int8 file's: the same sums, requantized
  with multipliers a last bit apart;
- `arena_bytes`: the smallest tensor arena that allocates and invokes, found by bisection on
  the real interpreter (TFLite Micro's RecordingMicroAllocator only prints its usage);
- a C array for the firmware build: `<stem>_model_data.h/.cc`, the flatbuffer 16-byte aligned,
  with `kModelDataLen` and `kTensorArenaSize` constants in a namespace named after the model.
"""

import os
import re
import subprocess
import sys
import tempfile

import numpy as np

from effkeras.deploy import binary_int8, runtime, tflite, verify
from effkeras.deploy.converter import top1_agreement
from effkeras.deploy.flatbuffer import io_tensors, op_census, operators
from effkeras.deploy.registry import register_target
from effkeras.deploy.report import TflmReport, extend
from effkeras.errors import InputError

MAX_LSB_DIFF = 24
MAX_MEAN_LSB_DIFF = 4
ARENA_ALIGNMENT = 16


@register_target(
    "tflm",
    "int8 TFLite for microcontrollers, run in TFLite Micro: arena bytes "
    "and a C array for the firmware",
    quantizes=True,
)
def convert(
    model,
    *,
    calibration=None,
    sample=None,
    io="int8",
    allow_float_fallback=False,
    int4_weights=False,
    **int8_options,
):
    """(int8 flatbuffer, TflmReport) of a Keras model, or of the bytes of an int8 .tflite; with
    `int4_weights`, a binary net's binary weights packed INT4 (binary_int8.pack_int4), its int8
    file kept as the `_int8.tflite` artifact."""
    int8, base = tflite.int8_file(
        model,
        "tflm",
        calibration=calibration,
        sample=sample,
        io=io,
        allow_float_fallback=allow_float_fallback,
        **int8_options,
    )
    flatbuffer, int4_layers = binary_int8.pack_int4(int8) if int4_weights else (int8, 0)
    if sample is None:  # the int8 check's own random sample (same seed), or the file's shapes
        shapes = [t.shape[1:] for t in io_tensors(flatbuffer)[0]]
        sample = verify.random_inputs(shapes)
    given_file = isinstance(model, (bytes, bytearray))
    name = "model" if given_file else model.name
    lsb, mean, micro_outputs = lsb_diffs(flatbuffer, sample)
    if lsb > MAX_LSB_DIFF or mean > MAX_MEAN_LSB_DIFF:
        raise RuntimeError(
            f"TFLite Micro's outputs differ from LiteRT's reference kernels' by up to {lsb} LSB, "
            f"{mean:.2f} on average (limits {MAX_LSB_DIFF}, {MAX_MEAN_LSB_DIFF}): "
            f"TFLite Micro computes this file differently"
        )
    arena = arena_bytes(flatbuffer)
    report = extend(
        base,
        TflmReport,
        target="tflm",
        size_bytes=len(flatbuffer),
        max_lsb_diff=lsb,
        mean_lsb_diff=round(mean, 3),
        arena_bytes=arena,
        int4_layers=int4_layers,
        int4_top1_agreement=(
            top1_agreement(runtime.LiteRT(int8, kernels="reference").predict(sample), micro_outputs)
            if int4_layers
            else None
        ),
        micro_top1_agreement=(
            None if given_file else top1_agreement(model.predict(sample, verbose=0), micro_outputs)
        ),
    )
    report.artifacts = {
        "_model_data.h": lambda stem: c_header(name, len(flatbuffer), arena),
        "_model_data.cc": lambda stem: c_source(name, flatbuffer, stem),
    }
    if int4_layers:  # for LiteRT and Vela, which take int8 weights
        report.artifacts["_int8.tflite"] = int8
    return flatbuffer, report


def lsb_diffs(flatbuffer, sample):
    """(largest, mean) |TFLite Micro - LiteRT's reference kernels| over the raw (int8) outputs of
    the sample, and TFLite Micro's outputs (dequantized, as `Runtime.predict` gives them)."""
    try:
        micro = runtime.TFLiteMicro(flatbuffer)
    except Exception as e:  # RuntimeError from the C++ side: an op TFLite Micro lacks
        raise InputError(
            f"TFLite Micro cannot run this file: {str(e).strip().splitlines()[0]}; "
            f"it has no kernel for one of its ops "
            f"({', '.join(op_census(operators(flatbuffer)))})"
        ) from None
    lite = runtime.LiteRT(flatbuffer, kernels="reference")
    inputs = sample if isinstance(sample, (list, tuple)) else [sample]
    diffs = []
    outputs = [[] for _ in micro.outputs]
    for i in range(len(inputs[0])):
        encoded = lite.encode([np.asarray(x[i], np.float32) for x in inputs])
        raw = micro.run_one(encoded)
        for a, b in zip(lite.run_one(encoded), raw):
            diffs.append(np.abs(a.astype(np.int64) - b.astype(np.int64)).ravel())
        for collected, value in zip(outputs, micro.decode(raw)):
            collected.append(value)
    diffs = np.concatenate(diffs)
    outputs = [np.stack(values) for values in outputs]
    return int(diffs.max()), float(diffs.mean()), outputs[0] if len(outputs) == 1 else outputs


def arena_bytes(flatbuffer, limit=1 << 30):
    """The smallest arena (a multiple of ARENA_ALIGNMENT) that allocates and invokes.

    TFLite Micro plans the whole arena when the interpreter is built (AllocateTensors, scratch
    buffers included), so the bisection builds interpreters; one invoke confirms the answer.
    They are built in a child process (_ARENA_PROBE): at some sizes that are too small TFLite
    Micro crashes (segmentation fault) instead of failing, e.g. 1,648 bytes for a 2-op stage
    that needs 2,144, so a probe that kills the child counts as too small and the bisection
    goes on in a new child."""
    count = len(io_tensors(flatbuffer)[0])
    low = high = 0  # high 0: not found yet
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "model.tflite")
        with open(path, "wb") as f:
            f.write(flatbuffer)
        for _ in range(MAX_PROBE_CRASHES):
            run = subprocess.run(
                [
                    sys.executable,
                    "-c",
                    _ARENA_PROBE,
                    path,
                    str(low),
                    str(high),
                    str(limit),
                    str(ARENA_ALIGNMENT),
                    str(count),
                ],
                capture_output=True,
                text=True,
            )
            pending = None
            for line in run.stdout.splitlines():
                word, size = line.split()
                size = int(size)
                if word in ("probe", "invoke"):
                    pending = (word, size)
                    continue
                pending = None
                if word == "ok":
                    high = size
                elif word == "fail":
                    low = max(low, size)
                elif word == "limit":
                    raise InputError(f"TFLite Micro cannot allocate this model in {limit:,} bytes")
                elif word == "invoked":
                    return size
                else:  # not-invoked
                    raise RuntimeError(
                        f"TFLite Micro allocates this model in {size:,} bytes "
                        f"but cannot invoke it there"
                    )
            if pending is None or pending[0] == "invoke":
                raise RuntimeError(
                    f"TFLite Micro crashed measuring this model's arena (exit "
                    f"code {run.returncode}"
                    + (f", invoking it in {pending[1]:,} bytes)" if pending else ")")
                )
            low = max(low, pending[1])  # crashed building it: too small
    raise RuntimeError(
        f"TFLite Micro crashed {MAX_PROBE_CRASHES} times measuring this model's arena"
    )


MAX_PROBE_CRASHES = 8
# Bisection of the arena in a child process, which prints each probe before trying it: a crash
# then names the size that caused it. Arguments: model path, low, high (0: double from twice
# the model's size until one allocates), limit, alignment, number of inputs.
_ARENA_PROBE = r"""
import sys
import numpy as np
from tflite_micro import runtime

path = sys.argv[1]
low, high, limit, alignment, count = (int(a) for a in sys.argv[2:7])
with open(path, "rb") as f:
    model = f.read()


def allocates(size):
    print("probe", size, flush=True)
    try:
        runtime.Interpreter.from_bytes(model, arena_size=size)
        print("ok", size, flush=True)
        return True
    except Exception:
        print("fail", size, flush=True)
        return False


if not high:
    high = max(alignment, 2 * len(model))
    while high <= low:
        high *= 2
    while not allocates(high):
        low, high = high, high * 2
        if high > limit:
            print("limit", limit, flush=True)
            sys.exit(0)
while high - low > alignment:
    middle = (low + high) // 2 // alignment * alignment
    if middle <= low:
        break
    if allocates(middle):
        high = middle
    else:
        low = middle
print("invoke", high, flush=True)
try:
    interpreter = runtime.Interpreter.from_bytes(model, arena_size=high)
    for i in range(count):
        details = interpreter.get_input_details(i)
        interpreter.set_input(np.zeros(details["shape"], details["dtype"]), i)
    interpreter.invoke()
    print("invoked", high, flush=True)
except Exception:
    print("not-invoked", high, flush=True)
"""


def identifier(name):
    """A C++ identifier from a model name."""
    text = re.sub(r"\W", "_", name)
    return text if text and not text[0].isdigit() else f"model_{text}"


def c_header(name, length, arena):
    namespace = identifier(name)
    return (
        f"// {name}: int8 TFLite model for TFLite Micro, written by effkeras.\n"
        f"#pragma once\n#include <cstddef>\n#include <cstdint>\n\n"
        f"namespace {namespace} {{\n"
        f"constexpr size_t kModelDataLen = {length};\n"
        f"// The smallest arena that allocated and ran this model in TFLite Micro's reference\n"
        f"// kernels on a 64-bit host; optimized kernels (CMSIS-NN) may need scratch space more.\n"
        f"constexpr size_t kTensorArenaSize = {arena};\n"
        f"extern const uint8_t g_model_data[kModelDataLen];\n"
        f"}}  // namespace {namespace}\n"
    ).encode()


def c_source(name, flatbuffer, stem):
    namespace = identifier(name)
    rows = [
        ", ".join(f"0x{b:02x}" for b in flatbuffer[i : i + 12])
        for i in range(0, len(flatbuffer), 12)
    ]
    body = ",\n    ".join(rows)
    return (
        f'#include "{stem}_model_data.h"\n\nnamespace {namespace} {{\n'
        f"alignas(16) const uint8_t g_model_data[kModelDataLen] = {{\n    {body}}};\n"
        f"}}  // namespace {namespace}\n"
    ).encode()
