"""TFLite builtin-op targets, run and checked in LiteRT: `float`, `float16` and `int8`.

Every file is exported from Keras with batch 1 (`converter.export_saved_model`: microcontrollers
and Vela need static shapes) and converted with TensorFlow's TFLite converter.

int8 is full-integer post-training quantization (Jacob et al., CVPR 2018, arXiv 1712.05877):
per-channel symmetric int8 weights, per-tensor asymmetric int8 activations whose ranges come
from a representative (calibration) set, int8 or float input and output (`io`). The check:
- every op runs in int8: an op the converter left in float is named and is an error unless
  `allow_float_fallback` (the file then runs on CPUs, but not on TFLite Micro's int8 kernels or
  the Ethos-U NPU);
- LiteRT's dequantized outputs against Keras's on the sample: `top1_agreement` (share of inputs
  whose argmax agrees) and the max abs/rel diff, which must stay within `max_rel_diff` of the
  largest Keras output (int8 rounding moves outputs by a few percent; a broken conversion or a
  calibration set from the wrong range by far more).
A model with binary or w1a2 layers (1-bit weights: ReCU, ERN, QuickNet, Bi-Real) converts to int8
through binary_int8.py: each binary layer lowered to int8 builtins that compute it exactly, the
rest calibrated as above (as QAT ranges), checked op by op.
Frozen LERP tables (`LerpTable`, deploy.convert's freeze_tables pass) convert as they are for
float and float16 (the "gather" form: builtin GATHER, FLOOR, CAST...; "relu_sum": no GATHER);
for int8 the gather form becomes exact 256-entry int8 tables written into the converted file
(int8_tables.py: CAST, ADD, GATHER per table, each checked bit-exact in LiteRT and TFLite
Micro), and the relu_sum form is quantized like any other op (approximate).
"""

import tempfile

import numpy as np
import tensorflow as tf

from effkeras import qat
from effkeras.deploy import app_file, int8_tables, runtime, verify
from effkeras.deploy.converter import (
    export_saved_model,
    float_ops,
    quantize_saved_model,
    to_flatbuffer,
    top1_agreement,
)
from effkeras.deploy.flatbuffer import op_census, operators
from effkeras.deploy.registry import register_target
from effkeras.deploy.report import Int8Report, TFLiteReport
from effkeras.deploy.verify import PIXEL_RANGE
from effkeras.errors import InputError
from effkeras.graph import one_bit_kernel_layers

MAX_REL_DIFF = {"float": 1e-4, "float16": 2e-2, "int8": 0.25}
CALIBRATION_SAMPLES = 200
# The file's input and output types: int8 in and out (microcontrollers, NPUs); uint8 camera
# pixels in (scale 1, zero point 0) and float out (apps: app_file.py); float in and out.
IO_TYPES = ("int8", "uint8", "float")


def _compare(model, flatbuffer, sample, input_range, max_rel_diff, what, remedy=None):
    """(abs, rel, top-1 agreement) of LiteRT's outputs against Keras's; RuntimeError beyond
    max_rel_diff (after the sensitivity allowance), InputError ending in `remedy` if given."""
    if sample is None:
        sample = verify.random_sample(model, input_range)
    verify.check_sample(model, sample)
    runner = runtime.LiteRT(flatbuffer)
    # A uint8 or int8 input reads the sample rounded to its grid: Keras gets the same values,
    # so that what differs is the file's arithmetic (a resized image has fractional pixels).
    sample = runner.as_read(sample)
    expected = model.predict(sample, verbose=0)
    actual = runner.predict(sample)
    abs_diff, rel_diff, _ = verify.check_agreement(
        expected,
        actual,
        max_rel_diff=max_rel_diff,
        what=what,
        model=model,
        sample=sample,
        input_range=input_range,
        remedy=remedy,
    )
    return abs_diff, rel_diff, top1_agreement(expected, actual), verify.batch_size(sample)


@register_target("float", "float32 TFLite builtins for LiteRT (Android, Linux; XNNPack on CPUs)")
def convert_float(
    model,
    *,
    calibration=None,
    sample=None,
    input_range=PIXEL_RANGE,
    max_rel_diff=MAX_REL_DIFF["float"],
):
    del calibration  # not quantized
    flatbuffer = to_flatbuffer(model)
    return flatbuffer, _report("float", model, flatbuffer, sample, input_range, max_rel_diff)


