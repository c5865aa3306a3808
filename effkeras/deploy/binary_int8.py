"""int8 files of binary and w1a2 nets (ReCU, ERN, QuickNet, Bi-Real, imported Larq Zoo nets).

Binary layers become TFLite int8 builtins that compute them exactly (graph.passes.binary_int8:
an `Int8Step` for the input quantizer, ±127 weight codes), the rest quantizes as every int8
file does: the lowered model is made a QAT model (effkeras.qat) whose activation ranges are
calibrated on the calibration images (post-training quantization's ranges), the steps are
frozen on their input grids, and int8_qat converts it with exactly those ranges and checks it
op by op. The checks, on the sample:
- every step's output codes equal the Keras quantizer's on the file's own input codes (0 steps
  off: `exact_steps` of them compared), every other quantization point within int8_qat's
  MAX_LSB (the binary layers' outputs included: their accumulators are exact, their
  requantization rounds);
- end to end, `top1_agreement` and the max difference against the original binary Keras model.

A QAT model of a binary net (`apps.train --qat --init_from=BINARY.keras`: the same lowered
model, trained with its quantization points) converts the same way with its trained ranges
(`convert_qat`), its end-to-end numbers against itself: the Keras model that computes what the
file computes, where the calibrated file of a binary net flips signs the float net leaves near
zero.

TFLite Micro has no weight compression, but it runs INT4 weights (two per byte, unpacked op by
op into its scratch memory): `pack_int4` stores the binary layers' weights as codes ±7, at
half the flash of int8 (the tflm target's `int4_weights` option).
"""

import dataclasses

import numpy as np

from effkeras import qat
from effkeras.deploy import flatbuffer as files
from effkeras.deploy import int8_qat, int8_tables, runtime, verify
from effkeras.deploy.converter import top1_agreement
from effkeras.layers.int8_step import Int8Step


def convert(
    model,
    calibration,
    calibration_source,
    *,
    sample,
    io,
    input_range,
    max_code_step,
    table_entries=int8_tables.CODES,
):
    """(int8 flatbuffer, Int8Report) of a model with binary layers (module docstring).

    Args:
        model: a functional keras.Model with 1-bit-weight layers.
        calibration: float32 images (N, H, W, C) in `input_range`.
        calibration_source: how the report names them.
        sample: images to check on, or None (random images in `input_range`).
        io: "int8" or "float", the file's input and output type.
        input_range: (low, high) of the model's input.
        max_code_step, table_entries: as for int8 LERP tables (int8_tables.py).

    Returns:
        A tuple (flatbuffer bytes, Int8Report).

    Raises:
        InputError: for a binary layer that cannot be lowered (graph.passes.binary_int8), or a
            layer the QAT policy refuses.
        RuntimeError: if a step of the file is off the Keras quantizer on one code, or another
            quantization point more than int8_qat.MAX_LSB steps off.
    """
    quantized = qat.quantize_model(model, calibration, check=False)  # lowers the binary layers
    flatbuffer, report = convert_qat(
        quantized,
        reference=model,
        sample=sample,
        io=io,
        input_range=input_range,
        max_code_step=max_code_step,
        table_entries=table_entries,
    )
    return flatbuffer, dataclasses.replace(
        report, calibration=f"{calibration_source} (QAT ranges of the lowered model)"
    )


def convert_qat(quantized, *, reference=None, sample=None, io, input_range, **int8_options):
    """(int8 flatbuffer, Int8Report) of a QAT model of a binary net (qat.quantize_model of
    one, trained or calibrated): its steps frozen on their input grids, converted and checked
    as `convert` says, the end-to-end numbers against `reference` (None: `quantized` itself,
    the Keras model a QAT run trained).

    Raises:
        RuntimeError: as for `convert`.
    """
    qat.freeze_steps(quantized)
    reference = quantized if reference is None else reference
    if sample is None:
        sample = verify.random_sample(quantized, input_range)
    worst_by = {}
    flatbuffer, report = int8_qat.convert(
        quantized, sample=sample, io=io, input_range=input_range, worst_by=worst_by, **int8_options
    )
    steps = [f"{layer.name}_quant" for layer in quantized.layers if isinstance(layer, Int8Step)]
    unchecked = [name for name in steps if name not in worst_by]
    off = {name: worst_by[name] for name in steps if worst_by.get(name)}
    if unchecked or off:
        raise RuntimeError(
            f"the int8 steps of {reference.name} are not exact: "
            + (f"off the Keras quantizer at {off}; " if off else "")
            + (f"no file tensor found for {unchecked}" if unchecked else "")
        )
    expected = reference.predict(sample, verbose=0)
    actual = runtime.LiteRT(flatbuffer).predict(sample)
    abs_diff, rel_diff = verify.max_diffs(expected, actual)
    return flatbuffer, dataclasses.replace(
        report,
        max_abs_diff=abs_diff,
        max_rel_diff=rel_diff,
        top1_agreement=top1_agreement(expected, actual),
        binary_layers=sum(getattr(layer, "fixed_kernel", False) for layer in quantized.layers),
        exact_steps=len(steps),
    )


