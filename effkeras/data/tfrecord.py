"""ImageNet as sharded TFRecord files, the layout of the widely used ImageNet TFRecords.

<data_dir>/train-00000-of-01024 ... train-01023-of-01024 and validation-00000-of-00128 ...;
each record a tf.train.Example with `image/encoded` (the JPEG/PNG file's bytes) and
`image/class/label` (int64; 1..1000 in the standard shards, 0 being "background"), and usually
`image/class/synset` (b"n01440764"), `image/format`, `image/height`, `image/width` and
`image/filename`. dataset_info.json beside the shards holds what reading them needs: examples
and shards per split, the class names (in label order) and the label offset (1: 1-based).

write_shards() makes such shards (and dataset_info.json) from ImageNet-style folders, index()
makes dataset_info.json for shards written elsewhere; `python -m tools.imagenet_shards` runs
either.
"""

import contextlib
import dataclasses
import json
import os
import re

import numpy as np
import tensorflow as tf
from tqdm import tqdm

from effkeras import fileio
from effkeras.data import imagenet
from effkeras.errors import InputError

# split name of effkeras.data -> the shards' file prefix
PREFIXES = {"train": "train", "test": "validation"}
SHARD_NAME = re.compile(r"(train|validation)-(\d+)-of-(\d+)")
INFO_FILE = "dataset_info.json"
# The full ImageNet-1k shards (ILSVRC-2012): their counts are known without dataset_info.json.
IMAGENET_1K = {
    "shards": {"train": 1024, "validation": 128},
    "examples": {"train": 1_281_167, "validation": 50_000},
    "class_names": [str(label) for label in range(1, 1001)],
    "label_offset": 1,
}
CYCLE_LENGTH = 16  # shards read at once
SHUFFLE_BUFFER = 10_000  # records; the shard order is shuffled as well
READ_ERRORS = imagenet.FILE_ERRORS + (tf.errors.DataLossError,)  # DataLoss: a corrupt record
FEATURES = {
    "image/encoded": tf.io.FixedLenFeature([], tf.string),
    "image/class/label": tf.io.FixedLenFeature([], tf.int64),
}
LAYOUT = (
    "expected TFRecord shards <data_dir>/train-00000-of-NNNNN ... and "
    "validation-00000-of-NNNNN ... (tf.train.Example records with image/encoded and "
    "image/class/label)"
)
# What an image file starts with -> image/format (the formats tf.io.decode_image reads).
MAGIC = (
    (b"\xff\xd8", "JPEG"),
    (b"\x89PNG", "PNG"),
    (b"GIF8", "GIF"),
    (b"BM", "BMP"),
    (b"RIFF", "WEBP"),
)


def is_sharded(data_dir):
    """True when `data_dir` holds train-*-of-* shards."""
    return (
        bool(data_dir)
        and os.path.isdir(data_dir)
        and any(
            SHARD_NAME.fullmatch(name) and name.startswith("train-")
            for name in os.listdir(data_dir)
        )
    )


def shard_files(data_dir, prefix):
    """The sorted paths of <data_dir>/<prefix>-*-of-*; InputError unless they are one complete set
    (a missing shard would silently drop its examples)."""
    found = {}
    for name in os.listdir(data_dir):
        match = SHARD_NAME.fullmatch(name)
        if match and match[1] == prefix:
            found[name] = (int(match[2]), int(match[3]))
    if not found:
        raise InputError(f"{data_dir} has no {prefix}-*-of-* shards: {LAYOUT}")
    totals = sorted({total for _, total in found.values()})
    if len(totals) > 1:
        raise InputError(
            f"{data_dir} mixes {prefix} shard sets of {' and '.join(map(str, totals))} "
            f"files; keep one set"
        )
    missing = sorted(set(range(totals[0])) - {index for index, _ in found.values()})
    if missing:
        raise InputError(
            f"{data_dir} lacks {len(missing)} of the {totals[0]} {prefix} shards "
            f"(e.g. {_shard_name(prefix, missing[0], totals[0])}); copy them there"
        )
    return [os.path.join(data_dir, name) for name in sorted(found)]


def _shard_name(prefix, index, total):
    return f"{prefix}-{index:05d}-of-{total:05d}"


# --- reading ---------------------------------------------------------------------------------


