"""Models against their peers on the runtimes they ship to: size, speed, accuracy, side by side.

`run(specs, targets)` converts every model for every target through `effkeras.deploy` (each
conversion checks itself against Keras), then times every file this CPU can run, interleaved:
warm-up runs, then round after round, each round one inference of every file in turn, so that a
slow spell of a shared machine falls on all of them alike; median and quartiles per file.

- arm: LCE's interpreter (on x86 its portable kernels: compare ratios, and measure ARM on the
  device with tools/device_benchmark.py);
- float, float16, int8: LiteRT (XNNPack);
- tflm: TFLite Micro's interpreter (its reference kernels), and the arena bytes;
- ethos-u*: Vela's estimate (cycles, inferences/s) of the NPU, not run.

Each row also has the share of the model's MACs that run as binary convs (arm: the layers that
became LceBconv2d, w1a2 ones included) or on the NPU (ethos-u: Vela's per-layer MAC counts).
A model or a target that fails becomes a row saying why; the others go on.
"""

import dataclasses
import json
import math
import os
import re
import time

import numpy as np

from effkeras import fileio, plots
from effkeras.errors import InputError

RUNTIMES = {"arm": "lce", "float": "litert", "float16": "litert", "int8": "litert",
            "tflm": "tflm"}  # ethos-u*: "vela" (an estimate)
CPU_TARGETS = ("arm", "float", "float16", "int8")  # the files a phone or a Pi runs
STEM = "benchmark"  # benchmark.json, benchmark.md, benchmark.png


@dataclasses.dataclass
class Row:
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
    inferences_per_second: float = None  # ethos-u (Vela) or 1000 / median_ms
    accuracy: float = None
    accuracy_source: str = None
    ops: dict = None
    device_ms: dict = None  # {threads: ms} measured on an ARM device (tools/device_benchmark.py)
    device: str = None
    error: str = None

    @property
    def label(self):
        return f"{self.model} ({self.target})"


@dataclasses.dataclass
class Loaded:
    """A model to benchmark: a Keras model, or the bytes of a .tflite file."""
    label: str
    model: object
    accuracy: float = None
    accuracy_source: str = None


def parse_spec(spec):
    """'mobilenet_v2@96:alpha=0.35' -> ('mobilenet_v2', 96, {'alpha': 0.35}); a path -> (path,
    None, {})."""
    if spec.endswith((".keras", ".tflite")):
        return spec, None, {}
    head, _, options = spec.partition(":")
    name, _, size = head.partition("@")
    kwargs = {}
    for item in filter(None, options.split(",")):
        key, _, value = item.partition("=")
        try:
            kwargs[key] = float(value) if "." in value else int(value)
        except ValueError:
            raise InputError(f"model option {item!r} in {spec!r} is not key=number") from None
    if size and not size.isdigit():
        raise InputError(f"{spec!r}: the size after @ must be a number, e.g. mobilenet_v2@96")
    return name, int(size) if size else None, kwargs


def load(spec, input_shape=None, num_classes=None):
    """A Loaded model from a registry spec (NAME[@SIZE][:option=value,...], untrained), a .keras
    checkpoint (its accuracy from the metrics.json of its apps.train run, if beside it) or a
    .tflite file."""
    import keras

    from effkeras import models, saving

    name, size, kwargs = parse_spec(spec)
    if name.endswith(".tflite"):
        try:
            with open(name, "rb") as f:
                flatbuffer = f.read()
        except OSError as e:
            raise InputError(f"cannot read {name}: {e.strerror}") from None
        return Loaded(spec_label(spec), flatbuffer)
    if name.endswith(".keras"):
        model = saving.load_model(name)
        accuracy, source = _run_accuracy(os.path.dirname(os.path.abspath(name)))
        return Loaded(spec_label(spec), model, accuracy, source)
    info = models.info(name)
    shape = input_shape or info.input_shape
    if size:
        shape = (size, size, shape[-1])
    keras.utils.set_random_seed(0)  # the same weights run after run (Vela compresses them)
    model = models.get(name, input_shape=shape, num_classes=num_classes, **kwargs)
    return Loaded(spec, model)


def spec_label(spec):
    """What a model is called in the rows: a registry spec as given; a file by its stem, or by
    its run directory for model.keras (runs/x/model.keras -> 'x')."""
    name = parse_spec(spec)[0]
    if not name.endswith((".keras", ".tflite")):
        return spec
    stem = os.path.splitext(os.path.basename(name))[0]
    return os.path.basename(os.path.dirname(os.path.abspath(name))) if stem == "model" else stem


