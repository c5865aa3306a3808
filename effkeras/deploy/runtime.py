"""Running a .tflite file: one protocol, three runtimes.

- `LiteRT`: builtin-op files (float, float16, int8) in LiteRT (`ai-edge-litert`, XNNPack);
- `TFLiteMicro`: the TFLite Micro interpreter (what firmware runs: its reference kernels);
- `LCE`: files with Larq Compute Engine ops, in LCE's interpreter;
- `MediaPipe`: an app's file (TFLite Metadata inside) in MediaPipe Tasks' `ImageClassifier`,
  created from the file alone with default options, as an Android app creates it.

Every runner is a `Runtime`: `inputs` and `outputs` (one dict per tensor: "dtype", "shape" and
"quantization", a (scale, zero point) pair, (0.0, 0) where the tensor is not quantized; outputs
in the order of the Keras model's outputs), `threads`, and

- `encode(arrays)`: float inputs of one example (no batch axis) in the file's input dtypes
  (int8 inputs quantized with `quantize`);
- `run_one(encoded)`: the raw outputs of one example (int8 stays int8);
- `decode(raw)`: those outputs as float32 (int8 dequantized with `dequantize`);
- `predict(sample)`: float batches (N, H, W, C) in the model's input range, run one example at a
  time (files are exported with batch 1), returned as Keras's `predict` would: an array, or a
  list of arrays for several outputs.

`quantize` and `dequantize` are the project's one int8 encode and decode.
"""

import contextlib
import os

import numpy as np

from effkeras.deploy.flatbuffer import io_tensors, operators
from effkeras.errors import InputError

RUNTIMES = ("litert", "tflm", "lce", "mediapipe")


def quantize(x, scale, zero_point, dtype):
    """Affine quantization of float values, rounded and clipped to the integer type.

    Args:
        x: float values (array-like).
        scale: the quantization scale (float > 0).
        zero_point: the integer that 0.0 maps to.
        dtype: the integer NumPy type of the result (e.g. `np.int8`).

    Returns:
        `clip(round(x / scale + zero_point))` as a `dtype` array.
    """
    info = np.iinfo(dtype)
    return np.clip(np.round(x / scale + zero_point), info.min, info.max).astype(dtype)


def dequantize(q, scale, zero_point):
    """The float values of quantized integers.

    Args:
        q: integer values (a NumPy array).
        scale: the quantization scale.
        zero_point: the integer that 0.0 maps to.

    Returns:
        `(q - zero_point) * scale` as a float32 array.
    """
    return (q.astype(np.float32) - zero_point) * np.float32(scale)


class Runtime:
    """What every runner shares: encode, run one example, decode, predict (see the module doc).

    A subclass sets `inputs`, `outputs` and `threads`, and implements `run_one`.
    """

    threads = 1

    def run_one(self, encoded):
        """The raw output tensors of one example.

        Args:
            encoded: one array per input, in the input's dtype, without the batch axis
                (what `encode` returns).

        Returns:
            A list with one array per output, without the batch axis, in the output's dtype.
        """
        raise NotImplementedError

    def encode(self, arrays):
        """Float inputs of one example in the file's input dtypes.

        Args:
            arrays: one float array per input, without the batch axis.

        Returns:
            A list of arrays: int8 inputs quantized with their scale and zero point, the
            others cast to their dtype.
        """
        return [_encode(details, array) for details, array in zip(self.inputs, arrays)]

    def decode(self, raw):
        """Raw outputs of one example as float32.

        Args:
            raw: one array per output (what `run_one` returns).

        Returns:
            A list of float32 arrays, int8 outputs dequantized.
        """
        return [_decode(details, value) for details, value in zip(self.outputs, raw)]

    def as_read(self, sample):
        """`sample` as the file reads it: values of a quantized input rounded to its grid
        (uint8 camera pixels: to whole pixels), float inputs as given. Keras given these gets
        what the file gets. Values beyond the input's range are not clipped: that the file
        clips them (calibration ranges that do not cover the sample) stays for a check to see.

        Args:
            sample: a float array (N, ...), or a list of them for several inputs.

        Returns:
            float32 arrays in the same structure.
        """
        inputs = sample if isinstance(sample, (list, tuple)) else [sample]
        read = []
        for details, x in zip(self.inputs, inputs):
            x, quantization = np.asarray(x, np.float32), _quantization(details)
            if quantization:
                scale, zero_point = quantization
                x = dequantize(np.round(x / scale + zero_point), scale, zero_point)
            read.append(x)
        return read if isinstance(sample, (list, tuple)) else read[0]

    def predict(self, sample):
        """Float outputs of a batch, as Keras's `Model.predict` gives them.

        Args:
            sample: a float array (N, ...) in the model's input range, or a list of them for
                several inputs.

        Returns:
            An (N, ...) float32 array, or a list of them for several outputs.
        """
        inputs = sample if isinstance(sample, (list, tuple)) else [sample]
        inputs = [np.asarray(x, np.float32) for x in inputs]
        results = [[] for _ in self.outputs]
        for i in range(len(inputs[0])):
            decoded = self.decode(self.run_one(self.encode([x[i] for x in inputs])))
            for collected, value in zip(results, decoded):
                collected.append(value)
        outputs = [np.stack(values) for values in results]
        return outputs[0] if len(outputs) == 1 else outputs