@dataclasses.dataclass
class ShardedSplit:
    files: list  # the split's shard paths, sorted
    num_examples: int
    class_names: list  # in label order: class_names[label - label_offset]
    label_offset: int  # the files' label of class 0

    def records(self, shuffle, seed):
        """The serialized examples, read CYCLE_LENGTH shards at a time in a fixed order
        (a seeded shuffled shard order for `shuffle`).

        The auto-shard policy is AUTO, stated explicitly: under tf.distribute (e.g.
        MultiWorkerMirroredStrategy) TensorFlow shards this file-based source by FILE, so each
        worker reads its own subset of the shards (give every worker the same seed); with
        fewer shards than workers it falls back to DATA, every worker reading every shard and
        keeping its share of the examples (write more shards to avoid that).
        """
        files = tf.data.Dataset.from_tensor_slices(self.files)
        if shuffle:
            files = files.shuffle(len(self.files), seed=seed, reshuffle_each_iteration=True)
        records = files.interleave(
            tf.data.TFRecordDataset,
            cycle_length=min(CYCLE_LENGTH, len(self.files)),
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        )
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = (
            tf.data.experimental.AutoShardPolicy.AUTO
        )
        return records.with_options(options)

    def decode(self, record):
        """(uint8 image (H, W, 3), int32 label from 0) of a serialized example; a label outside
        the split's classes fails as a bad record."""
        image, label = _parse(record)
        label = tf.cast(label - self.label_offset, tf.int32)
        tf.debugging.Assert(
            (label >= 0) & (label < len(self.class_names)),
            ["image/class/label out of range:", label + self.label_offset],
        )
        return image, label

    def first_bad_shard(self):
        """(path, reason) of the first shard with a record that cannot be read or decoded or
        whose label is not a class, or None. The slow path after a pipeline failed: every
        record is decoded again."""
        low, high = self.label_offset, self.label_offset + len(self.class_names) - 1
        for path in self.files:
            checks = (
                tf.data.TFRecordDataset(path)
                .map(_shape_and_label, num_parallel_calls=tf.data.AUTOTUNE)
                .batch(1024)
            )
            try:
                for _, labels in checks.as_numpy_iterator():
                    outside = labels[(labels < low) | (labels > high)]
                    if len(outside):
                        return path, f"image/class/label {outside[0]} is not in {low}..{high}"
            except READ_ERRORS as e:
                return path, _reason(e)
        return None

    @contextlib.contextmanager
    def errors_as_input_errors(self):
        """A read/decode failure inside a pipeline of this split as an InputError naming the
        shard (the decoders' stderr lines held back meanwhile, as for folders); a failure that
        no shard explains is re-raised unchanged."""
        messages = imagenet.DecoderMessages()
        with messages:
            try:
                yield
            except READ_ERRORS:
                found = self.first_bad_shard()
                if found is None:
                    raise
                messages.restore(keep_held=False)
                bad, reason = found
                raise InputError(
                    f"{bad} holds a corrupt record or image ({reason}); write or "
                    f"copy that shard again"
                ) from None


def _parse(record):
    """(uint8 image (H, W, 3), label as stored) of a serialized example."""
    example = tf.io.parse_single_example(record, FEATURES)
    image = tf.io.decode_image(example["image/encoded"], channels=3, expand_animations=False)
    image.set_shape([None, None, 3])
    return image, example["image/class/label"]


def _shape_and_label(record):
    """The decoded image's shape (decoding every image) and the stored label."""
    image, label = _parse(record)
    return tf.shape(image), label


def _reason(error):
    """The reader's or decoder's own words from a TensorFlow error."""
    return re.sub(
        r"^Error in user-defined function passed to .*? transformation with "
        r"iterator: \S+: ",
        "",
        imagenet._reason(error),
    )


def read(data_dir, split):
    """The ShardedSplit of `split` ('train' or 'test': the validation-* shards).

    The counts and class names come from dataset_info.json; without it, the full ImageNet-1k
    layout (1024 train, 128 validation shards) has its known counts, and its class names are
    the labels as numbers ('1' .. '1000': naming them by synset would need a pass over the
    records; index() makes that pass).
    """
    prefix = PREFIXES[split]
    files = shard_files(data_dir, prefix)
    info = _info(data_dir)
    if info["shards"].get(prefix) != len(files):
        raise InputError(
            f"{os.path.join(data_dir, INFO_FILE)} describes "
            f"{info['shards'].get(prefix, 0)} {prefix} shards but there are "
            f"{len(files)}; run `python -m tools.imagenet_shards --index={data_dir}` "
            f"again"
        )
    _check_count(files, info["examples"][prefix], prefix, data_dir)
    return ShardedSplit(files, info["examples"][prefix], info["class_names"], info["label_offset"])


COUNT_ALL_BYTES = 256 << 20  # shards this small are counted in full; larger ones by the first


def _records(path):
    try:
        return int(tf.data.TFRecordDataset(path).reduce(np.int64(0), lambda n, _: n + 1))
    except READ_ERRORS as e:
        raise InputError(
            f"{path} holds a corrupt record ({_reason(e)}); write or copy that shard again"
        ) from None


