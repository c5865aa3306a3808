"""Early-exit deployment (RANet, arXiv 2003.07326): a multi-exit model cut into stages that share
its layers, one .tflite with a signature per stage (float, int8), TFLite Micro stage files with
their arenas, the runner that stops at the first confident exit, its thresholds, and refusals."""

import json
import os

import keras
import numpy as np
import pytest
from conftest import assert_one_error_line, run_app

from effkeras import deploy, models
from effkeras.data import synthetic
from effkeras.deploy import early_exit, verify
from effkeras.deploy.app_file import read_metadata
from effkeras.deploy.converter import float_ops, top1_agreement
from effkeras.deploy.flatbuffer import op_census, operators, read_model, signatures
from effkeras.early_exit import NEVER, write_thresholds
from effkeras.errors import InputError
from effkeras.graph import summary

SHAPE, CLASSES = (32, 32, 1), 10


def small_ranet():
    """The registry's small RANet, its conv kernels drawn here (He fan-out, seeded): the model's
    own initializers are unseeded Keras 3 instances shared by every layer, which give
    same-shaped layers the same values, drawn before set_random_seed can fix them."""
    model = models.get(
        "ranet_cifar", input_shape=SHAPE, num_classes=CLASSES, **models.info("ranet_cifar").small
    )
    rng = np.random.default_rng(0)
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            kh, kw, _, filters = layer.kernel.shape
            layer.kernel.assign(
                rng.normal(0, np.sqrt(2 / (kh * kw * filters)), layer.kernel.shape).astype(
                    "float32"
                )
            )
    return model


def fit_heads(model, images, labels):
    """Least-squares exit classifiers on the random features: decisive logits, as a trained
    model has (an untrained net's top-2 logits differ by less than int8 rounding moves them,
    which turns top-1 agreement into coin flips at near-ties)."""
    count = len(model.outputs)
    pools = keras.Model(
        model.input, [model.get_layer(f"exit{k}_pool").output for k in range(1, count + 1)]
    )
    target = np.eye(CLASSES)[labels] * 8 - 4
    for k, features in enumerate(pools.predict(images, verbose=0), start=1):
        x = np.concatenate([features, np.ones((len(features), 1))], axis=1)
        w = np.linalg.solve(x.T @ x + 1e-2 * np.eye(x.shape[1]), x.T @ target)
        model.get_layer(f"exit{k}").set_weights([w[:-1].astype("float32"), w[-1].astype("float32")])
    return model


@pytest.fixture(scope="module")
def data():
    train, train_labels = synthetic.read(SHAPE, CLASSES, "train")
    test, test_labels = synthetic.read(SHAPE, CLASSES, "test")
    return train.astype("float32"), train_labels, test.astype("float32"), test_labels


@pytest.fixture(scope="module")
def ranet(data):
    return fit_heads(small_ranet(), data[0], data[1])


@pytest.fixture(scope="module")
def float_file(ranet):
    return deploy.convert(ranet, "float")


@pytest.fixture(scope="module")
def int8_file(ranet, data):
    train, _, test, _ = data
    return deploy.convert(ranet, "int8", calibration=train[:200], sample=test)


@pytest.fixture(scope="module")
def tflm_file(int8_file):
    return deploy.convert(int8_file[0], "tflm")  # the int8 file's stages, cut and measured


def three_exits():
    """Exit 3 reads the image and a tensor of stage 1 directly (skipping stage 2), and a
    layer is called twice."""
    image = keras.Input((8, 8, 3), name="image")
    shared = keras.layers.Conv2D(4, 3, padding="same", name="shared")
    a = keras.layers.ReLU(name="a")(shared(image))
    exit1 = keras.layers.Dense(3, name="exit1")(keras.layers.GlobalAveragePooling2D()(a))
    b = keras.layers.Conv2D(5, 3, padding="same", activation="relu", name="b")(a)
    exit2 = keras.layers.Dense(3, name="exit2")(keras.layers.GlobalAveragePooling2D()(b))
    again = shared(keras.layers.Rescaling(0.5, name="half")(image))
    c = keras.layers.Concatenate(name="c")([a, b, again])
    exit3 = keras.layers.Dense(3, name="exit3")(keras.layers.GlobalAveragePooling2D()(c))
    keras.utils.set_random_seed(1)
    return keras.Model(image, [exit1, exit2, exit3], name="three_exits")


