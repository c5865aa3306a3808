"""Early-exit deployment: a multi-exit network as K stages, one per exit, run until confident.

An early-exit network (RANet, Yang et al., CVPR 2020, arXiv 2003.07326; MSDNet, arXiv
1703.09844) returns K logits, exit1 ... exitK, each deeper and costlier than the last. At
inference time an image stops at the first exit whose softmax maximum reaches that exit's
threshold (RANet §3.4, "budgeted batch classification"), so the file must let an app run the
network exit by exit:

- `split_stages(model)`: K Keras models that call the trained model's own layers (no weight
  copies). Stage k computes exactly what exit k needs that no earlier exit needed, and takes
  as inputs (the image for stage 1) the tensors of earlier stages it reads; it returns its
  exit's logits and the tensors that later stages read (the state). Chained, they compute the
  model's K outputs.
- phones (targets float, float16, int8): one .tflite with K signatures stage_1 ... stage_K;
  LiteRT runs each with `get_signature_runner`. int8 files keep float32 inputs and outputs by
  default: each signature quantizes what it reads and dequantizes what it returns, so a state
  tensor needs no agreement between the ranges the producing and the consuming stage each
  calibrated (they differ: a CONCATENATION's inputs take its output's scale). With io="int8"
  (tflm's default) state crosses in int8, a quarter of the bytes, and the app requantizes it
  where the two sides' parameters differ; the description marks those tensors.
- microcontrollers (target tflm): TFLite Micro runs a file's first subgraph only, so the K-
  signature int8 file is cut into K single-stage files (the same bytes: each keeps its own
  subgraph and the weights it uses), each with its measured arena and the state it hands on.
- `Runner`: runs the stages of a file until an exit is confident (LiteRT or TFLite Micro) and
  reports the exit taken and its cost; `Runner.calibrate` sets thresholds on the quantized
  file's own confidences (quantization moves them).

The file carries its description (stages, the tensors each reads and hands on with their
shapes, dtypes, quantization and bytes, cumulative FLOPs, thresholds) as TFLite metadata
"effkeras_early_exit", and so does each tflm stage file; the app-facing JSON beside the file
(`api.app_metadata`) holds the same under "early_exit", with the class names.
"""

import dataclasses
import json
import math
import os
import re
import tempfile

import keras
import numpy as np

from effkeras.graph import summary
from effkeras.deploy import runtime, verify
from effkeras.errors import InputError

METADATA_NAME = "effkeras_early_exit"
SIGNATURE = "stage_{}"


# --- the graph split ------------------------------------------------------------------------------


def _producer(tensor):
    """The node that makes a KerasTensor."""
    operation, node_index, _ = tensor._keras_history
    return operation._inbound_nodes[node_index]


def check_multi_exit(model):
    """InputError unless `model` is a functional Keras model with several outputs."""
    if not isinstance(model, keras.Model) or not hasattr(model, "_nodes_by_depth"):
        raise InputError(f"early-exit stages are cut from a functional Keras model (a graph of "
                         f"layer calls); {getattr(model, 'name', type(model).__name__)!r} is not "
                         f"one: build it with keras.Model(inputs, outputs)")
    if len(model.outputs) < 2:
        raise InputError(f"{model.name} has one output; early-exit stages need a model with one "
                         f"output per exit")


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
            raise InputError(f"output {k} of {model.name} ({model.output_names[k - 1]}) is "
                             f"computed before exit {k}: each exit of an early-exit model needs "
                             f"layers of its own")
    return nodes, made_in


def split_stages(model):
    """K Keras models, one per exit of `model` (its outputs, in order), calling `model`'s own
    layers: no weights are copied, so training the model trains the stages.

    Stage k takes a dict {name: tensor}: the model's inputs for stage 1; for later stages the
    tensors of earlier stages it reads, named after the layers making them. It returns a dict:
    its exit's logits under the exit's output name (e.g. "exit2"), then the tensors it makes that
    later stages read (the state it hands on). A tensor that several later stages read is handed
    on once and kept by the caller (`run_stages`). Each stage model also has `stage` (k),
    `exit_name`, `input_names` and `state_names` (the names it hands on)."""
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
        names[id(t)] = re.sub(r"[^A-Za-z0-9_]", "_", getattr(t, "name", "") or "") or \
            _tensor_name(t, taken)
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
        inputs = {names[key]: keras.Input(batch_shape=t.shape, dtype=t.dtype, name=names[key])
                  for key, t in reads[k].items()}
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
    """The K exits' logits of `images` (a batch, or a list of batches for several inputs)
    computed stage after stage, as `model.predict` computes them: a list of K arrays.
    trace: a list that receives each stage's inputs ({name: batch})."""
    images = images if isinstance(images, (list, tuple)) else [images]
    state = {name: np.asarray(x, np.float32)
             for name, x in zip(stages[0].model_input_names, images)}
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


def _export(stages, directory):
    """A SavedModel with one signature per stage, "stage_k", taking batch-1 inputs."""
    import tensorflow as tf

    archive = keras.export.ExportArchive()
    for stage in stages:
        archive.track(stage)
    for stage in stages:
        spec = {t.name: tf.TensorSpec((1, *t.shape[1:]), t.dtype, name=t.name)
                for t in stage.inputs}
        for name, t in spec.items():
            if None in t.shape:
                raise InputError(f"deployment needs fixed shapes, and {name} of "
                                 f"{stage.name} is {tuple(t.shape)}: build the model with a "
                                 f"fixed input shape")
        archive.add_endpoint(SIGNATURE.format(stage.stage), _endpoint(stage),
                             input_signature=[spec])
    archive.write_out(directory, verbose=False)


def _endpoint(stage):
    return lambda inputs: stage(inputs, training=False)


# --- the flatbuffer: signatures, description, stage files -----------------------------------------


_read = verify.read_model
_pack = verify.pack_model


def _stage_number(key):
    match = re.fullmatch(SIGNATURE.format(r"(\d+)"), key)
    return int(match.group(1)) if match else None


def signatures(flatbuffer):
    """{signature key: (subgraph index, {input name: Tensor}, {output name: Tensor})} in the
    file's order; Tensor as `verify.io_tensors` gives them (dtype, shape, quantization)."""
    model = _read(flatbuffer)
    found = {}
    for signature in model.signatureDefs or []:
        subgraph = model.subgraphs[signature.subgraphIndex]

        def tensors(maps, subgraph=subgraph):
            return {m.name.decode(): verify._tensor(model, subgraph, m.tensorIndex)
                    for m in maps or []}

        found[signature.signatureKey.decode()] = (signature.subgraphIndex,
                                                  tensors(signature.inputs),
                                                  tensors(signature.outputs))
    return found


