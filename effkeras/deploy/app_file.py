"""The file an app embeds: probabilities out, camera pixels in, TFLite Metadata inside.

Android's ML Model Binding, the TFLite Task Library and MediaPipe Tasks (`ImageClassifier`)
read what a model expects and what it returns from the metadata stored in the file itself: a
`TFLITE_METADATA` buffer (a flatbuffer of the metadata schema, file identifier "M001") and its
associated files (the class names) in a zip archive appended to the flatbuffer, which
flatbuffer readers ignore. Passes on a converted file, applied after the target's own checks:

- `with_probabilities`: a float SOFTMAX after every float output (the logits): scores that sum
  to 1, as classifiers report them. An int8 file's logits are dequantized first (the converter's
  float output), so the softmax is exact where an int8 softmax would round each score to 1/256;
  MCU files (tflm, ethos-u*) keep int8 logits.
- `with_uint8_pixels`: an int8 file whose input the converter made uint8 (a QUANTIZE op to the
  calibrated int8 input) takes raw pixels: scale 1, zero point 0.
- `with_metadata`: the metadata, written with the schema and the metadata-info writers that
  MediaPipe ships (`mediapipe.tasks.metadata`, `...metadata_writers.metadata_info`). MediaPipe
  1.2.3's populator (`metadata.py`) does not import from its wheel (its `_pywrap_metadata_version`
  extension is missing) and tflite-support pins protobuf < 4, so the packing (one buffer, one
  metadata entry, the zip) is done here; `read_metadata` reads it back;
- `without_app_head`: an app's int8 file back to its int8 core (int8 in, int8 logits out, no
  metadata), which tflm and ethos-u* take.
deploy.convert checks `with_probabilities` (against the softmax of the file's own logits) and
`with_uint8_pixels` (the int8 checks run on the uint8 file); tests/test_app_file.py checks the
metadata in MediaPipe's ImageClassifier.
"""

import dataclasses
import io
import zipfile

import flatbuffers
import numpy as np
from tensorflow.lite.python import schema_py_generated as schema

from effkeras.deploy import flatbuffer as fb
from effkeras.errors import InputError

METADATA_NAME = "TFLITE_METADATA"  # the entry name every metadata reader looks for
METADATA_IDENTIFIER = b"M001"
# The oldest metadata parser that reads what is written here: image properties, normalization,
# value ranges and TENSOR_AXIS_LABELS files are all in the schema's first version.
MIN_PARSER_VERSION = "1.0.0"
LABELS_FILE = "labels.txt"


@dataclasses.dataclass(frozen=True)
class AppInfo:
    """What the metadata says of a model (and the sidecar JSON repeats)."""

    name: str
    description: str
    class_names: tuple
    luma: bool = False  # a grayscale model that reads the luma of its RGB input (rgb_input)
    input_range: tuple = (0.0, 255.0)
    probabilities: bool = True  # the output: probabilities, else logits
    version: str = ""
    author: str = "effkeras"
    license: str = ""


def with_probabilities(flatbuffer):
    """`flatbuffer` with a float SOFTMAX after each float output of its main subgraph.

    Args:
        flatbuffer: the bytes of a converted single-subgraph .tflite whose outputs are logits.

    Returns:
        The bytes of the new file; its outputs are the softmax outputs, named
        `<logits name>_probabilities`.

    Raises:
        InputError: for a file with several subgraphs (an early-exit file) or an output that is
            not float32 (an int8-io file: convert with io="uint8" or "float").
    """
    model = fb.read_model(flatbuffer)
    if len(model.subgraphs) != 1:
        raise InputError(
            "probabilities are appended to single-subgraph files; this one has "
            f"{len(model.subgraphs)} (an early-exit file reports each exit's logits)"
        )
    graph = model.subgraphs[0]
    outputs = []
    for index in graph.outputs:
        logits = graph.tensors[index]
        if logits.type != schema.TensorType.FLOAT32:
            raise InputError(
                f"output {logits.name.decode()} is {fb.type_name(logits.type)}: probabilities "
                f"need float outputs (int8 files: --io=uint8 or --io=float)"
            )
        probabilities = fb.add_tensor(
            graph,
            f"{logits.name.decode()}_probabilities",
            logits.shape,
            schema.TensorType.FLOAT32,
        )
        options = schema.SoftmaxOptionsT()
        options.beta = 1.0
        graph.operators.append(
            fb.add_operator(
                model,
                (schema.BuiltinOperator.SOFTMAX, 1),
                [index],
                [probabilities],
                schema.BuiltinOptions.SoftmaxOptions,
                options,
            )
        )
        outputs.append(probabilities)
    _retarget_signatures(model, dict(zip(graph.outputs, outputs)))
    graph.outputs = outputs
    return fb.pack_model(model)


