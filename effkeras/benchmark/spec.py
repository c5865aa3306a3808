"""What a benchmark measures: model specs (registry names, .keras checkpoints, .tflite files),
parsed and loaded, and the target a given .tflite file was made for."""

import dataclasses
import json
import os

from effkeras.errors import InputError

FILE_SUFFIXES = (".keras", ".tflite")


@dataclasses.dataclass
class Loaded:
    """A model to benchmark: a Keras model, or the bytes of a .tflite file.

    Args:
        label: what the model is called in the rows (`spec_label`).
        model: a `keras.Model`, or the `bytes` of a .tflite file.
        accuracy: its test top-1, where known (a checkpoint's run), else None.
        accuracy_source: where `accuracy` comes from.
    """

    label: str
    model: object
    accuracy: float = None
    accuracy_source: str = None


def is_file(spec):
    """Whether `spec` names a file (.keras or .tflite) rather than a registry model.

    Args:
        spec: a model spec.

    Returns:
        True for a .keras or .tflite path.
    """
    return spec.endswith(FILE_SUFFIXES)


def parse_spec(spec):
    """Splits a model spec into registry name, square input size and builder options.

    'mobilenet_v2@96:alpha=0.35' -> ('mobilenet_v2', 96, {'alpha': 0.35}); a path -> (path,
    None, {}).

    Args:
        spec: NAME[@SIZE][:key=value,...] (values are numbers), or a .keras / .tflite path.

    Returns:
        (name or path, size or None, {option: number}).

    Raises:
        InputError: an option is not key=number, or SIZE is not a number.
    """
    if is_file(spec):
        return spec, None, {}
    head, _, options = spec.partition(":")
    name, _, size = head.partition("@")
    kwargs = {}
    for item in filter(None, options.split(",")):
        key, _, value = item.partition("=")
        try:
            kwargs[key] = float(value) if "." in value else int(value)
        except ValueError:
            raise InputError(f"model option {item!r} in {spec!r} is not key=number") from None
    if size and not size.isdigit():
        raise InputError(f"{spec!r}: the size after @ must be a number, e.g. mobilenet_v2@96")
    return name, int(size) if size else None, kwargs


def load(spec, input_shape=None, num_classes=None):
    """Loads the model a spec names.

    A registry spec builds an untrained model with seeded weights (the same run after run, so
    that Vela compresses them alike); a .keras checkpoint takes its accuracy from the
    metrics.json of its apps.train run, if beside it; a .tflite file is read as bytes.

    Args:
        spec: NAME[@SIZE][:option=value,...], a .keras checkpoint or a .tflite file.
        input_shape: (H, W, C) for registry models (default: each model's own); @SIZE
            overrides H and W.
        num_classes: classes for registry models (default: each model's own).

    Returns:
        A `Loaded`.

    Raises:
        InputError: the file cannot be read, the name is not in the registry, or the spec is
            malformed.
    """
    import keras

    from effkeras import models, saving

    name, size, kwargs = parse_spec(spec)
    if name.endswith(".tflite"):
        from effkeras.deploy.flatbuffer import read_file

        return Loaded(spec_label(spec), read_file(name))
    if name.endswith(".keras"):
        model = saving.load_model(name)
        accuracy, source = _run_accuracy(os.path.dirname(os.path.abspath(name)))
        return Loaded(spec_label(spec), model, accuracy, source)
    info = models.info(name)
    shape = input_shape or info.input_shape
    if size:
        shape = (size, size, shape[-1])
    keras.utils.set_random_seed(0)  # the same weights run after run (Vela compresses them)
    model = models.get(name, input_shape=shape, num_classes=num_classes, **kwargs)
    return Loaded(spec, model)


def spec_label(spec):
    """What a model is called in the rows.

    Args:
        spec: a model spec.

    Returns:
        A registry spec as given; a file by its stem, or by its run directory for model.keras
        (runs/x/model.keras -> 'x').
    """
    name = parse_spec(spec)[0]
    if not is_file(name):
        return spec
    stem = os.path.splitext(os.path.basename(name))[0]
    return os.path.basename(os.path.dirname(os.path.abspath(name))) if stem == "model" else stem


def _run_accuracy(directory):
    """(test top-1, source) from an apps.train run's metrics.json, or (None, None)."""
    try:
        with open(os.path.join(directory, "metrics.json")) as f:
            metrics = json.load(f)
        return float(metrics["test"]["top1"]), f"metrics.json ({metrics.get('dataset')}, Keras)"
    except (OSError, ValueError, KeyError, TypeError):
        return None, None


def file_kind(flatbuffer):
    """The target a .tflite file was made for.

    Args:
        flatbuffer: the file's bytes.

    Returns:
        'arm' (it holds LCE ops), 'int8' (int8 or uint8 input) or 'float'.
    """
    from effkeras.deploy import flatbuffer as files

    if any(op.type.startswith("Lce") for op in files.operators(flatbuffer)):
        return "arm"
    inputs, _ = files.io_tensors(flatbuffer)
    return "int8" if inputs and inputs[0].dtype in ("int8", "uint8") else "float"