def _run_accuracy(directory):
    """(test top-1, source) from an apps.train run's metrics.json, or (None, None)."""
    try:
        with open(os.path.join(directory, "metrics.json")) as f:
            metrics = json.load(f)
        return float(metrics["test"]["top1"]), f"metrics.json ({metrics.get('dataset')}, Keras)"
    except (OSError, ValueError, KeyError, TypeError):
        return None, None


def file_kind(flatbuffer):
    """'arm' (LCE ops), 'int8' (int8 input) or 'float': the target a .tflite file was made for."""
    from effkeras.deploy import verify

    if any(op.type.startswith("Lce") for op in verify.operators(flatbuffer)):
        return "arm"
    inputs, _ = verify.io_tensors(flatbuffer)
    return "int8" if inputs and inputs[0].dtype in ("int8", "uint8") else "float"


def convert(loaded, target, *, calibration=None, sample=None):
    """(flatbuffer, report) of `loaded` for `target`; a .tflite file is taken as it is for its
    own kind, and converted further only from int8 to tflm or ethos-u*."""
    from effkeras import deploy
    from effkeras.deploy import verify

    if isinstance(loaded.model, bytes):
        kind = file_kind(loaded.model)
        if target == kind:
            ops = verify.operators(loaded.model)
            return loaded.model, verify.Report(
                target=target, size_bytes=len(loaded.model), op_census=verify.op_census(ops),
                max_abs_diff=None, max_rel_diff=None, samples=0)
        if kind != "int8" or target in CPU_TARGETS:
            raise InputError(f"{loaded.label}.tflite is a{'n' if kind[0] in 'ai' else ''} {kind} "
                             f"file; it benchmarks on target {kind}"
                             + (", or tflm / ethos-u*" if kind == "int8" else "")
                             + f", not {target}: give the .keras model to convert it for "
                             f"{target}")
    # ethos-u: ops Vela cannot put on the NPU stay for the Cortex-M, counted in the row.
    options = {"allow_cpu_ops": True} if target.startswith("ethos-u") else {}
    return deploy.convert(loaded.model, target, calibration=calibration, sample=sample,
                          **options)


def mac_shares(model, report, rows):
    """(binary share, NPU share) of `model`'s MACs (`rows`: its effkeras.graph.summary rows) in the
    converted file of `report`."""
    from effkeras import graph
    from effkeras.deploy import lce

    total = sum(row.macs for row in rows)
    if not total:
        return None, None
    if report.target.startswith("lce"):  # the layers that became LceBconv2d
        binary = {layer.name for layer in graph.leaf_layers(model) if lce.is_binary(layer)}
        binary -= set(report.float_fallback)
        return sum(row.macs for row in rows if row.name in binary) / total, None
    if report.target.startswith("ethos-u"):  # Vela's MAC count runs a little above ours
        parts = [stage for stage in getattr(report, "stages", ()) if "npu_macs" in stage]
        npu = sum(part["npu_macs"] for part in parts) if parts else report.npu_macs
        return None, min(1.0, npu / total)
    return None, None


def describe(loaded, target, flatbuffer, report):
    """The Row of one converted model, before timing."""
    import keras

    from effkeras.graph import summary

    row = Row(model=loaded.label, target=target, size_bytes=len(flatbuffer),
              ops=dict(report.op_census), accuracy=loaded.accuracy,
              accuracy_source=loaded.accuracy_source)
    if isinstance(loaded.model, keras.Model):
        layers = summary.summarize(loaded.model)
        totals = summary.totals(layers)
        row.input = "x".join(str(d) for d in loaded.model.input_shape[1:])
        row.params = totals["total_params"]
        row.macs = totals["binary_macs"] + totals["low_bit_macs"] + totals["float_macs"]
        row.binary_mac_share, row.npu_mac_share = mac_shares(loaded.model, report, layers)
    row.arena_bytes = getattr(report, "arena_bytes", None) or None
    if target.startswith("ethos-u"):
        # An early-exit network's stages run one after the other when no exit is taken early.
        parts = ([stage for stage in getattr(report, "stages", ()) if "cycles_total" in stage]
                 or [vars(report)])
        _vela(row, parts)
        row.sram_bytes = max(part["sram_bytes"] for part in parts)
    else:
        row.runtime = RUNTIMES.get(target, "")
    return row


