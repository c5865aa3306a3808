"""RAN-e's hardware-aware search, reconstructed: from EfficientNet-Lite0 (h-swish), replace the
blocks a micro-NPU runs worst by collapsible blocks, greedily, guided by Vela's per-layer estimate.

python -m tools.search_ran_e --output_dir=runs/search [--accelerator=ethos-u55-128]
    [--input_size=224] [--steps=8] [--mac_tolerance=0.1] [--compare=ran_e_gt,ran_e_c]

The paper (Bhardwaj et al., arXiv 2208.08562) calls its search "semi-automatic" and does not
release it. Here each step:
1. compiles the current network to int8 for the accelerator with Vela (random weights, random
   calibration: Vela's cycle model depends on shapes, not on weight values, apart from
   compression) and sums Vela's per-layer cycles and MACs per block (stage{i}_block{j});
2. tries the inverted-bottleneck block with the fewest MACs per cycle (depthwise-dominated
   blocks use the MAC array worst) as a collapsible block (BN, h-swish, one dense 3x3 conv, BN);
3. if that drops the network's MACs below (1 - mac_tolerance) of Lite0's, widens the block's
   stage (x1.25 .. x2, multiples of 8) just enough to win them back: the paper's networks keep
   Lite0's capacity (4.5-4.7M parameters, 434-488M MACs against 385M) rather than shrink it;
4. keeps the trial if Vela estimates it faster, else rejects that block for good (with its
   identical twins: the other non-first blocks of its stage).
Every network visited is a row of the table (estimated inferences/s, MACs, parameters, peak
SRAM); the Pareto front is over (inferences/s, MACs), MACs standing for capacity since nothing
is trained here. The released `ran_e_gt` and `ran_e_c` are compiled the same way and placed on it.
Writes search.md (the table), search.json and search.png to --output_dir.

Regenerates docs/rans/search/search.md, .json and .png (--output_dir=docs/rans/search --steps=10).
"""

import csv
import dataclasses
import os
import re

from absl import flags

from apps import _cli
from tools import _report

# allow_override: another tool (bench_early_exit) defines --output_dir with the same default,
# and a process that imports several tools (the tests) must be able to.
flags.DEFINE_string(
    "output_dir", None, "Where to write search.md, search.json, search.png.", allow_override=True
)
flags.DEFINE_string("accelerator", "ethos-u55-128", "Ethos-U target (a deploy target name).")
flags.DEFINE_integer("input_size", 224, "Input height and width.")
flags.DEFINE_integer("steps", 8, "Greedy replacement steps.")
flags.DEFINE_float("mac_tolerance", 0.1, "Keep MACs >= (1 - this) x Lite0's by widening stages.")
flags.DEFINE_integer("calibration_samples", 8, "Random calibration images per compile.")
flags.DEFINE_list("compare", ["ran_e_gt", "ran_e_c"], "Registered models to place on the front.")
FLAGS = flags.FLAGS

WIDEN = (1.25, 1.5, 1.75, 2.0)
BLOCK = re.compile(r"stage(\d+)_block(\d+)")  # a block's name: its stage and index (1-based)


@dataclasses.dataclass
class Row:
    name: str
    collapsed: tuple  # blocks turned into collapsible blocks
    stage_filters: tuple
    inferences_per_second: float
    macs: int
    params: int
    sram_bytes: int
    accepted: bool = True  # kept by the search (False: a trial it rejected as slower)
    pareto: bool = False


def block_efficiency(per_layer_csv):
    """{block: (MACs, cycles)} summed over Vela's per-layer rows named after the block."""
    blocks = {}
    for row in csv.DictReader(per_layer_csv.decode().splitlines()):
        found = BLOCK.search(row["Name"])
        if found:
            macs, cycles = blocks.get(found.group(0), (0, 0))
            blocks[found.group(0)] = (
                macs + int(float(row["MAC Count"])),
                cycles + int(float(row["Op Cycles"])),
            )
    return blocks


def macs_and_params(model):
    from effkeras.graph import summary

    totals = summary.totals(summary.summarize(model))
    return totals["float_macs"] + totals["binary_macs"] + totals["low_bit_macs"], totals[
        "total_params"
    ]


def compile_row(model, name, collapsed, stage_filters):
    """(Row, per-block (MACs, cycles)) of `model` compiled by Vela."""
    from effkeras import deploy

    _, report = deploy.convert(
        model, FLAGS.accelerator, calibration_samples=FLAGS.calibration_samples
    )
    macs, params = macs_and_params(model)
    row = Row(
        name,
        tuple(sorted(collapsed)),
        tuple(stage_filters),
        round(report.inferences_per_second, 1),
        macs,
        params,
        report.sram_bytes,
    )
    print(
        f"{name:28s} {row.inferences_per_second:8.1f} inf/s  {macs / 1e6:7.1f} M MACs  "
        f"{params:,} params  SRAM {row.sram_bytes:,} B",
        flush=True,
    )
    return row, block_efficiency(report.artifacts["_per-layer.csv"])


def widen(collapsed, stage_filters, stage, target_macs, build):
    """`stage_filters` with stage `stage` (0-based) widened just enough for `target_macs`."""
    for factor in WIDEN:
        filters = list(stage_filters)
        filters[stage] = 8 * round(stage_filters[stage] * factor / 8)
        if macs_and_params(build(collapsed, filters))[0] >= target_macs:
            return filters
    return filters