def description(flatbuffer):
    """The early-exit description a file carries (module docstring), or None. Reads the
    metadata table alone, not the weights."""
    from tensorflow.lite.python import schema_py_generated as schema

    verify.check_flatbuffer(flatbuffer)
    model = schema.Model.GetRootAs(bytes(flatbuffer), 0)
    for i in range(model.MetadataLength()):
        entry = model.Metadata(i)
        if entry.Name() and entry.Name().decode() == METADATA_NAME:
            data = model.Buffers(entry.Buffer()).DataAsNumpy()
            try:
                return json.loads(np.asarray(data, np.uint8).tobytes().decode())
            except ValueError:
                raise InputError(f"this file's {METADATA_NAME} metadata is not JSON") from None
    return None


def with_description(flatbuffer, described):
    """`flatbuffer` carrying `described` as its metadata entry METADATA_NAME (replaced if
    there)."""
    from tensorflow.lite.python import schema_py_generated as schema

    model = _read(flatbuffer)
    model.metadata = [m for m in model.metadata or [] if m.name.decode() != METADATA_NAME]
    data = np.frombuffer(json.dumps(described, sort_keys=True).encode(), np.uint8)
    model.buffers.append(schema.BufferT(data=data))
    entry = schema.MetadataT()
    entry.name, entry.buffer = METADATA_NAME.encode(), len(model.buffers) - 1
    model.metadata.append(entry)
    return _pack(model)


_CONTROL_FLOW = ("IF", "WHILE", "CALL_ONCE", "CALL")


def stage_files(flatbuffer):
    """The K single-stage files of a K-signature file, stage order: stage k's file holds its
    subgraph alone (as subgraph 0, which TFLite Micro runs), the buffers and op codes that
    subgraph uses, its signature and the file's metadata. Same bytes for the same ops: a stage
    file computes exactly what the signature computes."""
    model = _read(flatbuffer)
    keys = {s.signatureKey.decode(): s for s in model.signatureDefs or []}
    numbered = sorted((_stage_number(key), key) for key in keys if _stage_number(key))
    if len(numbered) < 2 or [n for n, _ in numbered] != list(range(1, len(numbered) + 1)):
        raise InputError(f"expected a file with signatures stage_1 ... stage_K (an early-exit "
                         f"file written by effkeras); this one has {sorted(keys) or 'none'}")
    files = []
    for _, key in numbered:
        files.append(_one_stage(_read(flatbuffer), keys[key].subgraphIndex, key))
    return files


def _one_stage(model, index, key):
    from tensorflow.lite.python import schema_py_generated as schema

    subgraph = model.subgraphs[index]
    codes, buffers, kept_codes = {}, {0: 0}, []
    new_buffers = [schema.BufferT()]  # buffer 0 stays the empty one, as the converter writes it
    for op in subgraph.operators:
        code = model.operatorCodes[op.opcodeIndex]
        if (code.customCode or b"").decode() in _CONTROL_FLOW or schema_name(code) in _CONTROL_FLOW:
            raise InputError(f"signature {key} calls other subgraphs ({schema_name(code)}), "
                             f"which a single-stage file cannot hold")
        if op.opcodeIndex not in codes:
            codes[op.opcodeIndex] = len(kept_codes)
            kept_codes.append(code)
        op.opcodeIndex = codes[op.opcodeIndex]
    for tensor in subgraph.tensors:
        if tensor.buffer not in buffers:
            buffers[tensor.buffer] = len(new_buffers)
            new_buffers.append(model.buffers[tensor.buffer])
        tensor.buffer = buffers[tensor.buffer]
    for entry in model.metadata or []:
        if entry.buffer not in buffers:
            buffers[entry.buffer] = len(new_buffers)
            new_buffers.append(model.buffers[entry.buffer])
        entry.buffer = buffers[entry.buffer]
    signature = next(s for s in model.signatureDefs if s.signatureKey.decode() == key)
    signature.subgraphIndex = 0
    model.subgraphs, model.operatorCodes, model.buffers = [subgraph], kept_codes, new_buffers
    model.signatureDefs = [signature]
    return _pack(model)


def schema_name(code):
    """The builtin op name of a schema OperatorCodeT."""
    from tensorflow.lite.python.schema_util import get_builtin_code_from_operator_code

    return verify._BUILTIN_NAMES.get(get_builtin_code_from_operator_code(code), "UNKNOWN")


def _tensor_entry(name, tensor):
    entry = {"name": name, "shape": list(tensor.shape), "dtype": tensor.dtype,
             "bytes": int(math.prod(tensor.shape) * np.dtype(tensor.dtype).itemsize)}
    if tensor.scale:
        entry["quantization"] = {"scale": list(tensor.scale),
                                 "zero_point": list(tensor.zero_point)}
    return entry


