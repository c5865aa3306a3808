"""Training-step time of Bi-Real Net 18 in effkeras (Keras 3) and in larq (tf_keras), one run.

python -m tools.bench_train_step [--input_size=96] [--batch_size=32] [--num_classes=10]
    [--steps=2] [--rounds=10] [--warmup=2] [--threads=0] [--output_dir=docs/benchmark/train_step]

The same net on both sides: `effkeras.models.get("birealnet18")` and Larq Zoo 2.4's
`larq_zoo.literature.BiRealNet` up to its logits (equal parameter counts; effkeras' also
normalises the pixels itself, one 1x1 depthwise conv). Four variants, each in a worker process
of its own (tools/_train_step_worker.py; larq runs on tf_keras, which cannot share a process
with Keras 3): effkeras and larq, each without and with XLA (jit_compile). Every worker compiles
with Adam and sparse cross-entropy from logits, holds the same random batch (pixels in
[0, 255]) as tensors and times `model.train_step` in a tf.function, so only the step is
measured. Workers start one after the other (build, compile, warm up), then take turns: each
times --steps steps per round, one worker computing at a time, so the load of a shared machine
hits all alike. The report is each variant's median (and best) ms per step over all rounds,
each median over larq's without XLA, and effkeras' over larq's with XLA; a variant that fails
(XLA may refuse a model) is reported with its error.

With --output_dir: bench_train_step.md (the table) and bench_train_step.json (every time).
About two minutes with the defaults on 2 CPU cores.

Regenerates docs/benchmark/train_step/bench_train_step.md and .json (--rounds=30
--output_dir=docs/benchmark/train_step). The step times are taken inside each worker (larq's
runs on tf_keras and cannot import effkeras); the workers take turns round by round here.
"""

import json
import os
import subprocess
import sys
import tempfile

from absl import flags

from apps import _cli
from tools import _report

flags.DEFINE_integer("input_size", 96, "Input height and width.")
flags.DEFINE_integer("batch_size", 32, "Images per step.")
flags.DEFINE_integer("num_classes", 10, "Classes of the classifier head.")
flags.DEFINE_integer("steps", 2, "Timed steps per variant per round.")
flags.DEFINE_integer("rounds", 10, "Rounds; the variants take turns within each.")
flags.DEFINE_integer("warmup", 2, "Untimed steps per variant before the first round.")
flags.DEFINE_integer(
    "threads",
    0,
    "TensorFlow's intra- and inter-op threads in every worker (0: TensorFlow's default).",
)
flags.DEFINE_string(
    "output_dir", None, "Write bench_train_step.md and .json here.", allow_override=True
)
FLAGS = flags.FLAGS

NAME = "bench_train_step"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# (variant, framework, jit_compile); the first larq variant is the baseline of every ratio.
VARIANTS = (
    ("effkeras", "effkeras", False),
    ("effkeras XLA", "effkeras", True),
    ("larq", "larq", False),
    ("larq XLA", "larq", True),
)
BASELINE = "larq"


class Worker:
    """A tools._train_step_worker process, started and warmed up; `time(n)` -> n step times."""

    def __init__(self, framework, spec, log):
        env = {key: value for key, value in os.environ.items() if key != "TF_USE_LEGACY_KERAS"}
        env["TF_CPP_MIN_LOG_LEVEL"] = "3"
        if framework == "larq":  # as tests/larq_zoo_oracle.py: larq 0.14 imports on tf_keras only
            env.update(TF_USE_LEGACY_KERAS="1", PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION="python")
        self.log = log
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tools._train_step_worker",
                json.dumps({**spec, "framework": framework}),
            ],
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )
        self.info = self._answer()["ready"]

    def _answer(self):
        line = self.process.stdout.readline()
        answer = json.loads(line) if line else {}
        if "error" in answer or not answer:
            self.close()
            self.log.seek(0)
            raise WorkerError(
                answer.get("error") or f"the worker stopped: {self.log.read()[-1500:].strip()}"
            )
        return answer

    def time(self, steps):
        self.process.stdin.write(f"{steps}\n")
        self.process.stdin.flush()
        return self._answer()["times_ms"]

    def close(self):
        self.process.stdin.close()
        self.process.wait()


class WorkerError(Exception):
    pass


