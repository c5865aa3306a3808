"""Anytime and budgeted-batch evaluation of early-exit networks, as RANet (Yang et al., CVPR
2020, arXiv 2003.07326, Sec. 4) evaluates them with MSDNet's protocol (Huang et al., ICLR 2018,
arXiv 1703.09844, Sec. 5).

Anytime prediction: every exit scored on the whole test split (top-1/top-5), beside what running
the network up to it costs (cumulative FLOPs, `summary.exit_costs`).

Budgeted batch classification: a sample leaves at the first exit k whose confidence, the largest
softmax probability (float32), reaches the threshold t_k; the last exit answers the rest
(t_K = 0). The thresholds are calibrated on a validation split held out of the training files
(`data.load(..., "validation")`), never on the test split, so that given fractions pi_k of it
leave at each exit, and are then applied to the test split: accuracy at the exits taken, the
fractions that left at each, and the average FLOPs per image. The fractions follow the official
code's geometric family pi_k = r^k / sum_j r^j, swept over r = 0.05, 0.10, ..., 1.95 (39 points);
a requested average cost is met by bisection over r on the validation split.

The thresholds of one operating point are written as JSON (`write_thresholds`) for the
early-exit runtime, which reads them with `load_thresholds`.

The validation images must be ones the model did not learn from (its confidence on those would
be higher than on new images, and the thresholds too high): train it on
`data.load(..., "train", validation_size=N)` with the N used here.
"""

import dataclasses
import json
import math
import os

import numpy as np

from effkeras import data, evaluation, plots, saving
from effkeras.graph import summary
from effkeras.errors import InputError
from effkeras.fileio import atomic_path, write_json

MODES = ("anytime", "budgeted")
NEVER = 1e8  # a threshold above any softmax: nobody leaves at that exit (the official code's value)
LAST = 0.0  # the last exit's threshold: it answers whatever its confidence
SWEEP = tuple(p / 20 for p in range(1, 40))  # r = 0.05 ... 1.95, the official code's 39 points
# Bisection over log r between these ends: 1 + 1e-17 == 1 in float64, so at the low end every
# validation sample leaves at the first exit and at the high end every one at the last.
R_LOW, R_HIGH = 1e-17, 1e17
BISECTION_STEPS = 80  # halvings of the log-r interval (78 wide): far below any step of the cost
# floor(N * pi_k) of a product that is an integer in exact arithmetic but lands an ulp below it
# in floating point would take one sample too few.
FLOOR_SLACK = 1e-9
THRESHOLD_KEYS = ("model", "num_exits", "thresholds", "exit_flops", "expected_flops",
                  "exit_fractions")
MAX_THRESHOLDS_BYTES = 1 << 20  # a thresholds file is a few hundred bytes


# --- the calibration and its scores, on arrays ---------------------------------------------------

def exit_proportions(r, num_exits):
    """Target fractions pi_k = r^k / sum_j r^j (k = 1..num_exits) of the samples that leave at
    each exit: r < 1 favours early exits, r = 1 is uniform, r > 1 favours late ones."""
    if not r > 0:
        raise ValueError(f"r must be positive, got {r!r}")
    logs = np.arange(1, num_exits + 1) * math.log(r)  # log space: r far from 1 stays finite
    weights = np.exp(logs - logs.max())
    return weights / weights.sum()


def descending(confidence):
    """Per exit, the samples in order of decreasing confidence (reused across calibrations)."""
    return np.argsort(-np.asarray(confidence), axis=1, kind="stable")


