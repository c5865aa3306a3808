"""Conversion of a multi-exit Keras model to its early-exit files, for the deploy targets.

- phones (targets float, float16, int8): one .tflite with K signatures stage_1 ... stage_K;
  LiteRT runs each with `get_signature_runner`. int8 files keep float32 inputs and outputs by
  default: each signature quantizes what it reads and dequantizes what it returns, so a state
  tensor needs no agreement between the ranges the producing and the consuming stage each
  calibrated (they differ: a CONCATENATION's inputs take its output's scale). With io="int8"
  (tflm's default) state crosses in int8, a quarter of the bytes, and the app requantizes it
  where the two sides' parameters differ; the description marks those tensors.
- microcontrollers (target tflm): TFLite Micro runs a file's first subgraph only, so the K-
  signature int8 file is cut into K single-stage files (the same bytes: each keeps its own
  subgraph and the weights it uses), each with its measured arena and the state it hands on.
- NPUs (ethos-u*): the int8 stage files, each compiled by Vela.

Every conversion is checked: the chained stages' K exits against the Keras model's on a sample
(through `Runner`), and for tflm each stage file in TFLite Micro against LiteRT.
"""

import dataclasses
import tempfile

import numpy as np

from effkeras import early_exit
from effkeras.deploy import verify
from effkeras.deploy.converter import (
    convert_saved_model,
    float_ops,
    quantize_saved_model,
    top1_agreement,
)
from effkeras.deploy.early_exit.description import (
    describe,
    description,
    stage_files,
    with_description,
)
from effkeras.deploy.early_exit.runner import Runner, _micro_stages
from effkeras.deploy.early_exit.stages import SIGNATURE, export_stages, run_stages, split_stages
from effkeras.deploy.flatbuffer import op_census, operators, signatures
from effkeras.deploy.report import EarlyExitInt8Report, EarlyExitTFLiteReport, EarlyExitTflmReport
from effkeras.errors import InputError
from effkeras.graph import summary

TARGETS = ("float", "float16", "int8", "tflm", "ethos-u*")
_CALIBRATION_BATCH = 32
# The report class of each target's early-exit form (ethos-u*: int8's, then Vela's rows).
REPORTS = {
    "float": EarlyExitTFLiteReport,
    "float16": EarlyExitTFLiteReport,
    "int8": EarlyExitInt8Report,
    "tflm": EarlyExitTflmReport,
}


def has_form(target):
    """Whether `target` has an early-exit form.

    Args:
        target: a deploy target name.

    Returns:
        True for one file with a signature per stage, or one file per stage (tflm; ethos-u*:
        each stage compiled by Vela).
    """
    return target in TARGETS or target.startswith("ethos-u")