class LiteRT(Runtime):
    """A builtin-op .tflite in the LiteRT interpreter (ai-edge-litert).

    Args:
        flatbuffer: the .tflite file's bytes.
        num_threads: the interpreter's threads (XNNPack's too).
        kernels: "xnnpack" (LiteRT's default, as apps and MediaPipe run a file), "builtin"
            (TFLite's own optimized kernels, no default delegate) or "reference" (TFLite's
            reference kernels: the integer arithmetic TFLite Micro's kernels implement too).
    """

    KERNELS = {
        "xnnpack": "AUTO",
        "builtin": "BUILTIN_WITHOUT_DEFAULT_DELEGATES",
        "reference": "BUILTIN_REF",
    }

    def __init__(self, flatbuffer, num_threads=1, kernels="xnnpack"):
        from ai_edge_litert.interpreter import Interpreter, OpResolverType

        options = {"experimental_op_resolver_type": getattr(OpResolverType, self.KERNELS[kernels])}
        with quiet_stderr():  # "INFO: Created TensorFlow Lite XNNPACK delegate for CPU."
            self.interpreter = Interpreter(
                model_content=bytes(flatbuffer), num_threads=num_threads, **options
            )
            self.interpreter.allocate_tensors()
        self.threads = num_threads
        self.inputs = self.interpreter.get_input_details()
        self.outputs = _keras_order(self.interpreter)

    def run_one(self, encoded):
        for details, array in zip(self.inputs, encoded):
            self.interpreter.set_tensor(details["index"], array[None])
        self.interpreter.invoke()
        return [self.interpreter.get_tensor(details["index"])[0] for details in self.outputs]


class TFLiteMicro(Runtime):
    """The TFLite Micro interpreter (tflite-micro's Python package: firmware's kernels), which
    runs on one thread.

    Args:
        flatbuffer: the .tflite file's bytes (TFLite Micro runs its subgraph 0 only).
        arena_size: the tensor arena's bytes; None for the package's default.
    """

    def __init__(self, flatbuffer, arena_size=None):
        from tflite_micro import runtime

        with quiet_stderr():
            self.interpreter = runtime.Interpreter.from_bytes(
                bytes(flatbuffer), arena_size=arena_size
            )
        inputs, outputs = io_tensors(flatbuffer)
        self.inputs = [
            _micro_details(self.interpreter.get_input_details(i)) for i in range(len(inputs))
        ]
        self.outputs = [
            _micro_details(self.interpreter.get_output_details(i)) for i in range(len(outputs))
        ]

    def run_one(self, encoded):
        for index, array in enumerate(encoded):
            self.interpreter.set_input(array[None], index)
        self.interpreter.invoke()
        return [self.interpreter.get_output(i)[0] for i in range(len(self.outputs))]


class LCE(Runtime):
    """A flatbuffer with Larq Compute Engine ops, in LCE's interpreter (on x86 its portable
    kernels, on aarch64 its optimized ones).

    Args:
        flatbuffer: the .tflite file's bytes.
        num_threads: the interpreter's threads.
        use_indirect_bgemm: run LceBconv2d with LCE's indirect BGEMM kernel instead of its
            default one.
    """

    def __init__(self, flatbuffer, num_threads=1, use_indirect_bgemm=False):
        import larq_compute_engine

        self.interpreter = larq_compute_engine.testing.Interpreter(
            bytes(flatbuffer), num_threads=num_threads, use_indirect_bgemm=use_indirect_bgemm
        )
        self.threads = num_threads
        lce = self.interpreter
        self.inputs = [
            _lce_details(*d)
            for d in zip(lce.input_types, lce.input_shapes, lce.input_scales, lce.input_zero_points)
        ]
        self.outputs = [
            _lce_details(*d)
            for d in zip(
                lce.output_types, lce.output_shapes, lce.output_scales, lce.output_zero_points
            )
        ]

    def run_one(self, encoded):
        outputs = self.interpreter.interpreter.predict([array[None] for array in encoded])
        return [output[0] for output in outputs]


