"""Top-1/top-5 accuracy and confusion counts of a model on a dataset split."""

import keras
import numpy as np

from effkeras import data
from effkeras.errors import InputError


def load_checkpoint(path):
    import effkeras.layers  # noqa: F401  (registers the custom layers for deserialization)

    try:
        return keras.models.load_model(path)
    except Exception as e:  # Keras raises many types for a bad file; all mean "not a model"
        raise InputError(f"cannot load {path} as a Keras model ({type(e).__name__}: {e})") from None


def evaluate(model, split):
    """Accuracy and confusion matrix of `model` over a DataSplit, in one pass."""
    confusion = np.zeros((split.num_classes, split.num_classes), np.int64)
    top1 = top5 = count = 0
    with split.errors_as_input_errors():
        for images, labels in split.dataset:
            logits = model(images, training=False)
            labels = labels.numpy()
            ranked = np.argsort(-keras.ops.convert_to_numpy(logits), axis=-1)[:, :5]
            np.add.at(confusion, (labels, ranked[:, 0]), 1)
            top1 += int(np.sum(ranked[:, 0] == labels))
            top5 += int(np.sum(np.any(ranked == labels[:, None], axis=-1)))
            count += len(labels)
    return {"examples": count, "top1": top1 / count, "top5": top5 / count,
            "class_names": split.class_names, "confusion": confusion.tolist()}


def evaluate_checkpoint(path, dataset, *, split="test", data_dir=None, batch_size=256):
    model = load_checkpoint(path)
    data_split = data.load(dataset, split, input_shape=model.input_shape[1:], batch_size=batch_size,
                           data_dir=data_dir)
    num_outputs = model.output_shape[-1]
    if num_outputs != data_split.num_classes:
        raise InputError(f"{path} predicts {num_outputs} classes but {dataset} has "
                         f"{data_split.num_classes}; evaluate on the dataset it was trained on")
    return {"checkpoint": path, "dataset": dataset, "split": split, **evaluate(model, data_split)}
