"""The int8 file of a QAT model (effkeras.qat), and its check in quantization steps.

The converter takes the model's fake-quant ranges as they are: no calibration. The file must
then compute what the Keras model computes, op by op, rounding for rounding, and the check holds
it to that: at every quantization point, on every example of the sample, the file's int8 tensor
is within MAX_LSB steps of that point's scale of what the Keras ops give when fed the file's own
int8 inputs to them (`op_steps`). Fed the file's inputs, because float and integer arithmetic
break a few exact ties differently (TFLite rounds half away from zero, TensorFlow's fake-quant
half up; its fixed-point multipliers are not the float ratios): one code flipped early spreads
through a deep net, so end to end a 30-layer net drifts several output steps while no op is
more than one off. The report gives both: `max_op_lsb` (checked) and `max_lsb`, the outputs'
end-to-end difference. Two things keep the Keras side honest first:
- its biases are snapped to TFLite's int32 grid (qat.snap_biases, on a copy);
- LERP tables (LerpTable, frozen by quantize_model) stay float in the converted file, between
  their two quantization points: int8_tables writes them as exact int8 tables, as for PTQ;
- TFLite's int8 HARD_SWISH is a 16-bit fixed-point approximation, a step or two off the float
  function it replaces on some codes; each QATHardSwish of the copy is frozen to that kernel's
  arithmetic on its grids (qat.freeze_hard_swish), as `apps.train --qat` freezes the model it
  writes, while the converter is handed the float function, which it emits as HARD_SWISH.
"""

import re

import keras
import numpy as np
import tensorflow as tf

from effkeras import qat
from effkeras.deploy import app_file, int8_tables, runtime, verify
from effkeras.deploy.converter import float_ops, to_flatbuffer, top1_agreement
from effkeras.deploy.flatbuffer import op_census, operators
from effkeras.deploy.report import Int8Report
from effkeras.errors import InputError
from effkeras.graph.rewrite import rewrite
from effkeras.layers.qat import QATHardSwish
from effkeras.qat.scheme import is_hard_swish

MAX_LSB = 1  # the file's int8 tensors against the Keras ops, in steps of their scale
OP_CHECK_EXAMPLES = 16  # examples of the sample checked op by op


def convert(
    model,
    *,
    sample=None,
    io="int8",
    input_range=verify.PIXEL_RANGE,
    max_lsb=MAX_LSB,
    max_code_step=int8_tables.MAX_CODE_STEP,
    table_entries=int8_tables.CODES,
    worst_by=None,
):
    """(int8 flatbuffer, Int8Report) of QAT `model` (module docstring); `worst_by` as for
    `op_steps`."""
    never = qat.unobserved(model)
    if never:
        raise InputError(
            f"{len(never)} activation quantizer(s) of {model.name} have no range "
            f"yet ({', '.join(never[:3])}{' ...' if len(never) > 3 else ''}): "
            f"calibrate the QAT model (qat.calibrate) or train it first"
        )
    snapped = keras.models.clone_model(model)
    snapped.set_weights(model.get_weights())
    qat.snap_biases(snapped)
    snapped = reference(snapped)
    export = snapped
    if any(isinstance(layer, QATHardSwish) for layer in snapped.layers):
        export = rewrite(snapped, _float_hard_swish)
    export, probes = int8_tables.named_probes(export)
    flatbuffer = to_flatbuffer(export, lambda converter: _int8(converter, io))
    if io == "uint8":
        flatbuffer = app_file.with_uint8_pixels(flatbuffer)
    tables = int8_tables.Tables()
    if probes:  # LERP tables: the converter leaves them float; write them as int8 tables
        flatbuffer, tables = int8_tables.write_tables(
            flatbuffer, probes, max_code_step, table_entries
        )
    ops = operators(flatbuffer)
    left_float = float_ops(ops)
    if left_float:
        raise InputError(
            f"{len(left_float)} op(s) of QAT model {model.name} stayed float: "
            f"{', '.join(left_float)}; each op needs a quantization point after it"
        )
    if sample is None:
        sample = verify.random_sample(snapped, input_range)
    verify.check_sample(snapped, sample)
    op_lsb, points = op_steps(snapped, flatbuffer, sample[:OP_CHECK_EXAMPLES], worst_by)
    if op_lsb > max_lsb:
        raise RuntimeError(
            f"the int8 file of QAT model {model.name} is {op_lsb:g} steps off the "
            f"Keras ops at a quantization point (allowed: {max_lsb}): the converter "
            f"did not take its quantization points as they are"
        )
    expected = snapped.predict(sample, verbose=0)
    actual = runtime.LiteRT(flatbuffer).predict(sample)
    expected_list = expected if isinstance(expected, list) else [expected]
    actual_list = actual if isinstance(actual, list) else [actual]
    diffs = [float(np.max(np.abs(a - e))) for e, a in zip(expected_list, actual_list)]
    steps = round(
        max(
            diff / quantizer.quantization()[0]
            for diff, quantizer in zip(diffs, qat.output_quantizers(snapped))
        ),
        3,
    )
    largest = max(float(np.max(np.abs(e))) for e in expected_list)
    return flatbuffer, Int8Report(
        target="int8",
        size_bytes=len(flatbuffer),
        op_census=op_census(ops),
        max_abs_diff=max(diffs),
        max_rel_diff=max(diffs) / max(largest, 1e-12),
        samples=verify.batch_size(sample),
        top1_agreement=top1_agreement(expected, actual),
        io=io,
        calibration="QAT ranges (no calibration)",
        qat=True,
        max_lsb=steps,
        max_op_lsb=op_lsb,
        quantization_points=points,
        int8_tables=tables.count,
        table_bytes=tables.table_bytes,
        table_entries=tables.entries,
        table_max_lsb=tables.max_lsb,
    )


