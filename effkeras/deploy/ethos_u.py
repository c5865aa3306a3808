"""`ethos-u55-*`, `ethos-u65-*`, `ethos-u85-*`: the int8 file compiled for an Arm Ethos-U
micro-NPU by Arm's Vela compiler (`ethos-u-vela`), with Vela's performance estimate.

Vela maps the ops it supports into `ethos-u` custom ops (command streams) and leaves the rest
for TFLite Micro on the Cortex-M; its estimate (cycles, inferences/s, SRAM and flash use) is a
compiler model, not a measurement (Vela's README: use an FVP or hardware for real numbers).
The int8 file itself is checked first (`tflite.convert_int8`: int8 throughout, agreement with
Keras); what Vela produces is checked by its op census (`npu_ops` / `cpu_ops`).

Defaults per accelerator family (Arm/vela.ini of Vela 5.2): U55 Ethos_U55_High_End_Embedded +
Shared_Sram (weights in flash, arena in SRAM), U65 Ethos_U65_High_End + Dedicated_Sram, U85
Ethos_U85_SYS_DRAM_High + Dedicated_Sram.
"""

import csv
import functools
import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile

import numpy as np

from effkeras.deploy import binary_int8, tflite
from effkeras.deploy.flatbuffer import op_census, operators
from effkeras.deploy.registry import register_target
from effkeras.deploy.report import EthosUReport, extend
from effkeras.errors import InputError

ACCELERATORS = (
    "ethos-u55-32",
    "ethos-u55-64",
    "ethos-u55-128",
    "ethos-u55-256",
    "ethos-u65-256",
    "ethos-u65-512",
    "ethos-u85-128",
    "ethos-u85-256",
    "ethos-u85-512",
    "ethos-u85-1024",
    "ethos-u85-2048",
)
DEFAULTS = {
    "ethos-u55": ("Ethos_U55_High_End_Embedded", "Shared_Sram"),
    "ethos-u65": ("Ethos_U65_High_End", "Dedicated_Sram"),
    "ethos-u85": ("Ethos_U85_SYS_DRAM_High", "Dedicated_Sram"),
}
OPTIMISE = ("Performance", "Size")
KIB = 1024


def vela_binary():
    """The `vela` command of this Python environment; InputError when it is not installed."""
    beside = os.path.join(os.path.dirname(sys.executable), "vela")
    found = beside if os.access(beside, os.X_OK) else shutil.which("vela")
    if not found:
        raise InputError(
            "the Vela compiler (`vela`) is not installed; install it with "
            "`pip install ethos-u-vela==5.2.0` (setup.py pins it)"
        )
    return found


def compile_for(
    model,
    *,
    accelerator,
    calibration=None,
    sample=None,
    system_config=None,
    memory_mode=None,
    optimise="Performance",
    io="int8",
    allow_float_fallback=False,
    allow_cpu_ops=False,
    **int8_options,
):
    """(Vela's flatbuffer, EthosUReport) of a Keras model, or of the bytes of an int8 .tflite.

    Ops Vela cannot put on the NPU (an op type it lacks, or a shape beyond its limits, e.g. a
    pooled width over 4096) are an InputError naming them and Vela's reason, unless
    `allow_cpu_ops`: then they stay in the file for TFLite Micro to run on the Cortex-M.

    Artifacts written beside the output: `_int8.tflite` (Vela's input), `_summary.csv` and
    `_per-layer.csv` (Vela's estimate, whole network and per layer).
    """
    if accelerator not in ACCELERATORS:
        raise InputError(
            f"unknown Ethos-U accelerator {accelerator!r}; choose from {', '.join(ACCELERATORS)}"
        )
    if optimise not in OPTIMISE:
        raise InputError(f"--optimise must be one of {', '.join(OPTIMISE)}, got {optimise!r}")
    family = accelerator.rsplit("-", 1)[0]
    system_config = system_config or DEFAULTS[family][0]
    memory_mode = memory_mode or DEFAULTS[family][1]
    vela = vela_binary()
    int8, base = tflite.int8_file(
        model,
        accelerator,
        calibration=calibration,
        sample=sample,
        io=io,
        allow_float_fallback=allow_float_fallback,
        **int8_options,
    )
    name = (
        "model"
        if isinstance(model, (bytes, bytearray))
        else (re.sub(r"\W", "_", model.name) or "model")
    )

    with tempfile.TemporaryDirectory() as directory:
        source = os.path.join(directory, f"{name}.tflite")
        with open(source, "wb") as f:
            f.write(int8)
        command = [
            vela,
            "--config",
            "Arm/vela.ini",
            "--accelerator-config",
            accelerator,
            "--system-config",
            system_config,
            "--memory-mode",
            memory_mode,
            "--optimise",
            optimise,
            "--verbose-performance",
            "--verbose-schedule",  # per op: "Encoded Weights = N bytes"
            "--output-dir",
            os.path.join(directory, "out"),
            source,
        ]
        run = subprocess.run(command, capture_output=True, text=True)
        if run.returncode != 0:
            lines = [l for l in (run.stderr + run.stdout).strip().splitlines() if l.strip()]
            raise InputError(
                f"Vela failed ({accelerator}, {system_config}, {memory_mode}): "
                f"{lines[-1] if lines else 'exit code ' + str(run.returncode)}"
            )
        out = os.path.join(directory, "out")
        compiled = _read(os.path.join(out, f"{name}_vela.tflite"))
        summary = _read(_one(glob.glob(os.path.join(out, f"{name}_summary_*.csv"))))
        per_layer = _read(os.path.join(out, f"{name}_per-layer.csv"))

    row = next(csv.DictReader(summary.decode().splitlines()))
    npu = re.search(r"NPU operators = (\d+)", run.stdout)
    ops = operators(compiled)
    cpu_types = op_census([op for op in ops if op.type != "ethos-u"])
    if cpu_types and not allow_cpu_ops:
        raise InputError(
            f"Vela left {sum(cpu_types.values())} op(s) of {name} off the {accelerator} NPU: "
            f"{'; '.join(_cpu_reasons(run.stdout + run.stderr)) or ', '.join(cpu_types)}. "
            f"Change the input size or those layers so that every op fits the NPU, or pass "
            f"--allow_cpu_ops to run them on the Cortex-M (TFLite Micro)"
        )
    report = extend(
        base,
        EthosUReport,
        target=accelerator,
        size_bytes=len(compiled),
        op_census=op_census(ops),
        accelerator=accelerator,
        system_config=system_config,
        memory_mode=memory_mode,
        npu_ops=int(npu.group(1)) if npu else 0,
        cpu_ops=sum(cpu_types.values()),
        cpu_op_types=cpu_types,
        npu_macs=sum(
            int(float(layer["MAC Count"]))
            for layer in csv.DictReader(per_layer.decode().splitlines())
            if layer["Target"] == "NPU"
        ),
        cycles_total=int(float(row["cycles_total"])),
        inferences_per_second=float(row["inferences_per_second"]),
        sram_bytes=round(float(row["sram_memory_used"]) * KIB),
        flash_bytes=round(
            (float(row["off_chip_flash_memory_used"]) + float(row["on_chip_flash_memory_used"]))
            * KIB
        ),
        dram_bytes=round(float(row["dram_memory_used"]) * KIB),
        bits_per_binary_weight=binary_weight_bits(int8, run.stdout),
    )
    report.artifacts = {"_int8.tflite": int8, "_summary.csv": summary, "_per-layer.csv": per_layer}
    return compiled, report


