"""`Runner`: an early-exit file run stage by stage until an exit is confident.

The runner runs the stages of a K-signature file in LiteRT (a signature runner per stage), or
its stage files in TFLite Micro (which runs a file's first subgraph only), and reports the exit
taken and its cost; `Runner.calibrate` sets thresholds on the file's own confidences
(quantization moves them), with the exit logic of effkeras.early_exit.
"""

import dataclasses
import os

import numpy as np

from effkeras import early_exit
from effkeras.deploy import runtime
from effkeras.deploy.early_exit.description import FORMAT, description, stage_files
from effkeras.deploy.early_exit.stages import SIGNATURE, stage_number
from effkeras.deploy.flatbuffer import read_model, signatures
from effkeras.errors import InputError


@dataclasses.dataclass
class _Stage:
    """One stage in a runtime: input and output details by name ({"dtype", "shape",
    "quantization": (scale, zero point) or (0.0, 0)}) and `run({name: raw}) -> {name: raw}`;
    `encode` and `decode` convert between floats and what the stage takes and returns."""

    inputs: dict
    outputs: dict
    run: object

    def encode(self, values):
        """{name: raw input}: each value quantized (runtime.quantize) where the stage's input
        is int8 with a scale, else cast to the input's dtype."""
        encoded = {}
        for name, value in values.items():
            details = self.inputs[name]
            quantization = _quantization(details)
            encoded[name] = (
                runtime.quantize(value, *quantization, details["dtype"])
                if quantization
                else np.asarray(value, details["dtype"])
            )
        return encoded

    def decode(self, raw):
        """{name: float array}: each raw output dequantized (runtime.dequantize) where it is
        int8 with a scale, else as float32."""
        decoded = {}
        for name, details in self.outputs.items():
            quantization = _quantization(details)
            decoded[name] = (
                runtime.dequantize(raw[name], *quantization)
                if quantization
                else np.asarray(raw[name], np.float32)
            )
        return decoded


def _quantization(details):
    """(scale, zero point) of an integer tensor with a scale; None for a real-valued one."""
    scale, zero_point = details["quantization"]
    return (scale, zero_point) if np.issubdtype(details["dtype"], np.integer) and scale else None


def _litert_stages(files):
    """_Stage per stage from (flatbuffer, signature key) pairs, in LiteRT."""
    from ai_edge_litert.interpreter import Interpreter

    interpreters, result = {}, []
    for flatbuffer, key in files:
        if id(flatbuffer) not in interpreters:
            with runtime.quiet_stderr():
                interpreters[id(flatbuffer)] = Interpreter(
                    model_content=bytes(flatbuffer), num_threads=1
                )
        signature = interpreters[id(flatbuffer)].get_signature_runner(key)

        def run(arrays, signature=signature):
            return signature(**{name: array[None] for name, array in arrays.items()})

        result.append(
            _Stage(
                signature.get_input_details(),
                signature.get_output_details(),
                lambda arrays, run=run: {n: v[0] for n, v in run(arrays).items()},
            )
        )
    return result


def _micro_stages(files):
    """_Stage per single-stage file, in TFLite Micro (which runs subgraph 0 only)."""
    result = []
    for flatbuffer, _ in files:
        model = read_model(flatbuffer)
        subgraph = model.subgraphs[0]
        signature = model.signatureDefs[0]
        inputs = {
            m.name.decode(): list(subgraph.inputs).index(m.tensorIndex) for m in signature.inputs
        }
        outputs = {
            m.name.decode(): list(subgraph.outputs).index(m.tensorIndex) for m in signature.outputs
        }
        micro = runtime.TFLiteMicro(flatbuffer)

        def run(arrays, micro=micro, inputs=inputs, outputs=outputs):
            ordered = [None] * len(inputs)
            for name, position in inputs.items():
                ordered[position] = arrays[name]
            raw = micro.run_one(ordered)
            return {name: raw[position] for name, position in outputs.items()}

        result.append(
            _Stage(
                {n: micro.inputs[i] for n, i in inputs.items()},
                {n: micro.outputs[i] for n, i in outputs.items()},
                run,
            )
        )
    return result


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
        """The average cost in FLOPs per image of the exits taken."""
        return float(np.mean(self.costs))

    def exit_fractions(self, num_exits):
        """The share of the images that left at each exit.

        Args:
            num_exits: K.

        Returns:
            K floats.
        """
        return [float(np.mean(self.exits == k)) for k in range(1, num_exits + 1)]