def measure(spec, rounds, steps):
    """{variant: row}: every variant's step times in ms, or its error."""
    import statistics

    from effkeras.errors import InputError

    rows, workers = {}, {}
    with tempfile.TemporaryFile("w+") as log:
        for variant, framework, jit_compile in VARIANTS:
            rows[variant] = {"variant": variant, "framework": framework, "jit_compile": jit_compile}
            try:
                workers[variant] = Worker(framework, {**spec, "jit_compile": jit_compile}, log)
                rows[variant].update(workers[variant].info, times_ms=[])
            except WorkerError as e:
                if not jit_compile:  # the comparison itself is impossible
                    raise InputError(
                        f"the {variant} worker failed (for larq: is larq_zoo "
                        f"installed? see requirements-larq-zoo.txt): {e}"
                    ) from None
                rows[variant]["error"] = str(e)
        for _ in range(rounds):
            for variant, worker in list(workers.items()):
                try:
                    rows[variant]["times_ms"] += worker.time(steps)
                except WorkerError as e:
                    rows[variant]["error"] = str(e)
                    del workers[variant]
        for worker in workers.values():
            worker.close()
    baseline = statistics.median(rows[BASELINE]["times_ms"])
    for row in rows.values():
        if "error" not in row:
            row.update(median_ms=statistics.median(row["times_ms"]), best_ms=min(row["times_ms"]))
            row["vs_larq"] = row["median_ms"] / baseline
    return rows


def table(report):
    s = report["setup"]
    lines = [
        "# Training step: effkeras (Keras 3) against larq (tf_keras)",
        "",
        "Written by tools/bench_train_step.py; every step time is in bench_train_step.json.",
        "",
        f"Bi-Real Net 18, {s['input_size']}x{s['input_size']}x3, batch {s['batch_size']}, "
        f"{s['num_classes']} classes, Adam; {s['rounds']} rounds x {s['steps']} steps per "
        f"variant after {s['warmup']} warm-up; threads: {s['threads'] or 'TF default'} "
        f"({s['cpus']} CPUs)",
        "",
        "| variant | library | XLA | params | median ms/step | best ms/step | "
        "images/s | median / larq's |",
        "|" + "---|" * 8,
    ]
    for r in report["rows"]:
        if "error" in r:
            lines.append(
                f"| {r['variant']} | {r['framework']} | {r['jit_compile']} | - | "
                f"failed: {r['error']} | - | - | - |"
            )
            continue
        lines.append(
            f"| {r['variant']} | {r['library']} | {r['jit_compile']} "
            f"| {r['params']:,} | {r['median_ms']:.1f} | {r['best_ms']:.1f} | "
            f"{1000 * s['batch_size'] / r['median_ms']:.1f} | {r['vs_larq']:.3f} |"
        )
    medians = {r["variant"]: r["median_ms"] for r in report["rows"] if "error" not in r}
    ratios = [
        f"{ratio} {medians[ours] / medians[theirs]:.3f}"
        for ratio, ours, theirs in (
            ("without XLA", "effkeras", "larq"),
            ("with XLA", "effkeras XLA", "larq XLA"),
        )
        if ours in medians and theirs in medians
    ]
    lines += ["", "effkeras / larq, median step time: " + ", ".join(ratios)]
    return "\n".join(lines)


def main(argv):
    from effkeras import fileio
    from effkeras.errors import InputError

    for name, least in (
        ("input_size", 32),
        ("batch_size", 1),
        ("num_classes", 2),
        ("steps", 1),
        ("rounds", 1),
        ("warmup", 0),
        ("threads", 0),
    ):
        if FLAGS[name].value < least:
            raise InputError(f"--{name} must be >= {least}, got {FLAGS[name].value}")
    if FLAGS.output_dir:
        fileio.check_writable(FLAGS.output_dir, "--output_dir", directory=True)
    spec = {
        "input_size": FLAGS.input_size,
        "batch_size": FLAGS.batch_size,
        "num_classes": FLAGS.num_classes,
        "threads": FLAGS.threads,
        "warmup": FLAGS.warmup,
    }
    rows = measure(spec, FLAGS.rounds, FLAGS.steps)
    report = {
        "setup": {**spec, "rounds": FLAGS.rounds, "steps": FLAGS.steps, "cpus": os.cpu_count()},
        "rows": list(rows.values()),
    }
    text = table(report)
    print(text)
    if FLAGS.output_dir:
        _report.write(FLAGS.output_dir, NAME, text, report)


if __name__ == "__main__":
    _cli.run(main)
