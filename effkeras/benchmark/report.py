"""The benchmark's results: a `Row` per model and target, latency ratios against a baseline,
and the report: a Markdown table, benchmark.json, a plot, and ARM device latencies merged in."""

import dataclasses
import json
import os

from effkeras import fileio, plots
from effkeras.errors import InputError

STEM = "benchmark"  # benchmark.json, benchmark.md, benchmark.png


@dataclasses.dataclass
class Row:
    """One model on one target: what it is, its file, the figures measured or estimated.

    A row with `error` set says why the model or the target failed; its other figures are
    empty. Every field is written to benchmark.json under its own name.
    """

    model: str
    target: str
    input: str = ""
    params: int = None
    macs: int = None
    size_bytes: int = None
    file: str = None  # the .tflite written (relative to the output directory)
    runtime: str = ""  # what timed it: lce, litert, tflm, or vela (an estimate)
    median_ms: float = None
    p25_ms: float = None
    p75_ms: float = None
    ratio: float = None  # median_ms over the baseline row's
    baseline: str = None  # "model (target)" the ratio is against
    binary_mac_share: float = None  # arm: MACs in LceBconv2d ops / all MACs
    npu_mac_share: float = None  # ethos-u: MACs Vela put on the NPU / all MACs
    arena_bytes: int = None  # tflm: the smallest tensor arena that runs it
    sram_bytes: int = None  # ethos-u: Vela's SRAM use
    cpu_ops: int = None  # ethos-u: ops Vela left for the Cortex-M (not in its estimate)
    cycles: int = None  # ethos-u
    bits_per_binary_weight: float = None  # ethos-u: the binary layers' encoded flash per weight
    inferences_per_second: float = None  # ethos-u (Vela) or 1000 / median_ms
    accuracy: float = None
    accuracy_source: str = None
    ops: dict = None
    device_ms: dict = None  # {threads: ms} measured on an ARM device (apps.device_benchmark)
    device: str = None
    error: str = None

    @property
    def label(self):
        return f"{self.model} ({self.target})"


def one_line(error):
    """A failure as a row's error: the first line of its message, at most 400 characters.

    Args:
        error: an exception.

    Returns:
        The message, prefixed with the exception's class unless it is an `InputError`.
    """
    text = str(error).strip().splitlines()
    message = text[0] if text else ""
    kind = "" if isinstance(error, InputError) else f"{type(error).__name__}: "
    return (kind + message)[:400]


def baseline_row(rows, baseline, target, key="median_ms"):
    """The row a ratio is taken against.

    Args:
        rows: `Row`s.
        baseline: the baseline model's label.
        target: the target of the row the ratio is for.
        key: "median_ms", or a thread count (str) of `device_ms`.

    Returns:
        The baseline model's row on `target` if it was measured there, else on its first
        measured target; None when it was measured nowhere.
    """
    mine = [row for row in rows if row.model == baseline and _value(row, key) is not None]
    same = [row for row in mine if row.target == target]
    return (same or mine or [None])[0]


def _value(row, key):
    if key == "median_ms":
        return row.median_ms
    return (row.device_ms or {}).get(key)


def set_ratios(rows, baseline):
    """Sets each row's `ratio`: its median latency over the baseline's (`baseline_row`), and
    `baseline`, the label of that row.

    Args:
        rows: `Row`s, changed in place.
        baseline: the baseline model's label, or None (no ratios).
    """
    if baseline is None:
        return
    for row in rows:
        reference = baseline_row(rows, baseline, row.target)
        if row.median_ms is not None and reference is not None:
            row.ratio = row.median_ms / reference.median_ms
            row.baseline = reference.label


def _fmt(value, spec="{:,}", missing="–"):
    return missing if value is None else spec.format(value)


def device_threads(rows):
    """The thread counts measured on a device, sorted.

    Args:
        rows: `Row`s.

    Returns:
        A sorted list of ints, the keys of the rows' `device_ms`.
    """
    return sorted({int(t) for row in rows for t in (row.device_ms or {})})


def _baseline(rows):
    """(the first row's baseline label "model (target)", that model) of `rows`' ratios, or
    (None, None)."""
    label = next((row.baseline for row in rows if row.baseline), None)
    return label, label and label.rsplit(" (", 1)[0]


