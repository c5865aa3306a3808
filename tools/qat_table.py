"""int8 post-training quantization (PTQ) against quantization-aware training (QAT), side by side.

python -m tools.qat_table --float_runs=runs/r8,runs/mnv2 --qat_runs=runs/r8_qat,runs/mnv2_qat
    [--dataset=fashion_mnist] [--files_dir=runs/qat/files] [--output_dir=docs/qat]

For each pair of apps.train runs (a float run, and the `--qat --init_from=<its model.keras>` run):
the test top-1 of the float Keras model, of its PTQ int8 file (calibrated on
--calibration_samples training images, as apps.convert does) and of the QAT int8 file, each on
the whole test split, the int8 numbers from the .tflite files run in LiteRT. Beside them: how far
the QAT file is from its Keras model (output steps), file bytes, TFLite Micro's arena for the QAT
file, and the ops Vela leaves on the CPU for ethos-u55-128 (PTQ / QAT).
"""

import os

from absl import flags

from apps import _cli
from tools import _report

flags.DEFINE_list("float_runs", None, "apps.train run directories of the float models.")
flags.DEFINE_list("qat_runs", None, "The QAT run of each float run, in the same order.")
flags.DEFINE_string("dataset", "fashion_mnist", "The dataset the runs trained on.")
flags.DEFINE_string("data_dir", None, "Its directory (Fashion-MNIST: the Debian package).")
flags.DEFINE_integer("calibration_samples", 200, "Training images PTQ calibrates on.")
flags.DEFINE_string("files_dir", None, "Keep the .tflite files here (default: not kept).")
flags.DEFINE_string("output_dir", None, "Write qat.md, .json and .png here.", allow_override=True)
FLAGS = flags.FLAGS

NAME = "qat"
SAMPLE = 200  # test images each conversion checks itself on
NPU = "ethos-u55-128"


def _images(dataset, data_dir, split, count, shape):
    from effkeras import data

    loaded = data.load(dataset, split, input_shape=shape, batch_size=count, data_dir=data_dir,
                       augment_with=(), shuffle=True)
    with loaded.errors_as_input_errors():
        return next(iter(loaded.dataset))[0].numpy()


def row(float_run, qat_run, *, dataset="fashion_mnist", data_dir=None, calibration_samples=200,
        files_dir=None):
    """One table row: the float model of `float_run`, its PTQ file (calibrated on
    `calibration_samples` training images) and its QAT run's (`qat_run`) file."""
    import tempfile

    from effkeras import data, deploy, evaluation, quantization, saving
    from effkeras.errors import InputError

    float_model = saving.load_model(os.path.join(float_run, "model.keras"))
    qat_model = saving.load_model(os.path.join(qat_run, "model.keras"))
    if not quantization.is_qat_model(qat_model) or qat_model.name != float_model.name:
        raise InputError(f"{qat_run} is not a QAT run of {float_model.name} (apps.train --qat "
                         f"--init_from={float_run}/model.keras --output_dir={qat_run})")
    shape = tuple(float_model.input_shape[1:])
    test = data.load(dataset, "test", input_shape=shape, batch_size=256, data_dir=data_dir)
    sample = _images(dataset, data_dir, "test", SAMPLE, shape)
    calibration = _images(dataset, data_dir, "train", calibration_samples, shape)
    ptq, ptq_report = deploy.convert(float_model, "int8", calibration=calibration, sample=sample)
    qat, qat_report = deploy.convert(qat_model, "int8", sample=sample)
    with tempfile.TemporaryDirectory() as scratch:
        directory = files_dir or scratch
        os.makedirs(directory, exist_ok=True)
        top1 = {}
        for kind, flatbuffer in (("ptq", ptq), ("qat", qat)):
            path = os.path.join(directory, f"{float_model.name}_{kind}_int8.tflite")
            deploy.save(path, flatbuffer, qat_report if kind == "qat" else ptq_report)
            top1[kind] = evaluation.evaluate_tflite(path, dataset, data_dir=data_dir,
                                                    runtime="litert")["top1"]
    _, tflm = deploy.convert(qat, "tflm")
    npu = {kind: deploy.convert(flatbuffer, NPU)[1] for kind, flatbuffer in
           (("ptq", ptq), ("qat", qat))}
    metrics = _report.read_run(qat_run)
    return {"model": float_model.name, "input_shape": list(shape),
            "float_top1": evaluation.evaluate(float_model, test)["top1"],
            "ptq_top1": top1["ptq"], "qat_top1": top1["qat"],
            "qat_keras_top1": evaluation.evaluate(qat_model, test)["top1"],
            "qat_max_lsb": qat_report.max_lsb, "ptq_bytes": len(ptq), "qat_bytes": len(qat),
            "tflm_arena_bytes": tflm.arena_bytes,
            "npu_cpu_ops": {kind: npu[kind].cpu_ops for kind in npu},
            "npu_ops": {kind: npu[kind].npu_ops for kind in npu},
            "qat_epochs": metrics["epochs"], "qat_train_seconds": metrics["train_seconds"]}