def calibrate_thresholds(confidence, proportions, orders=None):
    """Thresholds (K,) that make fractions `proportions` of the samples leave at each exit.

    confidence: (K, N) largest softmax probability of each exit for each validation sample.
    For k = 1..K-1, with m_k = floor(N pi_k): walk the samples that have not left yet in order of
    decreasing confidence at exit k; t_k is the m_k-th one's confidence (NEVER when m_k is 0 or
    fewer remain), and every sample with confidence >= t_k leaves (ties can take more than m_k).
    t_K = LAST. The official code's procedure, exactly.
    orders: `descending(confidence)`, when already computed.
    """
    confidence = np.asarray(confidence)
    num_exits, count = confidence.shape
    orders = descending(confidence) if orders is None else orders
    thresholds = np.full(num_exits, NEVER)
    left = np.zeros(count, bool)
    for k in range(num_exits - 1):
        take = math.floor(count * proportions[k] + FLOOR_SLACK)
        if take > 0:
            waiting = orders[k][~left[orders[k]]]
            if len(waiting) >= take:
                thresholds[k] = float(confidence[k, waiting[take - 1]])
        left |= confidence[k] >= thresholds[k]
    thresholds[-1] = LAST
    return thresholds


def exits_taken(confidence, thresholds):
    """(N,) index of the exit each sample leaves at: the first k with confidence >= t_k, else
    the last."""
    passes = np.asarray(confidence) >= np.asarray(thresholds, np.float64)[:, None]
    passes[-1] = True
    return np.argmax(passes, axis=0)


def apply_thresholds(confidence, correct, thresholds, exit_flops):
    """{"exit_fractions", "top1", "flops"} of `thresholds` on samples with (K, N) `confidence`
    and `correct` (whether exit k's top-1 is right): the fraction leaving at each exit, accuracy
    at the exits taken, and the average cumulative FLOPs of the exits taken."""
    exits = exits_taken(confidence, thresholds)
    count = len(exits)
    fractions = np.bincount(exits, minlength=len(thresholds)) / count
    top1 = float(np.mean(np.asarray(correct)[exits, np.arange(count)]))
    return {"exit_fractions": fractions.tolist(), "top1": top1,
            "flops": float(fractions @ np.asarray(exit_flops, np.float64))}


def average_flops(confidence, thresholds, exit_flops):
    exits = exits_taken(confidence, thresholds)
    return float(np.mean(np.asarray(exit_flops, np.float64)[exits]))


def check_budget(budget, exit_flops):
    """InputError unless `budget` covers at least the first exit's cost."""
    if not budget >= exit_flops[0]:
        raise InputError(f"--budget={budget:,.0f} FLOPs is below the first exit's cost: every "
                         f"image costs at least {int(exit_flops[0]):,} FLOPs; the minimum budget "
                         f"is {int(exit_flops[0])}")


def thresholds_for_budget(confidence, exit_flops, budget, orders=None):
    """(r, thresholds): the largest r (found by bisection) whose thresholds, calibrated on the
    validation `confidence`, spend at most `budget` FLOPs per sample on average there. The cost
    moves in steps of about one sample changing exit, so it lands within (F_K - F_1) / N of the
    budget (ties of confidence can make a step larger). A budget of at least the last exit's
    cost sends everyone there (r None)."""
    check_budget(budget, exit_flops)
    flops = np.asarray(exit_flops, np.float64)
    num_exits = len(flops)
    if budget >= flops[-1]:
        return None, np.array([NEVER] * (num_exits - 1) + [LAST])
    orders = descending(confidence) if orders is None else orders

    def thresholds_at(log_r):
        return calibrate_thresholds(confidence, exit_proportions(math.exp(log_r), num_exits),
                                    orders)

    low, high = math.log(R_LOW), math.log(R_HIGH)
    for _ in range(BISECTION_STEPS):
        middle = (low + high) / 2
        if average_flops(confidence, thresholds_at(middle), flops) <= budget:
            low = middle
        else:
            high = middle
    return math.exp(low), thresholds_at(low)


# --- model outputs on a split --------------------------------------------------------------------

@dataclasses.dataclass
class ExitOutputs:
    """What budgeted and anytime evaluation need of K exits on a split's N samples."""

    confidence: np.ndarray  # (K, N) float32 largest softmax probability
    correct: np.ndarray  # (K, N) bool: top-1 right
    correct5: np.ndarray  # (K, N) bool: label among the top 5
    source: str  # the files the split comes from: "train" or "test"
    indices: np.ndarray  # which examples of those files


def max_softmax(logits):
    """Largest softmax probability of each row, in float32 as the official code."""
    logits = np.asarray(logits, np.float32)
    exps = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return (exps / exps.sum(axis=-1, keepdims=True)).max(axis=-1)