def _vela(row, parts):
    """Vela's estimate of the parts (a file, or stage files run in turn) into `row`."""
    row.runtime = "vela (estimate)"
    row.cycles = sum(part["cycles_total"] for part in parts)
    row.cpu_ops = sum(part["cpu_ops"] for part in parts)
    row.median_ms = row.p25_ms = row.p75_ms = sum(
        1e3 / part["inferences_per_second"] for part in parts)
    row.inferences_per_second = 1e3 / row.median_ms


def stage_rows(row, report):
    """An early-exit network's tflm or ethos-u row, stage by stage: each stage file's bytes,
    MACs, TFLite Micro arena or Vela estimate."""
    rows = []
    for stage in getattr(report, "stages", ()):
        if "file_bytes" not in stage:  # one file with a signature per stage: no stage files
            break
        part = Row(model=f"{row.model} stage {stage['stage']}", target=row.target,
                   input=row.input, macs=stage["stage_macs"], size_bytes=stage["file_bytes"],
                   arena_bytes=stage.get("arena_bytes"), sram_bytes=stage.get("sram_bytes"))
        if "cycles_total" in stage:
            _vela(part, [stage])
            part.npu_mac_share = min(1.0, stage["npu_macs"] / stage["stage_macs"])
        rows.append(part)
    return rows


def runner(flatbuffer, target, threads=1):
    """A zero-argument function running one inference of `flatbuffer` on a fixed input."""
    from effkeras.deploy import early_exit, runtime, verify

    inputs, _ = verify.io_tensors(flatbuffer)
    rng = np.random.default_rng(0)
    images = [rng.uniform(0, 255, (1, *t.shape[1:])).astype(np.float32) for t in inputs]
    if early_exit.is_early_exit_file(flatbuffer):  # every stage, as when no exit is confident
        stages = early_exit.Runner(flatbuffer, runtime="tflm" if target == "tflm" else "litert")
        return lambda: stages.exit_outputs(images)
    if target == "arm":
        import larq_compute_engine

        interpreter = larq_compute_engine.testing.Interpreter(flatbuffer, num_threads=threads)
        return lambda: interpreter.predict(images[0] if len(images) == 1 else images)
    run = (runtime.TFLiteMicro(flatbuffer) if target == "tflm"
           else runtime.LiteRT(flatbuffer, num_threads=threads))
    encoded = run.encode([x[0] for x in images])
    return lambda: run.run_one(encoded)


def time_interleaved(runners, *, runs, warmup, progress=True):
    """{key: [ms per run]} of zero-argument `runners`, which take turns: `warmup` rounds, then
    `runs` rounds of one call each."""
    from tqdm import tqdm

    for _ in range(warmup):
        for run in runners.values():
            run()
    times = {key: [] for key in runners}
    for _ in tqdm(range(runs), desc="timing (interleaved)", unit="round", disable=not progress):
        for key, run in runners.items():
            start = time.perf_counter()
            run()
            times[key].append(1e3 * (time.perf_counter() - start))
    return times


def _one_line(error):
    text = str(error).strip().splitlines()
    message = text[0] if text else ""
    kind = "" if isinstance(error, InputError) else f"{type(error).__name__}: "
    return (kind + message)[:400]


def file_name(row):
    return re.sub(r"[^\w.-]+", "_", f"{row.model}_{row.target}") + ".tflite"


