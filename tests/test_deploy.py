"""One deploy pipeline: float, float16, int8, tflm and Ethos-U targets, their checks and
refusals."""

import json
import shutil
import subprocess

import keras
import numpy as np
import pytest
from conftest import assert_one_error_line, run_app

from effkeras import deploy, models
from effkeras.deploy import ethos_u, runtime, tflm, verify
from effkeras.deploy.converter import float_ops
from effkeras.deploy.flatbuffer import io_tensors, operators
from effkeras.errors import InputError

REPORT_KEYS = {"target", "size_bytes", "op_census", "max_abs_diff", "max_rel_diff", "samples"}


@pytest.fixture(scope="module")
def resnet8():
    """The registry's model as test_every_model.py builds it (which leaves its deployment to
    test_tflm_arena_is_the_smallest_that_runs_and_outputs_match_litert)."""
    keras.utils.set_random_seed(0)
    return models.get("mlperf_tiny_resnet8", input_shape=(32, 32, 3), num_classes=10)


def test_targets_are_registered_and_models_name_theirs():
    assert {
        "arm",
        "float",
        "float16",
        "int8",
        "tflm",
        "ethos-u55-128",
        "ethos-u65-256",
        "ethos-u85-1024",
    } <= set(deploy.names())
    with pytest.raises(InputError, match="known targets"):
        deploy.get("ethos-u55-512")
    assert models.info("mlperf_tiny_resnet8").deploy == "tflm"
    inputs = keras.Input((8, 8, 3))
    plain = keras.Model(inputs, keras.layers.Conv2D(2, 3)(inputs), name="not_registered")
    assert deploy.default_target(plain) == "float"


def test_float_and_float16_run_in_litert_and_match_keras():
    model = models.get("resnet20", input_shape=(16, 16, 3), num_classes=10)
    flatbuffer, report = deploy.convert(model, "float")
    assert REPORT_KEYS <= set(report.as_dict())
    assert report.max_rel_diff <= 1e-4 and report.top1_agreement == 1.0
    assert report.op_census["CONV_2D"] == 19 and "DEQUANTIZE" not in report.op_census
    half, report16 = deploy.convert(model, "float16")
    assert len(half) < 0.6 * len(flatbuffer)  # float16 weights
    assert report16.op_census["DEQUANTIZE"] >= 19 and report16.max_rel_diff <= 2e-2
    (inputs,), (outputs,) = io_tensors(flatbuffer)
    assert (inputs.shape, inputs.dtype, outputs.shape) == ((1, 16, 16, 3), "float32", (1, 10))


def test_int8_every_op_is_int8_and_agrees_with_keras(resnet8):
    flatbuffer, report = deploy.convert(resnet8, "int8")
    assert report.float_ops == () and float_ops(operators(flatbuffer)) == []
    assert report.op_census == {"ADD": 3, "AVERAGE_POOL_2D": 1, "CONV_2D": 9, "FULLY_CONNECTED": 1}
    assert report.io == "int8" and "random" in report.calibration
    assert report.max_rel_diff <= 0.1 and report.top1_agreement >= 0.75
    (inputs,), (outputs,) = io_tensors(flatbuffer)
    assert inputs.dtype == outputs.dtype == "int8" and inputs.scale and outputs.scale
    # Raw pixels are integers: an input scale of ~1 keeps them exact.
    assert inputs.scale[0] == pytest.approx(1.0, rel=1e-4)

    float_io, float_report = deploy.convert(resnet8, "int8", io="float")
    (inputs,), _ = io_tensors(float_io)
    assert inputs.dtype == "float32" and float_report.float_ops == ()
    assert {"QUANTIZE", "DEQUANTIZE"} <= set(float_report.op_census)


def test_int8_calibration_of_the_wrong_shape_is_refused(resnet8):
    with pytest.raises(InputError, match="calibration set has shape"):
        deploy.convert(resnet8, "int8", calibration=np.zeros((8, 16, 16, 3), np.float32))


