"""Full-integer quantization of a SavedModel, in a process of its own.

TensorFlow 2.21's TFLite quantizer crashes the whole process (segmentation fault, measured with
softplus and selu) when a model holds an op without an int8 kernel, so `tflite.convert_int8`
runs it here: a crash is then an error it can explain, not the end of the app. Imports only
TensorFlow and NumPy (run as a script, not through the effkeras package).

python quantize_worker.py SAVED_MODEL CALIBRATION.npz IO OUTPUT.tflite [SIGNATURES]

SIGNATURES: comma-separated signature keys, one subgraph each (an early-exit model's stages);
the archive then holds "<signature>/<input name>" arrays, and each calibration example is given
to every signature in turn, as (signature key, {input name: array}).
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def main(saved_model, calibration, io, output, signatures=None):
    import numpy as np
    import tensorflow as tf

    keys = signatures.split(",") if signatures else None
    with np.load(calibration) as archive:
        if keys:
            named = {key: {} for key in keys}
            for name in archive.files:
                key, input_name = name.split("/", 1)
                named[key][input_name] = archive[name]
            count = len(next(iter(named[keys[0]].values())))
        else:
            arrays = [archive[f"arr_{i}"] for i in range(len(archive.files))]
            count = len(arrays[0])

    def representative_dataset():
        for i in range(count):
            if keys:
                for key in keys:
                    yield key, {name: a[i : i + 1] for name, a in named[key].items()}
            else:
                yield [a[i : i + 1] for a in arrays]

    converter = tf.lite.TFLiteConverter.from_saved_model(saved_model, signature_keys=keys)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative_dataset
    # Builtins too, so that an op without an int8 kernel stays float and can be named by the
    # caller rather than failing inside the converter with its whole graph dump.
    converter.target_spec.supported_ops = [
        tf.lite.OpsSet.TFLITE_BUILTINS_INT8,
        tf.lite.OpsSet.TFLITE_BUILTINS,
    ]
    if io == "int8":
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
    elif io == "uint8":  # camera pixels in (app_file.with_uint8_pixels), float out
        converter.inference_input_type = tf.uint8
    try:
        flatbuffer = converter.convert()
    except Exception as e:  # the first line says what failed; the caller shows it
        print((str(e).strip().splitlines() or [type(e).__name__])[0], file=sys.stderr)
        return 1
    with open(output, "wb") as f:
        f.write(flatbuffer)
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
