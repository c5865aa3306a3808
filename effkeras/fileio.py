"""File output: atomic writes that keep the umask's permissions, and writability checked before
the work that produces a file.

A reader (or a killed process) never sees a half-written file: everything is written to a
temporary file beside the target and moved onto it only when complete.
"""

import contextlib
import json
import math
import os
import tempfile

import numpy as np

from effkeras.errors import InputError


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


TEMP_PREFIX = ".tmp-"  # atomic_path's temporary files


@contextlib.contextmanager
def atomic_path(path):
    """Yields a temporary path beside `path`; moves it onto `path` only if the block succeeds.
    The file gets the mode a plain open() would give it (0666 minus the umask), not mkstemp's
    0600: users share models and reports."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    # Keep the suffix: keras.Model.save insists on ".keras".
    suffix = "".join(os.path.splitext(path)[1:]) or ".tmp"
    fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=suffix, dir=directory)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def plain(value):
    """Returns `value` ready for strict JSON (the project's one sanitizer).

    Dicts become dicts with string keys, tuples and lists become lists, NumPy arrays become
    (nested) lists, NumPy scalars become Python numbers, and NaN and infinities become `None`
    (JSON `null`), recursively. Anything else is returned as it is.

    Args:
        value: a number, string, `None`, NumPy scalar or array, or a dict, list or tuple of
            those (nested to any depth).

    Returns:
        The same data built from `dict`, `list`, `str`, `int`, `float`, `bool` and `None`
        only where `value` held the types above.
    """
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return plain(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def json_bytes(obj):
    """Strict JSON (NaN and infinities are an error, not invalid JSON on disk), indented."""
    return (json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + "\n").encode()


def write_json(path, obj):
    write_bytes(path, json_bytes(obj))


def write_bytes(path, data):
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)


# --- a set of files that belong together (a .tflite file, its JSON, its C array) --------------


def _journal(main):
    return os.path.join(os.path.dirname(os.path.abspath(main)), f".{os.path.basename(main)}.commit")


def _temp_prefix(path):
    return f"{TEMP_PREFIX}{os.path.basename(path)}-"


def finish_file_set(main):
    """Completes the commit of a file set that a killed `write_file_set(..., main=main)` left
    (its journal lists every file, all written in full, so the renames are carried out) and
    removes the temporaries of a set killed before its journal was written. Does nothing when
    no set was interrupted.

    Args:
        main: the set's main file (its journal and temporaries are named after it).
    """
    journal = _journal(main)
    if os.path.exists(journal):
        with open(journal) as f:
            renames = json.load(f)["renames"]
        for tmp, path in renames:
            if os.path.exists(tmp):
                os.replace(tmp, path)
        os.remove(journal)
    directory = os.path.dirname(os.path.abspath(main))
    for name in os.listdir(directory):
        if name.startswith(_temp_prefix(main)):
            os.remove(os.path.join(directory, name))


def write_file_set(files, main):
    """Writes `files` as one set: after a kill at any moment, the next write_file_set or
    finish_file_set of `main` leaves the old set or the new one, never a mix.

    Every file is first written in full to a temporary beside it (named after `main`); then a
    journal listing the renames is written atomically (the commit point); then the renames run,
    `main` last, and the journal goes. A kill before the journal leaves the old files (and
    temporaries that the next call removes); a kill after it leaves a journal that the next
    call carries out.

    Args:
        files: {path: bytes}, written in this order; every path in one folder with `main`.
        main: the set's main file (its journal is `.<main's name>.commit` beside it).
    """
    directory = os.path.dirname(os.path.abspath(main))
    os.makedirs(directory, exist_ok=True)
    finish_file_set(main)
    temps = []

    def temporary(data):
        fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(main), dir=directory)
        temps.append(tmp)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        return tmp

    paths = [path for path in files if path != main] + [main]  # the main file last
    try:
        renames = [(temporary(files[path]), os.path.abspath(path)) for path in paths]
        os.replace(temporary(json.dumps({"renames": renames}).encode()), _journal(main))
    except BaseException:
        for tmp in temps:
            if os.path.exists(tmp):
                os.remove(tmp)
        raise
    finish_file_set(main)


def check_writable(path, what="--output", directory=False):
    """InputError unless `path` can be written (a file, or with `directory` a folder), checked
    before the work that produces it: no part of the path is a file where a folder must be,
    the file is not an existing folder, and the nearest existing folder accepts new files
    (probed by creating and removing a file there, so read-only mounts are caught too)."""
    if not path:
        raise InputError(f"{what} is empty; give a path")
    path = os.path.abspath(path)
    if os.path.isdir(path) and not directory:
        raise InputError(f"{what}={path} is a folder; give a file path")
    if os.path.exists(path) and directory and not os.path.isdir(path):
        raise InputError(f"{what}={path} is a file; give a folder path")
    parent = path if directory else os.path.dirname(path)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise InputError(f"{what}={path}: {parent} is a file, not a folder; choose another path")
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-probe-", dir=parent)
        os.close(fd)
        os.remove(probe)
    except OSError as e:
        raise InputError(
            f"{what}={path}: cannot write in {parent} ({e.strerror}); choose a writable place"
        ) from None