def collect(model, split):
    """ExitOutputs of `model` (a Keras model, or a callable images -> list of logits) on a
    DataSplit, in one pass."""
    confidence, correct, correct5 = [], [], []
    with split.errors_as_input_errors():
        for images, labels in split.dataset:
            outputs = evaluation.predict_logits(model, images)
            outputs = outputs if isinstance(outputs, list) else [outputs]
            labels = np.asarray(labels)
            ranked = [evaluation.ranked_classes(logits) for logits in outputs]
            confidence.append(np.stack([max_softmax(logits) for logits in outputs]))
            correct.append(np.stack([r[:, 0] == labels for r in ranked]))
            correct5.append(np.stack([np.any(r == labels[:, None], axis=-1) for r in ranked]))
    if not confidence:
        raise InputError("the split has no examples to evaluate")
    return ExitOutputs(np.concatenate(confidence, axis=1), np.concatenate(correct, axis=1),
                       np.concatenate(correct5, axis=1), split.source, split.indices)


# --- the two evaluations -------------------------------------------------------------------------

def anytime(test, exit_names, exit_flops):
    """One row per exit: its cumulative FLOPs and top-1/top-5 on the test split."""
    return [{"exit": name, "flops": int(flops), "top1": float(np.mean(test.correct[k])),
             "top5": float(np.mean(test.correct5[k]))}
            for k, (name, flops) in enumerate(zip(exit_names, exit_flops))]


def _operating_point(validation, test, thresholds, exit_flops):
    on_validation = apply_thresholds(validation.confidence, validation.correct, thresholds,
                                     exit_flops)
    return {"thresholds": [float(t) for t in thresholds],
            "validation_fractions": on_validation["exit_fractions"],
            "validation_flops": on_validation["flops"], "validation_top1": on_validation["top1"],
            **apply_thresholds(test.confidence, test.correct, thresholds, exit_flops)}


def budgeted(validation, test, exit_flops, *, budget=None):
    """The 39-point sweep (and the point for `budget`, when given): thresholds calibrated on
    `validation`, scored on `test` (both ExitOutputs). Refuses validation outputs that come from
    the test files: thresholds fitted there would flatter the test accuracy."""
    if validation.source != "train":
        raise ValueError(f"thresholds must be calibrated on a split held out of the training "
                         f"files, not on the {validation.source} split")
    num_exits = len(exit_flops)
    orders = descending(validation.confidence)
    sweep = []
    for point, r in enumerate(SWEEP, start=1):
        proportions = exit_proportions(r, num_exits)
        thresholds = calibrate_thresholds(validation.confidence, proportions, orders)
        sweep.append({"point": point, "r": r, "target_fractions": proportions.tolist(),
                      **_operating_point(validation, test, thresholds, exit_flops)})
    result = {"exit_flops": [int(f) for f in exit_flops], "sweep": sweep}
    if budget is not None:
        r, thresholds = thresholds_for_budget(validation.confidence, exit_flops, budget, orders)
        result["budget"] = {"requested_flops": float(budget), "r": r,
                            **_operating_point(validation, test, thresholds, exit_flops)}
    return result


def check_request(modes, *, split="test", budget=None, sweep_point=None, thresholds_out=None,
                  thresholds=None):
    """The modes as a tuple, or InputError for a request that cannot be met (checked before any
    work)."""
    modes = tuple(modes or ())
    unknown = [mode for mode in modes if mode not in MODES]
    if unknown or not modes:
        raise InputError(f"unknown early-exit mode {(unknown or [''])[0]!r}; choose from "
                         f"{', '.join(MODES)}")
    needs_budgeted = {"--budget": budget, "--sweep_point": sweep_point,
                      "--thresholds_out": thresholds_out, "--thresholds": thresholds}
    for flag, value in needs_budgeted.items():
        if value is not None and "budgeted" not in modes:
            raise InputError(f"{flag} goes with --early_exit=budgeted")
    if budget is not None and not (math.isfinite(budget) and budget > 0):
        raise InputError(f"--budget must be a positive number of FLOPs per image, got {budget}")
    if sweep_point is not None and not 1 <= sweep_point <= len(SWEEP):
        raise InputError(f"--sweep_point must be 1..{len(SWEEP)} (r = point / 20), got "
                         f"{sweep_point}")
    if budget is not None and sweep_point is not None:
        raise InputError("give --budget or --sweep_point, not both: each chooses the thresholds")
    if thresholds_out is not None and budget is None and sweep_point is None:
        raise InputError("--thresholds_out needs --budget=FLOPS or --sweep_point=1..39 to say "
                         "which thresholds to write")
    if "budgeted" in modes and split == "validation":
        raise InputError("--split=validation is where the thresholds are calibrated; score "
                         "budgeted evaluation on --split=test")
    return modes


