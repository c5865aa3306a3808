"""Knowledge distillation: the student learns the teacher's softmax (ReCU two-stage, §A6).

The loss is mean over the batch of -Σ softmax(teacher)·log_softmax(student) at temperature 1,
and it replaces cross-entropy; metrics still compare the student with the true labels.
"""

import os

import keras
from keras import ops

from effkeras import models
from effkeras.errors import InputError


@keras.saving.register_keras_serializable(package="effkeras")
class Distiller(keras.Model):
    """Runs and trains `student`; a frozen `teacher` provides the targets."""

    def __init__(self, student, teacher, **kwargs):
        super().__init__(**kwargs)
        self.student = student
        self.teacher = teacher
        self.teacher.trainable = False

    def call(self, x, training=None):
        return self.student(x, training=training)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        teacher_probs = ops.softmax(self.teacher(x, training=False))
        distillation = -ops.mean(ops.sum(teacher_probs * ops.log_softmax(y_pred), axis=-1))
        return distillation + ops.sum(self.student.losses) if self.student.losses else distillation

    def get_config(self):
        return {"student": keras.saving.serialize_keras_object(self.student),
                "teacher": keras.saving.serialize_keras_object(self.teacher)}

    @classmethod
    def from_config(cls, config):
        return cls(keras.saving.deserialize_keras_object(config["student"]),
                   keras.saving.deserialize_keras_object(config["teacher"]))


def load_teacher(teacher, input_shape, num_classes):
    """A teacher from a .keras file (trained) or a registry name (built untrained: smoke runs)."""
    if not teacher:
        raise InputError("this recipe distils from a teacher: pass --teacher=model.keras "
                         "(e.g. a trained float ResNet-34) or a registry name")
    if teacher.endswith(".keras"):
        if not os.path.isfile(teacher):
            raise InputError(f"teacher {teacher} does not exist")
        model = keras.models.load_model(teacher)
    else:
        model = models.get(teacher, input_shape=input_shape, num_classes=num_classes)
    if tuple(model.input_shape[1:]) != tuple(input_shape) or model.output_shape[-1] != num_classes:
        raise InputError(f"teacher takes {model.input_shape[1:]} and predicts {model.output_shape[-1]} "
                         f"classes; the student takes {tuple(input_shape)} and predicts {num_classes}")
    return model
