"""Import a larq model (tf_keras, Keras 2) into effkeras (Keras 3), without importing larq.

In the larq environment (TF_USE_LEGACY_KERAS=1) save the config and the weights:

    open("model.json", "w").write(model.to_json())
    model.save_weights("model.h5")                  # or np.savez("model.npz", *model.get_weights())

then, in effkeras:

    model = import_larq_model("model.json", "model.h5")

larq layers and quantizers map to effkeras' namesakes; Keras 2 core layers map to Keras 3's.
Every Larq Zoo 2.4 architecture imports (docs/larq_zoo/import_check.md); for that the importer
also reads, by name and never by running code from the file:

- TFOpLambda / SlicingOpLambda layers (what Keras 2 records for `x + y`, `tf.nn.relu(x)`,
  `x[..., :4]`, `tf.concat`, ...): the TensorFlow functions in `TF_FUNCTIONS`, recomputed with
  keras.ops from the call's recorded arguments (`TFOpCall`);
- the Zoo's `Lambda` layers, recognised by module, layer name and recorded closure data (the
  marshalled bytecode is never read): `larq_zoo.core.utils.TFOpLayer` wrappers of tf.split and
  tf.concat (MeliusNet's group convs), MeliusNet's improvement-block merge
  (`AddToLastChannels`) and Real-to-Binary Net's named block outputs (identity). Any other
  Lambda is refused;
- quantizers, activations and initializers that the Zoo stores as plain functions
  (`xnor_weight_scale`, `magnitude_aware_sign_unclipped`, `clip_by_value_activation`,
  `blurpool_initializer`);
- subclasses of Functional (the Zoo's `BinaryDenseNet`), by their Functional config: the graph.
"""

import inspect
import json
import os
import re

import keras

from effkeras import constraints, quantizers
from effkeras.errors import InputError
from effkeras.graph import leaf_layers
from effkeras.interop.weights import set_weights
from effkeras.layers import BlurPool, quantized
from effkeras.layers.imported import (
    INPUT,
    TF_FUNCTIONS,
    AddToLastChannels,
    TFOpCall,
    clip_by_value_activation,
)

LARQ_LAYERS = {
    cls.__name__: cls
    for cls in (
        quantized.QuantConv2D,
        quantized.QuantDense,
        quantized.QuantDepthwiseConv2D,
        quantized.QuantSeparableConv2D,
    )
}
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
# Quantizers stored as plain functions ({"class_name": "function", "config": name}): larq's own
# functions, and those Larq Zoo's XNORNet and DoReFaNet define.
LARQ_QUANTIZER_FUNCTIONS = {
    "ste_sign": quantizers.SteSign,
    "approx_sign": quantizers.ApproxSign,
    "swish_sign": quantizers.SwishSign,
    "magnitude_aware_sign": quantizers.MagnitudeAwareSign,
    "ste_heaviside": quantizers.SteHeaviside,
    "xnor_weight_scale": quantizers.XnorWeightScale,
    "magnitude_aware_sign_unclipped": quantizers.MagnitudeAwareSignUnclipped,
}
LARQ_CONSTRAINTS = {"WeightClip": constraints.WeightClip, "weight_clip": constraints.WeightClip}
# Keras 2 layers that Keras 3 rebuilds from their configs (after _keras2_layer_config).
KERAS_LAYERS = {
    "InputLayer",
    "Conv2D",
    "DepthwiseConv2D",
    "SeparableConv2D",
    "Dense",
    "BatchNormalization",
    "Activation",
    "ReLU",
    "LeakyReLU",
    "PReLU",
    "Softmax",
    "Add",
    "Subtract",
    "Multiply",
    "Average",
    "Maximum",
    "Concatenate",
    "MaxPooling2D",
    "AveragePooling2D",
    "GlobalAveragePooling2D",
    "GlobalMaxPooling2D",
    "Flatten",
    "Reshape",
    "Permute",
    "Dropout",
    "ZeroPadding2D",
    "Cropping2D",
    "UpSampling2D",
    "Rescaling",
}
MODELS = {"Functional", "Model", "Sequential"}
_QUANTIZER_KEYS = (
    "input_quantizer",
    "kernel_quantizer",
    "depthwise_quantizer",
    "pointwise_quantizer",
)
_CONSTRAINT_KEYS = (
    "kernel_constraint",
    "depthwise_constraint",
    "pointwise_constraint",
    "bias_constraint",
)


