"""Knowledge distillation: the student learns the teacher's softmax at temperature T.

loss = α·T²·H(teacher_T, student_T) + (1-α)·CE(labels, student), H(p, q) = -Σ p·log q averaged
over the batch (KL(teacher_T || student_T) up to a constant; Hinton et al., arXiv 1503.02531 §2).
α = 1, T = 1 is ReCU's stage 2 (arXiv 2103.12369, official code imagenet_two-stage): the teacher's
soft targets replace cross-entropy. Metrics still compare the student with the true labels.
"""

import os

import keras
from keras import ops

from effkeras import models, saving
from effkeras.errors import InputError
from effkeras.training import losses


@keras.saving.register_keras_serializable(package="effkeras")
class Distiller(keras.Model):
    """Runs and trains `student`; a frozen `teacher` provides the targets."""

    def __init__(self, student, teacher, alpha=1.0, temperature=1.0, label_smoothing=0.0, **kwargs):
        super().__init__(**kwargs)
        if len(getattr(student, "outputs", None) or ()) > 1:
            raise ValueError("distillation needs a student with one output (logits)")
        self.student = student
        self.teacher = teacher
        self.teacher.trainable = False
        self.alpha, self.temperature, self.label_smoothing = alpha, temperature, label_smoothing
        self.hard_loss = losses.cross_entropy(label_smoothing)

    def call(self, x, training=None):
        return self.student(x, training=training)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        soft = losses.soft_cross_entropy(self.teacher(x, training=False), y_pred, self.temperature)
        loss = self.alpha * self.temperature**2 * soft
        if self.alpha < 1:
            loss = loss + (1 - self.alpha) * self.hard_loss(y, y_pred, sample_weight)
        return loss + ops.sum(self.student.losses) if self.student.losses else loss

    def get_config(self):
        return {
            "student": keras.saving.serialize_keras_object(self.student),
            "teacher": keras.saving.serialize_keras_object(self.teacher),
            "alpha": self.alpha,
            "temperature": self.temperature,
            "label_smoothing": self.label_smoothing,
        }

    @classmethod
    def from_config(cls, config):
        return cls(
            keras.saving.deserialize_keras_object(config["student"]),
            keras.saving.deserialize_keras_object(config["teacher"]),
            alpha=config.get("alpha", 1.0),
            temperature=config.get("temperature", 1.0),
            label_smoothing=config.get("label_smoothing", 0.0),
        )


def load_teacher(teacher, input_shape, num_classes):
    """A teacher from a .keras file (trained; through the checked loader, effkeras.saving) or a
    registry name (built untrained: smoke runs)."""
    if not teacher:
        raise InputError(
            "this recipe distils from a teacher: pass --teacher=model.keras "
            "(e.g. a trained float ResNet-34) or a registry name"
        )
    if teacher.endswith(".keras") or os.sep in teacher or os.path.exists(teacher):
        try:
            model = saving.load_model(teacher)  # InputError for a missing or corrupt file
        except InputError as e:
            raise InputError(f"--teacher: {e}") from None
    else:
        model = models.get(teacher, input_shape=input_shape, num_classes=num_classes)
    try:
        takes, predicts = tuple(model.input_shape[1:]), model.output_shape[-1]
    except (AttributeError, ValueError, IndexError, TypeError):
        takes = predicts = None
    if len(getattr(model, "outputs", None) or ()) != 1 or not isinstance(predicts, int):
        raise InputError(
            f"teacher {teacher} is not a model with one input and one output "
            f"(logits); give a classifier such as a trained float ResNet-34"
        )
    if takes != tuple(input_shape) or predicts != num_classes:
        raise InputError(
            f"teacher takes {takes} and predicts {predicts} classes; the student "
            f"takes {tuple(input_shape)} and predicts {num_classes}"
        )
    return model