def is_binary_qat(model):
    """Whether QAT `model` holds lowered binary layers (int8 steps)."""
    return any(isinstance(layer, Int8Step) for layer in model.layers)


def is_binary_weights(codes):
    """Whether int8 weight codes are a lowered binary layer's: all ±127, not all +127 (an
    input step's weights, graph.passes.binary_int8)."""
    codes = np.asarray(codes)
    return bool(codes.size) and np.all(np.abs(codes) == 127) and not np.all(codes == 127)


INT4_CODE = 7  # the largest int4 code: the finest bias grid INT4 weights allow
# The ops whose INT4 weights TFLite Micro and LiteRT run (tests run all three in both).
INT4_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")


def pack_int4(flatbuffer):
    """The int8 file with each binary layer's weights stored as INT4 codes ±7, two per byte.

    A binary layer's weights are codes ±127 at a per-channel scale s (graph.passes.binary_int8);
    as ±7 at scale 127·s/7 they are the same values, and its accumulator the same sum times
    7/127, exactly. Its requantization is not: its multiplier and its int32 bias (rounded to the
    new units) differ from the int8 file's in their last bits, enough to round a value that
    lies within a hair of a half step the other way, and in a binary net one such step at a
    sign cascades. The packed file agrees with Keras as closely as the int8 file does, but not
    bit for bit with it (tflm.py reports the top-1 agreement of the two).

    Args:
        flatbuffer: bytes of an int8 file (binary_int8.convert or convert_qat).

    Returns:
        (bytes of the packed file, the number of weight tensors packed); the file itself when
        it has none.
    """
    model = files.read_model(flatbuffer)
    packed = 0
    for subgraph in model.subgraphs:
        done = set()
        for op in subgraph.operators:
            if files.builtin_name(model.operatorCodes[op.opcodeIndex]) not in INT4_OPS:
                continue
            weights = subgraph.tensors[op.inputs[1]]
            if op.inputs[1] in done or weights.type != files.schema.TensorType.INT8:
                continue
            codes = np.asarray(model.buffers[weights.buffer].data, np.uint8).view(np.int8)
            if not is_binary_weights(codes):
                continue
            done.add(op.inputs[1])
            nibbles = (np.sign(codes) * INT4_CODE).astype(np.int8).view(np.uint8) & 0xF
            nibbles = np.append(nibbles, np.zeros(nibbles.size % 2, np.uint8))
            weights.buffer = files.add_buffer(model, (nibbles[0::2] | nibbles[1::2] << 4).tobytes())
            weights.type = files.schema.TensorType.INT4
            _rescale(weights.quantization, 127 / INT4_CODE)
            if len(op.inputs) > 2 and op.inputs[2] >= 0:
                bias = subgraph.tensors[op.inputs[2]]
                values = np.asarray(model.buffers[bias.buffer].data, np.uint8).view(np.int32)
                rounded = np.round(values.astype(np.float64) * INT4_CODE / 127).astype(np.int32)
                bias.buffer = files.add_buffer(model, rounded.tobytes())
                _rescale(bias.quantization, 127 / INT4_CODE)
            packed += 1
    if not packed:
        return flatbuffer, 0
    files.compact(model)
    return files.pack_model(model), packed


def _rescale(quantization, factor):
    quantization.scale = [float(scale) * factor for scale in quantization.scale]