def images(count, shape=SHAPE, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, (count, *shape)).astype("float32")


def same_variables(stages, model):
    """The stages hold the model's own variables, no others."""
    return {id(v) for stage in stages for v in stage.weights} == {id(v) for v in model.weights}


# --- the graph split --------------------------------------------------------------------------


def test_stages_of_a_hand_built_model_share_its_layers_and_chain_to_its_outputs():
    model = three_exits()
    stages = early_exit.split_stages(model)
    assert [s.exit_name for s in stages] == ["exit1", "exit2", "exit3"]
    assert stages[0].input_names == ["image"] and stages[0].state_names == ["a"]
    assert "image" in stages[2].input_names and "a" in stages[2].input_names
    assert "a" not in stages[1].state_names and stages[1].state_names == ["b"]
    assert stages[2].state_names == []
    assert same_variables(stages, model)
    kernel = id(model.get_layer("shared").kernel)  # one variable, called in stages 1 and 3
    assert [kernel in {id(v) for v in stage.weights} for stage in stages] == [True, False, True]
    x = images(5, (8, 8, 3))
    for expected, got in zip(
        model.predict(x, verbose=0), early_exit.run_stages(stages, x), strict=True
    ):
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_ranet_stages_hand_on_only_what_later_stages_read(ranet):
    stages = early_exit.split_stages(ranet)
    assert len(stages) == 3 and same_variables(stages, ranet)
    assert sum(len(s.weights) for s in stages) == len(ranet.weights)  # each in one stage
    assert sum(s.count_params() for s in stages) == ranet.count_params()  # nothing duplicated
    read_later = [{n for s in stages[k + 1 :] for n in s.input_names} for k in range(3)]
    for k, stage in enumerate(stages):
        assert set(stage.state_names) <= read_later[k] and stage.state_names or k == 2
    x = images(4)
    for expected, got in zip(
        ranet.predict(x, verbose=0), early_exit.run_stages(stages, x), strict=True
    ):
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


# --- phones: one file, a signature per stage --------------------------------------------------


def test_float_file_has_one_signature_per_stage_and_equals_keras(ranet, float_file, tmp_path):
    flatbuffer, report = float_file
    found = signatures(flatbuffer)
    assert list(found) == ["stage_1", "stage_2", "stage_3"]
    assert report.max_rel_diff <= 1e-4 and report.exit_top1_agreement == (1.0, 1.0, 1.0)
    x = images(16, seed=3)
    actual = early_exit.Runner(flatbuffer).exit_outputs(x)
    _, rel = verify.max_diffs(ranet.predict(x, verbose=0), actual)
    assert rel <= 1e-4
    # The description: cumulative FLOPs as summary counts them, the state each stage hands on.
    costs = summary.exit_costs(ranet)
    described = early_exit.description(flatbuffer)
    assert described["exit_flops"] == [c["flops"] for c in costs]
    stages = described["stages"]
    assert [t["name"] for t in stages[0]["reads"]] == ["image"] and stages[2]["hands_on"] == []
    for stage in stages[:2]:
        for t in stage["hands_on"]:
            assert t["dtype"] == "float32" and t["bytes"] == 4 * np.prod(t["shape"])
        assert stage["held_state_bytes"] >= sum(t["bytes"] for t in stage["hands_on"])
    path = str(tmp_path / "ranet.tflite")
    deploy.save(
        path,
        flatbuffer,
        report,
        deploy.app_metadata(
            flatbuffer, report, model_name="ranet_cifar", class_names=[f"c{i}" for i in range(10)]
        ),
    )
    with open(path + ".json") as f:
        app = json.load(f)
    assert [o["signature"] for o in app["outputs"]] == ["stage_1", "stage_2", "stage_3"]
    assert app["class_names"][1] == "c1" and app["early_exit"]["stages"] == stages
    assert early_exit.Runner(path).num_exits == 3


