"""evaluation.evaluate on Keras models and on plain callables, with one output or several."""

import keras
import numpy as np
import pytest

from effkeras import data, evaluation
from effkeras.errors import InputError


def split(size=8, batch_size=32):
    return data.load("synthetic", "test", input_shape=(size, size, 3), batch_size=batch_size)


def two_exits(size=None):
    keras.utils.set_random_seed(3)
    inputs = keras.Input((size, size, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(inputs / 255.0)
    pooled = keras.layers.GlobalAveragePooling2D()
    early = keras.layers.Dense(10, name="exit1")(pooled(x))
    late = keras.layers.Dense(10, name="exit2")(
        pooled(keras.layers.Conv2D(4, 3, padding="same")(x))
    )
    return keras.Model(inputs, [early, late])


def single(model, index):
    return keras.Model(model.input, model.outputs[index])


@pytest.mark.parametrize("tta, crop", [("none", None), ("none", 6), ("tencrop", 6)])
def test_a_callable_scores_as_the_keras_model(tta, crop):
    model = single(two_exits(), 1)
    expected = evaluation.evaluate(model, split(), tta=tta, crop=crop)
    seen = []

    def runner(images):
        assert isinstance(images, np.ndarray) and images.dtype == np.float32
        seen.append(images.shape[1:3])
        return model(images).numpy()

    result = evaluation.evaluate(runner, split(), tta=tta, crop=crop)
    assert result == expected and set(result) == {
        "examples",
        "top1",
        "top5",
        "class_names",
        "confusion",
    }
    assert set(seen) == {(crop or 8, crop or 8)}


def test_several_outputs_are_scored_each():
    model = two_exits()
    result = evaluation.evaluate(model, split())
    assert result["outputs"] == ["exit1", "exit2"] and result["examples"] == 128
    for k, name in enumerate(result["outputs"]):
        alone = evaluation.evaluate(single(model, k), split())
        assert (result[f"{name}_top1"], result[f"{name}_top5"]) == (alone["top1"], alone["top5"])
        assert result["confusion"][name] == alone["confusion"]
    as_callable = evaluation.evaluate(
        lambda images: [o.numpy() for o in model(images)], split(), tta="tencrop", crop=6
    )
    assert as_callable["outputs"] == ["exit1", "exit2"]
    assert as_callable == evaluation.evaluate(model, split(), tta="tencrop", crop=6)


def test_ten_crop_of_a_callable_needs_its_crop_size():
    with pytest.raises(InputError, match="crop="):
        evaluation.evaluate(lambda images: images[:, 0, 0, :], split(), tta="tencrop")


def test_checkpoint_with_two_outputs(tmp_path):
    model = two_exits(8)
    model.save(tmp_path / "two.keras")
    result = evaluation.evaluate_checkpoint(str(tmp_path / "two.keras"), "synthetic", batch_size=64)
    assert result["outputs"] == ["exit1", "exit2"] and 0 <= result["exit2_top1"] <= 1
