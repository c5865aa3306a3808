"""The apps: results on stdout, bad input as one `error:` line with exit code 2.

run_app forks a process that has TensorFlow imported; the `cold=True` runs below start each app
(train, summary, evaluate; convert: test_lce.py) in a fresh interpreter, where TensorFlow's own
start-up lines would show on stderr."""

import json

import pytest
from conftest import assert_one_error_line, run_app


def test_unknown_model_lists_known_names():
    assert_one_error_line(
        run_app("apps.train", "--model=resnet21", cold=True), "known models:", "resnet20"
    )


def test_missing_and_empty_data_dirs(tmp_path):
    assert_one_error_line(
        run_app("apps.train", "--model=resnet20", f"--data_dir={tmp_path}"),
        "apt-get install dataset-fashion-mnist",
    )
    assert_one_error_line(
        run_app(
            "apps.train", "--model=resnet20", "--dataset=imagenet", f"--data_dir={tmp_path}/nowhere"
        ),
        "one sub-folder per class",
    )


def test_corrupt_idx_file(fashion_mnist_dir):
    (fashion_mnist_dir / "train-labels-idx1-ubyte.gz").write_bytes(b"\x1f\x8b garbage")
    assert_one_error_line(
        run_app("apps.train", "--model=resnet20", f"--data_dir={fashion_mnist_dir}"),
        "train-labels-idx1-ubyte.gz",
    )


def test_bad_shapes_and_flags():
    assert_one_error_line(
        run_app("apps.summary", "--model=resnet20", "--input_shape=2,2,3"),
        "needs height and width >= 4",
    )
    assert_one_error_line(
        run_app("apps.summary", "--model=resnet20", "--input_shape=big"),
        "--input_shape must look like",
    )
    assert_one_error_line(run_app("apps.train", "--model=resnet20", "--epochs=0"), "epochs")
    assert_one_error_line(run_app("apps.summary", "--modle=resnet20", cold=True), "modle")


def test_summary_json():
    result = run_app("apps.summary", "--model=resnet20", "--json")
    assert result.returncode == 0, result.stderr
    totals = json.loads(result.stdout)["totals"]
    assert totals["total_params"] == 271_098 and totals["params"] == {"32bit": 271_098}


def test_train_then_evaluate_with_confusion_counts(tmp_path, imagenet_dir):
    trained = run_app(
        "apps.train",
        "--model=resnet20",
        "--dataset=imagenet",
        f"--data_dir={imagenet_dir}",
        "--input_shape=16,16,3",
        "--epochs=1",
        "--batch_size=2",
        f"--output_dir={tmp_path}",
    )
    assert trained.returncode == 0, trained.stderr[-2000:]
    assert json.loads(trained.stdout.splitlines()[-1])["epochs"] == 1
    evaluated = run_app(
        "apps.evaluate",
        f"--checkpoint={tmp_path}/model.keras",
        "--dataset=imagenet",
        f"--data_dir={imagenet_dir}",
        f"--output={tmp_path}/eval.json",
    )
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    result = json.loads(evaluated.stdout)
    assert result["examples"] == 4 and sum(map(sum, result["confusion"])) == 4
    assert result == json.loads((tmp_path / "eval.json").read_text())
    mismatch = run_app(
        "apps.evaluate", f"--checkpoint={tmp_path}/model.keras", "--dataset=synthetic"
    )
    assert_one_error_line(mismatch, "predicts 2 classes")


@pytest.mark.parametrize("content", [None, b"not a keras file"])
def test_evaluate_bad_checkpoint(tmp_path, content):
    path = tmp_path / "model.keras"
    if content is not None:
        path.write_bytes(content)
    assert_one_error_line(
        run_app("apps.evaluate", f"--checkpoint={path}", cold=content is None), "model.keras"
    )


def test_summary_of_a_binary_model_counts_one_bit_params_and_macs():
    result = run_app("apps.summary", "--model=recu_resnet20", "--json")
    assert result.returncode == 0, result.stderr
    totals = json.loads(result.stdout)["totals"]
    # 18 binary 3x3 convs: 16->16 (x6) at 32x32, 16->32 + 32->32 (x5) at 16x16,
    # 32->64 + 64->64 (x5) at 8x8.
    assert totals["params"]["1bit"] == 9 * (
        6 * 16 * 16 + 16 * 32 + 5 * 32 * 32 + 32 * 64 + 5 * 64 * 64
    )
    assert totals["binary_macs"] == 9 * (
        6 * 16 * 16 * 32 * 32 + (16 * 32 + 5 * 32 * 32) * 16 * 16 + (32 * 64 + 5 * 64 * 64) * 8 * 8
    )
    table = run_app("apps.summary", "--model=recu_resnet20").stdout
    assert "1-bit params" in table and "binarized MACs: 98.8%" in table


def test_a_checkpoint_compiled_with_a_training_loss_loads_for_inference(tmp_path):
    """A run compiled with effkeras.training's label-smoothing loss (the RAN-e recipe) saves it in
    the .keras file; apps.convert and apps.evaluate load the model without importing training."""
    import subprocess
    import sys

    path = tmp_path / "smoothed.keras"
    save = (
        "import keras; from effkeras import models; from effkeras.training import losses\n"
        "m = models.get('mlperf_tiny_resnet8', input_shape=(32, 32, 1), num_classes=10)\n"
        "m.compile(loss=losses.SparseLabelSmoothingCrossEntropy(0.1), optimizer='adam')\n"
        f"m.save({str(path)!r})\n"
    )
    load = (
        "import sys; from effkeras import saving\n"
        f"m = saving.load_model({str(path)!r})\n"
        "assert 'effkeras.training' not in sys.modules\n"
        "print(m.name)\n"
    )
    for code in (save, load):
        run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.strip().splitlines()[-1] == "mlperf_tiny_resnet8"
