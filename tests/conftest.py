"""Fixtures that write tiny datasets in each real on-disk format (nothing is downloaded)."""

import atexit
import gzip
import json
import os
import pickle
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def pytest_configure(config):
    config.addinivalue_line("markers", "model_sensitivity: let lce.convert allow for a model's own "
                                       "numerical sensitivity (other tests demand agreement)")


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
        write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (count, 28, 28)))
        write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", np.arange(count) % 10)
    return tmp_path


def write_cifar_batch(path, images, labels, label_key=b"labels"):
    """A batch as the official python archive stores it: channel-planar uint8 rows, bytes keys."""
    data = images.transpose(0, 3, 1, 2).reshape(len(images), -1)
    batch = {b"batch_label": b"testing batch", label_key: list(map(int, labels)), b"data": data,
             b"filenames": [b"img%d.png" % i for i in range(len(labels))]}
    with open(path, "wb") as f:
        pickle.dump(batch, f, protocol=2)


@pytest.fixture
def cifar10_dir(tmp_path):
    rng = np.random.default_rng(1)
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        write_cifar_batch(root / name, rng.integers(0, 256, (6, 32, 32, 3), dtype=np.uint8),
                          rng.integers(0, 10, 6))
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
    """Runs `python -m apps.<args>` from the repo; returns the CompletedProcess.

    By default the app runs in a fork of a process that has TensorFlow and effkeras imported
    ("apps in forks of a warm interpreter" below: ~3 s of CPU less per call, the same argv,
    environment, exit code and output). cold=True (or EFFKERAS_TEST_COLD_APPS=1 for every call)
    starts a fresh interpreter, for tests of what an app prints from a cold start."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    if cold or os.environ.get("EFFKERAS_TEST_COLD_APPS"):
        return subprocess.run([sys.executable, "-m", *args], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=timeout)
    return _run_in_fork(args, env=env, cwd=REPO, timeout=timeout)


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
            layer.set_weights([2.0 ** rng.integers(-2, 1, shape), rng.integers(-8, 9, shape) / 8,
                               rng.integers(-8, 9, shape) / 8, np.full(shape, 1 - layer.epsilon)])
        elif hasattr(layer, "alpha") and hasattr(layer, "tau"):
            layer.alpha.assign(2.0 ** rng.integers(-2, 1, layer.alpha.shape))
        elif isinstance(layer, keras.layers.Conv2D) and layer.kernel_size == (1, 1):
            layer.kernel.assign(rng.integers(-4, 5, layer.kernel.shape) / 4)
    return model


# --- apps in forks of a warm interpreter ----------------------------------------------------------
#
# A test run calls the apps ~90 times, and each fresh interpreter spends ~3 s of CPU importing
# TensorFlow, Keras and effkeras before it looks at its flags. A server process (started by the
# first run_app, ended with the test process) imports them once and runs no TensorFlow op, so it
# has no thread pools yet; each app call is then a fork of it, which runs `apps.<name>` as
# `__main__` with the caller's argv, environment, working directory and umask and its own fds
# 0/1/2 (stdin /dev/null, stdout and stderr to files), exits through atexit and reports its exit
# status: the caller gets what subprocess.run(..., capture_output=True, text=True) gives. What a
# fork cannot show is an interpreter's cold start (TensorFlow's start-up lines on fd 2): tests
# that check it call run_app(..., cold=True).

APP_PRELOAD = ("apps._cli", "keras", "effkeras", "effkeras.data", "effkeras.deploy",
               "effkeras.evaluation", "effkeras.models", "effkeras.graph.summary", "effkeras.training")
_PER_TEST_ENV = ("PYTEST_CURRENT_TEST", "TF_CONFIG")  # per test: passed on, not compared


def serve_apps(socket_path, repo):
    """The server: `python -c "import conftest; conftest.serve_apps(SOCKET, REPO)"`."""
    import importlib

    sys.path[:] = [repo] + [p for p in sys.path if p not in ("", repo, os.path.dirname(__file__))]
    os.chdir(repo)
    for name in APP_PRELOAD:
        importlib.import_module(name)
    signal.signal(signal.SIGTERM, _app_server_stop)
    parent = os.getppid()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(socket_path)
    listener.listen(16)
    listener.settimeout(1.0)
    print("ready", flush=True)
    os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
    try:
        while True:
            _reap_apps()
            try:
                conn, _ = listener.accept()
            except socket.timeout:
                if os.getppid() != parent:  # the test process is gone
                    return
                continue
            try:
                conn.settimeout(30)
                data = b""
                while not data.endswith(b"\n"):
                    chunk = conn.recv(65536)
                    if not chunk:
                        raise ConnectionError("the client went away")
                    data += chunk
                request = json.loads(data)
                conn.settimeout(None)
            except (OSError, ValueError):
                conn.close()
                continue
            sys.stdout.flush()
            sys.stderr.flush()
            if os.fork() == 0:
                _run_app_in_this_fork(listener, conn, request)  # never returns
            conn.close()
    finally:
        _reap_apps()


def _app_server_stop(signum, frame):
    raise SystemExit(0)


def _reap_apps():
    """Waits for the forks that have ended, so that their CPU time counts as the server's
    children's (and the server's as the test process's)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _run_app_in_this_fork(listener, conn, request):
    """Becomes `python -m <module> <args>` and exits as the interpreter would."""
    import random
    import runpy

    code = 1
    try:
        listener.close()
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        conn.sendall(f"pid {os.getpid()}\n".encode())
        os.chdir(request["cwd"])
        os.umask(request["umask"])
        os.environ.clear()
        os.environ.update(request["env"])
        for fd, path, flags in ((0, os.devnull, os.O_RDONLY),
                                (1, request["stdout"], os.O_WRONLY | os.O_TRUNC),
                                (2, request["stderr"], os.O_WRONLY | os.O_TRUNC)):
            opened = os.open(path, flags)
            os.dup2(opened, fd)
            os.close(opened)
        random.seed()  # fresh random states, as a new interpreter has
        np.random.seed()
        module, *args = request["argv"]
        sys.argv = ["-m", *args]  # run_module sets argv[0] to the module's file, as -m does
        try:
            runpy.run_module(module, run_name="__main__", alter_sys=True)
            code = 0
        except SystemExit as e:
            if e.code is None or isinstance(e.code, int):
                code = (e.code or 0) & 0xFF
            else:
                print(e.code, file=sys.stderr)
                code = 1
        except BaseException:  # noqa: BLE001 - what the interpreter does with it
            sys.excepthook(*sys.exc_info())
            code = 1
        threading._shutdown()  # joins non-daemon threads, as the interpreter's exit does
        atexit._run_exitfuncs()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        try:
            conn.sendall(f"exit {code}\n".encode())
        finally:
            os._exit(code)


