"""Apps in forks of a warm interpreter: the server behind conftest.run_app.

A test run calls the apps ~90 times, and each fresh interpreter spends ~3 s of CPU importing
TensorFlow, Keras and effkeras before it looks at its flags. A server process (started by the
first `run`, ended with the test process) imports them once and runs no TensorFlow op, so it
has no thread pools yet; each app call is then a fork of it, which runs `apps.<name>` as
`__main__` with the caller's argv, environment, working directory and umask and its own fds
0/1/2 (stdin /dev/null, stdout and stderr to files), exits through atexit and reports its exit
status: the caller gets what subprocess.run(..., capture_output=True, text=True) gives. What a
fork cannot show is an interpreter's cold start (TensorFlow's start-up lines on fd 2): tests
that check it call conftest.run_app(..., cold=True).

The server process starts as `python -c "import app_server; app_server.serve_apps(...)"` with
this folder on sys.path; it imports nothing of pytest.
"""

import atexit
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

# Imported once by the server, before any fork.
APP_PRELOAD = (
    "apps._cli",
    "keras",
    "effkeras",
    "effkeras.data",
    "effkeras.deploy",
    "effkeras.evaluation",
    "effkeras.models",
    "effkeras.graph.summary",
    "effkeras.training",
)
_PER_TEST_ENV = ("PYTEST_CURRENT_TEST", "TF_CONFIG")  # per test: passed on, not compared


def serve_apps(socket_path, repo):
    """Runs the server until the test process ends or sends SIGTERM.

    Started as `python -c "import app_server; app_server.serve_apps(SOCKET, REPO)"`; prints
    "ready" on stdout once the modules of APP_PRELOAD are imported and it listens.

    Args:
        socket_path: the Unix socket to listen on (one JSON request per connection).
        repo: the repository root, first on sys.path and the working directory.
    """
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
        for fd, path, flags in (
            (0, os.devnull, os.O_RDONLY),
            (1, request["stdout"], os.O_WRONLY | os.O_TRUNC),
            (2, request["stderr"], os.O_WRONLY | os.O_TRUNC),
        ):
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
        bootstrap = (
            f"import sys; sys.path.insert(0, {tests!r}); import app_server; "
            f"app_server.serve_apps(*sys.argv[1:])"
        )
        self.process = subprocess.Popen(
            [sys.executable, "-c", bootstrap, self.socket_path, repo],
            cwd=repo,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
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
        request = {
            "argv": list(args),
            "env": env,
            "cwd": cwd,
            "umask": umask,
            "stdout": paths[0],
            "stderr": paths[1],
        }
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
                        raise subprocess.TimeoutExpired(
                            command, timeout, *map(_read_text, paths)
                        ) from None
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


def run(args, env, cwd, timeout=None):
    """subprocess.run([python, "-m", *args], ...), run as a fork of the app server.

    A real subprocess where the server cannot start, or for an environment other than the one it
    started with (TF_CONFIG and PYTEST_CURRENT_TEST aside: they are passed on).

    Args:
        args: the module (e.g. "apps.train") and its arguments.
        env: the app's environment.
        cwd: its working directory (the server starts there, as the repository root).
        timeout: seconds before the app is killed; None: no limit.

    Returns:
        What subprocess.run(..., capture_output=True, text=True) returns.

    Raises:
        subprocess.TimeoutExpired: after `timeout` seconds, with the output so far.
    """
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
    return subprocess.run(
        [sys.executable, "-m", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