def describe(flatbuffer, stages, costs, *, model_name, target, io, thresholds=None):
    """The early-exit description of a K-signature file converted from `stages`
    (split_stages) with `costs` (summary.exit_costs): what an app needs to run it."""
    found = signatures(flatbuffer)
    missing = [SIGNATURE.format(s.stage) for s in stages if SIGNATURE.format(s.stage) not in found]
    if missing:
        raise RuntimeError(f"the converter dropped signature(s) {', '.join(missing)}: the file "
                           f"has {sorted(found)}")
    made, sizes = {}, {}  # name -> the stage making it (0: the model's inputs), its bytes
    handed = {}  # name -> its entry where it is made
    for name in stages[0].model_input_names:
        made[name] = 0
        sizes[name] = _tensor_entry(name, found[SIGNATURE.format(1)][1][name])["bytes"]
    described = []
    for stage, cost in zip(stages, costs):
        _, inputs, outputs = found[SIGNATURE.format(stage.stage)]
        hands_on = [_tensor_entry(name, outputs[name]) for name in stage.state_names]
        for entry in hands_on:
            made[entry["name"]], sizes[entry["name"]] = stage.stage, entry["bytes"]
            handed[entry["name"]] = entry
        reads = []
        for name in stage.input_names:
            entry = _tensor_entry(name, inputs[name])
            if name in handed:  # state: which stage made it; int8 state whose two sides
                # calibrated different ranges is requantized by the app between the stages
                entry["from_stage"] = made[name]
                entry["requantize"] = bool(entry.get("quantization")) and (
                    entry.get("quantization") != handed[name].get("quantization"))
            reads.append(entry)
        read_later = {name for s in stages[stage.stage:] for name in s.input_names}
        described.append({
            "stage": stage.stage, "signature": SIGNATURE.format(stage.stage),
            "exit": stage.exit_name, "flops": int(cost["flops"]),
            "stage_macs": int(cost["stage_macs"]), "params": int(cost["params"]),
            "reads": reads,
            "logits": _tensor_entry(stage.exit_name, outputs[stage.exit_name]),
            "hands_on": hands_on,
            # What the app keeps between this stage and the next: every tensor made so far
            # that a later stage reads (the image too, if one does).
            "held_state_bytes": int(sum(sizes[n] for n in read_later
                                        if made.get(n, stage.stage + 1) <= stage.stage)),
        })
    return {"format": FORMAT, "model": model_name, "target": target, "io": io,
            "num_exits": len(stages), "exits": [stage.exit_name for stage in stages],
            "inputs": list(stages[0].model_input_names),
            "exit_flops": [entry["flops"] for entry in described],
            "thresholds": None if thresholds is None else list(thresholds),
            "rule": RULE, "stages": described}


FORMAT = "effkeras.early_exit/1"
RULE = ("run stage_1 on the image, then stage_k on the tensors earlier stages handed on (by "
        "name); stop at the first exit k whose softmax maximum is >= thresholds[k-1] (the last "
        "threshold is 0: the last exit always answers)")


# --- running the stages -------------------------------------------------------------------------


@dataclasses.dataclass
class _Stage:
    """One stage in a runtime: input and output details by name ({"dtype", "shape",
    "quantization": (scale, zero point) or (0.0, 0)}) and `run({name: raw}) -> {name: raw}`."""

    inputs: dict
    outputs: dict
    run: object


def _litert_stages(files):
    """_Stage per stage from (flatbuffer, signature key) pairs, in LiteRT."""
    from ai_edge_litert.interpreter import Interpreter

    interpreters, result = {}, []
    for flatbuffer, key in files:
        if id(flatbuffer) not in interpreters:
            with runtime.quiet_stderr():
                interpreters[id(flatbuffer)] = Interpreter(model_content=bytes(flatbuffer),
                                                           num_threads=1)
        signature = interpreters[id(flatbuffer)].get_signature_runner(key)

        def run(arrays, signature=signature):
            return signature(**{name: array[None] for name, array in arrays.items()})

        result.append(_Stage(signature.get_input_details(), signature.get_output_details(),
                             lambda arrays, run=run: {n: v[0] for n, v in run(arrays).items()}))
    return result


def _micro_stages(files):
    """_Stage per single-stage file, in TFLite Micro (which runs subgraph 0 only)."""
    result = []
    for flatbuffer, key in files:
        model = _read(flatbuffer)
        subgraph = model.subgraphs[0]
        signature = model.signatureDefs[0]
        inputs = {m.name.decode(): list(subgraph.inputs).index(m.tensorIndex)
                  for m in signature.inputs}
        outputs = {m.name.decode(): list(subgraph.outputs).index(m.tensorIndex)
                   for m in signature.outputs}
        micro = runtime.TFLiteMicro(flatbuffer)

        def run(arrays, micro=micro, inputs=inputs, outputs=outputs):
            ordered = [None] * len(inputs)
            for name, position in inputs.items():
                ordered[position] = arrays[name]
            raw = micro.run_one(ordered)
            return {name: raw[position] for name, position in outputs.items()}

        result.append(_Stage({n: micro.inputs[i] for n, i in inputs.items()},
                             {n: micro.outputs[i] for n, i in outputs.items()}, run))
    return result


def _encode(details, value):
    scale, zero_point = details["quantization"]
    if np.issubdtype(details["dtype"], np.integer) and scale:
        return runtime.quantize(value, scale, zero_point, details["dtype"])
    return np.asarray(value, details["dtype"])


def _decode(details, raw):
    scale, zero_point = details["quantization"]
    if np.issubdtype(details["dtype"], np.integer) and scale:
        return runtime.dequantize(raw, scale, zero_point)
    return np.asarray(raw, np.float32)


def softmax(logits):
    """Softmax over the last axis in float32 (the confidence the thresholds compare with)."""
    logits = np.asarray(logits, np.float32)
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


@dataclasses.dataclass
class Decisions:
    """What `Runner.predict` decided for a batch: per image the predicted class, the exit taken
    (1-based), its cost (cumulative FLOPs up to that exit) and its confidence."""

    predictions: np.ndarray
    exits: np.ndarray
    costs: np.ndarray
    confidences: np.ndarray

    @property
    def expected_cost(self):
        return float(np.mean(self.costs))

    def exit_fractions(self, num_exits):
        return [float(np.mean(self.exits == k)) for k in range(1, num_exits + 1)]


