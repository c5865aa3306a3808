"""Fixtures that write tiny datasets in each real on-disk format (nothing is downloaded), and
the helpers tests share: run_app (apps in forks of a warm interpreter, app_server.py) and the
checks of what an app prints. Markers are registered in pyproject.toml (--strict-markers)."""

import gzip
import os
import pickle
import struct
import subprocess
import sys

import app_server
import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def strict_lce_agreement(request, monkeypatch):
    """LCE must match Keras within max_rel_diff in tests, with no allowance for sensitivity."""
    if "model_sensitivity" not in request.keywords:
        monkeypatch.setattr("effkeras.deploy.verify.sensitivity", lambda *args, **kwargs: 0.0)


def write_idx(path, array):
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture
def fashion_mnist_dir(tmp_path):
    rng = np.random.default_rng(0)
    for prefix, count in (("train", 40), ("t10k", 20)):
        write_idx(
            tmp_path / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (count, 28, 28))
        )
        write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", np.arange(count) % 10)
    return tmp_path


def write_cifar_batch(path, images, labels, label_key=b"labels"):
    """A batch as the official python archive stores it: channel-planar uint8 rows, bytes keys."""
    data = images.transpose(0, 3, 1, 2).reshape(len(images), -1)
    batch = {
        b"batch_label": b"testing batch",
        label_key: list(map(int, labels)),
        b"data": data,
        b"filenames": [b"img%d.png" % i for i in range(len(labels))],
    }
    with open(path, "wb") as f:
        pickle.dump(batch, f, protocol=2)


@pytest.fixture
def cifar10_dir(tmp_path):
    rng = np.random.default_rng(1)
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        write_cifar_batch(
            root / name,
            rng.integers(0, 256, (6, 32, 32, 3), dtype=np.uint8),
            rng.integers(0, 10, 6),
        )
    return tmp_path


@pytest.fixture
def imagenet_dir(tmp_path):
    import tensorflow as tf

    rng = np.random.default_rng(2)
    for split, count in (("train", 3), ("val", 2)):
        for name in ("n01440764", "n01443537"):
            folder = tmp_path / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                image = rng.integers(0, 256, (40 + 8 * i, 50, 3), dtype=np.uint8)
                if i % 2:
                    (folder / f"{i}.png").write_bytes(tf.io.encode_png(image).numpy())
                else:
                    (folder / f"{i}.JPEG").write_bytes(tf.io.encode_jpeg(image).numpy())
    return tmp_path


def run_app(*args, timeout=300, cold=False):
    """Runs `python -m <args>` (an app: "apps.train", ...) from the repository root.

    By default the app runs in a fork of a process that has TensorFlow and effkeras imported
    (app_server.py: ~3 s of CPU less per call, the same argv, environment, exit code and
    output). cold=True (or EFFKERAS_TEST_COLD_APPS=1 for every call) starts a fresh
    interpreter, for tests of what an app prints from a cold start.

    Args:
        *args: the module and its arguments.
        timeout: seconds before the app is killed.
        cold: run it in a fresh interpreter.

    Returns:
        The subprocess.CompletedProcess (text stdout and stderr).

    Raises:
        subprocess.TimeoutExpired: after `timeout` seconds.
    """
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    if cold or os.environ.get("EFFKERAS_TEST_COLD_APPS"):
        return subprocess.run(
            [sys.executable, "-m", *args],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    return app_server.run(args, env=env, cwd=REPO, timeout=timeout)


def assert_one_error_line(result, *fragments):
    """An app refused bad input as promised: exit code 2, exactly one `error: ` line on stderr
    containing every fragment, and no traceback anywhere. Returns the line."""
    assert result.returncode == 2, (result.stdout[-2000:], result.stderr[-3000:])
    assert "Traceback" not in result.stderr + result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-3000:]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def make_arithmetic_exact(model, seed=0):
    """Dyadic BN scales/shifts, α and float 1x1 kernels, so Keras and LCE compute the same bits.

    Binary conv outputs are integers; with power-of-two scales and shifts in eighths every later
    sum is exact in float32 whatever the order. Otherwise float re-association flips signs near
    zero, and in a deep binary net one flip cascades (measured).
    """
    import keras

    from effkeras.graph import leaf_layers

    rng = np.random.default_rng(seed)
    for layer in leaf_layers(model):
        if isinstance(layer, keras.layers.BatchNormalization):
            shape = layer.gamma.shape
            layer.set_weights(
                [
                    2.0 ** rng.integers(-2, 1, shape),
                    rng.integers(-8, 9, shape) / 8,
                    rng.integers(-8, 9, shape) / 8,
                    np.full(shape, 1 - layer.epsilon),
                ]
            )
        elif hasattr(layer, "alpha") and hasattr(layer, "tau"):
            layer.alpha.assign(2.0 ** rng.integers(-2, 1, layer.alpha.shape))
        elif isinstance(layer, keras.layers.Conv2D) and layer.kernel_size == (1, 1):
            layer.kernel.assign(rng.integers(-4, 5, layer.kernel.shape) / 4)
    return model
