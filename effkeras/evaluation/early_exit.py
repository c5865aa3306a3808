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
a requested average cost is met by bisection over r on the validation split. The exit logic
itself (calibration, bisection, exits taken) is effkeras.early_exit's, shared with the deployed
`Runner`.

The thresholds of one operating point (`thresholds_record`) are written as JSON
(`early_exit.write_thresholds`) for the early-exit runtime, which reads them with
`early_exit.load_thresholds`.

The validation images must be ones the model did not learn from (its confidence on those would
be higher than on new images, and the thresholds too high): train it on
`data.load(..., "train", validation_size=N)` with the N used here.
"""

import dataclasses
import math
import os

import numpy as np

from effkeras import data, plots, saving
from effkeras.early_exit import exits
from effkeras.early_exit.thresholds_file import load_thresholds
from effkeras.errors import InputError
from effkeras.evaluation import accuracy
from effkeras.fileio import atomic_path, write_json
from effkeras.graph import summary

MODES = ("anytime", "budgeted")


# --- model outputs on a split --------------------------------------------------------------------


@dataclasses.dataclass
class ExitOutputs:
    """What budgeted and anytime evaluation need of K exits on a split's N samples."""

    confidence: np.ndarray  # (K, N) float32 largest softmax probability
    correct: np.ndarray  # (K, N) bool: top-1 right
    correct5: np.ndarray  # (K, N) bool: label among the top 5
    source: str  # the files the split comes from: "train" or "test"
    indices: np.ndarray  # which examples of those files


def collect(model, split):
    """What K exits give on a split, in one pass.

    Args:
        model: a Keras model, or a callable images -> list of logits.
        split: a data.DataSplit.

    Returns:
        ExitOutputs.

    Raises:
        InputError: the split has no examples, or its files cannot be read.
    """
    confidence, correct, correct5 = [], [], []
    with split.errors_as_input_errors():
        for images, labels in split.dataset:
            outputs = accuracy.predict_logits(model, images)
            outputs = outputs if isinstance(outputs, list) else [outputs]
            labels = np.asarray(labels)
            ranked = [accuracy.ranked_classes(logits) for logits in outputs]
            confidence.append(np.stack([exits.max_softmax(logits) for logits in outputs]))
            correct.append(np.stack([r[:, 0] == labels for r in ranked]))
            correct5.append(np.stack([np.any(r == labels[:, None], axis=-1) for r in ranked]))
    if not confidence:
        raise InputError("the split has no examples to evaluate")
    return ExitOutputs(
        np.concatenate(confidence, axis=1),
        np.concatenate(correct, axis=1),
        np.concatenate(correct5, axis=1),
        split.source,
        split.indices,
    )


# --- the two evaluations -------------------------------------------------------------------------


def anytime(test, exit_names, exit_flops):
    """Anytime prediction: every exit scored on the test split.

    Args:
        test: ExitOutputs of the test split.
        exit_names: the K exits' names.
        exit_flops: their cumulative FLOPs.

    Returns:
        One row per exit: {"exit", "flops", "top1", "top5"}.
    """
    return [
        {
            "exit": name,
            "flops": int(flops),
            "top1": float(np.mean(test.correct[k])),
            "top5": float(np.mean(test.correct5[k])),
        }
        for k, (name, flops) in enumerate(zip(exit_names, exit_flops))
    ]


def _operating_point(validation, test, thresholds, exit_flops):
    on_validation = exits.apply_thresholds(
        validation.confidence, validation.correct, thresholds, exit_flops
    )
    return {
        "thresholds": [float(t) for t in thresholds],
        "validation_fractions": on_validation["exit_fractions"],
        "validation_flops": on_validation["flops"],
        "validation_top1": on_validation["top1"],
        **exits.apply_thresholds(test.confidence, test.correct, thresholds, exit_flops),
    }