class Runner:
    """Runs an early-exit file stage by stage until an exit is confident.

    model: the path or bytes of a K-signature file (`convert`), or the K single-stage files
    (paths or bytes, any order) of target tflm. thresholds: K numbers, a thresholds JSON file
    or its dict ({"num_exits", "thresholds", ...}; exit k is taken when the softmax maximum is
    >= thresholds[k-1]); None: the file's own, if it carries any. runtime: "litert", or "tflm"
    (TFLite Micro, which runs one subgraph per file: a K-signature file is cut into its stage
    files first, the bytes the tflm target writes).

    Inputs and outputs are float whatever the file's io: the runner quantizes what a stage reads
    with that stage's own parameters and dequantizes what it returns (with io="int8" a state
    tensor is thereby requantized where the producing and the consuming stage calibrated
    different ranges; each side's parameters are in the description)."""

    def __init__(self, model, thresholds=None, runtime="litert"):
        if runtime not in ("litert", "tflm"):
            raise InputError(f"unknown runtime {runtime!r}; choose litert or tflm")
        files = [_load(m) for m in model] if isinstance(model, (list, tuple)) else [_load(model)]
        self.description = description(files[0])
        if self.description is None or self.description.get("format") != FORMAT:
            raise InputError("this file carries no early-exit description: give a file written "
                             "by effkeras.deploy.convert for a multi-exit model")
        self.num_exits = self.description["num_exits"]
        self.exit_flops = list(self.description["exit_flops"])
        self.runtime = runtime
        pairs = self._stage_files(files)
        self._stages = (_micro_stages(pairs) if runtime == "tflm" else _litert_stages(pairs))
        self.exit_fractions = None  # target fractions from a thresholds file, for `calibrate`
        self.thresholds = self.calibration = None
        if thresholds is not None:
            self.set_thresholds(thresholds)
        elif self.description.get("thresholds") is not None:
            self.set_thresholds(self.description["thresholds"])

    def _stage_files(self, files):
        """[(flatbuffer, signature key)] in stage order."""
        count = self.num_exits
        if len(files) == 1:
            keys = signatures(files[0])
            if len(keys) == 1:
                raise InputError(f"this is the file of one stage ({next(iter(keys))}); give all "
                                 f"{count} stage files, or the K-signature file")
            if self.runtime == "tflm":
                return [(f, SIGNATURE.format(k + 1)) for k, f in enumerate(stage_files(files[0]))]
            return [(files[0], SIGNATURE.format(k)) for k in range(1, count + 1)]
        by_stage = {}
        for f in files:
            keys = list(signatures(f))
            if len(keys) != 1 or _stage_number(keys[0]) is None:
                raise InputError(f"expected single-stage files (one signature stage_k each); "
                                 f"one has {keys}")
            if description(f) != self.description:
                raise InputError("these stage files come from different conversions")
            by_stage[_stage_number(keys[0])] = (f, keys[0])
        if sorted(by_stage) != list(range(1, count + 1)):
            raise InputError(f"the model has {count} stages; the files given are stages "
                             f"{sorted(by_stage)}")
        return [by_stage[k] for k in range(1, count + 1)]

    def set_thresholds(self, thresholds):
        """Validated thresholds (`load_thresholds`) for this file's exits."""
        loaded = load_thresholds(thresholds, self.num_exits, self.exit_flops)
        self.thresholds = loaded["thresholds"]
        if loaded.get("exit_fractions") is not None:
            self.exit_fractions = loaded["exit_fractions"]
        return self.thresholds

    # -- one stage, one example --

    def stage_inputs(self, k):
        """{name: (shape without the batch axis, dtype in the file)} of what stage k reads."""
        return {name: (tuple(int(d) for d in details["shape"][1:]), np.dtype(details["dtype"]).name)
                for name, details in self._stages[k - 1].inputs.items()}

    def run_stage(self, k, state):
        """Stage k on one example: `state` maps each name stage k reads (`stage_inputs`) to a
        float array of its shape (with or without a batch axis of 1); entries other stages read
        are ignored. A list gives the inputs in `stage_inputs` order. Returns {name: float
        array}: exit k's logits under the exit's name, then the state it hands on."""
        if not 1 <= k <= self.num_exits:
            raise InputError(f"stage {k} does not exist: the model has stages 1 to "
                             f"{self.num_exits}")
        stage = self._stages[k - 1]
        names = list(stage.inputs)
        if isinstance(state, (list, tuple)):
            if len(state) != len(names):
                raise InputError(f"stage {k} reads {len(names)} tensor(s) ({', '.join(names)}), "
                                 f"and {len(state)} were given")
            state = dict(zip(names, state))
        if not isinstance(state, dict):
            raise InputError(f"stage {k} takes a dict {{name: array}} (or a list) of the "
                             f"tensors it reads: {', '.join(names)}")
        missing = [name for name in names if name not in state]
        if missing:
            raise InputError(f"stage {k} reads {', '.join(missing)}, which the state given "
                             f"lacks (it has {', '.join(sorted(state)) or 'nothing'}); feed it "
                             f"what stages 1 to {k - 1} returned")
        raw = {}
        for name, details in stage.inputs.items():
            value = np.asarray(state[name])
            shape = tuple(int(d) for d in details["shape"])
            real = np.issubdtype(details["dtype"], np.floating) or bool(details["quantization"][0])
            if real and value.dtype.kind != "f":
                raise InputError(f"stage {k}'s input {name} takes float values (the runner "
                                 f"quantizes them itself), not {value.dtype}")
            if not real and value.dtype.kind not in "iu":
                raise InputError(f"stage {k}'s input {name} takes integers, not {value.dtype}")
            if value.shape == shape:
                value = value[0]
            if value.shape != shape[1:]:
                raise InputError(f"stage {k}'s input {name} has shape {shape[1:]} (one "
                                 f"example), and the array given has {value.shape}")
            raw[name] = _encode(details, value.astype(np.float32) if real else value)
        outputs = stage.run(raw)
        return {name: _decode(stage.outputs[name], outputs[name]) for name in stage.outputs}

    def _first_state(self, image):
        names = self.description["inputs"]
        images = image if isinstance(image, (list, tuple)) else [image]
        if len(images) != len(names):
            raise InputError(f"the model takes {len(names)} input(s) ({', '.join(names)}), and "
                             f"{len(images)} were given")
        return dict(zip(names, (np.asarray(x, np.float32) for x in images)))

    def _exit_name(self, k):
        return self.description["exits"][k - 1]

    # -- whole images --

    def classify(self, image):
        """(class, exit taken (1-based), cost in FLOPs, confidence) of one example: stages run
        until the softmax maximum reaches the stage's threshold."""
        if self.thresholds is None:
            raise InputError("no thresholds: give thresholds= (K numbers or a thresholds "
                             "file), or call calibrate()")
        state = self._first_state(image)
        for k in range(1, self.num_exits + 1):
            outputs = self.run_stage(k, state)
            probabilities = softmax(outputs.pop(self._exit_name(k)))
            confidence = float(probabilities.max())
            if confidence >= self.thresholds[k - 1] or k == self.num_exits:
                return int(probabilities.argmax()), k, self.exit_flops[k - 1], confidence
            state.update(outputs)

    def predict(self, images):
        """`Decisions` of a batch (an array (N, ...), or a list of them for several inputs)."""
        batches = images if isinstance(images, (list, tuple)) else [images]
        rows = [self.classify([b[i] for b in batches] if len(batches) > 1 else batches[0][i])
                for i in range(len(batches[0]))]
        columns = list(zip(*rows)) if rows else [(), (), (), ()]
        return Decisions(np.array(columns[0], np.int64), np.array(columns[1], np.int64),
                         np.array(columns[2], np.int64), np.array(columns[3], np.float32))

    def exit_outputs(self, images, trace=None):
        """All K exits' logits of a batch (every stage run): a list of K arrays (N, classes).
        trace: a list that receives, per example, each stage's inputs as floats."""
        batches = images if isinstance(images, (list, tuple)) else [images]
        logits = [[] for _ in range(self.num_exits)]
        for i in range(len(batches[0])):
            state = self._first_state([b[i] for b in batches])
            seen = []
            for k in range(1, self.num_exits + 1):
                seen.append({name: state[name] for name in self._stages[k - 1].inputs})
                outputs = self.run_stage(k, state)
                logits[k - 1].append(outputs.pop(self._exit_name(k)))
                state.update(outputs)
            if trace is not None:
                trace.append(seen)
        return [np.stack(values) for values in logits]

    def calibrate(self, images, *, budget=None, fractions=None):
        """Thresholds set on this file's own confidences over `images` (validation images:
        quantization moves confidences, so float thresholds do not carry over).

        budget: a target average cost in FLOPs; fractions: the share of images each exit should
        take (K numbers, e.g. the float model's "exit_fractions" from its thresholds file).
        Neither: the exit fractions of the thresholds file this runner was given. Sets and
        returns the thresholds; `calibration` holds what they give on `images`."""
        if budget is not None and fractions is not None:
            raise InputError("give calibrate() a budget or exit fractions, not both")
        if budget is None and fractions is None:
            if self.exit_fractions is None:
                raise InputError("calibrate() needs budget= (average FLOPs per image) or "
                                 "fractions= (K exit shares), or a runner given a thresholds "
                                 "file with exit_fractions")
            fractions = self.exit_fractions
        from effkeras import early_exit_eval

        confidences = np.stack([early_exit_eval.max_softmax(z)
                                for z in self.exit_outputs(images)])
        if budget is not None:
            _, thresholds = early_exit_eval.thresholds_for_budget(confidences, self.exit_flops,
                                                                  budget)
        else:
            shares = np.asarray(fractions, np.float64)
            if shares.shape != (self.num_exits,) or np.any(shares < 0) or not shares.sum() > 0:
                raise InputError(f"exit fractions must be {self.num_exits} numbers >= 0 with a "
                                 f"positive sum, got {list(np.ravel(fractions))}")
            thresholds = early_exit_eval.calibrate_thresholds(confidences,
                                                              shares / shares.sum())
        self.thresholds = [float(t) for t in thresholds]
        exits = exits_taken(confidences, self.thresholds)
        shares = [float(np.mean(exits == k)) for k in range(1, self.num_exits + 1)]
        self.calibration = {
            "model": self.description["model"], "num_exits": self.num_exits,
            "thresholds": list(self.thresholds), "exit_flops": list(self.exit_flops),
            "expected_flops": float(np.dot(shares, self.exit_flops)), "exit_fractions": shares,
            "calibrated_on": f"{confidences.shape[1]} images, {self.runtime}, "
                             f"{self.description['target']} file"}
        return list(self.thresholds)

    def save_thresholds(self, path):
        """Writes the thresholds of the last `calibrate` as a thresholds file
        (early_exit_eval.write_thresholds: what `Runner` and apps.convert --thresholds read)."""
        from effkeras import early_exit_eval

        if getattr(self, "calibration", None) is None:
            raise InputError("call calibrate() before save_thresholds()")
        early_exit_eval.write_thresholds(path, self.calibration)


