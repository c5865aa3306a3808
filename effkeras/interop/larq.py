"""Import a larq model (tf_keras, Keras 2) into effkeras (Keras 3), without importing larq.

In the larq environment (TF_USE_LEGACY_KERAS=1) save the config and the weights:

    open("model.json", "w").write(model.to_json())
    model.save_weights("model.h5")                  # or np.savez("model.npz", *model.get_weights())

then, in effkeras:

    model = import_larq_model("model.json", "model.h5")

larq layers and quantizers map to effkeras' namesakes; Keras 2 core layers map to Keras 3's.
"""

import inspect
import json
import os

import keras
import numpy as np

from effkeras import constraints, quantizers
from effkeras.errors import InputError
from effkeras.layers import quantized
from effkeras.graph import leaf_layers

LARQ_LAYERS = {cls.__name__: cls for cls in (quantized.QuantConv2D, quantized.QuantDense,
                                              quantized.QuantDepthwiseConv2D,
                                              quantized.QuantSeparableConv2D)}
LARQ_QUANTIZERS = {
    "SteSign": quantizers.SteSign,
    "ApproxSign": quantizers.ApproxSign,
    "SwishSign": quantizers.SwishSign,
    "MagnitudeAwareSign": quantizers.MagnitudeAwareSign,
    "SteHeaviside": quantizers.SteHeaviside,
    "DoReFa": quantizers.DoReFa,
    "DoReFaQuantizer": quantizers.DoReFa,
    "NoOp": None,  # identity; it only tags a precision for larq's optimizers
    "NoOpQuantizer": None,
}
LARQ_CONSTRAINTS = {"WeightClip": constraints.WeightClip, "weight_clip": constraints.WeightClip}
# Keras 2 layers that Keras 3 rebuilds from their configs (after _keras2_layer_config).
KERAS_LAYERS = {
    "InputLayer", "Conv2D", "DepthwiseConv2D", "SeparableConv2D", "Dense", "BatchNormalization",
    "Activation", "ReLU", "LeakyReLU", "PReLU", "Softmax", "Add", "Subtract", "Multiply",
    "Average", "Maximum", "Concatenate", "MaxPooling2D", "AveragePooling2D",
    "GlobalAveragePooling2D", "GlobalMaxPooling2D", "Flatten", "Reshape", "Permute", "Dropout",
    "ZeroPadding2D", "Cropping2D", "UpSampling2D", "Rescaling",
}
MODELS = {"Functional", "Model", "Sequential"}
_QUANTIZER_KEYS = ("input_quantizer", "kernel_quantizer", "depthwise_quantizer",
                   "pointwise_quantizer")
_CONSTRAINT_KEYS = ("kernel_constraint", "depthwise_constraint", "pointwise_constraint",
                    "bias_constraint")


def _droppable(key, value):
    """Keras 2 config keys that Keras 3 layers lack and that change nothing once weights are
    loaded: `groups` of 1, and the kernel_* arguments Keras 2 keeps, unused, on separable convs."""
    return (key == "groups" and value == 1) or key in (
        "kernel_initializer", "kernel_regularizer", "kernel_constraint")


def _init_arguments(cls):
    return set(inspect.signature(cls.__init__).parameters) - {"self"}


def _layer_arguments(cls):
    """Every keyword a Keras 3 layer class takes, its bases' included."""
    names = {"name", "dtype", "trainable"}
    for klass in cls.__mro__:
        if "__init__" in vars(klass) and klass is not object:
            names |= _init_arguments(klass)
    return names


def _fit_arguments(cls, config, where):
    """config without the Keras 2 keys `cls` does not take; refuses any that would matter."""
    accepted = _layer_arguments(cls)
    for key in set(config) - accepted:
        if not _droppable(key, config[key]):
            raise InputError(f"{where}: Keras 3 {cls.__name__} has no argument {key!r} "
                             f"(value {config[key]!r}); rebuild the larq model without it.")
    return {key: value for key, value in config.items() if key in accepted}


def _quantizer(config, where):
    if config is None:
        return None
    name = config.get("class_name")
    if name not in LARQ_QUANTIZERS:
        raise InputError(f"{where}: larq quantizer {name!r} has no effkeras equivalent; "
                         f"supported: {sorted(LARQ_QUANTIZERS)}.")
    cls = LARQ_QUANTIZERS[name]
    if cls is None:
        return None
    allowed = _init_arguments(cls)
    return quantizers.serialize(cls(**{k: v for k, v in config["config"].items() if k in allowed}))


def _constraint(config):
    if isinstance(config, dict) and config.get("class_name") in LARQ_CONSTRAINTS:
        cls = LARQ_CONSTRAINTS[config["class_name"]]
        return keras.saving.serialize_keras_object(cls(**config["config"]))
    return config


def _keras2_layer_config(class_name, config):
    config = dict(config)
    if isinstance(config.get("axis"), list) and len(config["axis"]) == 1:
        config["axis"] = config["axis"][0]  # Keras 2 BatchNormalization stores [axis]
    # Keras 2 InputLayer's batch_input_shape is Keras 3's batch_shape. A Sequential's first layer
    # repeats it, and its InputLayer entry already carries it.
    if "batch_input_shape" in config:
        batch_shape = config.pop("batch_input_shape")
        if class_name == "InputLayer":
            config["batch_shape"] = batch_shape
    if isinstance(config.get("dtype"), dict):  # a Keras 2 mixed-precision Policy
        config["dtype"] = config["dtype"]["config"]["name"]
    return config


