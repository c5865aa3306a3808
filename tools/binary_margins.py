"""How close a trained binary net decides to a tie: the top-1 agreement with itself (in Keras)
when the inputs of its binary layers are rounded to an int8 grid, and under input noise.

python -m tools.binary_margins --checkpoint=runs/mcu/recu_resnet20/model.keras
    [--dataset=fashion_mnist] [--samples=1000] [--tflite=runs/mcu/recu_resnet20_tflm.tflite]

An int8 file of a binary net (effkeras.deploy.binary_int8) computes every sign exactly on its
own int8 codes; what it cannot keep is the float pre-activations between those codes. Rounding
each binary layer's input to its int8 step (the range over --calibration_samples training
images / 255), and to grids 4, 16 and 64 times finer, in Keras, shows how much of a file's
top-1 disagreement that grid explains; input noise of a fraction of a pixel shows how much the
model itself moves. With --tflite (the int8 file of the checkpoint), the file's top-1
agreement with Keras by the Keras logits' margin (top-1 minus top-2), from all images to the
most decided quarter: where the model decides by a wide margin the file agrees; and the top-1
agreement of every pair among Keras and the file's int8 runtimes (LiteRT with XNNPack, with
TFLite's builtin kernels and with its reference kernels; TFLite Micro), which shows how far
conforming integer kernels break ties apart on their own. A QAT checkpoint of a binary net
(apps.train --qat) is compared as it is, without the Keras-only rounding study. Prints JSON;
the numbers are quoted in docs/microcontrollers.md.
"""

import json

from absl import flags

from apps import _cli

# allow_override: other tools define these names too (tests import the tools in one process).
flags.DEFINE_string("checkpoint", None, "A trained binary net (.keras).", allow_override=True)
flags.DEFINE_string("dataset", "fashion_mnist", "The dataset it trained on.", allow_override=True)
flags.DEFINE_string(
    "data_dir", None, "Its directory (Fashion-MNIST: the Debian package).", allow_override=True
)
flags.DEFINE_integer("samples", 1000, "Test images compared.", allow_override=True)
flags.DEFINE_string(
    "tflite", None, "The checkpoint's int8 file, to compare by margin.", allow_override=True
)
flags.DEFINE_integer(
    "calibration_samples",
    200,
    "Training images the int8 ranges come from.",
    allow_override=True,
)
FLAGS = flags.FLAGS

GRIDS = (1, 4, 16, 64)  # the int8 step, and grids this many times finer
NOISE = (1e-3, 1e-2, 1e-1, 0.5)  # uniform input noise, in pixels of 0..255


def margins(model, test, calibration):
    """The agreements of `model` with itself on `test` (see the module doc).

    Args:
        model: a Keras model with binary layers (layers with an `input_quantizer`).
        test: images compared.
        calibration: images the int8 step of each binary layer's input comes from.

    Returns:
        A dict: per layer, the share of inputs within half a step of zero; top-1 agreement per
        grid (`grid/1` is the int8 step) and per input noise amplitude.
    """
    import keras
    import numpy as np

    from effkeras.errors import InputError
    from effkeras.graph import leaf_layers

    binary = [layer for layer in leaf_layers(model) if getattr(layer, "input_quantizer", None)]
    if not binary:
        raise InputError(f"{model.name} has no layer with an input quantizer: not a binary net")
    probe = keras.Model(model.input, [layer.input for layer in binary])
    steps = [(x.max() - x.min()) / 255 for x in probe.predict(calibration, verbose=0)]
    inputs = probe.predict(test, verbose=0)

    def top1(images):
        return model.predict(images, verbose=0).argmax(-1)

    reference = top1(test)
    result = {
        "near_zero": [float(np.mean(np.abs(x) < s / 2)) for x, s in zip(inputs, steps)],
        "grid": {},
        "noise": {},
    }
    quantizers = [layer.input_quantizer for layer in binary]
    try:
        for factor in GRIDS:
            for layer, quantizer, step in zip(binary, quantizers, steps):
                layer.input_quantizer = _rounded(quantizer, step / factor)
            model.predict_function = None  # traced with the quantizers it had
            result["grid"][f"1/{factor}"] = float(np.mean(top1(test) == reference))
    finally:
        for layer, quantizer in zip(binary, quantizers):
            layer.input_quantizer = quantizer
        model.predict_function = None
    rng = np.random.default_rng(0)
    for amplitude in NOISE:
        noisy = test + rng.uniform(-amplitude, amplitude, test.shape).astype(test.dtype)
        result["noise"][str(amplitude)] = float(np.mean(top1(noisy) == reference))
    return result


