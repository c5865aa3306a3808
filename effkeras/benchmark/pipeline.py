"""The benchmark run: every model converted for every target through `effkeras.deploy` (each
conversion checks itself against Keras), described (parameters, MACs, the share of them that
runs binary or on the NPU, arena or Vela figures), timed together (`measure`), evaluated where
a dataset is given, and written (`report`).

- arm: LCE's interpreter (on x86 its portable kernels: compare ratios, and measure ARM on the
  device with apps.device_benchmark);
- float, float16, int8: LiteRT (XNNPack);
- tflm: TFLite Micro's interpreter (its reference kernels), and the arena bytes;
- ethos-u*: Vela's estimate (cycles, inferences/s) of the NPU, not run.

Each row also has the share of the model's MACs that run as binary convs (arm: the layers that
became LceBconv2d, w1a2 ones included) or on the NPU (ethos-u: Vela's per-layer MAC counts).
A model or a target that fails becomes a row saying why; the others go on.
"""

import os
import re

from effkeras.benchmark.measure import CPU_TARGETS, RUNTIMES, time_rows
from effkeras.benchmark.report import Row, one_line, set_ratios, write
from effkeras.benchmark.spec import file_kind, is_file, load, parse_spec, spec_label
from effkeras.errors import InputError

MAX_THREADS = 256  # more than any CPU the runtimes meet; a larger count is a typo


def convert(loaded, target, *, calibration=None, sample=None, int8=None, lerp_form="gather"):
    """Converts a loaded model for a target; a .tflite file is taken as it is for its own
    kind, and converted further only from int8 to tflm or ethos-u*.

    Args:
        loaded: a `Loaded` (a Keras model or a .tflite file's bytes).
        target: a deploy target (`effkeras.deploy.names()`).
        calibration: images for int8 calibration, or None (random ones).
        sample: images the conversion is checked on, or None (random ones).
        int8: the int8 file of this Keras model that a conversion for another int8-family
            target made (checked against Keras there), or None: tflm and ethos-u* start from
            it instead of quantizing the model again.
        lerp_form: how learned table activations convert (deploy.convert).

    Returns:
        (flatbuffer, report): the file's bytes and its `effkeras.deploy` report (ethos-u: ops
        Vela leaves for the Cortex-M are allowed and counted).

    Raises:
        InputError: a given file cannot be benchmarked on `target`, or the conversion refuses
            the model.
    """
    from effkeras import deploy
    from effkeras.deploy import flatbuffer as files
    from effkeras.deploy.report import Report

    if isinstance(loaded.model, bytes) and check_file_target(loaded, target) == target:
        ops = files.operators(loaded.model)
        return loaded.model, Report(
            target=target,
            size_bytes=len(loaded.model),
            op_census=files.op_census(ops),
            max_abs_diff=None,
            max_rel_diff=None,
            samples=0,
        )
    # ethos-u: ops Vela cannot put on the NPU stay for the Cortex-M, counted in the row.
    options = {"allow_cpu_ops": True} if target.startswith("ethos-u") else {}
    if int8 is not None and (target == "tflm" or target.startswith("ethos-u")):
        return deploy.convert(int8, target, **options)
    if lerp_form != "gather":
        options["lerp_form"] = lerp_form
    return deploy.convert(loaded.model, target, calibration=calibration, sample=sample, **options)


def check_file_target(loaded, target):
    """The kind of a loaded .tflite file (file_kind); InputError unless it benchmarks on
    `target`: as it is on its own kind, or converted further from int8 to tflm / ethos-u*."""
    kind = file_kind(loaded.model)
    if target != kind and (kind != "int8" or target in CPU_TARGETS):
        raise InputError(
            f"{loaded.label}.tflite is a{'n' if kind[0] in 'ai' else ''} {kind} "
            f"file; it benchmarks on target {kind}"
            + (", or tflm / ethos-u*" if kind == "int8" else "")
            + f", not {target}: give the .keras model to convert it for "
            f"{target}"
        )
    return kind


def int8_file(target, flatbuffer, report):
    """The int8 file within a conversion for an int8-family target, or None (other targets,
    and early-exit networks, whose stages are files of their own)."""
    if getattr(report, "stages", None):
        return None
    if target in ("int8", "tflm"):
        return flatbuffer
    return report.artifacts.get("_int8.tflite") if target.startswith("ethos-u") else None


