"""The stage split: a multi-exit Keras model as K stage models, one per exit.

`split_stages(model)` gives K Keras models that call the trained model's own layers (no weight
copies). Stage k computes exactly what exit k needs that no earlier exit needed, and takes as
inputs (the image for stage 1) the tensors of earlier stages it reads; it returns its exit's
logits and the tensors that later stages read (the state). Chained (`run_stages`), they compute
the model's K outputs; `export_stages` writes them as one SavedModel with a signature each.
"""

import re

import keras
import numpy as np
import tensorflow as tf

from effkeras.deploy.converter import save_signatures
from effkeras.errors import InputError

SIGNATURE = "stage_{}"


def stage_number(key):
    """The stage k of a signature key "stage_k", or None for another key.

    Args:
        key: a signature key.

    Returns:
        An int, or None.
    """
    match = re.fullmatch(SIGNATURE.format(r"(\d+)"), key)
    return int(match.group(1)) if match else None


def _producer(tensor):
    """The node that makes a KerasTensor."""
    operation, node_index, _ = tensor._keras_history
    return operation._inbound_nodes[node_index]


def check_multi_exit(model):
    """Checks that `model` is a functional Keras model with several outputs.

    Args:
        model: anything.

    Raises:
        InputError: it is not one.
    """
    if not isinstance(model, keras.Model) or not hasattr(model, "_nodes_by_depth"):
        raise InputError(
            f"early-exit stages are cut from a functional Keras model (a graph of "
            f"layer calls); {getattr(model, 'name', type(model).__name__)!r} is not "
            f"one: build it with keras.Model(inputs, outputs)"
        )
    if len(model.outputs) < 2:
        raise InputError(
            f"{model.name} has one output; early-exit stages need a model with one output per exit"
        )


def _tensor_name(tensor, taken):
    """A signature-safe name, unique in `taken`, for a tensor one stage hands to another: its
    layer's name (with the call and output index when the layer has several)."""
    operation, node_index, tensor_index = tensor._keras_history
    name = re.sub(r"[^A-Za-z0-9_]", "_", operation.name)
    if node_index or tensor_index or len(_producer(tensor).outputs) > 1:
        name = f"{name}_{node_index}_{tensor_index}"
    unique, n = name, 1
    while unique in taken:
        n += 1
        unique = f"{name}_{n}"
    return unique


def _assign(model):
    """(nodes in execution order with the stage each runs in, {id(tensor): stage making it}).
    A node runs in the first stage whose exit needs it; the model's inputs are stage 0's."""
    order = []
    for depth in sorted(model._nodes_by_depth, reverse=True):
        order.extend(model._nodes_by_depth[depth])
    stage_of = {}
    for k, output in enumerate(model.outputs, start=1):
        stack = [_producer(output)]
        while stack:
            node = stack.pop()
            if id(node) in stage_of or node.is_input or not node.operation:
                continue
            stage_of[id(node)] = k
            stack.extend(_producer(t) for t in node.input_tensors)
    made_in = {id(t): 0 for t in model.inputs}
    nodes = []
    for node in order:
        if id(node) in stage_of:
            nodes.append((node, stage_of[id(node)]))
            made_in.update({id(t): stage_of[id(node)] for t in node.outputs})
    for k, output in enumerate(model.outputs, start=1):
        if made_in[id(output)] != k:
            raise InputError(
                f"output {k} of {model.name} ({model.output_names[k - 1]}) is "
                f"computed before exit {k}: each exit of an early-exit model needs "
                f"layers of its own"
            )
    return nodes, made_in


