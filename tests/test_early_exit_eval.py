"""Early-exit evaluation: threshold calibration on hand-worked arrays, the budget bisection, the
validation split held out of the training files, the thresholds file, and apps.evaluate
--early_exit end to end on a small RANet."""

import json
import math
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from conftest import assert_one_error_line, run_app

from effkeras import data, early_exit
from effkeras.early_exit import exits
from effkeras.errors import InputError
from effkeras.evaluation import early_exit as ee

F32 = np.float32


def outputs(confidence, correct=None, source="train"):
    confidence = np.asarray(confidence, F32)
    correct = np.ones(confidence.shape, bool) if correct is None else np.asarray(correct, bool)
    return ee.ExitOutputs(confidence, correct, correct, source, np.arange(confidence.shape[1]))


def test_the_sweep_is_the_official_39_points():
    assert len(exits.SWEEP) == 39 and exits.SWEEP[0] == 0.05 and exits.SWEEP[19] == 1.0
    assert exits.SWEEP[-1] == pytest.approx(1.95)
    np.testing.assert_allclose(exits.exit_proportions(0.5, 3), [4 / 7, 2 / 7, 1 / 7])
    np.testing.assert_allclose(exits.exit_proportions(2.0, 3), [1 / 7, 2 / 7, 4 / 7])
    np.testing.assert_allclose(exits.exit_proportions(1.0, 4), [0.25] * 4)
    assert exits.exit_proportions(exits.R_LOW, 8)[0] == 1.0
    assert exits.exit_proportions(exits.R_HIGH, 8)[-1] == 1.0


def test_thresholds_worked_by_hand():
    # r = 1, three exits, six validation samples: m_1 = m_2 = floor(6 / 3) = 2.
    confidence = [
        [0.9, 0.8, 0.7, 0.6, 0.5, 0.4],
        [0.95, 0.3, 0.85, 0.75, 0.65, 0.2],
        [0.1, 0.1, 0.1, 0.1, 0.1, 0.1],
    ]
    # Exit 1: the 2nd most confident is 0.8 (samples 0, 1 leave). Exit 2 among samples 2..5
    # (0.85, 0.75, 0.65, 0.2): the 2nd is 0.75 (samples 2, 3 leave). The rest answer at exit 3.
    thresholds = exits.calibrate_thresholds(
        np.asarray(confidence, F32), exits.exit_proportions(1.0, 3)
    )
    assert thresholds.tolist() == [float(F32(0.8)), float(F32(0.75)), 0.0]
    taken = exits.exits_taken(np.asarray(confidence, F32), thresholds)
    assert taken.tolist() == [0, 0, 1, 1, 2, 2]
    # Applied to four test samples: a leaves at 1, b at 2 (0.8 >= 0.75), c at 3, d at 1 (a tie
    # with t_1 passes); b's answer at exit 2 is wrong.
    test = np.asarray([[0.9, 0.5, 0.5, 0.8], [0.2, 0.8, 0.7, 0.1], [0.3, 0.3, 0.1, 0.9]], F32)
    correct = [[1, 1, 1, 1], [1, 0, 1, 1], [1, 1, 1, 1]]
    scored = exits.apply_thresholds(test, np.asarray(correct, bool), thresholds, [10, 30, 60])
    assert scored == {
        "exit_fractions": [0.5, 0.25, 0.25],
        "top1": 0.75,
        "flops": 0.5 * 10 + 0.25 * 30 + 0.25 * 60,
    }


def test_ties_take_more_and_an_exit_short_of_samples_is_never_taken():
    # r = 0.5, seven samples: pi = 4/7, 2/7, 1/7 so m_1 = 4 and m_2 = 2 (exact products, which a
    # bare floor of 7 * (4/7) in floating point could take as 3).
    confidence = np.asarray(
        [[0.9, 0.9, 0.9, 0.6, 0.6, 0.6, 0.3], [0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.99], [0.5] * 7], F32
    )
    thresholds = exits.calibrate_thresholds(confidence, exits.exit_proportions(0.5, 3))
    # The 4th most confident at exit 1 is 0.6, tied with two more: six samples leave. Exit 2
    # wants 2 of the one left, so nobody leaves there.
    assert thresholds.tolist() == [float(F32(0.6)), exits.NEVER, 0.0]
    scored = exits.apply_thresholds(confidence, np.ones((3, 7), bool), thresholds, [1, 2, 3])
    assert scored["exit_fractions"] == [6 / 7, 0.0, 1 / 7]


