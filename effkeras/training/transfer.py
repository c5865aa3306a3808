"""Knowledge transfer, stage 1 of LERP-PSA's two-stage recipe (Singh & Bazargan, ACM TRETS 2025,
DOI 10.1145/3705926; its official code's blockwise "KT" stage).

The student copies the teacher's patch embedding and keeps it frozen; then, block by block, it
learns to reproduce the teacher's features: for block b = 1 .. B, `epochs_per_block` epochs of
MSE between the student's and the teacher's tensors after block b, with only block b training
(blocks before it are frozen, blocks after it are not run). One optimizer runs through all the
blocks, so Adam's moments carry over from one block to the next.

The models name their blocks' outputs `block<b>_out` and every layer of block b `block<b>_...`
(effkeras.models.resmlp); the stem copied from the teacher is the layer `embed`.
"""

import re

import keras
from keras import ops

from effkeras.errors import InputError

STEM = "embed"
_BLOCK_OUTPUT = re.compile(r"^block(\d+)_out$")


def block_names(model):
    """["block1", "block2", ...] of a model with `block<b>_out` layers, in order."""
    numbers = sorted(
        int(m.group(1))
        for m in map(_BLOCK_OUTPUT.match, (layer.name for layer in model.layers))
        if m
    )
    if not numbers or numbers != list(range(1, len(numbers) + 1)):
        raise InputError(
            f"{model.name} has no blocks named block1_out, block2_out, ...: "
            f"knowledge transfer matches features block by block"
        )
    return [f"block{b}" for b in numbers]


@keras.saving.register_keras_serializable(package="effkeras")
class FeatureTransfer(keras.Model):
    """Trains `student` to match `teacher`'s features after one block at a time (module
    docstring). `block` (1-based) is the block that trains; BlockSchedule moves it on."""

    def __init__(self, student, teacher, block=1, **kwargs):
        super().__init__(**kwargs)
        self.student, self.teacher = student, teacher
        self.teacher.trainable = False
        self.blocks = block_names(student)
        if block_names(teacher) != self.blocks:
            raise InputError(
                f"the teacher has blocks {block_names(teacher)} and the student "
                f"{self.blocks}: knowledge transfer needs the same blocks"
            )
        for model in (student, teacher):
            if STEM not in (layer.name for layer in model.layers):
                raise InputError(f"{model.name} has no `{STEM}` layer to copy the stem from")
        self.block = block
        self._features = _Cache()  # sub-models, built on first use (not tracked for saving)
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.built = True  # its student and teacher are

    def copy_stem(self):
        """The teacher's patch embedding into the student (at the start of stage 1)."""
        self.student.get_layer(STEM).set_weights(self.teacher.get_layer(STEM).get_weights())

    def _prefixes(self, block):
        """(student, teacher) sub-models from the input to block `block`'s output."""
        cache = self._features.models
        if block not in cache:
            name = f"{self.blocks[block - 1]}_out"
            cache[block] = tuple(
                keras.Model(model.input, model.get_layer(name).output)
                for model in (self.student, self.teacher)
            )
        return cache[block]

    def block_layers(self, block):
        """The student's layers of block `block` (1-based): named `block<b>_...`."""
        prefix = f"{self.blocks[block - 1]}_"
        return [layer for layer in self.student.layers if layer.name.startswith(prefix)]

    def block_variables(self, block):
        return [v for layer in self.block_layers(block) for v in layer.trainable_variables]

    @property
    def metrics(self):
        return [self.loss_tracker]

    def call(self, x, training=None):
        return self.student(x, training=training)

    def compile(self, optimizer, **kwargs):
        super().compile(optimizer=optimizer, **kwargs)
        self.student.get_layer(STEM).trainable = False  # copied from the teacher, frozen
        # Built on every block's variables at once: one optimizer state through all blocks.
        self.optimizer.build(
            [v for b in range(1, len(self.blocks) + 1) for v in self.block_variables(b)]
        )

    def compile_from_config(self, config):
        self.compile(keras.saving.deserialize_keras_object(config)["optimizer"])

    def _loss(self, x, training):
        student, teacher = self._prefixes(self.block)
        return ops.mean(ops.square(student(x, training=training) - teacher(x, training=False)))

    def train_step(self, data):
        import tensorflow as tf

        x = data[0] if isinstance(data, (list, tuple)) else data
        variables = self.block_variables(self.block)
        with tf.GradientTape() as tape:
            loss = self._loss(x, training=True)
            # The training block's own penalties (e.g. a B-spline's TV(2)) join its loss.
            penalties = [p for layer in self.block_layers(self.block) for p in layer.losses]
            total = loss + sum((ops.sum(p) for p in penalties), 0.0)
        self.optimizer.apply(tape.gradient(total, variables), variables)
        self.loss_tracker.update_state(loss)
        return {"loss": self.loss_tracker.result()}

    def test_step(self, data):
        x = data[0] if isinstance(data, (list, tuple)) else data
        self.loss_tracker.update_state(self._loss(x, training=False))
        return {"loss": self.loss_tracker.result()}

    def get_config(self):
        return {
            "student": keras.saving.serialize_keras_object(self.student),
            "teacher": keras.saving.serialize_keras_object(self.teacher),
            "block": self.block,
        }

    @classmethod
    def from_config(cls, config):
        return cls(
            keras.saving.deserialize_keras_object(config["student"]),
            keras.saving.deserialize_keras_object(config["teacher"]),
            block=config.get("block", 1),
        )


class _Cache:
    """A plain holder: Keras does not track what is inside it."""

    def __init__(self):
        self.models = {}


class BlockSchedule(keras.callbacks.Callback):
    """Epoch e trains block e // epochs_per_block + 1 (the last block takes any extra epochs);
    a new block retraces the train and test steps."""

    def __init__(self, epochs_per_block, print_fn=print):
        super().__init__()
        self.epochs_per_block, self.print_fn = epochs_per_block, print_fn

    def on_epoch_begin(self, epoch, logs=None):
        model = self.model
        block = min(epoch // self.epochs_per_block + 1, len(model.blocks))
        if block != model.block or model.train_function is None:
            model.block = block
            model.make_train_function(force=True)
            model.make_test_function(force=True)
        if epoch % self.epochs_per_block == 0:
            self.print_fn(
                f"knowledge transfer: block {block} of {len(model.blocks)} "
                f"(features after {model.blocks[block - 1]}_out)"
            )