def _retarget_signatures(model, new_index):
    """Points the signatures' inputs and outputs at the tensors that replace them."""
    for signature in model.signatureDefs or []:
        for entry in (signature.inputs or []) + (signature.outputs or []):
            entry.tensorIndex = new_index.get(entry.tensorIndex, entry.tensorIndex)


def with_uint8_pixels(flatbuffer):
    """`flatbuffer` whose uint8 input takes raw pixels: quantization scale 1, zero point 0.

    The converter gives a uint8 input the int8 input's calibrated scale (and its zero point
    plus 128), read by a QUANTIZE op to int8; that op requantizes from any input scale, so the
    input can take pixels as they are. When the calibrated range is [0, 255] (scale 1) the
    QUANTIZE only shifts by 128 and the file is exactly the int8 one.

    Args:
        flatbuffer: the bytes of an int8 .tflite converted with a uint8 input.

    Returns:
        The bytes of the new file.

    Raises:
        InputError: when the input is not uint8 read only by a QUANTIZE op.
    """
    model = fb.read_model(flatbuffer)
    graph = model.subgraphs[0]
    for index in graph.inputs:
        tensor = graph.tensors[index]
        readers = [
            fb.builtin_name(model.operatorCodes[op.opcodeIndex])
            for op in graph.operators
            if index in list(op.inputs)
        ]
        if tensor.type != schema.TensorType.UINT8 or readers != ["QUANTIZE"]:
            raise InputError(
                f"input {tensor.name.decode()} is not a uint8 input read by one QUANTIZE op "
                f"(read by {readers}); convert with io='uint8'"
            )
        tensor.quantization = fb.quantization_params(1.0, 0)
    return fb.pack_model(model)


def without_app_head(flatbuffer):
    """An app's int8 file as microcontrollers and NPUs take it: int8 in, int8 logits out.

    Undoes `with_uint8_pixels` (the uint8 input and its QUANTIZE) and `with_probabilities` on
    an int8 file (the DEQUANTIZE and float SOFTMAX after the logits), and drops the metadata
    and its packed files: what is left is the int8 file the converter made with io="int8".
    Any other file comes back unchanged.

    Args:
        flatbuffer: the bytes of a .tflite file.

    Returns:
        The bytes of the file without its app head (or `flatbuffer` itself).
    """
    model = fb.read_model(flatbuffer)
    if len(model.subgraphs) != 1:
        return flatbuffer
    graph = model.subgraphs[0]

    def name(op):
        return fb.builtin_name(model.operatorCodes[op.opcodeIndex])

    def producer(index):
        return next((op for op in graph.operators if index in list(op.outputs)), None)

    dropped = []
    outputs = []
    for index in graph.outputs:
        softmax = producer(index)
        dequantize = softmax and producer(softmax.inputs[0])
        if (
            softmax is not None
            and name(softmax) == "SOFTMAX"
            and dequantize is not None
            and name(dequantize) == "DEQUANTIZE"
            and graph.tensors[dequantize.inputs[0]].type == schema.TensorType.INT8
        ):
            dropped += [softmax, dequantize]
            outputs.append(dequantize.inputs[0])
        else:
            outputs.append(index)
    inputs = []
    for index in graph.inputs:
        readers = [op for op in graph.operators if index in list(op.inputs)]
        if (
            graph.tensors[index].type == schema.TensorType.UINT8
            and len(readers) == 1
            and name(readers[0]) == "QUANTIZE"
        ):
            dropped.append(readers[0])
            inputs.append(readers[0].outputs[0])
        else:
            inputs.append(index)
    if not dropped and fb.metadata(flatbuffer, METADATA_NAME) is None:
        return flatbuffer
    _retarget_signatures(model, dict(zip(graph.outputs, outputs)) | dict(zip(graph.inputs, inputs)))
    graph.operators = [op for op in graph.operators if not any(op is d for d in dropped)]
    graph.inputs, graph.outputs = inputs, outputs
    model.metadata = [m for m in model.metadata or [] if m.name.decode() != METADATA_NAME]
    fb.compact(model)
    return fb.pack_model(model)


