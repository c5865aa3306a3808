"""Every Larq Zoo 2.4 architecture through effkeras' importer, against larq itself.

python -m tools.larq_zoo_check [--output_dir=docs/larq_zoo] [--architectures=QuickNet,XNORNet]
    [--work_dir=DIR [--reuse]]

tests/larq_oracle.py (`zoo` command, a tf_keras subprocess with larq 0.14 and larq_zoo 2.4)
builds each architecture that larq_zoo.sota and larq_zoo.literature export with weights=None,
10 classes and random weights (BN variances > 0) at the input size given there, saves its JSON
config, .h5 weights, outputs on a random batch, and larq's own LCE conversion
(larq_compute_engine.convert_keras_model). Then, here, for each architecture:
`effkeras.interop.import_larq_model`, the largest logit difference relative to the largest
|logit| (pre-softmax: random weights saturate the softmax) and the probability difference, and
the LCE op census of `effkeras.deploy.lce.convert` against larq's flatbuffer. Architectures
with multi-bit activations (DoReFaNet) convert with allow_float_fallback: LCE has no kernel for
them, larq's conversion keeps them float as well.

With --output_dir: import_check.md (the table) and import_check.json (the rows). ~10 minutes
on 2 cores (larq's conversions run with the pure-Python protobuf larq_zoo needs).

Regenerates docs/larq_zoo/import_check.md and .json (--output_dir=docs/larq_zoo).
"""

import collections
import json
import os
import subprocess
import sys
import tempfile
import time

from absl import flags

from apps import _cli
from tools import _report

flags.DEFINE_string(
    "output_dir", None, "Write import_check.md and .json here.", allow_override=True
)
flags.DEFINE_list(
    "architectures", None, "Larq Zoo architectures to check (default: every one larq_zoo exports)."
)
flags.DEFINE_string(
    "work_dir",
    None,
    "Keep the oracle's files (configs, weights, larq's "
    "flatbuffers) here (default: a temporary directory).",
)
flags.DEFINE_bool(
    "reuse", False, "Use the oracle's files already in --work_dir instead of running it again."
)
FLAGS = flags.FLAGS

STEM = "import_check"
ORACLE = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "larq_oracle.py"
)


def run_oracle(work_dir, architectures=None):
    """The oracle's zoo.json manifest, with every file in `work_dir`."""
    from effkeras.errors import InputError

    env = {**os.environ, "TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run(
        [sys.executable, ORACLE, "zoo", work_dir, "--lce=all", *(architectures or ())],
        env=env,
        capture_output=True,
        text=True,
    )
    if done.returncode:
        raise InputError(
            f"the larq oracle failed (is larq_zoo installed? see "
            f"requirements-larq-zoo.txt): {done.stderr[-2000:]}"
        )
    with open(os.path.join(work_dir, "zoo.json")) as f:
        return json.load(f)


def mapped_layers(model):
    """What the importer translated beyond larq's and Keras' namesakes, counted."""
    import keras

    from effkeras.graph import leaf_layers
    from effkeras.interop import larq

    counts = collections.Counter()
    for layer in leaf_layers(model):
        if isinstance(layer, larq.TFOpCall):
            counts[f"tf.{layer.function}"] += 1
        elif isinstance(layer, (larq.AddToLastChannels, keras.layers.Identity)):
            counts[type(layer).__name__] += 1
        for attribute in ("input_quantizer", "kernel_quantizer", "depthwise_quantizer"):
            quantizer = getattr(layer, attribute, None)
            if type(quantizer).__name__ in ("XnorWeightScale", "MagnitudeAwareSignUnclipped"):
                counts[type(quantizer).__name__] += 1
    return dict(sorted(counts.items()))


def check(name, entry, work_dir):
    """One architecture's row: import, outputs against larq, LCE census against larq's."""
    import keras
    import numpy as np

    from effkeras.deploy import lce
    from effkeras.deploy.flatbuffer import op_census, operators
    from effkeras.errors import InputError
    from effkeras.interop import import_larq_model

    path = os.path.join(work_dir, name)
    start = time.perf_counter()
    model = import_larq_model(f"{path}.json", f"{path}.h5")
    row = {
        "architecture": name,
        "input_size": entry["input_size"],
        "params": int(model.count_params()),
        "mapped": mapped_layers(model),
    }
    reference = np.load(f"{path}_io.npz")
    logits = keras.Model(model.input, model.get_layer(entry["logits_layer"]).output)
    ours = logits(reference["x"], training=False).numpy()
    row["max_abs_logit"] = float(np.abs(reference["logits"]).max())
    row["logits_max_rel_diff"] = float(
        np.abs(ours - reference["logits"]).max() / row["max_abs_logit"]
    )
    row["probabilities_max_abs_diff"] = float(
        np.abs(model(reference["x"], training=False).numpy() - reference["y"]).max()
    )
    row["import_s"] = round(time.perf_counter() - start, 1)

    row["larq_lce"] = entry["lce"]
    if entry["lce"] != "ok":
        return row
    theirs = op_census(operators(open(f"{path}.tflite", "rb").read()))
    start = time.perf_counter()
    try:
        flatbuffer, report = lce.convert(model, sample=reference["x"], max_rel_diff=1e-5)
        row["float_fallback"] = []
    except InputError:  # multi-bit activations: no LCE kernel; larq's file keeps them float too
        flatbuffer, report = lce.convert(
            model, sample=reference["x"], max_rel_diff=1e-5, allow_float_fallback=True
        )
        row["float_fallback"] = list(report.float_fallback)
    row["lce_s"] = round(time.perf_counter() - start, 1)
    ours = report.op_census
    row.update(
        census_equal=ours == theirs,
        bconv=[ours.get("LceBconv2d", 0), theirs.get("LceBconv2d", 0)],
        census_differences={
            op: [ours.get(op, 0), theirs.get(op, 0)]
            for op in sorted(set(ours) | set(theirs))
            if ours.get(op, 0) != theirs.get(op, 0)
        },
        lce_bytes=[len(flatbuffer), os.path.getsize(f"{path}.tflite")],
        lce_max_rel_diff=report.max_rel_diff,
    )
    return row