def convert(
    model,
    target,
    *,
    calibration=None,
    sample=None,
    io=None,
    thresholds=None,
    allow_float_fallback=False,
    input_range=verify.PIXEL_RANGE,
    max_rel_diff=None,
    calibration_samples=None,
    calibration_source=None,
    **vela_options,
):
    """The early-exit file of a multi-exit Keras model for `target`, verified.

    Checks: the chained stages' K exits against the Keras model's on `sample`; int8: every op
    in int8; tflm: each stage file in TFLite Micro against LiteRT, and its arena. The report's
    artifacts (tflm): the stage files <stem>_stage<k>.tflite and their C arrays; ethos-u*: the
    int8 file (io int8) whose stage files Vela compiles one by one, the artifacts being the
    Vela stage files, each stage row carrying Vela's estimate.

    Args:
        model: the Keras model; for tflm also the bytes of an int8 K-signature file.
        target: float, float16, int8, tflm or ethos-u*.
        calibration: images for the int8 ranges; None draws `calibration_samples` random
            inputs in `input_range` and says so in the report.
        sample: the inputs the check runs on; None: random ones.
        io: (int8, tflm) "float" (int8's default) keeps float32 stage inputs and outputs, so
            state tensors cross stage boundaries as floats; "int8" (tflm's default) hands them
            on in int8, a quarter of the bytes, requantized by the app where the two stages
            calibrated different ranges (`Runner` does; the description marks them).
        thresholds: K numbers or a thresholds file (`early_exit.load_thresholds`), written
            into the file's description.
        allow_float_fallback: (int8) accept ops left in float.
        input_range: (low, high) of the model's inputs.
        max_rel_diff: the allowance against Keras; None: the target's (tflite.MAX_REL_DIFF).
        calibration_samples: random calibration inputs drawn when none are given.
        calibration_source: what the calibration images are, for the report.
        **vela_options: ethos_u.compile_for's options (ethos-u* only).

    Returns:
        (the K-signature flatbuffer, an EarlyExitReport of the target's kind).

    Raises:
        InputError: a target without an early-exit form, options that do not go with it, a
            model that is not multi-exit, thresholds for another model, ops left in float.
        RuntimeError: the file disagrees with Keras, or TFLite Micro with LiteRT.
    """
    from effkeras.deploy import tflite

    if target.startswith("ethos-u"):
        if isinstance(model, (bytes, bytearray)):
            raise InputError(f"{target}: give the Keras model of the early-exit network")
        if io not in (None, "int8"):
            raise InputError(f"{target} stages hand on int8 state; io={io} is not possible")
        flatbuffer, report = convert(
            model,
            "int8",
            calibration=calibration,
            sample=sample,
            io="int8",
            thresholds=thresholds,
            input_range=input_range,
            max_rel_diff=max_rel_diff,
            calibration_samples=calibration_samples,
            calibration_source=calibration_source,
        )
        return _vela_stages(flatbuffer, report, target, vela_options)
    if vela_options:
        raise InputError(
            f"{', '.join(sorted(vela_options))} go(es) with an ethos-u target, not {target}"
        )
    if target not in TARGETS:
        raise InputError(
            f"target {target} has no early-exit form (one file, or one per stage, "
            f"for {', '.join(TARGETS)}); to convert the graph of all exits at once, "
            f"pass early_exit=False (apps.convert: --noearly_exit)"
        )
    # Phones hand float state from signature to signature; microcontrollers int8 state, a
    # quarter of the bytes held between stages and of each stage's arena.
    if io is not None and io not in tflite.IO_TYPES:
        raise InputError(f"unknown io type {io!r}; choose from {', '.join(tflite.IO_TYPES)}")
    if io == "uint8":
        raise InputError(
            "io=uint8 (camera pixels) is for single-output files; an early-exit file's "
            "stages hand on state: choose io=float (phones) or io=int8 (microcontrollers)"
        )
    if isinstance(model, (bytes, bytearray)):
        return _convert_file(bytes(model), target, sample=sample, thresholds=thresholds, io=io)
    io = io or ("int8" if target == "tflm" else "float")
    stages = split_stages(model)
    costs = summary.exit_costs(model)
    exit_flops = [int(c["flops"]) for c in costs]
    chosen = (
        None
        if thresholds is None
        else early_exit.load_thresholds(thresholds, len(stages), exit_flops)["thresholds"]
    )
    if sample is None:
        sample = verify.random_sample(model, input_range)
    verify.check_sample(model, sample)
    quantized = target in ("int8", "tflm")
    if quantized:
        count = calibration_samples or tflite.CALIBRATION_SAMPLES
        if calibration is None:
            calibration = verify.random_sample(model, input_range, count, seed=2)
            calibration_source = f"{count} random inputs in {list(input_range)}"
        verify.check_sample(model, calibration, "calibration set")
    keys = [SIGNATURE.format(stage.stage) for stage in stages]
    with tempfile.TemporaryDirectory() as directory:
        export_stages(stages, directory)

        def float_file(configure=None):
            return convert_saved_model(directory, model.name, configure, keys)

        if target == "float":
            flatbuffer = float_file()
        elif target == "float16":
            flatbuffer = float_file(_float16)
        else:
            flatbuffer = quantize_saved_model(
                directory, _stage_calibration(stages, calibration), io, model.name, float_file, keys
            )
    ops = operators(flatbuffer)
    left_float = float_ops(ops) if quantized else []
    if left_float and (target == "tflm" or not allow_float_fallback):
        raise InputError(
            f"{len(left_float)} op(s) of {model.name} stayed float in the int8 file: "
            f"{', '.join(left_float[:5])}{' ...' if len(left_float) > 5 else ''}. TFLite has no "
            f"int8 kernel for them; replace those layers"
            + ("" if target == "tflm" else ", or pass --allow_float_fallback")
        )
    described = describe(
        flatbuffer,
        stages,
        costs,
        model_name=model.name,
        target=target,
        io=io if quantized else "float",
        thresholds=chosen,
    )
    artifacts, micro = {}, {}
    if target == "tflm":
        flatbuffer, described, artifacts, micro = _stage_files_checked(
            flatbuffer, described, sample, model.name
        )
    else:
        flatbuffer = with_description(flatbuffer, described)
    runner = Runner(flatbuffer)
    expected = model.predict(sample, verbose=0)
    actual = runner.exit_outputs(sample)
    limit = (
        max_rel_diff
        if max_rel_diff is not None
        else tflite.MAX_REL_DIFF["int8" if quantized else target]
    )
    abs_diff, rel_diff, _ = verify.check_agreement(
        expected,
        actual,
        max_rel_diff=limit,
        what=f"{target} file's chained stages",
        model=model,
        sample=sample,
        input_range=input_range,
    )
    fields = dict(
        target=target,
        size_bytes=len(flatbuffer),
        op_census=op_census(ops),
        max_abs_diff=abs_diff,
        max_rel_diff=rel_diff,
        samples=verify.batch_size(sample),
        top1_agreement=top1_agreement(expected, actual),
        exits=len(stages),
        exit_max_rel_diff=tuple(verify.max_diffs(e, a)[1] for e, a in zip(expected, actual)),
        exit_top1_agreement=tuple(top1_agreement(e, a) for e, a in zip(expected, actual)),
        stages=_stage_rows(described),
        thresholds=None if chosen is None else tuple(chosen),
        description=described,
    )
    if quantized:
        fields.update(
            io=io,
            float_ops=tuple(left_float),
            calibration=calibration_source or f"{verify.batch_size(calibration)} given inputs",
        )
    report = REPORTS[target](**fields, **micro)
    report.artifacts = artifacts
    return flatbuffer, report