def split_stages(model):
    """K Keras models, one per exit of `model` (its outputs, in order), calling `model`'s own
    layers: no weights are copied, so training the model trains the stages.

    Stage k takes a dict {name: tensor}: the model's inputs for stage 1; for later stages the
    tensors of earlier stages it reads, named after the layers making them. It returns a dict:
    its exit's logits under the exit's output name (e.g. "exit2"), then the tensors it makes that
    later stages read (the state it hands on). A tensor that several later stages read is handed
    on once and kept by the caller (`run_stages`).

    Args:
        model: a functional Keras model with one output per exit, in exit order.

    Returns:
        A list of K keras.Model; each also has `stage` (k), `exit_name`, `input_names`,
        `state_names` (the names it hands on) and `model_input_names`.

    Raises:
        InputError: not a functional multi-output model, or an exit computed before its stage
            (each exit needs layers of its own).
    """
    check_multi_exit(model)
    nodes, made_in = _assign(model)
    count, exit_names = len(model.outputs), list(model.output_names)
    reads = {k: {} for k in range(1, count + 1)}  # stage -> {id: tensor made by an earlier one}
    for node, k in nodes:
        for t in node.input_tensors:
            if made_in[id(t)] < k:
                reads[k][id(t)] = t
    names, taken = {}, set(exit_names)
    for t in model.inputs:  # the input's own name ("image"), made signature-safe
        names[id(t)] = re.sub(r"[^A-Za-z0-9_]", "_", getattr(t, "name", "") or "") or _tensor_name(
            t, taken
        )
        taken.add(names[id(t)])
    handed = {k: {} for k in range(count + 1)}  # stage -> {id: tensor later stages read}
    for k in range(1, count + 1):
        for key, t in reads[k].items():
            if key not in names:
                names[key] = _tensor_name(t, taken)
                taken.add(names[key])
            handed[made_in[key]][key] = t
    stages = []
    for k in range(1, count + 1):
        inputs = {
            names[key]: keras.Input(batch_shape=t.shape, dtype=t.dtype, name=names[key])
            for key, t in reads[k].items()
        }
        values = {key: inputs[names[key]] for key in reads[k]}
        for node, stage in nodes:
            if stage == k:
                args, kwargs = node.arguments.fill_in(values)
                results = node.operation(*args, **kwargs)
                values.update({id(x): y for x, y in zip(node.outputs, keras.tree.flatten(results))})
        outputs = {exit_names[k - 1]: values[id(model.outputs[k - 1])]}
        outputs.update({names[key]: values[key] for key in handed[k]})
        stage = keras.Model(inputs, outputs, name=f"{model.name}_{SIGNATURE.format(k)}")
        stage.stage, stage.exit_name = k, exit_names[k - 1]
        stage.input_names = list(inputs)
        stage.state_names = [names[key] for key in handed[k]]
        stage.model_input_names = [names[id(t)] for t in model.inputs]
        stages.append(stage)
    return stages


def run_stages(stages, images, trace=None):
    """The K exits' logits computed stage after stage, as `model.predict` computes them.

    Args:
        stages: the stage models (`split_stages`).
        images: a batch, or a list of batches for several inputs.
        trace: a list that receives each stage's inputs ({name: batch}).

    Returns:
        A list of K arrays.
    """
    images = images if isinstance(images, (list, tuple)) else [images]
    state = {
        name: np.asarray(x, np.float32) for name, x in zip(stages[0].model_input_names, images)
    }
    logits = []
    for stage in stages:
        inputs = {name: state[name] for name in stage.input_names}
        if trace is not None:
            trace.append(inputs)
        outputs = stage(inputs, training=False)
        outputs = {name: keras.ops.convert_to_numpy(value) for name, value in outputs.items()}
        logits.append(outputs.pop(stage.exit_name))
        state.update(outputs)
    return logits


def export_stages(stages, directory):
    """Writes a SavedModel with one signature per stage, "stage_k", taking batch-1 inputs.

    Args:
        stages: the stage models (`split_stages`).
        directory: where the SavedModel goes.

    Raises:
        InputError: a stage input's shape is not fixed.
    """
    signatures = {}
    for stage in stages:
        specs = [tf.TensorSpec((1, *t.shape[1:]), t.dtype, name=t.name) for t in stage.inputs]
        for spec in specs:
            if None in spec.shape:
                raise InputError(
                    f"deployment needs fixed shapes, and {spec.name} of "
                    f"{stage.name} is {tuple(spec.shape)}: build the model with a "
                    f"fixed input shape"
                )
        signatures[SIGNATURE.format(stage.stage)] = (_endpoint(stage), specs)
    save_signatures(directory, stages, signatures)


def _endpoint(stage):
    names = [t.name for t in stage.inputs]
    return lambda *tensors: stage(dict(zip(names, tensors)), training=False)
