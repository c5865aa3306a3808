"""larq 0.14 (tf_keras) as the reference for effkeras. Run in its own process, never imported
next to Keras 3 (larq needs TF_USE_LEGACY_KERAS=1 before TensorFlow is imported):

    python tests/larq_oracle.py quantizers REQUEST.npz RESULT.npz
        REQUEST: x, upstream (float32) and specs (JSON: [[larq class name, kwargs], ...]; or a
        Larq Zoo quantizer function's name in ZOO_QUANTIZERS, with {}).
        RESULT: y{i} = quantizer_i(x) and grad{i} = d sum(y * upstream) / dx.
    python tests/larq_oracle.py models OUT_DIR [NAME ...]
        For each model in MODELS: NAME.json (model.to_json()), NAME.npz (model.get_weights()
        as arr_0..), NAME.h5 (model.save_weights) and NAME_io.npz (inputs x, outputs y);
        for LCE_MODELS also NAME.tflite (larq_compute_engine.convert_keras_model).
    python tests/larq_oracle.py zoo OUT_DIR [--lce=all|NAME,NAME] [NAME ...]
        Every Larq Zoo 2.4 architecture (or those named) at ZOO_INPUT_SIZES, weights=None,
        num_classes=10, then randomize_weights: NAME.json, NAME.h5 and NAME_io.npz (x, y and
        the softmax's input `logits`); for the --lce ones also NAME.tflite, larq's own LCE
        conversion. zoo.json lists {name: {"input_size", "logits_layer", "build_s", "lce":
        "ok" | the conversion's error | null}}; zoo_quantizers.npz has the Zoo's quantizer
        functions on one kernel (zoo_quantizers).

The model builders below are importable for other checks (e.g. an LCE op census) as long as
the importing process runs under TF_USE_LEGACY_KERAS=1.
"""

import json
import os
import sys

os.environ["TF_USE_LEGACY_KERAS"] = "1"

import numpy as np  # noqa: E402


def build_quicknet_block(input_shape=(16, 16, 3), filters=32):
    """QuickNet-style: float stem, one-padded binary 3x3 conv (clip 1.25) -> ReLU -> BN,
    float shortcut add."""
    import larq as lq
    import tensorflow as tf

    layers = tf.keras.layers
    inputs = tf.keras.Input(input_shape)
    x = layers.Conv2D(filters, 3, strides=2, padding="same", use_bias=False)(inputs)
    x = layers.BatchNormalization(momentum=0.9, epsilon=1e-5)(x)
    y = lq.layers.QuantConv2D(
        filters,
        3,
        padding="same",
        pad_values=1.0,
        input_quantizer=lq.quantizers.SteSign(clip_value=1.25),
        kernel_quantizer=lq.quantizers.SteSign(clip_value=1.25),
        kernel_constraint=lq.constraints.WeightClip(1.25),
        activation="relu",
        use_bias=False,
    )(x)
    y = layers.BatchNormalization(momentum=0.9, epsilon=1e-5)(y)
    outputs = layers.Add()([x, y])
    return tf.keras.Model(inputs, outputs, name="quicknet_block")


def build_bireal_block(input_shape=(16, 16, 3), filters=32):
    """Bi-Real-style: float stem, then two blocks of approx_sign input, magnitude-aware kernel,
    zero padding, BN and a shortcut add; the second downsamples with an AvgPool + 1x1 shortcut."""
    import larq as lq
    import tensorflow as tf

    layers = tf.keras.layers
    binary = dict(
        input_quantizer="approx_sign",
        kernel_quantizer="magnitude_aware_sign",
        kernel_constraint="weight_clip",
        use_bias=False,
        padding="same",
    )
    inputs = tf.keras.Input(input_shape)
    x = layers.Conv2D(filters, 3, padding="same", use_bias=False)(inputs)
    x = layers.BatchNormalization()(x)
    y = lq.layers.QuantConv2D(filters, 3, **binary)(x)
    x = layers.Add()([x, layers.BatchNormalization()(y)])
    shortcut = layers.AveragePooling2D(2)(x)
    shortcut = layers.Conv2D(2 * filters, 1, use_bias=False)(shortcut)
    shortcut = layers.BatchNormalization()(shortcut)
    y = lq.layers.QuantConv2D(2 * filters, 3, strides=2, **binary)(x)
    outputs = layers.Add()([shortcut, layers.BatchNormalization()(y)])
    return tf.keras.Model(inputs, outputs, name="bireal_block")


