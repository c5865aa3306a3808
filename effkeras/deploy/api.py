"""One entry point for every deploy target: `convert(model, target, *, calibration, **options)`.

A target is a plug-in: a function `fn(model, *, calibration=None, **options) -> (bytes,
Report)` registered under its name with `register_target`. Each runs the same stages in one
direction, passes -> export -> convert -> verify (`verify.py`), and raises (InputError for
what the user can fix) rather than return a flatbuffer that did not check out. `save` writes the
flatbuffer, the target's extra files and the JSON an app developer reads, all atomically.
A model with several outputs (early exits) converts stage by stage for float, float16, int8
and tflm (`early_exit/`): the same targets, one signature (tflm: one file) per exit.
"""

import dataclasses
import os

import keras
import numpy as np

from effkeras import fileio, qat
from effkeras.deploy import int8_tables, verify
from effkeras.deploy.app_file import LABELS_FILE
from effkeras.deploy.flatbuffer import check_flatbuffer, io_tensors, op_census, operators
from effkeras.deploy.registry import get
from effkeras.errors import InputError
from effkeras.graph import passes
from effkeras.graph.passes.collapse import collapse
from effkeras.graph.passes.freeze_tables import freeze_tables
from effkeras.layers.activations import LERP_FORMS, LerpTable

OUTPUTS = ("logits", "probabilities")
# The LerpTable forms, and "table65": gather tables that the int8 targets write with 65 entries
# per channel, read by interpolation (int8_tables.lerp65), a quarter of the 256-entry bytes.
TABLE65 = "table65"
DEPLOY_LERP_FORMS = (*LERP_FORMS, TABLE65)


def convert(
    model,
    target,
    *,
    calibration=None,
    early_exit=None,
    thresholds=None,
    lerp_form="gather",
    outputs="logits",
    rgb_input=False,
    **options,
):
    """`model` converted for `target` and verified (module docstring).

    A Keras model first has its collapsible blocks collapsed (passes/collapse.py), then its
    learned table activations (LerpPSA, ResPSA, BSplineActivation) frozen to LerpTables of
    `lerp_form` (passes/freeze_tables.py).

    Args:
        model: a Keras model, or the bytes of a .tflite file (targets that take one).
        target: a registered target name (`names()`).
        calibration: images (N, H, W, C) float32 in the model's input range for targets that
            quantize (int8, tflm, ethos-u*); None draws random images and says so in the
            report.
        early_exit: a model with several outputs (an early-exit network) converts stage by
            stage (early_exit/): one file with a signature per exit (float, float16, int8),
            or a file per stage (tflm, as is a given early-exit file); False: the graph of
            all exits at once, one subgraph with K outputs (to check the accuracy of every
            exit); None: stage by stage when the model has several outputs.
        thresholds: the exits' confidence thresholds (K numbers or a thresholds file)
            written into an early-exit file.
        lerp_form: "gather" (builtin GATHER; exact int8 tables for the int8 targets),
            "table65" (int8 targets: 65-entry tables read by interpolation, a quarter of the
            bytes, int8_tables.lerp65) or "relu_sum" (no GATHER, for runtimes without it;
            int8: approximate).
        outputs: "logits", or "probabilities": a float SOFTMAX appended to the checked file
            (app_file.with_probabilities; the file needs float outputs: int8 with io "uint8"
            or "float"), itself checked against the softmax of the file's logits.
        rgb_input: a one-channel Keras model gets an RGB input converted to luma first
            (passes/rgb_input.py), as RGB-only clients (MediaPipe) need; the calibration
            images and the sample are given as they are (gray) and copied to RGB.
        **options: the target's own (e.g. sample, allow_float_fallback, io, system_config).

    Returns:
        (flatbuffer bytes, the target's Report).

    Raises:
        InputError: what the user can fix (an unknown target or lerp form, a model the
            target cannot take, thresholds without early exits).
        RuntimeError: the converted file disagrees with Keras.
    """
    convert_fn = get(target).convert
    # A QAT model's quantization points are int8 steps: a float or LCE file would round where
    # Keras rounds otherwise, and computes nothing an app wants.
    if isinstance(model, keras.Model) and qat.is_qat_model(model) and not get(target).quantizes:
        raise InputError(
            f"{model.name} is a QAT model (int8 quantization points): convert it to an int8 "
            f"target (int8, tflm, ethos-u*); for {target}, convert the float checkpoint it "
            f"was fine-tuned from (--init_from of its run)"
        )
    if lerp_form not in DEPLOY_LERP_FORMS:
        raise InputError(
            f"unknown lerp form {lerp_form!r}; choose from {', '.join(DEPLOY_LERP_FORMS)}"
        )
    if lerp_form == TABLE65:  # gather tables in the model, written with 65 entries
        if not get(target).quantizes:
            raise InputError(
                f"lerp_form={TABLE65!r} is the 65-entry int8 table of the int8 targets (int8, "
                f"tflm, ethos-u*), not of {target}: use 'gather' or 'relu_sum'"
            )
        options["table_entries"], lerp_form = int8_tables.TABLE65, "gather"
    if outputs not in OUTPUTS:
        raise InputError(f"unknown outputs {outputs!r}; choose from {', '.join(OUTPUTS)}")
    if rgb_input:
        if not isinstance(model, keras.Model):
            raise InputError("rgb_input takes a Keras model, not a .tflite file")
        # A QAT model's luma conv reads quantized pixels, as its first layer did (int8_qat).
        pixels = qat.FakeQuant(fixed_range=verify.PIXEL_RANGE) if qat.is_qat_model(model) else None
        model = passes.rgb_input(model, pixels)
        calibration = None if calibration is None else passes.to_rgb(calibration)
        if options.get("sample") is not None:
            options["sample"] = passes.to_rgb(options["sample"])
    collapsed = frozen = 0
    forms = ""
    if isinstance(model, keras.Model):  # not the bytes of a .tflite file
        model, collapsed = collapse(model)
        model, frozen = freeze_tables(model, form=lerp_form)
        forms = ", ".join(
            sorted({layer.form for layer in model.layers if isinstance(layer, LerpTable)})
        )
    if early_exit is None:
        early_exit = _has_exits(model)
    if early_exit:
        from effkeras.deploy import early_exit as stages

        if not stages.has_form(target):
            raise InputError(
                f"target {target} has no early-exit form (one signature or file "
                f"per exit stage: {', '.join(stages.TARGETS)}); convert the graph "
                f"of all exits at once with early_exit=False (apps.convert: "
                f"--noearly_exit)"
            )
        flatbuffer, report = stages.convert(
            model, target, calibration=calibration, thresholds=thresholds, **options
        )
    else:
        if thresholds is not None:
            raise InputError(
                "exit thresholds go with an early-exit model (several outputs) "
                "converted stage by stage"
            )
        flatbuffer, report = convert_fn(model, calibration=calibration, **options)
    if outputs == "probabilities":
        if early_exit:
            raise InputError(
                "outputs='probabilities' is for single-output files; an early-exit file "
                "gives each exit's logits (its description holds the exit rule)"
            )
        flatbuffer, report = _with_probabilities(flatbuffer, report, model, options.get("sample"))
    return flatbuffer, dataclasses.replace(
        report,
        collapsed_blocks=collapsed,
        frozen_tables=frozen,
        lerp_form=forms,
        rgb_input=bool(rgb_input),
    )