def evaluate_checkpoint(path, dataset, *, modes=MODES, split="test", data_dir=None,
                        batch_size=256, validation_size=None, budget=None, sweep_point=None,
                        thresholds=None):
    """Anytime and/or budgeted-batch evaluation of a multi-exit .keras checkpoint.

    split: the split scored (the test split); budgeted calibration uses the "validation" split,
    validation_size training examples (default data.VALIDATION_SIZES) held out of the training
    files. budget: also find thresholds for this average FLOPs per image; sweep_point: the sweep
    row `selected` for a thresholds file; thresholds: a thresholds file to score as well.
    """
    modes = check_request(modes, split=split, budget=budget, sweep_point=sweep_point,
                          thresholds=thresholds)
    model = saving.load_model(path)
    costs = summary.exit_costs(model)
    names, exit_flops = [c["output"] for c in costs], [c["flops"] for c in costs]
    if "budgeted" in modes and len(costs) < 2:
        raise InputError(f"budgeted evaluation needs a model with early exits; {path} "
                         f"({model.name}) has one output")
    if budget is not None:
        check_budget(budget, exit_flops)
    given = load_thresholds(thresholds, len(costs), exit_flops) if thresholds else None
    if "budgeted" in modes and validation_size is None:  # scoring --split=train leaves it out
        validation_size = data.VALIDATION_SIZES.get(dataset)
    shape = model.input_shape[1:]
    test_split = data.load(dataset, split, input_shape=shape, batch_size=batch_size,
                           data_dir=data_dir, validation_size=validation_size)
    evaluation.check_classes(model, path, dataset, test_split)
    validation_split = None
    if "budgeted" in modes:  # loaded before any inference: a bad size fails at once
        validation_split = data.load(dataset, "validation", input_shape=shape,
                                     batch_size=batch_size, data_dir=data_dir,
                                     validation_size=validation_size)
    test = collect(model, test_split)
    result = {"checkpoint": path, "dataset": dataset, "split": split, "model": model.name,
              "num_exits": len(costs), "exits": names, "examples": int(test.confidence.shape[1])}
    if "anytime" in modes:
        result["anytime"] = anytime(test, names, exit_flops)
    if validation_split is not None:
        validation = collect(model, validation_split)
        result["validation"] = {"split": "validation", "source": validation.source,
                                "examples": int(validation.confidence.shape[1])}
        result["budgeted"] = budgeted(validation, test, exit_flops, budget=budget)
        if sweep_point is not None:
            result["budgeted"]["selected"] = result["budgeted"]["sweep"][sweep_point - 1]
        elif budget is not None:
            result["budgeted"]["selected"] = result["budgeted"]["budget"]
        if given is not None:
            result["budgeted"]["given"] = {
                "file": thresholds, "thresholds": given["thresholds"],
                **apply_thresholds(test.confidence, test.correct, given["thresholds"],
                                   exit_flops)}
    return result


# --- the thresholds file -------------------------------------------------------------------------

def thresholds_record(result):
    """The thresholds file's content for the `selected` operating point of a budgeted result:
    its thresholds, and the exit fractions and average FLOPs they gave on the scored (test)
    split, data the calibration never saw."""
    selected = result["budgeted"]["selected"]
    return {"model": result["model"], "num_exits": result["num_exits"],
            "thresholds": selected["thresholds"], "exit_flops": result["budgeted"]["exit_flops"],
            "expected_flops": selected["flops"], "exit_fractions": selected["exit_fractions"]}