# Functions the Zoo stores by name in an activation or initializer config.
FUNCTIONS = {
    "activation": {"clip_by_value_activation": clip_by_value_activation},
    # QuickNet's fixed transition blur (the registry's quicknet uses the same).
    "initializer": {"blurpool_initializer": BlurPool()},
}


def _droppable(key, value):
    """Keras 2 config keys that Keras 3 layers lack and that change nothing once weights are
    loaded: `groups` of 1, and the kernel_* arguments Keras 2 keeps, unused, on separable convs."""
    return (key == "groups" and value == 1) or key in (
        "kernel_initializer",
        "kernel_regularizer",
        "kernel_constraint",
    )


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
            raise InputError(
                f"{where}: Keras 3 {cls.__name__} has no argument {key!r} "
                f"(value {config[key]!r}); rebuild the larq model without it."
            )
    return {key: value for key, value in config.items() if key in accepted}


def _quantizer(config, where):
    if config is None:
        return None
    name = config.get("class_name")
    if name == "function":  # a plain function, stored by name
        if config.get("config") not in LARQ_QUANTIZER_FUNCTIONS:
            raise InputError(
                f"{where}: larq quantizer function {config.get('config')!r} has no "
                f"effkeras equivalent; supported: "
                f"{sorted(LARQ_QUANTIZER_FUNCTIONS)} and the classes "
                f"{sorted(LARQ_QUANTIZERS)}."
            )
        return quantizers.serialize(LARQ_QUANTIZER_FUNCTIONS[config["config"]]())
    if name not in LARQ_QUANTIZERS:
        raise InputError(
            f"{where}: larq quantizer {name!r} has no effkeras equivalent; "
            f"supported: {sorted(LARQ_QUANTIZERS)}."
        )
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


def _function(key, value, where):
    """A function stored by name ({"class_name": "function", "config": name}) in an activation
    or initializer argument: Keras' own, or one of the Zoo's in FUNCTIONS."""
    name = value.get("config")
    kind = "activation" if key == "activation" else "initializer"
    if not key.endswith(("activation", "_initializer")):
        raise InputError(
            f"{where}: argument {key!r} is the Python function {name!r}, which "
            f"effkeras cannot import; rebuild the model with a Keras object there."
        )
    if name in FUNCTIONS[kind]:
        return keras.saving.serialize_keras_object(FUNCTIONS[kind][name])
    known = keras.activations if kind == "activation" else keras.initializers
    try:
        known.get(name)
    except ValueError:
        raise InputError(
            f"{where}: {kind} function {name!r} has no effkeras equivalent; "
            f"supported: Keras' own and {sorted(FUNCTIONS[kind])}."
        ) from None
    return name


# Modules a layer config may name (of an initializer, ...); any other (e.g. "os") is refused.
KNOWN_MODULES = ("keras", "tf_keras", "larq", "larq_zoo", "effkeras")


def _check_modules(value, where):
    """InputError when a nested object of a layer config names a module outside KNOWN_MODULES."""
    if isinstance(value, dict):
        module = value.get("module")
        if any(str(value.get(k)).startswith("effkeras>") for k in ("registered_name", "config")):
            module = None  # registered by effkeras (a Zoo function that _function translated)
        if module is not None and (
            not isinstance(module, str) or module.split(".")[0] not in KNOWN_MODULES
        ):
            raise InputError(
                f"{where} names the Python module {module!r} ({value.get('class_name')!r}); "
                f"effkeras imports only Keras and larq objects and never runs code from a "
                f"model file: rebuild the model with Keras initializers, regularizers and "
                f"constraints"
            )
        value = list(value.values())
    if isinstance(value, list):
        for item in value:
            _check_modules(item, where)


def _named_functions(config, where):
    """`config` with its functions stored by name translated (_function), then checked to name
    no other module (_check_modules)."""
    named = {
        key: _function(key, value, where)
        if isinstance(value, dict) and value.get("class_name") == "function"
        else value
        for key, value in config.items()
    }
    _check_modules(named, where)
    return named


def _is_functional(entry):
    """A Functional model or a subclass (the Zoo's BinaryDenseNet): its config is the graph."""
    config = entry.get("config")
    return isinstance(config, dict) and {"layers", "input_layers", "output_layers"} <= set(config)