def build_layer_mix(input_shape=(12, 12, 3)):
    """Every larq layer effkeras imports, other quantizers, and common Keras 2 layers."""
    import larq as lq
    import tensorflow as tf

    layers = tf.keras.layers
    inputs = tf.keras.Input(input_shape)
    x = layers.ZeroPadding2D(1)(inputs)
    x = layers.Conv2D(32, 3, activation="relu")(x)
    x = lq.layers.QuantDepthwiseConv2D(
        3,
        padding="same",
        pad_values=1.0,
        input_quantizer="swish_sign",
        depthwise_quantizer=lq.quantizers.SteSign(0.5),
        depthwise_constraint="weight_clip",
    )(x)
    x = layers.BatchNormalization(scale=False)(x)
    y = lq.layers.QuantSeparableConv2D(
        32,
        3,
        padding="same",
        input_quantizer="ste_sign",
        depthwise_quantizer="ste_sign",
        pointwise_quantizer="ste_sign",
        pointwise_constraint="weight_clip",
    )(x)
    y = layers.ReLU(max_value=6.0)(y)
    x = layers.Concatenate()([x, y])
    x = layers.MaxPooling2D(2)(x)
    x = layers.DepthwiseConv2D(3, padding="same")(x)
    x = lq.layers.QuantConv2D(
        32,
        1,
        input_quantizer=lq.quantizers.DoReFa(k_bit=2),
        kernel_quantizer=lq.quantizers.DoReFa(k_bit=2, mode="weights"),
    )(x)
    x = layers.GlobalAveragePooling2D()(x)
    x = layers.Dropout(0.5)(x)
    x = lq.layers.QuantDense(
        16,
        input_quantizer="ste_heaviside",
        kernel_quantizer="ste_sign",
        kernel_constraint="weight_clip",
    )(x)
    outputs = layers.Activation("softmax")(layers.Dense(10)(x))
    return tf.keras.Model(inputs, outputs, name="layer_mix")


def build_sequential(input_shape=(28, 28, 1)):
    """larq's documentation example: a Sequential binary net for MNIST-sized inputs."""
    import larq as lq
    import tensorflow as tf

    layers = tf.keras.layers
    binary = dict(
        input_quantizer="ste_sign",
        kernel_quantizer="ste_sign",
        kernel_constraint="weight_clip",
        use_bias=False,
    )
    return tf.keras.Sequential(
        [
            lq.layers.QuantConv2D(
                32,
                3,
                kernel_quantizer="ste_sign",
                kernel_constraint="weight_clip",
                use_bias=False,
                input_shape=input_shape,
            ),
            layers.BatchNormalization(scale=False),
            lq.layers.QuantConv2D(32, 3, **binary),
            layers.MaxPooling2D(2),
            layers.BatchNormalization(scale=False),
            layers.Flatten(),
            lq.layers.QuantDense(10, **binary),
            layers.BatchNormalization(scale=False),
        ],
        name="sequential",
    )


def build_tf_ops(input_shape=(8, 8, 6)):
    """TensorFlow functions called on Keras 2 tensors, which Keras 2 records as TFOpLambda layers
    (SlicingOpLambda for x[...]): arithmetic with tensors and constants, activations,
    reductions, slicing, concat / split / pad / reshape."""
    import tensorflow as tf

    layers = tf.keras.layers
    inputs = tf.keras.Input(input_shape)
    x = layers.Conv2D(8, 3, padding="same")(inputs)
    a, b = tf.split(x, 2, axis=-1)
    c, d, e = tf.split(x, [2, -1, 3], axis=-1)
    y = tf.concat([a * 0.5, tf.nn.relu(b) - a, c / 4.0], axis=-1)  # 10 channels
    y = 1.0 - tf.math.sigmoid(y[..., :8] + x)
    y = tf.math.maximum(y, tf.math.tanh(x)) + tf.math.minimum(tf.math.abs(x), -x)
    y = tf.pad(y, [[0, 0], [1, 1], [1, 1], [0, 0]])[:, 1:-1, 1:-1, :]
    y = y * tf.math.reduce_mean(d, axis=[1, 2, 3], keepdims=True) + tf.math.reduce_max(
        e, axis=-1, keepdims=True
    )
    y = tf.clip_by_value(tf.math.square(y), 0.0, 4.0) - tf.nn.relu6(tf.math.exp(-tf.math.abs(y)))
    z = tf.reshape(tf.transpose(y, [0, 2, 1, 3]), (-1, 8 * 8 * 8))
    z = tf.squeeze(tf.expand_dims(z, 1), axis=[1])
    w = layers.Dense(10)(z) + tf.math.reduce_sum(y[:, 0, ::2, -1], axis=1, keepdims=True)
    return tf.keras.Model(inputs, w + tf.nn.softmax(w), name="tf_ops")  # logits count too