def _load(model):
    if isinstance(model, (bytes, bytearray)):
        return bytes(model)
    try:
        with open(os.fspath(model), "rb") as f:
            return f.read()
    except (OSError, TypeError) as e:
        raise InputError(f"cannot read the early-exit file {model!r}: "
                         f"{getattr(e, 'strerror', None) or e}") from None


# --- thresholds -----------------------------------------------------------------------------------


def load_thresholds(source, num_exits, exit_flops=None):
    """{"thresholds": [K floats], "exit_fractions": [K] or None, ...} of `source`: a thresholds
    file (`early_exit_eval.write_thresholds`, read and checked by its `load_thresholds`), its
    dict, or K numbers. InputError when they are not for `num_exits` exits, or (a file) were
    calibrated for exits costing other than `exit_flops`. The last exit always answers,
    whatever its threshold."""
    from effkeras import early_exit_eval

    if isinstance(source, (str, os.PathLike)):
        return early_exit_eval.load_thresholds(os.fspath(source), num_exits, exit_flops)
    loaded = dict(source) if isinstance(source, dict) else {"thresholds": source}
    declared = loaded.get("num_exits", num_exits)
    values, fractions = loaded.get("thresholds"), loaded.get("exit_fractions")
    if declared != num_exits or not isinstance(values, (list, tuple, np.ndarray)) \
            or len(values) != num_exits:
        got = declared if declared != num_exits else (
            len(values) if isinstance(values, (list, tuple, np.ndarray)) else values)
        raise InputError(f"the thresholds are for {got} exits, and the model has {num_exits}: "
                         f"give {num_exits} numbers, or calibrate thresholds for this model")
    try:
        values = [float(v) for v in values]
    except (TypeError, ValueError):
        raise InputError(f"thresholds must be numbers, got {list(values)}") from None
    if not all(math.isfinite(v) and v >= 0 for v in values):
        raise InputError(f"thresholds must be finite numbers >= 0 (softmax maxima; "
                         f"{early_exit_eval.NEVER:g} for an exit nobody takes), got {values}")
    if fractions is not None and len(fractions) != num_exits:
        raise InputError(f"{len(fractions)} exit fractions given for {num_exits} exits")
    return {**loaded, "num_exits": num_exits, "thresholds": values,
            "exit_fractions": None if fractions is None else [float(f) for f in fractions]}


def exits_taken(confidences, thresholds):
    """The exit (1-based) each column of `confidences` ((K, N) softmax maxima) takes."""
    from effkeras import early_exit_eval

    return early_exit_eval.exits_taken(confidences, thresholds) + 1


# --- conversion: the deploy targets' early-exit form ----------------------------------------------

TARGETS = ("float", "float16", "int8", "tflm", "ethos-u*")