def agreement_by_margin(expected, actual, quantiles=(0.0, 0.25, 0.5, 0.75)):
    """Top-1 agreement of `actual` with `expected` logits among the images whose expected margin
    (top-1 minus top-2 logit) is at least each quantile of the margins.

    Args:
        expected: Keras logits (N, C); actual: the file's outputs (N, C).
        quantiles: the margin quantiles to start from.

    Returns:
        A list of {"quantile", "margin", "images", "agreement"}.
    """
    import numpy as np

    ordered = np.sort(expected, axis=-1)
    margin = ordered[:, -1] - ordered[:, -2]
    same = expected.argmax(-1) == actual.argmax(-1)
    rows = []
    for q in quantiles:
        threshold = float(np.quantile(margin, q))
        chosen = margin >= threshold
        rows.append(
            {
                "quantile": q,
                "margin": round(threshold, 4),
                "images": int(chosen.sum()),
                "agreement": float(np.mean(same[chosen])),
            }
        )
    return rows


def pairwise_agreement(outputs):
    """Top-1 agreement of every pair of `outputs` ({name: logits (N, C)}), as
    {"a vs b": share}, in the order given."""
    import itertools

    from effkeras.deploy.converter import top1_agreement

    return {
        f"{a} vs {b}": top1_agreement(outputs[a], outputs[b])
        for a, b in itertools.combinations(outputs, 2)
    }


def _rounded(quantizer, step):
    """`quantizer` applied to its input rounded to multiples of `step`."""
    import keras

    return lambda x: quantizer(keras.ops.round(x / step) * step)


def main(argv):
    del argv
    from effkeras.errors import InputError

    if not FLAGS.checkpoint:
        raise InputError("give --checkpoint=<a trained binary net's model.keras>")
    from effkeras import data, qat, saving

    model = saving.load_model(FLAGS.checkpoint)
    shape = tuple(model.input_shape[1:])
    options = dict(input_shape=shape, data_dir=FLAGS.data_dir)
    test = data.take(FLAGS.dataset, "test", FLAGS.samples, **options)[0]
    result = {"checkpoint": FLAGS.checkpoint}
    if not qat.is_qat_model(model):
        calibration = data.take(FLAGS.dataset, "train", FLAGS.calibration_samples, **options)[0]
        result.update(margins(model, test, calibration))
    if FLAGS.tflite:
        from effkeras.deploy import runtime
        from effkeras.deploy.flatbuffer import read_file

        flatbuffer = read_file(FLAGS.tflite)
        outputs = {
            "keras": model.predict(test, verbose=0),
            "litert": runtime.LiteRT(flatbuffer).predict(test),
            "litert_builtin": runtime.LiteRT(flatbuffer, kernels="builtin").predict(test),
            "litert_reference": runtime.LiteRT(flatbuffer, kernels="reference").predict(test),
            "tflm": runtime.TFLiteMicro(flatbuffer).predict(test),
        }
        result["file_agreement_by_margin"] = agreement_by_margin(
            outputs["keras"], outputs["litert"]
        )
        result["runtime_agreement"] = pairwise_agreement(outputs)
    print(json.dumps(result))


if __name__ == "__main__":
    _cli.run(main)
