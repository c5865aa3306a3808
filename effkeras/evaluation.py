"""Top-1/top-5 accuracy and confusion counts of a model on a dataset split.

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
    convolutional model runs at any size); `model` itself when it already takes that size."""
    if tuple(model.input_shape[1:3]) == (height, width):
        return model
    inputs = keras.Input((height, width, model.input_shape[-1]))
    return keras.models.clone_model(model, input_tensors=inputs, clone_function=lambda layer: layer)


def centre_crop(images, size):
    """torchvision's CenterCrop(size) of a batch (B, H, W, C)."""
    top, left = augment.five_crop_offsets(images.shape[1], images.shape[2], size)[-1]
    return images[:, top:top + size, left:left + size, :]


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
    §4.1). `model` (a Keras model or a callable) must take crop x crop inputs (see
    with_input_size). A list of arrays for a model with several outputs."""
    outputs = _predict(model, images, tta, crop)
    return outputs[0] if len(outputs) == 1 else outputs


def output_names(model, count):
    """A Keras model's output names; exit1 ... exitK for a callable (or unnamed outputs)."""
    names = list(getattr(model, "output_names", None) or [])
    return names if len(names) == count else [f"exit{k + 1}" for k in range(count)]


def ranked_classes(logits, top=5):
    """The `top` highest-scoring classes of each row of `logits` (B, classes), best first."""
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

    model: a Keras model, or a callable `images (float32 numpy B,H,W,C) -> logits` (or a list
    of logits, one per output) that takes crop x crop images when crop is given.
    crop: evaluate crop x crop centre crops (or ten crops with tta="tencrop") of the split's
    images; None: the whole images (a callable with tta="tencrop" needs it).
    One output: {"examples", "top1", "top5", "class_names", "confusion"}. K outputs: "outputs"
    (their names), <name>_top1 and <name>_top5 per output, and "confusion" by output name.
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
        return {"examples": count, "top1": scores[0].top1 / count, "top5": scores[0].top5 / count,
                "class_names": split.class_names, "confusion": scores[0].confusion.tolist()}
    names = output_names(names_from, len(scores))
    result = {"examples": count, "outputs": names}
    for name, score in zip(names, scores):
        result.update({f"{name}_top1": score.top1 / count, f"{name}_top5": score.top5 / count})
    return {**result, "class_names": split.class_names,
            "confusion": {name: score.confusion.tolist() for name, score in zip(names, scores)}}


def check_tta(tta, resize, crop):
    """Raises InputError for an unknown tta, a non-positive size or crop > resize."""
    if tta not in TTA:
        raise InputError(f"unknown test-time augmentation {tta!r}; choose from {', '.join(TTA)}")
    for name, value in (("resize", resize), ("crop", crop)):
        if value is not None and (not isinstance(value, int) or value < 1):
            raise InputError(f"--{name} must be a positive integer, got {value!r}")
    if resize is not None and crop is not None and crop > resize:
        raise InputError(f"--crop={crop} must not exceed --resize={resize}: the crops are cut "
                         f"from the resized image")


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
        raise InputError(f"{model.name} needs inputs of at least {minimum}x{minimum}, "
                         f"got --crop={crop}")
    return resize, crop


def evaluate_checkpoint(path, dataset, *, split="test", data_dir=None, batch_size=256,
                        tta="none", resize=None, crop=None, validation_size=None):
    """Accuracy of a .keras checkpoint on a dataset split ("validation": held out of the training
    files, validation_size examples; see effkeras.data).

    resize/crop: squash every image to resize x resize (aspect ratio not kept, as ERN's official
    code), then
    evaluate its centre crop x crop, or with tta="tencrop" average the logits of its ten crops.
    ERN's protocol is tta="tencrop", resize=308 (306 for ERNs34), crop=288.
    """
    check_tta(tta, resize, crop)
    model = saving.load_model(path)
    resize, crop = _sizes(model, tta, resize, crop)
    input_shape = model.input_shape[1:]
    if resize:
        input_shape = (resize, resize, input_shape[-1])
    data_split = data.load(dataset, split, input_shape=input_shape, batch_size=batch_size,
                           data_dir=data_dir, augment_with=("squash",) if resize else None,
                           validation_size=validation_size)
    check_classes(model, path, dataset, data_split)
    result = evaluate(model, data_split, tta=tta, crop=crop)
    return {"checkpoint": path, "dataset": dataset, "split": split, "tta": tta, "resize": resize,
            "crop": crop, **result}


def check_classes(model, path, dataset, data_split):
    """InputError unless every output of the Keras `model` (loaded from `path`) predicts the
    split's number of classes."""
    shapes = model.output_shape if isinstance(model.output_shape, list) else [model.output_shape]
    predicted = sorted({shape[-1] for shape in shapes})
    if predicted != [data_split.num_classes]:
        raise InputError(f"{path} predicts {'/'.join(map(str, predicted))} classes but {dataset} "
                         f"has {data_split.num_classes}; evaluate on the dataset it was trained on")


def evaluate_tflite(path, dataset, *, split="test", data_dir=None, batch_size=256, runtime=None,
                    validation_size=None):
    """Accuracy of a .tflite file on a dataset split, run in LiteRT (default), TFLite Micro
    (runtime="tflm": firmware's kernels) or, for files with LCE ops, LCE's interpreter. The
    images are fitted to the file's input shape as for the Keras model."""
    from effkeras.deploy import runtime as runtimes
    from effkeras.deploy import verify

    try:
        with open(path, "rb") as f:
            flatbuffer = f.read()
        verify.check_flatbuffer(flatbuffer)
    except (OSError, ValueError) as e:
        raise InputError(f"cannot read {path} as a .tflite file: {e}") from None
    runner = runtimes.runner(flatbuffer, runtime)
    inputs, outputs = verify.io_tensors(flatbuffer)
    if len(inputs) != 1:
        raise InputError(f"{path} takes {len(inputs)} inputs; evaluation feeds one image batch")
    data_split = data.load(dataset, split, input_shape=inputs[0].shape[1:], batch_size=batch_size,
                           data_dir=data_dir, validation_size=validation_size)
    predicted = sorted({tensor.shape[-1] for tensor in outputs})
    if predicted != [data_split.num_classes]:
        raise InputError(f"{path} predicts {'/'.join(map(str, predicted))} classes but {dataset} "
                         f"has {data_split.num_classes}; evaluate on the dataset it was trained on")
    result = evaluate(runner.predict, data_split)
    return {"checkpoint": path, "dataset": dataset, "split": split,
            "runtime": runtime or type(runner).__name__.lower(), **result}
