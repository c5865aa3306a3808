"""TensorFlow's TFLite converter, as every builtin-op target uses it.

Export a Keras model as a SavedModel with batch-1 inputs (microcontrollers and Vela need static
shapes), convert it (float, or int8 post-training quantization in a child process that a
crashing quantizer cannot take down: quantize_worker.py), name the ops a file left in float, and
compare argmaxes. The targets (tflite.py, tflm.py, ethos_u.py), the QAT path (int8_qat.py) and
the early-exit stages import it; it imports no target.
"""

import os
import subprocess
import sys
import tempfile

import numpy as np
import tensorflow as tf

from effkeras.deploy import runtime, verify
from effkeras.deploy.flatbuffer import operators
from effkeras.errors import InputError

# Builtin ops with int8 kernels in TFLite (its op versions and TFLite Micro's int8 kernels):
# only used to name the suspects when the quantizer crashes.
INT8_OPS = (
    "ABS",
    "ADD",
    "ARG_MAX",
    "ARG_MIN",
    "AVERAGE_POOL_2D",
    "BATCH_MATMUL",
    "BATCH_TO_SPACE_ND",
    "CONCATENATION",
    "CONV_2D",
    "DEPTH_TO_SPACE",
    "DEPTHWISE_CONV_2D",
    "DEQUANTIZE",
    "ELU",
    "EXPAND_DIMS",
    "FULLY_CONNECTED",
    "GATHER",
    "GELU",
    "HARD_SWISH",
    "L2_NORMALIZATION",
    "LEAKY_RELU",
    "LOGISTIC",
    "LOG_SOFTMAX",
    "MAXIMUM",
    "MAX_POOL_2D",
    "MEAN",
    "MINIMUM",
    "MIRROR_PAD",
    "MUL",
    "PACK",
    "PAD",
    "PADV2",
    "PRELU",
    "QUANTIZE",
    "REDUCE_MAX",
    "REDUCE_MIN",
    "RELU",
    "RELU6",
    "RELU_N1_TO_1",
    "RESHAPE",
    "RESIZE_BILINEAR",
    "RESIZE_NEAREST_NEIGHBOR",
    "SELECT_V2",
    "SHAPE",
    "SLICE",
    "SOFTMAX",
    "SPACE_TO_BATCH_ND",
    "SPACE_TO_DEPTH",
    "SPLIT",
    "SPLIT_V",
    "SQUARED_DIFFERENCE",
    "SQUEEZE",
    "STRIDED_SLICE",
    "SUB",
    "SUM",
    "TANH",
    "TRANSPOSE",
    "TRANSPOSE_CONV",
    "UNPACK",
)
# Ops whose float side is the file's float interface (io="float"), not a float computation.
_INTERFACE_OPS = ("QUANTIZE", "DEQUANTIZE")


def save_signatures(directory, layers, signatures):
    """Writes a SavedModel holding the variables of `layers` and one signature per entry of
    `signatures`, each traced once.

    Keras's `model.export` traces each call about ten times and tracks every layer's resources;
    this writes only what the converters read (measured on ran_e_c at 32x32: 2.7 s to write and
    3.8 s for the TFLite converter to load, against 7.4 s and 6.2 s).

    Args:
        directory: where the SavedModel goes.
        layers: the Keras layers (models) whose variables the signatures read.
        signatures: {signature key: (function, specs)}; `function(*tensors)` is traced at the
            `tf.TensorSpec`s `specs`, whose names become the signature's input names.
    """
    module = tf.Module()
    module.keras_variables = list(
        {id(v): v.value for layer in layers for v in layer.variables}.values()
    )
    concrete = {
        key: tf.function(function).get_concrete_function(*specs)
        for key, (function, specs) in signatures.items()
    }
    tf.saved_model.save(module, directory, signatures=concrete)


