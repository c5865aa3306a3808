"""Top-1/top-5 accuracy and confusion counts of a model on a dataset split (Keras or .tflite).

The model is a Keras model or any callable `images (float32 numpy, B x H x W x C) -> logits`
(a TFLite interpreter runner, say), whose logits may be a list: one (B, classes) array per output
(early exits), each scored on its own as <output name>_top1 / _top5.
"""

import keras
import numpy as np

from effkeras import data, models, saving
from effkeras.data import augment
from effkeras.errors import InputError

TTA = ("none", "tencrop")


def with_input_size(model, height, width):
    """`model` taking (height, width) inputs, sharing its layers and weights (a fully
    convolutional model runs at any size).

    Args:
        model: a Keras model.
        height, width: the input size.

    Returns:
        A Keras model; `model` itself when it already takes that size.
    """
    if tuple(model.input_shape[1:3]) == (height, width):
        return model
    inputs = keras.Input((height, width, model.input_shape[-1]))
    return keras.models.clone_model(model, input_tensors=inputs, clone_function=lambda layer: layer)


def centre_crop(images, size):
    """torchvision's CenterCrop(size) of a batch.

    Args:
        images: a batch (B, H, W, C).
        size: the crop's side.

    Returns:
        The batch (B, size, size, C).
    """
    top, left = augment.five_crop_offsets(images.shape[1], images.shape[2], size)[-1]
    return images[:, top : top + size, left : left + size, :]


def _outputs(logits):
    """A model's output as a list of numpy arrays, one per output."""
    outputs = logits if isinstance(logits, (list, tuple)) else [logits]
    return [np.asarray(keras.ops.convert_to_numpy(output)) for output in outputs]


def _run(model, images):
    """Logits of a batch as a list of arrays: a Keras model in inference mode, or a callable
    given float32 numpy images."""
    if isinstance(model, keras.Model):
        return _outputs(model(images, training=False))
    return _outputs(model(np.asarray(keras.ops.convert_to_numpy(images), np.float32)))


def _predict(model, images, tta, crop):
    if tta == "tencrop":
        crops = augment.ten_crop(images, crop or min(images.shape[1:3]))
        totals = None
        for i in range(crops.shape[0]):  # one crop position at a time keeps memory at one batch
            outputs = [o.astype(np.float64) for o in _run(model, crops[i])]
            totals = outputs if totals is None else [t + o for t, o in zip(totals, outputs)]
        return [(t / crops.shape[0]).astype(np.float32) for t in totals]
    if tta != "none":
        raise InputError(f"unknown test-time augmentation {tta!r}; choose from {', '.join(TTA)}")
    if crop and (crop != images.shape[1] or crop != images.shape[2]):
        images = centre_crop(images, crop)
    return _run(model, images)


def predict_logits(model, images, *, tta="none", crop=None):
    """Logits of a batch: of its centre crop, or averaged over torchvision's ten crops
    (tta="tencrop": corners, centre and their flips, as ERN's evaluation, arXiv 2410.11553
    §4.1).

    Args:
        model: a Keras model or a callable, taking crop x crop inputs (see with_input_size).
        images: a batch (B, H, W, C).
        tta: "none" or "tencrop".
        crop: the crop's side; None: the whole images.

    Returns:
        An array (B, classes), or a list of them for a model with several outputs.

    Raises:
        InputError: an unknown tta.
    """
    outputs = _predict(model, images, tta, crop)
    return outputs[0] if len(outputs) == 1 else outputs


def output_names(model, count):
    """The names of a model's outputs.

    Args:
        model: a Keras model or a callable.
        count: its number of outputs.

    Returns:
        A Keras model's output names; exit1 ... exitK for a callable (or unnamed outputs).
    """
    names = list(getattr(model, "output_names", None) or [])
    return names if len(names) == count else [f"exit{k + 1}" for k in range(count)]


def ranked_classes(logits, top=5):
    """The highest-scoring classes of each row, best first.

    Args:
        logits: an array (B, classes).
        top: how many.

    Returns:
        An int array (B, top).
    """
    return np.argsort(-logits, axis=-1)[:, :top]


class _Scores:
    """Running top-1/top-5 counts and confusion matrix of one output."""

    def __init__(self, num_classes):
        self.confusion = np.zeros((num_classes, num_classes), np.int64)
        self.top1 = self.top5 = 0

    def add(self, logits, labels):
        ranked = ranked_classes(logits)
        np.add.at(self.confusion, (labels, ranked[:, 0]), 1)
        self.top1 += int(np.sum(ranked[:, 0] == labels))
        self.top5 += int(np.sum(np.any(ranked == labels[:, None], axis=-1)))