def mac_shares(model, report, rows):
    """The share of a model's MACs that its converted file runs binary, or on the NPU.

    Args:
        model: the Keras model.
        report: the report of its conversion.
        rows: its `effkeras.graph.summary.summarize` rows.

    Returns:
        (binary share, NPU share): arm files the first (the layers that became LceBconv2d),
        ethos-u files the second (Vela's count); None where it does not apply.
    """
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
    """The row of one converted model, before timing.

    Args:
        loaded: the `Loaded` model.
        target: the deploy target.
        flatbuffer: the converted file's bytes.
        report: the conversion's report.

    Returns:
        A `Row` with the model's input, parameters, MACs and MAC shares (Keras models), the
        file's bytes and op census, the runtime that times it, and the target's own figures
        (TFLite Micro arena; Vela's cycles, SRAM and latency estimate).
    """
    import keras

    from effkeras.graph import summary

    row = Row(
        model=loaded.label,
        target=target,
        size_bytes=len(flatbuffer),
        ops=dict(report.op_census),
        accuracy=loaded.accuracy,
        accuracy_source=loaded.accuracy_source,
    )
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
        parts = [stage for stage in getattr(report, "stages", ()) if "cycles_total" in stage] or [
            vars(report)
        ]
        _vela(row, parts)
        row.sram_bytes = max(part["sram_bytes"] for part in parts)
        row.bits_per_binary_weight = getattr(report, "bits_per_binary_weight", None)
    else:
        row.runtime = RUNTIMES.get(target, "")
    return row


def _vela(row, parts):
    """Vela's estimate of the parts (a file, or stage files run in turn) into `row`."""
    row.runtime = "vela (estimate)"
    row.cycles = sum(part["cycles_total"] for part in parts)
    row.cpu_ops = sum(part["cpu_ops"] for part in parts)
    row.median_ms = row.p25_ms = row.p75_ms = sum(
        1e3 / part["inferences_per_second"] for part in parts
    )
    row.inferences_per_second = 1e3 / row.median_ms


def stage_rows(row, report):
    """An early-exit network's tflm or ethos-u row, stage by stage.

    Args:
        row: the network's `Row`.
        report: its conversion's report (with `stages`).

    Returns:
        A `Row` per stage file: its bytes, MACs, TFLite Micro arena or Vela estimate; none
        for a file with a signature per stage.
    """
    rows = []
    for stage in getattr(report, "stages", ()):
        if "file_bytes" not in stage:  # one file with a signature per stage: no stage files
            break
        part = Row(
            model=f"{row.model} stage {stage['stage']}",
            target=row.target,
            input=row.input,
            macs=stage["stage_macs"],
            size_bytes=stage["file_bytes"],
            arena_bytes=stage.get("arena_bytes"),
            sram_bytes=stage.get("sram_bytes"),
        )
        if "cycles_total" in stage:
            _vela(part, [stage])
            part.npu_mac_share = min(1.0, stage["npu_macs"] / stage["stage_macs"])
        rows.append(part)
    return rows


def file_name(row):
    """The name of a row's .tflite file: its model and target, with anything but letters,
    digits, '.', '-' and '_' replaced by '_'.

    Args:
        row: a `Row`.

    Returns:
        e.g. "mobilenet_v2_96_alpha_0.35_int8.tflite".
    """
    return re.sub(r"[^\w.-]+", "_", f"{row.model}_{row.target}") + ".tflite"


