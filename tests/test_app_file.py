"""Files for apps (deploy/app_file.py): TFLite Metadata, uint8 camera pixels and probabilities,
checked by the client Android apps use, MediaPipe Tasks' ImageClassifier."""

import keras
import numpy as np
import pytest
from conftest import assert_one_error_line, run_app

from effkeras import deploy, models
from effkeras.data.fashion_mnist import CLASS_NAMES
from effkeras.deploy import app_file, runtime
from effkeras.deploy.flatbuffer import io_tensors, op_census, operators
from effkeras.errors import InputError
from effkeras.graph import passes
from effkeras.graph.passes.rgb_input import LUMA_CODES

NAMES = tuple(CLASS_NAMES)


@pytest.fixture(scope="module")
def app_files():
    """A grayscale ResNet-8 converted as apps.convert converts it for apps: float and int8,
    RGB input (luma first), probabilities, TFLite Metadata."""
    keras.utils.set_random_seed(0)
    model = models.get("mlperf_tiny_resnet8", input_shape=(32, 32, 1), num_classes=10)
    images = np.random.default_rng(0).integers(0, 256, (56, 32, 32, 1)).astype(np.float32)
    calibration, sample = images[:32], images[32:]
    files = {}
    for target, options in (("float", {}), ("int8", {"io": "uint8"})):
        flatbuffer, report = deploy.convert(
            model,
            target,
            calibration=calibration,
            sample=sample,
            outputs="probabilities",
            rgb_input=True,
            **options,
        )
        assert (report.outputs, report.rgb_input) == ("probabilities", True)
        info = deploy.app_info(model, "mlperf_tiny_resnet8", class_names=NAMES, report=report)
        files[target] = deploy.with_metadata(flatbuffer, info)
    return model, sample, files


@pytest.mark.parametrize("target", ["float", "int8"])
def test_mediapipe_classifies_the_file_alone(app_files, target):
    model, sample, files = app_files
    classifier = runtime.runner(files[target], "mediapipe")
    scores = classifier.predict(sample)  # gray images, fed as RGB copies
    classifier.close()
    assert classifier.category_names == list(NAMES)
    np.testing.assert_allclose(scores.sum(axis=1), 1.0, atol=1e-5)
    expected = app_file.softmax(model.predict(sample, verbose=0))
    litert = runtime.LiteRT(files[target]).predict(passes.to_rgb(sample))
    # MediaPipe runs the file's own kernels on the same pixels.
    np.testing.assert_allclose(scores, litert, atol=1e-6)
    if target == "float":
        np.testing.assert_allclose(scores, expected, atol=1e-5)
        assert (scores.argmax(1) == expected.argmax(1)).all()
    else:  # int8 rounding: scores within a few percent, top-1 mostly the same
        assert np.abs(scores - expected).max() < 0.1
        assert np.mean(scores.argmax(1) == expected.argmax(1)) >= 0.75


def test_metadata_reads_back(app_files):
    _, _, files = app_files
    for target, normalization, dtype in (
        ("float", {"mean": [0.0], "std": [1.0]}, "float32"),
        ("int8", None, "uint8"),
    ):
        meta = app_file.read_metadata(files[target])
        assert meta["name"] == "mlperf_tiny_resnet8" and meta["min_parser_version"] == "1.0.0"
        assert "MLPerf" in meta["description"] or "mlperf" in meta["description"]
        assert meta["labels"] == list(NAMES) and meta["labels_file"] == "labels.txt"
        assert meta["input"]["color_space"] == "RGB" and "luma" in meta["input"]["description"]
        assert meta["input"]["normalization"] == normalization
        assert meta["input"]["value_range"] == [0.0, 255.0]
        assert meta["output"] == {"name": "probabilities", "value_range": [0.0, 1.0]}
        inputs, outputs = io_tensors(files[target])
        assert (inputs[0].dtype, inputs[0].shape, outputs[0].dtype) == (
            dtype,
            (1, 32, 32, 3),
            "float32",
        )
    inputs, _ = io_tensors(files["int8"])
    assert (inputs[0].scale, inputs[0].zero_point) == ((1.0,), (0,))  # raw pixels
    assert app_file.read_metadata(app_file.without_app_head(files["int8"])) is None


