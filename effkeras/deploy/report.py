"""What a conversion reports: one plain dataclass hierarchy for every deploy target.

    Report                    every target: size, op census, agreement with Keras, passes run
      LceReport               arm (lce.py): binary layers, LceBconv2d ops, fallbacks
      TFLiteReport            float, float16 (tflite.py): top-1 agreement with Keras
        Int8Report            int8: io, calibration, float ops left, int8 tables, QAT
          TflmReport          tflm (tflm.py): TFLite Micro vs LiteRT, arena bytes
          EthosUReport        ethos-u* (ethos_u.py): Vela's NPU/CPU split, cycles, memory
      EarlyExitReport         early-exit fields (deploy/early_exit): exits, stages, thresholds
        EarlyExitTFLiteReport, EarlyExitInt8Report, EarlyExitTflmReport

`as_dict` gives the stable keys (docs/deploy.md, "Report"); `format` the text apps.convert
prints.
"""

import dataclasses

from effkeras import fileio


@dataclasses.dataclass
class Report:
    """The checks of one conversion. Targets subclass it to add their own figures; the keys of
    `as_dict` are stable (docs/deploy.md, "Report")."""

    target: str
    size_bytes: int
    op_census: dict
    max_abs_diff: float  # None when there is no Keras model (a given .tflite file)
    max_rel_diff: float  # relative to max |Keras output|
    samples: int  # inputs the comparison ran on
    collapsed_blocks: int = 0  # CollapsibleConv2D written as one Conv2D each (passes/collapse.py)
    frozen_tables: int = 0  # LerpPSA/ResPSA/BSpline frozen to LerpTable (passes/freeze_tables.py)
    lerp_form: str = ""  # the LerpTable form in the model ("gather", "relu_sum"), "" without one
    # What the file returns: "logits", or "probabilities" (a float SOFTMAX appended: app_file.py).
    outputs: str = "logits"
    rgb_input: bool = False  # a grayscale model given an RGB input (passes/rgb_input.py)
    # Files written beside the flatbuffer by `api.save`: {suffix: bytes}; not part of as_dict.
    artifacts: dict = dataclasses.field(
        default_factory=dict, repr=False, metadata={"internal": True}
    )

    def as_dict(self):
        """The report as JSON-ready data (artifacts and other internal fields left out).

        Returns:
            {field name: value}.
        """
        return {
            field.name: fileio.plain(getattr(self, field.name))
            for field in dataclasses.fields(self)
            if not field.metadata.get("internal")
        }

    def format(self):
        """The report as aligned text lines, one per figure.

        Returns:
            A string.
        """
        rows = [
            ("target", self.target),
            ("size", f"{self.size_bytes:,} bytes"),
            ("ops", ", ".join(f"{name} {count}" for name, count in self.op_census.items())),
            (
                "vs Keras",
                "- (a given file: no Keras model to compare with)"
                if self.max_abs_diff is None
                else f"max abs diff {self.max_abs_diff:.3g}, "
                f"max rel diff {self.max_rel_diff:.3g} on {self.samples} inputs",
            ),
            ("outputs", self.outputs + (" (RGB input, luma first)" if self.rgb_input else "")),
            ("collapsed blocks", self.collapsed_blocks),
            (
                "frozen tables",
                f"{self.frozen_tables}" + (f" ({self.lerp_form} form)" if self.lerp_form else ""),
            ),
        ]
        base = {field.name for field in dataclasses.fields(Report)}
        for field in dataclasses.fields(self):
            if field.name not in base:
                value = getattr(self, field.name)
                if isinstance(value, dict):
                    value = ", ".join(f"{k} {v}" for k, v in value.items()) or "-"
                elif isinstance(value, (list, tuple)):
                    value = ", ".join(map(str, value)) or "-"
                elif isinstance(value, float):
                    value = f"{value:.4g}"
                rows.append((field.name, value))
        return "\n".join(f"{name + ':':24s}{value}" for name, value in rows)


def extend(report, cls, **changes):
    """`report` as a `cls`, with `changes` applied.

    Args:
        report: a Report.
        cls: a subclass of the report's class, adding fields.
        **changes: field values to set.

    Returns:
        A new `cls` instance.
    """
    fields = {field.name: getattr(report, field.name) for field in dataclasses.fields(report)}
    return cls(**{**fields, **changes})


@dataclasses.dataclass
class LceReport(Report):
    """Target arm: Larq Compute Engine (lce.py)."""

    binary_layers: int = 0  # layers with 1-bit input and 1-bit kernel, w1a2 rewrites included
    w1a2_layers: int = 0  # of those, w1a2 convs rewritten as binary convs (passes/w1a2.py)
    bconv_ops: int = 0  # LceBconv2d in the flatbuffer
    float_fallback: tuple = ()  # binary layers left in float (only with allow_float_fallback)
    # Set only when the flatbuffer differs by more than max_rel_diff: how far Keras' own outputs
    # move under input noise of 1e-4 of the input range. Deep binary nets (above all untrained
    # ones) flip signs at near-ties and cascade, so float rounding alone moves them this much.
    sensitivity: float = None


@dataclasses.dataclass
class TFLiteReport(Report):
    """Targets float, float16: TFLite builtins in LiteRT (tflite.py)."""

    top1_agreement: float = None  # share of sample inputs whose argmax equals Keras's


