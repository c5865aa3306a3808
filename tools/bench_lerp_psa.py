"""Training-step time of LERP-PSA's ResMLP students, side by side in one process.

python -m tools.bench_lerp_psa [--models=resmlp_psa_h1,resmlp_relu_h2,resmlp_relu_h1,
    resmlp_bspline_h1] [--batch_size=128] [--rounds=7] [--steps_per_round=5] [--output_dir=DIR]

LERP-PSA (Singh & Bazargan, ACM TRETS 2025, DOI 10.1145/3705926) claims that ResMLP with its
learnable activations at hidden width H matches ReLU at 2H. Its table is rebuilt from the PSA
parameters on every step (G·C·E work, whatever the batch) and read with two gathers per
element, whose gradient is a scatter-add. This tool times what that costs on this machine: each
model compiled with AdamW and cross-entropy (the distillation teacher's forward pass, the same for
every student, is left out), `--steps_per_round` train_on_batch steps per model per round, the
models taking turns round by round so that drift in the machine's speed hits all alike. For the PSA
models it also times the table build alone (forward and gradient of every ResPSA table, no
lerp). Reports the median ms per step, images/s and the ratio to the first model, as a markdown
table, and with --output_dir as bench_lerp_psa.md/.json and a bar plot bench_lerp_psa.png.

Regenerates docs/lerp_psa/bench_lerp_psa.md, .json and .png (--output_dir=docs/lerp_psa).
"""

from absl import flags

from apps import _cli
from effkeras.models.resmlp import COMPARISON
from tools import _report

# allow_override: tools.bench_lerp_psa and tools.lerp_psa_table share these flags (and defaults).
flags.DEFINE_list(
    "models",
    list(COMPARISON),
    "Registered models, the first is the reference.",
    allow_override=True,
)
flags.DEFINE_integer("batch_size", 128, "Images per step (the recipe's 128).")
flags.DEFINE_integer("rounds", 7, "Timed rounds; each model runs --steps_per_round steps in each.")
flags.DEFINE_integer("steps_per_round", 5, "Steps per model per round.")
flags.DEFINE_string(
    "output_dir", None, "Write bench_lerp_psa.md, .json and .png here.", allow_override=True
)
FLAGS = flags.FLAGS

NAME = "bench_lerp_psa"
INPUT_SHAPE = (32, 32, 3)


def prepare(name, batch_size):
    """(row, step function, table-build function or None) of registered model `name`."""
    import keras
    import numpy as np
    import tensorflow as tf

    from effkeras import models
    from effkeras.graph import summary
    from effkeras.layers import LerpPSA

    keras.utils.set_random_seed(0)
    model = models.get(name, input_shape=INPUT_SHAPE)
    model.compile(
        keras.optimizers.AdamW(1e-3, weight_decay=0.0, epsilon=1e-8),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (batch_size, *INPUT_SHAPE)).astype(np.float32)
    labels = rng.integers(0, 10, batch_size).astype(np.int32)
    totals = summary.totals(summary.summarize(model))
    row = {
        "model": name,
        "trainable_params": summary.trainable_params(model),
        "macs": totals["float_macs"],
    }
    tables = [layer for layer in model.layers if isinstance(layer, LerpPSA)]
    variables = [v for layer in tables for v in layer.trainable_variables]

    @tf.function
    def build():
        with tf.GradientTape() as tape:
            total = tf.add_n([tf.reduce_sum(layer.table()) for layer in tables])
        return tape.gradient(total, variables)

    return row, lambda: model.train_on_batch(images, labels), build if tables else None


def timed_turns(functions, rounds, steps):
    """{name: [ms per step per round]}; one untimed round first (tracing). The functions take
    turns (`benchmark.time_interleaved`), each running `steps` steps per turn."""
    from effkeras import benchmark

    def repeated(function):
        def turn():
            for _ in range(steps):
                function()

        return turn

    times = benchmark.time_interleaved(
        {name: repeated(f) for name, f in functions.items()}, runs=rounds, warmup=1, progress=False
    )
    return {name: [ms / steps for ms in values] for name, values in times.items()}


def table(report):
    lines = [
        f"| model | trainable params | MACs | ms per step (batch {report['batch_size']}) | "
        f"images/s | vs {report['models'][0]['model']} | table build ms |",
        "|" + "---|" * 7,
    ]
    reference = report["models"][0]["median_ms"]
    for r in report["models"]:
        build = r.get("table_build_ms")
        lines.append(
            f"| {r['model']} | {r['trainable_params']:,} | {r['macs'] / 1e6:.2f} M | "
            f"{r['median_ms']:.1f} | {1e3 * report['batch_size'] / r['median_ms']:,.0f} | "
            f"{r['median_ms'] / reference:.2f}x | "
            f"{'-' if build is None else f'{build:.2f}'} |"
        )
    lines.append(
        f"\nmedian of {report['rounds']} rounds of {report['steps']} train_on_batch "
        f"steps per model, models taking turns; AdamW, cross-entropy, 32x32x3"
    )
    return "\n".join(lines)


def plot(report, path):
    rows = report["models"]
    names = [r["model"] for r in rows]
    with _report.figure(path, figsize=(7, 3.5)) as (figure, axes):
        axes.bar(names, [r["median_ms"] for r in rows], color=[f"C{i}" for i in range(len(rows))])
        for i, r in enumerate(rows):
            if r.get("table_build_ms") is not None:
                axes.bar(
                    [names[i]],
                    [r["table_build_ms"]],
                    color="k",
                    alpha=0.5,
                    label="of which: table build",
                )
        axes.set(
            ylabel=f"ms per training step (batch {report['batch_size']})",
            title="ResMLP training step, side by side",
        )
        axes.tick_params(axis="x", labelrotation=15)
        if any(r.get("table_build_ms") is not None for r in rows):
            axes.legend()


def main(argv):
    import statistics

    from effkeras import fileio, models
    from effkeras.errors import InputError

    if FLAGS.rounds < 1 or FLAGS.steps_per_round < 1 or FLAGS.batch_size < 1:
        raise InputError("--rounds, --steps_per_round and --batch_size must be >= 1")
    for name in FLAGS.models:
        if models.info(name).family != "lerp_psa":  # InputError for an unknown name
            raise InputError(f"{name} is not a ResMLP of LERP-PSA (family lerp_psa)")
    if FLAGS.output_dir:
        fileio.check_writable(FLAGS.output_dir, "--output_dir", directory=True)
    rows, functions = [], {}
    for name in FLAGS.models:
        row, functions[name], build = prepare(name, FLAGS.batch_size)
        if build is not None:
            functions[f"{name}/tables"] = build
        rows.append(row)
    times = timed_turns(functions, FLAGS.rounds, FLAGS.steps_per_round)
    for row in rows:
        row.update(median_ms=statistics.median(times[row["model"]]), times_ms=times[row["model"]])
        if f"{row['model']}/tables" in times:
            row["table_build_ms"] = statistics.median(times[f"{row['model']}/tables"])
    report = {
        "models": rows,
        "batch_size": FLAGS.batch_size,
        "rounds": FLAGS.rounds,
        "steps": FLAGS.steps_per_round,
    }
    _report.publish(FLAGS.output_dir, NAME, table(report), report, plot)


if __name__ == "__main__":
    _cli.run(main)