MODELS = {
    "quicknet_block": build_quicknet_block,
    "bireal_block": build_bireal_block,
    "layer_mix": build_layer_mix,
    "sequential": build_sequential,
    "tf_ops": build_tf_ops,
}


LCE_MODELS = ("quicknet_block", "bireal_block", "tf_ops")


# Larq Zoo 2.4's exports (larq_zoo.sota and larq_zoo.literature) and the input size each is
# checked at: the smallest at which every zero-padded binary conv still sees a map at least as
# large as its kernel (LCE 0.16 computes smaller ones wrongly, effkeras.deploy.lce refuses them),
# so the same files serve the output comparison and the LCE op census. QuickNets pad with ones;
# BinaryResNetE18 and the BinaryDenseNets take a stride-1 stem below 50 pixels; XNORNet's 6x6
# "valid" conv needs 6x6 maps after three stride-2 pools, i.e. 224 pixels.
ZOO_INPUT_SIZES = {
    "QuickNet": 32,
    "QuickNetSmall": 32,
    "QuickNetLarge": 32,
    "BiRealNet": 96,
    "BinaryAlexNet": 64,
    "BinaryResNetE18": 32,
    "BinaryDenseNet28": 32,
    "BinaryDenseNet37": 32,
    "BinaryDenseNet37Dilated": 32,
    "BinaryDenseNet45": 32,
    "MeliusNet22": 96,
    "RealToBinaryNet": 96,
    "XNORNet": 224,
    "DoReFaNet": 64,
}
ZOO_CLASSES = 10


def zoo_builders():
    """{name: builder} of every architecture larq_zoo.sota and larq_zoo.literature export."""
    import larq_zoo

    builders = {
        name: getattr(module, name)
        for module in (larq_zoo.sota, larq_zoo.literature)
        for name in module.__all__
    }
    if set(builders) != set(ZOO_INPUT_SIZES):
        raise SystemExit(
            f"larq_zoo {larq_zoo.__version__} exports {sorted(builders)}; "
            f"ZOO_INPUT_SIZES has {sorted(ZOO_INPUT_SIZES)}: update it."
        )
    return builders


def randomize_weights(model, seed=0):
    """Random weights with positive variances, so BN and every kernel matter."""
    rng = np.random.default_rng(seed)
    for weight in model.weights:
        values = rng.normal(0.0, 0.5, weight.shape)
        if "moving_variance" in weight.name or "gamma" in weight.name:
            values = rng.uniform(0.5, 1.5, weight.shape)
        weight.assign(values.astype(weight.dtype.as_numpy_dtype))


ZOO_QUANTIZERS = {"xnor_weight_scale": "xnornet", "magnitude_aware_sign_unclipped": "dorefanet"}


def value_and_gradient(quantizer, x, upstream):
    """(quantizer(x), d sum(quantizer(x) * upstream) / dx) as numpy arrays."""
    import tensorflow as tf

    with tf.GradientTape() as tape:
        tape.watch(x)
        y = quantizer(x)
    return y.numpy(), tape.gradient(y, x, output_gradients=upstream).numpy()


def quantizers_oracle(request_path, result_path):
    request = np.load(request_path)
    specs = json.loads(str(request["specs"]))
    if any(class_name in ZOO_QUANTIZERS for class_name, _ in specs):
        os.environ["PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION"] = "python"  # before TensorFlow
    import importlib

    import larq as lq
    import tensorflow as tf

    x = tf.constant(request["x"])
    upstream = tf.constant(request["upstream"])
    results = {}
    for i, (class_name, kwargs) in enumerate(specs):
        if class_name in ZOO_QUANTIZERS:  # Larq Zoo's quantizer functions take no arguments
            module = importlib.import_module(f"larq_zoo.literature.{ZOO_QUANTIZERS[class_name]}")
            quantizer = getattr(module, class_name)
        else:
            quantizer = getattr(lq.quantizers, class_name)(**kwargs)
        results[f"y{i}"], results[f"grad{i}"] = value_and_gradient(quantizer, x, upstream)
    np.savez(result_path, **results)