class Runner:
    """Runs an early-exit file stage by stage until an exit is confident.

    Inputs and outputs are float whatever the file's io: the runner quantizes what a stage reads
    with that stage's own parameters and dequantizes what it returns (with io="int8" a state
    tensor is thereby requantized where the producing and the consuming stage calibrated
    different ranges; each side's parameters are in the description).

    Args:
        model: the path or bytes of a K-signature file (`convert`), or the K single-stage files
            (paths or bytes, any order) of target tflm.
        thresholds: K numbers, a thresholds JSON file or its dict ({"num_exits", "thresholds",
            ...}; exit k is taken when the softmax maximum is >= thresholds[k-1]); None: the
            file's own, if it carries any.
        runtime: "litert", or "tflm" (TFLite Micro, which runs one subgraph per file: a
            K-signature file is cut into its stage files first, the bytes the tflm target
            writes).

    Raises:
        InputError: an unknown runtime, a file that cannot be read or carries no early-exit
            description, stage files that do not make one model, or thresholds for another.
    """

    def __init__(self, model, thresholds=None, runtime="litert"):
        if runtime not in ("litert", "tflm"):
            raise InputError(f"unknown runtime {runtime!r}; choose litert or tflm")
        files = [_load(m) for m in model] if isinstance(model, (list, tuple)) else [_load(model)]
        self.description = description(files[0])
        if self.description is None or self.description.get("format") != FORMAT:
            raise InputError(
                "this file carries no early-exit description: give a file written "
                "by effkeras.deploy.convert for a multi-exit model"
            )
        self.num_exits = self.description["num_exits"]
        self.exit_flops = list(self.description["exit_flops"])
        self.runtime = runtime
        pairs = self._stage_files(files)
        self._stages = _micro_stages(pairs) if runtime == "tflm" else _litert_stages(pairs)
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
                raise InputError(
                    f"this is the file of one stage ({next(iter(keys))}); give all "
                    f"{count} stage files, or the K-signature file"
                )
            if self.runtime == "tflm":
                return [(f, SIGNATURE.format(k + 1)) for k, f in enumerate(stage_files(files[0]))]
            return [(files[0], SIGNATURE.format(k)) for k in range(1, count + 1)]
        by_stage = {}
        for f in files:
            keys = list(signatures(f))
            if len(keys) != 1 or stage_number(keys[0]) is None:
                raise InputError(
                    f"expected single-stage files (one signature stage_k each); one has {keys}"
                )
            if description(f) != self.description:
                raise InputError("these stage files come from different conversions")
            by_stage[stage_number(keys[0])] = (f, keys[0])
        if sorted(by_stage) != list(range(1, count + 1)):
            raise InputError(
                f"the model has {count} stages; the files given are stages {sorted(by_stage)}"
            )
        return [by_stage[k] for k in range(1, count + 1)]

    def set_thresholds(self, thresholds):
        """Sets validated thresholds for this file's exits.

        Args:
            thresholds: K numbers, a thresholds file or its dict (`early_exit.load_thresholds`).

        Returns:
            The thresholds, K floats.

        Raises:
            InputError: they are not for this file's exits.
        """
        loaded = early_exit.load_thresholds(thresholds, self.num_exits, self.exit_flops)
        self.thresholds = loaded["thresholds"]
        if loaded.get("exit_fractions") is not None:
            self.exit_fractions = loaded["exit_fractions"]
        return self.thresholds

    # -- one stage, one example --

    def stage_inputs(self, k):
        """What stage k reads.

        Args:
            k: the stage, 1..K.

        Returns:
            {name: (shape without the batch axis, dtype in the file)}.
        """
        return {
            name: (tuple(int(d) for d in details["shape"][1:]), np.dtype(details["dtype"]).name)
            for name, details in self._stages[k - 1].inputs.items()
        }

    def run_stage(self, k, state):
        """Stage k on one example.

        Args:
            k: the stage, 1..K.
            state: {name: float array} of each tensor stage k reads (`stage_inputs`), of its
                shape with or without a batch axis of 1; entries other stages read are
                ignored. A list gives the inputs in `stage_inputs` order.

        Returns:
            {name: float array}: exit k's logits under the exit's name, then the state it
            hands on.

        Raises:
            InputError: no stage k, or the state lacks a tensor or has the wrong shape or type.
        """
        if not 1 <= k <= self.num_exits:
            raise InputError(
                f"stage {k} does not exist: the model has stages 1 to {self.num_exits}"
            )
        stage = self._stages[k - 1]
        names = list(stage.inputs)
        if isinstance(state, (list, tuple)):
            if len(state) != len(names):
                raise InputError(
                    f"stage {k} reads {len(names)} tensor(s) ({', '.join(names)}), "
                    f"and {len(state)} were given"
                )
            state = dict(zip(names, state))
        if not isinstance(state, dict):
            raise InputError(
                f"stage {k} takes a dict {{name: array}} (or a list) of the "
                f"tensors it reads: {', '.join(names)}"
            )
        missing = [name for name in names if name not in state]
        if missing:
            raise InputError(
                f"stage {k} reads {', '.join(missing)}, which the state given "
                f"lacks (it has {', '.join(sorted(state)) or 'nothing'}); feed it "
                f"what stages 1 to {k - 1} returned"
            )
        raw = {}
        for name, details in stage.inputs.items():
            value = np.asarray(state[name])
            shape = tuple(int(d) for d in details["shape"])
            real = np.issubdtype(details["dtype"], np.floating) or bool(details["quantization"][0])
            if real and value.dtype.kind != "f":
                raise InputError(
                    f"stage {k}'s input {name} takes float values (the runner "
                    f"quantizes them itself), not {value.dtype}"
                )
            if not real and value.dtype.kind not in "iu":
                raise InputError(f"stage {k}'s input {name} takes integers, not {value.dtype}")
            if value.shape == shape:
                value = value[0]
            if value.shape != shape[1:]:
                raise InputError(
                    f"stage {k}'s input {name} has shape {shape[1:]} (one "
                    f"example), and the array given has {value.shape}"
                )
            raw[name] = value.astype(np.float32) if real else value
        return stage.decode(stage.run(stage.encode(raw)))

    def _first_state(self, image):
        names = self.description["inputs"]
        images = image if isinstance(image, (list, tuple)) else [image]
        if len(images) != len(names):
            raise InputError(
                f"the model takes {len(names)} input(s) ({', '.join(names)}), and "
                f"{len(images)} were given"
            )
        return dict(zip(names, (np.asarray(x, np.float32) for x in images)))

    def _exit_name(self, k):
        return self.description["exits"][k - 1]

    # -- whole images --

    def classify(self, image):
        """One example, stages run until the softmax maximum reaches the stage's threshold.

        Args:
            image: the example (an array, or a list of arrays for several inputs).

        Returns:
            (class, exit taken (1-based), cost in FLOPs, confidence).

        Raises:
            InputError: no thresholds set.
        """
        if self.thresholds is None:
            raise InputError(
                "no thresholds: give thresholds= (K numbers or a thresholds "
                "file), or call calibrate()"
            )
        state = self._first_state(image)
        for k in range(1, self.num_exits + 1):
            outputs = self.run_stage(k, state)
            probabilities = early_exit.softmax(outputs.pop(self._exit_name(k)))
            confidence = float(probabilities.max())
            if confidence >= self.thresholds[k - 1] or k == self.num_exits:
                return int(probabilities.argmax()), k, self.exit_flops[k - 1], confidence
            state.update(outputs)

    def predict(self, images):
        """Each example of a batch classified as `classify` does.

        Args:
            images: an array (N, ...), or a list of them for several inputs.

        Returns:
            Decisions.

        Raises:
            InputError: no thresholds set.
        """
        batches = images if isinstance(images, (list, tuple)) else [images]
        rows = [
            self.classify([b[i] for b in batches] if len(batches) > 1 else batches[0][i])
            for i in range(len(batches[0]))
        ]
        columns = list(zip(*rows)) if rows else [(), (), (), ()]
        return Decisions(
            np.array(columns[0], np.int64),
            np.array(columns[1], np.int64),
            np.array(columns[2], np.int64),
            np.array(columns[3], np.float32),
        )

    def exit_outputs(self, images, trace=None):
        """All K exits' logits of a batch, every stage run.

        Args:
            images: an array (N, ...), or a list of them for several inputs.
            trace: a list that receives, per example, each stage's inputs as floats.

        Returns:
            A list of K arrays (N, classes).
        """
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

        Sets the thresholds; `calibration` then holds what they give on `images` (a thresholds
        record, for `save_thresholds`).

        Args:
            images: validation images, an array (N, ...) or a list for several inputs.
            budget: a target average cost in FLOPs.
            fractions: the share of images each exit should take (K numbers, e.g. the float
                model's "exit_fractions" from its thresholds file). Neither: the exit fractions
                of the thresholds file this runner was given.

        Returns:
            The thresholds, K floats.

        Raises:
            InputError: both or neither of budget and fractions (without a thresholds file's
                fractions), fractions that are not K shares, or a budget below exit 1's cost.
        """
        if budget is not None and fractions is not None:
            raise InputError("give calibrate() a budget or exit fractions, not both")
        if budget is None and fractions is None:
            if self.exit_fractions is None:
                raise InputError(
                    "calibrate() needs budget= (average FLOPs per image) or "
                    "fractions= (K exit shares), or a runner given a thresholds "
                    "file with exit_fractions"
                )
            fractions = self.exit_fractions
        confidences = np.stack([early_exit.max_softmax(z) for z in self.exit_outputs(images)])
        if budget is not None:
            _, thresholds = early_exit.thresholds_for_budget(confidences, self.exit_flops, budget)
        else:
            shares = np.asarray(fractions, np.float64)
            if shares.shape != (self.num_exits,) or np.any(shares < 0) or not shares.sum() > 0:
                raise InputError(
                    f"exit fractions must be {self.num_exits} numbers >= 0 with a "
                    f"positive sum, got {list(np.ravel(fractions))}"
                )
            thresholds = early_exit.calibrate_thresholds(confidences, shares / shares.sum())
        self.thresholds = [float(t) for t in thresholds]
        exits = early_exit.exits_taken(confidences, self.thresholds)
        shares = early_exit.exit_fractions(exits, self.num_exits).tolist()
        self.calibration = {
            "model": self.description["model"],
            "num_exits": self.num_exits,
            "thresholds": list(self.thresholds),
            "exit_flops": list(self.exit_flops),
            "expected_flops": early_exit.expected_cost(shares, self.exit_flops),
            "exit_fractions": shares,
            "calibrated_on": f"{confidences.shape[1]} images, {self.runtime}, "
            f"{self.description['target']} file",
        }
        return list(self.thresholds)

    def save_thresholds(self, path):
        """Writes the thresholds of the last `calibrate` as a thresholds file
        (early_exit.write_thresholds: what `Runner` and apps.convert --thresholds read).

        Args:
            path: the file to write.

        Raises:
            InputError: `calibrate` was not called.
        """
        if getattr(self, "calibration", None) is None:
            raise InputError("call calibrate() before save_thresholds()")
        early_exit.write_thresholds(path, self.calibration)


def _load(model):
    if isinstance(model, (bytes, bytearray)):
        return bytes(model)
    try:
        with open(os.fspath(model), "rb") as f:
            return f.read()
    except (OSError, TypeError) as e:
        raise InputError(
            f"cannot read the early-exit file {model!r}: {getattr(e, 'strerror', None) or e}"
        ) from None