HEADER = """# Larq Zoo 2.4 through effkeras' importer

Every architecture larq_zoo 2.4 exports, built by larq itself (`tests/larq_oracle.py zoo`:
weights=None, 10 classes, random weights with BN variances > 0, a batch of 2 random inputs),
imported with `effkeras.interop.import_larq_model`, then compared: the logits (the softmax's
input: random weights saturate the softmax) relative to the largest |logit|, the probabilities,
and the LCE op census of `effkeras.deploy.lce.convert` against larq's own
`larq_compute_engine.convert_keras_model`. "Mapped by name": what the importer translated
beyond larq's and Keras' namesakes (TFOpLambda calls, the Zoo's Lambdas and functions).
Written by `python -m tools.larq_zoo_check --output_dir=docs/larq_zoo`.
"""
FOOTNOTE = (
    "More LceBconv2d than larq's file: larq's conversion leaves a binary conv float "
    "when it quantizes the kernel at run time (LCE's constant folding gives up on large "
    "kernels; XNORNet's 6x6x256x4096 one), effkeras.deploy.lce exports quantized kernels "
    "as constants."
)


def table(rows):
    header = (
        "architecture",
        "input",
        "params",
        "mapped by name",
        "largest abs logit",
        "logits: max rel. diff",
        "probabilities: max abs diff",
        "LCE op census vs larq's",
        "LceBconv2d (effkeras / larq)",
        "LCE bytes (effkeras / larq)",
    )
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        mapped = ", ".join(f"{count} {what}" for what, count in r["mapped"].items()) or "-"
        if r["larq_lce"] != "ok":
            census, bconv, size = f"larq's conversion failed: {r['larq_lce'][:80]}", "-", "-"
        else:
            census = (
                "equal"
                if r["census_equal"]
                else "differs: "
                + ", ".join(f"{op} {a}/{b}" for op, (a, b) in r["census_differences"].items())
            )
            if r["float_fallback"]:
                census += f" ({len(r['float_fallback'])} multi-bit layers float in both)"
            bconv = " / ".join(map(str, r["bconv"])) + (
                " (*)" if r["bconv"][0] > r["bconv"][1] else ""
            )
            size = " / ".join(f"{b:,}" for b in r["lce_bytes"])
        lines.append(
            f"| {r['architecture']} | {r['input_size']} | {r['params']:,} | {mapped} | "
            f"{r['max_abs_logit']:.3g} | {r['logits_max_rel_diff']:.1e} | "
            f"{r['probabilities_max_abs_diff']:.1e} | {census} | {bconv} | {size} |"
        )
    if any(r.get("bconv", (0, 0))[0] > r.get("bconv", (0, 0))[1] for r in rows):
        lines += ["", f"(*) {FOOTNOTE}"]
    return "\n".join(lines)


def main(argv):
    from importlib import metadata

    from effkeras import fileio
    from effkeras.errors import InputError

    if FLAGS.reuse and not FLAGS.work_dir:
        raise InputError("--reuse reads the oracle's files from --work_dir: give it")
    if FLAGS.output_dir:  # before the ten minutes of work, not after them
        fileio.check_writable(FLAGS.output_dir, "--output_dir", directory=True)
    with tempfile.TemporaryDirectory() as scratch:
        work_dir = FLAGS.work_dir or scratch
        os.makedirs(work_dir, exist_ok=True)
        if FLAGS.reuse:
            try:
                with open(os.path.join(work_dir, "zoo.json")) as f:
                    manifest = json.load(f)
            except OSError as e:
                raise InputError(
                    f"no oracle files to reuse in {work_dir} ({e}); run without --reuse"
                ) from None
            unknown = set(FLAGS.architectures or ()) - set(manifest)
            if unknown:
                raise InputError(
                    f"{sorted(unknown)} not in {work_dir}/zoo.json; run without --reuse"
                )
            manifest = {name: manifest[name] for name in FLAGS.architectures or manifest}
        else:
            manifest = run_oracle(work_dir, FLAGS.architectures)
        rows = [check(name, entry, work_dir) for name, entry in manifest.items()]
    versions = {
        package: metadata.version(package)
        for package in ("larq", "larq-zoo", "larq-compute-engine", "keras", "tensorflow")
    }
    text = (
        HEADER
        + "\n"
        + table(rows)
        + "\n\n"
        + ", ".join(f"{p} {v}" for p, v in versions.items())
        + "; random weights, batch of 2, logits relative to the largest |logit|."
    )
    print(text)
    if FLAGS.output_dir:
        _report.write(FLAGS.output_dir, STEM, text, {"versions": versions, "rows": rows})


if __name__ == "__main__":
    _cli.run(main)
