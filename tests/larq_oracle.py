"""larq 0.14 (tf_keras) as the reference for effkeras. Run in its own process, never imported
next to Keras 3 (larq needs TF_USE_LEGACY_KERAS=1 before TensorFlow is imported):

    python tests/larq_oracle.py quantizers REQUEST.npz RESULT.npz
        REQUEST: x, upstream (float32) and specs (JSON: [[larq class name, kwargs], ...]).
        RESULT: y{i} = quantizer_i(x) and grad{i} = d sum(y * upstream) / dx.
    python tests/larq_oracle.py models OUT_DIR [NAME ...]
        For each model in MODELS: NAME.json (model.to_json()), NAME.npz (model.get_weights()
        as arr_0..), NAME.h5 (model.save_weights) and NAME_io.npz (inputs x, outputs y);
        for LCE_MODELS also NAME.tflite (larq_compute_engine.convert_keras_model).

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
        filters, 3, padding="same", pad_values=1.0,
        input_quantizer=lq.quantizers.SteSign(clip_value=1.25),
        kernel_quantizer=lq.quantizers.SteSign(clip_value=1.25),
        kernel_constraint=lq.constraints.WeightClip(1.25),
        activation="relu", use_bias=False)(x)
    y = layers.BatchNormalization(momentum=0.9, epsilon=1e-5)(y)
    outputs = layers.Add()([x, y])
    return tf.keras.Model(inputs, outputs, name="quicknet_block")


def build_bireal_block(input_shape=(16, 16, 3), filters=32):
    """Bi-Real-style: float stem, then two blocks of approx_sign input, magnitude-aware kernel,
    zero padding, BN and a shortcut add; the second downsamples with an AvgPool + 1x1 shortcut."""
    import larq as lq
    import tensorflow as tf

    layers = tf.keras.layers
    binary = dict(input_quantizer="approx_sign", kernel_quantizer="magnitude_aware_sign",
                  kernel_constraint="weight_clip", use_bias=False, padding="same")
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
        3, padding="same", pad_values=1.0, input_quantizer="swish_sign",
        depthwise_quantizer=lq.quantizers.SteSign(0.5), depthwise_constraint="weight_clip")(x)
    x = layers.BatchNormalization(scale=False)(x)
    y = lq.layers.QuantSeparableConv2D(
        32, 3, padding="same", input_quantizer="ste_sign", depthwise_quantizer="ste_sign",
        pointwise_quantizer="ste_sign", pointwise_constraint="weight_clip")(x)
    y = layers.ReLU(max_value=6.0)(y)
    x = layers.Concatenate()([x, y])
    x = layers.MaxPooling2D(2)(x)
    x = layers.DepthwiseConv2D(3, padding="same")(x)
    x = lq.layers.QuantConv2D(32, 1, input_quantizer=lq.quantizers.DoReFa(k_bit=2),
                              kernel_quantizer=lq.quantizers.DoReFa(k_bit=2, mode="weights"))(x)
    x = layers.GlobalAveragePooling2D()(x)
    x = layers.Dropout(0.5)(x)
    x = lq.layers.QuantDense(16, input_quantizer="ste_heaviside", kernel_quantizer="ste_sign",
                             kernel_constraint="weight_clip")(x)
    outputs = layers.Activation("softmax")(layers.Dense(10)(x))
    return tf.keras.Model(inputs, outputs, name="layer_mix")


def build_sequential(input_shape=(28, 28, 1)):
    """larq's documentation example: a Sequential binary net for MNIST-sized inputs."""
    import larq as lq
    import tensorflow as tf

    layers = tf.keras.layers
    binary = dict(input_quantizer="ste_sign", kernel_quantizer="ste_sign",
                  kernel_constraint="weight_clip", use_bias=False)
    return tf.keras.Sequential([
        lq.layers.QuantConv2D(32, 3, kernel_quantizer="ste_sign", kernel_constraint="weight_clip",
                              use_bias=False, input_shape=input_shape),
        layers.BatchNormalization(scale=False),
        lq.layers.QuantConv2D(32, 3, **binary),
        layers.MaxPooling2D(2),
        layers.BatchNormalization(scale=False),
        layers.Flatten(),
        lq.layers.QuantDense(10, **binary),
        layers.BatchNormalization(scale=False),
    ], name="sequential")


MODELS = {"quicknet_block": build_quicknet_block, "bireal_block": build_bireal_block,
          "layer_mix": build_layer_mix, "sequential": build_sequential}


LCE_MODELS = ("quicknet_block", "bireal_block")


def randomize_weights(model, seed=0):
    """Random weights with positive variances, so BN and every kernel matter."""
    rng = np.random.default_rng(seed)
    for weight in model.weights:
        values = rng.normal(0.0, 0.5, weight.shape)
        if "moving_variance" in weight.name or "gamma" in weight.name:
            values = rng.uniform(0.5, 1.5, weight.shape)
        weight.assign(values.astype(weight.dtype.as_numpy_dtype))


def quantizers_oracle(request_path, result_path):
    import larq as lq
    import tensorflow as tf

    request = np.load(request_path)
    x = tf.constant(request["x"])
    upstream = tf.constant(request["upstream"])
    results = {}
    for i, (class_name, kwargs) in enumerate(json.loads(str(request["specs"]))):
        quantizer = getattr(lq.quantizers, class_name)(**kwargs)
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = quantizer(x)
        results[f"y{i}"] = y.numpy()
        results[f"grad{i}"] = tape.gradient(y, x, output_gradients=upstream).numpy()
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


if __name__ == "__main__":
    command, *args = sys.argv[1:]
    if command == "quantizers":
        quantizers_oracle(*args)
    elif command == "models":
        models_oracle(args[0], args[1:])
    else:
        sys.exit(f"unknown command {command!r}: use 'quantizers' or 'models'")
