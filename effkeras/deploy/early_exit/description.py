"""The early-exit description an early-exit file carries, and its stage files.

The description (`describe`) says what an app needs to run the file stage by stage: the stages,
the tensors each reads and hands on with their shapes, dtypes, quantization and bytes, the
cumulative FLOPs of each exit, the thresholds and the rule. The file carries it as TFLite
metadata METADATA_NAME (`with_description`, `description`), and so does each tflm stage file
(`stage_files`); the app-facing JSON (`api.app_metadata`) holds the same under "early_exit"
(`app_fields`), with the class names.
"""

import json
import math

import numpy as np

from effkeras.deploy.early_exit.stages import SIGNATURE, stage_number
from effkeras.deploy.flatbuffer import (
    check_flatbuffer,
    metadata,
    signature_file,
    signatures,
    with_metadata,
)
from effkeras.errors import InputError

METADATA_NAME = "effkeras_early_exit"
FORMAT = "effkeras.early_exit/1"
RULE = (
    "run stage_1 on the image, then stage_k on the tensors earlier stages handed on (by "
    "name); stop at the first exit k whose softmax maximum is >= thresholds[k-1] (the last "
    "threshold is 0: the last exit always answers)"
)


def description(flatbuffer):
    """The early-exit description a file carries, read from the metadata table alone (not the
    weights).

    Args:
        flatbuffer: the bytes of a .tflite file.

    Returns:
        The description (a dict), or None when the file carries none.

    Raises:
        InputError: the metadata entry is not JSON.
        ValueError: not a TFLite flatbuffer.
    """
    check_flatbuffer(flatbuffer)
    data = metadata(flatbuffer, METADATA_NAME)
    if data is None:
        return None
    try:
        return json.loads(data.decode())
    except ValueError:
        raise InputError(f"this file's {METADATA_NAME} metadata is not JSON") from None


def with_description(flatbuffer, described):
    """`flatbuffer` carrying `described` as its metadata entry METADATA_NAME (replaced if
    there).

    Args:
        flatbuffer: the bytes of a .tflite file.
        described: the description (`describe`).

    Returns:
        The bytes of the new file.
    """
    return with_metadata(flatbuffer, METADATA_NAME, json.dumps(described, sort_keys=True).encode())


def is_early_exit_file(flatbuffer):
    """Whether `flatbuffer` is a file `convert` wrote for a multi-exit model (anything else,
    however broken, is for the target's own checks to refuse).

    Args:
        flatbuffer: anything.

    Returns:
        A bool.
    """
    if not isinstance(flatbuffer, (bytes, bytearray)):
        return False
    try:
        return description(flatbuffer) is not None
    except Exception:
        return False


def stage_files(flatbuffer):
    """The K single-stage files of a K-signature file, in stage order: stage k's file holds its
    subgraph alone (as subgraph 0, which TFLite Micro runs), the buffers and op codes that
    subgraph uses, its signature and the file's metadata (`flatbuffer.signature_file`).

    Args:
        flatbuffer: the bytes of an early-exit file with signatures stage_1 ... stage_K.

    Returns:
        A list of K bytes.

    Raises:
        InputError: the file has no such signatures, or a stage calls other subgraphs.
    """
    keys = list(signatures(flatbuffer))
    numbered = sorted((stage_number(key), key) for key in keys if stage_number(key))
    if len(numbered) < 2 or [n for n, _ in numbered] != list(range(1, len(numbered) + 1)):
        raise InputError(
            f"expected a file with signatures stage_1 ... stage_K (an early-exit "
            f"file written by effkeras); this one has {sorted(keys) or 'none'}"
        )
    return [signature_file(flatbuffer, key) for _, key in numbered]


def _tensor_entry(name, tensor):
    entry = {
        "name": name,
        "shape": list(tensor.shape),
        "dtype": tensor.dtype,
        "bytes": int(math.prod(tensor.shape) * np.dtype(tensor.dtype).itemsize),
    }
    if tensor.scale:
        entry["quantization"] = {"scale": list(tensor.scale), "zero_point": list(tensor.zero_point)}
    return entry