def _vela_stages(flatbuffer, report, accelerator, options):
    """The int8 early-exit `report` for `accelerator`: each stage file compiled by Vela (the
    artifacts <stem>_stage<k>.tflite), its estimate in the report's stage rows; the whole
    network's cycles are the stages' sum (no exit taken early)."""
    from effkeras.deploy import ethos_u

    artifacts, stages = {}, []
    for k, (stage_file, row) in enumerate(zip(stage_files(flatbuffer), report.stages), start=1):
        compiled, vela = ethos_u.compile_for(stage_file, accelerator=accelerator, **options)
        artifacts[f"_stage{k}.tflite"] = compiled
        stages.append(
            dict(
                row,
                file_bytes=len(compiled),
                cycles_total=vela.cycles_total,
                inferences_per_second=vela.inferences_per_second,
                sram_bytes=vela.sram_bytes,
                npu_ops=vela.npu_ops,
                cpu_ops=vela.cpu_ops,
                npu_macs=vela.npu_macs,
            )
        )
    report = dataclasses.replace(report, target=accelerator, stages=tuple(stages))
    report.artifacts = artifacts
    return flatbuffer, report


def _float16(converter):
    import tensorflow as tf

    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.target_spec.supported_types = [tf.float16]


def _stage_calibration(stages, calibration):
    """{signature: {input name: array (N, ...)}}: what each stage reads when the float stages
    run on the calibration images, so that each stage calibrates on the states it will see."""
    arrays = calibration if isinstance(calibration, (list, tuple)) else [calibration]
    traces = []
    for start in range(0, len(arrays[0]), _CALIBRATION_BATCH):
        trace = []
        run_stages(
            stages,
            [np.asarray(a[start : start + _CALIBRATION_BATCH], np.float32) for a in arrays],
            trace,
        )
        traces.append(trace)
    return {
        SIGNATURE.format(stage.stage): {
            name: np.concatenate([trace[stage.stage - 1][name] for trace in traces])
            for name in stage.input_names
        }
        for stage in stages
    }


def _stage_rows(described):
    rows = []
    for stage in described["stages"]:
        row = {
            "stage": stage["stage"],
            "exit": stage["exit"],
            "flops": stage["flops"],
            "stage_macs": stage["stage_macs"],
            "state_in_bytes": sum(t["bytes"] for t in stage["reads"]) if stage["stage"] > 1 else 0,
            "state_out_bytes": sum(t["bytes"] for t in stage["hands_on"]),
            "held_state_bytes": stage["held_state_bytes"],
        }
        for key in ("arena_bytes", "file_bytes", "max_lsb_diff"):
            if key in stage:
                row[key] = stage[key]
        rows.append(row)
    return tuple(rows)


def _output_steps(flatbuffer):
    """{output name: quantization step} of a single-stage file's outputs: their own scale
    (int8 outputs), or that of the int8 tensor a float output is dequantized from."""
    ((_, _, outputs),) = signatures(flatbuffer).values()
    dequantized = {
        op.outputs[0].name: op.inputs[0].scale
        for op in operators(flatbuffer)
        if op.type == "DEQUANTIZE"
    }
    steps = {}
    for name, tensor in outputs.items():
        scale = tensor.scale or dequantized.get(tensor.name) or (1.0,)
        steps[name] = float(scale[0])
    return steps