def run(specs, targets, *, input_shape=None, num_classes=None, threads=1, runs=20, warmup=3,
        baseline=None, dataset=None, data_dir=None, calibration_samples=200, output_dir=None,
        progress=True):
    """Rows (a Row per model and target) of every spec on every target; see the module doc.

    dataset: calibrate int8 on its training images, check every conversion on its test images
    and give each written file's top-1 on the test split; without it, random inputs, and
    accuracies only from the metrics.json of .keras checkpoints. output_dir: where the .tflite
    files and benchmark.json / .md / .png go."""
    from tqdm import tqdm

    from effkeras import deploy

    _check_arguments(specs, targets, threads, runs, warmup, baseline)
    rows, flatbuffers = [], {}
    jobs = [(spec, target) for spec in specs for target in targets]
    loaded_by_spec = {}
    bar = tqdm(jobs, desc="converting", unit="file", disable=not progress)
    for spec, target in bar:
        bar.set_postfix_str(f"{spec} -> {target}")
        if spec not in loaded_by_spec:
            try:
                loaded_by_spec[spec] = load(spec, input_shape, num_classes)
            except Exception as error:  # noqa: BLE001  (a model that fails is a row)
                loaded_by_spec[spec] = error
        loaded = loaded_by_spec[spec]
        if isinstance(loaded, Exception):
            rows.append(Row(model=spec, target=target, error=_one_line(loaded)))
            continue
        try:
            calibration, sample = _real_images(loaded, target, dataset, data_dir,
                                               calibration_samples)
            flatbuffer, report = convert(loaded, target, calibration=calibration, sample=sample)
            row = describe(loaded, target, flatbuffer, report)
            stages = stage_rows(row, report)
        except Exception as error:  # noqa: BLE001
            rows.append(Row(model=loaded.label, target=target, error=_one_line(error)))
            continue
        if output_dir:
            row.file = file_name(row)
            deploy.save(os.path.join(output_dir, row.file), flatbuffer, report)
        flatbuffers[id(row)] = flatbuffer
        rows += [row, *stages]

    runners = {}
    for row in rows:  # runs=0: the deterministic figures only (sizes, arenas, Vela)
        if runs and id(row) in flatbuffers and row.target in RUNTIMES:
            try:
                runners[id(row)] = runner(flatbuffers[id(row)], row.target, threads)
            except Exception as error:  # noqa: BLE001
                row.error = _one_line(error)
    if runners:
        times = time_interleaved(runners, runs=runs, warmup=warmup, progress=progress)
        for row in rows:
            if id(row) in times:
                ms = np.array(times[id(row)])
                row.median_ms = float(np.median(ms))
                row.p25_ms, row.p75_ms = (float(v) for v in np.percentile(ms, [25, 75]))
                row.inferences_per_second = 1e3 / row.median_ms
    if dataset and output_dir:  # trained models only: registry names build untrained ones
        given = {spec_label(spec) for spec in specs if spec.endswith((".keras", ".tflite"))}
        _evaluate([row for row in rows if row.model in given], output_dir, dataset, data_dir,
                  progress)
    set_ratios(rows, baseline)
    if output_dir:
        write(rows, output_dir, threads=threads, runs=runs)
    return rows


def _check_arguments(specs, targets, threads, runs, warmup, baseline):
    from effkeras import deploy

    if not specs:
        raise InputError("give at least one model (--models=quicknet,ern18 or .keras/.tflite "
                         "files)")
    if not targets:
        raise InputError("give at least one target (--targets=arm,float,int8,tflm,...)")
    unknown = [target for target in targets if target not in deploy.names()]
    if unknown:
        raise InputError(f"unknown target(s) {', '.join(unknown)}; known targets: "
                         f"{', '.join(deploy.names())}")
    for name, value, least in (("threads", threads, 1), ("runs", runs, 0), ("warmup", warmup, 0)):
        if not isinstance(value, int) or value < least:
            raise InputError(f"--{name} must be an integer >= {least}, got {value!r}")
    labels = [spec_label(spec) for spec in specs]
    twice = sorted({label for label in labels if labels.count(label) > 1})
    if twice:
        raise InputError(f"--models names {', '.join(twice)} twice (files are named by their "
                         f"stem, or by their run directory for model.keras): give each model "
                         f"once, under a distinct name")
    if baseline is not None and baseline not in labels:
        raise InputError(f"--baseline={baseline} is not one of --models ({', '.join(labels)})")


def _real_images(loaded, target, dataset, data_dir, calibration_samples):
    """(calibration, sample) images of `dataset` for a Keras model, else (None, None)."""
    import keras

    from effkeras import data

    if not dataset or not isinstance(loaded.model, keras.Model):
        return None, None
    shape = loaded.model.input_shape[1:]
    classes = loaded.model.output_shape[-1] if not isinstance(
        loaded.model.output_shape, list) else loaded.model.output_shape[0][-1]
    sample, _ = data.take(dataset, "test", 32, input_shape=shape, data_dir=data_dir,
                          num_classes=classes)
    calibration = None
    if target not in ("arm", "float", "float16"):
        calibration, _ = data.take(dataset, "train", calibration_samples, input_shape=shape,
                                   data_dir=data_dir, num_classes=classes)
    return calibration, sample


