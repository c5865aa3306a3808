"""The scripts under tools/ that regenerate a result in docs/: the tables and plots of the
measuring tools."""

import os

import pytest


def test_early_exit_latency_table_and_plot(tmp_path):
    from tools import _report, bench_early_exit

    rows = {
        "budget 1 M FLOPs": {
            "ms_per_image": 0.5,
            "top1": 0.9,
            "flops": 1e6,
            "exit_fractions": [0.75, 0.25],
            "thresholds": [0.9, 0.0],
        },
        bench_early_exit.ALL_STAGES: {
            "ms_per_image": 2.0,
            "top1": 0.92,
            "flops": 3e6,
            "exit_fractions": [0.0, 1.0],
            "thresholds": [1e8, 0.0],
        },
    }
    text = bench_early_exit.table(rows)
    assert "| budget 1 M FLOPs | 0.50 | 0.25 | 90.00% | 1.0 M | 0.75 0.25 |" in text
    _report.write(str(tmp_path), "latency", text, rows)
    bench_early_exit.plot(rows, str(tmp_path / "latency.png"))
    assert (tmp_path / "latency.md").read_text().startswith("| setting |")
    assert (tmp_path / "latency.png").stat().st_size > 0 and (tmp_path / "latency.json").exists()


def test_lerp_psa_step_table_gives_ratios_and_plots(tmp_path):
    from tools import bench_lerp_psa

    report = {
        "batch_size": 128,
        "rounds": 3,
        "steps": 2,
        "models": [
            {
                "model": "resmlp_psa_h1",
                "trainable_params": 120_042,
                "macs": 6_587_328,
                "median_ms": 40.0,
                "table_build_ms": 2.5,
            },
            {
                "model": "resmlp_relu_h2",
                "trainable_params": 174_186,
                "macs": 11_305_920,
                "median_ms": 20.0,
            },
        ],
    }
    text = bench_lerp_psa.table(report)
    assert "| resmlp_psa_h1 | 120,042 | 6.59 M | 40.0 | 3,200 | 1.00x | 2.50 |" in text
    assert "| resmlp_relu_h2 | 174,186 | 11.31 M | 20.0 | 6,400 | 0.50x | - |" in text
    bench_lerp_psa.plot(report, str(tmp_path / "step.png"))
    assert (tmp_path / "step.png").read_bytes()[:4] == b"\x89PNG"