def _translate_layer(layer, layer_names):
    """One layer entry of a tf_keras model config, rewritten for Keras 3 / effkeras."""
    name, class_name = layer.get("name") or layer["config"].get("name"), layer["class_name"]
    config = _keras2_layer_config(class_name, layer["config"])
    where = f"layer {name!r}"
    if class_name in MODELS or _is_functional(layer):
        return _model_entry(layer, config)
    if class_name in ("TFOpLambda", "SlicingOpLambda"):
        return _tf_op_entry(layer, config, layer_names, where)
    if class_name == "Lambda":
        return _zoo_lambda_entry(layer, config, where)
    if class_name in LARQ_LAYERS:
        for key in _QUANTIZER_KEYS:
            if key in config:
                config[key] = _quantizer(config[key], where)
        for key in _CONSTRAINT_KEYS:
            if key in config:
                config[key] = _constraint(config[key])
        config = _fit_arguments(LARQ_LAYERS[class_name], _named_functions(config, where), where)
        return {
            **layer,
            "config": config,
            "module": quantized.__name__,
            "registered_name": f"effkeras>{class_name}",
        }
    if class_name in KERAS_LAYERS:
        config = _fit_arguments(
            getattr(keras.layers, class_name), _named_functions(config, where), where
        )
        return {**layer, "config": config, "module": "keras.layers", "registered_name": None}
    raise InputError(
        f"{where} is a {class_name}, which effkeras cannot import; supported: "
        f"larq {sorted(LARQ_LAYERS)}, Keras {sorted(KERAS_LAYERS)}, TFOpLambda "
        f"calls of {sorted(TF_FUNCTIONS)} and Larq Zoo's own Lambda layers."
    )


def _effkeras_entry(layer, cls, config, inbound_nodes=None):
    return {
        **layer,
        "module": __name__,
        "class_name": cls.__name__,
        "registered_name": f"effkeras>{cls.__name__}",
        "config": config,
        "inbound_nodes": layer["inbound_nodes"] if inbound_nodes is None else inbound_nodes,
    }


def _base_config(config):
    return {key: config[key] for key in ("name", "trainable", "dtype") if key in config}


def _is_reference(data):
    """Keras 2's (and tf_keras') test for a recorded tensor: [layer name, node index, tensor
    index] or the same plus call kwargs."""
    return isinstance(data, list) and len(data) in (3, 4) and isinstance(data[0], str)


def _tf_op_entry(layer, config, layer_names, where):
    """A TFOpLambda (SlicingOpLambda for x[...]) as a TFOpCall. Keras 2 records the call's first
    argument as the node (a tensor reference, a nested list of them, or ["_CONSTANT_VALUE", -1,
    value]) and every other argument by TensorFlow's name in the references' kwargs, where
    tensors are references too."""
    function = config.get("function")
    if function not in TF_FUNCTIONS:
        raise InputError(
            f"{where} is a {layer['class_name']} calling tf.{function}, which "
            f"effkeras cannot import; supported: {sorted(TF_FUNCTIONS)}."
        )
    if len(layer.get("inbound_nodes") or ()) != 1:
        raise InputError(
            f"{where}: expected one recorded call of tf.{function}, got "
            f"{len(layer.get('inbound_nodes') or ())}."
        )
    references, kwargs = [], {}

    def replace(data):  # a recorded argument, with tensors as {"__input__": i}
        if _is_reference(data):
            if data[0] == "_CONSTANT_VALUE":
                return data[2]
            if data[0] not in layer_names:
                raise InputError(
                    f"{where}: tf.{function} reads layer {data[0]!r}, which the "
                    f"model does not have."
                )
            references.append(list(data[:3]))
            return {INPUT: len(references) - 1}
        if isinstance(data, list):
            return [replace(item) for item in data]
        if isinstance(data, dict):
            if data == {"class_name": "__ellipsis__"}:
                return "..."
            return {key: replace(value) for key, value in data.items()}
        return data

    def first_argument(data):  # the node: references carry the kwargs (the last one counts)
        if _is_reference(data):
            if len(data) == 4:
                kwargs.update(data[3])
            return replace(data)
        return [first_argument(item) for item in data]

    (node,) = layer["inbound_nodes"]
    first = first_argument(node)
    kwargs.pop("name", None)
    arguments = replace(kwargs)
    parameters = list(inspect.signature(TF_FUNCTIONS[function]).parameters)
    arguments = {parameters[0]: first, **arguments}
    _check_arguments(function, arguments, where)
    return _effkeras_entry(
        layer,
        TFOpCall,
        {**_base_config(config), "function": function, "arguments": arguments},
        [references],
    )