# Vela's names of the weighted ops binary layers lower to.
_VELA_OPS = {
    "CONV_2D": "Conv2D",
    "DEPTHWISE_CONV_2D": "DepthwiseConv2D",
    "FULLY_CONNECTED": "FullyConnected",
}


def binary_weight_bits(int8, log):
    """Encoded bits per weight of the binary layers of an int8 file, from Vela's schedule.

    A binary layer (effkeras.deploy.binary_int8) is a CONV_2D, DEPTHWISE_CONV_2D or
    FULLY_CONNECTED whose int8 weights are all ±127 (an input step's are all +127). Each is
    matched to the first unmatched scheduled NPU op of its kind, kernel size and output depth
    (Vela may schedule a shortcut before the convs beside it, and fold a PAD into an output, so
    neither order nor spatial size is kept), whose "Encoded Weights" are its weights,
    per-channel scales and biases as stored in flash.

    Args:
        int8: bytes of the int8 file Vela compiled.
        log: Vela's stdout with --verbose-schedule.

    Returns:
        Encoded bytes × 8 / weight count over those layers, rounded to 3 places; None when the
        file has none (or one of them was not found on the NPU).
    """
    scheduled = {}  # (kind, kernel size, output depth) -> encoded bytes of each such op, in order
    for kind, depth, kh, kw, size in re.findall(
        r"\d+: Operation (\w+)\s+- OFM [\d, ]*?(\d+) \([^\n]*\n"
        r"\s*Kernel: size=(\d+),(\d+)[^\n]*\n"
        r"(?:(?!\s*\d+: Operation)[^\n]*\n)*?"
        r"\s*Encoded Weights = (\d+) bytes",
        log,
    ):
        scheduled.setdefault((kind, (int(kh), int(kw)), int(depth)), []).append(int(size))
    weights = encoded = 0
    for op in operators(int8):
        if op.type not in _VELA_OPS or len(op.inputs) < 2:
            continue
        codes = np.frombuffer(op.inputs[1].data, np.int8).astype(int)
        if not binary_int8.is_binary_weights(codes):
            continue
        shape = op.inputs[1].shape  # (O, kh, kw, I), (1, kh, kw, C·M) or (O, I)
        kernel = tuple(shape[1:3]) if len(shape) == 4 else (1, 1)
        sizes = scheduled.get((_VELA_OPS[op.type], kernel, op.outputs[0].shape[-1]))
        if not sizes:
            return None
        weights += codes.size
        encoded += sizes.pop(0)
    return round(8 * encoded / weights, 3) if weights else None


def _cpu_reasons(log):
    """'OP (output): reason' for each op Vela's log says it placed on the CPU."""
    found = re.findall(
        r"Warning \(supported operators\) operator: (\w+), ofm: '([^']*)'\n"
        r"((?:.+\n?)*)",
        log,
    )
    return [
        f"{op} ({ofm}): "
        + " - ".join(line.strip().removeprefix("Reason: ") for line in why.strip().splitlines())
        for op, ofm, why in found
    ]


def _read(path):
    with open(path, "rb") as f:
        return f.read()


def _one(paths):
    if len(paths) != 1:
        raise RuntimeError(f"expected one Vela summary CSV, found {paths}")
    return paths[0]


for _accelerator in ACCELERATORS:
    register_target(
        _accelerator,
        f"int8 compiled by Vela for Arm {_accelerator} (default "
        f"{' + '.join(DEFAULTS[_accelerator.rsplit('-', 1)[0]])})",
        quantizes=True,
    )(functools.partial(compile_for, accelerator=_accelerator))