def runner(flatbuffer, runtime=None, *, num_threads=1):
    """The runner for `flatbuffer`: LCE when it holds LCE ops, else `runtime`.

    Args:
        flatbuffer: the .tflite file's bytes.
        runtime: "litert" (the default for builtin-op files), "tflm" or "lce".
        num_threads: threads for LiteRT and LCE (TFLite Micro runs on one).

    Returns:
        A `Runtime`: `LiteRT`, `TFLiteMicro` or `LCE`.

    Raises:
        InputError: `runtime` is unknown, or the file holds LCE ops and `runtime` is not "lce".
    """
    has_lce_ops = any(op.type.startswith("Lce") for op in operators(flatbuffer))
    runtime = runtime or ("lce" if has_lce_ops else "litert")
    if runtime not in RUNTIMES:
        raise InputError(f"unknown runtime {runtime!r}; choose from {', '.join(RUNTIMES)}")
    if has_lce_ops and runtime != "lce":
        raise InputError(
            f"this file holds Larq Compute Engine ops, which only LCE runs, not "
            f"{runtime}; use runtime 'lce'"
        )
    if runtime == "tflm":
        return TFLiteMicro(flatbuffer)
    if runtime == "mediapipe":
        return MediaPipe(flatbuffer)
    return {"litert": LiteRT, "lce": LCE}[runtime](flatbuffer, num_threads=num_threads)


class MediaPipe(Runtime):
    """An app's .tflite in MediaPipe Tasks' ImageClassifier, default options (all categories).

    MediaPipe reads what it needs from the file's TFLite Metadata (normalisation, labels) and
    feeds 1 x H x W x 3 RGB pixels; `run_one` takes one uint8 RGB image (a one-channel image is
    copied to RGB) and returns the categories' scores by class index, and `category_names`
    holds the names MediaPipe gave them.

    Args:
        flatbuffer: the .tflite file's bytes (with TFLite Metadata).
    """

    def __init__(self, flatbuffer, num_threads=1):
        del num_threads  # MediaPipe picks its own
        from mediapipe.tasks.python import vision
        from mediapipe.tasks.python.core.base_options import BaseOptions

        inputs, outputs = io_tensors(flatbuffer)
        try:
            self._classifier = vision.ImageClassifier.create_from_options(
                vision.ImageClassifierOptions(
                    base_options=BaseOptions(model_asset_buffer=bytes(flatbuffer))
                )
            )
        except (RuntimeError, ValueError) as e:
            raise InputError(f"MediaPipe's ImageClassifier refuses this file: {e}") from None
        self.inputs = [{"dtype": np.uint8, "shape": inputs[0].shape, "quantization": (0.0, 0)}]
        self.outputs = [{"dtype": np.float32, "shape": outputs[0].shape, "quantization": (0.0, 0)}]
        self.category_names = [None] * outputs[0].shape[-1]

    def encode(self, arrays):
        from effkeras.graph.passes import to_rgb

        return [np.ascontiguousarray(to_rgb(quantize(arrays[0], 1.0, 0, np.uint8)))]

    def run_one(self, encoded):
        import mediapipe as mp

        result = self._classifier.classify(
            mp.Image(image_format=mp.ImageFormat.SRGB, data=encoded[0])
        )
        scores = np.zeros(len(self.category_names), np.float32)
        for category in result.classifications[0].categories:
            scores[category.index] = category.score
            self.category_names[category.index] = category.category_name
        return [scores]

    def close(self):
        """Releases MediaPipe's graph."""
        self._classifier.close()


def _micro_details(details):
    parameters = details.get("quantization_parameters") or {}
    scales, zero_points = parameters.get("scales"), parameters.get("zero_points")
    quantization = (
        (float(scales[0]), int(zero_points[0])) if scales is not None and len(scales) else (0.0, 0)
    )
    return {"dtype": details["dtype"], "shape": details["shape"], "quantization": quantization}


def _lce_details(dtype, shape, scale, zero_point):
    """LCE's per-tensor properties as the details dict of the other runtimes."""
    scale = scale[0] if isinstance(scale, (list, tuple)) and len(scale) == 1 else scale
    if isinstance(zero_point, (list, tuple)) and len(zero_point) == 1:
        zero_point = zero_point[0]
    quantization = (
        (float(scale), int(zero_point or 0))
        if isinstance(scale, (int, float)) and scale
        else (0.0, 0)
    )
    return {"dtype": np.dtype(dtype).type, "shape": np.asarray(shape), "quantization": quantization}


def _quantization(details):
    """(scale, zero point) of a quantized integer tensor; None for any other."""
    scale, zero_point = details["quantization"]
    return (scale, zero_point) if scale and np.issubdtype(details["dtype"], np.integer) else None


def _encode(details, array):
    quantization = _quantization(details)
    if quantization:
        return quantize(array, *quantization, details["dtype"])
    return array.astype(details["dtype"])


def _decode(details, array):
    quantization = _quantization(details)
    if quantization:
        return dequantize(array, *quantization)
    return array.astype(np.float32)


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
    """Mutes fd 2 for the block: TFLite Micro's C++ prints its allocation errors there."""
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