def table(rows, *, threads=1, runs=None):
    """A Markdown table of `rows`, with a note on how the times were taken.

    Args:
        rows: `Row`s.
        threads: the threads the times here were taken with.
        runs: the timed rounds, or None.

    Returns:
        The table and its notes, as Markdown text.
    """
    measured_on = device_threads(rows)
    device = next((row.device for row in rows if row.device), None)
    baseline, baseline_model = _baseline(rows)
    header = [
        "model",
        "target",
        "input",
        "params",
        "MACs",
        "binary / NPU MACs",
        "file bytes",
        "runtime",
        "ms (median [p25–p75])",
        f"× {baseline_model or 'baseline'}",
        "RAM bytes",
        "inf/s",
        "top-1",
    ]
    binary_bits = any(row.bits_per_binary_weight for row in rows)  # a binary net on Ethos-U
    if binary_bits:
        header.append("flash bits / binary weight")
    header += [f"{device} ms, {t} thread{'s' * (t > 1)}" for t in measured_on]
    if measured_on:
        header.append(f"{device} × baseline")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        if row.error:
            cells = (
                [row.model, row.target] + [""] * (len(header) - 3) + [f"**failed**: {row.error}"]
            )
            lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
            continue
        share = _fmt(
            row.binary_mac_share if row.binary_mac_share is not None else row.npu_mac_share,
            "{:.2f}",
        )
        if row.cpu_ops:
            share += f" ({row.cpu_ops} ops on the CPU)"
        keras_accuracy = (
            " (Keras)" if (row.accuracy_source or "").startswith("metrics.json") else ""
        )
        timing = _fmt(row.median_ms, "{:.2f}")
        if row.median_ms is not None and row.p25_ms is not None and row.p25_ms != row.p75_ms:
            timing += f" [{row.p25_ms:.2f}–{row.p75_ms:.2f}]"
        cells = [
            row.model,
            row.target,
            row.input or "–",
            _fmt(row.params),
            _fmt(row.macs and row.macs / 1e6, "{:,.1f} M"),
            share,
            _fmt(row.size_bytes),
            row.runtime or "–",
            timing,
            _fmt(row.ratio, "{:.2f}"),
            _fmt(row.arena_bytes or row.sram_bytes),
            _fmt(row.inferences_per_second, "{:,.1f}"),
            _fmt(row.accuracy and 100 * row.accuracy, "{:.2f}%") + keras_accuracy,
        ]
        if binary_bits:
            cells.append(_fmt(row.bits_per_binary_weight, "{:.3f}"))
        cells += [_fmt((row.device_ms or {}).get(str(t)), "{:.1f}") for t in measured_on]
        if measured_on:
            reference = (
                baseline_row(rows, baseline_model, row.target, key=str(measured_on[0]))
                if baseline
                else None
            )
            ours = (row.device_ms or {}).get(str(measured_on[0]))
            cells.append(
                _fmt(
                    ours / reference.device_ms[str(measured_on[0])] if ours and reference else None,
                    "{:.2f}",
                )
            )
        lines.append("| " + " | ".join(cells) + " |")
    notes = [
        f"Latency on this machine's CPU ({threads} thread{'s' * (threads > 1)}"
        + (f", median of {runs} interleaved runs" if runs else "")
        + "): LCE's interpreter "
        "for arm (on x86 its portable, not its ARM, kernels), LiteRT with XNNPack for float "
        "and int8, TFLite Micro's reference kernels for tflm; ethos-u rows are Vela's "
        "estimate (1000 / inferences per second). RAM: TFLite Micro's smallest arena (tflm), "
        "Vela's SRAM use (ethos-u)."
    ]
    if binary_bits:
        notes.append(
            "Flash bits / binary weight: the encoded weights, scales and biases Vela stores for "
            "the binary layers lowered to int8, × 8 / their weight count."
        )
    if baseline:
        notes.append(
            f"× {baseline_model}: a row's median over that model's on the same "
            f"target (else on {baseline})."
        )
    return "\n".join(lines) + "\n\n" + "\n".join(notes)


