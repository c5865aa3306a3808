"""Running a .tflite file: LiteRT for builtin-op files (float, float16, int8), Larq Compute
Engine's interpreter for files with LCE ops, and the TFLite Micro interpreter (what firmware
runs). Every runner takes float batches (N, H, W, C) in the model's input range, quantizes
them where the file takes int8, runs them one by one (files are exported with batch 1) and
returns float outputs (dequantized), as Keras's `predict` would: an array, or a list of arrays
for several outputs.
"""

import contextlib
import os

import numpy as np

from effkeras.deploy import verify
from effkeras.errors import InputError

RUNTIMES = ("litert", "tflm", "lce")


def quantize(x, scale, zero_point, dtype):
    info = np.iinfo(dtype)
    return np.clip(np.round(x / scale + zero_point), info.min, info.max).astype(dtype)


def dequantize(q, scale, zero_point):
    return (q.astype(np.float32) - zero_point) * np.float32(scale)


def _quantization(details):
    scale, zero_point = details["quantization"]
    return (scale, zero_point) if scale else None


class LiteRT:
    """A builtin-op .tflite in the LiteRT interpreter (ai-edge-litert)."""

    def __init__(self, flatbuffer, num_threads=1):
        from ai_edge_litert.interpreter import Interpreter

        with quiet_stderr():  # "INFO: Created TensorFlow Lite XNNPACK delegate for CPU."
            self.interpreter = Interpreter(model_content=bytes(flatbuffer),
                                           num_threads=num_threads)
            self.interpreter.allocate_tensors()
        self.inputs = self.interpreter.get_input_details()
        self.outputs = _keras_order(self.interpreter)

    def run_one(self, arrays):
        """Raw output tensors (int8 stays int8) of one example; `arrays` already in input dtype."""
        for details, array in zip(self.inputs, arrays):
            self.interpreter.set_tensor(details["index"], array[None])
        self.interpreter.invoke()
        return [self.interpreter.get_tensor(details["index"])[0] for details in self.outputs]

    def encode(self, arrays):
        return [_encode(details, array) for details, array in zip(self.inputs, arrays)]

    def predict(self, sample):
        return _predict(self, sample)


class TFLiteMicro:
    """The TFLite Micro interpreter (tflite-micro's Python package: firmware's kernels)."""

    def __init__(self, flatbuffer, arena_size=None):
        from tflite_micro import runtime

        with quiet_stderr():
            self.interpreter = runtime.Interpreter.from_bytes(bytes(flatbuffer),
                                                              arena_size=arena_size)
        count = len(verify.io_tensors(flatbuffer)[0])
        self.inputs = [_micro_details(self.interpreter.get_input_details(i)) for i in range(count)]
        outputs = len(verify.io_tensors(flatbuffer)[1])
        self.outputs = [_micro_details(self.interpreter.get_output_details(i))
                        for i in range(outputs)]

    def run_one(self, arrays):
        for index, array in enumerate(arrays):
            self.interpreter.set_input(array[None], index)
        self.interpreter.invoke()
        return [self.interpreter.get_output(i)[0] for i in range(len(self.outputs))]

    def encode(self, arrays):
        return [_encode(details, array) for details, array in zip(self.inputs, arrays)]

    def predict(self, sample):
        return _predict(self, sample)


class LCE:
    """A flatbuffer with Larq Compute Engine ops, in LCE's interpreter."""

    def __init__(self, flatbuffer):
        import larq_compute_engine

        self.interpreter = larq_compute_engine.testing.Interpreter(bytes(flatbuffer))

    def predict(self, sample):
        return self.interpreter.predict(sample)


def runner(flatbuffer, runtime=None):
    """The runner for `flatbuffer`: LCE when it holds LCE ops, else `runtime` (default LiteRT)."""
    has_lce_ops = any(op.type.startswith("Lce") for op in verify.operators(flatbuffer))
    runtime = runtime or ("lce" if has_lce_ops else "litert")
    if runtime not in RUNTIMES:
        raise InputError(f"unknown runtime {runtime!r}; choose from {', '.join(RUNTIMES)}")
    if has_lce_ops and runtime != "lce":
        raise InputError(f"this file holds Larq Compute Engine ops, which only LCE runs, not "
                         f"{runtime}; use runtime 'lce'")
    return {"litert": LiteRT, "tflm": TFLiteMicro, "lce": LCE}[runtime](flatbuffer)


def _micro_details(details):
    parameters = details.get("quantization_parameters") or {}
    scales, zero_points = parameters.get("scales"), parameters.get("zero_points")
    quantization = ((float(scales[0]), int(zero_points[0]))
                    if scales is not None and len(scales) else (0.0, 0))
    return {"dtype": details["dtype"], "shape": details["shape"], "quantization": quantization}


def _encode(details, array):
    quantization = _quantization(details)
    if np.issubdtype(details["dtype"], np.integer) and quantization:
        return quantize(array, *quantization, details["dtype"])
    return array.astype(details["dtype"])


def _decode(details, array):
    quantization = _quantization(details)
    if np.issubdtype(details["dtype"], np.integer) and quantization:
        return dequantize(array, *quantization)
    return array.astype(np.float32)


def _predict(runner, sample):
    inputs = sample if isinstance(sample, (list, tuple)) else [sample]
    inputs = [np.asarray(x, np.float32) for x in inputs]
    results = [[] for _ in runner.outputs]
    for i in range(len(inputs[0])):
        raw = runner.run_one(runner.encode([x[i] for x in inputs]))
        for collected, details, value in zip(results, runner.outputs, raw):
            collected.append(_decode(details, value))
    outputs = [np.stack(values) for values in results]
    return outputs[0] if len(outputs) == 1 else outputs


def _keras_order(interpreter):
    """Output details in the order of the Keras model's outputs (the signature's output_0,
    output_1, ...); the subgraph's own order where there is no such signature."""
    details = interpreter.get_output_details()
    signatures = interpreter._get_full_signature_list() or {}
    outputs = next(iter(signatures.values()), {}).get("outputs", {})
    if len(outputs) != len(details):
        return details
    by_index = {d["index"]: d for d in details}

    def position(name):
        suffix = name.rsplit("_", 1)[-1]
        return (0, int(suffix), name) if suffix.isdigit() else (1, 0, name)

    return [by_index[outputs[name]] for name in sorted(outputs, key=position)]


@contextlib.contextmanager
def quiet_stderr():
    """Mutes fd 2: TFLite Micro's C++ prints its allocation errors there."""
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
