"""Train a registered model with its recipe; resumes when --output_dir holds an earlier run.

python -m apps.train --model=resnet20 [--dataset=fashion_mnist] [--epochs=2] [--output_dir=runs/x]
python -m apps.train --qat --init_from=runs/resnet20/model.keras [--output_dir=runs/resnet20_qat]
python -m apps.train --finetune --init_from=runs/resnet20/model.keras   # QAT's float control

Several GPUs (one machine): --strategy=mirrored; several machines: --strategy=multi_worker with
TF_CONFIG set on each (docs/training.md). --batch_size is the global
batch; --grad_accumulation=N applies the mean gradient of N batches (a global batch larger than
the devices hold, as RAN-i's 2,560).

--qat fine-tunes a trained float model with int8 quantization-aware training
(effkeras.qat; a short schedule at a low learning rate); convert its model.keras with
--target=int8, tflm or ethos-u* and the file takes the ranges it learned.

It prints the input shape it chose, its estimate of the training memory (and refuses, naming a
--batch_size that fits, a run that would not fit) and, after the first steps, an ETA. One run at a
time per --output_dir; a resume must be the same run (model, dataset, input shape, classes).
"""

import json
import os

from absl import flags

from apps import _cli

flags.DEFINE_string("model", None, "Registered model name (see `python -m apps.summary --list`).")
flags.DEFINE_string(
    "dataset", "fashion_mnist", "fashion_mnist, cifar10, cifar100, imagenet or synthetic."
)
flags.DEFINE_string(
    "data_dir", None, "Dataset directory (Fashion-MNIST defaults to the Debian package)."
)
flags.DEFINE_integer("epochs", None, "Total epochs (default: the model's recipe).")
flags.DEFINE_integer("batch_size", None, "Batch size (default: the model's recipe).")
flags.DEFINE_float(
    "learning_rate", None, "Peak learning rate (default: the recipe's, scaled with batch size)."
)
flags.DEFINE_integer("steps_per_epoch", None, "Steps per epoch (default: one pass over the data).")
flags.DEFINE_string(
    "input_shape",
    None,
    "H,W,C (default: a resumed run's own; else the dataset's "
    "image size padded to what the model takes, or the model's own for ImageNet).",
)
flags.DEFINE_string(
    "output_dir",
    None,
    "Where checkpoints, logs, model.keras and metrics.json go (default: runs/<model>).",
)
flags.DEFINE_integer("seed", 0, "Random seed.")
flags.DEFINE_integer(
    "validation_size",
    None,
    "Hold out this many training examples (the "
    "`validation` split early-exit thresholds are calibrated on with "
    "apps.evaluate --early_exit=budgeted --validation_size=N).",
)
flags.DEFINE_string(
    "teacher", None, "Teacher for distilling recipes: a .keras file or a registry name."
)
flags.DEFINE_integer(
    "transfer_epochs",
    None,
    "Two-stage recipes (LERP-PSA): knowledge-transfer "
    "epochs per block before --epochs of distillation (default: the recipe's; "
    "0: none).",
)
flags.DEFINE_boolean(
    "qat",
    False,
    "int8 quantization-aware training of --init_from (a trained "
    "float model): a short fine-tune at a low learning rate.",
)
flags.DEFINE_boolean(
    "finetune",
    False,
    "Fine-tune --init_from in float with the --qat "
    "schedule: the control that QAT's accuracy is compared with.",
)
flags.DEFINE_string(
    "init_from",
    None,
    "The trained float .keras model that --qat or --finetune "
    "starts from (--model defaults to its registry name).",
)
flags.DEFINE_enum(
    "strategy",
    "default",
    ["default", "mirrored", "multi_worker", "tpu"],
    "tf.distribute strategy: one device; every GPU here (mirrored); every GPU of "
    "the cluster in TF_CONFIG (multi_worker); a TPU.",
)
flags.DEFINE_integer(
    "cpu_devices",
    None,
    "Split this machine's CPU into N logical devices, one "
    "replica each (tries --strategy=mirrored without GPUs; not faster).",
)
flags.DEFINE_float(
    "cluster_timeout",
    None,
    "--strategy=multi_worker: seconds to wait for every task of TF_CONFIG to start before "
    "giving up with an error (default 600).",
)
flags.DEFINE_integer(
    "grad_accumulation",
    None,
    "Apply the mean gradient of N batches: an update "
    "of batch x N examples (the learning rate scales with it).",
)
flags.DEFINE_string(
    "dtype_policy",
    None,
    "float32, mixed_float16 (GPU) or mixed_bfloat16 "
    "(default: the recipe's: mixed_float16 on a GPU for ERN, else float32).",
)
flags.DEFINE_enum(
    "jit_compile",
    "auto",
    ["auto", "true", "false"],
    "XLA-compile the train step (auto: Keras' choice, XLA on a GPU when every layer supports it).",
)
flags.DEFINE_boolean(
    "run_eagerly",
    False,
    "Run each step op by op (Keras' run_eagerly): nothing is traced, steps are slower; "
    "for debugging a model and for runs of a few steps.",
)
flags.DEFINE_boolean(
    "deterministic",
    False,
    "TensorFlow's deterministic ops: the same flags and "
    "seed give the same losses (slower; also across strategies, to float "
    "tolerance).",
)
FLAGS = flags.FLAGS


def main(argv):
    from effkeras import training
    from effkeras.errors import InputError

    if not FLAGS.model and not FLAGS.init_from:
        raise InputError("--model is required (or --qat with --init_from)")
    run_name = FLAGS.model or os.path.splitext(os.path.basename(FLAGS.init_from))[0]
    if FLAGS.qat or FLAGS.finetune:
        run_name += "_qat" if FLAGS.qat else "_finetune"
    metrics = training.train(
        training.TrainConfig(
            model=FLAGS.model,
            dataset=FLAGS.dataset,
            data_dir=FLAGS.data_dir,
            epochs=FLAGS.epochs,
            batch_size=FLAGS.batch_size,
            learning_rate=FLAGS.learning_rate,
            steps_per_epoch=FLAGS.steps_per_epoch,
            input_shape=_cli.parse_shape(FLAGS.input_shape),
            output_dir=FLAGS.output_dir or os.path.join("runs", run_name),
            seed=FLAGS.seed,
            teacher=FLAGS.teacher,
            validation_size=FLAGS.validation_size,
            transfer_epochs=FLAGS.transfer_epochs,
            qat=FLAGS.qat,
            finetune=FLAGS.finetune,
            init_from=FLAGS.init_from,
            strategy=FLAGS.strategy,
            cpu_devices=FLAGS.cpu_devices,
            cluster_timeout=FLAGS.cluster_timeout,
            grad_accumulation=FLAGS.grad_accumulation,
            dtype_policy=FLAGS.dtype_policy,
            jit_compile={"true": True, "false": False}.get(FLAGS.jit_compile, "auto"),
            run_eagerly=FLAGS.run_eagerly,
            deterministic=FLAGS.deterministic,
        )
    )
    print(
        json.dumps(
            {
                "model": metrics["model"],
                "epochs": metrics["epochs"],
                **metrics["test"],
                "train_seconds": round(metrics["train_seconds"], 1),
            }
        )
    )


if __name__ == "__main__":
    _cli.run(main)