@register_target(
    "float16", "float16 weights, float32 compute (half the file; GPU delegates run it in float16)"
)
def convert_float16(
    model,
    *,
    calibration=None,
    sample=None,
    input_range=PIXEL_RANGE,
    max_rel_diff=MAX_REL_DIFF["float16"],
):
    del calibration

    def configure(converter):
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]

    flatbuffer = to_flatbuffer(model, configure)
    return flatbuffer, _report("float16", model, flatbuffer, sample, input_range, max_rel_diff)


def _report(target, model, flatbuffer, sample, input_range, max_rel_diff):
    abs_diff, rel_diff, agreement, count = _compare(
        model, flatbuffer, sample, input_range, max_rel_diff, f"{target} TFLite file"
    )
    return TFLiteReport(
        target=target,
        size_bytes=len(flatbuffer),
        op_census=op_census(operators(flatbuffer)),
        max_abs_diff=abs_diff,
        max_rel_diff=rel_diff,
        samples=count,
        top1_agreement=agreement,
    )


@register_target(
    "int8",
    "full-integer int8 TFLite (post-training quantization on a "
    "calibration set): LiteRT, TFLite Micro, NPUs",
    quantizes=True,
)
def convert_int8(
    model,
    *,
    calibration=None,
    sample=None,
    io="int8",
    allow_float_fallback=False,
    input_range=PIXEL_RANGE,
    max_rel_diff=MAX_REL_DIFF["int8"],
    calibration_samples=CALIBRATION_SAMPLES,
    calibration_source=None,
    max_code_step=int8_tables.MAX_CODE_STEP,
    table_entries=int8_tables.CODES,
):
    """(int8 flatbuffer, Int8Report) of a float Keras model (module docstring).

    calibration: images (N, H, W, C) in `input_range` (the training split of the dataset the
    model was trained on); None: `calibration_samples` uniform random images, which suits random
    weights (benchmarks) only. calibration_source: how to name it in the report.
    table_entries: int8 entries per channel of a LERP table: 256 (exact) or 65 (interpolated,
    int8_tables.lerp65).
    max_code_step: the most grid segments between adjacent int8 input codes of a LERP table
    (int8_tables.py: beyond it a table is ambiguous, an InputError).
    """
    if io not in IO_TYPES:
        raise InputError(f"unknown io type {io!r}; choose from {', '.join(IO_TYPES)}")
    if qat.is_qat_model(model):
        from effkeras.deploy import binary_int8, int8_qat

        # a binary net's QAT model: its steps frozen and checked exact first
        qat_convert = (
            binary_int8.convert_qat if binary_int8.is_binary_qat(model) else int8_qat.convert
        )
        return qat_convert(
            model,
            sample=sample,
            io=io,
            input_range=input_range,
            max_code_step=max_code_step,
            table_entries=table_entries,
        )
    if calibration is None:
        calibration = verify.random_sample(model, input_range, calibration_samples, seed=2)
        calibration_source = f"{calibration_samples} random inputs in {list(input_range)}"
    verify.check_sample(model, calibration, "calibration set")
    arrays = calibration if isinstance(calibration, (list, tuple)) else [calibration]
    arrays = [np.asarray(a, np.float32) for a in arrays]
    if one_bit_kernel_layers(model):
        from effkeras.deploy import binary_int8

        return binary_int8.convert(
            model,
            arrays[0],
            calibration_source or f"{len(arrays[0])} given inputs",
            sample=sample,
            io=io,
            input_range=input_range,
            max_code_step=max_code_step,
            table_entries=table_entries,
        )

    tables = int8_tables.Tables()
    if int8_tables.gather_tables(model):
        flatbuffer, tables = int8_tables.quantize(
            model, arrays, io, _quantize, max_code_step, table_entries
        )
    else:
        flatbuffer = _quantize(model, arrays, io)
    ops = operators(flatbuffer)
    left_float = float_ops(ops)
    if left_float and not allow_float_fallback:
        raise InputError(
            f"{len(left_float)} op(s) of {model.name} stayed float in the int8 file: "
            f"{', '.join(left_float)}. TFLite has no int8 kernel for them; replace those layers "
            f"(e.g. an activation with ReLU/ReLU6/hard-swish), or pass --allow_float_fallback "
            f"to keep them float (then the file does not run on int8-only TFLite Micro or NPUs)"
        )
    abs_diff, rel_diff, agreement, count = _compare(
        model,
        flatbuffer,
        sample,
        input_range,
        max_rel_diff,
        "int8 TFLite file",
        remedy=(
            f"Post-training quantization does not hold {model.name} with ranges from these "
            f"{len(arrays[0])} calibration inputs (their min and max: fewer clip what the "
            f"sample reaches, more coarsen every step). Calibrate on another set "
            f"(--calibration_samples, --calibration_data), or train the model with int8 QAT "
            f"(apps.train --qat --init_from=MODEL.keras): a QAT model's file computes what the "
            f"model computes"
        ),
    )
    return flatbuffer, Int8Report(
        target="int8",
        size_bytes=len(flatbuffer),
        op_census=op_census(ops),
        max_abs_diff=abs_diff,
        max_rel_diff=rel_diff,
        samples=count,
        top1_agreement=agreement,
        io=io,
        calibration=calibration_source or f"{len(arrays[0])} given inputs",
        float_ops=tuple(left_float),
        int8_tables=tables.count,
        table_bytes=tables.table_bytes,
        table_entries=tables.entries,
        table_max_lsb=tables.max_lsb,
    )


