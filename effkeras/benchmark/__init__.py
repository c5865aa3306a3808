"""Models against their peers on the runtimes they ship to: size, speed, accuracy, side by side.

`run(specs, targets)` converts every model for every target through `effkeras.deploy` (each
conversion checks itself against Keras), then times every file this CPU can run, interleaved:
warm-up runs, then round after round, each round one inference of every file in turn, so that a
slow spell of a shared machine falls on all of them alike; median and quartiles per file.

- arm: LCE's interpreter (on x86 its portable kernels: compare ratios, and measure ARM on the
  device with apps.device_benchmark);
- float, float16, int8: LiteRT (XNNPack);
- tflm: TFLite Micro's interpreter (its reference kernels), and the arena bytes;
- ethos-u*: Vela's estimate (cycles, inferences/s) of the NPU, not run.

Each row also has the share of the model's MACs that run as binary convs (arm: the layers that
became LceBconv2d, w1a2 ones included) or on the NPU (ethos-u: Vela's per-layer MAC counts).
A model or a target that fails becomes a row saying why; the others go on.

Modules:
    spec      model specs (registry names, .keras, .tflite), parsed and loaded
    measure   the one interleaved timer (`time_interleaved`), one inference per target
    pipeline  the run: convert, describe, time, evaluate, write
    report    `Row`, ratios, the Markdown table, benchmark.json, the plot, device results
    device    `lce_benchmark_model` on a Raspberry Pi or an Android phone
"""

from effkeras.benchmark.measure import CPU_TARGETS, RUNTIMES, inference, quartiles, time_interleaved
from effkeras.benchmark.pipeline import MAX_THREADS, convert, describe, file_name, run, stage_rows
from effkeras.benchmark.report import (
    STEM,
    Row,
    baseline_row,
    merge_device,
    plot,
    read,
    set_ratios,
    table,
    write,
)
from effkeras.benchmark.spec import Loaded, file_kind, is_file, load, parse_spec, spec_label

__all__ = [
    "MAX_THREADS",
    "CPU_TARGETS",
    "RUNTIMES",
    "STEM",
    "Loaded",
    "Row",
    "baseline_row",
    "convert",
    "describe",
    "file_kind",
    "file_name",
    "inference",
    "is_file",
    "load",
    "merge_device",
    "parse_spec",
    "plot",
    "quartiles",
    "read",
    "run",
    "set_ratios",
    "spec_label",
    "stage_rows",
    "table",
    "time_interleaved",
    "write",
]
