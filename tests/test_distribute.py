"""apps.train beyond one device: tf.distribute strategies, a two-worker cluster on localhost,
resume after a kill, gradient accumulation and mixed precision (effkeras.training.distribute).

Multi-replica runs need a fresh interpreter (the CPU is split into logical devices before
TensorFlow starts), so they run cold; each is a few steps of a tiny ResNet on generated data.
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from conftest import REPO, assert_one_error_line, run_app

# The same global batch and seed for every strategy; deterministic ops make reruns equal, so
# what differs between strategies is float summation order alone.
RUN = (
    "apps.train",
    "--model=mlperf_tiny_resnet8",
    "--dataset=synthetic",
    "--input_shape=16,16,3",
    "--batch_size=32",
    "--seed=3",
    "--deterministic",
)
LOSS_RTOL = 2e-4  # measured: ~2e-5 after 8 steps of Adam between 1 and 2 replicas


def history(output_dir):
    with open(os.path.join(output_dir, "metrics.json")) as f:
        return json.load(f)["history"]


def losses(output_dir):
    return np.array([epoch["loss"] for epoch in history(output_dir)])


def free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def start_workers(output_dir, ports, *extra, tasks=None):
    """`--strategy=multi_worker` processes on localhost, one per port (or only the task
    indices in `tasks`), worker 0 the chief."""
    cluster = {"worker": [f"localhost:{port}" for port in ports]}
    workers = []
    for index in range(len(ports)) if tasks is None else tasks:
        env = {
            **os.environ,
            "TF_CPP_MIN_LOG_LEVEL": "3",
            "PYTHONUNBUFFERED": "1",
            "TF_CONFIG": json.dumps(
                {"cluster": cluster, "task": {"type": "worker", "index": index}}
            ),
        }
        workers.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    *RUN,
                    "--strategy=multi_worker",
                    f"--output_dir={output_dir}",
                    *extra,
                ],
                cwd=REPO,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    return workers


def finish(workers, timeout=240):
    outputs = [worker.communicate(timeout=timeout)[0] for worker in workers]
    for worker, output in zip(workers, outputs):
        assert worker.returncode == 0, output[-3000:]
    return outputs


def test_two_workers_equal_one_device_and_only_the_chief_writes(tmp_path):
    args = ("--epochs=2", "--steps_per_epoch=3")
    one = run_app(*RUN, *args, f"--output_dir={tmp_path / 'one'}")
    assert one.returncode == 0, one.stderr[-3000:]
    output_dir = str(tmp_path / "cluster")
    chief, worker = finish(start_workers(output_dir, free_ports(2), *args))
    assert "task worker 0 of 2 (the chief" in chief and "task worker 1 of 2;" in worker
    assert "global batch 32 (16 per replica)" in chief
    np.testing.assert_allclose(losses(output_dir), losses(tmp_path / "one"), rtol=LOSS_RTOL)
    assert sorted(os.listdir(output_dir)) == [
        "checkpoint-2.keras",
        "logs",
        "metrics.json",
        "model.keras",
        "state.json",
    ]


def test_a_killed_cluster_resumes_from_the_committed_epoch(tmp_path):
    output_dir = str(tmp_path / "run")
    state_path = os.path.join(output_dir, "state.json")
    args = ("--epochs=2", "--steps_per_epoch=30")
    workers = start_workers(output_dir, free_ports(2), *args)
    deadline = time.time() + 240
    while not os.path.exists(state_path) and time.time() < deadline:
        assert all(w.poll() is None for w in workers), workers[0].communicate()[0][-3000:]
        time.sleep(0.05)
    workers[1].send_signal(signal.SIGKILL)  # a worker dies in epoch 2; the chief waits for it
    workers[0].send_signal(signal.SIGKILL)
    for w in workers:
        w.wait()
    with open(state_path) as f:
        committed = json.load(f)["epoch"]
    assert committed == 1

    outputs = finish(start_workers(output_dir, free_ports(2), *args))
    for output in outputs:
        assert f"Resuming mlperf_tiny_resnet8 from epoch {committed}" in output
    assert [epoch["epoch"] for epoch in history(output_dir)] == [1, 2]


def test_a_task_that_never_starts_is_waited_for_then_refused_and_sigterm_stops_the_wait(
    tmp_path,
):
    ports = free_ports(2)
    output_dir = str(tmp_path / "run")
    (alone,) = start_workers(output_dir, ports, "--epochs=1", "--cluster_timeout=4", tasks=[0])
    output = alone.communicate(timeout=120)[0]
    errors = [line for line in output.splitlines() if line.startswith("error: ")]
    assert alone.returncode == 2 and len(errors) == 1 and "Traceback" not in output, output
    assert "did not gather within 4 s" in errors[0]
    assert f"worker 1 at localhost:{ports[1]}" in errors[0]
    assert not os.path.exists(output_dir)  # a refused fresh run leaves nothing

    (waiting,) = start_workers(output_dir, ports, "--epochs=1", tasks=[0])  # 600 s by default
    # TensorFlow's start (slow on a loaded machine), then a "waiting" line every 10 s.
    watchdog = threading.Timer(180, waiting.kill)
    watchdog.start()
    lines = []
    for line in waiting.stdout:
        lines.append(line)
        if "waiting for the cluster" in line:
            break
    watchdog.cancel()
    assert waiting.poll() is None, "".join(lines)
    signalled = time.monotonic()
    waiting.send_signal(signal.SIGTERM)
    output = "".join(lines) + waiting.communicate(timeout=15)[0]
    assert time.monotonic() - signalled < 15 and waiting.returncode == -signal.SIGTERM
    assert re.search(
        rf"waiting for the cluster \(1\d s of 600 s\): worker 1 at localhost:{ports[1]}", output
    )


def test_absurd_cpu_device_counts_are_refused_at_once():
    started = time.monotonic()
    assert_one_error_line(
        run_app(*RUN, "--cpu_devices=100000", "--strategy=mirrored", cold=True),
        "--cpu_devices must be an integer from 1 to 64",
    )
    assert time.monotonic() - started < 60


def test_mirrored_with_grad_accumulation_equals_one_device(tmp_path):
    """Two CPU devices in one process, with accumulation (whose cross-replica form is
    effkeras'); a cluster without accumulation is compared above."""
    args = (*RUN, "--epochs=1", "--steps_per_epoch=4", "--grad_accumulation=2")
    one = run_app(*args, f"--output_dir={tmp_path / 'one'}")
    assert one.returncode == 0, one.stderr[-3000:]
    assert "x 2 accumulated = 64 per update" in one.stdout
    assert "learning rate 0.002 at batch 64" in one.stdout  # Adam 1e-3 at 32, scaled
    two = run_app(
        *args,
        "--strategy=mirrored",
        "--cpu_devices=2",
        f"--output_dir={tmp_path / 'two'}",
        cold=True,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    assert "MirroredStrategy with 2 replicas" in two.stdout
    np.testing.assert_allclose(losses(tmp_path / "two"), losses(tmp_path / "one"), rtol=LOSS_RTOL)


def test_mixed_bfloat16_trains_and_writes_a_float32_model(tmp_path):
    import keras

    from effkeras import saving

    result = run_app(
        "apps.train",
        "--model=recu_resnet20",
        "--dataset=synthetic",
        "--input_shape=16,16,3",
        "--epochs=1",
        "--steps_per_epoch=1",
        "--batch_size=8",
        "--dtype_policy=mixed_bfloat16",
        f"--output_dir={tmp_path}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "; mixed_bfloat16" in result.stdout
    trained = saving.load_model(str(tmp_path / "checkpoint-1.keras"))
    policies = {layer.dtype_policy.name for layer in trained.layers}
    assert "mixed_bfloat16" in policies
    final = saving.load_model(str(tmp_path / "model.keras"))
    assert {layer.dtype_policy.name for layer in final.layers} == {"float32"}
    for a, b in zip(final.get_weights(), trained.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert isinstance(final, keras.Model)


def test_quantized_kernels_compute_in_float32_under_mixed_precision():
    import keras

    from effkeras.layers import QuantConv2D

    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        layer = QuantConv2D(4, 3, kernel_quantizer="binary_channel_wise_mean_scaling")
        layer.build((None, 8, 8, 3))
    finally:
        keras.config.set_dtype_policy("float32")
    kernel = np.random.default_rng(0).normal(size=(3, 3, 3, 4)).astype("float32") / 3
    layer.kernel.assign(kernel)
    image = np.zeros((1, 3, 3, 3), "float32")
    image[0, 1, 1, 0] = 1.0  # picks kernel[1, 1, 0, :] x its scale
    scale = np.abs(kernel).mean(axis=(0, 1, 2))
    out = np.asarray(layer(image, training=False), "float32")[0, 0, 0]
    expected = np.sign(kernel[1, 1, 0]) * scale
    # bfloat16 keeps 8 bits: a float32 scale rounds once (< 2^-8), not per summand
    np.testing.assert_allclose(out, expected, rtol=2**-8)


@pytest.mark.parametrize(
    "extra, env, fragments",
    [
        (("--strategy=multi_worker",), {}, ("TF_CONFIG", "not set")),
        (("--strategy=multi_worker",), {"TF_CONFIG": "{not json"}, ("TF_CONFIG must be JSON",)),
        (
            ("--strategy=multi_worker",),
            {
                "TF_CONFIG": '{"cluster": {"worker": ["a:1"]}, '
                '"task": {"type": "worker", "index": 3}}'
            },
            ("is not in its cluster",),
        ),
        (("--dtype_policy=mixed_float16",), {}, ("mixed_float16 needs a GPU", "mixed_bfloat16")),
        (("--dtype_policy=half",), {}, ("--dtype_policy must be one of",)),
        (("--grad_accumulation=8", "--steps_per_epoch=3"), {}, ("needs at least 8 batches",)),
    ],
)
def test_bad_distribution_flags_get_one_error_line(tmp_path, monkeypatch, extra, env, fragments):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    result = run_app(*RUN, "--epochs=1", *extra, f"--output_dir={tmp_path / 'run'}")
    assert_one_error_line(result, *fragments)
    assert not os.path.exists(tmp_path / "run" / "state.json")