def _quantize(model, calibration, io):
    """The int8 flatbuffer of `model`, quantized in a child process (quantize_worker.py)."""
    with tempfile.TemporaryDirectory() as directory:
        export_saved_model(model, directory)
        flatbuffer = quantize_saved_model(
            directory, calibration, io, model.name, lambda: to_flatbuffer(model)
        )
    return app_file.with_uint8_pixels(flatbuffer) if io == "uint8" else flatbuffer


def int8_file(model, target, *, calibration=None, sample=None, **int8_options):
    """(int8 flatbuffer, Int8Report) for a target that runs int8 only (tflm, ethos-u*): a Keras
    model converted by `convert_int8`, or the bytes of an int8 .tflite as given; either way
    checked to compute in int8 throughout (`check_int8_file`)."""
    if isinstance(model, (bytes, bytearray)):
        flatbuffer = app_file.without_app_head(bytes(model))  # an app's file: its int8 core
        ops = check_int8_file(flatbuffer, target)
        return flatbuffer, Int8Report(
            target="int8",
            size_bytes=len(flatbuffer),
            op_census=op_census(ops),
            max_abs_diff=None,
            max_rel_diff=None,
            samples=0,
            calibration="(given file)",
        )
    flatbuffer, report = convert_int8(model, calibration=calibration, sample=sample, **int8_options)
    check_int8_file(flatbuffer, target)  # float ops kept by allow_float_fallback are refused
    return flatbuffer, report


def check_int8_file(flatbuffer, target):
    """InputError unless `flatbuffer` is a builtin-op int8 file that `target` can take."""
    ops = operators(flatbuffer)
    lce = sorted({op.type for op in ops if op.type.startswith("Lce")})
    if lce:
        raise InputError(
            f"this file holds Larq Compute Engine ops ({', '.join(lce)}), which only "
            f"LCE on ARM CPUs runs; {target} needs an int8 TFLite file: convert the "
            f"Keras model with --target=int8 (binary models deploy with --target=arm)"
        )
    if target.startswith("ethos-u") and any(
        t.dtype == "int4" for op in ops for t in op.inputs
    ):  # Vela 5.2 dies of a floating point exception on them
        raise InputError(
            f"this file packs weights INT4 (a tflm file); Vela takes int8 weights: give "
            f"{target} the int8 file written beside it (<stem>_int8.tflite)"
        )
    left_float = float_ops(ops)
    if left_float:
        raise InputError(
            f"{target} runs int8 files only, and this one computes in float: "
            f"{', '.join(left_float[:5])}{' ...' if len(left_float) > 5 else ''}; "
            f"convert the Keras model with --target=int8"
        )
    return ops
