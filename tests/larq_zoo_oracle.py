"""Larq Zoo 2.4 (tf_keras, larq 0.14) as the reference for effkeras' binary peers. Run in its own
process, never imported next to Keras 3:

    python tests/larq_zoo_oracle.py OUT_DIR INPUT.npz
        INPUT.npz: x, a batch already normalised as Larq Zoo's preprocess_input does.
        For each Larq Zoo model in ZOO, built at x's size with 1000 classes and weights=None:
        OUT_DIR/NAME.h5 (model.save_weights) after drawing random weights (BN variances > 0),
        OUT_DIR/NAME_logits.npy (the pre-softmax outputs on x), and OUT_DIR/counts.json
        ({NAME: [model.count_params(), trainable parameters]}).
"""

import json
import os
import sys

# larq 0.14 and larq_zoo run on tf_keras only; zookeeper's protobuf needs the python backend.
os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ["PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION"] = "python"

import numpy as np  # noqa: E402

# effkeras registry name -> Larq Zoo builder (module, function).
ZOO = {
    "quicknet_small": ("sota", "QuickNetSmall"),
    "quicknet": ("sota", "QuickNet"),
    "quicknet_large": ("sota", "QuickNetLarge"),
    "birealnet18": ("literature", "BiRealNet"),
}


def randomize(model, rng):
    """Every BN gets random γ, β, mean and a variance in [0.5, 2]; biases random; kernels keep
    their random initialisation (the fixed blur-pool kernel stays fixed)."""
    import tensorflow as tf

    for layer in model.layers:
        if isinstance(layer, tf.keras.layers.BatchNormalization):
            values = []
            for weight in layer.weights:
                kind = weight.name.split("/")[-1].split(":")[0]
                shape = tuple(weight.shape)
                values.append(
                    {
                        "gamma": lambda s: rng.uniform(0.5, 1.5, s),
                        "beta": lambda s: rng.normal(0, 0.3, s),
                        "moving_mean": lambda s: rng.normal(0, 0.3, s),
                        "moving_variance": lambda s: rng.uniform(0.5, 2.0, s),
                    }[kind](shape)
                )
            layer.set_weights(values)
        elif getattr(layer, "bias", None) is not None:
            layer.bias.assign(rng.normal(0, 0.1, tuple(layer.bias.shape)))


def main(out_dir, input_path):
    import larq_zoo
    import tensorflow as tf

    tf.random.set_seed(0)
    rng = np.random.default_rng(0)
    x = np.load(input_path)["x"]
    counts = {}
    for name, (module, builder) in ZOO.items():
        model = getattr(getattr(larq_zoo, module), builder)(input_shape=x.shape[1:], weights=None)
        counts[name] = [
            int(model.count_params()),
            int(sum(np.prod(w.shape) for w in model.trainable_weights)),
        ]
        randomize(model, rng)
        model.save_weights(os.path.join(out_dir, f"{name}.h5"))
        logits = tf.keras.Model(model.input, model.layers[-2].output)  # before the softmax
        np.save(os.path.join(out_dir, f"{name}_logits.npy"), logits(x, training=False).numpy())
        tf.keras.backend.clear_session()
    with open(os.path.join(out_dir, "counts.json"), "w") as f:
        json.dump(counts, f)


if __name__ == "__main__":
    main(*sys.argv[1:])