def test_int8_ranges_that_do_not_hold_the_sample_say_what_to_do(resnet8):
    dark = np.zeros((8, 32, 32, 3), np.float32)  # ranges of black images, checked on noise
    with pytest.raises(InputError, match=r"disagrees.*--calibration_samples.*apps.train --qat"):
        deploy.convert(resnet8, "int8", calibration=dark)


def test_an_op_without_an_int8_kernel_is_named():
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Activation("softplus", name="soft")(keras.layers.Conv2D(4, 3)(inputs))
    model = keras.Model(inputs, keras.layers.Dense(3)(keras.layers.Flatten()(x)))
    # TF 2.21's quantizer crashes on it (segmentation fault): the worker process contains it.
    with pytest.raises(InputError, match="EXP, LOG"):
        deploy.convert(model, "int8")


@pytest.mark.deploys(mlperf_tiny_resnet8=32)  # the resnet8 fixture's input size
def test_tflm_arena_is_the_smallest_that_runs_and_outputs_match_litert(resnet8, tmp_path):
    assert models.info("mlperf_tiny_resnet8").deploy == "tflm"  # its default target
    flatbuffer, report = deploy.convert(resnet8, "tflm")
    assert report.size_bytes == len(flatbuffer) and report.op_census
    assert report.float_ops == () and report.max_lsb_diff <= tflm.MAX_LSB_DIFF
    arena = report.arena_bytes
    assert arena % tflm.ARENA_ALIGNMENT == 0
    sample = verify.random_sample(resnet8, size=2)
    micro = runtime.TFLiteMicro(flatbuffer, arena_size=arena).predict(sample)
    np.testing.assert_allclose(
        micro,
        runtime.LiteRT(flatbuffer).predict(sample),
        atol=tflm.MAX_LSB_DIFF * io_tensors(flatbuffer)[1][0].scale[0],
    )
    # LiteRT's three kernel sets: TFLite Micro computes what the reference kernels compute.
    step = io_tensors(flatbuffer)[1][0].scale[0]
    kernels = {
        k: runtime.LiteRT(flatbuffer, kernels=k).predict(sample) for k in ("builtin", "reference")
    }
    np.testing.assert_array_equal(micro, kernels["reference"])
    np.testing.assert_allclose(kernels["builtin"], micro, atol=tflm.MAX_LSB_DIFF * step)
    # TFLite Micro's binding raises a bare RuntimeError or ValueError, by version.
    with pytest.raises(Exception):  # noqa: B017
        runtime.TFLiteMicro(flatbuffer, arena_size=arena - tflm.ARENA_ALIGNMENT).predict(sample)

    path = tmp_path / "resnet8.tflite"
    deploy.save(str(path), flatbuffer, report)
    header = (tmp_path / "resnet8_model_data.h").read_text()
    source = (tmp_path / "resnet8_model_data.cc").read_text()
    assert f"kModelDataLen = {len(flatbuffer)};" in header
    assert f"kTensorArenaSize = {arena};" in header
    assert '#include "resnet8_model_data.h"' in source and "alignas(16)" in source
    values = [int(v, 16) for v in source.split("{\n", 2)[2].split("}")[0].replace(",", " ").split()]
    assert bytes(values) == flatbuffer
    compiler = shutil.which("g++")
    if compiler:  # the firmware's view: it compiles
        built = subprocess.run(
            [
                compiler,
                "-std=c++17",
                "-c",
                str(tmp_path / "resnet8_model_data.cc"),
                "-o",
                str(tmp_path / "data.o"),
            ],
            capture_output=True,
            text=True,
        )
        assert built.returncode == 0, built.stderr


def lce_flatbuffer():
    from effkeras.deploy import lce
    from effkeras.layers import QuantConv2D

    inputs = keras.Input((8, 8, 32))
    outputs = QuantConv2D(
        32, 3, input_quantizer="ste_sign", kernel_quantizer="ste_sign", use_bias=False
    )(inputs)
    return lce.convert(keras.Model(inputs, outputs))[0]


def test_int8_only_targets_refuse_lce_and_float_files(resnet8):
    for target in ("tflm", "ethos-u55-128"):
        with pytest.raises(InputError, match="Larq Compute Engine ops"):
            deploy.convert(lce_flatbuffer(), target)
    float_file, _ = deploy.convert(resnet8, "float")
    with pytest.raises(InputError, match="int8 files only"):
        deploy.convert(float_file, "ethos-u55-128")


