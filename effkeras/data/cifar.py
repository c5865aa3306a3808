"""CIFAR-10/100 python pickle batches, read through a restricted unpickler.

The stock unpickler runs whatever a pickle names; these files only ever need numpy arrays,
dicts, lists and bytes, so anything else is refused before it can run.
"""

import io
import os
import pickle

import numpy as np

from effkeras.errors import InputError

# (folder in the official archive, train files, test files, label key)
LAYOUTS = {
    10: ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], b"labels"),
    100: ("cifar-100-python", ["train"], ["test"], b"fine_labels"),
}
# What numpy arrays need to unpickle (numpy 1 and 2 module names), and the bytes helper that
# Python 3 protocol-2 pickles use.
ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


class RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) not in ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def load_batch(path, label_key):
    try:
        with open(path, "rb") as f:
            batch = RestrictedUnpickler(io.BytesIO(f.read()), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError,
            IndexError, KeyError) as e:
        raise InputError(f"{path} is not a valid CIFAR batch ({e}); replace it with a copy "
                         f"from the official python archive") from None
    if not isinstance(batch, dict) or b"data" not in batch or label_key not in batch:
        raise InputError(f"{path} is not a CIFAR batch: expected a dict with b'data' and {label_key}")
    data, labels = np.asarray(batch[b"data"]), np.asarray(batch[label_key])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
        raise InputError(f"{path}: data must be uint8 [N, 3072] with N labels, got "
                         f"{data.dtype} {data.shape} and {labels.shape} labels")
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)  # stored channel-planar
    return images, labels.astype(np.int32)


def read(data_dir, split, num_classes):
    """(images uint8 [N, 32, 32, 3], labels int32 [N]); `data_dir` is the extracted folder or its parent."""
    folder, train_files, test_files, label_key = LAYOUTS[num_classes]
    layout = (f"expected the python version of CIFAR-{num_classes} extracted, i.e. "
              f"{folder}/{{{','.join(train_files + test_files)}}}; pass --data_dir=<dir containing {folder}>")
    if not data_dir:
        raise InputError(f"CIFAR-{num_classes} needs --data_dir: {layout}")
    if os.path.isdir(os.path.join(data_dir, folder)):
        data_dir = os.path.join(data_dir, folder)
    names = train_files if split == "train" else test_files
    missing = [n for n in names if not os.path.isfile(os.path.join(data_dir, n))]
    if missing:
        raise InputError(f"CIFAR-{num_classes} files missing in {data_dir} ({', '.join(missing)}): {layout}")
    parts = [load_batch(os.path.join(data_dir, n), label_key) for n in names]
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    if labels.min() < 0 or labels.max() >= num_classes:
        raise InputError(f"{data_dir}: labels outside 0..{num_classes - 1}")
    return images, labels