def has_form(target):
    """Whether `target` has an early-exit form: one file with a signature per stage, or one
    file per stage (tflm; ethos-u*: each stage compiled by Vela)."""
    return target in TARGETS or target.startswith("ethos-u")
_CALIBRATION_BATCH = 32


def _stage_report(base):
    """`base` (a target's Report class) with the early-exit fields."""
    fields = [
        ("exits", int, dataclasses.field(default=0)),
        # Each exit's logits from the chained stages against the Keras model's.
        ("exit_max_rel_diff", tuple, dataclasses.field(default=())),
        ("exit_top1_agreement", tuple, dataclasses.field(default=())),
        # Per stage: exit, cumulative FLOPs, stage MACs, state bytes (tflm: arena, file bytes).
        ("stages", tuple, dataclasses.field(default=())),
        ("thresholds", tuple, dataclasses.field(default=None)),
        # The description the file carries (api.app_metadata puts it in the app's JSON).
        ("description", dict, dataclasses.field(default=None, repr=False,
                                                 metadata={"internal": True})),
    ]
    return dataclasses.make_dataclass(f"EarlyExit{base.__name__}", fields, bases=(base,),
                                      namespace={"format": _format_report})


def _format_report(self):
    lines = [line for line in verify.Report.format(self).splitlines()
             if not line.startswith(("stages:", "description:"))]
    header = ["stage", "exit", "FLOPs (cum.)", "state in", "state out", "held"]
    micro = any("arena_bytes" in stage for stage in self.stages)
    vela = any("cycles_total" in stage for stage in self.stages)
    if micro:
        header += ["arena", "file"]
    if vela:
        header += ["Vela cycles", "inf/s", "SRAM", "file"]
    rows = [header]
    for stage in self.stages:
        row = [str(stage["stage"]), stage["exit"], f"{stage['flops']:,}",
               f"{stage['state_in_bytes']:,}", f"{stage['state_out_bytes']:,}",
               f"{stage['held_state_bytes']:,}"]
        if micro:
            row += [f"{stage['arena_bytes']:,}", f"{stage['file_bytes']:,}"]
        if vela:
            row += [f"{stage['cycles_total']:,}", f"{stage['inferences_per_second']:,.1f}",
                    f"{stage['sram_bytes']:,}", f"{stage['file_bytes']:,}"]
        rows.append(row)
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines.append("stages (state, arena and file in bytes):")
    lines += ["  " + "  ".join(cell.rjust(w) for cell, w in zip(row, widths)) for row in rows]
    return "\n".join(lines)


def _report_classes():
    from effkeras.deploy import tflite, tflm

    return {"float": _stage_report(tflite.TFLiteReport), "int8": _stage_report(tflite.Int8Report),
            "tflm": _stage_report(tflm.TflmReport)}


_REPORTS = {}


def report_class(kind):
    """The early-exit Report class of "float" (float, float16), "int8" or "tflm"."""
    if not _REPORTS:
        _REPORTS.update(_report_classes())
    return _REPORTS[kind]


def is_early_exit_file(flatbuffer):
    """Whether `flatbuffer` is a file `convert` wrote for a multi-exit model (anything else,
    however broken, is for the target's own checks to refuse)."""
    if not isinstance(flatbuffer, (bytes, bytearray)):
        return False
    try:
        return description(flatbuffer) is not None
    except Exception:
        return False


