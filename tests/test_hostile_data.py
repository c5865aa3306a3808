"""Bad and hostile dataset files: one clear InputError (one `error:` line from the apps), never a
traceback, a stray log line, code run from a file, or an allocation larger than the file."""

import gzip
import os
import pickle
import resource
import struct
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import REPO, assert_one_error_line, run_app, write_cifar_batch, write_idx

from effkeras import data
from effkeras.data import cifar, fashion_mnist, imagenet
from effkeras.errors import InputError

SMALL_RUN = (
    "--model=resnet20",
    "--epochs=1",
    "--steps_per_epoch=1",
    "--batch_size=2",
    "--run_eagerly",
)


def run_app_as_users_do(*args, timeout=300):
    """Like conftest.run_app, but with TensorFlow's default logging (conftest mutes it)."""
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    return subprocess.run(
        [sys.executable, "-m", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def peak_rss_bytes():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


# --- Fashion-MNIST idx files -------------------------------------------------------------------


def write_raw_idx(path, shape, payload):
    with gzip.open(path, "wb") as f:
        f.write(
            struct.pack(">HBB", 0, 0x08, len(shape))
            + struct.pack(f">{len(shape)}I", *shape)
            + payload
        )


class TestFashionMnistContents:
    def load(self, folder, split="test"):
        return data.load(
            "fashion_mnist", split, input_shape=(28, 28, 1), batch_size=4, data_dir=str(folder)
        )

    @pytest.mark.parametrize("label", [10, 255])
    def test_label_outside_the_ten_classes(self, fashion_mnist_dir, label):
        labels = np.arange(20) % 10
        labels[7] = label
        write_idx(fashion_mnist_dir / "t10k-labels-idx1-ubyte.gz", labels)
        with pytest.raises(
            InputError,
            match=rf"t10k-labels-idx1-ubyte.gz: label {label} at index 7 "
            r"is outside 0..9",
        ):
            self.load(fashion_mnist_dir)

    @pytest.mark.parametrize("shape", [(0, 28, 28), (20, 0, 0), (20, 28, 0)])
    def test_no_images_or_images_of_zero_size(self, fashion_mnist_dir, shape):
        write_idx(fashion_mnist_dir / "t10k-images-idx3-ubyte.gz", np.zeros(shape))
        with pytest.raises(InputError, match=r"t10k-images-idx3-ubyte.gz has shape .*no images"):
            self.load(fashion_mnist_dir)

    def test_no_labels(self, fashion_mnist_dir):
        write_idx(fashion_mnist_dir / "t10k-labels-idx1-ubyte.gz", np.zeros(0))
        with pytest.raises(
            InputError, match=r"t10k-labels-idx1-ubyte.gz has shape \(0,\): no labels"
        ):
            self.load(fashion_mnist_dir)

    def test_image_and_label_counts_differ(self, fashion_mnist_dir):
        write_idx(fashion_mnist_dir / "t10k-labels-idx1-ubyte.gz", np.arange(19) % 10)
        with pytest.raises(
            InputError,
            match=r"t10k-images-idx3-ubyte.gz holds 20 images but "
            r".*t10k-labels-idx1-ubyte.gz holds 19 labels",
        ):
            self.load(fashion_mnist_dir)

    def test_header_claiming_more_than_the_file_can_hold(self, fashion_mnist_dir):
        write_raw_idx(
            fashion_mnist_dir / "t10k-images-idx3-ubyte.gz", (60000, 60000, 60000), bytes(100)
        )
        before, started = peak_rss_bytes(), time.time()
        with pytest.raises(
            InputError, match=r"claims shape \(60000, 60000, 60000\).*header is corrupt"
        ):
            self.load(fashion_mnist_dir)
        assert time.time() - started < 5 and peak_rss_bytes() - before < 64 << 20

    def test_gzip_bomb_stops_after_the_announced_size(self, fashion_mnist_dir):
        # 1x28x28 announced, 64 MiB of zeros behind it (a ~64 KiB file): read 785 bytes, refuse.
        path = fashion_mnist_dir / "t10k-images-idx3-ubyte.gz"
        with gzip.open(path, "wb") as f:
            f.write(struct.pack(">HBB3I", 0, 0x08, 3, 1, 28, 28))
            for _ in range(64):
                f.write(bytes(1 << 20))
        before = peak_rss_bytes()
        with pytest.raises(
            InputError, match="t10k-images-idx3-ubyte.gz is truncated or corrupt: more"
        ):
            fashion_mnist.read_idx(str(path), 3)
        assert peak_rss_bytes() - before < 32 << 20

    def test_short_payload_is_truncated(self, fashion_mnist_dir):
        write_raw_idx(fashion_mnist_dir / "t10k-labels-idx1-ubyte.gz", (20,), bytes(5))
        with pytest.raises(
            InputError, match=r"truncated or corrupt: 13 bytes where shape \(20,\) needs 28"
        ):
            self.load(fashion_mnist_dir)

    def test_train_app_names_the_bad_label_file(self, fashion_mnist_dir):
        labels = np.arange(40) % 10
        labels[3] = 42
        write_idx(fashion_mnist_dir / "train-labels-idx1-ubyte.gz", labels)
        assert_one_error_line(
            run_app(
                "apps.train",
                *SMALL_RUN,
                f"--data_dir={fashion_mnist_dir}",
                "--input_shape=32,32,3",
                f"--output_dir={fashion_mnist_dir}/run",
            ),
            "train-labels-idx1-ubyte.gz: label 42 at index 3",
        )
        assert not (fashion_mnist_dir / "run").exists()


# --- CIFAR batches: contents -------------------------------------------------------------------


def dump_batch(path, batch, protocol=2):
    with open(path, "wb") as f:
        pickle.dump(batch, f, protocol=protocol)


def images_rows(count):
    return np.random.default_rng(0).integers(0, 256, (count, 3072), dtype=np.uint8)


class TestCifarContents:
    def batch_path(self, cifar10_dir):
        return cifar10_dir / "cifar-10-batches-py" / "test_batch"

    def load(self, folder, name="cifar10"):
        return data.load(name, "test", input_shape=(32, 32, 3), batch_size=4, data_dir=str(folder))

    @pytest.mark.parametrize("label", [10, -1, 2**70])
    def test_label_outside_the_classes(self, cifar10_dir, label):
        dump_batch(
            self.batch_path(cifar10_dir), {b"data": images_rows(3), b"labels": [0, label, 1]}
        )
        with pytest.raises(InputError, match=r"test_batch: b'labels'\[1\] is -?\d+, outside 0..9"):
            self.load(cifar10_dir)

    def test_cifar100_label_outside_the_hundred_classes(self, tmp_path):
        root = tmp_path / "cifar-100-python"
        root.mkdir()
        write_cifar_batch(
            root / "test", np.zeros((2, 32, 32, 3), np.uint8), [5, 100], label_key=b"fine_labels"
        )
        with pytest.raises(
            InputError, match=r"cifar-100-python/test: b'fine_labels'\[1\] is 100, outside 0..99"
        ):
            self.load(tmp_path, "cifar100")

    @pytest.mark.parametrize("label", [1.0, 2.5, "3", b"3", None, True, [1]])
    def test_labels_that_are_not_integers(self, cifar10_dir, label):
        dump_batch(self.batch_path(cifar10_dir), {b"data": images_rows(2), b"labels": [0, label]})
        with pytest.raises(
            InputError, match=r"test_batch: b'labels'\[1\] is .*not an integer class index"
        ):
            self.load(cifar10_dir)

    @pytest.mark.parametrize("labels", [np.array([0.0, 1.0]), np.zeros((2, 1), np.int64)])
    def test_label_arrays_that_are_not_1d_integers(self, cifar10_dir, labels):
        dump_batch(self.batch_path(cifar10_dir), {b"data": images_rows(2), b"labels": labels})
        with pytest.raises(InputError, match="must be integer class indices"):
            self.load(cifar10_dir)

    @pytest.mark.parametrize("labels", [7, None, b"\x00\x01", {0: 1}])
    def test_labels_that_are_not_a_list(self, cifar10_dir, labels):
        dump_batch(self.batch_path(cifar10_dir), {b"data": images_rows(2), b"labels": labels})
        with pytest.raises(InputError, match="must be a list of integer class indices"):
            self.load(cifar10_dir)

    def test_integer_label_array_is_accepted(self, cifar10_dir):
        dump_batch(
            self.batch_path(cifar10_dir),
            {b"data": images_rows(3), b"labels": np.array([9, 0, 4], np.uint8)},
        )
        assert self.load(cifar10_dir).num_examples == 3

    def test_label_count_differs_from_image_count(self, cifar10_dir):
        dump_batch(self.batch_path(cifar10_dir), {b"data": images_rows(3), b"labels": [0, 1]})
        with pytest.raises(InputError, match="test_batch holds 3 images but 2 labels"):
            self.load(cifar10_dir)

    @pytest.mark.parametrize(
        "rows",
        [
            np.zeros((3, 3071), np.uint8),
            np.zeros((3, 3072), np.int64),
            np.zeros(3072, np.uint8),
            np.zeros((3, 32, 32, 3), np.uint8),
        ],
    )
    def test_data_rows_of_the_wrong_shape_or_type(self, cifar10_dir, rows):
        dump_batch(self.batch_path(cifar10_dir), {b"data": rows, b"labels": [0, 1, 2]})
        with pytest.raises(InputError, match=r"test_batch: b'data' must be uint8 \[N, 3072\]"):
            self.load(cifar10_dir)

    @pytest.mark.parametrize("rows", [[[0] * 3072] * 2, b"\x00" * 6144, None])
    def test_data_that_is_not_an_array(self, cifar10_dir, rows):
        dump_batch(self.batch_path(cifar10_dir), {b"data": rows, b"labels": [0, 1]})
        with pytest.raises(InputError, match=r"test_batch: b'data' is a \w+, not an array"):
            self.load(cifar10_dir)

    def test_no_images(self, cifar10_dir):
        dump_batch(
            self.batch_path(cifar10_dir), {b"data": np.zeros((0, 3072), np.uint8), b"labels": []}
        )
        with pytest.raises(InputError, match="test_batch holds no images"):
            self.load(cifar10_dir)

    @pytest.mark.parametrize(
        "batch",
        [
            {b"labels": [0]},
            {b"data": images_rows(1)},
            [images_rows(1), [0]],
            {"data": images_rows(1), "labels": [0]},
        ],
    )
    def test_not_a_batch_dict(self, cifar10_dir, batch):
        dump_batch(self.batch_path(cifar10_dir), batch)
        with pytest.raises(
            InputError, match="test_batch is not a CIFAR batch: expected a dict with b'data'"
        ):
            self.load(cifar10_dir)

    def test_train_app_names_the_bad_batch(self, cifar10_dir, tmp_path):
        dump_batch(
            cifar10_dir / "cifar-10-batches-py" / "data_batch_3",
            {b"data": images_rows(2), b"labels": [3, 2.0]},
        )
        assert_one_error_line(
            run_app(
                "apps.train",
                *SMALL_RUN,
                "--dataset=cifar10",
                "--input_shape=32,32,3",
                f"--data_dir={cifar10_dir}",
                f"--output_dir={tmp_path}/run",
            ),
            "data_batch_3: b'labels'[1] is 2.0, not an integer class index",
        )


# --- CIFAR batches: the unpickler --------------------------------------------------------------


class Reduces:
    """Pickles as `func(*args)` (then BUILD(state) when given)."""

    def __init__(self, func, args, state=None):
        self.value = (func, args) if state is None else (func, args, state)

    def __reduce__(self):
        return self.value


RECONSTRUCT = np.core.multiarray._reconstruct
HUGE = 2**40  # 1 TiB of uint8


def array_state(shape, dtype, raw):
    return Reduces(RECONSTRUCT, (np.ndarray, (0,), b"b"), (1, shape, dtype, False, raw))


def py2_batch_pickle(rows, labels):
    """A batch as Python 2's cPickle wrote the official archive: protocol 2, str values as
    SHORT_BINSTRING/BINSTRING (bytes under encoding="bytes"), False as INT "00"."""

    def short(text):
        return b"U" + bytes([len(text)]) + text

    def int4(value):
        return b"J" + struct.pack("<i", value)

    raw = rows.tobytes()
    array = (
        b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85" + short(b"b") + b"\x87R"
        b"(K\x01" + int4(rows.shape[0]) + int4(rows.shape[1]) + b"\x86"
        b"cnumpy\ndtype\n" + short(b"u1") + b"K\x00K\x01\x87R"
        b"(K\x03" + short(b"|") + b"NNN" + int4(-1) + int4(-1) + b"K\x00tb"
        b"I00\nT" + struct.pack("<I", len(raw)) + raw + b"tb"
    )
    label_list = b"](" + b"".join(b"K" + bytes([label]) for label in labels) + b"e"
    return b"\x80\x02}(" + short(b"data") + array + short(b"labels") + label_list + b"u."


class TestCifarUnpickler:
    def load(self, tmp_path, payload):
        path = tmp_path / "test_batch"
        path.write_bytes(
            payload if isinstance(payload, bytes) else pickle.dumps(payload, protocol=2)
        )
        before, started = peak_rss_bytes(), time.time()
        try:
            return cifar.load_batch(str(path), b"labels", 10)
        finally:
            assert time.time() - started < 5
            assert peak_rss_bytes() - before < 64 << 20, "the pickle made the loader allocate"

    @pytest.mark.parametrize(
        "call",
        [
            (np.ndarray, ((HUGE,), "u1")),  # the allow-listed class, called
            (RECONSTRUCT, (np.ndarray, (HUGE,), b"b")),  # numpy's reconstruct with a huge shape
            (np.dtype, ("O", False, True)),  # object arrays hold pointers
            (np.dtype, ("V1000000000000", False, True)),  # void of a terabyte
        ],
    )
    def test_numpy_globals_cannot_allocate(self, tmp_path, call):
        with pytest.raises(InputError, match="not a valid CIFAR batch .*refusing"):
            self.load(tmp_path, {b"data": Reduces(*call), b"labels": [0]})

    def test_array_claiming_more_than_the_file_is_refused_before_allocating(self, tmp_path):
        state = array_state((HUGE,), np.dtype("u1"), b"")
        assert len(pickle.dumps(state, protocol=2)) < 256
        with pytest.raises(InputError, match=rf"claims {HUGE} bytes but the whole file holds \d+"):
            self.load(tmp_path, {b"data": state, b"labels": [0]})

    def test_array_data_shorter_than_its_shape(self, tmp_path):
        with pytest.raises(InputError, match=r"needs 100 bytes but its data has 10"):
            self.load(
                tmp_path,
                {b"data": array_state((1, 100), np.dtype("u1"), bytes(10)), b"labels": [0]},
            )

    @pytest.mark.parametrize("shape", [(-1,), (2.5,), "3072", (1,) * 33])
    def test_odd_shapes(self, tmp_path, shape):
        with pytest.raises(InputError, match="refusing array shape"):
            self.load(tmp_path, {b"data": array_state(shape, np.dtype("u1"), b""), b"labels": [0]})

    def test_object_structured_and_forged_dtypes(self, tmp_path):
        objects = np.empty(3, object)
        with pytest.raises(InputError, match="refusing dtype 'O"):
            self.load(tmp_path, {b"data": objects, b"labels": [0]})
        with pytest.raises(InputError, match="refusing dtype 'V5'"):
            self.load(tmp_path, {b"data": np.zeros(2, [("a", "u1"), ("b", "f4")]), b"labels": [0]})
        # A plain dtype whose pickled state adds a terabyte sub-array.
        forged = Reduces(
            np.dtype,
            ("u1", False, True),
            (3, "|", (np.dtype("u1"), (HUGE,)), None, None, -1, -1, 0),
        )
        with pytest.raises(InputError, match="refusing a structured or sub-array dtype"):
            self.load(tmp_path, {b"data": array_state((1,), forged, b"\x00"), b"labels": [0]})

    def test_memo_index_cannot_allocate(self, tmp_path):
        # LONG_BINPUT 2**27: CPython's C unpickler would size its memo to 2**28 slots (2 GiB).
        with pytest.raises(InputError, match="is not a CIFAR batch"):
            self.load(tmp_path, b"\x80\x02}r" + struct.pack("<I", 2**27) + b".")

    @pytest.mark.parametrize(
        "payload",
        [
            # other codecs
            b"\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00aX\x05\x00\x00\x00rot13\x86R.",
            b"\x80\x02}(U\x01aK\x01u}b.",  # BUILD on a dict
            b"\x80\x02cbuiltins\neval\nX\x01\x00\x00\x001\x85R.",  # any other global
            b"\x80\x02cnumpy\nndarray\n)\x81.",  # NEWOBJ on the class
        ],
    )
    def test_other_tricks(self, tmp_path, payload):
        with pytest.raises(InputError, match="not a valid CIFAR batch"):
            self.load(tmp_path, payload)

    @pytest.mark.parametrize("protocol", [2, 4, 5])
    def test_arrays_pickled_by_this_numpy_still_load(self, tmp_path, protocol):
        rows = images_rows(3)
        (tmp_path / "test_batch").write_bytes(
            pickle.dumps(
                {b"data": rows, b"labels": np.array([1, 2, 3]), b"filenames": [b"a.png"] * 3},
                protocol=protocol,
            )
        )
        images, labels = cifar.load_batch(str(tmp_path / "test_batch"), b"labels", 10)
        np.testing.assert_array_equal(images, rows.reshape(3, 3, 32, 32).transpose(0, 2, 3, 1))
        assert list(labels) == [1, 2, 3] and labels.dtype == np.int32

    def test_python2_batches_like_the_official_archive_still_load(self, tmp_path):
        rows = images_rows(4)
        payload = py2_batch_pickle(rows, [9, 0, 3, 1])
        stock = pickle.loads(payload, encoding="bytes")  # the same bytes numpy's own loader reads
        np.testing.assert_array_equal(stock[b"data"], rows)
        images, labels = self.load(tmp_path, payload)
        np.testing.assert_array_equal(images, rows.reshape(4, 3, 32, 32).transpose(0, 2, 3, 1))
        assert list(labels) == [9, 0, 3, 1]

    def test_train_app_refuses_a_huge_array_in_one_line(self, cifar10_dir, tmp_path):
        dump_batch(
            cifar10_dir / "cifar-10-batches-py" / "data_batch_1",
            {b"data": array_state((HUGE,), np.dtype("u1"), b""), b"labels": [0]},
        )
        assert_one_error_line(
            run_app(
                "apps.train",
                *SMALL_RUN,
                "--dataset=cifar10",
                "--input_shape=32,32,3",
                f"--data_dir={cifar10_dir}",
                f"--output_dir={tmp_path}/run",
            ),
            "data_batch_1 is not a valid CIFAR batch",
            f"claims {HUGE} bytes",
        )


# --- ImageNet-style folders --------------------------------------------------------------------


class TestImagenetFolders:
    def load(self, folder, split="train"):
        return data.load(
            "imagenet", split, input_shape=(16, 16, 3), batch_size=2, data_dir=str(folder)
        )

    @pytest.mark.parametrize("split, folder", [("train", "train"), ("test", "val")])
    def test_class_folder_without_images(self, imagenet_dir, split, folder):
        empty = imagenet_dir / folder / "n01443537"
        for file in empty.iterdir():
            file.rename(empty / (file.name + ".txt"))  # not images any more
        with pytest.raises(
            InputError, match=rf"{folder}/n01443537 holds no .jpg/.jpeg/.png images"
        ):
            self.load(imagenet_dir, split)

    def test_new_empty_class_folder_in_train(self, imagenet_dir):
        (imagenet_dir / "train" / "n09999999").mkdir()
        with pytest.raises(InputError, match="train/n09999999 holds no"):
            self.load(imagenet_dir)

    def test_class_folder_missing_from_val(self, imagenet_dir):
        for file in (imagenet_dir / "val" / "n01440764").iterdir():
            file.unlink()
        (imagenet_dir / "val" / "n01440764").rmdir()
        with pytest.raises(InputError, match="val/n01440764 holds no"):
            self.load(imagenet_dir, "test")

    def test_val_folder_that_is_not_a_train_class(self, imagenet_dir):
        (imagenet_dir / "val" / "n00000001").mkdir()
        with pytest.raises(InputError, match="val/n00000001 is not a class of"):
            self.load(imagenet_dir, "test")

    def test_folder_named_like_an_image_is_not_an_image(self, imagenet_dir):
        (imagenet_dir / "train" / "n01440764" / "folder.jpg").mkdir()
        assert self.load(imagenet_dir).num_examples == 6

    def test_train_app_names_the_empty_folder(self, imagenet_dir, tmp_path):
        (imagenet_dir / "train" / "n02000000").mkdir()
        assert_one_error_line(
            run_app(
                "apps.train",
                *SMALL_RUN,
                "--dataset=imagenet",
                "--input_shape=16,16,3",
                f"--data_dir={imagenet_dir}",
                f"--output_dir={tmp_path}/run",
            ),
            "train/n02000000 holds no .jpg/.jpeg/.png images",
        )


# --- Corrupt images ----------------------------------------------------------------------------


def damage(path, how):
    raw = path.read_bytes()
    path.write_bytes(
        {
            "truncated": raw[: len(raw) // 2],
            "header_only": raw[:60],
            "empty": b"",
            "garbage": b"not an image at all" * 10,
            "scrambled": raw[:400] + bytes(200) + raw[600:],  # "Bogus marker length"
            "no_image": raw[:2] + b"\xff\xd9" + raw[4:],  # SOI then EOI
            "warns": raw[:200] + bytes(300) + raw[500:],
        }[how]
    )  # decodes, with a warning


class TestCorruptImages:
    @pytest.mark.parametrize(
        "file, how",
        [
            ("0.JPEG", "truncated"),
            ("0.JPEG", "header_only"),
            ("0.JPEG", "scrambled"),
            ("0.JPEG", "no_image"),
            ("1.png", "truncated"),
            ("1.png", "garbage"),
            ("0.JPEG", "empty"),
        ],
    )
    def test_named_with_the_decoders_reason_and_nothing_else_on_stderr(
        self, imagenet_dir, capfd, file, how
    ):
        bad = imagenet_dir / "train" / "n01443537" / file
        damage(bad, how)
        split = data.load(
            "imagenet", "train", input_shape=(16, 16, 3), batch_size=2, data_dir=str(imagenet_dir)
        )
        capfd.readouterr()
        with pytest.raises(InputError) as raised:
            with split.errors_as_input_errors():
                list(split.dataset)
        message = str(raised.value)
        assert message.startswith(f"{bad} is corrupt, truncated or unreadable (")
        assert "Graph execution" not in message
        assert "\n" not in message and "{{" not in message
        assert capfd.readouterr().err == ""

    def test_decoder_warnings_still_reach_stderr(self, imagenet_dir, capfd):
        damage(imagenet_dir / "val" / "n01440764" / "0.JPEG", "warns")
        split = data.load(
            "imagenet", "test", input_shape=(16, 16, 3), batch_size=2, data_dir=str(imagenet_dir)
        )
        capfd.readouterr()
        with split.errors_as_input_errors():
            assert len(list(split.dataset)) == 2
        assert "Corrupt JPEG data: 399 extraneous bytes" in capfd.readouterr().err

    def test_other_errors_and_decoder_lines_pass_through(self, imagenet_dir, capfd):
        import tensorflow as tf

        split = data.load(
            "imagenet", "test", input_shape=(16, 16, 3), batch_size=2, data_dir=str(imagenet_dir)
        )
        capfd.readouterr()
        with pytest.raises(tf.errors.InvalidArgumentError, match="a model's own failure"):
            with split.errors_as_input_errors():
                os.write(2, b"Premature end of JPEG file\n")  # a decoder line: held back ...
                os.write(2, b"a line of the app\n")  # ... everything else passes at once
                raise tf.errors.InvalidArgumentError(None, None, "a model's own failure")
        err = capfd.readouterr().err
        assert err.index("a line of the app") < err.index(
            "Premature end of JPEG file"
        )  # ... printed last

    def test_deleted_file_is_named(self, imagenet_dir):
        split = data.load(
            "imagenet", "test", input_shape=(16, 16, 3), batch_size=2, data_dir=str(imagenet_dir)
        )
        gone = imagenet_dir / "val" / "n01440764" / "1.png"
        gone.unlink()
        with pytest.raises(InputError, match=f"{gone} is corrupt, truncated or unreadable"):
            with split.errors_as_input_errors():
                list(split.dataset)

    def test_first_undecodable_finds_the_first_of_many(self, tmp_path):
        import tensorflow as tf

        good = tf.io.encode_png(np.zeros((4, 4, 3), np.uint8)).numpy()
        paths = []
        for i in range(40):
            (tmp_path / f"{i:02d}.png").write_bytes(good if i not in (17, 30) else b"junk")
            paths.append(str(tmp_path / f"{i:02d}.png"))
        assert imagenet.first_undecodable(paths)[0] == paths[17]
        assert imagenet.first_undecodable(paths[:17]) is None

    def test_train_app_prints_one_line_naming_the_file(self, imagenet_dir, tmp_path):
        bad = imagenet_dir / "train" / "n01443537" / "0.JPEG"
        damage(bad, "truncated")  # TensorFlow logs this one itself, and libjpeg prints a warning
        result = run_app_as_users_do(
            "apps.train",
            *SMALL_RUN,
            "--steps_per_epoch=4",
            "--dataset=imagenet",
            "--input_shape=16,16,3",
            f"--data_dir={imagenet_dir}",
            f"--output_dir={tmp_path}/run",
        )
        assert_one_error_line(result, f"{bad} is corrupt, truncated or unreadable", "jpeg")
        assert not (tmp_path / "run").exists()  # a refused fresh run leaves no directory

    def test_evaluate_app_prints_one_line_naming_the_file(self, imagenet_dir, tmp_path):
        trained = run_app(
            "apps.train",
            *SMALL_RUN,
            "--dataset=imagenet",
            "--input_shape=16,16,3",
            f"--data_dir={imagenet_dir}",
            f"--output_dir={tmp_path}",
        )
        assert trained.returncode == 0, trained.stderr[-2000:]
        bad = imagenet_dir / "val" / "n01440764" / "1.png"
        damage(bad, "garbage")
        result = run_app_as_users_do(
            "apps.evaluate",
            f"--checkpoint={tmp_path}/model.keras",
            "--dataset=imagenet",
            f"--data_dir={imagenet_dir}",
            f"--output={tmp_path}/eval.json",
        )
        assert_one_error_line(
            result, f"{bad} is corrupt, truncated or unreadable", "Unknown image file format"
        )
        assert not (tmp_path / "eval.json").exists()


def test_convert_checks_calibration_data_before_reading_it(tmp_path):
    """A header claiming 4 PiB, NaN, complex or empty images, and --calibration_data given to a
    target that does not calibrate: one error line each, no file written."""
    from effkeras.deploy import verify

    output = tmp_path / "out.tflite"

    def refused(path, *fragments, target="int8"):
        run = run_app(
            "apps.convert",
            "--model=mlperf_tiny_resnet8",
            "--input_shape=28,28,1",
            f"--target={target}",
            f"--calibration_data={path}",
            f"--output={output}",
        )
        assert_one_error_line(run, *fragments)
        assert not output.exists()

    bomb = tmp_path / "bomb.npy"
    with open(bomb, "wb") as f:  # 128 bytes of header, no data
        header = {"descr": "<f4", "fortran_order": False, "shape": (2**44, 28, 28, 1)}
        np.lib.format.write_array_header_1_0(f, header)
    assert os.path.getsize(bomb) == 128
    refused(bomb, "cannot read --calibration_data")
    before = peak_rss_bytes()
    with pytest.raises(InputError, match="cannot read"):
        verify.read_images(str(bomb), None, "--calibration_data")
    assert peak_rss_bytes() - before < 100 * 2**20
    for values, fragment in (
        (np.full((4, 28, 28, 1), np.nan, np.float32), "NaN or infinite"),
        (np.full((4, 28, 28, 1), np.inf, np.float32), "NaN or infinite"),
        (np.zeros((4, 28, 28, 1), np.complex64), "complex64 values"),
        (np.zeros((0, 28, 28, 1), np.float32), "is empty"),
    ):
        path = tmp_path / "images.npy"
        np.save(path, values)
        refused(path, fragment)
    np.save(path, np.zeros((4, 28, 28, 1), np.float32))
    refused(path, "--calibration_data does not apply", "--target=float", target="float")


def write_h5_weights(path, shape, weight_names=(b"stem_conv/kernel:0",)):
    """A tf_keras-layout weights file with one layer whose kernel declares `shape` (no data
    written: HDF5 allocates late, so the file stays a few KiB)."""
    import h5py

    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = [b"stem_conv"]
        group = f.create_group("stem_conv")
        group.attrs["weight_names"] = list(weight_names)
        group.create_dataset("stem_conv/kernel:0", shape=shape, dtype="f4")


def test_weight_files_declaring_gigabytes_are_refused_before_reading(tmp_path):
    import io
    import zipfile

    from effkeras import models
    from effkeras.interop import larq_zoo
    from effkeras.interop.weights import set_weights

    model = models.get("quicknet", input_shape=(32, 32, 3))
    kept = [w.copy() for w in model.get_weights()]
    before = peak_rss_bytes()
    for shape, claim in (((2**29,), "2,147,483,648 bytes"), ((2**38,), "1,099,511,627,776")):
        bomb = tmp_path / "bomb.h5"
        write_h5_weights(bomb, shape)
        assert os.path.getsize(bomb) < 16 << 10
        with pytest.raises(InputError, match=f"declares {claim}.*quicknet_weights.h5"):
            larq_zoo.load_weights(model, bomb)
        with pytest.raises(InputError, match=f"declares {claim}"):
            set_weights(model, str(bomb))
    npz = tmp_path / "bomb.npz"
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f4", "fortran_order": False, "shape": (2**40,)}
    )
    with zipfile.ZipFile(npz, "w") as archive:
        archive.writestr("arr_0.npy", header.getvalue())
    with pytest.raises(InputError, match="declares 4,398,046,511,104 bytes of weights, more"):
        set_weights(model, str(npz))
    assert peak_rss_bytes() - before < 100 << 20
    missing = tmp_path / "missing.h5"  # lists a weight it does not hold
    write_h5_weights(missing, (3,), weight_names=(b"stem_conv/kernel:0", b"stem_conv/bias:0"))
    with pytest.raises(InputError, match="is not a tf_keras weights file .*bias"):
        larq_zoo.load_weights(model, missing)
    assert all(np.array_equal(a, b) for a, b in zip(model.get_weights(), kept, strict=True))


def test_hostile_larq_configs_are_one_input_error():
    import json

    from effkeras.interop import import_larq_model

    conv = {"name": "c", "filters": 2, "kernel_size": [1, 1]}
    config = {
        "class_name": "Functional",
        "config": {
            "name": "m",
            "layers": [
                {
                    "class_name": "InputLayer",
                    "name": "in",
                    "config": {"batch_input_shape": [None, 4, 4, 3], "name": "in"},
                    "inbound_nodes": [],
                },
                {
                    "class_name": "Conv2D",
                    "name": "c",
                    "config": conv,
                    "inbound_nodes": [[["in", 0, 0, {}]]],
                },
            ],
            "input_layers": [["in", 0, 0]],
            "output_layers": [["c", 0, 0]],
        },
    }
    model = import_larq_model(json.dumps(config), [np.ones((1, 1, 3, 2)), np.zeros(2)])
    assert model.count_params() == 8  # the config imports as it is

    def refused(text, match):
        with pytest.raises(InputError, match=match):
            import_larq_model(text, [])

    layers = config["config"]["layers"]
    shell = {"module": "os", "class_name": "system", "config": {"command": "touch /tmp/x"}}
    layers[1]["config"] = {**conv, "kernel_initializer": shell}
    refused(json.dumps(config), "layer 'c' names the Python module 'os'")
    layers[1] = {**layers[1], "class_name": "Lambda", "config": {"name": "c", "function": "x"}}
    refused(json.dumps(config), "layer 'c' is a Lambda")
    layers[1] = {**layers[1], "class_name": "Conv2D", "config": {**conv, "filters": "two"}}
    refused(json.dumps(config), "Keras cannot build the larq model")
    refused("{not json", "is not JSON")
    refused(json.dumps({"class_name": "Functional", "config": {}}), "no layer list")