def test_without_ties_each_sweep_point_takes_exactly_floor_n_pi_k():
    rng = np.random.default_rng(0)
    count, flops = 200, [10, 20, 35, 50]
    validation = outputs(rng.uniform(0.1, 1.0, (4, count)), rng.uniform(size=(4, count)) < 0.7)
    test = outputs(rng.uniform(0.1, 1.0, (4, 50)), source="test")
    result = ee.budgeted(validation, test, flops)
    assert [row["point"] for row in result["sweep"]] == list(range(1, 40))
    for row in result["sweep"]:
        taken = [math.floor(count * p + 1e-9) for p in row["target_fractions"][:-1]]
        counts = np.rint(np.asarray(row["validation_fractions"]) * count).astype(int).tolist()
        assert counts == taken + [count - sum(taken)], row["r"]
        assert row["thresholds"][-1] == 0.0 and sum(row["exit_fractions"]) == pytest.approx(1)
        assert row["flops"] == pytest.approx(np.dot(row["exit_fractions"], flops))
    # r = 0.05 sends almost everyone out at exit 1, r = 1.95 most to the last exit.
    assert result["sweep"][0]["validation_fractions"][0] > 0.9
    assert result["sweep"][-1]["validation_flops"] > result["sweep"][0]["validation_flops"]


@pytest.mark.parametrize("budget", [10.0, 12.5, 17.3, 25.0, 33.3, 41.0, 49.9])
def test_bisection_meets_a_budget_within_one_sample(budget):
    rng = np.random.default_rng(1)
    count, flops = 200, [10, 20, 35, 50]
    confidence = rng.uniform(0.1, 1.0, (4, count)).astype(F32)
    r, thresholds = exits.thresholds_for_budget(confidence, flops, budget)
    spent = exits.average_flops(confidence, thresholds, flops)
    # One sample moving from the last exit to the first changes the average by (50 - 10) / N.
    assert spent <= budget + 1e-9 and budget - spent <= (50 - 10) / count
    assert thresholds[-1] == 0.0 and r > 0


def test_budgets_at_the_ends():
    confidence = np.random.default_rng(2).uniform(0.1, 1, (3, 50)).astype(F32)
    r, thresholds = exits.thresholds_for_budget(confidence, [5, 8, 13], 20)
    assert r is None and thresholds.tolist() == [exits.NEVER, exits.NEVER, 0.0]
    with pytest.raises(InputError, match="first exit's cost.*minimum budget is 5$"):
        exits.thresholds_for_budget(confidence, [5, 8, 13], 4.5)


def test_calibration_refuses_the_test_split():
    with pytest.raises(ValueError, match="held out of the training files"):
        ee.budgeted(outputs(np.ones((2, 4)), source="test"), outputs(np.ones((2, 4))), [1, 2])


def test_validation_is_held_out_of_the_training_files(fashion_mnist_dir):
    def load(split, size=10):
        return data.load(
            "fashion_mnist",
            split,
            input_shape=(28, 28, 1),
            batch_size=64,
            data_dir=str(fashion_mnist_dir),
            validation_size=size,
        )

    validation, rest, test = load("validation"), load("train"), load("test")
    assert (validation.source, rest.source, test.source) == ("train", "train", "test")
    assert validation.num_examples == 10 and rest.num_examples == 30
    assert set(validation.indices).isdisjoint(rest.indices)
    assert sorted([*validation.indices, *rest.indices]) == list(range(40))
    np.testing.assert_array_equal(load("validation").indices, validation.indices)  # fixed
    # The fixture labels image i with i % 10: the split holds those images, in order, unaugmented.
    _, labels = next(iter(validation.dataset))
    np.testing.assert_array_equal(labels, validation.indices % 10)
    full = data.load(
        "fashion_mnist",
        "train",
        input_shape=(28, 28, 1),
        batch_size=8,
        data_dir=str(fashion_mnist_dir),
    )
    assert full.num_examples == 40  # without validation_size, train keeps every image
    with pytest.raises(InputError, match="smaller than fashion_mnist's training set .40"):
        load("validation", 40)