def budgeted(validation, test, exit_flops, *, budget=None):
    """Budgeted batch classification: thresholds calibrated on `validation`, scored on `test`.

    Args:
        validation: ExitOutputs of the validation split (held out of the training files).
        test: ExitOutputs of the scored split.
        exit_flops: the K exits' cumulative FLOPs.
        budget: also the operating point for this average FLOPs per image.

    Returns:
        {"exit_flops", "sweep": the 39 operating points, "budget": the budget's (when given)};
        each point holds its thresholds, the fractions, FLOPs and top-1 on validation and test.

    Raises:
        ValueError: the validation outputs come from the test files (thresholds fitted there
            would flatter the test accuracy).
    """
    if validation.source != "train":
        raise ValueError(
            f"thresholds must be calibrated on a split held out of the training "
            f"files, not on the {validation.source} split"
        )
    num_exits = len(exit_flops)
    orders = exits.descending(validation.confidence)
    sweep = []
    for point, r in enumerate(exits.SWEEP, start=1):
        proportions = exits.exit_proportions(r, num_exits)
        thresholds = exits.calibrate_thresholds(validation.confidence, proportions, orders)
        sweep.append(
            {
                "point": point,
                "r": r,
                "target_fractions": proportions.tolist(),
                **_operating_point(validation, test, thresholds, exit_flops),
            }
        )
    result = {"exit_flops": [int(f) for f in exit_flops], "sweep": sweep}
    if budget is not None:
        r, thresholds = exits.thresholds_for_budget(
            validation.confidence, exit_flops, budget, orders
        )
        result["budget"] = {
            "requested_flops": float(budget),
            "r": r,
            **_operating_point(validation, test, thresholds, exit_flops),
        }
    return result


def check_request(
    modes, *, split="test", budget=None, sweep_point=None, thresholds_out=None, thresholds=None
):
    """Checks an early-exit evaluation request before any work.

    Args:
        modes: "anytime" and/or "budgeted".
        split: the split scored.
        budget, sweep_point, thresholds_out, thresholds: the budgeted flags' values.

    Returns:
        The modes as a tuple.

    Raises:
        InputError: a request that cannot be met (an unknown mode, a budgeted flag without
            budgeted mode, a bad budget or sweep point, budgeted on the validation split).
    """
    modes = tuple(modes or ())
    unknown = [mode for mode in modes if mode not in MODES]
    if unknown or not modes:
        raise InputError(
            f"unknown early-exit mode {(unknown or [''])[0]!r}; choose from {', '.join(MODES)}"
        )
    needs_budgeted = {
        "--budget": budget,
        "--sweep_point": sweep_point,
        "--thresholds_out": thresholds_out,
        "--thresholds": thresholds,
    }
    for flag, value in needs_budgeted.items():
        if value is not None and "budgeted" not in modes:
            raise InputError(f"{flag} goes with --early_exit=budgeted")
    if budget is not None and not (math.isfinite(budget) and budget > 0):
        raise InputError(f"--budget must be a positive number of FLOPs per image, got {budget}")
    if sweep_point is not None and not 1 <= sweep_point <= len(exits.SWEEP):
        raise InputError(
            f"--sweep_point must be 1..{len(exits.SWEEP)} (r = point / 20), got {sweep_point}"
        )
    if budget is not None and sweep_point is not None:
        raise InputError("give --budget or --sweep_point, not both: each chooses the thresholds")
    if thresholds_out is not None and budget is None and sweep_point is None:
        raise InputError(
            "--thresholds_out needs --budget=FLOPS or --sweep_point=1..39 to say "
            "which thresholds to write"
        )
    if "budgeted" in modes and split == "validation":
        raise InputError(
            "--split=validation is where the thresholds are calibrated; score "
            "budgeted evaluation on --split=test"
        )
    return modes