def test_lerp_psa_table_reads_both_stages_of_each_run(tmp_path):
    import json

    from effkeras.errors import InputError
    from tools import lerp_psa_table

    def run(directory, model, epochs, top1, seconds):
        directory.mkdir(parents=True)
        (directory / "metrics.json").write_text(
            json.dumps(
                {
                    "model": model,
                    "input_shape": [32, 32, 3],
                    "epochs": epochs,
                    "test": {"top1": top1},
                    "train_seconds": seconds,
                }
            )
        )

    run(tmp_path / "resmlp_psa_h025", "resmlp_psa_h025", 3, 0.8512, 120.0)
    run(tmp_path / "resmlp_psa_h025" / "transfer", "resmlp_psa_h025", 4, None, 60.0)
    row = lerp_psa_table.row(str(tmp_path / "resmlp_psa_h025"))
    assert row == {
        "model": "resmlp_psa_h025",
        "trainable_params": 56_970,
        "macs": 1_868_736 + 49_152 * 24,
        "nonlinear_units": 4 * 64 * (96 + 24),
        "transfer_epochs": 4,
        "epochs": 3,
        "top1": 0.8512,
        "train_seconds": 180.0,
    }
    assert (
        "| resmlp_psa_h025 | 56,970 | 3.05 M | 30,720 | 4 + 3 | 85.12% | 3.0 min |"
        in lerp_psa_table.table([row])
    )
    lerp_psa_table.plot([row], str(tmp_path / "t.png"))
    assert (tmp_path / "t.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(InputError, match="no finished training run"):
        lerp_psa_table.row(str(tmp_path / "missing"))


def test_qat_table_puts_float_ptq_and_qat_side_by_side(tmp_path, fashion_mnist_dir):
    from effkeras import training
    from effkeras.errors import InputError
    from tools import qat_table

    common = dict(
        dataset="fashion_mnist",
        data_dir=str(fashion_mnist_dir),
        batch_size=8,
        steps_per_epoch=2,
        run_eagerly=True,  # a few steps: tracing would take most of the time
        epochs=1,
        verbose=0,
    )
    training.train(
        training.TrainConfig(
            model="mlperf_tiny_resnet8", output_dir=str(tmp_path / "float"), **common
        )
    )
    training.train(
        training.TrainConfig(
            model=None,
            qat=True,
            output_dir=str(tmp_path / "qat"),
            init_from=str(tmp_path / "float" / "model.keras"),
            **common,
        )
    )
    training.train(
        training.TrainConfig(
            model=None,
            finetune=True,
            output_dir=str(tmp_path / "tuned"),
            init_from=str(tmp_path / "float" / "model.keras"),
            **common,
        )
    )
    row = qat_table.row(
        str(tmp_path / "float"),
        str(tmp_path / "qat"),
        str(tmp_path / "tuned"),
        data_dir=str(fashion_mnist_dir),
        calibration_samples=16,
        files_dir=str(tmp_path / "files"),
    )
    assert row["model"] == "mlperf_tiny_resnet8" and row["input_shape"] == [28, 28, 1]
    for kind in ("float", "tuned"):
        assert 0 <= row[f"{kind}_keras_top1"] <= 1 and 0 <= row[f"{kind}_ptq_top1"] <= 1
    assert 0 <= row["qat_top1"] <= 1 and 0 <= row["qat_keras_top1"] <= 1
    assert row["qat_max_op_lsb"] <= 1
    assert row["npu_cpu_ops"] == {"ptq": 0, "qat": 0} and row["tflm_arena_bytes"] > 0
    assert row["qat_epochs"] == 1 and row["qat_bytes"] > 0 and row["ptq_bytes"] > 0
    assert sorted(os.listdir(tmp_path / "files")) == [
        "mlperf_tiny_resnet8_float_int8.tflite",
        "mlperf_tiny_resnet8_qat_int8.tflite",
        "mlperf_tiny_resnet8_tuned_int8.tflite",
    ]
    line = qat_table.table([row]).splitlines()[-1]
    assert line.startswith(
        f"| mlperf_tiny_resnet8 | 28x28x1 | "
        f"{100 * row['float_keras_top1']:.2f}% | "
        f"{100 * row['float_ptq_top1']:.2f}% |"
    )
    gain = 100 * (row["qat_top1"] - row["tuned_keras_top1"])
    assert f"| {gain:+.2f} |" in line
    qat_table.plot([row], str(tmp_path / "qat.png"))
    assert (tmp_path / "qat.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(InputError, match="is not a QAT run of mlperf_tiny_resnet8"):
        qat_table.row(
            str(tmp_path / "float"), str(tmp_path / "float"), data_dir=str(fashion_mnist_dir)
        )


def test_binary_margins_rounds_each_binary_input_and_restores_the_model():
    import keras
    import numpy as np

    from effkeras import models
    from effkeras.errors import InputError
    from tools import binary_margins

    keras.utils.set_random_seed(0)
    model = models.get("recu_resnet20", input_shape=(16, 16, 1), num_classes=10)
    images = np.random.default_rng(0).uniform(0, 255, (24, 16, 16, 1)).astype("float32")
    before = model.predict(images, verbose=0)
    result = binary_margins.margins(model, images[:16], images[16:])
    assert len(result["near_zero"]) == 18  # ReCU-20's binary convs
    assert set(result["grid"]) == {"1/1", "1/4", "1/16", "1/64"}
    assert set(result["noise"]) == {"0.001", "0.01", "0.1", "0.5"}
    assert all(0 <= v <= 1 for v in [*result["grid"].values(), *result["noise"].values()])
    np.testing.assert_array_equal(model.predict(images, verbose=0), before)  # quantizers back
    with pytest.raises(InputError, match="not a binary net"):
        binary_margins.margins(models.get("resnet20", input_shape=(16, 16, 1)), images, images)


def test_binary_margins_agreement_by_margin():
    import numpy as np

    from tools import binary_margins

    # Margins 0.1, 1, 2, 3: the file flips the two closest decisions.
    expected = np.array([[0.1, 0.0], [1.0, 0.0], [0.0, 2.0], [3.0, 0.0]])
    actual = np.array([[0.0, 1.0], [0.0, 1.0], [0.0, 2.0], [3.0, 0.0]])
    rows = binary_margins.agreement_by_margin(expected, actual, quantiles=(0.0, 0.5, 0.75))
    assert [r["images"] for r in rows] == [4, 2, 1]
    assert [r["agreement"] for r in rows] == [0.5, 1.0, 1.0]
    assert rows[1]["margin"] == 1.5


def test_binary_margins_pairwise_agreement():
    import numpy as np

    from tools import binary_margins

    a = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 0.0]])
    b, c = a.copy(), a[:, ::-1]
    b[0] = [0.0, 1.0]
    got = binary_margins.pairwise_agreement({"keras": a, "litert": b, "tflm": c})
    assert got == {"keras vs litert": 0.75, "keras vs tflm": 0.0, "litert vs tflm": 0.25}