def table(rows):
    lines = ["| model | input | float top-1 | int8 PTQ | int8 QAT | QAT - float | QAT - PTQ | "
             "QAT file vs Keras | int8 bytes (PTQ / QAT) | TFLM arena (QAT) | "
             f"{NPU} CPU ops (PTQ / QAT) | QAT epochs |", "|" + "---|" * 12]
    for r in rows:
        lines.append(
            f"| {r['model']} | {'x'.join(map(str, r['input_shape']))} | "
            f"{100 * r['float_top1']:.2f}% | {100 * r['ptq_top1']:.2f}% | "
            f"{100 * r['qat_top1']:.2f}% | {100 * (r['qat_top1'] - r['float_top1']):+.2f} | "
            f"{100 * (r['qat_top1'] - r['ptq_top1']):+.2f} | ≤ {r['qat_max_lsb']:g} step | "
            f"{r['ptq_bytes']:,} / {r['qat_bytes']:,} | {r['tflm_arena_bytes']:,} B | "
            f"{r['npu_cpu_ops']['ptq']} / {r['npu_cpu_ops']['qat']} | {r['qat_epochs']} |")
    return "\n".join(lines)


def plot(rows, path):
    import numpy as np

    with _report.figure(path, figsize=(7, 4)) as (figure, axes):
        x = np.arange(len(rows))
        for i, (key, label) in enumerate((("float_top1", "float"), ("ptq_top1", "int8 PTQ"),
                                          ("qat_top1", "int8 QAT"))):
            values = [100 * r[key] for r in rows]
            axes.bar(x + (i - 1) * 0.27, values, 0.27, label=label, color=f"C{i}", zorder=3)
        low = min(100 * min(r["float_top1"], r["ptq_top1"], r["qat_top1"]) for r in rows)
        axes.set_ylim(max(0, low - 3), 100 * max(r["float_top1"] for r in rows) + 2)
        axes.set_xticks(x, [r["model"] for r in rows], fontsize=8)
        axes.set(ylabel="test top-1 (%)", title="int8: post-training quantization vs QAT")
        axes.legend(fontsize=8)
        axes.grid(axis="y", alpha=0.3)


def main(argv):
    from effkeras import fileio
    from effkeras.errors import InputError

    if not FLAGS.float_runs or len(FLAGS.float_runs) != len(FLAGS.qat_runs or []):
        raise InputError("give --float_runs and --qat_runs, one QAT run per float run")
    if FLAGS.calibration_samples < 1:
        raise InputError("--calibration_samples must be a positive integer")
    if FLAGS.output_dir:
        fileio.check_writable(FLAGS.output_dir, "--output_dir", directory=True)
    rows = [row(f, q, dataset=FLAGS.dataset, data_dir=FLAGS.data_dir,
                calibration_samples=FLAGS.calibration_samples, files_dir=FLAGS.files_dir)
            for f, q in zip(FLAGS.float_runs, FLAGS.qat_runs)]
    _report.publish(FLAGS.output_dir, NAME, table(rows), rows, plot)


if __name__ == "__main__":
    _cli.run(main)
