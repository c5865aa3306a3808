import keras
import numpy as np
import pytest

from effkeras import models
from effkeras.errors import InputError


def test_unknown_model_lists_known_names():
    with pytest.raises(InputError, match="known models: .*resnet20"):
        models.get("resnet21")


@pytest.mark.parametrize(
    "shape, message",
    [
        ((2, 2, 3), "height and width >= 4"),
        ((32, 32), "height, width, channels"),
        ((32, 32, 2), "input channels"),
    ],
)
def test_input_shapes_the_model_cannot_take(shape, message):
    with pytest.raises(InputError, match=message):
        models.get("resnet20", input_shape=shape)


def test_resnet20_matches_he_et_al():
    model = models.get("resnet20")
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    assert trainable == 269_722  # He et al. 2016 Table 6: 0.27M, option-A shortcuts
    convs = [l for l in model.layers if isinstance(l, keras.layers.Conv2D)]
    assert len(convs) + 1 == 20  # 19 convs + the classifier
    assert models.info("resnet20").min_input_size == 4


def test_builds_at_other_shapes_and_classes():
    model = models.get("resnet20", input_shape=(28, 28, 1), num_classes=7)
    assert model.output_shape == (None, 7)
    assert model(np.zeros((2, 28, 28, 1), np.float32)).shape == (2, 7)


def test_registering_a_name_twice_fails():
    with pytest.raises(ValueError, match="twice"):
        models.register(
            "resnet20",
            family="x",
            paper="x",
            input_shape=(8, 8, 3),
            num_classes=2,
            recipe="sgd_cosine",
            deploy="float",
            min_input_size=1,
        )(lambda **k: None)


@pytest.mark.parametrize(
    "name, trainable, macs",
    [
        ("resnet18", 11_689_512, 1_815_904_768),  # He et al. Table 1: 11.7M params, 1.8 GFLOPs
        ("resnet34", 21_797_672, 3_665_592_832),  # 21.8M params, 3.6 GFLOPs
    ],
)
def test_imagenet_resnets_match_he_et_al(name, trainable, macs):
    from effkeras.graph import summary

    model = models.get(name)
    assert sum(int(np.prod(w.shape)) for w in model.trainable_weights) == trainable
    assert summary.totals(summary.summarize(model))["float_macs"] == macs


def test_import_effkeras_registers_every_custom_object(tmp_path):
    """As `import larq`: a fresh process needs only `import effkeras` to load a saved ERN (custom
    layers and quantizers), and the stage tables stay named data."""
    import subprocess
    import sys

    from effkeras.models import common, ern

    assert ern.CONFIGS["ern18"].stages[1] == common.Stage(filters=128, blocks=2, stride=2)
    path = tmp_path / "ern18_075.keras"
    models.get("ern18_075", input_shape=(32, 32, 3), num_classes=10).save(path)
    code = (
        "import sys, keras, effkeras\n"
        "model = keras.models.load_model(sys.argv[1])\n"
        "assert 'effkeras.training.trainer' not in sys.modules\n"
        "print(model.count_params())\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split()[-1] == "7850624"