def export_saved_model(model, directory, batch=1):
    """`model` as a SavedModel whose `serving_default` signature takes float32 inputs of batch
    `batch` (None: any batch)."""
    verify.input_shapes(model)  # fixed shapes, or one clear error
    specs = [
        tf.TensorSpec((batch, *tensor.shape[1:]), tf.float32, name=tensor.name)
        for tensor in model.inputs
    ]

    def serve(*inputs):
        return model(inputs[0] if len(inputs) == 1 else list(inputs), training=False)

    save_signatures(directory, [model], {"serving_default": (serve, specs)})


def to_flatbuffer(model, configure=None):
    """Exports `model` and converts it; `configure(converter)` sets the converter's options."""
    with tempfile.TemporaryDirectory() as directory:
        export_saved_model(model, directory)
        return convert_saved_model(directory, model.name, configure)


def convert_saved_model(directory, name, configure=None, signature_keys=None):
    """The flatbuffer of a SavedModel (its `signature_keys`, one subgraph each; default: the
    serving signature); `configure(converter)` sets the converter's options."""
    converter = tf.lite.TFLiteConverter.from_saved_model(directory, signature_keys=signature_keys)
    if configure is not None:
        configure(converter)
    try:
        with runtime.quiet_stderr():  # the MLIR converter logs to fd 2
            return converter.convert()
    except Exception as e:  # ConverterError and friends: the first line says what failed
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise InputError(f"the TFLite converter failed on {name}: {first}") from None


def top1_agreement(expected, actual):
    """Share of (input, output) pairs whose argmax agrees."""
    expected = expected if isinstance(expected, (list, tuple)) else [expected]
    actual = actual if isinstance(actual, (list, tuple)) else [actual]
    same = [np.argmax(e, axis=-1) == np.argmax(a, axis=-1) for e, a in zip(expected, actual)]
    return float(np.mean(np.concatenate([s.ravel() for s in same])))


def quantize_saved_model(saved_model, calibration, io, name, float_flatbuffer, signature_keys=None):
    """The int8 flatbuffer of a SavedModel, quantized in a child process (quantize_worker.py).

    calibration: a list of arrays, one per input of the serving signature; with
    `signature_keys` (one subgraph per signature), {signature: {input name: array}} with the
    same number of examples everywhere. float_flatbuffer: a function returning the float file,
    whose ops name the suspects when the quantizer crashes."""
    worker = os.path.join(os.path.dirname(os.path.abspath(__file__)), "quantize_worker.py")
    with tempfile.TemporaryDirectory() as directory:
        arrays = os.path.join(directory, "calibration.npz")
        if signature_keys:
            np.savez(
                arrays,
                **{
                    f"{key}/{input_name}": array
                    for key in signature_keys
                    for input_name, array in calibration[key].items()
                },
            )
        else:
            np.savez(arrays, *calibration)
        output = os.path.join(directory, "int8.tflite")
        command = [sys.executable, worker, saved_model, arrays, io, output]
        run = subprocess.run(
            command + ([",".join(signature_keys)] if signature_keys else []),
            capture_output=True,
            text=True,
        )
        if run.returncode == 0:
            with open(output, "rb") as f:
                return f.read()
    if run.returncode < 0:  # killed by a signal: the quantizer crashed
        suspects = sorted({op.type for op in operators(float_flatbuffer())} - set(INT8_OPS))
        raise InputError(
            f"TensorFlow's int8 quantizer crashed on {name} (signal {-run.returncode}), as "
            f"it does on ops without an int8 kernel; ops of this model TFLite has no int8 "
            f"kernel for: {', '.join(suspects) or 'none known'}. Replace those layers (e.g. an "
            f"activation with ReLU/ReLU6/hard-swish) or deploy with --target=float"
        )
    lines = run.stderr.strip().splitlines()
    raise InputError(
        f"the TFLite converter failed to quantize {name}: "
        f"{lines[-1] if lines else 'exit code ' + str(run.returncode)}"
    )


def float_ops(ops):
    """'TYPE (output tensor)' of every op computing in float (the float io interface aside)."""
    found = []
    for op in ops:
        if op.type in _INTERFACE_OPS:
            continue
        if any(t.dtype.startswith("float") for t in (*op.inputs, *op.outputs)):
            found.append(f"{op.type} ({op.outputs[0].name if op.outputs else '?'})")
    return found
