"""LERP-PSA's comparison: ResMLP students with ReLU, LERP-PSA and B-spline activations, from
their training runs, as a table and a plot of top-1 against MACs.

python -m tools.lerp_psa_table --runs_dir=runs/lerp [--models=resmlp_psa_h1,resmlp_relu_h2,
    resmlp_relu_h1,resmlp_bspline_h1] [--teacher_run=teacher] [--output_dir=docs/lerp_psa]

Each model's run is <runs_dir>/<model> (apps.train --output_dir), its stage-1 run
<runs_dir>/<model>/transfer; the teacher's run is <runs_dir>/<teacher_run>. Per model: trainable
parameters, MACs (the paper's count: linear layers), non-linear units per image, the epochs of
both stages, the final test top-1 (metrics.json) and the training time. The paper's claim
(Singh & Bazargan, ACM TRETS 2025, DOI 10.1145/3705926): LERP-PSA at hidden width H matches
ReLU at 2H.

Regenerates docs/lerp_psa/lerp_psa.md, .json and .png (--output_dir=docs/lerp_psa).
"""

import os

from absl import flags

from apps import _cli
from effkeras.models.resmlp import COMPARISON
from tools import _report

flags.DEFINE_string("runs_dir", "runs/lerp", "Directory holding one apps.train run per model.")
# allow_override: tools.bench_lerp_psa and tools.lerp_psa_table share these flags (and defaults).
flags.DEFINE_list(
    "models", list(COMPARISON), "Registered models, in table order.", allow_override=True
)
flags.DEFINE_string(
    "teacher_run", "teacher", "The teacher's run directory under --runs_dir ('' for none)."
)
flags.DEFINE_string(
    "output_dir", None, "Write lerp_psa.md, .json and .png here.", allow_override=True
)
FLAGS = flags.FLAGS

NAME = "lerp_psa"


def row(directory):
    """One table row from the run in `directory` (and its transfer stage, if any)."""
    from effkeras import models
    from effkeras.graph import nn_mass, summary

    metrics = _report.read_run(directory)
    model = models.get(metrics["model"], input_shape=tuple(metrics["input_shape"]))
    transfer = os.path.join(directory, "transfer")
    stage1 = _report.read_run(transfer) if os.path.isdir(transfer) else None
    return {
        "model": metrics["model"],
        "trainable_params": summary.trainable_params(model),
        "macs": summary.totals(summary.summarize(model))["float_macs"],
        "nonlinear_units": nn_mass.nonlinear_units(model),
        "transfer_epochs": stage1["epochs"] if stage1 else 0,
        "epochs": metrics["epochs"],
        "top1": metrics["test"]["top1"],
        "train_seconds": metrics["train_seconds"] + (stage1["train_seconds"] if stage1 else 0.0),
    }


def table(rows):
    lines = [
        "| model | trainable params | MACs | non-linear units | epochs (transfer + "
        "distillation) | test top-1 | train time |",
        "|" + "---|" * 7,
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['trainable_params']:,} | {r['macs'] / 1e6:.2f} M | "
            f"{r['nonlinear_units']:,} | {r['transfer_epochs']} + {r['epochs']} | "
            f"{100 * r['top1']:.2f}% | {r['train_seconds'] / 60:.1f} min |"
        )
    return "\n".join(lines)


def plot(rows, path):
    with _report.figure(path, figsize=(6, 4)) as (figure, axes):
        for i, r in enumerate(rows):
            axes.scatter(r["macs"] / 1e6, 100 * r["top1"], color=f"C{i}", zorder=3)
            axes.annotate(
                r["model"].replace("resmlp_", ""),
                (r["macs"] / 1e6, 100 * r["top1"]),
                textcoords="offset points",
                xytext=(5, 4),
                fontsize=8,
            )
        axes.set(
            xlabel="MACs per image (M)",
            ylabel="test top-1 (%)",
            title="ResMLP: learned activations vs ReLU",
        )
        axes.grid(alpha=0.3)


def main(argv):
    from effkeras import fileio

    if FLAGS.output_dir:
        fileio.check_writable(FLAGS.output_dir, "--output_dir", directory=True)
    names = ([FLAGS.teacher_run] if FLAGS.teacher_run else []) + list(FLAGS.models)
    rows = [row(os.path.join(FLAGS.runs_dir, name)) for name in names]
    _report.publish(FLAGS.output_dir, NAME, table(rows), rows, plot)


if __name__ == "__main__":
    _cli.run(main)