def evaluate(model, split, *, tta="none", crop=None):
    """Accuracy and confusion matrix of `model` over a DataSplit, in one pass.

    Args:
        model: a Keras model, or a callable `images (float32 numpy B,H,W,C) -> logits` (or a
            list of logits, one per output) that takes crop x crop images when crop is given.
        split: a data.DataSplit.
        tta: "none", or "tencrop" to average the logits of the ten crops.
        crop: evaluate crop x crop centre crops (or ten crops with tta="tencrop") of the
            split's images; None: the whole images (a callable with tta="tencrop" needs it).

    Returns:
        One output: {"examples", "top1", "top5", "class_names", "confusion"}. K outputs:
        "outputs" (their names), <name>_top1 and <name>_top5 per output, and "confusion" by
        output name.

    Raises:
        InputError: the split has no examples, an unknown tta, or ten crops of a callable
            without crop.
    """
    keras_model = isinstance(model, keras.Model)
    if tta == "tencrop" and not crop:
        if not keras_model:
            raise InputError("ten-crop evaluation of a callable needs crop= (its input size)")
        crop = min(model.input_shape[1:3])
    names_from = model
    if crop and keras_model:
        model = with_input_size(model, crop, crop)
    scores, count = None, 0
    with split.errors_as_input_errors():
        for images, labels in split.dataset:
            outputs = _predict(model, images, tta, crop)
            labels = np.asarray(labels)
            scores = scores or [_Scores(split.num_classes) for _ in outputs]
            for score, logits in zip(scores, outputs):
                score.add(logits, labels)
            count += len(labels)
    if not count:
        raise InputError("the split has no examples to evaluate")
    if len(scores) == 1:
        return {
            "examples": count,
            "top1": scores[0].top1 / count,
            "top5": scores[0].top5 / count,
            "class_names": split.class_names,
            "confusion": scores[0].confusion.tolist(),
        }
    names = output_names(names_from, len(scores))
    result = {"examples": count, "outputs": names}
    for name, score in zip(names, scores):
        result.update({f"{name}_top1": score.top1 / count, f"{name}_top5": score.top5 / count})
    return {
        **result,
        "class_names": split.class_names,
        "confusion": {name: score.confusion.tolist() for name, score in zip(names, scores)},
    }


def check_tta(tta, resize, crop):
    """Checks test-time augmentation settings.

    Args:
        tta: "none" or "tencrop".
        resize: the side images are squashed to, or None.
        crop: the crop's side, or None.

    Raises:
        InputError: an unknown tta, a non-positive size or crop > resize.
    """
    if tta not in TTA:
        raise InputError(f"unknown test-time augmentation {tta!r}; choose from {', '.join(TTA)}")
    for name, value in (("resize", resize), ("crop", crop)):
        if value is not None and (not isinstance(value, int) or value < 1):
            raise InputError(f"--{name} must be a positive integer, got {value!r}")
    if resize is not None and crop is not None and crop > resize:
        raise InputError(
            f"--crop={crop} must not exceed --resize={resize}: the crops are cut "
            f"from the resized image"
        )


def _sizes(model, tta, resize, crop):
    """(resize, crop) with defaults; (None, None) keeps the dataset's own test-time
    preprocessing at the model's input size."""
    if resize is None and crop is None and tta == "none":
        return None, None
    crop = crop or min(model.input_shape[1:3])
    resize = resize or crop
    check_tta(tta, resize, crop)
    try:
        minimum = models.info(model.name).min_input_size
    except InputError:  # not a registry model
        minimum = 1
    if crop < minimum:
        raise InputError(
            f"{model.name} needs inputs of at least {minimum}x{minimum}, got --crop={crop}"
        )
    return resize, crop


