"""Exact int8 tables for frozen LERP activations: 256 int8 entries per channel, one per input
code (LERP-PSA, Singh & Bazargan, ACM TRETS 18(2), 2025, DOI 10.1145/3705926: the paper's int8
LUT export, here on TFLite's own quantization).

TFLite's int8 converter cannot quantize the gather form of a `LerpTable` (FLOOR and CAST stay
float), so the int8 target writes each table into the converted file itself:

1. Calibrate. Each gather-form LerpTable is swapped for a `_Probe` named
   `effkeras_int8_probe_<i>x` that computes the same float function as a sum of ReLUs (which
   the converter quantizes fully) and reads its input X with two MULs by constants. Two
   readers keep the converter from folding the first one into the op before it (it folds a
   MUL or ADD by a constant into a single-use FULLY_CONNECTED, so X would become the lerp's
   grid position), and a MUL, unlike a RESHAPE, has a scale of its own (a RESHAPE reading X
   tied X's scale to the wide range of the grid position, a tenth of X's precision). So X and
   the probe's output Y get their int8 scale and zero point from the calibration set as in any
   int8 model.
2. Find. In the int8 file, the probe's ops are those whose output names lie in its name scope
   (and the op writing a model output, which the converter names after the signature, when it
   adds two of their tensors: `_with_output_ops`). X must be their only non-constant input from
   outside, Y their only output read outside; an op whose name mixes the probe's scope with
   another layer's (the converter fused across the boundary), a probe found nowhere, more than
   one X or Y, or X/Y shapes that differ: an error, never a guess.
3. Write. The probe's ops are replaced by CAST(X int8 -> int32), ADD(+ c·256 + 128 per channel,
   over the last axis), GATHER(table, axis 0) -> Y, with the (C·256,) int8 table
   LUT[c, q + 128] = clip(round(f_c((q - zp_X)·s_X) / s_Y) + zp_Y, -128, 127), f_c in float64
   (`LerpTable.function`), rounding half away from zero as TFLite's quantizer does, and the
   table tensor carrying Y's scale and zero point.
4. Check. Every table op is cut out into a file of its own (input (1, 256, C): every code in
   every channel) and run in LiteRT and TFLite Micro: both must give exactly the NumPy table
   lookup (`check_tables`), else RuntimeError.

When is a table ambiguous (an InputError naming the layer)? When an input code does not name one
input value: X not int8, or without exactly one scale and one zero point (per-channel or missing
quantization). And when the input codes are so far apart that the table no longer holds the
learned function: every int8 table rounds the input to its codes (the paper's FPGA tables do
too), but if adjacent codes lie more than `max_code_step` (default MAX_CODE_STEP = 8) grid
segments apart on a channel whose code range reaches the table's inner knots (the step is
s_X·|a_c|·(G-1)/(2R) segments, a_c the folded BN scale), fewer than (G-1)/8, about 8, codes
read the 64-point table: the learned shape between them is gone, and tables that differ there
give the same file. A trained ResMLP-PSA on Fashion-MNIST, calibrated on its training images,
has steps of about 2 segments (its hidden tables read Dense outputs of about ±36).

    probe.py  1. the probe model (calibration)
    write.py  2.-3. find the probes in the int8 file, write the tables
    check.py  4. every table op alone in LiteRT and TFLite Micro
"""

import dataclasses

from effkeras.deploy.int8_tables.check import (
    TableOp,
    all_codes,
    check_tables,
    single_op_file,
    table_ops,
)
from effkeras.deploy.int8_tables.probe import (
    CODES,
    MAX_CODE_STEP,
    PROBE,
    gather_tables,
    probe_model,
)
from effkeras.deploy.int8_tables.write import (
    ENTRIES,
    TABLE65,
    insert_tables,
    lerp65,
    named_probes,
    table_for,
)
from effkeras.errors import InputError

__all__ = [
    "CODES",
    "ENTRIES",
    "MAX_CODE_STEP",
    "PROBE",
    "TableOp",
    "Tables",
    "all_codes",
    "check_tables",
    "gather_tables",
    "insert_tables",
    "lerp65",
    "named_probes",
    "probe_model",
    "quantize",
    "single_op_file",
    "table_for",
    "table_ops",
    "TABLE65",
    "write_tables",
]


@dataclasses.dataclass(frozen=True)
class Tables:
    """What the table rewrite did: `count` tables of `entries` int8 entries per channel,
    `table_bytes` in all, and for 65 entries `max_lsb`, the largest difference of their outputs
    from the exact 256-entry tables', in output steps."""

    count: int = 0
    table_bytes: int = 0
    entries: int = 0
    max_lsb: int = None


def write_tables(flatbuffer, probes, max_code_step=MAX_CODE_STEP, entries=CODES):
    """(`flatbuffer` with each probe's int8 table written, Tables), every table checked in
    LiteRT and TFLite Micro (insert_tables, check_tables)."""
    if not max_code_step > 0:  # NaN too
        raise InputError(
            f"max_code_step must be > 0 (grid segments between adjacent int8 input "
            f"codes), got {max_code_step}"
        )
    flatbuffer = insert_tables(flatbuffer, probes, max_code_step, entries)
    checked, max_lsb = check_tables(flatbuffer, {layer.name: layer for layer in probes.values()})
    if len(checked) != len(probes):
        raise RuntimeError(
            f"the int8 file has {len(checked)} tables for {len(probes)} calls of table layers"
        )
    tables = Tables(len(checked), sum(t.lut.size for t in checked), entries, max_lsb)
    return flatbuffer, tables


def quantize(model, calibration, io, quantize_fn, max_code_step=MAX_CODE_STEP, entries=CODES):
    """(int8 flatbuffer, Tables) of `model`, whose gather LerpTables become int8 tables of
    `entries` (256: exact; 65: interpolated) per channel (module docstring).
    quantize_fn(model, calibration, io) -> int8 flatbuffer: the converter."""
    probed, probes = probe_model(model)
    return write_tables(quantize_fn(probed, calibration, io), probes, max_code_step, entries)