def test_int8_file_keeps_float_state_and_agrees_on_top1(int8_file, ranet, data):
    flatbuffer, report = int8_file
    assert report.io == "float" and report.float_ops == ()
    assert float_ops(operators(flatbuffer)) == []
    for _, inputs, outputs in signatures(flatbuffer).values():
        assert {t.dtype for t in (*inputs.values(), *outputs.values())} == {"float32"}
    # 128 test images x 3 exits, each exit's logits after the chained int8 stages.
    assert report.samples == 128 and report.top1_agreement >= 0.97, report.exit_top1_agreement
    assert min(report.exit_top1_agreement) >= 0.95 and report.max_rel_diff <= 0.25


def test_tflm_stage_files_each_run_in_tflite_micro(tflm_file, int8_file, data, tmp_path):
    flatbuffer, report = tflm_file
    stages = report.stages
    assert [s["stage"] for s in stages] == [1, 2, 3]
    assert all(s["arena_bytes"] > 0 and s["file_bytes"] > 0 for s in stages)
    assert report.arena_bytes == max(s["arena_bytes"] for s in stages)
    assert report.max_lsb_diff <= 24 and stages[0]["state_out_bytes"] > 0
    files = [report.artifacts[f"_stage{k}.tflite"] for k in (1, 2, 3)]
    assert [len(f) for f in files] == [s["file_bytes"] for s in stages]
    for k, f in enumerate(files, start=1):
        assert list(signatures(f)) == [f"stage_{k}"]  # one subgraph: what TFLM runs
        assert len(read_model(f).subgraphs) == 1
    x = data[2][:8]
    micro = early_exit.Runner(list(reversed(files)), runtime="tflm").exit_outputs(x)
    lite = early_exit.Runner(int8_file[0]).exit_outputs(x)
    # TFLite Micro's reference kernels round requantizations their own way (tflm.py): a few
    # LSB per stage, which flips only near-ties.
    assert verify.max_diffs(lite, micro)[1] <= 0.1 and top1_agreement(lite, micro) >= 0.9
    path = str(tmp_path / "ranet.tflite")
    deploy.save(path, flatbuffer, report)
    assert os.path.exists(str(tmp_path / "ranet_stage3.tflite"))
    with open(tmp_path / "ranet_stage2_model_data.cc") as f:
        assert '#include "ranet_stage2_model_data.h"' in f.read()


def test_a_keras_model_to_tflm_with_int8_state():
    model = three_exits()
    flatbuffer, report = deploy.convert(model, "tflm", io="int8")
    assert report.io == "int8" and report.max_rel_diff <= 0.25
    reads = report.description["stages"][2]["reads"]
    assert {t["dtype"] for t in reads} == {"int8"} and all(t["quantization"] for t in reads)
    assert [(t["name"], t.get("from_stage")) for t in reads] == [
        ("image", None),
        ("a", 1),
        ("b", 2),
    ]
    with pytest.raises(InputError, match="take and hand on int8 tensors, not float"):
        deploy.convert(flatbuffer, "tflm", io="float")
    x = images(4, (8, 8, 3))
    micro = early_exit.Runner(flatbuffer, runtime="tflm").exit_outputs(x)
    assert verify.max_diffs(model.predict(x, verbose=0), micro)[1] <= 0.25


def test_a_keras_model_to_ethos_u_compiles_each_stage_with_vela(tmp_path):
    flatbuffer, report = deploy.convert(three_exits(), "ethos-u55-128")
    assert report.target == "ethos-u55-128" and report.io == "int8" and len(report.stages) == 3
    assert early_exit.is_early_exit_file(flatbuffer)  # Vela's input: the int8 stages, int8 state
    for k, stage in enumerate(report.stages, start=1):
        compiled = report.artifacts[f"_stage{k}.tflite"]
        assert stage["file_bytes"] == len(compiled) and stage["cpu_ops"] == 0
        assert "ethos-u" in op_census(operators(compiled))
        assert stage["cycles_total"] > 0 and stage["npu_macs"] > 0
        assert stage["inferences_per_second"] > 0
    assert "Vela cycles" in report.format()
    deploy.save(str(tmp_path / "three.tflite"), flatbuffer, report)
    assert (tmp_path / "three_stage3.tflite").read_bytes() == report.artifacts["_stage3.tflite"]


# --- the runner -------------------------------------------------------------------------------


