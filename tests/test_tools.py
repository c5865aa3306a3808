"""The user scripts under tools/ that run where the project cannot (a Raspberry Pi)."""

import os
import subprocess

from conftest import REPO

SCRIPT = os.path.join(REPO, "tools", "rpi_benchmark.sh")


def test_rpi_benchmark_tabulates_lce_benchmark_model_output(tmp_path):
    fake = tmp_path / "lce_benchmark_model"
    # Prints what lce_benchmark_model prints, with a latency that depends on --num_threads.
    fake.write_text('#!/bin/sh\nfor a in "$@"; do case $a in --num_threads=*) n=${a#*=};; esac; done\n'
                    'echo "count=50 first=1 curr=1 min=1 max=2 avg=3 std=0"\n'
                    'echo "Inference timings in us: Init: 100, First inference: 9000, '
                    'Warmup (avg): 8000, Inference (avg): $((12000 / n))"\n')
    fake.chmod(0o755)
    model = tmp_path / "ern18.tflite"
    model.write_bytes(b"x" * 1234)
    result = subprocess.run(["bash", SCRIPT, "-b", str(fake), "-t", "1 4", str(model)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "| ern18.tflite | 1234 | 12.0 | 3.0 |"


def test_rpi_benchmark_without_a_binary_says_what_to_do(tmp_path):
    result = subprocess.run(["bash", SCRIPT, "-b", str(tmp_path / "missing"), "m.tflite"],
                            capture_output=True, text=True)
    assert result.returncode == 2 and "pass it with -b" in result.stderr