class _AppServer:
    """The client's handle on the server: start, run one app, close."""

    def __init__(self, env, repo):
        self.folder = tempfile.mkdtemp(prefix="effkeras_apps_")
        self.socket_path = os.path.join(self.folder, "socket")
        self.env = {k: v for k, v in env.items() if k not in _PER_TEST_ENV}
        tests = os.path.dirname(os.path.abspath(__file__))
        bootstrap = (f"import sys; sys.path.insert(0, {tests!r}); import conftest; "
                     f"conftest.serve_apps(*sys.argv[1:])")
        self.process = subprocess.Popen(
            [sys.executable, "-c", bootstrap, self.socket_path, repo], cwd=repo, env=env,
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        if self.process.stdout.readline().strip() != b"ready":  # after the imports, or died
            self.close()
            raise RuntimeError("the app server did not start")
        atexit.register(self.close)

    def close(self):
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process.stdout.close()
        shutil.rmtree(self.folder, ignore_errors=True)

    def run(self, args, env, cwd, timeout):
        command = [sys.executable, "-m", *args]
        paths = []
        for suffix in (".out", ".err"):
            fd, path = tempfile.mkstemp(dir=self.folder, suffix=suffix)
            os.close(fd)
            paths.append(path)
        umask = os.umask(0o022)
        os.umask(umask)
        request = {"argv": list(args), "env": env, "cwd": cwd, "umask": umask,
                   "stdout": paths[0], "stderr": paths[1]}
        deadline = None if timeout is None else time.monotonic() + timeout
        pid, lines, buffer = None, [], b""
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
                try:
                    conn.connect(self.socket_path)
                except OSError as e:  # nothing ran: the caller may run it elsewhere
                    raise _AppServerGone(e) from e
                conn.sendall(json.dumps(request).encode() + b"\n")
                while len(lines) < 2:  # "pid N", then "exit N"
                    if deadline is not None:
                        conn.settimeout(max(deadline - time.monotonic(), 0.001))
                    try:
                        chunk = conn.recv(4096)
                    except socket.timeout:
                        if pid is not None:
                            try:
                                os.kill(pid, signal.SIGKILL)
                            except ProcessLookupError:
                                pass
                        raise subprocess.TimeoutExpired(command, timeout, *map(_read_text, paths))
                    if not chunk:  # it died without a word: killed by a signal
                        break
                    *done, buffer = (buffer + chunk).split(b"\n")
                    lines += [line.decode() for line in done]
                    if lines and pid is None:
                        pid = int(lines[0].split()[1])
            returncode = int(lines[1].split()[1]) if len(lines) > 1 else -signal.SIGKILL
            return subprocess.CompletedProcess(command, returncode, *map(_read_text, paths))
        finally:
            for path in paths:
                os.unlink(path)


class _AppServerGone(Exception):
    pass


def _read_text(path):
    with open(path) as f:  # text mode, universal newlines: as subprocess.run(text=True)
        return f.read()


_app_server = None
_app_server_failed = False
_app_server_lock = threading.Lock()  # run_app may be called from several threads


def _run_in_fork(args, env, cwd, timeout=None):
    """subprocess.run([python, "-m", *args], cwd=cwd, env=env, capture_output=True, text=True,
    timeout=timeout), run as a fork of the app server (a real subprocess where the server cannot
    start, or for an environment other than the one it started with)."""
    global _app_server, _app_server_failed
    with _app_server_lock:
        if _app_server is None and not _app_server_failed:
            try:
                _app_server = _AppServer(env, cwd)
            except (OSError, RuntimeError):
                _app_server_failed = True
        server = _app_server
    stable_env = {k: v for k, v in env.items() if k not in _PER_TEST_ENV}
    if server is not None and stable_env == server.env:
        try:
            return server.run(args, env, cwd, timeout)
        except _AppServerGone:  # it died (e.g. killed for memory): cold runs from now on
            with _app_server_lock:
                _app_server_failed = True
                _app_server = None
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)
