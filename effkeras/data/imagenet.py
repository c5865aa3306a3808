"""ImageNet-style folders: <data_dir>/{train,val}/<class name>/<image>.{jpg,jpeg,png}.

(ImageNet's sharded TFRecord files: effkeras.data.tfrecord.)"""

import contextlib
import faulthandler
import os
import re
import sys
import threading

import numpy as np
import tensorflow as tf

from effkeras.errors import InputError

SPLIT_FOLDERS = {"train": "train", "test": "val"}
EXTENSIONS = (".jpg", ".jpeg", ".png")
LAYOUT = (
    "expected <data_dir>/train/<class>/*.jpg and <data_dir>/val/<class>/*.jpg "
    "(one sub-folder per class, the same class folders in both splits)"
)
OR_SHARDS = (
    "; or ImageNet's TFRecord shards <data_dir>/train-00000-of-01024 ... and "
    "validation-00000-of-00128 ... (python -m tools.imagenet_shards writes them from "
    "such folders)"
)
# TensorFlow tells a pipeline's file errors apart by these types (a bad image, a file deleted or
# made unreadable after listing); anything else is re-raised as it is.
FILE_ERRORS = (
    tf.errors.InvalidArgumentError,
    tf.errors.NotFoundError,
    tf.errors.PermissionDeniedError,
    tf.errors.FailedPreconditionError,
)


def _images_in(folder):
    return sorted(
        e.name for e in os.scandir(folder) if e.name.lower().endswith(EXTENSIONS) and e.is_file()
    )


def list_files(data_dir, split):
    """(paths, labels, class names); labels index the sorted class folders of the train split.

    Every class folder of the split must hold an image, and a val folder must name a train class:
    otherwise the model would silently learn (or be scored on) fewer classes than it predicts.
    """
    if not data_dir:
        raise InputError(f"imagenet needs --data_dir: {LAYOUT}{OR_SHARDS}")
    train_dir = os.path.join(data_dir, "train")
    split_dir = os.path.join(data_dir, SPLIT_FOLDERS[split])
    for d in (train_dir, split_dir):
        if not os.path.isdir(d):
            raise InputError(f"{d} does not exist: {LAYOUT}{OR_SHARDS}")
    classes = sorted(e.name for e in os.scandir(train_dir) if e.is_dir())
    if len(classes) < 2:
        raise InputError(
            f"{train_dir} has {len(classes)} class folders, at least 2 are needed: {LAYOUT}"
        )
    if split_dir != train_dir:
        extra = sorted(set(e.name for e in os.scandir(split_dir) if e.is_dir()) - set(classes))
        if extra:
            raise InputError(
                f"{os.path.join(split_dir, extra[0])} is not a class of {train_dir} "
                f"({len(extra)} such folders); move or delete it: {LAYOUT}"
            )
    paths, labels = [], []
    for label, name in enumerate(classes):
        class_dir = os.path.join(split_dir, name)
        files = _images_in(class_dir) if os.path.isdir(class_dir) else []
        if not files:
            raise InputError(
                f"{class_dir} holds no .jpg/.jpeg/.png images; add images of class {name} "
                f"or remove the class from both splits: {LAYOUT}"
            )
        paths += [os.path.join(class_dir, file) for file in files]
        labels += [label] * len(files)
    return paths, labels, classes


def decode(path):
    image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
    image.set_shape([None, None, 3])
    return image


def _reason(error):
    """The decoder's own words from a TensorFlow error, without node names and op tags."""
    lines = [
        line
        for line in error.message.splitlines()
        if line.strip()
        and not line.startswith(("Graph execution error", "Detected at node", "\t", "  "))
    ]
    text = re.sub(
        r"\{\{[^}]*\}\}|\[Op:\w+\]|\[\[.*?\]\]|\bname:\s*\S*\s*$",
        "",
        lines[-1] if lines else error.message,
    )
    return " ".join(text.split()) or type(error).__name__


def first_undecodable(paths):
    """(path, reason) of the first file TensorFlow cannot read or decode, or None.

    The slow path after a pipeline failed: every file is decoded again, in parallel, and the
    first one missing from the results is decoded once more on its own for the reason.
    """
    decoded = np.zeros(len(paths), bool)
    checks = (
        tf.data.Dataset.from_tensor_slices(list(paths))
        .enumerate()
        .map(lambda i, path: (i, tf.shape(decode(path))), num_parallel_calls=tf.data.AUTOTUNE)
        .ignore_errors()
        .batch(1024)
    )
    for indices, _ in checks:
        decoded[indices.numpy()] = True
    for index in np.flatnonzero(~decoded):
        try:
            decode(paths[index])
        except FILE_ERRORS as e:
            return paths[index], _reason(e)
    return None