def test_runner_stops_at_the_first_confident_exit_and_calibrates(int8_file, data, tmp_path):
    flatbuffer = int8_file[0]
    flops = early_exit.description(flatbuffer)["exit_flops"]
    test = data[2][:32]
    never = NEVER
    assert set(
        early_exit.Runner(flatbuffer, thresholds=[never, never, 0.0]).predict(test).exits
    ) == {3}
    decisions = early_exit.Runner(flatbuffer, thresholds=[0.0, 0.0, 0.0]).predict(test)
    assert set(decisions.exits) == {1} and decisions.expected_cost == flops[0]
    runner = early_exit.Runner(flatbuffer)
    with pytest.raises(InputError, match="no thresholds"):
        runner.predict(test[:1])
    runner.calibrate(data[0][:64], fractions=[0.5, 0.25, 0.25])
    assert runner.calibration["exit_fractions"][0] == pytest.approx(0.5, abs=0.05)
    decisions = runner.predict(test)
    assert all(c == flops[e - 1] for c, e in zip(decisions.costs, decisions.exits))
    budget = (flops[0] + flops[1]) / 2
    runner.calibrate(data[0][:64], budget=budget)
    assert flops[0] <= runner.calibration["expected_flops"] <= budget
    # Round trip through a thresholds file (early_exit.write_thresholds).
    path = str(tmp_path / "thresholds.json")
    runner.save_thresholds(path)
    again = early_exit.Runner(flatbuffer, thresholds=path)
    assert again.thresholds == pytest.approx(runner.thresholds)
    assert again.exit_fractions == runner.calibration["exit_fractions"]
    again.calibrate(data[0][64:128])  # to the file's exit fractions
    assert again.calibration["exit_fractions"][0] == pytest.approx(
        runner.calibration["exit_fractions"][0], abs=0.1
    )


# --- refusals ---------------------------------------------------------------------------------


def test_a_stage_fed_the_wrong_state_is_refused(float_file):
    runner = early_exit.Runner(float_file[0])
    state = runner.run_stage(1, {"image": images(1)[0]})
    good = {name: state[name] for name in runner.stage_inputs(2)}
    assert set(runner.run_stage(2, good)) >= {"exit2"}
    name, (shape, _) = next(iter(runner.stage_inputs(2).items()))
    with pytest.raises(InputError, match=f"input {name} has shape"):
        runner.run_stage(2, {**good, name: np.zeros((*shape[:-1], shape[-1] + 1), "float32")})
    with pytest.raises(InputError, match="takes float values"):
        runner.run_stage(2, {**good, name: np.zeros(shape, np.int8)})
    with pytest.raises(InputError, match=r"reads 3 tensor\(s\)"):
        runner.run_stage(2, list(good.values())[:2])
    with pytest.raises(InputError, match="which the state given lacks"):
        runner.run_stage(3, good)
    with pytest.raises(InputError, match="stage 4 does not exist"):
        runner.run_stage(4, good)


def test_thresholds_for_another_model_are_refused(float_file, ranet, tmp_path):
    flatbuffer = float_file[0]
    flops = early_exit.description(flatbuffer)["exit_flops"]
    record = {
        "model": "ranet_cifar",
        "num_exits": 4,
        "thresholds": [0.9, 0.8, 0.7, 0.0],
        "exit_flops": flops + [flops[-1] + 1],
        "expected_flops": float(flops[0]),
        "exit_fractions": [1.0, 0.0, 0.0, 0.0],
    }
    four = tmp_path / "four.json"
    four.write_text(json.dumps(record))
    with pytest.raises(InputError, match="for 4 exits but the model has 3"):
        early_exit.Runner(flatbuffer, thresholds=str(four))
    other = tmp_path / "other.json"
    other.write_text(
        json.dumps(
            {
                **record,
                "num_exits": 3,
                "thresholds": [0.9, 0.8, 0.0],
                "exit_flops": [1, 2, 3],
                "exit_fractions": [1.0, 0.0, 0.0],
            }
        )
    )
    with pytest.raises(InputError, match="calibrated for exits costing"):
        early_exit.Runner(flatbuffer, thresholds=str(other))
    with pytest.raises(InputError, match="are for 2 exits, and the model has 3"):
        early_exit.Runner(flatbuffer, thresholds=[0.5, 0.0])
    with pytest.raises(InputError, match="for 4 exits but the model has 3"):
        deploy.convert(ranet, "float", thresholds=str(four))