def plot(rows, path):
    """Writes a PNG: accuracy against latency and against file size where rows have
    accuracies; else latency (× baseline where set) and file size per row.

    Args:
        rows: `Row`s.
        path: the PNG file to write.
    """
    done = [row for row in rows if not row.error and row.size_bytes]
    accurate = [row for row in done if row.accuracy is not None and row.median_ms]
    with plots.figure(path, ncols=2, figsize=(12, 4.5)) as (figure, (left, right)):
        if accurate:
            for axis, key, label in (
                (left, "median_ms", "latency, ms (log)"),
                (right, "size_bytes", "file bytes (log)"),
            ):
                named = set()  # each model named once per axis, at its first point
                for target in dict.fromkeys(row.target for row in accurate):
                    mine = [row for row in accurate if row.target == target]
                    axis.scatter(
                        [getattr(row, key) for row in mine],
                        [100 * row.accuracy for row in mine],
                        label=target,
                    )
                    for row in mine:
                        if row.model not in named:
                            named.add(row.model)
                            axis.annotate(
                                row.model,
                                (getattr(row, key), 100 * row.accuracy),
                                fontsize=7,
                                xytext=(3, 3),
                                textcoords="offset points",
                            )
                axis.set_xscale("log")
                axis.set_xlabel(label)
                axis.set_ylabel("top-1, %")
                axis.grid(alpha=0.3)
                axis.legend()
            return
        labels = [row.label for row in done]
        use_ratio = any(row.ratio is not None for row in done)
        latency = [(row.ratio if use_ratio else row.median_ms) or 0 for row in done]
        left.barh(labels, latency, color="tab:orange")
        left.set_xlabel(
            f"latency × {_baseline(done)[1]} (on the same target)" if use_ratio else "latency, ms"
        )
        right.barh(labels, [row.size_bytes / 2**20 for row in done], color="tab:blue")
        right.set_xlabel("file MiB")
        for axis in (left, right):
            axis.invert_yaxis()
            axis.tick_params(axis="y", labelsize=7)


def write(rows, output_dir, *, threads=1, runs=None):
    """Writes benchmark.json, benchmark.md and benchmark.png in `output_dir`.

    Args:
        rows: `Row`s.
        output_dir: the folder (made if missing).
        threads: the threads the times were taken with.
        runs: the timed rounds, or None.
    """
    os.makedirs(output_dir, exist_ok=True)
    fileio.write_json(
        os.path.join(output_dir, f"{STEM}.json"),
        {
            "threads": threads,
            "runs": runs,
            "rows": [fileio.plain(dataclasses.asdict(row)) for row in rows],
        },
    )
    fileio.write_bytes(
        os.path.join(output_dir, f"{STEM}.md"),
        (table(rows, threads=threads, runs=runs) + "\n").encode(),
    )
    plot(rows, os.path.join(output_dir, f"{STEM}.png"))


def read(output_dir):
    """Reads back a benchmark.json that `run` wrote.

    Args:
        output_dir: the run's output folder.

    Returns:
        (rows, threads, runs).

    Raises:
        InputError: there is no readable benchmark.json there.
    """
    path = os.path.join(output_dir, f"{STEM}.json")
    try:
        with open(path) as f:
            saved = json.load(f)
        rows = [Row(**row) for row in saved["rows"]]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise InputError(
            f"cannot read {path} ({e}); write it with python -m apps.benchmark "
            f"--output_dir={output_dir}"
        ) from None
    return rows, saved.get("threads", 1), saved.get("runs")


def merge_device(output_dir, measured, device):
    """Adds latencies measured on an ARM device to a benchmark's rows, and rewrites its JSON,
    table and plot.

    Args:
        output_dir: the benchmark's output folder.
        measured: {file name: {threads: ms}}.
        device: the device's name in the table.

    Returns:
        The rows.

    Raises:
        InputError: a file of `measured` is not one of the benchmark's.
    """
    rows, threads, runs = read(output_dir)
    by_file = {row.file: row for row in rows if row.file}
    for name, per_threads in measured.items():
        if name not in by_file:
            raise InputError(f"{name} is not a file of {output_dir}/{STEM}.json")
        row = by_file[name]
        row.device_ms = {
            **(row.device_ms or {}),
            **{str(t): float(ms) for t, ms in per_threads.items()},
        }
        row.device = device
    write(rows, output_dir, threads=threads, runs=runs)
    return rows