def test_app_files_checks_float_and_int8_files_in_mediapipe():
    import keras
    import numpy as np

    from effkeras import models
    from tools import app_files

    keras.utils.set_random_seed(0)
    model = models.get("mlperf_tiny_resnet8", input_shape=(32, 32, 1), num_classes=10)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (48, 32, 32, 1)).astype("float32")
    labels = rng.integers(0, 10, 16)
    names = [f"class {i}" for i in range(10)]
    rows = app_files.check(model, images[:16], labels, images[16:], names, "synthetic")
    assert [row["target"] for row in rows] == ["float", "int8"]
    for row in rows:
        assert row["mediapipe_names_ok"]
        assert abs(row["mediapipe_sum_min"] - 1) < 1e-5 and abs(row["mediapipe_sum_max"] - 1) < 1e-5
    assert rows[0]["mediapipe_agreement"] == 1.0
    assert rows[0]["mediapipe_top1"] == rows[0]["keras_top1"]
    assert rows[1]["vela_cpu_ops"] == 0 and rows[1]["vela_npu_ops"] > 0
    assert 0 <= rows[1]["tflm_top1"] <= 1
    table = app_files.table(rows)
    assert table.count("\n") == 3 and "| mlperf_tiny_resnet8 | int8 (uint8 in" in table


def test_ptq_sensitivity_rounds_weights_activations_and_each_point():
    import keras
    import numpy as np

    from effkeras import models, qat
    from tools import ptq_sensitivity

    keras.utils.set_random_seed(0)
    model = models.get("mlperf_tiny_resnet8", input_shape=(32, 32, 1), num_classes=10)
    images = np.random.default_rng(0).integers(0, 256, (40, 32, 32, 1)).astype("float32")
    rows = ptq_sensitivity.sensitivity(model, images[:24], images[24:])
    replica = qat.quantize_model(model, images[:24])
    points = [
        layer.name
        for layer in qat.quantized_layers(replica)
        if isinstance(layer, qat.FakeQuant) and layer.fixed_range is None
    ]
    assert [row["rounded"] for row in rows[:3]] == [
        "everything",
        "weights only",
        "activations only",
    ]
    assert sorted(row["rounded"] for row in rows[3:]) == sorted(f"all but {p}" for p in points)
    agreements = [row["agreement"] for row in rows]
    assert all(a in {k / 16 for k in range(17)} for a in agreements)  # shares of 16 images
    assert agreements[3:] == sorted(agreements[3:], reverse=True)
    table = ptq_sensitivity.table(model.name, rows)
    assert table.count("\n") == len(rows) + 1 and "| weights only |" in table
