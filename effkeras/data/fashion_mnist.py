"""Fashion-MNIST from its idx `.gz` files (Debian package `dataset-fashion-mnist`, or a user
directory)."""

import gzip
import math
import os
import struct
import zlib

import numpy as np

from effkeras.errors import InputError

DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"
FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
CLASS_NAMES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
LAYOUT = (
    "expected train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
    "t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz; install them with "
    "`apt-get install dataset-fashion-mnist` (or `make setup` as root), or pass --data_dir"
)
UBYTE = 0x08  # idx type code for unsigned bytes


# deflate cannot shrink data more than about 1032:1, so a .gz file of n bytes holds at most this
# many times n; a header claiming more is lying, and is refused before anything is decompressed.
MAX_GZIP_RATIO = 1100


def read_idx(path, ndim):
    """Parses an idx file of unsigned bytes with `ndim` dimensions, checking header and length.

    Reads the header first and then exactly the bytes it announces, so a small file (or a gzip
    bomb) cannot make it decompress or allocate more than its own size allows.
    """
    header = 4 + 4 * ndim
    try:
        file_bytes = os.path.getsize(path)
        with gzip.open(path, "rb") as f:
            head = f.read(header)
            if len(head) < header:
                raise InputError(
                    f"{path} is truncated: {len(head)} bytes is shorter than an idx header; "
                    f"re-install or re-download it"
                )
            zero, dtype, dims = struct.unpack(">HBB", head[:4])
            if zero != 0 or dtype != UBYTE or dims != ndim:
                raise InputError(
                    f"{path} is not an idx file of {ndim}-D unsigned bytes "
                    f"(magic {head[:4].hex()}); check the file"
                )
            shape = struct.unpack(f">{ndim}I", head[4:])
            size = math.prod(shape)  # exact: numpy's prod of uint32s would overflow silently
            if size > MAX_GZIP_RATIO * file_bytes:
                raise InputError(
                    f"{path} claims shape {shape} ({size} bytes), more than a {file_bytes}-byte "
                    f"gzip file can hold; the header is corrupt, re-install or re-download it"
                )
            payload = f.read(size)
            extra = f.read(1)
    except (OSError, EOFError, zlib.error) as e:
        raise InputError(
            f"{path} is not a readable gzip idx file ({e}); re-install or re-download it"
        ) from None
    if len(payload) != size or extra:
        more = "more" if extra else f"{header + len(payload)} bytes"
        raise InputError(
            f"{path} is truncated or corrupt: {more} where shape {shape} needs "
            f"{header + size} bytes; re-install or re-download it"
        )
    if 0 in shape:
        raise InputError(
            f"{path} has shape {shape}: no {'labels' if ndim == 1 else 'images'} "
            f"(or images of zero size); re-install or re-download it"
        )
    return np.frombuffer(payload, np.uint8).reshape(shape)


def read(data_dir, split):
    """(images uint8 [N, 28, 28, 1], labels int32 [N]) of `split`."""
    data_dir = data_dir or DEFAULT_DIR
    image_file, label_file = FILES[split]
    missing = [name for name in FILES[split] if not os.path.isfile(os.path.join(data_dir, name))]
    if missing:
        raise InputError(
            f"Fashion-MNIST not found in {data_dir} (missing {', '.join(missing)}): {LAYOUT}"
        )
    image_path, label_path = os.path.join(data_dir, image_file), os.path.join(data_dir, label_file)
    images = read_idx(image_path, 3)
    labels = read_idx(label_path, 1)
    if len(images) != len(labels):
        raise InputError(
            f"{image_path} holds {len(images)} images but {label_path} holds "
            f"{len(labels)} labels; re-install or re-download them"
        )
    outside = np.flatnonzero(labels >= len(CLASS_NAMES))
    if len(outside):
        raise InputError(
            f"{label_path}: label {labels[outside[0]]} at index {outside[0]} is outside "
            f"0..{len(CLASS_NAMES) - 1} (Fashion-MNIST has {len(CLASS_NAMES)} classes; "
            f"{len(outside)} such labels); re-install or re-download it"
        )
    return images[..., None], labels.astype(np.int32)