def run(
    specs,
    targets,
    *,
    input_shape=None,
    num_classes=None,
    threads=1,
    runs=20,
    warmup=3,
    baseline=None,
    dataset=None,
    data_dir=None,
    calibration_samples=200,
    output_dir=None,
    progress=True,
    lerp_form="gather",
):
    """Benchmarks every spec on every target (see the module doc).

    Args:
        specs: model specs (`spec.parse_spec`): registry names, .keras or .tflite files.
        targets: deploy targets.
        input_shape: (H, W, C) for registry models (default: each model's own).
        num_classes: classes for registry models (default: each model's own).
        threads: interpreter threads (LiteRT and LCE).
        runs: timed rounds; 0: no timing, only sizes, arenas and Vela's estimates.
        warmup: untimed rounds first.
        baseline: a model of `specs` (its label) that latencies are given as a ratio of.
        dataset: calibrate int8 on its training images, check every conversion on its test
            images and give each written file's top-1 on the test split; without it, random
            inputs, and accuracies only from the metrics.json of .keras checkpoints.
        data_dir: the dataset's folder.
        calibration_samples: training images for int8 calibration.
        output_dir: where the .tflite files and benchmark.json / .md / .png go; None: nothing
            is written.
        progress: show progress bars.
        lerp_form: learned table activations: "gather", "table65" (int8 targets) or
            "relu_sum" (deploy.convert).

    Returns:
        A list of `Row`s: one per model and target (a failure is a row with its error), and
        one per stage file of early-exit networks.

    Raises:
        InputError: what the user gave wrong, before any conversion: the arguments
            (`_check_arguments`), a model that does not load (an unknown name or builder
            option, a missing or corrupt file), a .tflite file given to a target it does not
            run on, or output files that would overwrite an input or each other.
    """
    from tqdm import tqdm

    from effkeras import deploy

    _check_arguments(specs, targets, threads, runs, warmup, baseline)
    _check_run_options(input_shape, num_classes, dataset, calibration_samples)
    if output_dir:
        _check_output_files(specs, targets, output_dir)
    loaded_by_spec = {}
    for spec in tqdm(specs, desc="loading", unit="model", disable=not progress):
        try:
            loaded_by_spec[spec] = load(spec, input_shape, num_classes)
        except InputError as error:
            raise InputError(f"--models {spec}: {error}") from None
        except Exception as error:  # noqa: BLE001  (a builder's own error: a bad option)
            raise InputError(f"--models {spec} does not build: {one_line(error)}") from None
        if isinstance(loaded_by_spec[spec].model, bytes):
            for target in targets:
                check_file_target(loaded_by_spec[spec], target)
    rows, flatbuffers = [], {}
    int8_files = {}  # spec -> its first int8 file: quantized once for int8, tflm and ethos-u*
    jobs = [(spec, target) for spec in specs for target in targets]
    bar = tqdm(jobs, desc="converting", unit="file", disable=not progress)
    for spec, target in bar:
        bar.set_postfix_str(f"{spec} -> {target}")
        loaded = loaded_by_spec[spec]
        try:
            calibration, sample = _real_images(
                loaded, target, dataset, data_dir, calibration_samples
            )
            flatbuffer, report = convert(
                loaded,
                target,
                calibration=calibration,
                sample=sample,
                int8=int8_files.get(spec),
                lerp_form=lerp_form,
            )
            if (quantized := int8_file(target, flatbuffer, report)) is not None:
                int8_files.setdefault(spec, quantized)
            row = describe(loaded, target, flatbuffer, report)
            stages = stage_rows(row, report)
        except Exception as error:  # noqa: BLE001
            rows.append(Row(model=loaded.label, target=target, error=one_line(error)))
            continue
        if output_dir:
            row.file = file_name(row)
            deploy.save(os.path.join(output_dir, row.file), flatbuffer, report)
        flatbuffers[id(row)] = flatbuffer
        rows += [row, *stages]

    time_rows(rows, flatbuffers, threads=threads, runs=runs, warmup=warmup, progress=progress)
    if dataset and output_dir:  # trained models only: registry names build untrained ones
        given = {spec_label(spec) for spec in specs if is_file(spec)}
        _evaluate(
            [row for row in rows if row.model in given], output_dir, dataset, data_dir, progress
        )
    set_ratios(rows, baseline)
    if output_dir:
        write(rows, output_dir, threads=threads, runs=runs)
    return rows


def _check_run_options(input_shape, num_classes, dataset, calibration_samples):
    from effkeras import data

    if input_shape is not None and (
        len(input_shape) != 3 or not all(isinstance(d, int) and d >= 1 for d in input_shape)
    ):
        raise InputError(f"--input_shape must be three positive sizes H,W,C, got {input_shape}")
    if num_classes is not None and (not isinstance(num_classes, int) or num_classes < 2):
        raise InputError(f"--num_classes must be an integer >= 2, got {num_classes!r}")
    if dataset is not None and dataset not in data.names():
        raise InputError(f"unknown --dataset={dataset}; known: {', '.join(data.names())}")
    if not isinstance(calibration_samples, int) or calibration_samples < 1:
        raise InputError(
            f"--calibration_samples must be a positive integer, got {calibration_samples!r}"
        )


def _check_output_files(specs, targets, output_dir):
    """InputError when a row's .tflite file would overwrite a given file or another row's."""
    written = {}
    for spec in specs:
        for target in targets:
            path = os.path.realpath(
                os.path.join(output_dir, file_name(Row(model=spec_label(spec), target=target)))
            )
            if path in written:
                raise InputError(
                    f"{spec} on {target} and {written[path]} would both be written to "
                    f"{path}; rename one of the models' files"
                )
            written[path] = f"{spec} on {target}"
    for spec in specs:
        name = parse_spec(spec)[0]
        if is_file(name) and os.path.realpath(name) in written:
            raise InputError(
                f"{written[os.path.realpath(name)]} would be written over the input {name}; "
                f"give another --output_dir"
            )