def _evaluate(rows, output_dir, dataset, data_dir, progress):
    """Each written file's top-1 on the test split, in LiteRT or LCE: a tflm file is the int8
    file LiteRT runs, an ethos-u file the int8 file Vela compiled; an early-exit file's last
    exit, every stage run."""
    from tqdm import tqdm

    from effkeras import data, evaluation
    from effkeras.deploy import early_exit

    todo = [row for row in rows if row.file]
    for row in tqdm(todo, desc="evaluating", unit="file", disable=not progress):
        path = os.path.join(output_dir, row.file)
        if row.target.startswith("ethos-u"):  # Vela's file runs on the NPU only: its int8 input
            int8 = os.path.splitext(path)[0] + "_int8.tflite"
            path = int8 if os.path.exists(int8) else path
        try:
            with open(path, "rb") as f:
                flatbuffer = f.read()
            if early_exit.is_early_exit_file(flatbuffer):
                stages = early_exit.Runner(flatbuffer)
                shape = stages.description["stages"][0]["reads"][0]["shape"][1:]
                split = data.load(dataset, "test", input_shape=shape, batch_size=256,
                                  data_dir=data_dir)
                result = evaluation.evaluate(lambda x: stages.exit_outputs(x)[-1], split)
                where = "litert, last exit"
            else:
                result = evaluation.evaluate_tflite(path, dataset, data_dir=data_dir)
                where = result["runtime"]
        except Exception as error:  # noqa: BLE001  (the row's other figures stand)
            row.accuracy, row.accuracy_source = None, f"not evaluated: {_one_line(error)}"
            continue
        row.accuracy = float(result["top1"])
        row.accuracy_source = f"{dataset} test ({result['examples']} images), the .tflite ({where})"


def baseline_row(rows, baseline, target, key="median_ms"):
    """The baseline model's row on `target` if it was measured there, else on its first
    measured target."""
    mine = [row for row in rows if row.model == baseline and _value(row, key) is not None]
    same = [row for row in mine if row.target == target]
    return (same or mine or [None])[0]


def _value(row, key):
    if key == "median_ms":
        return row.median_ms
    return (row.device_ms or {}).get(key)


def set_ratios(rows, baseline):
    """Each row's median latency over the baseline's (`baseline_row`)."""
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
    return sorted({int(t) for row in rows for t in (row.device_ms or {})})


def _baseline(rows):
    """(the first row's baseline label "model (target)", that model) of `rows`' ratios, or
    (None, None)."""
    label = next((row.baseline for row in rows if row.baseline), None)
    return label, label and label.rsplit(" (", 1)[0]


def table(rows, *, threads=1, runs=None):
    """A Markdown table of `rows`, with a note on how the times were taken."""
    measured_on = device_threads(rows)
    device = next((row.device for row in rows if row.device), None)
    baseline, baseline_model = _baseline(rows)
    header = ["model", "target", "input", "params", "MACs", "binary / NPU MACs", "file bytes",
              "runtime", "ms (median [p25–p75])", f"× {baseline_model or 'baseline'}",
              "RAM bytes", "inf/s", "top-1"]
    header += [f"{device} ms, {t} thread{'s' * (t > 1)}" for t in measured_on]
    if measured_on:
        header.append(f"{device} × baseline")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        if row.error:
            cells = ([row.model, row.target] + [""] * (len(header) - 3)
                     + [f"**failed**: {row.error}"])
            lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
            continue
        share = _fmt(row.binary_mac_share if row.binary_mac_share is not None
                     else row.npu_mac_share, "{:.2f}")
        if row.cpu_ops:
            share += f" ({row.cpu_ops} ops on the CPU)"
        keras_accuracy = (" (Keras)" if (row.accuracy_source or "").startswith("metrics.json")
                          else "")
        timing = _fmt(row.median_ms, "{:.2f}")
        if row.median_ms is not None and row.p25_ms is not None and row.p25_ms != row.p75_ms:
            timing += f" [{row.p25_ms:.2f}–{row.p75_ms:.2f}]"
        cells = [row.model, row.target, row.input or "–", _fmt(row.params),
                 _fmt(row.macs and row.macs / 1e6, "{:,.1f} M"), share,
                 _fmt(row.size_bytes), row.runtime or "–", timing, _fmt(row.ratio, "{:.2f}"),
                 _fmt(row.arena_bytes or row.sram_bytes),
                 _fmt(row.inferences_per_second, "{:,.1f}"),
                 _fmt(row.accuracy and 100 * row.accuracy, "{:.2f}%") + keras_accuracy]
        cells += [_fmt((row.device_ms or {}).get(str(t)), "{:.1f}") for t in measured_on]
        if measured_on:
            reference = baseline_row(rows, baseline_model, row.target,
                                     key=str(measured_on[0])) if baseline else None
            ours = (row.device_ms or {}).get(str(measured_on[0]))
            cells.append(_fmt(ours / reference.device_ms[str(measured_on[0])]
                              if ours and reference else None, "{:.2f}"))
        lines.append("| " + " | ".join(cells) + " |")
    notes = [f"Latency on this machine's CPU ({threads} thread{'s' * (threads > 1)}"
             + (f", median of {runs} interleaved runs" if runs else "") + "): LCE's interpreter "
             "for arm (on x86 its portable, not its ARM, kernels), LiteRT with XNNPack for float "
             "and int8, TFLite Micro's reference kernels for tflm; ethos-u rows are Vela's "
             "estimate (1000 / inferences per second). RAM: TFLite Micro's smallest arena (tflm), "
             "Vela's SRAM use (ethos-u)."]
    if baseline:
        notes.append(f"× {baseline_model}: a row's median over that model's on the same "
                     f"target (else on {baseline}).")
    return "\n".join(lines) + "\n\n" + "\n".join(notes)


