"""ImageNet's sharded TFRecord files: written from folders, read back as the folders read,
indexed when written elsewhere, refused with one line when broken, trained on by apps.train."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf
from conftest import assert_one_error_line, run_app

from effkeras import data
from effkeras.data import tfrecord
from effkeras.errors import InputError

SHAPE = (24, 24, 3)


@pytest.fixture
def shard_dir(imagenet_dir):
    output = imagenet_dir / "shards"
    tfrecord.write_shards(str(imagenet_dir), str(output), train_shards=3, validation_shards=2)
    return output


def everything(data_dir, split):
    """(DataSplit, images, labels) of an unaugmented, unshuffled split, in a canonical order."""
    loaded = data.load(
        "imagenet",
        split,
        input_shape=SHAPE,
        batch_size=100,
        data_dir=str(data_dir),
        augment_with=(),
        shuffle=False,
    )
    images, labels = map(np.concatenate, zip(*[(x.numpy(), y.numpy()) for x, y in loaded.dataset]))
    order = sorted(range(len(labels)), key=lambda i: (labels[i], images[i].tobytes()))
    return loaded, images[order], labels[order]


def records(path):
    return [
        tf.train.Example.FromString(r) for r in tf.data.TFRecordDataset(path).as_numpy_iterator()
    ]


def feature(example, key):
    value = example.features.feature[key]
    return (value.int64_list.value or value.bytes_list.value)[0]


@pytest.mark.parametrize("split", ["train", "test"])
def test_shards_read_back_as_the_folders(imagenet_dir, shard_dir, split):
    folders, folder_images, folder_labels = everything(imagenet_dir, split)
    shards, shard_images, shard_labels = everything(shard_dir, split)
    assert (shards.num_examples, shards.num_classes, shards.class_names, shards.source) == (
        folders.num_examples,
        2,
        ["n01440764", "n01443537"],
        split,
    )
    np.testing.assert_array_equal(shard_labels, folder_labels)
    np.testing.assert_array_equal(shard_images, folder_images)


def test_records_hold_the_files_bytes_and_standard_labels(imagenet_dir, shard_dir):
    files = sorted(shard_dir.glob("train-*"))
    assert [f.name for f in files] == [f"train-0000{i}-of-00003" for i in range(3)]
    examples = [example for path in files for example in records(str(path))]
    assert [len(records(str(path))) for path in files] == [2, 2, 2]
    for example in examples:
        name = feature(example, "image/filename").decode()
        raw = (imagenet_dir / "train" / name).read_bytes()
        synset = feature(example, "image/class/synset").decode()
        assert feature(example, "image/encoded") == raw and name.startswith(synset + "/")
        assert feature(example, "image/class/label") == ["n01440764", "n01443537"].index(synset) + 1
        assert feature(example, "image/format") == (b"PNG" if name.endswith(".png") else b"JPEG")
        assert tf.io.decode_image(raw).shape[:2] == (
            feature(example, "image/height"),
            feature(example, "image/width"),
        )
    train = data.load("imagenet", "train", input_shape=SHAPE, batch_size=4, data_dir=str(shard_dir))
    images, labels = next(iter(train.dataset))  # shuffled and augmented, as the folders' train
    assert images.shape == (4, *SHAPE) and set(labels.numpy()) <= {0, 1}


def test_index_reproduces_the_info_and_reads_0_based_labels(shard_dir, tmp_path):
    info_file = shard_dir / tfrecord.INFO_FILE
    written = json.loads(info_file.read_text())
    info_file.unlink()
    with pytest.raises(InputError, match="--index="):
        data.load("imagenet", "test", input_shape=SHAPE, batch_size=4, data_dir=str(shard_dir))
    assert tfrecord.index(str(shard_dir)) == written == json.loads(info_file.read_text())

    other = tmp_path / "zero_based"  # another tool's shards: labels from 0, no synsets
    other.mkdir()
    image = tf.io.encode_png(tf.zeros((4, 4, 3), tf.uint8)).numpy()
    for name, labels in (("train-00000-of-00001", [0, 1, 2]), ("validation-00000-of-00001", [2])):
        with tf.io.TFRecordWriter(str(other / name)) as writer:
            for label in labels:
                writer.write(tfrecord._example(image, label, "", "x.png", 4, 4).SerializeToString())
    assert tfrecord.index(str(other)) == {
        "shards": {"train": 1, "validation": 1},
        "examples": {"train": 3, "validation": 1},
        "class_names": ["0", "1", "2"],
        "label_offset": 0,
    }
    test = data.load("imagenet", "test", input_shape=SHAPE, batch_size=4, data_dir=str(other))
    assert list(next(iter(test.dataset))[1].numpy()) == [2]


def test_broken_shards_and_validation_split_are_refused(shard_dir):
    with pytest.raises(InputError, match="use the folder layout"):
        data.load(
            "imagenet", "validation", input_shape=SHAPE, batch_size=4, data_dir=str(shard_dir)
        )
    bad = shard_dir / "validation-00001-of-00002"
    bad.write_bytes(bad.read_bytes()[:-30])
    with pytest.raises(InputError, match="validation-00001-of-00002 holds a corrupt record"):
        data.load("imagenet", "test", input_shape=SHAPE, batch_size=4, data_dir=str(shard_dir))
    bad.unlink()
    with pytest.raises(InputError, match="lacks 1 of the 2 validation shards"):
        data.load("imagenet", "test", input_shape=SHAPE, batch_size=4, data_dir=str(shard_dir))


def test_counts_that_the_shards_do_not_hold_are_refused(shard_dir, monkeypatch):
    info_file = shard_dir / tfrecord.INFO_FILE
    info = json.loads(info_file.read_text())

    def load():
        data.load("imagenet", "train", input_shape=SHAPE, batch_size=4, data_dir=str(shard_dir))

    claims = {**info, "examples": {**info["examples"], "train": 10**9}}
    info_file.write_text(json.dumps(claims))
    with pytest.raises(InputError, match="claims 1000000000 train examples, .* shards hold 6;"):
        load()
    monkeypatch.setattr(tfrecord, "COUNT_ALL_BYTES", 0)  # large shards: the first one counted
    with pytest.raises(InputError, match="hold about 6 \\(2 in the first\\)"):
        load()
    info_file.write_text(json.dumps(info))
    load()
    for path in shard_dir.glob("train-*"):  # empty shards: no epoch at all
        path.write_bytes(b"")
    with pytest.raises(InputError, match="claims 6 train examples, .* shards hold 0;"):
        load()


def test_a_failed_write_leaves_no_shard(imagenet_dir, tmp_path):
    bad = imagenet_dir / "val" / "n01443537" / "0.JPEG"
    bad.write_bytes(bad.read_bytes()[:60])
    output = tmp_path / "out"
    with pytest.raises(InputError, match="0.JPEG is corrupt"):
        tfrecord.write_shards(str(imagenet_dir), str(output), train_shards=2, validation_shards=2)
    assert os.listdir(output) == []  # neither the train shards written first nor temporary files


def test_the_tool_writes_indexes_and_refuses(imagenet_dir, tmp_path):
    output = tmp_path / "out"
    written = run_app(
        "tools.imagenet_shards",
        f"--from_folder={imagenet_dir}",
        f"--output_dir={output}",
        "--train_shards=2",
        "--validation_shards=1",
    )
    assert written.returncode == 0, written.stderr[-2000:]
    assert json.loads(written.stdout.splitlines()[-1]) == {
        "shards": {"train": 2, "validation": 1},
        "examples": {"train": 6, "validation": 4},
        "classes": 2,
        "label_offset": 1,
    }
    assert_one_error_line(
        run_app("tools.imagenet_shards", f"--from_folder={imagenet_dir}", f"--output_dir={output}"),
        "already holds shards",
    )
    (output / tfrecord.INFO_FILE).unlink()
    indexed = run_app("tools.imagenet_shards", f"--index={output}")
    assert indexed.returncode == 0, indexed.stderr[-2000:]
    assert indexed.stdout.splitlines()[-1] == written.stdout.splitlines()[-1]


def test_train_app_on_shards(shard_dir, tmp_path):
    trained = run_app(
        "apps.train",
        "--model=resnet20",
        "--dataset=imagenet",
        f"--data_dir={shard_dir}",
        "--input_shape=16,16,3",
        "--epochs=1",
        "--steps_per_epoch=2",
        "--run_eagerly",
        "--batch_size=2",
        f"--output_dir={tmp_path}/run",
    )
    assert trained.returncode == 0, trained.stderr[-2000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["epochs"] == 1 and metrics["dataset"] == "imagenet"
