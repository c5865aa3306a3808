"""LCE conversion: binary convs become LceBconv2d, outputs match Keras, bad graphs are refused."""

import os

import keras
import numpy as np
import pytest
from conftest import run_app
from keras import ops

from effkeras import deploy
from effkeras.deploy import flatbuffer as fb
from effkeras.deploy import lce
from effkeras.deploy.report import Report
from effkeras.errors import InputError
from effkeras.layers import QuantConv2D, QuantDense

BINARY = dict(
    input_quantizer="ste_sign",
    kernel_quantizer="ste_sign",
    kernel_constraint="weight_clip",
    use_bias=False,
)


def _stop_gradient_sign(x):
    return x + ops.stop_gradient(ops.sign(x) - x)


class StopGradientSignConv(QuantConv2D):
    """A binary conv (1-bit quantizers) whose signs use the x + stop_gradient(q - x) trick,
    which LCE does not recognise: it stays a float CONV_2D."""

    def call(self, inputs):
        return ops.conv(
            _stop_gradient_sign(inputs), _stop_gradient_sign(self.kernel), padding=self.padding
        )


def _randomize_batchnorms(model, seed=0):
    """Random BN statistics, so that no pre-sign value sits exactly on 0 (a tie may flip)."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.gamma.shape[0]
            layer.set_weights(
                [
                    rng.normal(size=n),
                    rng.normal(size=n),
                    rng.normal(size=n),
                    rng.uniform(0.5, 2.0, size=n),
                ]
            )
    return model


def binary_stack(middle=None):
    """conv -> BN -> binary conv (same, one-padded) -> BN -> max pool -> binary conv (valid)."""
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(32, 3, padding="same")(inputs)
    x = keras.layers.BatchNormalization()(x)
    middle = middle or QuantConv2D(
        32, 3, padding="same", pad_values=1.0, name="bconv_same", **BINARY
    )
    x = middle(x)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.MaxPooling2D()(x)
    outputs = QuantConv2D(32, 3, padding="valid", name="bconv_valid", **BINARY)(x)
    return _randomize_batchnorms(keras.Model(inputs, outputs))


def sample(seed=1):
    return np.random.default_rng(seed).normal(size=(4, 16, 16, 3)).astype("float32")


def test_binary_stack_becomes_lce_ops_and_matches_keras():
    flatbuffer, result = lce.convert(binary_stack(), sample=sample())
    census = result.op_census
    assert census["LceQuantize"] >= 1
    assert census["LceBconv2d"] == 2 == result.bconv_ops == result.binary_layers
    assert census["LceBMaxPool2d"] == 1
    assert "CONV_2D" in census  # the float stem
    assert result.max_rel_diff <= 1e-5
    assert result.float_fallback == ()
    assert result.size_bytes == len(flatbuffer)
    assert "LceBconv2d 2" in result.format()


def test_stop_gradient_sign_is_refused_by_name():
    # The refused conv comes first and has the same shape as the good one after it: only
    # matching by weights names the right layer.
    bad = StopGradientSignConv(32, 3, padding="same", name="stop_gradient_conv", **BINARY)
    with pytest.raises(InputError, match="stop_gradient_conv") as error:
        lce.convert(binary_stack(middle=bad), sample=sample())
    assert "bconv_valid" not in str(error.value)

    bad = StopGradientSignConv(32, 3, padding="same", name="stop_gradient_conv", **BINARY)
    _, result = lce.convert(binary_stack(middle=bad), sample=sample(), allow_float_fallback=True)
    assert result.float_fallback == ("stop_gradient_conv",)
    assert (result.binary_layers, result.bconv_ops) == (2, 1)
    assert result.max_rel_diff <= 1e-5


def binary_dense_model():
    inputs = keras.Input((4, 4, 32))
    x = keras.layers.Flatten()(inputs)
    outputs = QuantDense(8, name="binary_dense", **BINARY)(x)
    return keras.Model(inputs, outputs)


def test_binary_dense_has_no_lce_kernel():
    with pytest.raises(InputError, match="binary_dense"):
        lce.convert(binary_dense_model())
    _, result = lce.convert(binary_dense_model(), allow_float_fallback=True)
    assert result.float_fallback == ("binary_dense",) and result.bconv_ops == 0


def test_failed_conversion_writes_no_file(tmp_path):
    path = str(tmp_path / "model.tflite")
    with pytest.raises(InputError):
        flatbuffer, report = lce.convert(binary_dense_model())
        deploy.save(path, flatbuffer, report)
    report = Report(
        target="arm", size_bytes=0, op_census={}, max_abs_diff=None, max_rel_diff=None, samples=0
    )
    with pytest.raises(ValueError):
        deploy.save(path, b"not a flatbuffer", report)
    assert os.listdir(tmp_path) == []


def test_disagreement_with_keras_is_an_error():
    other = binary_stack()  # same architecture, other weights: a wrong flatbuffer for it
    other.set_weights([w + 0.5 for w in other.get_weights()])
    with pytest.raises(RuntimeError, match="disagrees"):
        lce.convert(binary_stack(), sample=sample(), reference=other)


@pytest.mark.model_sensitivity
def test_chaotic_model_passes_within_its_own_sensitivity():
    from effkeras import models

    keras.utils.set_random_seed(0)
    model = models.get("recu_resnet20")  # untrained: flips signs under 1e-4 input noise
    _, result = lce.convert(model)
    assert result.bconv_ops == result.binary_layers == 18
    assert result.max_rel_diff > lce.MAX_REL_DIFF  # sign flips at near-ties...
    assert result.max_rel_diff <= 2 * result.sensitivity  # ...as Keras under input noise


def test_op_census_reads_builtin_and_custom_ops():
    flatbuffer, result = lce.convert(binary_stack(), sample=sample())
    operators = fb.operators(flatbuffer)
    assert fb.op_census(operators) == result.op_census
    bconv = next(op for op in operators if op.type == "LceBconv2d")
    assert bconv.inputs[1].shape == (32, 3, 3, 1)  # OHWI, 32 input channels in one int32 word


def _convert_app(*flags, cold=False):
    """apps.convert; cold=True: in a fresh interpreter (conftest.run_app)."""
    return run_app("apps.convert", *flags, cold=cold)


def test_convert_app_on_a_checkpoint(tmp_path):
    checkpoint = str(tmp_path / "stack.keras")
    binary_stack().save(checkpoint)
    output = tmp_path / "out" / "stack.tflite"
    run = _convert_app(f"--checkpoint={checkpoint}", "--target=arm", f"--output={output}")
    assert run.returncode == 0, run.stderr
    assert output.read_bytes()[4:8] == b"TFL3"
    assert "LceBconv2d 2" in run.stdout and "bconv_ops:" in run.stdout

    # A model LCE cannot accelerate fails with one line and leaves no file (from a cold start:
    # nothing of TensorFlow's start-up on stderr either).
    dense = str(tmp_path / "dense.keras")
    binary_dense_model().save(dense)
    refused = tmp_path / "dense.tflite"
    run = _convert_app(f"--checkpoint={dense}", f"--output={refused}", cold=True)
    assert run.returncode == 2
    assert (
        run.stderr.strip().startswith("error: 1 binary layer(s)") and "binary_dense" in run.stderr
    )
    assert len(run.stderr.strip().splitlines()) == 1
    assert not refused.exists()


@pytest.mark.parametrize(
    "flags, message",
    [
        ([], "exactly one of --model"),
        (["--model=resnet20", "--checkpoint=x.keras"], "exactly one of --model"),
        (["--checkpoint=/nonexistent/model.keras"], "is not a file"),
        (["--model=no_such_model"], "known models: "),
        (["--model=resnet20", "--target=riscv"], "--target"),
    ],
)
def test_convert_app_bad_input(tmp_path, flags, message):
    output = tmp_path / "model.tflite"
    run = _convert_app(*flags, f"--output={output}")
    assert run.returncode == 2
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], run.stderr
    assert not output.exists()