def plot(rows, path):
    """Accuracy against latency and against file size where rows have accuracies; else latency
    (× baseline where set) and file size per row."""
    done = [row for row in rows if not row.error and row.size_bytes]
    accurate = [row for row in done if row.accuracy is not None and row.median_ms]
    with plots.figure(path, ncols=2, figsize=(12, 4.5)) as (figure, (left, right)):
        if accurate:
            for axis, key, label in ((left, "median_ms", "latency, ms (log)"),
                                     (right, "size_bytes", "file bytes (log)")):
                named = set()  # each model named once per axis, at its first point
                for target in dict.fromkeys(row.target for row in accurate):
                    mine = [row for row in accurate if row.target == target]
                    axis.scatter([getattr(row, key) for row in mine],
                                 [100 * row.accuracy for row in mine], label=target)
                    for row in mine:
                        if row.model not in named:
                            named.add(row.model)
                            axis.annotate(row.model, (getattr(row, key), 100 * row.accuracy),
                                          fontsize=7, xytext=(3, 3), textcoords="offset points")
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
        left.set_xlabel(f"latency × {_baseline(done)[1]} (on the same target)"
                        if use_ratio else "latency, ms")
        right.barh(labels, [row.size_bytes / 2**20 for row in done], color="tab:blue")
        right.set_xlabel("file MiB")
        for axis in (left, right):
            axis.invert_yaxis()
            axis.tick_params(axis="y", labelsize=7)


def write(rows, output_dir, *, threads=1, runs=None):
    """benchmark.json, benchmark.md and benchmark.png in `output_dir`."""
    os.makedirs(output_dir, exist_ok=True)
    fileio.write_json(os.path.join(output_dir, f"{STEM}.json"),
                      {"threads": threads, "runs": runs,
                       "rows": [_plain(dataclasses.asdict(row)) for row in rows]})
    fileio.write_bytes(os.path.join(output_dir, f"{STEM}.md"),
                       (table(rows, threads=threads, runs=runs) + "\n").encode())
    plot(rows, os.path.join(output_dir, f"{STEM}.png"))


def read(output_dir):
    """(rows, threads, runs) of a benchmark.json that `run` wrote."""
    path = os.path.join(output_dir, f"{STEM}.json")
    try:
        with open(path) as f:
            saved = json.load(f)
        rows = [Row(**row) for row in saved["rows"]]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise InputError(f"cannot read {path} ({e}); write it with python -m apps.benchmark "
                         f"--output_dir={output_dir}") from None
    return rows, saved.get("threads", 1), saved.get("runs")


def _plain(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def merge_device(output_dir, measured, device):
    """Adds ARM latencies `measured` ({file name: {threads: ms}}) from `device` to the rows of
    `output_dir`'s benchmark, and rewrites its JSON, table and plot. Returns the rows."""
    rows, threads, runs = read(output_dir)
    by_file = {row.file: row for row in rows if row.file}
    for name, per_threads in measured.items():
        if name not in by_file:
            raise InputError(f"{name} is not a file of {output_dir}/{STEM}.json")
        row = by_file[name]
        row.device_ms = {**(row.device_ms or {}),
                         **{str(t): float(ms) for t, ms in per_threads.items()}}
        row.device = device
    write(rows, output_dir, threads=threads, runs=runs)
    return rows

