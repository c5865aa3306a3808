"""Fashion-MNIST from its idx `.gz` files (Debian package `dataset-fashion-mnist`, or a user dir)."""

import gzip
import os
import struct
import zlib

import numpy as np

from effkeras.errors import InputError

DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"
FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
         "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}
CLASS_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
               "Sneaker", "Bag", "Ankle boot"]
LAYOUT = ("expected train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
          "t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz; install them with "
          "`apt-get install dataset-fashion-mnist` (or `make setup` as root), or pass --data_dir")
UBYTE = 0x08  # idx type code for unsigned bytes


def read_idx(path, ndim):
    """Parses an idx file of unsigned bytes with `ndim` dimensions, checking header and length."""
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as e:
        raise InputError(f"{path} is not a readable gzip idx file ({e}); "
                         f"re-install or re-download it") from None
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise InputError(f"{path} is truncated: {len(raw)} bytes is shorter than an idx header")
    zero, dtype, dims = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype != UBYTE or dims != ndim:
        raise InputError(f"{path} is not an idx file of {ndim}-D unsigned bytes "
                         f"(magic {raw[:4].hex()}); check the file")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    expected = header + int(np.prod(shape))
    if len(raw) != expected:
        raise InputError(f"{path} is truncated or corrupt: {len(raw)} bytes, expected {expected} "
                         f"for shape {shape}")
    return np.frombuffer(raw, np.uint8, offset=header).reshape(shape)


def read(data_dir, split):
    """(images uint8 [N, 28, 28, 1], labels int32 [N]) of `split`."""
    data_dir = data_dir or DEFAULT_DIR
    image_file, label_file = FILES[split]
    missing = [name for name in FILES[split] if not os.path.isfile(os.path.join(data_dir, name))]
    if missing:
        raise InputError(f"Fashion-MNIST not found in {data_dir} (missing {', '.join(missing)}): "
                         f"{LAYOUT}")
    images = read_idx(os.path.join(data_dir, image_file), 3)
    labels = read_idx(os.path.join(data_dir, label_file), 1)
    if len(images) != len(labels):
        raise InputError(f"{data_dir}: {len(images)} images but {len(labels)} labels for {split}")
    return images[..., None], labels.astype(np.int32)
