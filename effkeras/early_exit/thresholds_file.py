"""The thresholds file: one operating point of an early-exit network, as JSON.

apps.evaluate --early_exit=budgeted --thresholds_out writes it (`write_thresholds`), and
`Runner.save_thresholds` does for thresholds calibrated on a converted file; apps.convert
--thresholds, `Runner` and evaluation read it with `load_thresholds`, which also takes the
thresholds as K numbers or as the record's dict.
"""

import json
import math
import os

import numpy as np

from effkeras.early_exit.exits import LAST, NEVER
from effkeras.errors import InputError
from effkeras.fileio import write_json

THRESHOLD_KEYS = (
    "model",
    "num_exits",
    "thresholds",
    "exit_flops",
    "expected_flops",
    "exit_fractions",
)
MAX_THRESHOLDS_BYTES = 1 << 20  # a thresholds file is a few hundred bytes


def write_thresholds(path, record):
    """Writes a thresholds record, checked as `load_thresholds` checks it, as JSON.

    Args:
        path: the file to write (atomically).
        record: {"model": name, "num_exits": K, "thresholds": [t_1..t_K] (exit k answers when
            its largest softmax probability >= t_k; t_K = 0.0; NEVER, 1e8, for an exit nobody
            takes), "exit_flops": [cumulative FLOPs per exit], "expected_flops": average FLOPs
            per image, "exit_fractions": [fraction of images answered at each exit]}; other
            keys are not written.

    Raises:
        InputError: the record is not a valid thresholds record.
    """
    _check_record(record, record.get("num_exits"), path)
    write_json(path, {key: record[key] for key in THRESHOLD_KEYS})


def load_thresholds(source, num_exits, exit_flops=None):
    """Thresholds for a model with `num_exits` exits, checked.

    Args:
        source: a thresholds file (a path, see `write_thresholds`), a dict with "thresholds"
            (and optionally "num_exits", "exit_fractions"), or K numbers.
        num_exits: K, the model's number of exits.
        exit_flops: the model's cumulative FLOPs per exit; a file calibrated for exits costing
            otherwise is refused (the same number of exits is not yet the same model).

    Returns:
        A file: its record (the keys of THRESHOLD_KEYS). Otherwise: the dict given (or
        {"thresholds": ...}) with "num_exits", "thresholds" as K floats and "exit_fractions"
        as K floats or None. The last exit always answers, whatever its threshold.

    Raises:
        InputError (one line): a file that cannot be read, is malformed or is not for this
            model; thresholds that are not K finite numbers >= 0.
    """
    if isinstance(source, (str, os.PathLike)):
        return _load_file(os.fspath(source), num_exits, exit_flops)
    loaded = dict(source) if isinstance(source, dict) else {"thresholds": source}
    declared = loaded.get("num_exits", num_exits)
    values, fractions = loaded.get("thresholds"), loaded.get("exit_fractions")
    if (
        declared != num_exits
        or not isinstance(values, (list, tuple, np.ndarray))
        or len(values) != num_exits
    ):
        got = (
            declared
            if declared != num_exits
            else (len(values) if isinstance(values, (list, tuple, np.ndarray)) else values)
        )
        raise InputError(
            f"the thresholds are for {got} exits, and the model has {num_exits}: "
            f"give {num_exits} numbers, or calibrate thresholds for this model"
        )
    try:
        values = [float(v) for v in values]
    except (TypeError, ValueError):
        raise InputError(f"thresholds must be numbers, got {list(values)}") from None
    if not all(math.isfinite(v) and v >= 0 for v in values):
        raise InputError(
            f"thresholds must be finite numbers >= 0 (softmax maxima; "
            f"{NEVER:g} for an exit nobody takes), got {values}"
        )
    if fractions is not None and len(fractions) != num_exits:
        raise InputError(f"{len(fractions)} exit fractions given for {num_exits} exits")
    return {
        **loaded,
        "num_exits": num_exits,
        "thresholds": values,
        "exit_fractions": None if fractions is None else [float(f) for f in fractions],
    }


def _load_file(path, num_exits, exit_flops):
    """The thresholds record in `path`, or InputError in one line when it cannot be read, is
    malformed or is not for a model with `num_exits` exits (and, given, these cumulative
    `exit_flops`)."""
    try:
        if os.path.getsize(path) > MAX_THRESHOLDS_BYTES:
            raise InputError(
                f"{path} is larger than {MAX_THRESHOLDS_BYTES:,} bytes: not a thresholds file"
            )
        with open(path, encoding="utf-8") as f:
            record = json.load(f, parse_constant=_refuse_constant)
    except (OSError, UnicodeDecodeError, ValueError) as e:
        if isinstance(e, InputError):
            raise
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e).splitlines()[0]
        raise InputError(f"cannot read thresholds file {path}: {reason}") from None
    _check_record(record, num_exits, path)
    if exit_flops is not None and [int(f) for f in exit_flops] != record["exit_flops"]:
        raise InputError(
            f"{path} was calibrated for exits costing {record['exit_flops']} FLOPs "
            f"but this model's cost {[int(f) for f in exit_flops]}; calibrate "
            f"thresholds for this model"
        )
    return {key: record[key] for key in THRESHOLD_KEYS}


def _refuse_constant(name):
    raise ValueError(f"{name} is not a number JSON allows")


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_record(record, num_exits, path):
    def bad(message):
        raise InputError(
            f"{path} is not a valid early-exit thresholds file: {message}; write "
            f"one with apps.evaluate --early_exit=budgeted --thresholds_out"
        )

    if not isinstance(record, dict):
        bad("expected a JSON object")
    missing = [key for key in THRESHOLD_KEYS if key not in record]
    if missing:
        bad(f"missing {', '.join(missing)}")
    if not isinstance(record["model"], str):
        bad("model must be a string")
    count = record["num_exits"]
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        bad(f"num_exits must be a positive integer, got {count!r}")
    if count != num_exits:
        raise InputError(
            f"{path} holds thresholds for {count} exits but the model has "
            f"{num_exits}; calibrate thresholds for this model (apps.evaluate "
            f"--early_exit=budgeted --thresholds_out)"
        )
    for key in ("thresholds", "exit_flops", "exit_fractions"):
        values = record[key]
        if not isinstance(values, list) or len(values) != count:
            bad(f"{key} must be a list of num_exits={count} numbers")
        if not all(_is_number(v) and v >= 0 for v in values):
            bad(f"{key} must hold finite numbers >= 0")
    if record["thresholds"][-1] != LAST:
        bad(
            f"the last threshold must be {LAST} so that the last exit always answers, got "
            f"{record['thresholds'][-1]}"
        )
    if any(b < a for a, b in zip(record["exit_flops"], record["exit_flops"][1:])):
        bad("exit_flops must be cumulative (non-decreasing)")
    if not math.isclose(sum(record["exit_fractions"]), 1.0, abs_tol=1e-6):
        bad(f"exit_fractions must add up to 1, got {sum(record['exit_fractions'])}")
    if not (_is_number(record["expected_flops"]) and record["expected_flops"] >= 0):
        bad("expected_flops must be a finite number >= 0")