@pytest.fixture(scope="module")
def ranet_checkpoint(tmp_path_factory):
    from effkeras import models
    from effkeras.graph import summary

    model = models.get(
        "ranet_cifar", input_shape=(32, 32, 1), num_classes=10, **models.info("ranet_cifar").small
    )
    path = tmp_path_factory.mktemp("ranet") / "ranet.keras"
    model.save(path)
    return str(path), [cost["flops"] for cost in summary.exit_costs(model)]


@pytest.mark.parametrize("split", ["test", "train"])
def test_thresholds_come_from_the_validation_indices_only(
    ranet_checkpoint, fashion_mnist_dir, monkeypatch, split
):
    collected, calibrated = [], []
    collect, calibrate = ee.collect, exits.calibrate_thresholds

    def spy_collect(model, data_split):
        result = collect(model, data_split)
        collected.append((data_split.source, np.asarray(data_split.indices), result))
        return result

    def spy_calibrate(confidence, proportions, orders=None):
        calibrated.append(confidence)
        return calibrate(confidence, proportions, orders)

    monkeypatch.setattr(ee, "collect", spy_collect)
    monkeypatch.setattr(exits, "calibrate_thresholds", spy_calibrate)
    path, exit_flops = ranet_checkpoint
    result = ee.evaluate_checkpoint(
        path,
        "fashion_mnist",
        split=split,
        batch_size=16,
        data_dir=str(fashion_mnist_dir),
        validation_size=12,
        budget=3e6,
    )
    (scored_source, scored_indices, _), (val_source, val_indices, validation) = collected
    held_out, rest = data.validation_indices(40, 12)
    assert val_source == "train"
    np.testing.assert_array_equal(val_indices, held_out)
    assert len(calibrated) > 39 and all(c is validation.confidence for c in calibrated)
    if split == "test":
        assert scored_source == "test" and len(scored_indices) == result["examples"] == 20
    else:  # scoring the training files leaves the calibration images out
        assert scored_source == "train"
        np.testing.assert_array_equal(scored_indices, rest)
    assert result["validation"] == {"split": "validation", "source": "train", "examples": 12}
    assert result["num_exits"] == len(exit_flops) == len(result["anytime"])


def write_record(path, **changes):
    record = {
        "model": "ranet_cifar",
        "num_exits": 3,
        "thresholds": [0.5, 0.9, 0.0],
        "exit_flops": [100, 200, 300],
        "expected_flops": 180.0,
        "exit_fractions": [0.5, 0.2, 0.3],
        **changes,
    }
    path.write_text(json.dumps(record))
    return path


@pytest.mark.parametrize(
    "changes, fragment",
    [
        ({"num_exits": 2, "thresholds": [0.5, 0.0]}, "for 2 exits but the model has 3"),
        ({"thresholds": [0.5, 0.0]}, "thresholds must be a list of num_exits=3"),
        ({"thresholds": [0.5, 0.9, 0.2]}, "last threshold must be 0.0"),
        ({"thresholds": [0.5, "x", 0.0]}, "finite numbers >= 0"),
        ({"exit_fractions": [0.5, 0.2, 0.2]}, "add up to 1"),
        ({"exit_flops": [300, 200, 100]}, "cumulative"),
        ({"model": None}, "model must be a string"),
    ],
)
def test_load_thresholds_refuses_a_file_that_does_not_fit(tmp_path, changes, fragment):
    path = write_record(tmp_path / "t.json", **changes)
    with pytest.raises(InputError, match=fragment) as error:
        early_exit.load_thresholds(str(path), 3)
    assert "\n" not in str(error.value)


def test_load_thresholds_refuses_unreadable_files(tmp_path):
    for text in ("not json", "[1, 2]", '{"num_exits": NaN}', "{}"):
        (tmp_path / "t.json").write_text(text)
        with pytest.raises(InputError, match="t.json"):
            early_exit.load_thresholds(str(tmp_path / "t.json"), 3)
    with pytest.raises(InputError, match="No such file"):
        early_exit.load_thresholds(str(tmp_path / "missing.json"), 3)


def test_thresholds_round_trip(tmp_path):
    record = json.loads(write_record(tmp_path / "in.json").read_text())
    record["thresholds"] = [exits.NEVER, 0.25, 0.0]
    early_exit.write_thresholds(str(tmp_path / "out.json"), record)
    assert early_exit.load_thresholds(str(tmp_path / "out.json"), 3) == record
    assert early_exit.load_thresholds(str(tmp_path / "out.json"), 3, [100, 200, 300]) == record
    with pytest.raises(InputError, match="calibrated for exits costing .100, 200, 300. FLOPs"):
        early_exit.load_thresholds(str(tmp_path / "out.json"), 3, [100, 200, 301])


