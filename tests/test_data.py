import os
import pickle

import numpy as np
import pytest
import tensorflow as tf
from conftest import write_idx

from effkeras import data
from effkeras.data import augment, fashion_mnist
from effkeras.errors import InputError


def first_batch(split):
    images, labels = next(iter(split.dataset))
    return images.numpy(), labels.numpy()


def test_fashion_mnist_pads_28_to_32_and_tiles_to_rgb(fashion_mnist_dir):
    raw_images, raw_labels = fashion_mnist.read(str(fashion_mnist_dir), "test")
    split = data.load(
        "fashion_mnist",
        "test",
        input_shape=(32, 32, 3),
        batch_size=20,
        data_dir=str(fashion_mnist_dir),
    )
    images, labels = first_batch(split)
    assert (split.num_examples, split.num_classes) == (20, 10)
    assert images.shape == (20, 32, 32, 3) and images.dtype == np.float32
    np.testing.assert_array_equal(labels, raw_labels)  # test split is not shuffled
    for channel in range(3):
        np.testing.assert_array_equal(images[..., 2:30, 2:30, channel], raw_images[..., 0])
    assert not images[:, :2].any() and not images[:, :, 30:].any()


def test_train_split_shuffles_and_augments(fashion_mnist_dir):
    split = data.load(
        "fashion_mnist",
        "train",
        input_shape=(28, 28, 1),
        batch_size=40,
        data_dir=str(fashion_mnist_dir),
    )
    images, labels = first_batch(split)
    raw_images, raw_labels = fashion_mnist.read(str(fashion_mnist_dir), "train")
    assert sorted(labels) == sorted(raw_labels) and list(labels) != list(raw_labels)
    exact = sum(any(np.array_equal(image[..., 0], raw) for raw in raw_images) for image in images)
    assert exact < len(images)  # random crops move most images


@pytest.mark.parametrize("damage", ["truncate", "bad_magic", "not_gzip"])
def test_fashion_mnist_rejects_damaged_idx(fashion_mnist_dir, damage):
    path = fashion_mnist_dir / "t10k-images-idx3-ubyte.gz"
    if damage == "truncate":
        write_idx(path, np.zeros((20, 28, 28)))
        import gzip

        raw = gzip.open(path).read()
        with gzip.open(path, "wb") as f:
            f.write(raw[:-100])
    elif damage == "bad_magic":
        import gzip

        with gzip.open(path, "wb") as f:
            f.write(b"\x00\x00\x0d\x03" + bytes(100))
    else:
        path.write_bytes(b"definitely not gzip")
    with pytest.raises(InputError, match="t10k-images-idx3-ubyte.gz"):
        data.load(
            "fashion_mnist",
            "test",
            input_shape=(28, 28, 1),
            batch_size=4,
            data_dir=str(fashion_mnist_dir),
        )


def test_missing_fashion_mnist_names_layout_and_setup(tmp_path):
    with pytest.raises(InputError, match="apt-get install dataset-fashion-mnist"):
        data.load(
            "fashion_mnist", "train", input_shape=(28, 28, 1), batch_size=4, data_dir=str(tmp_path)
        )


def test_cifar10_reads_channel_planar_batches(cifar10_dir):
    split = data.load(
        "cifar10",
        "train",
        input_shape=(32, 32, 3),
        batch_size=30,
        data_dir=str(cifar10_dir),
        shuffle=False,
        augment_with=(),
    )
    images, labels = first_batch(split)
    with open(cifar10_dir / "cifar-10-batches-py" / "data_batch_1", "rb") as f:
        batch = pickle.load(f, encoding="bytes")
    np.testing.assert_array_equal(images[0, 3, 5], batch[b"data"][0].reshape(3, 32, 32)[:, 3, 5])
    np.testing.assert_array_equal(labels[:6], batch[b"labels"])
    assert split.num_examples == 30 and split.num_classes == 10


def test_cifar100_uses_fine_labels(tmp_path):
    from conftest import write_cifar_batch

    root = tmp_path / "cifar-100-python"
    root.mkdir()
    for name in ("train", "test"):
        write_cifar_batch(
            root / name,
            np.zeros((4, 32, 32, 3), np.uint8),
            [99, 0, 50, 7],
            label_key=b"fine_labels",
        )
    split = data.load("cifar100", "test", input_shape=(32, 32, 3), batch_size=4, data_dir=str(root))
    assert list(first_batch(split)[1]) == [99, 0, 50, 7] and split.num_classes == 100


class RunsCode:
    def __reduce__(self):
        return (os.system, ("touch PWNED_MARKER",))