def _stage_files_checked(flatbuffer, described, sample, name):
    """tflm: (the K-signature file, its description, artifacts, report fields) with each stage
    file run in TFLite Micro against LiteRT on the stages' inputs of `sample`, and its arena
    measured. Raises as tflm.convert does when TFLite Micro computes something else."""
    from effkeras.deploy import tflm

    files = stage_files(flatbuffer)
    try:
        micro = _micro_stages([(f, SIGNATURE.format(k)) for k, f in enumerate(files, start=1)])
    except Exception as e:  # RuntimeError from the C++ side: an op TFLite Micro lacks
        raise InputError(
            f"TFLite Micro cannot run these stage files: "
            f"{str(e).strip().splitlines()[0]}; it has no kernel for one of their "
            f"ops ({', '.join(op_census(operators(flatbuffer)))})"
        ) from None
    litert, trace = Runner(with_description(flatbuffer, described)), []
    litert.exit_outputs(sample, trace=trace)  # each stage's inputs, as LiteRT chains them
    lite = litert._stages
    diffs, steps = [[] for _ in files], [_output_steps(f) for f in files]
    for seen in trace:
        for k, inputs in enumerate(seen):
            encoded = lite[k].encode(inputs)
            a, b = lite[k].run(encoded), micro[k].run(encoded)
            for output in a:
                difference = np.abs(
                    np.asarray(a[output], np.float64) - np.asarray(b[output], np.float64)
                )
                if not np.issubdtype(np.asarray(a[output]).dtype, np.integer):
                    difference = difference / steps[k][output]
                diffs[k].append(np.round(difference).ravel())
    largest = [int(np.concatenate(d).max()) for d in diffs]
    mean = float(np.mean(np.concatenate([np.concatenate(d) for d in diffs])))
    if max(largest) > tflm.MAX_LSB_DIFF or mean > tflm.MAX_MEAN_LSB_DIFF:
        raise RuntimeError(
            f"TFLite Micro's stage outputs differ from LiteRT's by up to "
            f"{max(largest)} LSB, {mean:.2f} on average (limits "
            f"{tflm.MAX_LSB_DIFF}, {tflm.MAX_MEAN_LSB_DIFF}): TFLite Micro "
            f"computes these stage files differently"
        )
    arenas = [tflm.arena_bytes(f) for f in files]
    described = dict(described, target="tflm")
    sizes = [len(f) for f in files]
    for _ in range(4):  # the stage files carry the description, which holds their sizes
        described["stages"] = [
            dict(
                stage,
                arena_bytes=arena,
                file_bytes=size,
                max_lsb_diff=lsb,
                file_suffix=f"_stage{stage['stage']}.tflite",
            )
            for stage, arena, size, lsb in zip(described["stages"], arenas, sizes, largest)
        ]
        tagged = with_description(flatbuffer, described)
        files = stage_files(tagged)
        if [len(f) for f in files] == sizes:
            break
        sizes = [len(f) for f in files]
    flatbuffer = tagged
    artifacts = {}
    for k, (f, arena) in enumerate(zip(files, arenas), start=1):
        stage_name = f"{name}_stage{k}"
        artifacts[f"_stage{k}.tflite"] = f
        artifacts[f"_stage{k}_model_data.h"] = lambda stem, n=stage_name, f=f, a=arena: (
            tflm.c_header(n, len(f), a)
        )
        artifacts[f"_stage{k}_model_data.cc"] = lambda stem, n=stage_name, f=f, k=k: tflm.c_source(
            n, f, f"{stem}_stage{k}"
        )
    return (
        flatbuffer,
        described,
        artifacts,
        {"max_lsb_diff": max(largest), "mean_lsb_diff": round(mean, 3), "arena_bytes": max(arenas)},
    )


def _convert_file(flatbuffer, target, *, sample=None, thresholds=None, io=None):
    """tflm of a given int8 K-signature file (written by `convert` for int8): its stage files,
    checked in TFLite Micro and measured."""
    from effkeras.deploy import tflite

    if target != "tflm":
        raise InputError(
            f"a given early-exit file converts to TFLite Micro stage files "
            f"(--target=tflm) only; for {target}, convert the Keras model"
        )
    described = description(flatbuffer)
    if io is not None and io != described["io"]:
        raise InputError(
            f"this file's stages take and hand on {described['io']} tensors, not "
            f"{io}: convert the Keras model with io={io}"
        )
    ops = tflite.check_int8_file(flatbuffer, "tflm")
    count = described["num_exits"]
    if thresholds is not None:
        described = dict(
            described,
            thresholds=early_exit.load_thresholds(thresholds, count, described["exit_flops"])[
                "thresholds"
            ],
        )
    if sample is None:
        sample = verify.random_inputs(
            [tuple(t["shape"][1:]) for t in described["stages"][0]["reads"]]
        )
    flatbuffer, described, artifacts, micro = _stage_files_checked(
        flatbuffer, described, sample, described["model"]
    )
    chosen = described.get("thresholds")
    report = EarlyExitTflmReport(
        target="tflm",
        size_bytes=len(flatbuffer),
        op_census=op_census(ops),
        max_abs_diff=None,
        max_rel_diff=None,
        samples=0,
        calibration="(given file)",
        io=described["io"],
        exits=count,
        stages=_stage_rows(described),
        thresholds=None if chosen is None else tuple(chosen),
        description=described,
        **micro,
    )
    report.artifacts = artifacts
    return flatbuffer, report