def convert(model, target, *, calibration=None, sample=None, io=None, thresholds=None,
            allow_float_fallback=False, input_range=verify.PIXEL_RANGE, max_rel_diff=None,
            calibration_samples=None, calibration_source=None, **vela_options):
    """(K-signature flatbuffer, report) of a multi-exit Keras model for `target` (float,
    float16, int8 or tflm), verified: the chained stages' K exits against the Keras model's on
    `sample`; int8: every op in int8; tflm: each stage file in TFLite Micro against LiteRT, and
    its arena. tflm also takes the bytes of an int8 K-signature file (given as `model`).

    io (int8, tflm): "float" (int8's default) keeps float32 stage inputs and outputs, so state
    tensors cross stage boundaries as floats; "int8" (tflm's default) hands them on in int8, a
    quarter of the bytes, requantized by the app where the two stages calibrated different
    ranges (`Runner` does; the description marks them). thresholds: K numbers or a thresholds
    file (`load_thresholds`), written into the file's description.
    The report's artifacts (tflm): the stage files <stem>_stage<k>.tflite and their C arrays.
    ethos-u*: the int8 file (io int8) whose stage files Vela compiles one by one, with
    `vela_options` (ethos_u.compile_for's); its artifacts are the Vela stage files and its
    stages carry Vela's estimate each.
    """
    from effkeras.deploy import tflite

    if target.startswith("ethos-u"):
        if isinstance(model, (bytes, bytearray)):
            raise InputError(f"{target}: give the Keras model of the early-exit network")
        if io not in (None, "int8"):
            raise InputError(f"{target} stages hand on int8 state; io={io} is not possible")
        flatbuffer, report = convert(
            model, "int8", calibration=calibration, sample=sample, io="int8",
            thresholds=thresholds, input_range=input_range, max_rel_diff=max_rel_diff,
            calibration_samples=calibration_samples, calibration_source=calibration_source)
        return _vela_stages(flatbuffer, report, target, vela_options)
    if vela_options:
        raise InputError(f"{', '.join(sorted(vela_options))} go(es) with an ethos-u target, "
                         f"not {target}")
    if target not in TARGETS:
        raise InputError(f"target {target} has no early-exit form (one file, or one per stage, "
                         f"for {', '.join(TARGETS)}); to convert the graph of all exits at once, "
                         f"pass early_exit=False (apps.convert: --noearly_exit)")
    # Phones hand float state from signature to signature; microcontrollers int8 state, a
    # quarter of the bytes held between stages and of each stage's arena.
    if io is not None and io not in tflite.IO_TYPES:
        raise InputError(f"unknown io type {io!r}; choose from {', '.join(tflite.IO_TYPES)}")
    if isinstance(model, (bytes, bytearray)):
        return _convert_file(bytes(model), target, sample=sample, thresholds=thresholds, io=io)
    io = io or ("int8" if target == "tflm" else "float")
    stages = split_stages(model)
    costs = summary.exit_costs(model)
    exit_flops = [int(c["flops"]) for c in costs]
    chosen = (None if thresholds is None
              else load_thresholds(thresholds, len(stages), exit_flops)["thresholds"])
    if sample is None:
        sample = verify.random_sample(model, input_range)
    verify.check_sample(model, sample)
    quantized = target in ("int8", "tflm")
    if quantized:
        count = calibration_samples or tflite.CALIBRATION_SAMPLES
        if calibration is None:
            calibration = verify.random_sample(model, input_range, count, seed=2)
            calibration_source = f"{count} random inputs in {list(input_range)}"
        verify.check_sample(model, calibration, "calibration set")
    keys = [SIGNATURE.format(stage.stage) for stage in stages]
    with tempfile.TemporaryDirectory() as directory:
        _export(stages, directory)

        def float_file(configure=None):
            return tflite.convert_saved_model(directory, model.name, configure, keys)

        if target == "float":
            flatbuffer = float_file()
        elif target == "float16":
            flatbuffer = float_file(_float16)
        else:
            flatbuffer = tflite.quantize_saved_model(
                directory, _stage_calibration(stages, calibration), io, model.name, float_file,
                keys)
    ops = verify.operators(flatbuffer)
    left_float = tflite.float_ops(ops) if quantized else []
    if left_float and (target == "tflm" or not allow_float_fallback):
        raise InputError(
            f"{len(left_float)} op(s) of {model.name} stayed float in the int8 file: "
            f"{', '.join(left_float[:5])}{' ...' if len(left_float) > 5 else ''}. TFLite has no "
            f"int8 kernel for them; replace those layers"
            + ("" if target == "tflm" else ", or pass --allow_float_fallback"))
    described = describe(flatbuffer, stages, costs, model_name=model.name, target=target,
                         io=io if quantized else "float", thresholds=chosen)
    artifacts, micro = {}, {}
    if target == "tflm":
        flatbuffer, described, artifacts, micro = _stage_files_checked(flatbuffer, described,
                                                                       sample, model.name)
    else:
        flatbuffer = with_description(flatbuffer, described)
    runner = Runner(flatbuffer)
    expected = model.predict(sample, verbose=0)
    actual = runner.exit_outputs(sample)
    limit = max_rel_diff if max_rel_diff is not None else tflite.MAX_REL_DIFF[
        "int8" if quantized else target]
    abs_diff, rel_diff, _ = verify.check_agreement(
        expected, actual, max_rel_diff=limit, what=f"{target} file's chained stages",
        model=model, sample=sample, input_range=input_range)
    fields = dict(
        target=target, size_bytes=len(flatbuffer), op_census=verify.op_census(ops),
        max_abs_diff=abs_diff, max_rel_diff=rel_diff, samples=verify.batch_size(sample),
        top1_agreement=tflite.top1_agreement(expected, actual), exits=len(stages),
        exit_max_rel_diff=tuple(verify.max_diffs(e, a)[1] for e, a in zip(expected, actual)),
        exit_top1_agreement=tuple(tflite.top1_agreement(e, a)
                                  for e, a in zip(expected, actual)),
        stages=_stage_rows(described), thresholds=None if chosen is None else tuple(chosen),
        description=described)
    if quantized:
        fields.update(io=io, float_ops=tuple(left_float),
                      calibration=calibration_source or f"{verify.batch_size(calibration)} "
                                                        f"given inputs")
    report = report_class({"float": "float", "float16": "float", "int8": "int8",
                           "tflm": "tflm"}[target])(**fields, **micro)
    report.artifacts = artifacts
    return flatbuffer, report


def _vela_stages(flatbuffer, report, accelerator, options):
    """The int8 early-exit `report` for `accelerator`: each stage file compiled by Vela (the
    artifacts <stem>_stage<k>.tflite), its estimate in the report's stage rows; the whole
    network's cycles are the stages' sum (no exit taken early)."""
    from effkeras.deploy import ethos_u

    artifacts, stages = {}, []
    for k, (stage_file, row) in enumerate(zip(stage_files(flatbuffer), report.stages), start=1):
        compiled, vela = ethos_u.compile_for(stage_file, accelerator=accelerator, **options)
        artifacts[f"_stage{k}.tflite"] = compiled
        stages.append(dict(row, file_bytes=len(compiled), cycles_total=vela.cycles_total,
                           inferences_per_second=vela.inferences_per_second,
                           sram_bytes=vela.sram_bytes, npu_ops=vela.npu_ops,
                           cpu_ops=vela.cpu_ops, npu_macs=vela.npu_macs))
    report = dataclasses.replace(report, target=accelerator, stages=tuple(stages))
    report.artifacts = artifacts
    return flatbuffer, report


def _float16(converter):
    import tensorflow as tf

    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.target_spec.supported_types = [tf.float16]


def _stage_calibration(stages, calibration):
    """{signature: {input name: array (N, ...)}}: what each stage reads when the float stages
    run on the calibration images, so that each stage calibrates on the states it will see."""
    arrays = calibration if isinstance(calibration, (list, tuple)) else [calibration]
    traces = []
    for start in range(0, len(arrays[0]), _CALIBRATION_BATCH):
        trace = []
        run_stages(stages, [np.asarray(a[start:start + _CALIBRATION_BATCH], np.float32)
                            for a in arrays], trace)
        traces.append(trace)
    return {SIGNATURE.format(stage.stage): {
        name: np.concatenate([trace[stage.stage - 1][name] for trace in traces])
        for name in stage.input_names} for stage in stages}


def _stage_rows(described):
    rows = []
    for stage in described["stages"]:
        row = {"stage": stage["stage"], "exit": stage["exit"], "flops": stage["flops"],
               "stage_macs": stage["stage_macs"],
               "state_in_bytes": sum(t["bytes"] for t in stage["reads"]) if stage["stage"] > 1
               else 0,
               "state_out_bytes": sum(t["bytes"] for t in stage["hands_on"]),
               "held_state_bytes": stage["held_state_bytes"]}
        for key in ("arena_bytes", "file_bytes", "max_lsb_diff"):
            if key in stage:
                row[key] = stage[key]
        rows.append(row)
    return tuple(rows)


