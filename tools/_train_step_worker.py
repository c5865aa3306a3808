"""One framework's Bi-Real Net 18 training step, timed on request: tools/bench_train_step.py's
worker (for docs/benchmark/train_step). Each worker is a process of its own, as larq (tf_keras)
cannot share one with Keras 3:

    python -m tools._train_step_worker '{"framework": "effkeras" | "larq", "jit_compile": false,
        "input_size": 96, "batch_size": 32, "num_classes": 10, "threads": 0, "warmup": 2}'

It builds the model (effkeras.models' "birealnet18" or larq_zoo.literature.BiRealNet up to its
logits), compiles it (Adam, sparse cross-entropy from logits), takes one `train_on_batch` step
(which builds the optimizer), wraps `model.train_step` in a tf.function (XLA with jit_compile)
on one fixed random batch held as tensors, runs `warmup` untimed steps, and then writes one JSON
line to stdout: {"ready": {...}}. Then, for each line "N" on stdin, it runs N steps and answers
{"times_ms": [...]}, each the wall time of one step up to its loss as a number. A failure is
answered {"error": "..."} before the worker exits. The larq worker needs TF_USE_LEGACY_KERAS=1
and PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION=python in its environment (set by the parent).
"""

import json
import os
import sys
import time
import traceback


def build(framework, spec):
    """(model, its keras module, the library's name and version): Bi-Real Net 18, logits out."""
    from importlib import metadata

    if framework == "larq":
        import larq_zoo
        import tensorflow as tf

        zoo = larq_zoo.literature.BiRealNet(
            input_shape=(spec["input_size"], spec["input_size"], 3),
            num_classes=spec["num_classes"],
            weights=None,
        )
        logits = tf.keras.Model(zoo.input, zoo.layers[-2].output)  # before the softmax
        return (
            logits,
            tf.keras,
            f"larq {metadata.version('larq')}, larq_zoo "
            f"{metadata.version('larq_zoo')}, tf_keras {metadata.version('tf_keras')}",
        )
    import keras

    from effkeras import models

    model = models.get(
        "birealnet18",
        input_shape=(spec["input_size"], spec["input_size"], 3),
        num_classes=spec["num_classes"],
    )
    return model, keras, f"effkeras {metadata.version('effkeras')}, keras {keras.__version__}"


def prepare(spec):
    """(one timed step, what the worker reports when ready)."""
    import numpy as np
    import tensorflow as tf

    if spec["threads"]:
        tf.config.threading.set_intra_op_parallelism_threads(spec["threads"])
        tf.config.threading.set_inter_op_parallelism_threads(spec["threads"])
    tf.random.set_seed(0)
    model, keras, library = build(spec["framework"], spec)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    rng = np.random.default_rng(0)
    size, batch = spec["input_size"], spec["batch_size"]
    x = tf.constant(rng.uniform(0, 255, (batch, size, size, 3)).astype(np.float32))
    y = tf.constant(rng.integers(0, spec["num_classes"], batch))
    model.train_on_batch(x, y)  # builds the optimizer's variables outside the tf.function
    train_step = tf.function(model.train_step, jit_compile=spec["jit_compile"])

    def step():
        float(train_step((x, y))["loss"])  # waits for the step to finish

    for _ in range(spec["warmup"]):
        step()
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    return step, {
        "params": int(model.count_params()),
        "trainable_params": trainable,
        "library": library,
        "tensorflow": tf.__version__,
    }


def main(spec):
    # Replies go to the original stdout; anything else printed lands on stderr.
    replies = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)

    def reply(message):
        replies.write(json.dumps(message) + "\n")
        replies.flush()

    try:
        step, info = prepare(spec)
        reply({"ready": info})
        for line in sys.stdin:
            times = []
            for _ in range(int(line)):
                start = time.perf_counter()
                step()
                times.append(1000 * (time.perf_counter() - start))
            reply({"times_ms": times})
    except Exception as e:  # the parent reports it; XLA may refuse a model
        traceback.print_exc()
        first_line = (str(e).strip().splitlines() or [""])[0]
        reply({"error": f"{type(e).__name__}: {first_line[:300]}"})


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
