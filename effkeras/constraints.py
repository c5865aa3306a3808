"""Weight constraints with larq's names: `constraints.get("weight_clip")`."""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="effkeras")
class WeightClip(keras.constraints.Constraint):
    """Clips weights to [-clip_value, clip_value], keeping latent weights near the sign flip."""

    def __init__(self, clip_value=1.0):
        self.clip_value = clip_value

    def __call__(self, w):
        return ops.clip(w, -self.clip_value, self.clip_value)

    def get_config(self):
        return {"clip_value": self.clip_value}


ALIASES = {"weight_clip": WeightClip, "WeightClip": WeightClip}


def get(identifier):
    """A constraint from "weight_clip", a config dict, an instance or any Keras identifier."""
    if isinstance(identifier, str) and identifier in ALIASES:
        return ALIASES[identifier]()
    if isinstance(identifier, dict) and identifier.get("class_name") in ALIASES:
        return keras.saving.deserialize_keras_object(identifier, custom_objects=ALIASES)
    return keras.constraints.get(identifier)