def evaluate_checkpoint(
    path,
    dataset,
    *,
    split="test",
    data_dir=None,
    batch_size=256,
    tta="none",
    resize=None,
    crop=None,
    validation_size=None,
):
    """Accuracy of a .keras checkpoint on a dataset split.

    ERN's protocol is tta="tencrop", resize=308 (306 for ERNs34), crop=288.

    Args:
        path: the .keras checkpoint.
        dataset: a data.load dataset name.
        split: the split scored ("validation": held out of the training files,
            validation_size examples; see effkeras.data).
        data_dir: where the dataset's files are.
        batch_size: images per batch.
        tta: "none", or "tencrop" to average the logits of the ten crops.
        resize: squash every image to resize x resize (aspect ratio not kept, as ERN's
            official code) before cropping.
        crop: evaluate the centre crop x crop (or the ten crops).
        validation_size: training examples held out as the "validation" split.

    Returns:
        {"checkpoint", "dataset", "split", "tta", "resize", "crop"} and `evaluate`'s fields.

    Raises:
        InputError: bad tta settings, a crop below the model's minimum input size, or classes
            that do not fit.
    """
    check_tta(tta, resize, crop)
    model = saving.load_model(path)
    resize, crop = _sizes(model, tta, resize, crop)
    input_shape = model.input_shape[1:]
    if resize:
        input_shape = (resize, resize, input_shape[-1])
    data_split = data.load(
        dataset,
        split,
        input_shape=input_shape,
        batch_size=batch_size,
        data_dir=data_dir,
        augment_with=("squash",) if resize else None,
        validation_size=validation_size,
    )
    check_classes(model, path, dataset, data_split)
    result = evaluate(model, data_split, tta=tta, crop=crop)
    return {
        "checkpoint": path,
        "dataset": dataset,
        "split": split,
        "tta": tta,
        "resize": resize,
        "crop": crop,
        **result,
    }


def check_classes(model, path, dataset, data_split):
    """Checks that every output of the Keras `model` predicts the split's number of classes.

    Args:
        model: the Keras model.
        path: where it was loaded from (for the message).
        dataset: the dataset's name (for the message).
        data_split: the data.DataSplit.

    Raises:
        InputError: the numbers differ.
    """
    shapes = model.output_shape if isinstance(model.output_shape, list) else [model.output_shape]
    predicted = sorted({shape[-1] for shape in shapes})
    if predicted != [data_split.num_classes]:
        raise InputError(
            f"{path} predicts {'/'.join(map(str, predicted))} classes but {dataset} "
            f"has {data_split.num_classes}; evaluate on the dataset it was trained on"
        )


def evaluate_tflite(
    path,
    dataset,
    *,
    split="test",
    data_dir=None,
    batch_size=256,
    runtime=None,
    validation_size=None,
):
    """Accuracy of a .tflite file on a dataset split. The images are fitted to the file's input
    shape as for the Keras model.

    Args:
        path: the .tflite file.
        dataset: a data.load dataset name.
        split: the split scored.
        data_dir: where the dataset's files are.
        batch_size: images per batch.
        runtime: None (LiteRT, or LCE's interpreter for files with LCE ops), "litert", "tflm"
            (firmware's kernels), "lce" or "mediapipe" (an app's file in MediaPipe's
            ImageClassifier: the result adds the category names it gave).
        validation_size: training examples held out as the "validation" split.

    Returns:
        {"checkpoint", "dataset", "split", "runtime"}, `evaluate`'s fields and "metadata" (the
        file's TFLite Metadata, app_file.read_metadata; None without).

    Raises:
        InputError: a file that cannot be read, several inputs, or classes that do not fit.
    """
    from effkeras.deploy import runtime as runtimes
    from effkeras.deploy.app_file import read_metadata
    from effkeras.deploy.flatbuffer import io_tensors, read_file

    flatbuffer = read_file(path)
    runner = runtimes.runner(flatbuffer, runtime)
    inputs, outputs = io_tensors(flatbuffer)
    if len(inputs) != 1:
        raise InputError(f"{path} takes {len(inputs)} inputs; evaluation feeds one image batch")
    data_split = data.load(
        dataset,
        split,
        input_shape=inputs[0].shape[1:],
        batch_size=batch_size,
        data_dir=data_dir,
        validation_size=validation_size,
    )
    predicted = sorted({tensor.shape[-1] for tensor in outputs})
    if predicted != [data_split.num_classes]:
        raise InputError(
            f"{path} predicts {'/'.join(map(str, predicted))} classes but {dataset} "
            f"has {data_split.num_classes}; evaluate on the dataset it was trained on"
        )
    result = evaluate(runner.predict, data_split)
    if isinstance(runner, runtimes.MediaPipe):  # the names an app shows
        result["category_names"] = runner.category_names
        runner.close()
    return {
        "checkpoint": path,
        "dataset": dataset,
        "split": split,
        "runtime": runtime or type(runner).__name__.lower(),
        **result,
        "metadata": read_metadata(flatbuffer),
    }
