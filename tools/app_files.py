"""The files apps.convert writes for apps, checked by the client apps use: trained checkpoints
converted to `float` and `int8` with apps.convert's defaults (RGB input with luma first for
grayscale models, probabilities, TFLite Metadata; int8: uint8 pixels), each classified by
MediaPipe Tasks' ImageClassifier (created from the file alone, default options) on test images,
against Keras; the int8 files also run in TFLite Micro and their int8 core through Vela.

python -m tools.app_files --checkpoints=runs/mcu/mlperf_tiny_resnet8/model.keras,... \
    [--dataset=fashion_mnist] [--samples=1000] [--output_dir=docs/android]

Writes app_files.md (the table) and app_files.json; docs/android.md quotes them.
"""

from absl import flags

from apps import _cli

flags.DEFINE_list("checkpoints", None, "Trained .keras files.", allow_override=True)
flags.DEFINE_string("dataset", "fashion_mnist", "Their dataset.", allow_override=True)
flags.DEFINE_string("data_dir", None, "Its directory.", allow_override=True)
flags.DEFINE_integer("samples", 1000, "Test images classified.", allow_override=True)
flags.DEFINE_integer(
    "calibration_samples", 200, "Training images the int8 ranges come from.", allow_override=True
)
flags.DEFINE_string(
    "output_dir", None, "Where to write app_files.md and .json.", allow_override=True
)
FLAGS = flags.FLAGS

APP_OPTIONS = {"float": {}, "int8": {"io": "uint8"}}  # apps.convert's defaults for apps


def check(model, test, labels, calibration, class_names, dataset):
    """One row per app target of `model` (see the module doc); a QAT model (apps.train --qat):
    its int8 row alone, converted with the ranges it learned.

    Args:
        model: a trained Keras classifier.
        test: test images (N, H, W, C) in [0, 255]; labels: their classes.
        calibration: training images for the int8 ranges.
        class_names: the dataset's class names.
        dataset: its name, for the metadata.

    Returns:
        A list of dicts.
    """
    import numpy as np

    from effkeras import deploy, qat
    from effkeras.deploy import app_file, runtime
    from effkeras.graph import passes

    # An app hands MediaPipe uint8 pixels: Keras gets the same ones, rounded as the MediaPipe
    # runner rounds them (a resized image has fractional pixels).
    test = runtime.quantize(test, 1.0, 0, np.uint8).astype(np.float32)
    expected = model.predict(test, verbose=0).argmax(-1)
    rows = []
    is_qat = qat.is_qat_model(model)
    for target, options in APP_OPTIONS.items():
        if is_qat and target != "int8":  # a QAT model's files are int8 (deploy.tflite)
            continue
        flatbuffer, report = deploy.convert(
            model,
            target,
            calibration=calibration,
            sample=test[:32],
            outputs="probabilities",
            rgb_input=model.input_shape[-1] == 1,
            **options,
        )
        info = deploy.app_info(
            model, model.name, class_names=class_names, dataset=dataset, report=report
        )
        flatbuffer = deploy.with_metadata(flatbuffer, info)
        classifier = runtime.runner(flatbuffer, "mediapipe")
        scores = classifier.predict(test)
        classifier.close()
        sums = scores.sum(axis=1)
        row = {
            "model": model.name,
            "target": f"{target}, QAT" if is_qat else target,
            "size_bytes": len(flatbuffer),
            "io": f"{options.get('io', 'float')} in, float probabilities out",
            "mediapipe_names_ok": classifier.category_names == list(class_names),
            "mediapipe_sum_min": float(sums.min()),
            "mediapipe_sum_max": float(sums.max()),
            "mediapipe_agreement": float(np.mean(scores.argmax(-1) == expected)),
            "mediapipe_top1": float(np.mean(scores.argmax(-1) == labels)),
            "keras_top1": float(np.mean(expected == labels)),
        }
        if target == "int8":
            micro = runtime.TFLiteMicro(flatbuffer).predict(passes.to_rgb(test))
            row["tflm_top1"] = float(np.mean(micro.argmax(-1) == labels))
            core = app_file.without_app_head(flatbuffer)
            _, vela = deploy.convert(core, "ethos-u55-128")
            row["vela_cpu_ops"], row["vela_npu_ops"] = vela.cpu_ops, vela.npu_ops
        rows.append(row)
    return rows


def table(rows):
    """The rows as a markdown table."""
    lines = [
        "| model | file | bytes | MediaPipe names | score sums | MediaPipe vs Keras top-1 "
        "| top-1 (MediaPipe / Keras) | TFLite Micro top-1 | Vela U55-128 CPU ops |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['target']} ({r['io']}) | {r['size_bytes']:,} "
            f"| {'right' if r['mediapipe_names_ok'] else 'WRONG'} "
            f"| {r['mediapipe_sum_min']:.6f}–{r['mediapipe_sum_max']:.6f} "
            f"| {100 * r['mediapipe_agreement']:.1f} % "
            f"| {100 * r['mediapipe_top1']:.2f} / {100 * r['keras_top1']:.2f} % "
            f"| {'%.2f %%' % (100 * r['tflm_top1']) if 'tflm_top1' in r else '-'} "
            f"| {r.get('vela_cpu_ops', '-')} |"
        )
    return "\n".join(lines)


def main(argv):
    del argv
    from effkeras import data, saving
    from effkeras.errors import InputError
    from tools import _report

    if not FLAGS.checkpoints:
        raise InputError("give --checkpoints=<trained model.keras files, comma-separated>")
    rows = []
    for path in FLAGS.checkpoints:
        model = saving.load_model(path)
        options = dict(
            input_shape=tuple(model.input_shape[1:]),
            data_dir=FLAGS.data_dir,
            num_classes=model.output_shape[-1],
        )
        test, class_names, labels = data.take(
            FLAGS.dataset, "test", FLAGS.samples, with_labels=True, **options
        )
        calibration, _ = data.take(FLAGS.dataset, "train", FLAGS.calibration_samples, **options)
        rows += check(model, test, labels, calibration, class_names, FLAGS.dataset)
        print(table(rows), flush=True)
    if FLAGS.output_dir:
        _report.write(FLAGS.output_dir, "app_files", table(rows), rows)


if __name__ == "__main__":
    _cli.run(main)