def test_targets_and_models_without_an_early_exit_form_are_refused(float_file):
    model = three_exits()
    with pytest.raises(InputError, match="no early-exit form"):
        deploy.convert(model, "arm")
    inputs = keras.Input((8, 8, 3))
    single = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Flatten()(inputs)))
    with pytest.raises(InputError, match="one output"):
        deploy.convert(single, "float", early_exit=True)
    with pytest.raises(InputError, match="go with an early-exit model"):
        deploy.convert(single, "float", thresholds=[0.5])
    with pytest.raises(InputError, match="give the Keras model"):
        deploy.convert(float_file[0], "ethos-u55-128")  # a given early-exit file
    with pytest.raises(InputError, match="converts to TFLite Micro stage files"):
        deploy.convert(float_file[0], "int8")
    with pytest.raises(InputError, match="the file of one stage"):
        early_exit.Runner(early_exit.stage_files(float_file[0])[0])
    with pytest.raises(InputError, match="no early-exit description"):
        early_exit.Runner(deploy.convert(model, "float", early_exit=False)[0])


# --- the app ----------------------------------------------------------------------------------


def test_apps_convert_writes_the_signature_file_and_refuses_foreign_thresholds(ranet, tmp_path):
    checkpoint = str(tmp_path / "ranet.keras")
    ranet.save(checkpoint)
    flops = [c["flops"] for c in summary.exit_costs(ranet)]
    thresholds = tmp_path / "thresholds.json"
    write_thresholds(
        str(thresholds),
        {
            "model": "ranet_cifar",
            "num_exits": 3,
            "thresholds": [0.9, 0.6, 0.0],
            "exit_flops": flops,
            "expected_flops": float(flops[1]),
            "exit_fractions": [0.3, 0.4, 0.3],
        },
    )
    output = str(tmp_path / "ranet.tflite")
    result = run_app(
        "apps.convert",
        f"--checkpoint={checkpoint}",
        "--target=float",
        f"--output={output}",
        f"--thresholds={thresholds}",
        "--json",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary_line = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary_line["exits"] == 3 and summary_line["max_rel_diff"] <= 1e-4
    with open(output + ".json") as f:
        app = json.load(f)
    assert app["early_exit"]["thresholds"] == [0.9, 0.6, 0.0]
    assert early_exit.Runner(output).thresholds == [0.9, 0.6, 0.0]  # LiteRT runs it
    # TFLite Metadata beside the stage description: a subgraph entry per stage, in the
    # subgraph's tensor order: the image where a stage reads it, the exit's logits with the
    # labels, the state handed on.
    with open(output, "rb") as f:
        flatbuffer = f.read()
    metadata = read_metadata(flatbuffer)
    assert metadata["name"] == "ranet_cifar" and "with 3 exits" in metadata["description"]
    assert metadata["labels"] == [str(i) for i in range(CLASSES)]
    assert metadata["input"]["color_space"] == "GRAYSCALE"
    assert metadata["input"]["normalization"] == {"mean": [0.0], "std": [1.0]}
    assert metadata["output"]["name"] == "logits"
    stages = metadata["subgraphs"]
    assert len(stages) == 3 and stages[0]["inputs"] == ["image"]
    for stage, (index, inputs, outputs) in zip(stages, signatures(flatbuffer).values()):
        assert stage["outputs"].count("logits") == 1 and len(stage["outputs"]) == len(outputs)
        assert len(stage["inputs"]) == len(inputs) and index == stages.index(stage)
    assert all(name != "image" for stage in stages[1:] for name in stage["inputs"])

    four = tmp_path / "four.json"
    four.write_text(
        json.dumps(
            {
                "model": "x",
                "num_exits": 4,
                "thresholds": [0.5, 0.5, 0.5, 0.0],
                "exit_flops": [1, 2, 3, 4],
                "expected_flops": 2.0,
                "exit_fractions": [0.25] * 4,
            }
        )
    )
    assert_one_error_line(
        run_app(
            "apps.convert",
            f"--checkpoint={checkpoint}",
            "--target=int8",
            f"--output={tmp_path / 'x.tflite'}",
            f"--thresholds={four}",
        ),
        "for 4 exits but the model has 3",
    )