def _check_arguments(function, arguments, where):
    try:
        inspect.signature(TF_FUNCTIONS[function]).bind(**arguments)
    except TypeError as error:
        raise InputError(
            f"{where}: tf.{function} called with arguments {sorted(arguments)} "
            f"that effkeras does not take ({error})."
        ) from None


# Larq Zoo's Lambda layers, recognised by their module, layer name and recorded closure data.
# Keras 2 stores a lambda as [marshalled bytecode, defaults, closure values]; the bytecode is
# never read. Closure values come in the order of the lambda's free variable names (sorted).
ZOO_TFOP_LAYER = "larq_zoo.core.utils"  # TFOpLayer(tf_op, *args, **kwargs): (args, kwargs, tf_op)
ZOO_TFOP_FUNCTIONS = ("split", "concat")  # tf_op.__name__, a TF_FUNCTIONS key
MELIUSNET_MERGE = ("larq_zoo.literature.meliusnet", re.compile(r"_improve_merge$"))
MELIUSNET_IMPROVEMENT_CHANNELS = 64  # the improvement conv's filters, a constant in the lambda
R2B_BLOCK_OUTPUT = ("larq_zoo.literature.real_to_bin_nets", re.compile(r"_block_\d+_out$"))


def _zoo_lambda_entry(layer, config, where):
    """One of Larq Zoo's Lambdas as a Keras 3 / effkeras layer; InputError for any other."""
    function, module, name = config.get("function"), config.get("module"), config.get("name", "")
    closure = function[2] if isinstance(function, list) and len(function) == 3 else "unknown"
    nodes = layer.get("inbound_nodes") or []
    shapes = (layer.get("build_config") or {}).get("input_shape")
    if config.get("function_type") == "lambda" and not config.get("arguments") and len(nodes) == 1:
        (node,) = nodes
        if module == ZOO_TFOP_LAYER and _is_tf_op_closure(closure):
            return _tf_op_layer_entry(layer, config, closure, len(node), where)
        if (
            module == MELIUSNET_MERGE[0]
            and MELIUSNET_MERGE[1].search(name)
            and len(node) == 2
            and _is_meliusnet_merge(closure, shapes)
        ):
            return _effkeras_entry(layer, AddToLastChannels, _base_config(config))
        if (
            module == R2B_BLOCK_OUTPUT[0]
            and R2B_BLOCK_OUTPUT[1].search(name)
            and len(node) == 1
            and closure is None
        ):
            return {
                **layer,
                "module": "keras.layers",
                "class_name": "Identity",
                "registered_name": None,
                "config": _base_config(config),
            }
    raise InputError(
        f"{where} is a Lambda (module {module!r}), which effkeras cannot import: it "
        f"never runs Python code from a model file and knows only Larq Zoo's own "
        f"Lambdas (TFOpLayer of tf.split / tf.concat, MeliusNet's *_improve_merge, "
        f"Real-to-Binary Net's *_block_N_out). Rebuild the model with Keras layers "
        f"in place of the Lambda."
    )


def _is_tf_op_closure(closure):
    return (
        isinstance(closure, list)
        and len(closure) == 3
        and isinstance(closure[0], list)
        and isinstance(closure[1], dict)
        and isinstance(closure[2], dict)
        and closure[2].get("class_name") == "function"
        and closure[2].get("config") in ZOO_TFOP_FUNCTIONS
    )


def _tf_op_layer_entry(layer, config, closure, inputs, where):
    """TFOpLayer(tf.split, 4, axis=-1) as TFOpCall("split", {"value": input 0,
    "num_or_size_splits": 4, "axis": -1}); tf.concat takes the list of inputs."""
    args, kwargs, tf_op = closure
    function = tf_op["config"]
    first = [{INPUT: i} for i in range(inputs)] if function == "concat" else {INPUT: 0}
    parameters = list(inspect.signature(TF_FUNCTIONS[function]).parameters)
    arguments = {parameters[0]: first, **dict(zip(parameters[1:], args)), **kwargs}
    _check_arguments(function, arguments, where)
    return _effkeras_entry(
        layer, TFOpCall, {**_base_config(config), "function": function, "arguments": arguments}
    )