def evaluate_checkpoint(
    path,
    dataset,
    *,
    modes=MODES,
    split="test",
    data_dir=None,
    batch_size=256,
    validation_size=None,
    budget=None,
    sweep_point=None,
    thresholds=None,
):
    """Anytime and/or budgeted-batch evaluation of a multi-exit .keras checkpoint.

    Args:
        path: the .keras checkpoint.
        dataset: a data.load dataset name.
        modes: "anytime" and/or "budgeted".
        split: the split scored (the test split).
        data_dir: where the dataset's files are.
        batch_size: images per batch.
        validation_size: training examples held out for budgeted calibration (the
            "validation" split; default data.VALIDATION_SIZES).
        budget: also find thresholds for this average FLOPs per image.
        sweep_point: the sweep row `selected` for a thresholds file.
        thresholds: a thresholds file to score as well.

    Returns:
        The result: checkpoint, dataset, split, model, exits and examples, with "anytime"
        rows and the "budgeted" section as the modes ask.

    Raises:
        InputError: a request that cannot be met, a model without exits for budgeted, a
            budget below exit 1's cost, thresholds for another model, data that do not fit.
    """
    modes = check_request(
        modes, split=split, budget=budget, sweep_point=sweep_point, thresholds=thresholds
    )
    model = saving.load_model(path)
    costs = summary.exit_costs(model)
    names, exit_flops = [c["output"] for c in costs], [c["flops"] for c in costs]
    if "budgeted" in modes and len(costs) < 2:
        raise InputError(
            f"budgeted evaluation needs a model with early exits; {path} "
            f"({model.name}) has one output"
        )
    if budget is not None:
        exits.check_budget(budget, exit_flops)
    given = load_thresholds(thresholds, len(costs), exit_flops) if thresholds else None
    if "budgeted" in modes and validation_size is None:  # scoring --split=train leaves it out
        validation_size = data.VALIDATION_SIZES.get(dataset)
    shape = model.input_shape[1:]
    test_split = data.load(
        dataset,
        split,
        input_shape=shape,
        batch_size=batch_size,
        data_dir=data_dir,
        validation_size=validation_size,
    )
    accuracy.check_classes(model, path, dataset, test_split)
    validation_split = None
    if "budgeted" in modes:  # loaded before any inference: a bad size fails at once
        validation_split = data.load(
            dataset,
            "validation",
            input_shape=shape,
            batch_size=batch_size,
            data_dir=data_dir,
            validation_size=validation_size,
        )
    test = collect(model, test_split)
    result = {
        "checkpoint": path,
        "dataset": dataset,
        "split": split,
        "model": model.name,
        "num_exits": len(costs),
        "exits": names,
        "examples": int(test.confidence.shape[1]),
    }
    if "anytime" in modes:
        result["anytime"] = anytime(test, names, exit_flops)
    if validation_split is not None:
        validation = collect(model, validation_split)
        result["validation"] = {
            "split": "validation",
            "source": validation.source,
            "examples": int(validation.confidence.shape[1]),
        }
        result["budgeted"] = budgeted(validation, test, exit_flops, budget=budget)
        if sweep_point is not None:
            result["budgeted"]["selected"] = result["budgeted"]["sweep"][sweep_point - 1]
        elif budget is not None:
            result["budgeted"]["selected"] = result["budgeted"]["budget"]
        if given is not None:
            result["budgeted"]["given"] = {
                "file": thresholds,
                "thresholds": given["thresholds"],
                **exits.apply_thresholds(
                    test.confidence, test.correct, given["thresholds"], exit_flops
                ),
            }
    return result


def thresholds_record(result):
    """The thresholds file's content for the `selected` operating point of a budgeted result.

    Args:
        result: an `evaluate_checkpoint` result with a selected budgeted point.

    Returns:
        A record for `early_exit.write_thresholds`: the point's thresholds, and the exit
        fractions and average FLOPs they gave on the scored (test) split, data the
        calibration never saw.
    """
    selected = result["budgeted"]["selected"]
    return {
        "model": result["model"],
        "num_exits": result["num_exits"],
        "thresholds": selected["thresholds"],
        "exit_flops": result["budgeted"]["exit_flops"],
        "expected_flops": selected["flops"],
        "exit_fractions": selected["exit_fractions"],
    }


# --- report: table and plots ---------------------------------------------------------------------


def report_paths(output):
    """Where a report beside the JSON `output` goes.

    Args:
        output: the JSON file's path.

    Returns:
        {"table", "anytime_plot", "budgeted_plot"}: paths beside it.
    """
    stem = os.path.splitext(output)[0]
    return {
        "table": f"{stem}.md",
        "anytime_plot": f"{stem}_anytime.png",
        "budgeted_plot": f"{stem}_budgeted.png",
    }