def run_apps(*commands):
    """run_app for each argument list, side by side (each mostly waits on TF's start-up)."""
    with ThreadPoolExecutor(len(commands)) as pool:
        return list(pool.map(lambda args: run_app("apps.evaluate", *args), commands))


def test_app_end_to_end_and_its_refusals(ranet_checkpoint, fashion_mnist_dir, tmp_path):
    import keras

    path, flops = ranet_checkpoint
    num_exits = len(flops)
    common = [
        f"--checkpoint={path}",
        "--dataset=fashion_mnist",
        f"--data_dir={fashion_mnist_dir}",
        "--batch_size=16",
    ]
    given = write_record(tmp_path / "given.json", exit_flops=flops)
    output, written = tmp_path / "report" / "eval.json", tmp_path / "thresholds.json"
    single = tmp_path / "single.keras"
    inputs = keras.Input((32, 32, 1))
    keras.Model(inputs, keras.layers.Dense(10)(keras.layers.Flatten()(inputs))).save(single)
    mismatched = write_record(
        tmp_path / "two.json",
        num_exits=2,
        thresholds=[0.5, 0.0],
        exit_flops=[1, 2],
        exit_fractions=[0.5, 0.5],
    )
    budgeted = ["--early_exit=budgeted", f"--output={tmp_path}/bad.json"]
    ok, low, mismatch, too_large, one_output = run_apps(
        [
            *common,
            "--early_exit=anytime,budgeted",
            "--validation_size=12",
            "--budget=3.5e6",
            f"--output={output}",
            f"--thresholds_out={written}",
            f"--thresholds={given}",
        ],
        [*common, *budgeted, "--validation_size=12", "--budget=1000"],
        [*common, *budgeted, "--validation_size=12", f"--thresholds={mismatched}"],
        [*common, *budgeted, "--validation_size=40"],
        [
            f"--checkpoint={single}",
            "--dataset=fashion_mnist",
            f"--data_dir={fashion_mnist_dir}",
            *budgeted,
            "--validation_size=12",
        ],
    )

    assert ok.returncode == 0, ok.stderr[-3000:]
    result = json.loads(ok.stdout)
    assert json.loads(output.read_text()) == result
    assert {
        "checkpoint",
        "dataset",
        "split",
        "model",
        "num_exits",
        "exits",
        "examples",
        "anytime",
        "validation",
        "budgeted",
    } <= set(result)
    assert result["validation"]["examples"] == 12 and result["examples"] == 20
    names = [f"exit{k}" for k in range(1, num_exits + 1)]
    assert [row["exit"] for row in result["anytime"]] == names == result["exits"]
    assert [row["flops"] for row in result["anytime"]] == flops == sorted(flops)
    assert result["budgeted"]["exit_flops"] == flops
    assert {"flops", "top1", "top5"} <= set(result["anytime"][0])
    section = result["budgeted"]
    assert len(section["sweep"]) == 39 and {"budget", "selected", "given"} <= set(section)
    assert {
        "point",
        "r",
        "target_fractions",
        "thresholds",
        "exit_fractions",
        "top1",
        "flops",
        "validation_fractions",
        "validation_flops",
    } <= set(section["sweep"][0])
    assert section["budget"]["validation_flops"] <= 3.5e6
    assert section["given"]["thresholds"] == [0.5, 0.9, 0.0]
    for plot in ("eval_anytime.png", "eval_budgeted.png"):
        assert (output.parent / plot).read_bytes()[:4] == b"\x89PNG"
    assert "| exit1 |" in (output.parent / "eval.md").read_text()
    record = early_exit.load_thresholds(str(written), num_exits, flops)
    assert record == {
        "model": "ranet_cifar",
        "num_exits": num_exits,
        "thresholds": section["budget"]["thresholds"],
        "exit_flops": flops,
        "expected_flops": section["budget"]["flops"],
        "exit_fractions": section["budget"]["exit_fractions"],
    }

    assert_one_error_line(low, "--budget=1,000", f"minimum budget is {flops[0]}")
    assert_one_error_line(mismatch, f"2 exits but the model has {num_exits}")
    assert_one_error_line(too_large, "--validation_size=40", "training set (40 examples)")
    assert_one_error_line(one_output, "needs a model with early exits", "one output")