def describe(flatbuffer, stages, costs, *, model_name, target, io, thresholds=None):
    """The early-exit description of a K-signature file: what an app needs to run it.

    Args:
        flatbuffer: the file converted from `stages`.
        stages: the stage models (`stages.split_stages`).
        costs: the model's exit costs (`graph.summary.exit_costs`).
        model_name: the registry name (or the model's).
        target: the deploy target.
        io: "float" or "int8", the stages' input and output type.
        thresholds: K thresholds, or None.

    Returns:
        The description (a dict; see the module docstring).

    Raises:
        RuntimeError: the converter dropped a stage's signature.
    """
    found = signatures(flatbuffer)
    missing = [SIGNATURE.format(s.stage) for s in stages if SIGNATURE.format(s.stage) not in found]
    if missing:
        raise RuntimeError(
            f"the converter dropped signature(s) {', '.join(missing)}: the file has {sorted(found)}"
        )
    made, sizes = {}, {}  # name -> the stage making it (0: the model's inputs), its bytes
    handed = {}  # name -> its entry where it is made
    for name in stages[0].model_input_names:
        made[name] = 0
        sizes[name] = _tensor_entry(name, found[SIGNATURE.format(1)][1][name])["bytes"]
    described = []
    for stage, cost in zip(stages, costs):
        _, inputs, outputs = found[SIGNATURE.format(stage.stage)]
        hands_on = [_tensor_entry(name, outputs[name]) for name in stage.state_names]
        for entry in hands_on:
            made[entry["name"]], sizes[entry["name"]] = stage.stage, entry["bytes"]
            handed[entry["name"]] = entry
        reads = []
        for name in stage.input_names:
            entry = _tensor_entry(name, inputs[name])
            if name in handed:  # state: which stage made it; int8 state whose two sides
                # calibrated different ranges is requantized by the app between the stages
                entry["from_stage"] = made[name]
                entry["requantize"] = bool(entry.get("quantization")) and (
                    entry.get("quantization") != handed[name].get("quantization")
                )
            reads.append(entry)
        read_later = {name for s in stages[stage.stage :] for name in s.input_names}
        described.append(
            {
                "stage": stage.stage,
                "signature": SIGNATURE.format(stage.stage),
                "exit": stage.exit_name,
                "flops": int(cost["flops"]),
                "stage_macs": int(cost["stage_macs"]),
                "params": int(cost["params"]),
                "reads": reads,
                "logits": _tensor_entry(stage.exit_name, outputs[stage.exit_name]),
                "hands_on": hands_on,
                # What the app keeps between this stage and the next: every tensor made so far
                # that a later stage reads (the image too, if one does).
                "held_state_bytes": int(
                    sum(sizes[n] for n in read_later if made.get(n, stage.stage + 1) <= stage.stage)
                ),
            }
        )
    return {
        "format": FORMAT,
        "model": model_name,
        "target": target,
        "io": io,
        "num_exits": len(stages),
        "exits": [stage.exit_name for stage in stages],
        "inputs": list(stages[0].model_input_names),
        "exit_flops": [entry["flops"] for entry in described],
        "thresholds": None if thresholds is None else list(thresholds),
        "rule": RULE,
        "stages": described,
    }


def app_fields(report, class_names=None):
    """What api.app_metadata adds for an early-exit file.

    Args:
        report: the conversion's report (an EarlyExitReport, with its description).
        class_names: the class names, or None for "0", "1", ...

    Returns:
        {"outputs": the K exits' logits with the signature returning each, "class_names",
        "early_exit": the description}.
    """
    described = report.description
    outputs = []
    for stage in described["stages"]:
        logits = stage["logits"]
        outputs.append(
            {
                "name": logits["name"],
                "signature": stage["signature"],
                "shape": logits["shape"],
                "dtype": logits["dtype"],
                "quantization": logits.get("quantization"),
                "kind": "logits",
                "flops": stage["flops"],
            }
        )
    classes = outputs[0]["shape"][-1] if outputs and outputs[0]["shape"] else 0
    return {
        "outputs": outputs,
        "class_names": list(class_names) if class_names else [str(i) for i in range(classes)],
        "early_exit": described,
    }