def _with_probabilities(flatbuffer, report, model, sample):
    """The checked file with a float SOFTMAX appended, checked against the softmax of its own
    logits (same runtime, same sample)."""
    from effkeras.deploy import app_file, runtime

    if sample is None:
        sample = verify.random_sample(model)
    with_softmax = app_file.with_probabilities(flatbuffer)
    logits = runtime.runner(flatbuffer).predict(sample)
    probabilities = runtime.runner(with_softmax).predict(sample)
    off = float(np.max(np.abs(probabilities - app_file.softmax(logits))))
    if off > 1e-5:
        raise RuntimeError(f"the file's probabilities are {off:.3g} off the softmax of its logits")
    return with_softmax, dataclasses.replace(
        report,
        size_bytes=len(with_softmax),
        op_census=op_census(operators(with_softmax)),
        outputs="probabilities",
    )


def _has_exits(model):
    """A Keras model with several outputs, or the bytes of an early-exit file."""
    if isinstance(model, keras.Model):
        return len(model.outputs) > 1
    from effkeras.deploy import early_exit

    return early_exit.is_early_exit_file(model)


def default_target(model, name=None):
    """The registry's default target of `model`.

    Args:
        model: a Keras model.
        name: its registry name; None: the model's name.

    Returns:
        ModelInfo.deploy; for a model not in the registry, "arm" (LCE) when it has 1-bit
        kernels, else "float". A QAT model whose default is not an int8 target: "int8".
    """
    from effkeras import graph, models

    try:
        target = models.info(name or model.name).deploy
    except InputError:
        target = "arm" if graph.one_bit_kernel_layers(model) else "float"
    if qat.is_qat_model(model) and not get(target).quantizes:
        return "int8"
    return target