def _check_count(files, claimed, prefix, data_dir):
    """InputError unless the shards can hold the `claimed` examples (the epoch length and the
    schedule follow from it): counted exactly when the shards are small, else within a factor
    of 2 of the first shard's count times the number of shards (sharding tools split evenly)."""
    sizes = sum(os.path.getsize(path) for path in files)
    exact = sizes <= COUNT_ALL_BYTES
    counted = sum(map(_records, files if exact else files[:1]))
    low, high = (
        (counted, counted) if exact else (counted * len(files) / 2, 2 * counted * len(files))
    )
    if counted == 0 or not low <= claimed <= high:
        found = (
            f"hold {counted}"
            if exact
            else f"hold about {counted * len(files)} ({counted} in the first)"
        )
        raise InputError(
            f"{os.path.join(data_dir, INFO_FILE)} claims {claimed} {prefix} examples, but the "
            f"{len(files)} {prefix} shards {found}; run `python -m tools.imagenet_shards "
            f"--index={data_dir}` again"
        )


def _declared_shards(data_dir):
    """{prefix: the NNNNN of its -of-NNNNN file names}."""
    return {
        match[1]: int(match[3])
        for match in map(SHARD_NAME.fullmatch, os.listdir(data_dir))
        if match
    }


def _info(data_dir):
    path = os.path.join(data_dir, INFO_FILE)
    if not os.path.exists(path):
        if _declared_shards(data_dir) == IMAGENET_1K["shards"]:
            return IMAGENET_1K
        raise InputError(
            f"{data_dir} holds TFRecord shards but no {INFO_FILE}; count them once "
            f"with `python -m tools.imagenet_shards --index={data_dir}`"
        )
    try:
        with open(path) as f:
            info = json.load(f)
        shards, examples = info["shards"], info["examples"]
        if not (
            isinstance(info["class_names"], list)
            and isinstance(info["label_offset"], int)
            and all(isinstance(examples[prefix], int) for prefix in shards)
        ):
            raise ValueError("wrong types")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise InputError(
            f"cannot read {path} ({e}); make it again with "
            f"`python -m tools.imagenet_shards --index={data_dir}`"
        ) from None
    return info


def index(data_dir):
    """Writes dataset_info.json for the shards in `data_dir` (e.g. written by other tools) from
    one pass over their records, and returns it: examples per split, the class names (each
    label's image/class/synset where the records have one, else the label as a number) and the
    label offset (1 when the smallest label is 1, as in the standard shards; else 0)."""
    if not is_sharded(data_dir):
        raise InputError(f"{data_dir} holds no train-*-of-* shards: {LAYOUT}")
    features = {
        "image/class/label": tf.io.FixedLenFeature([], tf.int64),
        "image/class/synset": tf.io.FixedLenFeature([], tf.string, default_value=""),
    }
    declared = _declared_shards(data_dir)
    shards, examples, synsets = {}, {}, {}  # synsets: label -> the synsets seen with it
    for prefix in (prefix for prefix in PREFIXES.values() if prefix in declared):
        files = shard_files(data_dir, prefix)
        parsed = (
            tf.data.TFRecordDataset(files, num_parallel_reads=tf.data.AUTOTUNE)
            .map(
                lambda record: tf.io.parse_single_example(record, features),
                num_parallel_calls=tf.data.AUTOTUNE,
            )
            .batch(4096)
        )
        count = 0
        try:
            for batch in parsed.as_numpy_iterator():
                count += len(batch["image/class/label"])
                for label, synset in zip(
                    batch["image/class/label"].tolist(), batch["image/class/synset"].tolist()
                ):
                    synsets.setdefault(label, set()).add(synset.decode())
        except READ_ERRORS as e:
            raise InputError(
                f"cannot read the {prefix} shards of {data_dir} "
                f"({_reason(e)}); write or copy them again"
            ) from None
        shards[prefix], examples[prefix] = len(files), count
    if not synsets:
        raise InputError(f"the train shards of {data_dir} hold no records: {LAYOUT}")
    low = min(synsets)
    if low < 0:
        raise InputError(
            f"the shards of {data_dir} have the negative label {low}; labels count "
            f"classes from 0 or 1"
        )
    offset = 1 if low == 1 else 0
    class_names = []
    for label in range(offset, max(synsets) + 1):
        named = sorted(synsets.get(label, set()) - {""})
        if len(named) > 1:
            raise InputError(
                f"label {label} has several synsets in the shards of {data_dir} "
                f"({', '.join(named[:3])}); one label, one class"
            )
        class_names.append(named[0] if named else str(label))
    info = {
        "shards": shards,
        "examples": examples,
        "class_names": class_names,
        "label_offset": offset,
    }
    fileio.write_json(os.path.join(data_dir, INFO_FILE), info)
    return info