def write_thresholds(path, record):
    """Writes a thresholds record (checked as `load_thresholds` checks it) as JSON:
    {"model": name, "num_exits": K, "thresholds": [t_1..t_K] (exit k answers when its largest
    softmax probability >= t_k; t_K = 0.0; NEVER, 1e8, for an exit nobody takes),
    "exit_flops": [cumulative FLOPs per exit], "expected_flops": average FLOPs per image,
    "exit_fractions": [fraction of images answered at each exit]}."""
    _check_record(record, record.get("num_exits"), path)
    write_json(path, {key: record[key] for key in THRESHOLD_KEYS})


def load_thresholds(path, num_exits, exit_flops=None):
    """The thresholds record in `path` (see write_thresholds), or InputError in one line when it
    cannot be read, is malformed or is not for a model with `num_exits` exits (and, given, these
    cumulative `exit_flops`: the same number of exits is not yet the same model)."""
    try:
        if os.path.getsize(path) > MAX_THRESHOLDS_BYTES:
            raise InputError(f"{path} is larger than {MAX_THRESHOLDS_BYTES:,} bytes: not a "
                             f"thresholds file")
        with open(path, encoding="utf-8") as f:
            record = json.load(f, parse_constant=_refuse_constant)
    except (OSError, UnicodeDecodeError, ValueError) as e:
        if isinstance(e, InputError):
            raise
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e).splitlines()[0]
        raise InputError(f"cannot read thresholds file {path}: {reason}") from None
    _check_record(record, num_exits, path)
    if exit_flops is not None and [int(f) for f in exit_flops] != record["exit_flops"]:
        raise InputError(f"{path} was calibrated for exits costing {record['exit_flops']} FLOPs "
                         f"but this model's cost {[int(f) for f in exit_flops]}; calibrate "
                         f"thresholds for this model")
    return {key: record[key] for key in THRESHOLD_KEYS}


def _refuse_constant(name):
    raise ValueError(f"{name} is not a number JSON allows")


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_record(record, num_exits, path):
    def bad(message):
        raise InputError(f"{path} is not a valid early-exit thresholds file: {message}; write "
                         f"one with apps.evaluate --early_exit=budgeted --thresholds_out")

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
        raise InputError(f"{path} holds thresholds for {count} exits but the model has "
                         f"{num_exits}; calibrate thresholds for this model (apps.evaluate "
                         f"--early_exit=budgeted --thresholds_out)")
    for key in ("thresholds", "exit_flops", "exit_fractions"):
        values = record[key]
        if not isinstance(values, list) or len(values) != count:
            bad(f"{key} must be a list of num_exits={count} numbers")
        if not all(_is_number(v) and v >= 0 for v in values):
            bad(f"{key} must hold finite numbers >= 0")
    if record["thresholds"][-1] != LAST:
        bad(f"the last threshold must be {LAST} so that the last exit always answers, got "
            f"{record['thresholds'][-1]}")
    if any(b < a for a, b in zip(record["exit_flops"], record["exit_flops"][1:])):
        bad("exit_flops must be cumulative (non-decreasing)")
    if not math.isclose(sum(record["exit_fractions"]), 1.0, abs_tol=1e-6):
        bad(f"exit_fractions must add up to 1, got {sum(record['exit_fractions'])}")
    if not (_is_number(record["expected_flops"]) and record["expected_flops"] >= 0):
        bad("expected_flops must be a finite number >= 0")


# --- report: table and plots ---------------------------------------------------------------------

def report_paths(output):
    """Where a report beside the JSON `output` goes: the tables and the two plots."""
    stem = os.path.splitext(output)[0]
    return {"table": f"{stem}.md", "anytime_plot": f"{stem}_anytime.png",
            "budgeted_plot": f"{stem}_budgeted.png"}