def models_oracle(out_dir, names=None):
    for name in names or MODELS:
        model = MODELS[name]()
        randomize_weights(model)
        x = np.random.default_rng(1).normal(size=(2, *model.input_shape[1:])).astype("float32")
        with open(os.path.join(out_dir, f"{name}.json"), "w") as f:
            f.write(model.to_json())
        np.savez(os.path.join(out_dir, f"{name}.npz"), *model.get_weights())
        model.save_weights(os.path.join(out_dir, f"{name}.h5"))
        np.savez(os.path.join(out_dir, f"{name}_io.npz"), x=x, y=model(x, training=False).numpy())
        if name in LCE_MODELS:  # larq's own LCE flatbuffer, for an op census comparison
            import larq_compute_engine as lce

            with open(os.path.join(out_dir, f"{name}.tflite"), "wb") as f:
                f.write(lce.convert_keras_model(model))


def zoo_oracle(out_dir, names=None, lce_names=()):
    import time

    import tensorflow as tf

    builders = zoo_builders()
    manifest = {}
    for name in names or builders:
        size = ZOO_INPUT_SIZES[name]
        start = time.perf_counter()
        model = builders[name](weights=None, input_shape=(size, size, 3), num_classes=ZOO_CLASSES)
        randomize_weights(model)
        # Compare logits too: random weights can saturate the softmax, hiding differences.
        head = model.layers[-1]
        softmax = getattr(head, "activation", None) is tf.keras.activations.softmax or isinstance(
            head, tf.keras.layers.Softmax
        )
        logits = tf.keras.Model(model.inputs, head.input) if softmax else model
        x = np.random.default_rng(1).normal(size=(2, size, size, 3)).astype("float32")
        with open(os.path.join(out_dir, f"{name}.json"), "w") as f:
            f.write(model.to_json())
        model.save_weights(os.path.join(out_dir, f"{name}.h5"))
        np.savez(
            os.path.join(out_dir, f"{name}_io.npz"),
            x=x,
            y=model(x, training=False).numpy(),
            logits=logits(x, training=False).numpy(),
        )
        entry = {
            "input_size": size,
            "build_s": round(time.perf_counter() - start, 1),
            "logits_layer": head.inbound_nodes[0].inbound_layers.name if softmax else None,
            "lce": None,
        }
        if name in lce_names or "all" in lce_names:
            import larq_compute_engine as lce

            try:
                flatbuffer = lce.convert_keras_model(model)
            except Exception as error:  # recorded: the comparison then skips the census
                entry["lce"] = f"{type(error).__name__}: {error}"[:2000]
            else:
                with open(os.path.join(out_dir, f"{name}.tflite"), "wb") as f:
                    f.write(flatbuffer)
                entry["lce"] = "ok"
        manifest[name] = entry
        del model, logits
        tf.keras.backend.clear_session()
    with open(os.path.join(out_dir, "zoo.json"), "w") as f:
        json.dump(manifest, f, indent=1)
    zoo_quantizers(os.path.join(out_dir, "zoo_quantizers.npz"))


def zoo_quantizers(path):
    """Larq Zoo's quantizer functions on a conv kernel (3, 3, 8, 16) holding 0, the clip edges
    +-1 (and 1e-6 either side) and random values: x, upstream, y_NAME and grad_NAME =
    d sum(y * upstream) / dx."""
    import importlib

    import tensorflow as tf

    rng = np.random.default_rng(2)
    values = rng.normal(0.0, 1.0, 3 * 3 * 8 * 16)
    values[:8] = [0.0, -0.0, 1.0, -1.0, 1 + 1e-6, -1 - 1e-6, 1 - 1e-6, -1 + 1e-6]
    x = tf.constant(values.reshape(3, 3, 8, 16).astype("float32"))
    upstream = tf.constant(rng.uniform(0.5, 2.0, x.shape).astype("float32"))
    results = {"x": x.numpy(), "upstream": upstream.numpy()}
    for name, module in ZOO_QUANTIZERS.items():
        quantizer = getattr(importlib.import_module(f"larq_zoo.literature.{module}"), name)
        results[f"y_{name}"], results[f"grad_{name}"] = value_and_gradient(quantizer, x, upstream)
    np.savez(path, **results)


if __name__ == "__main__":
    command, *args = sys.argv[1:]
    if command == "zoo":
        # larq_zoo's pinned protobuf needs the pure-Python protobuf beside TensorFlow 2.21.
        os.environ["PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION"] = "python"
    if command == "quantizers":
        quantizers_oracle(*args)
    elif command == "models":
        models_oracle(args[0], args[1:])
    elif command == "zoo":
        lce_names = [a.split("=", 1)[1].split(",") for a in args[1:] if a.startswith("--lce=")]
        zoo_oracle(
            args[0],
            [a for a in args[1:] if not a.startswith("--")],
            lce_names[0] if lce_names else (),
        )
    else:
        sys.exit(f"unknown command {command!r}: use 'quantizers', 'models' or 'zoo'")