@dataclasses.dataclass
class Int8Report(TFLiteReport):
    """Target int8 (tflite.py, int8_qat.py), and the base of the int8-only targets."""

    io: str = "int8"  # dtype of the file's input and output
    calibration: str = ""  # where the activation ranges came from
    float_ops: tuple = ()  # ops left in float (only with allow_float_fallback)
    int8_tables: int = 0  # int8 LERP tables written (int8_tables.py), each checked
    table_bytes: int = 0  # their entries: 256 (exact) or 65 (interpolated) bytes per channel
    table_entries: int = 0  # 256 or 65 per channel; 0 without tables
    table_max_lsb: int = None  # 65 entries: most output steps off the exact 256-entry tables
    qat: bool = False  # converted from a QAT model (effkeras.qat), with its ranges
    max_lsb: float = None  # QAT: max |file - Keras| of the outputs, in steps of their scale
    max_op_lsb: float = None  # QAT: the same at every quantization point, op by op (int8_qat.py)
    quantization_points: int = 0  # QAT: tensors of the file compared op by op
    binary_layers: int = 0  # layers with 1-bit weights lowered to int8 ops (binary_int8.py)
    exact_steps: int = 0  # their input quantizers, each checked exact on the sample


@dataclasses.dataclass
class TflmReport(Int8Report):
    """Target tflm: int8 in TFLite Micro (tflm.py)."""

    max_lsb_diff: int = 0  # TFLite Micro vs LiteRT's reference kernels, int8 outputs, on the sample
    mean_lsb_diff: float = 0.0
    arena_bytes: int = 0  # smallest arena that allocates and invokes
    int4_layers: int = 0  # binary layers whose weights are packed INT4 (binary_int8.pack_int4)
    int4_top1_agreement: float = None  # the packed file's argmax against the int8 file's
    micro_top1_agreement: float = None  # TFLite Micro's argmax against Keras's, on the sample


@dataclasses.dataclass
class EthosUReport(Int8Report):
    """Targets ethos-u55-*, ethos-u65-*, ethos-u85-*: int8 compiled by Vela (ethos_u.py)."""

    accelerator: str = ""
    system_config: str = ""
    memory_mode: str = ""
    npu_ops: int = 0  # ops of the int8 file that Vela put on the NPU
    cpu_ops: int = 0  # ops left for the CPU (TFLite Micro)
    cpu_op_types: dict = dataclasses.field(default_factory=dict)
    npu_macs: int = 0  # the MACs of the ops on the NPU (Vela's per-layer counts)
    cycles_total: int = 0
    inferences_per_second: float = 0.0
    sram_bytes: int = 0
    flash_bytes: int = 0  # on- and off-chip flash (weights under Shared_Sram)
    dram_bytes: int = 0
    bits_per_binary_weight: float = None  # the binary layers' encoded flash, per weight


@dataclasses.dataclass
class EarlyExitReport(Report):
    """The fields of an early-exit conversion (deploy/early_exit), added to a target's report
    by the classes below."""

    exits: int = 0
    # Each exit's logits from the chained stages against the Keras model's.
    exit_max_rel_diff: tuple = ()
    exit_top1_agreement: tuple = ()
    # Per stage: exit, cumulative FLOPs, stage MACs, state bytes (tflm: arena, file bytes).
    stages: tuple = ()
    thresholds: tuple = None
    # The description the file carries (api.app_metadata puts it in the app's JSON).
    description: dict = dataclasses.field(default=None, repr=False, metadata={"internal": True})

    def format(self):
        """The report's lines, with the stages as a table.

        Returns:
            A string.
        """
        lines = [
            line
            for line in Report.format(self).splitlines()
            if not line.startswith(("stages:", "description:"))
        ]
        header = ["stage", "exit", "FLOPs (cum.)", "state in", "state out", "held"]
        micro = any("arena_bytes" in stage for stage in self.stages)
        vela = any("cycles_total" in stage for stage in self.stages)
        if micro:
            header += ["arena", "file"]
        if vela:
            header += ["Vela cycles", "inf/s", "SRAM", "file"]
        rows = [header]
        for stage in self.stages:
            row = [
                str(stage["stage"]),
                stage["exit"],
                f"{stage['flops']:,}",
                f"{stage['state_in_bytes']:,}",
                f"{stage['state_out_bytes']:,}",
                f"{stage['held_state_bytes']:,}",
            ]
            if micro:
                row += [f"{stage['arena_bytes']:,}", f"{stage['file_bytes']:,}"]
            if vela:
                row += [
                    f"{stage['cycles_total']:,}",
                    f"{stage['inferences_per_second']:,.1f}",
                    f"{stage['sram_bytes']:,}",
                    f"{stage['file_bytes']:,}",
                ]
            rows.append(row)
        widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
        lines.append("stages (state, arena and file in bytes):")
        lines += ["  " + "  ".join(cell.rjust(w) for cell, w in zip(row, widths)) for row in rows]
        return "\n".join(lines)


@dataclasses.dataclass
class EarlyExitTFLiteReport(EarlyExitReport, TFLiteReport):
    """An early-exit file for float or float16."""


@dataclasses.dataclass
class EarlyExitInt8Report(EarlyExitReport, Int8Report):
    """An early-exit file for int8 (and, compiled stage by stage by Vela, ethos-u*)."""


@dataclasses.dataclass
class EarlyExitTflmReport(EarlyExitReport, TflmReport):
    """Early-exit stage files for tflm."""