def _output_steps(flatbuffer):
    """{output name: quantization step} of a single-stage file's outputs: their own scale
    (int8 outputs), or that of the int8 tensor a float output is dequantized from."""
    (_, _, outputs), = signatures(flatbuffer).values()
    dequantized = {op.outputs[0].name: op.inputs[0].scale for op in verify.operators(flatbuffer)
                   if op.type == "DEQUANTIZE"}
    steps = {}
    for name, tensor in outputs.items():
        scale = tensor.scale or dequantized.get(tensor.name) or (1.0,)
        steps[name] = float(scale[0])
    return steps


def _stage_files_checked(flatbuffer, described, sample, name):
    """tflm: (the K-signature file, its description, artifacts, report fields) with each stage
    file run in TFLite Micro against LiteRT on the stages' inputs of `sample`, and its arena
    measured. Raises as tflm.convert does when TFLite Micro computes something else."""
    from effkeras.deploy import tflm

    files = stage_files(flatbuffer)
    try:
        micro = _micro_stages([(f, SIGNATURE.format(k)) for k, f in enumerate(files, start=1)])
    except Exception as e:  # RuntimeError from the C++ side: an op TFLite Micro lacks
        raise InputError(f"TFLite Micro cannot run these stage files: "
                         f"{str(e).strip().splitlines()[0]}; it has no kernel for one of their "
                         f"ops ({', '.join(verify.op_census(verify.operators(flatbuffer)))})"
                         ) from None
    litert, trace = Runner(with_description(flatbuffer, described)), []
    litert.exit_outputs(sample, trace=trace)  # each stage's inputs, as LiteRT chains them
    lite = litert._stages
    diffs, steps = [[] for _ in files], [_output_steps(f) for f in files]
    for seen in trace:
        for k, inputs in enumerate(seen):
            encoded = {n: _encode(lite[k].inputs[n], v) for n, v in inputs.items()}
            a, b = lite[k].run(encoded), micro[k].run(encoded)
            for output in a:
                difference = np.abs(np.asarray(a[output], np.float64)
                                    - np.asarray(b[output], np.float64))
                if not np.issubdtype(np.asarray(a[output]).dtype, np.integer):
                    difference = difference / steps[k][output]
                diffs[k].append(np.round(difference).ravel())
    largest = [int(np.concatenate(d).max()) for d in diffs]
    mean = float(np.mean(np.concatenate([np.concatenate(d) for d in diffs])))
    if max(largest) > tflm.MAX_LSB_DIFF or mean > tflm.MAX_MEAN_LSB_DIFF:
        raise RuntimeError(f"TFLite Micro's stage outputs differ from LiteRT's by up to "
                           f"{max(largest)} LSB, {mean:.2f} on average (limits "
                           f"{tflm.MAX_LSB_DIFF}, {tflm.MAX_MEAN_LSB_DIFF}): TFLite Micro "
                           f"computes these stage files differently")
    arenas = [tflm.arena_bytes(f) for f in files]
    described = dict(described, target="tflm")
    sizes = [len(f) for f in files]
    for _ in range(4):  # the stage files carry the description, which holds their sizes
        described["stages"] = [
            dict(stage, arena_bytes=arena, file_bytes=size, max_lsb_diff=lsb,
                 file_suffix=f"_stage{stage['stage']}.tflite")
            for stage, arena, size, lsb in zip(described["stages"], arenas, sizes, largest)]
        tagged = with_description(flatbuffer, described)
        files = stage_files(tagged)
        if [len(f) for f in files] == sizes:
            break
        sizes = [len(f) for f in files]
    flatbuffer = tagged
    artifacts = {}
    for k, (f, arena) in enumerate(zip(files, arenas), start=1):
        stage_name = f"{name}_stage{k}"
        artifacts[f"_stage{k}.tflite"] = f
        artifacts[f"_stage{k}_model_data.h"] = (
            lambda stem, n=stage_name, f=f, a=arena: tflm.c_header(n, len(f), a))
        artifacts[f"_stage{k}_model_data.cc"] = (
            lambda stem, n=stage_name, f=f, k=k: tflm.c_source(n, f, f"{stem}_stage{k}"))
    return flatbuffer, described, artifacts, {"max_lsb_diff": max(largest),
                                              "mean_lsb_diff": round(mean, 3),
                                              "arena_bytes": max(arenas)}


def _convert_file(flatbuffer, target, *, sample=None, thresholds=None, io=None):
    """tflm of a given int8 K-signature file (written by `convert` for int8): its stage files,
    checked in TFLite Micro and measured."""
    from effkeras.deploy import tflite

    if target != "tflm":
        raise InputError(f"a given early-exit file converts to TFLite Micro stage files "
                         f"(--target=tflm) only; for {target}, convert the Keras model")
    described = description(flatbuffer)
    if io is not None and io != described["io"]:
        raise InputError(f"this file's stages take and hand on {described['io']} tensors, not "
                         f"{io}: convert the Keras model with io={io}")
    ops = tflite.check_int8_file(flatbuffer, "tflm")
    count = described["num_exits"]
    if thresholds is not None:
        described = dict(described, thresholds=load_thresholds(
            thresholds, count, described["exit_flops"])["thresholds"])
    if sample is None:
        sample = verify.random_inputs([tuple(t["shape"][1:])
                                       for t in described["stages"][0]["reads"]])
    flatbuffer, described, artifacts, micro = _stage_files_checked(flatbuffer, described, sample,
                                                                   described["model"])
    chosen = described.get("thresholds")
    report = report_class("tflm")(
        target="tflm", size_bytes=len(flatbuffer), op_census=verify.op_census(ops),
        max_abs_diff=None, max_rel_diff=None, samples=0, calibration="(given file)",
        io=described["io"], exits=count, stages=_stage_rows(described),
        thresholds=None if chosen is None else tuple(chosen), description=described, **micro)
    report.artifacts = artifacts
    return flatbuffer, report


def app_fields(report, class_names=None):
    """What api.app_metadata adds for an early-exit file: the K exits' logits (with the
    signature returning each), class names and the description."""
    described = report.description
    outputs = []
    for stage in described["stages"]:
        logits = stage["logits"]
        outputs.append({"name": logits["name"], "signature": stage["signature"],
                        "shape": logits["shape"], "dtype": logits["dtype"],
                        "quantization": logits.get("quantization"), "kind": "logits",
                        "flops": stage["flops"]})
    classes = outputs[0]["shape"][-1] if outputs and outputs[0]["shape"] else 0
    return {"outputs": outputs,
            "class_names": list(class_names) if class_names else [str(i) for i in range(classes)],
            "early_exit": described}