def _translate_layer(layer):
    """One layer entry of a tf_keras model config, rewritten for Keras 3 / effkeras."""
    name, class_name = layer.get("name") or layer["config"].get("name"), layer["class_name"]
    config = _keras2_layer_config(class_name, layer["config"])
    if class_name in MODELS:
        return _model_entry(layer, config)
    if class_name in LARQ_LAYERS:
        for key in _QUANTIZER_KEYS:
            if key in config:
                config[key] = _quantizer(config[key], f"layer {name!r}")
        for key in _CONSTRAINT_KEYS:
            if key in config:
                config[key] = _constraint(config[key])
        config = _fit_arguments(LARQ_LAYERS[class_name], config, f"layer {name!r}")
        return {**layer, "config": config, "module": quantized.__name__,
                "registered_name": f"effkeras>{class_name}"}
    if class_name in KERAS_LAYERS:
        config = _fit_arguments(getattr(keras.layers, class_name), config, f"layer {name!r}")
        return {**layer, "config": config, "module": "keras.layers", "registered_name": None}
    raise InputError(f"layer {name!r} is a {class_name}, which effkeras cannot import; supported: "
                     f"larq {sorted(LARQ_LAYERS)} and Keras {sorted(KERAS_LAYERS)}.")


def _model_entry(entry, config):
    """A (nested) model entry; keras.Model rebuilds a Functional config given as "Model"."""
    config = {**config, "layers": [_translate_layer(layer) for layer in config["layers"]]}
    for key in ("input_layers", "output_layers"):
        if len(config.get(key) or ()) == 1:  # Keras 3 writes a single input unnested
            config[key] = config[key][0]
    class_name = "Sequential" if entry["class_name"] == "Sequential" else "Model"
    return {**entry, "module": "keras", "class_name": class_name, "registered_name": None,
            "config": config}


def _read_config(config_json_or_path):
    text = os.fspath(config_json_or_path)
    if not text.lstrip().startswith("{"):
        if not os.path.exists(text):
            raise InputError(f"{text!r} is neither a model JSON string nor an existing file; pass "
                             f"larq's model.to_json() or the file it was written to.")
        with open(text) as f:
            text = f.read()
    model = json.loads(text)
    if model.get("class_name") not in MODELS:
        raise InputError(f"expected a model config (from model.to_json()), got class "
                         f"{model.get('class_name')!r}.")
    return model


def _h5_weights(path):
    """{layer name: [arrays]} from tf_keras' HDF5 weights file (model.save_weights('x.h5'))."""
    import h5py

    with h5py.File(path, "r") as f:
        if "layer_names" not in f.attrs:
            raise InputError(f"{path} is not a tf_keras HDF5 weights file; save it with "
                             f"model.save_weights('model.h5') or "
                             f"np.savez(path, *model.get_weights()).")
        names = [n.decode() if isinstance(n, bytes) else n for n in f.attrs["layer_names"]]
        weights = {}
        for name in names:
            group = f[name]
            weight_names = [n.decode() if isinstance(n, bytes) else n
                            for n in group.attrs["weight_names"]]
            weights[name] = [np.asarray(group[w]) for w in weight_names]
        return weights


def _set_weights(model, weights):
    if isinstance(weights, (str, os.PathLike)):
        path = os.fspath(weights)
        if path.endswith(".h5"):
            weights = _h5_weights(path)
        elif path.endswith(".npz"):
            with np.load(path) as archive:
                weights = [archive[f"arr_{i}"] for i in range(len(archive.files))]
        else:
            raise InputError(f"weights file {path!r} must be .h5 (model.save_weights) or .npz "
                             f"(np.savez(path, *model.get_weights())).")
    # tf_keras orders each layer's weights trainable first, then the rest, layer after layer.
    layers = [(layer, layer.trainable_weights + layer.non_trainable_weights)
              for layer in model.layers]
    if not isinstance(weights, dict):
        expected = sum(len(variables) for _, variables in layers)
        if len(weights) != expected:
            raise InputError(f"the model has {expected} weights, got {len(weights)}: pass "
                             f"model.get_weights() of the same larq model.")
        arrays = iter(weights)
        weights = {layer.name: [next(arrays) for _ in variables] for layer, variables in layers}
    pairs = []
    for layer, variables in layers:
        arrays = weights.get(layer.name, [])
        if len(arrays) != len(variables):
            raise InputError(f"layer {layer.name!r} has {len(variables)} weights, the file has "
                             f"{len(arrays)} for it: is it the same model?")
        pairs += zip(variables, arrays)
    for variable, array in pairs:
        if tuple(variable.shape) != np.shape(array):
            raise InputError(f"weight {variable.path} has shape {tuple(variable.shape)}, got "
                             f"{np.shape(array)}: is it the same model?")
        variable.assign(array)


def import_larq_model(config_json_or_path, weights):
    """An effkeras Keras 3 model equal to a larq (tf_keras) model.

    config_json_or_path: larq's `model.to_json()` string, or the file it was written to.
    weights: a `.h5` file from `model.save_weights` (matched by layer name), a `.npz` file from
        `np.savez(path, *model.get_weights())`, that list of arrays itself, or a dict
        {layer name: [arrays]}.
    """
    model_config = _read_config(config_json_or_path)
    entry = _model_entry(model_config, model_config["config"])
    model = keras.saving.deserialize_keras_object(entry)
    _normalize_last_axis(model)
    _set_weights(model, weights)
    return model


def _normalize_last_axis(model):
    """Keras 2 stores BatchNormalization's axis as [3]. Keras 3 reshapes the parameters of any
    axis but -1 to (1, 1, 1, C), and LCE's LceBconv2d then refuses the fused (1, 1, 1, C)
    multiplier ("failed to prepare"); the last axis is -1 in Keras 3's own layers."""
    for layer in leaf_layers(model):
        if isinstance(layer, keras.layers.BatchNormalization) and layer.axis == len(layer.input.shape) - 1:
            layer.axis = -1
