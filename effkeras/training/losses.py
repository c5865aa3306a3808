"""Losses that recipes name: cross-entropy of integer labels (with label smoothing) and the
soft-target cross-entropy of knowledge distillation (Hinton et al. 2015, arXiv 1503.02531 §2)."""

import keras
from keras import ops

# Loss kinds a recipe can name (effkeras.training.recipes.Loss.kind); "distillation" also needs a
# teacher, so the trainer wraps the student in a Distiller (effkeras.training.distillation).
LOSSES = ("cross_entropy", "distillation")


@keras.saving.register_keras_serializable(package="effkeras")
class SparseLabelSmoothingCrossEntropy(keras.losses.Loss):
    """Cross-entropy of integer labels against logits, the one-hot targets smoothed to
    (1 - ε)·onehot + ε/classes (Szegedy et al. 2016, arXiv 1512.00567 §7)."""

    def __init__(
        self,
        label_smoothing=0.1,
        name="sparse_label_smoothing_cross_entropy",
        reduction="sum_over_batch_size",
        dtype=None,
    ):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.label_smoothing = label_smoothing

    def call(self, y_true, y_pred):
        if len(y_true.shape) == len(y_pred.shape):
            y_true = ops.squeeze(y_true, -1)
        targets = ops.one_hot(ops.cast(y_true, "int32"), ops.shape(y_pred)[-1], dtype=y_pred.dtype)
        return keras.losses.categorical_crossentropy(
            targets, y_pred, from_logits=True, label_smoothing=self.label_smoothing
        )

    def get_config(self):
        return {**super().get_config(), "label_smoothing": self.label_smoothing}


def cross_entropy(label_smoothing=0.0):
    """Cross-entropy of integer labels against logits; Keras' own when there is no smoothing."""
    if label_smoothing:
        return SparseLabelSmoothingCrossEntropy(label_smoothing)
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def soft_cross_entropy(teacher_logits, student_logits, temperature=1.0):
    """Mean over the batch of -Σ softmax(teacher/T)·log_softmax(student/T).

    It is KL(teacher_T || student_T) plus the teacher's entropy, which does not depend on the
    student: the same gradients. At T = 1 it is ReCU's stage-2 loss (arXiv 2103.12369, official
    code: imagenet_two-stage).
    """
    teacher_probs = ops.softmax(teacher_logits / temperature)
    student_log_probs = ops.log_softmax(student_logits / temperature)
    return -ops.mean(ops.sum(teacher_probs * student_log_probs, axis=-1))
