"""int8 post-training quantization (PTQ) against quantization-aware training (QAT), side by side.

python -m tools.qat_table --float_runs=runs/r8,runs/mnv2 --qat_runs=runs/r8_qat,runs/mnv2_qat
    [--finetune_runs=runs/r8_finetune,runs/mnv2_finetune] [--dataset=fashion_mnist]
    [--files_dir=runs/qat/files] [--output_dir=docs/qat]

For each float apps.train run and its `--qat --init_from=<its model.keras>` run: the test top-1
of the float Keras model, of its PTQ int8 file (calibrated on --ptq_samples training images,
as apps.convert does) and of the QAT int8 file, each on the whole test split, the int8
numbers from the .tflite files run in LiteRT. QAT trains on for a few epochs, so a short-trained
float model gains from the training as well as from learning the rounding: a `--finetune` run
of the same float model (the same schedule, no quantization) is the control, given with
--finetune_runs, and its PTQ file the fair PTQ. Beside them: the QAT file against its Keras
model (steps, op by op), file bytes, TFLite Micro's arena for the QAT file, and the ops Vela
leaves on the CPU for ethos-u55-128 (PTQ / QAT).

Regenerates docs/qat/qat.md, .json and .png (--output_dir=docs/qat), and docs/qat/seed1 from
the runs trained with --seed=1.
"""

import os

from absl import flags

from apps import _cli
from tools import _report

flags.DEFINE_list("float_runs", None, "apps.train run directories of the float models.")
flags.DEFINE_list("qat_runs", None, "The QAT run of each float run, in the same order.")
flags.DEFINE_list(
    "finetune_runs", None, "The --finetune run of each float run (the control), in the same order."
)
# allow_override: tools.bench_early_exit defines these too, with the same defaults.
flags.DEFINE_string(
    "dataset", "fashion_mnist", "The dataset the runs trained on.", allow_override=True
)
flags.DEFINE_string(
    "data_dir", None, "Its directory (Fashion-MNIST: the Debian package).", allow_override=True
)
flags.DEFINE_integer(
    "ptq_samples", 200, "Training images PTQ calibrates on (apps.convert's --calibration_samples)."
)
flags.DEFINE_string("files_dir", None, "Keep the .tflite files here (default: not kept).")
flags.DEFINE_string("output_dir", None, "Write qat.md, .json and .png here.", allow_override=True)
FLAGS = flags.FLAGS

NAME = "qat"
SAMPLE = 200  # test images each conversion checks itself on
NPU = "ethos-u55-128"


def row(
    float_run,
    qat_run,
    finetune_run=None,
    *,
    dataset="fashion_mnist",
    data_dir=None,
    calibration_samples=200,
    files_dir=None,
):
    """One table row: the float model of `float_run`, its PTQ file (calibrated on
    `calibration_samples` training images), its QAT run's (`qat_run`) file and, with a
    `finetune_run`, that float model and its PTQ file."""
    import tempfile

    from effkeras import data, deploy, evaluation, qat, saving
    from effkeras.errors import InputError

    float_model = saving.load_model(os.path.join(float_run, "model.keras"))
    qat_model = saving.load_model(os.path.join(qat_run, "model.keras"))
    if not qat.is_qat_model(qat_model) or qat_model.name != float_model.name:
        raise InputError(
            f"{qat_run} is not a QAT run of {float_model.name} (apps.train --qat "
            f"--init_from={float_run}/model.keras --output_dir={qat_run})"
        )
    shape = tuple(float_model.input_shape[1:])
    test = data.load(dataset, "test", input_shape=shape, batch_size=256, data_dir=data_dir)
    sample = data.take(dataset, "test", SAMPLE, input_shape=shape, data_dir=data_dir)[0]
    calibration = data.take(
        dataset, "train", calibration_samples, input_shape=shape, data_dir=data_dir
    )[0]
    models = {"float": float_model, "qat": qat_model}
    if finetune_run:
        models["tuned"] = saving.load_model(os.path.join(finetune_run, "model.keras"))
    files, reports = {}, {}
    for kind, model in models.items():
        files[kind], reports[kind] = deploy.convert(
            model, "int8", calibration=None if kind == "qat" else calibration, sample=sample
        )
    result = {"model": float_model.name, "input_shape": list(shape)}
    with tempfile.TemporaryDirectory() as scratch:
        directory = files_dir or scratch
        os.makedirs(directory, exist_ok=True)
        for kind, model in models.items():
            path = os.path.join(directory, f"{float_model.name}_{kind}_int8.tflite")
            deploy.save(path, files[kind], reports[kind])
            int8 = "qat" if kind == "qat" else f"{kind}_ptq"
            result[f"{int8}_top1"] = evaluation.evaluate_tflite(
                path, dataset, data_dir=data_dir, runtime="litert"
            )["top1"]
            result[f"{kind}_keras_top1"] = evaluation.evaluate(model, test)["top1"]
    _, tflm = deploy.convert(files["qat"], "tflm")
    npu = {
        kind: deploy.convert(files[kind], NPU, allow_cpu_ops=True)[1]  # counted, not refused
        for kind in ("float", "qat")
    }
    metrics = _report.read_run(qat_run)
    return {
        **result,
        "qat_max_op_lsb": reports["qat"].max_op_lsb,
        "qat_max_lsb": reports["qat"].max_lsb,
        "ptq_bytes": len(files["float"]),
        "qat_bytes": len(files["qat"]),
        "tflm_arena_bytes": tflm.arena_bytes,
        "npu_cpu_ops": {"ptq": npu["float"].cpu_ops, "qat": npu["qat"].cpu_ops},
        "npu_ops": {"ptq": npu["float"].npu_ops, "qat": npu["qat"].npu_ops},
        "qat_epochs": metrics["epochs"],
        "qat_train_seconds": metrics["train_seconds"],
    }