def with_metadata(flatbuffer, info):
    """`flatbuffer` with TFLite Metadata for an image classifier and its labels file packed in.

    A file of one subgraph with one input and one output is what image-classifier clients
    (MediaPipe, the Task Library) run: its input must be RGB. An early-exit file (a subgraph
    per stage, early_exit/) or one subgraph with an output per exit gets one SubGraphMetadata
    per subgraph, in the subgraph's own tensor order: the image (RGB or grayscale) where a
    stage reads it, each exit's logits with the labels, and the state a stage hands on (or
    takes) described as such.

    Args:
        flatbuffer: the bytes of a .tflite file (no metadata yet).
        info: an AppInfo.

    Returns:
        The bytes of the new file: the flatbuffer with a TFLITE_METADATA entry, followed by a
        zip archive holding `labels.txt`.

    Raises:
        InputError: for a single-stage file with several inputs or outputs or a non-RGB input,
            a subgraph without a classes output, or class names that do not match it.
    """
    from mediapipe.tasks.metadata import metadata_schema_py_generated as md
    from mediapipe.tasks.python.metadata.metadata_writers import metadata_info

    stages = _subgraph_io(flatbuffer)
    image_names = {name for name, _ in stages[0][0]}
    (inputs, outputs), classes = stages[0], len(info.class_names)
    single = len(stages) == 1 and len(outputs) == 1  # a classifier file, as the clients run it
    if single:
        if len(inputs) != 1:
            raise InputError(
                f"image-classifier metadata describes one input and one output; this file has "
                f"{len(inputs)} and {len(outputs)}"
            )
        if len(inputs[0][1].shape) != 4 or inputs[0][1].shape[-1] != 3:
            raise InputError(
                f"image classifiers (MediaPipe, the Task Library) feed 1 x H x W x 3 RGB; this "
                f"file takes {list(inputs[0][1].shape)} (a grayscale model: convert with "
                f"rgb_input)"
            )
        if outputs[0][1].shape[-1] != classes:
            raise InputError(
                f"{classes} class names for an output of {outputs[0][1].shape[-1]} classes"
            )
    dtype = {"float32": schema.TensorType.FLOAT32, "uint8": schema.TensorType.UINT8}

    def image(tensor):
        low, high = info.input_range
        # Pixels p in [0, 255] reach the model as (p - mean) / std: the model's own range.
        std = (255.0 - 0.0) / (high - low)
        norm = ([0.0 - low * std], [std]) if tensor.dtype == "float32" else (None, None)
        gray = tensor.shape[-1] == 1
        return metadata_info.InputImageTensorMd(
            name="image",
            description=(
                f"{'Grayscale' if gray else 'RGB'} image, {tensor.shape[1]}x{tensor.shape[2]}, "
                f"raw pixel values (the model normalises them itself"
                + (
                    "; it classifies their luma, as it was trained on grayscale images)"
                    if info.luma
                    else ")"
                )
            ),
            norm_mean=norm[0],
            norm_std=norm[1],
            color_space_type=md.ColorSpaceType.GRAYSCALE if gray else md.ColorSpaceType.RGB,
            tensor_type=dtype.get(tensor.dtype),
        ).create_metadata()

    def scores(tensor):
        return metadata_info.ClassificationTensorMd(
            name="probabilities" if info.probabilities else "logits",
            description=(
                "Probabilities of the classes (softmax)"
                if info.probabilities
                else "Logits of the classes (apply a softmax for probabilities)"
            ),
            label_files=[metadata_info.LabelFileMd(LABELS_FILE)],
            tensor_type=dtype.get(tensor.dtype) if info.probabilities else None,
        ).create_metadata()

    def state(name, handed_on):
        return metadata_info.TensorMd(
            name=name,
            description=(
                "State this stage hands on to a later one (feed it to the stage that takes "
                "a tensor of this name)"
                if handed_on
                else "State from an earlier stage (the output of this name)"
            ),
        ).create_metadata()

    graphs = []
    for index, (inputs, outputs) in enumerate(stages):
        logits = [single or (t.shape[-1] == classes and len(t.shape) == 2) for _, t in outputs]
        if not any(logits):
            raise InputError(
                f"subgraph {index} of this file has no output of {classes} classes for the "
                f"{classes} class names (outputs {[list(t.shape) for _, t in outputs]})"
            )
        graph = md.SubGraphMetadataT()
        graph.inputTensorMetadata = [
            image(t) if name in image_names else state(name, False) for name, t in inputs
        ]
        graph.outputTensorMetadata = [
            scores(t) if is_logits else state(name, True)
            for (name, t), is_logits in zip(outputs, logits)
        ]
        graphs.append(graph)
    model_metadata = metadata_info.GeneralMd(
        name=info.name,
        version=info.version or None,
        description=info.description,
        author=info.author or None,
        licenses=info.license or None,
    ).create_metadata()
    model_metadata.subgraphMetadata = graphs
    model_metadata.minParserVersion = MIN_PARSER_VERSION
    builder = flatbuffers.Builder(0)
    builder.Finish(model_metadata.Pack(builder), METADATA_IDENTIFIER)
    packed = fb.with_metadata(flatbuffer, METADATA_NAME, bytes(builder.Output()))
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as z:
        z.writestr(LABELS_FILE, "\n".join(info.class_names) + "\n")
    return packed + archive.getvalue()