def _is_meliusnet_merge(closure, shapes):
    """`lambda x_: x_[0] + tf.pad(x_[1], [[0, 0], [0, 0], [0, 0], [f_in - 64, 0]])` with f_in
    (the closure) the channels of x_[0], and x_[1] of 64 channels where the shapes are recorded."""
    if not (isinstance(closure, list) and len(closure) == 1 and isinstance(closure[0], int)):
        return False
    if shapes is None:
        return True
    x_shape, y_shape = shapes
    return (x_shape[-1], y_shape[-1]) == (closure[0], MELIUSNET_IMPROVEMENT_CHANNELS)


def _model_entry(entry, config):
    """A (nested) model entry; keras.Model rebuilds a Functional config given as "Model"."""
    names = {layer.get("name") or layer["config"].get("name") for layer in config["layers"]}
    config = {**config, "layers": [_translate_layer(layer, names) for layer in config["layers"]]}
    for key in ("input_layers", "output_layers"):
        if len(config.get(key) or ()) == 1:  # Keras 3 writes a single input unnested
            config[key] = config[key][0]
    class_name = "Sequential" if entry["class_name"] == "Sequential" else "Model"
    return {
        **entry,
        "module": "keras",
        "class_name": class_name,
        "registered_name": None,
        "config": config,
    }


def _read_config(config_json_or_path):
    text = os.fspath(config_json_or_path)
    if not text.lstrip().startswith("{"):
        if not os.path.exists(text):
            raise InputError(
                f"{text!r} is neither a model JSON string nor an existing file; pass "
                f"larq's model.to_json() or the file it was written to."
            )
        with open(text) as f:
            text = f.read()
    try:
        model = json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(f"the larq model config is not JSON ({e}); pass model.to_json()") from None
    if not isinstance(model, dict) or (
        model.get("class_name") not in MODELS and not _is_functional(model)
    ):
        got = model.get("class_name") if isinstance(model, dict) else type(model).__name__
        raise InputError(f"expected a model config (from model.to_json()), got {got!r}.")
    config = model.get("config")
    if not isinstance(config, dict) or not isinstance(config.get("layers"), list):
        raise InputError("the larq model config has no layer list; pass model.to_json()")
    return model


def import_larq_model(config_json_or_path, weights):
    """An effkeras Keras 3 model equal to a larq (tf_keras) model.

    config_json_or_path: larq's `model.to_json()` string, or the file it was written to.
    weights: a `.h5` file from `model.save_weights` (matched by layer name), a `.npz` file from
        `np.savez(path, *model.get_weights())`, that list of arrays itself, or a dict
        {layer name: [arrays]}.

    The model saves as a `.keras` file; loading that needs `import effkeras.interop` first
    (it registers TFOpCall, AddToLastChannels and the Zoo's functions).

    Example:

    ```python
    model = import_larq_model("model.json", "model.h5")
    ```

    Args:
        config_json_or_path: str. larq's `model.to_json()` string, or the file it was written
            to.
        weights: str, path, list of arrays or dict. A `.h5` file from `model.save_weights`
            (matched by layer name), a `.npz` file from `np.savez(path, *model.get_weights())`,
            that list of arrays itself, or a dict `{layer name: [arrays]}`.

    Returns:
        A functional Keras 3 `keras.Model` computing what the larq model computes.

    Raises:
        InputError: if the config is not a model config or holds a layer, quantizer, Lambda or
            function the importer does not know; or if the weights file has another suffix,
            is not a tf_keras weights file, or its weights do not match the model in count or
            shape.
    """
    model_config = _read_config(config_json_or_path)
    entry = _model_entry(model_config, model_config["config"])
    try:
        model = keras.saving.deserialize_keras_object(entry)
    except InputError:
        raise
    except (TypeError, ValueError, KeyError) as e:  # Keras' own, on a config it cannot build
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InputError(
            f"Keras cannot build the larq model from its config ({reason}); pass larq's "
            f"model.to_json() unedited"
        ) from None
    _normalize_last_axis(model)
    set_weights(model, weights)
    return model


def _normalize_last_axis(model):
    """Keras 2 stores BatchNormalization's axis as [3]. Keras 3 reshapes the parameters of any
    axis but -1 to (1, 1, 1, C), and LCE's LceBconv2d then refuses the fused (1, 1, 1, C)
    multiplier ("failed to prepare"); the last axis is -1 in Keras 3's own layers."""
    for layer in leaf_layers(model):
        if (
            isinstance(layer, keras.layers.BatchNormalization)
            and layer.axis == len(layer.input.shape) - 1
        ):
            layer.axis = -1