def test_crafted_cifar_pickle_is_refused_without_running(cifar10_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    target = cifar10_dir / "cifar-10-batches-py" / "test_batch"
    with open(target, "wb") as f:
        pickle.dump({b"data": RunsCode(), b"labels": [0]}, f, protocol=2)
    with pytest.raises(InputError, match="refusing to load posix.system"):
        data.load(
            "cifar10", "test", input_shape=(32, 32, 3), batch_size=4, data_dir=str(cifar10_dir)
        )
    assert not (tmp_path / "PWNED_MARKER").exists()


def test_truncated_cifar_pickle(cifar10_dir):
    target = cifar10_dir / "cifar-10-batches-py" / "test_batch"
    target.write_bytes(target.read_bytes()[:500])
    with pytest.raises(InputError, match="not a valid CIFAR batch"):
        data.load(
            "cifar10", "test", input_shape=(32, 32, 3), batch_size=4, data_dir=str(cifar10_dir)
        )


def test_imagenet_folders(imagenet_dir):
    train = data.load(
        "imagenet", "train", input_shape=(24, 24, 3), batch_size=6, data_dir=str(imagenet_dir)
    )
    test = data.load(
        "imagenet", "test", input_shape=(24, 24, 3), batch_size=4, data_dir=str(imagenet_dir)
    )
    assert (train.num_examples, test.num_examples, test.num_classes) == (6, 4, 2)
    assert test.class_names == ["n01440764", "n01443537"]
    images, labels = first_batch(test)
    assert images.shape == (4, 24, 24, 3) and list(labels) == [0, 0, 1, 1]
    assert first_batch(train)[0].shape == (6, 24, 24, 3)


def test_truncated_image_is_named(imagenet_dir):
    bad = imagenet_dir / "val" / "n01443537" / "0.JPEG"
    bad.write_bytes(bad.read_bytes()[:60])
    split = data.load(
        "imagenet", "test", input_shape=(24, 24, 3), batch_size=4, data_dir=str(imagenet_dir)
    )
    with pytest.raises(InputError, match="0.JPEG is corrupt, truncated or unreadable"):
        with split.errors_as_input_errors():
            list(split.dataset)


def test_empty_imagenet_dir(tmp_path):
    (tmp_path / "train").mkdir()
    (tmp_path / "val").mkdir()
    with pytest.raises(InputError, match="one sub-folder per class"):
        data.load(
            "imagenet", "train", input_shape=(24, 24, 3), batch_size=4, data_dir=str(tmp_path)
        )


def test_synthetic_is_deterministic():
    a = first_batch(
        data.load("synthetic", "test", input_shape=(8, 8, 3), batch_size=16, num_classes=4)
    )
    b = first_batch(
        data.load("synthetic", "test", input_shape=(8, 8, 3), batch_size=16, num_classes=4)
    )
    np.testing.assert_array_equal(a[0], b[0])
    assert a[0].shape == (16, 8, 8, 3) and set(a[1]) <= {0, 1, 2, 3}


def test_fit_to_shape_resizes_far_sizes_and_converts_channels():
    image = tf.random.uniform((32, 32, 3), 0, 255)
    assert augment.fit_to_shape(image, 64, 64).shape == (64, 64, 3)
    assert augment.match_channels(image, 1).shape == (32, 32, 1)
    with pytest.raises(InputError):
        augment.match_channels(tf.zeros((4, 4, 2)), 3)


def test_bad_dataset_arguments():
    with pytest.raises(InputError, match="unknown dataset"):
        data.load("mnist", "train", input_shape=(28, 28, 1), batch_size=4)
    with pytest.raises(InputError, match="unknown augmentation"):
        data.load(
            "synthetic", "train", input_shape=(8, 8, 1), batch_size=4, augment_with=("cutmix",)
        )


def test_lighting_shifts_every_pixel_by_one_colour_offset():
    image = tf.fill((4, 4, 3), 128.0)
    shifted = augment.lighting(image, seed=1).numpy()
    offset = shifted[0, 0] - 128.0
    np.testing.assert_allclose(shifted - 128.0, np.broadcast_to(offset, shifted.shape), atol=1e-4)
    assert 0 < np.abs(offset).max() < 255 * 0.1 * 0.2175 * 4  # a few std of the top eigenvalue


def test_ern_photometric_augmentations_run_in_the_pipeline(imagenet_dir):
    names = ("squash", "flip", "color_jitter", "grayscale", "rotation", "randaugment")
    split = data.load(
        "imagenet",
        "train",
        input_shape=(24, 24, 3),
        batch_size=6,
        data_dir=str(imagenet_dir),
        augment_with=names,
        seed=3,
    )
    plain = data.load(
        "imagenet",
        "train",
        input_shape=(24, 24, 3),
        batch_size=6,
        data_dir=str(imagenet_dir),
        augment_with=("squash",),
        seed=3,
    )
    (augmented, labels), (original, same_labels) = first_batch(split), first_batch(plain)
    assert augmented.shape == (6, 24, 24, 3) and 0 <= augmented.min() and augmented.max() <= 255
    np.testing.assert_array_equal(labels, same_labels)  # same shuffle, different pixels
    assert not np.allclose(augmented, original)


@pytest.mark.parametrize("num_classes", [0, -3, 2.5, True])
def test_synthetic_needs_a_positive_class_count(num_classes):
    with pytest.raises(InputError, match="positive number of classes"):
        data.load("synthetic", "test", input_shape=(8, 8, 3), batch_size=4, num_classes=num_classes)