def format_table(result):
    """Markdown tables of an early-exit result.

    Args:
        result: an `evaluate_checkpoint` result.

    Returns:
        The anytime rows and the budgeted sweep, as Markdown.
    """
    lines = [
        f"# {result['model']} on {result['dataset']} ({result['split']}, "
        f"{result['examples']} images)"
    ]
    if "anytime" in result:
        lines += [
            "",
            "## Anytime prediction",
            "",
            "| exit | FLOPs (cum.) | top-1 % | top-5 % |",
            "|---|---:|---:|---:|",
        ]
        lines += [
            f"| {row['exit']} | {row['flops']:,} | {100 * row['top1']:.2f} | "
            f"{100 * row['top5']:.2f} |"
            for row in result["anytime"]
        ]
    if "budgeted" in result:
        section = result["budgeted"]
        lines += [
            "",
            f"## Budgeted batch classification (thresholds calibrated on "
            f"{result['validation']['examples']} held-out training images)",
            "",
            "| point | r | avg FLOPs | top-1 % | exit fractions | thresholds |",
            "|---|---:|---:|---:|---|---|",
        ]
        rows = [(str(row["point"]), row) for row in section["sweep"]]
        if "budget" in section:
            rows.append((f"budget {section['budget']['requested_flops']:,.0f}", section["budget"]))
        if "given" in section:
            rows.append((f"file {section['given']['file']}", section["given"]))
        for label, row in rows:
            r = "-" if row.get("r") is None else f"{row['r']:.4g}"
            fractions = " ".join(f"{f:.2f}" for f in row["exit_fractions"])
            thresholds = " ".join(
                "never" if t >= exits.NEVER else f"{t:.3f}" for t in row["thresholds"]
            )
            lines.append(
                f"| {label} | {r} | {row['flops']:,.0f} | {100 * row['top1']:.2f} | "
                f"{fractions} | {thresholds} |"
            )
    return "\n".join(lines) + "\n"


def plot_anytime(result, path):
    """Plots the accuracy of each exit against its cumulative FLOPs.

    Args:
        result: an `evaluate_checkpoint` result with "anytime".
        path: the PNG to write.
    """
    rows = result["anytime"]
    flops = [row["flops"] / 1e6 for row in rows]
    with plots.figure(path, figsize=(6, 4)) as (_, axis):
        axis.plot(flops, [100 * row["top1"] for row in rows], "o-", label="top-1")
        axis.plot(flops, [100 * row["top5"] for row in rows], "s--", label="top-5", alpha=0.6)
        for x, row in zip(flops, rows):
            axis.annotate(
                row["exit"],
                (x, 100 * row["top1"]),
                textcoords="offset points",
                xytext=(0, 6),
                ha="center",
                fontsize=8,
            )
        axis.set_xlabel("FLOPs up to the exit (M)")
        axis.set_ylabel("accuracy (%)")
        axis.set_title(f"{result['model']}: anytime prediction ({result['dataset']})")
        axis.grid(alpha=0.3)
        axis.legend()


def plot_budgeted(result, path):
    """Plots test accuracy against average FLOPs per image over the sweep (and the budget
    point), with the single exits for reference.

    Args:
        result: an `evaluate_checkpoint` result with "budgeted".
        path: the PNG to write.
    """
    section = result["budgeted"]
    with plots.figure(path, figsize=(6, 4)) as (_, axis):
        sweep = section["sweep"]
        axis.plot(
            [row["flops"] / 1e6 for row in sweep],
            [100 * row["top1"] for row in sweep],
            ".-",
            label="thresholds, r = 0.05 ... 1.95",
        )
        if "anytime" in result:
            axis.plot(
                [row["flops"] / 1e6 for row in result["anytime"]],
                [100 * row["top1"] for row in result["anytime"]],
                "x",
                color="grey",
                label="single exits",
            )
        if "budget" in section:
            point = section["budget"]
            axis.plot(
                [point["flops"] / 1e6],
                [100 * point["top1"]],
                "*",
                markersize=12,
                label=f"budget {point['requested_flops'] / 1e6:.3g} M",
            )
        axis.set_xlabel("average FLOPs per image (M)")
        axis.set_ylabel("top-1 accuracy (%)")
        axis.set_title(f"{result['model']}: budgeted batch classification ({result['dataset']})")
        axis.grid(alpha=0.3)
        axis.legend()


def write_report(result, output):
    """Writes the JSON `output` and, beside it, the tables and the plots of the modes run.

    Args:
        result: an `evaluate_checkpoint` result.
        output: the JSON file's path.
    """
    paths = report_paths(output)
    write_json(output, result)
    with atomic_path(paths["table"]) as tmp:
        with open(tmp, "w") as f:
            f.write(format_table(result))
    if "anytime" in result:
        plot_anytime(result, paths["anytime_plot"])
    if "budgeted" in result:
        plot_budgeted(result, paths["budgeted_plot"])