# --- writing ---------------------------------------------------------------------------------


def write_shards(
    folder_dir, output_dir, train_shards=1024, validation_shards=128, seed=0, progress=False
):
    """Writes the ImageNet-style folders of `folder_dir` (effkeras.data.imagenet) as shards:
    train/ -> <output_dir>/train-XXXXX-of-NNNNN, val/ -> validation-XXXXX-of-NNNNN, and
    dataset_info.json; returns the info.

    Each record stores the file's bytes unchanged (every image is decoded once, as a check and
    for image/height and image/width), its label from 1 as the standard shards (classes are the
    sorted train folders), its class folder as image/class/synset and `<class>/<file>` as
    image/filename. The images are spread over the shards in a seeded shuffled order, so every
    shard holds a mix of classes (what makes reading a subset of shards per worker fair). Each
    shard is written under a temporary name and renamed when complete; a failed run removes
    the shards it wrote.
    """
    counts = {"train": train_shards, "test": validation_shards}
    for split, count in counts.items():
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise InputError(
                f"the number of {PREFIXES[split]} shards must be a positive integer, got {count!r}"
            )
    if os.path.isdir(output_dir) and any(
        SHARD_NAME.fullmatch(name) or name == INFO_FILE for name in os.listdir(output_dir)
    ):
        raise InputError(
            f"{output_dir} already holds shards; delete them or choose another output folder"
        )
    listed = {split: imagenet.list_files(folder_dir, split) for split in counts}
    for split, (paths, _, _) in listed.items():
        if counts[split] > len(paths):
            raise InputError(
                f"{counts[split]} {PREFIXES[split]} shards for {len(paths)} images: "
                f"ask for at most {len(paths)} shards"
            )
    class_names = listed["train"][2]
    info = {"shards": {}, "examples": {}, "class_names": class_names, "label_offset": 1}
    written = []
    try:
        for split, (paths, labels, _) in listed.items():
            prefix, total = PREFIXES[split], counts[split]
            _write_split(
                os.path.join(folder_dir, imagenet.SPLIT_FOLDERS[split]),
                paths,
                labels,
                class_names,
                output_dir,
                prefix,
                total,
                seed,
                progress,
                written,
            )
            info["shards"][prefix], info["examples"][prefix] = total, len(paths)
        fileio.write_json(os.path.join(output_dir, INFO_FILE), info)
    except BaseException:  # no partial set: a run after the fix starts afresh
        for path in written:
            os.remove(path)
        raise
    return info


def _write_split(
    split_dir, paths, labels, class_names, output_dir, prefix, total, seed, progress, written
):
    """Writes one split's shards, appending each shard's path to `written` once it is there."""
    order = np.random.default_rng(seed).permutation(len(paths))
    images = _checked_images([paths[i] for i in order])
    with (
        imagenet.decode_errors_as_input_errors(paths),
        tqdm(total=len(paths), desc=f"{prefix} shards", unit="image", disable=not progress) as bar,
    ):
        for shard, indices in enumerate(np.array_split(order, total)):
            path = os.path.join(output_dir, _shard_name(prefix, shard, total))
            with fileio.atomic_path(path) as tmp, tf.io.TFRecordWriter(tmp) as writer:
                for i in indices:
                    encoded, height, width = next(images)
                    writer.write(
                        _example(
                            encoded,
                            labels[i] + 1,
                            class_names[labels[i]],
                            os.path.relpath(paths[i], split_dir),
                            height,
                            width,
                        ).SerializeToString()
                    )
                    bar.update()
            written.append(path)


def _checked_images(paths):
    """An iterator of (bytes, height, width) of each file, in order, decoded in parallel."""

    def read(path):
        encoded = tf.io.read_file(path)
        shape = tf.shape(tf.io.decode_image(encoded, channels=3, expand_animations=False))
        return encoded, shape[0], shape[1]

    return (
        tf.data.Dataset.from_tensor_slices(paths)
        .map(read, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        .as_numpy_iterator()
    )


def _example(encoded, label, synset, filename, height, width):
    image_format = next((name for magic, name in MAGIC if encoded.startswith(magic)), "")

    def feature(value):
        if isinstance(value, int):
            return tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))
        return tf.train.Feature(
            bytes_list=tf.train.BytesList(
                value=[value if isinstance(value, bytes) else value.encode()]
            )
        )

    return tf.train.Example(
        features=tf.train.Features(
            feature={
                "image/encoded": feature(encoded),
                "image/format": feature(image_format),
                "image/class/label": feature(int(label)),
                "image/class/synset": feature(synset),
                "image/filename": feature(filename),
                "image/height": feature(int(height)),
                "image/width": feature(int(width)),
            }
        )
    )