class DecoderMessages:
    """Holds back what image decoders print to fd 2 while a pipeline runs.

    libjpeg prints its message to C's stderr before TensorFlow turns the failure into an error,
    and TensorFlow logs some decode failures itself, so a corrupt image would put a stray line
    before the app's one `error:` line. While active, fd 2 feeds a pipe; a thread passes every
    line on at once except decoder lines, which wait: they are dropped when the failure becomes
    an InputError (whose message carries the decoder's reason) and printed otherwise.
    """

    # libjpeg's messages (its jerror.h table) and TensorFlow's decoder log lines.
    PATTERN = re.compile(
        rb"(jpeg_mem|jpeg_handle|png_io|gif_io|bmp_io|decode_image_op)\.cc:\d+\]"
        rb"|^(Bogus |Corrupt JPEG|Invalid |Unsupported |Premature end|Improper call|Not a JPEG|"
        rb"Warning: |Huffman|Missing Huffman|Quantization table|Arithmetic table|Sampling factors|"
        rb"Maximum supported image|Empty (JPEG image|input file)|JPEG datastream|Didn't expect|"
        rb"Application transferred|Unknown Adobe|Scan script|DCT coefficient|Too many color|"
        rb"Image too wide|Buffer passed to JPEG|Input file read error|Insufficient memory|"
        rb"IDCT output block|Fractional sampling|Requested feature|libpng )"
    )
    MAX_HELD = 1000  # past this, decoder lines pass on at once

    def __init__(self):
        self.held, self.saved, self.out, self.thread = [], None, None, None

    def __enter__(self):
        try:
            sys.stderr.flush()
            self.saved = self.out = os.dup(2)  # `out` outlives `saved`: the pump may still write
        except (OSError, ValueError, AttributeError):  # no fd 2 to filter
            return self
        read_end, write_end = os.pipe()
        os.dup2(write_end, 2)
        os.close(write_end)
        self.thread = threading.Thread(target=self._pump, args=(read_end,), daemon=True)
        self.thread.start()
        if faulthandler.is_enabled():  # a crash dump must not wait in the pipe for a dead thread
            faulthandler.enable(file=self.saved, all_threads=True)
        return self

    def _pump(self, read_end):
        pending = b""
        with os.fdopen(read_end, "rb", buffering=0) as pipe:
            while chunk := pipe.read(65536):
                *lines, pending = re.split(rb"(?<=[\n\r])", pending + chunk)
                if pending and not self.PATTERN.search(pending):
                    lines.append(pending)  # a partial line (a progress bar): pass it on now
                    pending = b""
                for line in lines:
                    if self.PATTERN.search(line) and len(self.held) < self.MAX_HELD:
                        self.held.append(line)
                    else:
                        self._write(line)
        if pending:
            self.held.append(pending)

    def _write(self, line):
        try:
            os.write(self.out, line)
        except OSError:  # the real stderr is gone; nothing else to tell
            pass

    def restore(self, keep_held):
        if self.saved is None:
            return
        try:
            sys.stderr.flush()
        except (OSError, ValueError, AttributeError):
            pass
        os.dup2(self.saved, 2)  # closes the pipe's last write end: the pump drains it and stops
        if faulthandler.is_enabled():
            faulthandler.enable(file=2, all_threads=True)
        self.thread.join(timeout=10)
        if keep_held:
            for line in self.held:
                self._write(line)
        if not self.thread.is_alive():  # else a child process still holds the pipe: leave the fd
            os.close(self.saved)
        self.saved = None

    def __exit__(self, *exc_info):
        self.restore(keep_held=True)


@contextlib.contextmanager
def decode_errors_as_input_errors(paths):
    """Turns TensorFlow's read/decode failure inside a pipeline into an InputError naming the file.

    The decoders' own stderr lines are held back meanwhile (DecoderMessages), so the app prints
    one `error:` line; a failure that no file explains is re-raised unchanged.
    """
    messages = DecoderMessages()
    with messages:
        try:
            yield
        except FILE_ERRORS:
            found = first_undecodable(paths)
            if found is None:
                raise
            messages.restore(keep_held=False)
            bad, reason = found
            raise InputError(
                f"{bad} is corrupt, truncated or unreadable ({reason}); replace or delete it"
            ) from None