def search():
    import keras

    from effkeras.models import efficientnet_lite, rans

    shape = (FLAGS.input_size, FLAGS.input_size, 3)

    def build(collapsed, filters):
        keras.utils.set_random_seed(0)
        return rans.lite0_search_space(collapsed, filters, input_shape=shape)

    filters = [row[4] for row in efficientnet_lite.LITE0_STAGES]
    collapsed, rejected = frozenset(), set()
    current, blocks = compile_row(build(collapsed, filters), "lite0_hswish", collapsed, filters)
    target_macs = (1 - FLAGS.mac_tolerance) * current.macs
    rows = [current]
    for step in range(1, FLAGS.steps + 1):
        candidates = {
            b: macs / max(cycles, 1)
            for b, (macs, cycles) in blocks.items()
            if b not in collapsed and b not in rejected
        }
        if not candidates:
            break
        worst = min(candidates, key=candidates.get)
        trial, trial_filters = collapsed | {worst}, filters
        if macs_and_params(build(trial, filters))[0] < target_macs:
            stage = int(BLOCK.match(worst).group(1)) - 1
            trial_filters = widen(trial, filters, stage, target_macs, build)
        row, trial_blocks = compile_row(
            build(trial, trial_filters), f"step{step}: {worst}", trial, trial_filters
        )
        rows.append(row)
        if row.inferences_per_second > current.inferences_per_second:
            current, collapsed, filters, blocks = row, trial, trial_filters, trial_blocks
        else:  # slower: keep the block, and do not offer it (or a twin) again
            rejected |= twins(worst, blocks)
            row.name += " (rejected)"
            row.accepted = False
    return rows


def twins(block, blocks):
    """`block` and, unless it opens its stage, the stage's other non-first blocks: the same
    shapes (stride 1, as many channels in as out), so the same trial outcome."""
    stage, index = BLOCK.match(block).groups()
    if index == "1":
        return {block}
    return {
        b
        for b in blocks
        if BLOCK.match(b).groups()[0] == stage and BLOCK.match(b).groups()[1] != "1"
    }


def mark_pareto(rows):
    """Marks the rows no other row beats in both inferences/s and MACs."""
    for row in rows:
        row.pareto = not any(
            other.inferences_per_second >= row.inferences_per_second
            and other.macs >= row.macs
            and (other.inferences_per_second, other.macs) != (row.inferences_per_second, row.macs)
            for other in rows
        )


def table(rows, reference):
    lines = [
        f"| network | collapsed blocks | stage widths | {FLAGS.accelerator} inferences/s | "
        f"x Lite0 | MACs | params | peak SRAM | Pareto |",
        "|" + "---|" * 9,
    ]
    for r in rows:
        lines.append(
            f"| {r.name} | {len(r.collapsed)} | {'-'.join(map(str, r.stage_filters))} | "
            f"{r.inferences_per_second:.1f} | "
            f"{r.inferences_per_second / reference:.2f} | {r.macs / 1e6:.1f} M | "
            f"{r.params:,} | {r.sram_bytes:,} B | {'yes' if r.pareto else ''} |"
        )
    return "\n".join(lines)


def plot(searched, placed, path):
    kept = [r for r in searched if r.accepted]
    rejected = [r for r in searched if not r.accepted]
    front = sorted((r for r in searched + placed if r.pareto), key=lambda r: r.macs)
    with _report.figure(path, figsize=(7, 4.5)) as (_, axis):
        axis.plot(
            [r.macs / 1e6 for r in kept],
            [r.inferences_per_second for r in kept],
            "o-",
            color="tab:blue",
            label="greedy search from Lite0 (h-swish): kept",
        )
        axis.scatter(
            [r.macs / 1e6 for r in rejected],
            [r.inferences_per_second for r in rejected],
            marker="x",
            color="gray",
            label="tried and rejected (slower)",
        )
        axis.plot(
            [r.macs / 1e6 for r in front],
            [r.inferences_per_second for r in front],
            "--",
            color="gray",
            label="Pareto front",
        )
        for r in placed:
            axis.scatter(r.macs / 1e6, r.inferences_per_second, marker="*", s=150, zorder=3)
            axis.annotate(r.name, (r.macs / 1e6, r.inferences_per_second), fontsize=9)
        axis.annotate(
            "Lite0", (searched[0].macs / 1e6, searched[0].inferences_per_second), fontsize=9
        )
        axis.set(
            xlabel="MACs (M)",
            ylabel="inferences/s (Vela estimate)",
            title=f"RAN-e search, int8 on {FLAGS.accelerator}, {FLAGS.input_size}x"
            f"{FLAGS.input_size}",
        )
        axis.legend(fontsize=8)


def main(argv):
    import keras

    from effkeras import fileio, models
    from effkeras.errors import InputError

    if not FLAGS.output_dir:
        raise InputError("--output_dir is required")
    if FLAGS.steps < 0 or not 0 <= FLAGS.mac_tolerance < 1:
        raise InputError("--steps must be >= 0 and --mac_tolerance in [0, 1)")
    fileio.check_writable(FLAGS.output_dir, "--output_dir", directory=True)
    searched = search()
    placed = []
    for name in FLAGS.compare:
        keras.utils.set_random_seed(0)
        model = models.get(name, input_shape=(FLAGS.input_size, FLAGS.input_size, 3))
        placed.append(compile_row(model, name, (), ())[0])
    mark_pareto(searched + placed)
    text = table(searched + placed, searched[0].inferences_per_second)
    print(text)
    _report.write(
        FLAGS.output_dir, "search", text, [dataclasses.asdict(r) for r in searched + placed]
    )
    plot(searched, placed, os.path.join(FLAGS.output_dir, "search.png"))


if __name__ == "__main__":
    _cli.run(main)
