"""Training-step time of one binary ResNet-18, effkeras (Keras 3) against larq (tf_keras).

    python tools/bench_train_step.py [--batch_size=64] [--image_size=32] [--warmup=3]
        [--rounds=5] [--steps=4] [--jit_compile] [--fused_bn]

The same network, batch and optimizer run in this process (effkeras) and in a worker process
with TF_USE_LEGACY_KERAS=1 (larq), on the same machine. They take turns, `--steps` each per
round, so load from other users hits all alike. Prints median and best ms per
`train_on_batch` step and each median over larq's. --fused_bn adds effkeras with the
batch-norm layers on TF's fused kernel, as tf_keras has them: Keras 3's BatchNormalization
computes batch statistics and their gradients with separate ops, which is where effkeras loses
time to larq on CPU.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time


def fused_batch_normalization(keras):
    """Keras 3 BatchNormalization whose training step uses TF's fused kernel, as tf_keras does."""
    import tensorflow as tf

    class FusedBatchNormalization(keras.layers.BatchNormalization):
        def call(self, inputs, training=None, mask=None):
            if not (training and self.trainable) or len(inputs.shape) != 4 or mask is not None:
                return super().call(inputs, training=training, mask=mask)
            outputs, mean, variance = tf.compat.v1.nn.fused_batch_norm(
                inputs, self.gamma, self.beta, epsilon=self.epsilon, is_training=True)
            count = tf.cast(tf.reduce_prod(tf.shape(inputs)[:3]), variance.dtype)
            variance = variance * (count - 1) / count  # the kernel returns Bessel's variance
            for statistic, value in ((self.moving_mean, mean), (self.moving_variance, variance)):
                statistic.assign(statistic * self.momentum + value * (1.0 - self.momentum))
            return outputs

    return FusedBatchNormalization


def binary_resnet18(keras, QuantConv2D, image_size, num_classes=10, BatchNormalization=None):
    """ResNet-18 with 16 binary 3x3 convs (ste_sign input and kernel, weight_clip, one-padding),
    a shortcut around each (Bi-Real style; AvgPool + float 1x1 conv where it downsamples), a
    float stem and head. Both libraries share the larq API: `keras` and `QuantConv2D` pick one."""
    layers = keras.layers
    BatchNormalization = BatchNormalization or layers.BatchNormalization
    binary = dict(padding="same", pad_values=1.0, input_quantizer="ste_sign",
                  kernel_quantizer="ste_sign", kernel_constraint="weight_clip", use_bias=False)
    inputs = keras.Input((image_size, image_size, 3))
    x = layers.Conv2D(64, 3, padding="same", use_bias=False)(inputs)
    x = BatchNormalization(momentum=0.9, epsilon=1e-5)(x)
    for stage, filters in enumerate((64, 128, 256, 512)):
        for block in range(2):
            for conv in range(2):
                strides = 2 if stage and not block and not conv else 1
                shortcut = x
                if strides > 1:
                    shortcut = layers.AveragePooling2D(2)(shortcut)
                    shortcut = layers.Conv2D(filters, 1, use_bias=False)(shortcut)
                    shortcut = BatchNormalization(momentum=0.9, epsilon=1e-5)(shortcut)
                y = QuantConv2D(filters, 3, strides=strides, **binary)(x)
                y = BatchNormalization(momentum=0.9, epsilon=1e-5)(y)
                x = layers.Add()([shortcut, y])
    x = layers.GlobalAveragePooling2D()(x)
    outputs = layers.Dense(num_classes)(x)
    return keras.Model(inputs, outputs)


class StepTimer:
    """One framework's model, data and optimizer; `run(n)` times n training steps."""

    def __init__(self, framework, args, fused_bn=False):
        if framework == "larq":
            os.environ["TF_USE_LEGACY_KERAS"] = "1"
            import larq
            import tensorflow as tf

            keras, QuantConv2D = tf.keras, larq.layers.QuantConv2D
        else:
            import keras

            from effkeras.layers import QuantConv2D
        import numpy as np

        self.model = binary_resnet18(keras, QuantConv2D, args.image_size, BatchNormalization=(
            fused_batch_normalization(keras) if fused_bn else None))
        options = {"jit_compile": True} if args.jit_compile else {}
        self.model.compile(optimizer=keras.optimizers.Adam(1e-3),
                           loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                           **options)
        rng = np.random.default_rng(0)
        shape = (args.batch_size, args.image_size, args.image_size, 3)
        self.x = rng.normal(size=shape).astype("float32")
        self.y = rng.integers(0, 10, args.batch_size)

    def run(self, steps):
        times = []
        for _ in range(steps):
            start = time.perf_counter()
            self.model.train_on_batch(self.x, self.y)  # returns numpy: the step has finished
            times.append(1000 * (time.perf_counter() - start))
        return times


def larq_worker(args):
    """Serves `run(n)` of a larq StepTimer over stdin/stdout, one JSON line per request."""
    timer = StepTimer("larq", args)
    for line in sys.stdin:
        print(json.dumps(timer.run(int(line))), flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--image_size", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=4, help="timed steps per round")
    parser.add_argument("--jit_compile", action="store_true", help="compile steps with XLA")
    parser.add_argument("--fused_bn", action="store_true",
                        help="also time effkeras with TF's fused batch-norm kernel")
    parser.add_argument("--larq_worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if min(args.batch_size, args.image_size, args.rounds, args.steps) < 1 or args.warmup < 0:
        parser.error("batch_size, image_size, rounds and steps must be >= 1, warmup >= 0")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if args.larq_worker:
        return larq_worker(args)

    env = {**os.environ, "TF_USE_LEGACY_KERAS": "1"}
    worker = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--larq_worker",
                               *sys.argv[1:]], env=env, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)

    def larq_run(steps):
        worker.stdin.write(f"{steps}\n")
        worker.stdin.flush()
        line = worker.stdout.readline()
        if not line:
            sys.exit(f"the larq worker stopped (exit code {worker.wait()})")
        return json.loads(line)

    contenders = {"effkeras (Keras 3)": StepTimer("effkeras", args).run}
    if args.fused_bn:
        contenders["effkeras, fused BN"] = StepTimer("effkeras", args, fused_bn=True).run
    contenders["larq (tf_keras)"] = larq_run
    results = {name: [] for name in contenders}
    for run in contenders.values():
        run(args.warmup)
    for _ in range(args.rounds):
        for name, run in contenders.items():
            results[name] += run(args.steps)
    worker.stdin.close()
    worker.wait()

    reference = statistics.median(results["larq (tf_keras)"])
    print(f"binary ResNet-18, batch {args.batch_size}, {args.image_size}x{args.image_size}, "
          f"{args.rounds} x {args.steps} steps each after {args.warmup} warm-up, "
          f"jit_compile={args.jit_compile}")
    print(f"{'framework':20s} {'median ms/step':>15s} {'best ms/step':>13s} {'vs larq':>8s}")
    for name, times in results.items():
        median = statistics.median(times)
        print(f"{name:20s} {median:15.1f} {min(times):13.1f} {median / reference:8.2f}")


if __name__ == "__main__":
    main()
