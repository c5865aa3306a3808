"""Where post-training quantization loses a float checkpoint's answers: its int8 replica's top-1
agreement with Keras, with weights or activations alone rounded, and with each activation
quantization point left float in turn (the ones that cost most first).

The replica is the QAT model of the checkpoint (qat.quantize_model) with PTQ's ranges: min and
max over --calibration_samples training images, as apps.convert's int8 target takes them, its
biases on the int32 grid and its hard-swish on TFLite's kernel, so that it rounds as the int8
file does (module docs of effkeras.qat and effkeras.deploy.int8_qat).

python -m tools.ptq_sensitivity --checkpoint=runs/app3/ran_e_gt_32/model.keras \
    [--dataset=fashion_mnist] [--samples=1000] [--top=10] [--output_dir=DIR]

Writes ptq_sensitivity.md (the table) and .json with --output_dir.
"""

from absl import flags

from apps import _cli

flags.DEFINE_string("checkpoint", None, "A trained float .keras file.")
flags.DEFINE_string("dataset", "fashion_mnist", "Its dataset.", allow_override=True)
flags.DEFINE_string("data_dir", None, "Its directory.", allow_override=True)
flags.DEFINE_integer("samples", 1000, "Test images compared.", allow_override=True)
flags.DEFINE_integer(
    "calibration_samples", 200, "Training images the ranges come from.", allow_override=True
)
flags.DEFINE_integer("top", 10, "Quantization points listed.")
flags.DEFINE_string("output_dir", None, "Where to write the table.", allow_override=True)
FLAGS = flags.FLAGS


def sensitivity(model, calibration, images):
    """Top-1 agreement with `model` of its PTQ replica, whole and in parts.

    Args:
        model: a trained float functional Keras classifier.
        calibration: images (N, H, W, C) the activation ranges come from (min and max).
        images: images to compare on.

    Returns:
        A list of dicts {"rounded": what the replica rounds, "agreement": share of `images`
        whose argmax equals the float model's}: everything, weights only, activations only,
        then every activation point but one (named), the points whose rounding costs most
        (the most agreement without it) first.
    """
    import numpy as np

    from effkeras import qat
    from effkeras.deploy import int8_qat

    expected = np.argmax(model.predict(images, verbose=0), -1)
    # what the int8 file computes, as the deploy check defines it: biases snapped, hard-swish
    # frozen to TFLite's kernel
    replica = int8_qat.reference(qat.snap_biases(qat.quantize_model(model, calibration)))
    layers = qat.quantized_layers(replica)
    # a frozen hard-swish is a table on its input's codes: activation rounding too
    activations = [
        layer for layer in layers if isinstance(layer, (qat.FakeQuant, qat.QATHardSwish))
    ]
    weights = [layer for layer in layers if isinstance(layer, qat.FoldedBatchNorm)]

    def agreement(floats):
        for layer in floats:
            layer.mode = "float"
        replica.predict_function = None  # predict caches a function traced in the old modes
        found = np.argmax(replica.predict(images, verbose=0), -1)
        for layer in floats:
            layer.mode = "quantize"
        return float(np.mean(found == expected))

    rows = [
        {"rounded": "everything", "agreement": agreement([])},
        {"rounded": "weights only", "agreement": agreement(activations)},
        {"rounded": "activations only", "agreement": agreement(weights)},
    ]
    points = [
        layer
        for layer in activations
        if isinstance(layer, qat.FakeQuant) and layer.fixed_range is None
    ]
    each = [
        {"rounded": f"all but {layer.name}", "agreement": agreement([layer])} for layer in points
    ]
    return rows + sorted(each, key=lambda row: -row["agreement"])


def table(model_name, rows):
    """The rows as a markdown table."""
    lines = [
        f"| {model_name}: what the replica rounds | top-1 agreement with Keras |",
        "|---|---|",
    ]
    lines += [f"| {row['rounded']} | {100 * row['agreement']:.1f} % |" for row in rows]
    return "\n".join(lines)


def main(argv):
    del argv
    from effkeras import data, saving
    from effkeras.errors import InputError
    from tools import _report

    if not FLAGS.checkpoint:
        raise InputError("give --checkpoint=<a trained float model.keras>")
    model = saving.load_model(FLAGS.checkpoint)
    options = dict(
        input_shape=tuple(model.input_shape[1:]),
        data_dir=FLAGS.data_dir,
        num_classes=model.output_shape[-1],
    )
    test, _ = data.take(FLAGS.dataset, "test", FLAGS.samples, **options)
    calibration, _ = data.take(FLAGS.dataset, "train", FLAGS.calibration_samples, **options)
    rows = sensitivity(model, calibration, test)[: 3 + FLAGS.top]
    text = table(model.name, rows)
    print(text)
    if FLAGS.output_dir:
        _report.write(FLAGS.output_dir, "ptq_sensitivity", text, rows)


if __name__ == "__main__":
    _cli.run(main)