def test_mcu_targets_take_the_int8_core(app_files):
    """tflm and ethos-u read an app's int8 file without its head: int8 in, int8 logits out,
    computing what the app file computes before its softmax."""
    _, sample, files = app_files
    core = app_file.without_app_head(files["int8"])
    census = op_census(operators(core))
    assert not {"QUANTIZE", "DEQUANTIZE", "SOFTMAX"} & set(census)
    inputs, outputs = io_tensors(core)
    assert inputs[0].dtype == outputs[0].dtype == "int8"
    rgb = passes.to_rgb(sample)
    logits = runtime.LiteRT(core).predict(rgb)
    np.testing.assert_allclose(
        app_file.softmax(logits), runtime.LiteRT(files["int8"]).predict(rgb), atol=1e-5
    )
    # TFLite Micro's reference kernels: within one output step of LiteRT's.
    micro = runtime.TFLiteMicro(core).predict(rgb)
    assert np.abs(micro - logits).max() <= outputs[0].scale[0] * 1.001
    assert app_file.without_app_head(core) == core  # nothing left to take off


def test_refusals(app_files):
    model, sample, files = app_files
    core = app_file.without_app_head(files["int8"])
    with pytest.raises(InputError, match="need float outputs"):
        app_file.with_probabilities(core)
    with pytest.raises(InputError, match="uint8 input"):
        app_file.with_uint8_pixels(core)
    gray, _ = deploy.convert(model, "float", sample=sample)
    info = deploy.app_info(model, "mlperf_tiny_resnet8", class_names=NAMES)
    with pytest.raises(InputError, match="rgb_input"):
        app_file.with_metadata(gray, info)
    with pytest.raises(InputError, match="class names"):
        app_file.with_metadata(
            app_file.without_app_head(files["float"]),
            app_file.AppInfo(name="m", description="d", class_names=("a", "b")),
        )
    with pytest.raises(InputError, match="unknown outputs"):
        deploy.convert(model, "float", outputs="scores")
    with pytest.raises(InputError, match="rgb_input takes a model"):
        passes.rgb_input(passes.rgb_input(model))


def test_rgb_input_keeps_gray_pixels_exact():
    """The luma weights sum to exactly 1 (127 / 127): a gray pixel reaches the model as is."""
    assert sum(LUMA_CODES) == 127
    image = keras.Input((4, 4, 1))
    model = keras.Model(image, keras.layers.Identity()(image), name="identity")
    rgb = passes.rgb_input(model)
    assert rgb.input_shape == (None, 4, 4, 3) and rgb.name == "identity"
    gray = np.arange(16, dtype=np.float32).reshape(1, 4, 4, 1) * 17
    np.testing.assert_allclose(rgb.predict(passes.to_rgb(gray), verbose=0), gray, atol=1e-4)
    red = np.zeros((1, 4, 4, 3), np.float32)
    red[..., 0] = 255
    np.testing.assert_allclose(rgb.predict(red, verbose=0), 255 * 38 / 127, rtol=1e-6)


def test_int8_check_compares_on_the_pixels_the_file_reads():
    """A uint8-input file reads whole pixels: the conversion's check gives Keras the same
    ones, so a sample with fractional pixels (a resized image) reports what its rounded copy
    reports, and the runner says which values the file read."""
    keras.utils.set_random_seed(0)
    image = keras.Input((6, 6, 1))
    x = keras.layers.Conv2D(4, 3, activation="relu")(image)
    model = keras.Model(image, keras.layers.Dense(3)(keras.layers.Flatten()(x)))
    pixels = np.random.default_rng(1).integers(0, 256, (40, 6, 6, 1)).astype(np.float32)
    calibration, sample = pixels[:24], pixels[24:]
    fractional = np.minimum(sample + 0.4, 255.0)
    (flatbuffer, whole), (_, resized) = [
        deploy.convert(model, "int8", calibration=calibration, sample=s, io="uint8")
        for s in (sample, fractional)
    ]
    assert resized.max_abs_diff == whole.max_abs_diff > 0
    assert resized.top1_agreement == whole.top1_agreement
    np.testing.assert_array_equal(runtime.LiteRT(flatbuffer).as_read(fractional), sample)


@pytest.mark.parametrize("content", [b"", b"not a model", "truncated"])
def test_unreadable_tflite_is_one_error_line(app_files, tmp_path, content):
    """A text, empty or truncated .tflite: one error line from apps.convert and apps.evaluate,
    no output written."""
    path = tmp_path / "bad.tflite"
    path.write_bytes(app_files[2]["int8"][:3000] if content == "truncated" else content)
    output = tmp_path / "out.tflite"
    convert = run_app("apps.convert", f"--tflite={path}", "--target=tflm", f"--output={output}")
    assert_one_error_line(convert, "cannot read", str(path))
    assert not output.exists()
    assert_one_error_line(run_app("apps.evaluate", f"--checkpoint={path}"), "cannot read")