def app_info(model, name, *, class_names=None, dataset=None, report=None):
    """What the TFLite Metadata of `model`'s app file says (app_file.AppInfo).

    Args:
        model: the Keras model converted.
        name: its registry name (an unregistered model: its own name).
        class_names: the dataset's class names; None: "0", "1", ...
        dataset: the dataset it was checked on, for the description; None: not named.
        report: the conversion's Report (its target, outputs and rgb_input).

    Returns:
        An app_file.AppInfo.
    """
    from effkeras import __version__, models
    from effkeras.deploy.app_file import AppInfo

    try:
        registered = models.info(name)
        what = f"{registered.family} family ({registered.paper})"
    except InputError:
        what = "an effkeras model"
    height, width, channels = model.input_shape[1:]
    classes, exits = model.outputs[0].shape[-1], len(model.outputs)
    description = (
        f"{name}: {what}. Classifies {height}x{width} "
        f"{'grayscale' if channels == 1 else 'RGB'} images into {classes} classes"
        + (f" ({dataset})" if dataset else "")
        + (f", with {exits} exits" if exits > 1 else "")
        + (f"; {report.target} file" if report is not None else "")
        + "."
    )
    return AppInfo(
        name=name,
        description=description,
        class_names=tuple(class_names or [str(i) for i in range(classes)]),
        luma=bool(report is not None and report.rgb_input),
        probabilities=report is None or report.outputs == "probabilities",
        version=__version__,
    )


def app_metadata(
    flatbuffer,
    report,
    *,
    model_name,
    class_names=None,
    input_range=verify.PIXEL_RANGE,
    info=None,
):
    """What an app developer needs beside the file (written as `<file>.json` by `save`).

    Args:
        flatbuffer: the converted file.
        report: its Report (an early-exit one adds its exits and stages).
        model_name: the registry name.
        class_names: the class names; None: "0", "1", ...
        input_range: (low, high) of the pixel values the model takes.
        info: the app_file.AppInfo written into the file as TFLite Metadata, or None.

    Returns:
        A dict: inputs and outputs with dtype, shape and quantization, the value range the
        model takes, class names, target and registry name.
    """
    inputs, outputs = io_tensors(flatbuffer)

    def describe(tensor):
        quantization = (
            {"scale": list(tensor.scale), "zero_point": list(tensor.zero_point)}
            if tensor.scale
            else None
        )
        return {
            "name": tensor.name,
            "shape": list(tensor.shape),
            "dtype": tensor.dtype,
            "quantization": quantization,
        }

    classes = outputs[0].shape[-1] if outputs and outputs[0].shape else None
    metadata = {
        "model": model_name,
        "target": report.target,
        "size_bytes": len(flatbuffer),
        "inputs": [
            {
                **describe(t),
                "value_range": list(input_range),
                "layout": "NHWC raw pixels (the model normalises them itself)"
                + ("; RGB, classified by their luma" if report.rgb_input else ""),
            }
            for t in inputs
        ],
        "outputs": [{**describe(t), "kind": report.outputs} for t in outputs],
        "class_names": list(class_names) if class_names else [str(i) for i in range(classes or 0)],
    }
    if info is not None:
        metadata["tflite_metadata"] = {
            "name": info.name,
            "description": info.description,
            "version": info.version,
            "author": info.author,
            "labels_file": LABELS_FILE,
        }
    if getattr(report, "description", None):  # an early-exit file: its exits and stages
        from effkeras.deploy import early_exit

        metadata.update(early_exit.app_fields(report, class_names))
    return metadata


def metadata_path(path):
    """Where the app-facing JSON of a file goes: `model.tflite` -> `model.tflite.json`, named
    after the whole file, so that it never meets a report or another target's file.

    Args:
        path: the .tflite file's path.

    Returns:
        The JSON's path.
    """
    return path + ".json"


def save(path, flatbuffer, report, metadata=None):
    """Writes the flatbuffer, its artifacts and its app-facing JSON as one set
    (fileio.write_file_set: after a kill, the next save to `path` leaves the old set or the
    new one, never a mix), the flatbuffer last.

    Args:
        path: the .tflite file to write.
        flatbuffer: its bytes.
        report: the conversion's Report; each of its artifacts is written beside the file as
            `<stem><suffix>` (bytes, or a function of the file stem returning bytes).
        metadata: the app-facing dict (`app_metadata`), written to `<path>.json`; None: none.

    Raises:
        ValueError: not a TFLite flatbuffer.
    """
    check_flatbuffer(flatbuffer)
    stem = os.path.splitext(path)[0]
    files = {}
    for suffix, content in report.artifacts.items():
        # Callable artifacts name the files they refer to (a C source includes its header).
        files[stem + suffix] = content(os.path.basename(stem)) if callable(content) else content
    if metadata is not None:
        files[metadata_path(path)] = fileio.json_bytes(metadata)
    files[path] = bytes(flatbuffer)
    fileio.write_file_set(files, main=path)
