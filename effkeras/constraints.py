"""Weight constraints with larq's names: `constraints.get("weight_clip")`."""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="effkeras")
class WeightClip(keras.constraints.Constraint):
    """Clips weights to [-clip_value, clip_value], keeping latent weights near the sign flip.

    larq's `weight_clip` constraint.

    Args:
        clip_value: float. The bound of the clip. Defaults to `1.0`.
    """

    def __init__(self, clip_value=1.0):
        self.clip_value = clip_value

    def __call__(self, w):
        return ops.clip(w, -self.clip_value, self.clip_value)

    def get_config(self):
        return {"clip_value": self.clip_value}


ALIASES = {"weight_clip": WeightClip, "WeightClip": WeightClip}


def get(identifier):
    """Returns a constraint from "weight_clip", a config dict, an instance or any Keras
    identifier.

    Args:
        identifier: str, dict, constraint or None. `"weight_clip"`/`"WeightClip"` or a config
            dict of that class give a `WeightClip`; anything else goes to
            `keras.constraints.get`.

    Returns:
        A constraint, or None for None.

    Raises:
        ValueError: from `keras.constraints.get`, for an identifier it cannot interpret.
    """
    if isinstance(identifier, str) and identifier in ALIASES:
        return ALIASES[identifier]()
    if isinstance(identifier, dict) and identifier.get("class_name") in ALIASES:
        return keras.saving.deserialize_keras_object(identifier, custom_objects=ALIASES)
    return keras.constraints.get(identifier)