def test_missing_vela_is_one_clear_error(resnet8, monkeypatch):
    monkeypatch.setattr(ethos_u.sys, "executable", "/nonexistent/bin/python")
    monkeypatch.setattr(ethos_u.shutil, "which", lambda name: None)
    with pytest.raises(InputError, match="pip install ethos-u-vela"):
        deploy.convert(resnet8, "ethos-u55-128")


def test_convert_app_int8_tflm_and_ethos_u(tmp_path):
    """The commands of docs/microcontrollers.md for the MLPerf Tiny ResNet-8: int8 everywhere,
    all on the NPU."""
    reports = {}
    for target in ("int8", "tflm", "ethos-u55-128"):
        output = tmp_path / f"resnet8_{target}.tflite"
        run = run_app(
            "apps.convert",
            "--model=mlperf_tiny_resnet8",
            f"--target={target}",
            "--dataset=synthetic",
            "--sample_size=8",
            f"--output={output}",
            "--json",
        )
        assert run.returncode == 0, run.stderr[-3000:]
        reports[target] = report = json.loads(run.stdout.strip().splitlines()[-1])
        assert REPORT_KEYS <= set(report) and report["float_ops"] == []
        assert report["calibration"] == "200 images of synthetic (train)" and report["samples"] == 8
        metadata = json.loads((tmp_path / f"resnet8_{target}.tflite.json").read_text())
        assert metadata["model"] == "mlperf_tiny_resnet8" and metadata["target"] == target
        assert metadata["inputs"][0]["shape"] == [1, 32, 32, 3]
        assert metadata["class_names"][0] == "0"
        if target == "int8":  # a file for apps: camera pixels in, probabilities out, metadata
            assert metadata["inputs"][0]["dtype"] == "uint8"
            assert metadata["inputs"][0]["quantization"] == {"scale": [1.0], "zero_point": [0]}
            assert metadata["outputs"][0]["dtype"] == "float32"
            assert metadata["outputs"][0]["kind"] == report["outputs"] == "probabilities"
            assert metadata["tflite_metadata"]["name"] == "mlperf_tiny_resnet8"
        else:  # microcontrollers: int8 in, int8 logits out, no metadata
            assert metadata["inputs"][0]["dtype"] == metadata["outputs"][0]["dtype"] == "int8"
            assert metadata["outputs"][0]["kind"] == report["outputs"] == "logits"
            assert "tflite_metadata" not in metadata
    assert reports["tflm"]["arena_bytes"] > 0 and reports["tflm"]["max_lsb_diff"] <= 8
    assert (tmp_path / "resnet8_tflm_model_data.cc").exists()
    npu = reports["ethos-u55-128"]
    assert npu["cpu_ops"] == 0 and npu["npu_ops"] == 14 and npu["op_census"] == {"ethos-u": 1}
    assert npu["inferences_per_second"] > 0 and npu["cycles_total"] > 0
    assert npu["sram_bytes"] > 0 and npu["flash_bytes"] > 0
    for suffix in ("_int8.tflite", "_summary.csv", "_per-layer.csv"):
        assert (tmp_path / f"resnet8_ethos-u55-128{suffix}").exists()

    # The app's int8 file compiles again from --tflite (Vela gets its int8 core: the uint8
    # input, the softmax and the metadata left out), with another system config.
    again = run_app(
        "apps.convert",
        f"--tflite={tmp_path}/resnet8_int8.tflite",
        "--target=ethos-u65-256",
        f"--output={tmp_path}/u65.tflite",
        "--json",
    )
    assert again.returncode == 0, again.stderr[-3000:]
    u65 = json.loads(again.stdout.strip().splitlines()[-1])
    assert (u65["system_config"], u65["memory_mode"], u65["cpu_ops"]) == (
        "Ethos_U65_High_End",
        "Dedicated_Sram",
        0,
    )