def _subgraph_io(flatbuffer):
    """[(inputs, outputs)] per subgraph, in subgraph order, each a list of (signature name,
    Tensor) in the subgraph's own tensor order (the order metadata follows)."""
    model = fb.read_model(flatbuffer)
    names = {}
    for signature in model.signatureDefs or []:
        for entry in (*(signature.inputs or []), *(signature.outputs or [])):
            names[signature.subgraphIndex, entry.tensorIndex] = entry.name.decode()
    return [
        tuple(
            [(names.get((index, t), f"tensor_{t}"), fb.tensor(model, graph, t)) for t in tensors]
            for tensors in (graph.inputs, graph.outputs)
        )
        for index, graph in enumerate(model.subgraphs)
    ]


def read_metadata(flatbuffer):
    """What the TFLite Metadata of `flatbuffer` says, as a dict; None when it has none.

    Args:
        flatbuffer: the bytes of a .tflite file.

    Returns:
        A dict: name, description, version, author, license, min_parser_version, input
        (name, description, color space, normalization mean and std, value range), output
        (name, value range), labels (from the packed labels file), the labels file's name
        and associated-file type, and each subgraph's input and output names (an early-exit
        file: one per stage), or None.
    """
    from mediapipe.tasks.metadata import metadata_schema_py_generated as md

    data = fb.metadata(flatbuffer, METADATA_NAME)
    if data is None:
        return None
    if data[4:8] != METADATA_IDENTIFIER:
        raise InputError(f"the {METADATA_NAME} buffer is not TFLite Metadata (identifier M001)")
    meta = md.ModelMetadataT.InitFromPackedBuf(data, 0)
    graph = meta.subgraphMetadata[0]
    image = next(
        (t for t in graph.inputTensorMetadata if t.name == b"image"), graph.inputTensorMetadata[0]
    )
    scores = next(
        (t for t in graph.outputTensorMetadata if t.associatedFiles), graph.outputTensorMetadata[0]
    )
    color = {v: k for k, v in vars(md.ColorSpaceType).items() if not k.startswith("_")}
    norm = next(
        (
            u.options
            for u in image.processUnits or []
            if isinstance(u.options, md.NormalizationOptionsT)
        ),
        None,
    )
    labels = []
    files = {f.name.decode(): f for f in scores.associatedFiles or []}
    if files:
        with zipfile.ZipFile(io.BytesIO(bytes(flatbuffer))) as z:
            for name in files:
                labels = z.read(name).decode().splitlines()

    def text(value):
        return value.decode() if isinstance(value, bytes) else value

    def value_range(stats):
        if stats is None or stats.min is None:
            return None
        return [float(stats.min[0]), float(stats.max[0])]

    return {
        "name": text(meta.name),
        "description": text(meta.description),
        "version": text(meta.version),
        "author": text(meta.author),
        "license": text(meta.license),
        "min_parser_version": text(meta.minParserVersion),
        "input": {
            "name": text(image.name),
            "description": text(image.description),
            "color_space": color.get(image.content.contentProperties.colorSpace),
            "normalization": (
                {"mean": [float(v) for v in norm.mean], "std": [float(v) for v in norm.std]}
                if norm is not None
                else None
            ),
            "value_range": value_range(image.stats),
        },
        "output": {"name": text(scores.name), "value_range": value_range(scores.stats)},
        "labels": labels,
        "subgraphs": [
            {
                "inputs": [text(t.name) for t in g.inputTensorMetadata],
                "outputs": [text(t.name) for t in g.outputTensorMetadata],
            }
            for g in meta.subgraphMetadata
        ],
        "labels_file": next(iter(files), None),
        "associated_file_type": (next(iter(files.values())).type if files else None),
    }


def softmax(logits):
    """Row-wise softmax of float logits (what `with_probabilities` appends), in float64."""
    z = np.asarray(logits, np.float64)
    z = np.exp(z - z.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)