def _pct(value):
    return "" if value is None else f"{100 * value:.2f}%"


def table(rows):
    lines = [
        "| model | input | float | int8 PTQ | float, fine-tuned | its int8 PTQ | int8 QAT | "
        "QAT - fine-tuned float | QAT - its PTQ | QAT file vs Keras (op / end to end) | "
        "int8 bytes (PTQ / QAT) | TFLM arena (QAT) | "
        f"{NPU} CPU ops (PTQ / QAT) | QAT epochs |",
        "|" + "---|" * 14,
    ]
    for r in rows:
        tuned, tuned_ptq = r.get("tuned_keras_top1"), r.get("tuned_ptq_top1")
        lines.append(
            f"| {r['model']} | {'x'.join(map(str, r['input_shape']))} | "
            f"{_pct(r['float_keras_top1'])} | {_pct(r['float_ptq_top1'])} | {_pct(tuned)} | "
            f"{_pct(tuned_ptq)} | {_pct(r['qat_top1'])} | "
            + (
                f"{100 * (r['qat_top1'] - tuned):+.2f} | "
                f"{100 * (r['qat_top1'] - tuned_ptq):+.2f} | "
                if tuned is not None
                else " | | "
            )
            + f"≤ {r['qat_max_op_lsb']:g} / {r['qat_max_lsb']:g} steps | "
            f"{r['ptq_bytes']:,} / {r['qat_bytes']:,} | {r['tflm_arena_bytes']:,} B | "
            f"{r['npu_cpu_ops']['ptq']} / {r['npu_cpu_ops']['qat']} | {r['qat_epochs']} |"
        )
    return "\n".join(lines)


def plot(rows, path):
    import numpy as np

    bars = (
        ("float_keras_top1", "float"),
        ("float_ptq_top1", "int8 PTQ"),
        ("tuned_keras_top1", "float, fine-tuned"),
        ("tuned_ptq_top1", "its int8 PTQ"),
        ("qat_top1", "int8 QAT"),
    )
    bars = [(key, label) for key, label in bars if all(r.get(key) is not None for r in rows)]
    width = 0.8 / len(bars)
    with _report.figure(path, figsize=(8, 4)) as (figure, axes):
        x = np.arange(len(rows))
        for i, (key, label) in enumerate(bars):
            axes.bar(
                x + (i - (len(bars) - 1) / 2) * width,
                [100 * r[key] for r in rows],
                width,
                label=label,
                color=f"C{i}",
                zorder=3,
            )
        values = [100 * r[key] for r in rows for key, _ in bars]
        axes.set_ylim(max(0, min(values) - 3), max(values) + 2)
        axes.set_xticks(x, [r["model"] for r in rows], fontsize=8)
        axes.set(ylabel="test top-1 (%)", title="int8: post-training quantization vs QAT")
        axes.legend(fontsize=7)
        axes.grid(axis="y", alpha=0.3)


def main(argv):
    from effkeras import fileio
    from effkeras.errors import InputError

    if not FLAGS.float_runs or len(FLAGS.float_runs) != len(FLAGS.qat_runs or []):
        raise InputError("give --float_runs and --qat_runs, one QAT run per float run")
    finetune_runs = FLAGS.finetune_runs or [None] * len(FLAGS.float_runs)
    if len(finetune_runs) != len(FLAGS.float_runs):
        raise InputError("give one --finetune_runs entry per float run")
    if FLAGS.ptq_samples < 1:
        raise InputError("--ptq_samples must be a positive integer")
    if FLAGS.output_dir:
        fileio.check_writable(FLAGS.output_dir, "--output_dir", directory=True)
    rows = [
        row(
            f,
            q,
            t,
            dataset=FLAGS.dataset,
            data_dir=FLAGS.data_dir,
            calibration_samples=FLAGS.ptq_samples,
            files_dir=FLAGS.files_dir,
        )
        for f, q, t in zip(FLAGS.float_runs, FLAGS.qat_runs, finetune_runs)
    ]
    _report.publish(FLAGS.output_dir, NAME, table(rows), rows, plot)


if __name__ == "__main__":
    _cli.run(main)
