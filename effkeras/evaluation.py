"""Top-1/top-5 accuracy and confusion counts of a model on a dataset split."""

import keras
import numpy as np

from effkeras import data, models
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


def predict_logits(model, images, *, tta="none", crop=None):
    """Logits of a batch: of its centre crop, or averaged over torchvision's ten crops
    (tta="tencrop": corners, centre and their flips, as ERN's evaluation, recu_ern.md §B6).
    `model` must take crop x crop inputs (see with_input_size)."""
    if tta == "tencrop":
        crops = augment.ten_crop(images, crop or min(images.shape[1:3]))
        total = 0.0
        for i in range(crops.shape[0]):  # one crop position at a time keeps memory at one batch
            total += keras.ops.convert_to_numpy(model(crops[i], training=False)).astype(np.float64)
        return (total / crops.shape[0]).astype(np.float32)
    if tta != "none":
        raise InputError(f"unknown test-time augmentation {tta!r}; choose from {', '.join(TTA)}")
    if crop and (crop != images.shape[1] or crop != images.shape[2]):
        images = centre_crop(images, crop)
    return keras.ops.convert_to_numpy(model(images, training=False))


def evaluate(model, split, *, tta="none", crop=None):
    """Accuracy and confusion matrix of `model` over a DataSplit, in one pass.

    crop: evaluate crop x crop centre crops (or ten crops with tta="tencrop") of the split's
    images; None: the whole images.
    """
    confusion = np.zeros((split.num_classes, split.num_classes), np.int64)
    top1 = top5 = count = 0
    if tta == "tencrop" and not crop:
        crop = min(model.input_shape[1:3])
    if crop:
        model = with_input_size(model, crop, crop)
    with split.errors_as_input_errors():
        for images, labels in split.dataset:
            logits = predict_logits(model, images, tta=tta, crop=crop)
            labels = labels.numpy()
            ranked = np.argsort(-logits, axis=-1)[:, :5]
            np.add.at(confusion, (labels, ranked[:, 0]), 1)
            top1 += int(np.sum(ranked[:, 0] == labels))
            top5 += int(np.sum(np.any(ranked == labels[:, None], axis=-1)))
            count += len(labels)
    return {"examples": count, "top1": top1 / count, "top5": top5 / count,
            "class_names": split.class_names, "confusion": confusion.tolist()}


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
                        tta="none", resize=None, crop=None):
    """Accuracy of a .keras checkpoint on a dataset split.

    resize/crop: squash every image to resize x resize (aspect ratio not kept, as ERN §B6), then
    evaluate its centre crop x crop, or with tta="tencrop" average the logits of its ten crops.
    ERN's protocol is tta="tencrop", resize=308 (306 for ERNs34), crop=288.
    """
    check_tta(tta, resize, crop)
    model = models.load_checkpoint(path)
    resize, crop = _sizes(model, tta, resize, crop)
    input_shape = model.input_shape[1:]
    if resize:
        input_shape = (resize, resize, input_shape[-1])
    data_split = data.load(dataset, split, input_shape=input_shape, batch_size=batch_size,
                           data_dir=data_dir, augment_with=("squash",) if resize else None)
    num_outputs = model.output_shape[-1]
    if num_outputs != data_split.num_classes:
        raise InputError(f"{path} predicts {num_outputs} classes but {dataset} has "
                         f"{data_split.num_classes}; evaluate on the dataset it was trained on")
    result = evaluate(model, data_split, tta=tta, crop=crop)
    return {"checkpoint": path, "dataset": dataset, "split": split, "tta": tta, "resize": resize,
            "crop": crop, **result}