def _check_arguments(specs, targets, threads, runs, warmup, baseline):
    from effkeras import deploy

    if not specs:
        raise InputError(
            "give at least one model (--models=quicknet,ern18 or .keras/.tflite files)"
        )
    if not targets:
        raise InputError("give at least one target (--targets=arm,float,int8,tflm,...)")
    unknown = [target for target in targets if target not in deploy.names()]
    if unknown:
        raise InputError(
            f"unknown target(s) {', '.join(unknown)}; known targets: {', '.join(deploy.names())}"
        )
    for name, value, least in (("threads", threads, 1), ("runs", runs, 0), ("warmup", warmup, 0)):
        if not isinstance(value, int) or value < least:
            raise InputError(f"--{name} must be an integer >= {least}, got {value!r}")
    if threads > MAX_THREADS:
        raise InputError(f"--threads must be at most {MAX_THREADS}, got {threads}")
    labels = [spec_label(spec) for spec in specs]
    twice = sorted({label for label in labels if labels.count(label) > 1})
    if twice:
        raise InputError(
            f"--models names {', '.join(twice)} twice (files are named by their "
            f"stem, or by their run directory for model.keras): give each model "
            f"once, under a distinct name"
        )
    if baseline is not None and baseline not in labels:
        raise InputError(f"--baseline={baseline} is not one of --models ({', '.join(labels)})")


def _real_images(loaded, target, dataset, data_dir, calibration_samples):
    """(calibration, sample) images of `dataset` for a Keras model, else (None, None)."""
    import keras

    from effkeras import data

    if not dataset or not isinstance(loaded.model, keras.Model):
        return None, None
    shape = loaded.model.input_shape[1:]
    classes = (
        loaded.model.output_shape[-1]
        if not isinstance(loaded.model.output_shape, list)
        else loaded.model.output_shape[0][-1]
    )
    sample, _ = data.take(
        dataset, "test", 32, input_shape=shape, data_dir=data_dir, num_classes=classes
    )
    calibration = None
    if target not in ("arm", "float", "float16"):
        calibration, _ = data.take(
            dataset,
            "train",
            calibration_samples,
            input_shape=shape,
            data_dir=data_dir,
            num_classes=classes,
        )
    return calibration, sample


def _evaluate(rows, output_dir, dataset, data_dir, progress):
    """Each written file's top-1 on the test split, in LiteRT or LCE: a tflm file is the int8
    file LiteRT runs, an ethos-u file the int8 file Vela compiled; an early-exit file's last
    exit, every stage run."""
    from tqdm import tqdm

    from effkeras import data, evaluation
    from effkeras.deploy import early_exit

    todo = [row for row in rows if row.file]
    done = {}  # file bytes -> (top-1, source): a model's int8, tflm and Vela-input files are one
    for row in tqdm(todo, desc="evaluating", unit="file", disable=not progress):
        path = os.path.join(output_dir, row.file)
        if row.target.startswith("ethos-u"):  # Vela's file runs on the NPU only: its int8 input
            int8 = os.path.splitext(path)[0] + "_int8.tflite"
            path = int8 if os.path.exists(int8) else path
        try:
            with open(path, "rb") as f:
                flatbuffer = f.read()
            if flatbuffer in done:
                row.accuracy, row.accuracy_source = done[flatbuffer]
                continue
            if early_exit.is_early_exit_file(flatbuffer):
                stages = early_exit.Runner(flatbuffer)
                shape = stages.description["stages"][0]["reads"][0]["shape"][1:]
                split = data.load(
                    dataset, "test", input_shape=shape, batch_size=256, data_dir=data_dir
                )
                result = evaluation.evaluate(
                    lambda x, runner=stages: runner.exit_outputs(x)[-1], split
                )
                where = "litert, last exit"
            else:
                result = evaluation.evaluate_tflite(path, dataset, data_dir=data_dir)
                where = result["runtime"]
        except Exception as error:  # noqa: BLE001  (the row's other figures stand)
            row.accuracy, row.accuracy_source = None, f"not evaluated: {one_line(error)}"
            continue
        row.accuracy = float(result["top1"])
        row.accuracy_source = f"{dataset} test ({result['examples']} images), the .tflite ({where})"
        done[flatbuffer] = row.accuracy, row.accuracy_source