def op_steps(model, flatbuffer, sample, worst_by=None):
    """(max steps, quantization points compared): at each FakeQuant call of `model`, |file -
    Keras| in steps of its scale, each Keras op fed the file's own (dequantized) int8 inputs;
    `worst_by` (a dict), when given, gets the max steps of each FakeQuant compared, by name.
    A file tensor is that point's when it alone has its shape, scale and zero point, or alone of
    those is named after the layer the FakeQuant follows (the converter names a fused op's
    output after the layers in it)."""
    import warnings

    from ai_edge_litert.interpreter import Interpreter

    with runtime.quiet_stderr(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "preserve_all_tensors is for debugging": it is
        interpreter = Interpreter(
            model_content=bytes(flatbuffer), experimental_preserve_all_tensors=True
        )
        interpreter.allocate_tensors()
    tensors = [t for t in interpreter.get_tensor_details() if t["quantization"][0]]
    (source,) = interpreter.get_input_details()  # QAT models here take one image input

    found_for = {}  # (quantizer, shape) -> its file tensor (or None), the same every example

    def tensor_of(quantizer, shape):
        key = (quantizer.name, tuple(shape))
        if key not in found_for:
            found_for[key] = _matching_tensor(tensors, quantizer, shape)
        return found_for[key]

    worst, points = 0.0, set()
    for example in np.asarray(sample, np.float32):
        scale, zero_point = source["quantization"]
        interpreter.set_tensor(
            source["index"], runtime.quantize(example[None], scale, zero_point, source["dtype"])
        )
        interpreter.invoke()

        def forced(operation):
            if not isinstance(operation, qat.FakeQuant):
                return operation

            def call(*args, **kwargs):
                y = np.asarray(keras.ops.convert_to_numpy(operation(*args, **kwargs)))
                tensor = tensor_of(operation, y.shape)
                if tensor is None:
                    return y
                t_scale, t_zero = tensor["quantization"]
                codes = interpreter.get_tensor(tensor["index"]).reshape(y.shape)
                value = runtime.dequantize(codes, t_scale, t_zero)
                nonlocal worst
                steps = float(np.max(np.abs(value - y))) / t_scale
                worst = max(worst, steps)
                if worst_by is not None:
                    worst_by[operation.name] = max(worst_by.get(operation.name, 0.0), steps)
                points.add(tensor["index"])
                return value

            return call

        model._run_through_graph(example[None], operation_fn=forced)
    return round(worst, 3), len(points)


def _matching_tensor(tensors, quantizer, shape):
    """The file tensor (LiteRT details) of FakeQuant `quantizer` at `shape`; None if not one.
    A tensor of another shape with as many elements counts where none has the shape (the
    converter folds a RESHAPE into the FULLY_CONNECTED after it)."""
    scale, zero_point = quantizer.quantization()
    quantized = [
        t
        for t in tensors
        if t["quantization"][1] == zero_point and abs(t["quantization"][0] - scale) <= 1e-6 * scale
    ]
    found = [t for t in quantized if tuple(t["shape"]) == tuple(shape)] or [
        t for t in quantized if np.prod(t["shape"]) == np.prod(shape)
    ]
    if len(found) > 1:  # e.g. ReLU6 outputs: range [0, 6] everywhere; the op's name decides
        made_by = re.compile(rf"/{re.escape(quantizer.name.removesuffix('_quant'))}(_\d+)?/")
        found = [t for t in found if made_by.search(t["name"])]
    return found[0] if len(found) == 1 else None


def _int8(converter, io):
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if io == "int8":
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
    elif io == "uint8":
        converter.inference_input_type = tf.uint8


def reference(model):
    """QAT `model` with every hard-swish frozen to TFLite's int8 kernel (qat.freeze_hard_swish):
    what its int8 file computes. A QAT model saved before QATHardSwish existed has Activation
    layers there: they are replaced (in a copy)."""
    if any(is_hard_swish(layer) for layer in model.layers):
        model = rewrite(model, _kernel_hard_swish)
    qat.freeze_hard_swish(model)
    return model


def _kernel_hard_swish(layer, x, graph):
    return QATHardSwish(name=layer.name)(x) if is_hard_swish(layer) else None


def _float_hard_swish(layer, x, graph):
    """The converter is handed the float hard-swish: it emits HARD_SWISH."""
    if isinstance(layer, QATHardSwish):
        return keras.layers.Activation("hard_swish", name=layer.name)(x)
    return None