def test_convert_app_refusals(tmp_path):
    output = tmp_path / "out.tflite"
    # An LCE flatbuffer given to Vela.
    lce_file = tmp_path / "binary.tflite"
    lce_file.write_bytes(lce_flatbuffer())
    assert_one_error_line(
        run_app(
            "apps.convert", f"--tflite={lce_file}", "--target=ethos-u55-128", f"--output={output}"
        ),
        "Larq Compute Engine ops",
    )
    # An unknown accelerator.
    assert_one_error_line(
        run_app(
            "apps.convert",
            "--model=mlperf_tiny_resnet8",
            "--target=ethos-u55-512",
            f"--output={output}",
        ),
        "--target=ethos-u55-512",
        "ethos-u55-256",
    )
    # A calibration set of the wrong shape.
    bad = tmp_path / "calibration.npy"
    np.save(bad, np.zeros((4, 28, 28, 1), np.float32))
    assert_one_error_line(
        run_app(
            "apps.convert",
            "--model=mlperf_tiny_resnet8",
            "--target=int8",
            f"--calibration_data={bad}",
            f"--output={output}",
        ),
        "has shape",
    )
    # A flag the target does not take.
    assert_one_error_line(
        run_app(
            "apps.convert",
            "--model=mlperf_tiny_resnet8",
            "--target=float",
            "--system_config=x",
            f"--output={output}",
        ),
        "--system_config",
    )
    assert not output.exists()


def test_evaluate_app_runs_tflite_files_in_litert_and_tflite_micro(tmp_path, fashion_mnist_dir):
    keras.utils.set_random_seed(0)
    model = models.get("mlperf_tiny_resnet8", input_shape=(28, 28, 1))
    path = tmp_path / "resnet8.keras"
    model.save(path)
    output = tmp_path / "resnet8.tflite"
    run = run_app(
        "apps.convert",
        f"--checkpoint={path}",
        "--target=int8",
        f"--output={output}",
        "--dataset=fashion_mnist",
        f"--data_dir={fashion_mnist_dir}",
        "--calibration_samples=16",
    )
    assert run.returncode == 0, run.stderr[-3000:]
    results = {}
    for name in ("litert", "tflm"):
        run = run_app(
            "apps.evaluate",
            f"--checkpoint={output}",
            f"--runtime={name}",
            f"--data_dir={fashion_mnist_dir}",
        )
        assert run.returncode == 0, run.stderr[-3000:]
        results[name] = json.loads(run.stdout)
    keras_result = run_app(
        "apps.evaluate", f"--checkpoint={path}", f"--data_dir={fashion_mnist_dir}"
    )
    expected = json.loads(keras_result.stdout)
    for result in results.values():
        assert result["examples"] == expected["examples"] == 20
        assert sum(map(sum, result["confusion"])) == 20
        assert abs(result["top1"] - expected["top1"]) <= 0.25  # int8 rounding flips a few
    assert_one_error_line(
        run_app("apps.evaluate", f"--checkpoint={output}", "--tta=tencrop"), "--tta"
    )


def test_ethos_u_refuses_ops_vela_leaves_for_the_cpu_unless_allowed():
    # A pooled width over Vela's 4096 limit: Vela keeps that MEAN off the NPU.
    inputs = keras.Input((2, 4200, 1))
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 1)(inputs))
    model = keras.Model(inputs, keras.layers.Dense(3)(x), name="wide")
    # Its int8 file, quantized once and compiled twice (the check follows Vela, whatever the
    # input: the Keras model path is every registered Ethos-U model's, test_every_model.py).
    int8, _ = deploy.convert(model, "int8", calibration_samples=2)
    with pytest.raises(InputError, match=r"MEAN .*Reduced axis.*--allow_cpu_ops"):
        deploy.convert(int8, "ethos-u55-128")
    _, report = deploy.convert(int8, "ethos-u55-128", allow_cpu_ops=True)
    assert report.cpu_op_types == {"MEAN": 1} and report.npu_ops == 2


def test_ethos_u_refuses_dynamic_height_and_width():
    from effkeras.models import rans

    model = rans.ran_e_gt_32(input_shape=(None, None, 1))
    with pytest.raises(InputError, match=r"fixed input shape.*\(None, None, 1\).*--input_shape"):
        deploy.convert(model, "ethos-u55-128")