def format_table(result):
    """Markdown tables of an early-exit result: anytime rows, and the budgeted sweep."""
    lines = [f"# {result['model']} on {result['dataset']} ({result['split']}, "
             f"{result['examples']} images)"]
    if "anytime" in result:
        lines += ["", "## Anytime prediction", "", "| exit | FLOPs (cum.) | top-1 % | top-5 % |",
                  "|---|---:|---:|---:|"]
        lines += [f"| {row['exit']} | {row['flops']:,} | {100 * row['top1']:.2f} | "
                  f"{100 * row['top5']:.2f} |" for row in result["anytime"]]
    if "budgeted" in result:
        section = result["budgeted"]
        lines += ["", f"## Budgeted batch classification (thresholds calibrated on "
                      f"{result['validation']['examples']} held-out training images)", "",
                  "| point | r | avg FLOPs | top-1 % | exit fractions | thresholds |",
                  "|---|---:|---:|---:|---|---|"]
        rows = [(str(row["point"]), row) for row in section["sweep"]]
        if "budget" in section:
            rows.append((f"budget {section['budget']['requested_flops']:,.0f}", section["budget"]))
        if "given" in section:
            rows.append((f"file {section['given']['file']}", section["given"]))
        for label, row in rows:
            r = "-" if row.get("r") is None else f"{row['r']:.4g}"
            fractions = " ".join(f"{f:.2f}" for f in row["exit_fractions"])
            thresholds = " ".join("never" if t >= NEVER else f"{t:.3f}" for t in row["thresholds"])
            lines.append(f"| {label} | {r} | {row['flops']:,.0f} | {100 * row['top1']:.2f} | "
                         f"{fractions} | {thresholds} |")
    return "\n".join(lines) + "\n"


def plot_anytime(result, path):
    """Accuracy of each exit against its cumulative FLOPs."""
    rows = result["anytime"]
    flops = [row["flops"] / 1e6 for row in rows]
    with plots.figure(path, figsize=(6, 4)) as (_, axis):
        axis.plot(flops, [100 * row["top1"] for row in rows], "o-", label="top-1")
        axis.plot(flops, [100 * row["top5"] for row in rows], "s--", label="top-5", alpha=0.6)
        for x, row in zip(flops, rows):
            axis.annotate(row["exit"], (x, 100 * row["top1"]), textcoords="offset points",
                          xytext=(0, 6), ha="center", fontsize=8)
        axis.set_xlabel("FLOPs up to the exit (M)")
        axis.set_ylabel("accuracy (%)")
        axis.set_title(f"{result['model']}: anytime prediction ({result['dataset']})")
        axis.grid(alpha=0.3)
        axis.legend()


def plot_budgeted(result, path):
    """Test accuracy against average FLOPs per image over the sweep (and the budget point), with
    the single exits for reference."""
    section = result["budgeted"]
    with plots.figure(path, figsize=(6, 4)) as (_, axis):
        sweep = section["sweep"]
        axis.plot([row["flops"] / 1e6 for row in sweep], [100 * row["top1"] for row in sweep],
                  ".-", label="thresholds, r = 0.05 ... 1.95")
        if "anytime" in result:
            axis.plot([row["flops"] / 1e6 for row in result["anytime"]],
                      [100 * row["top1"] for row in result["anytime"]], "x", color="grey",
                      label="single exits")
        if "budget" in section:
            point = section["budget"]
            axis.plot([point["flops"] / 1e6], [100 * point["top1"]], "*", markersize=12,
                      label=f"budget {point['requested_flops'] / 1e6:.3g} M")
        axis.set_xlabel("average FLOPs per image (M)")
        axis.set_ylabel("top-1 accuracy (%)")
        axis.set_title(f"{result['model']}: budgeted batch classification ({result['dataset']})")
        axis.grid(alpha=0.3)
        axis.legend()


def write_report(result, output):
    """Writes the JSON `output` and, beside it, the tables and the plots of the modes run."""
    paths = report_paths(output)
    write_json(output, result)
    with atomic_path(paths["table"]) as tmp:
        with open(tmp, "w") as f:
            f.write(format_table(result))
    if "anytime" in result:
        plot_anytime(result, paths["anytime_plot"])
    if "budgeted" in result:
        plot_budgeted(result, paths["budgeted_plot"])
