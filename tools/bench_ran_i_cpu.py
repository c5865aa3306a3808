"""RAN-i-T against ConvNeXt-T on a CPU: float TFLite in LiteRT, one thread, side by side.

python -m tools.bench_ran_i_cpu [--runs=10] [--warmup=2] [--input_size=224] [--small]
    [--output_dir=bench_ran_i]

Regenerates docs/rans/cpu/bench_ran_i_cpu.json and .png (--runs=20 --output_dir=docs/rans/cpu).

RAN-i (Bhardwaj et al., arXiv 2208.08562) claims about 40% more frames per second than ConvNeXt
(Liu et al., arXiv 2201.03545) on Arm server CPUs. Both models (random weights) go through
effkeras.benchmark as apps.benchmark --targets=float does (`effkeras.deploy.convert`, checked
against Keras) and run in one LiteRT interpreter each (XNNPack, one thread, batch 1), timed by
`benchmark.time_interleaved`: the two take turns run by run, so drift in the machine's speed
hits both alike; the report is the median of --runs invokes per model, the
latency ratio convnext_t / ran_i_t (RAN-i's FPS gain on this CPU) beside the MAC ratio, as a
markdown table, and with --output_dir as bench_ran_i_cpu.json and a bar plot
bench_ran_i_cpu.png. --small builds the registry's small test copies (ModelInfo.small) for a
quick check of the tool itself. A ratio measured on this machine, not on the paper's CPU.
"""

from absl import flags

from apps import _cli
from tools import _report

flags.DEFINE_integer("runs", 10, "Timed invokes per model.")
flags.DEFINE_integer("warmup", 2, "Untimed invokes per model first.")
flags.DEFINE_integer("input_size", 224, "Input height and width.")
flags.DEFINE_bool("small", False, "Build the small test copies (ModelInfo.small).")
flags.DEFINE_string("output_dir", None, "Write bench_ran_i_cpu.json and .png here.")
FLAGS = flags.FLAGS

MODELS = ("ran_i_t", "convnext_t")  # the RAN-i model, then its peer
THREADS = 1
NAME = "bench_ran_i_cpu"


def prepare(name, size, small):
    """(row, zero-argument invoke) of `name` converted to float TFLite (effkeras.benchmark)."""
    import keras

    from effkeras import benchmark, models
    from effkeras.graph import nn_mass

    info = models.info(name)
    keras.utils.set_random_seed(0)
    model = models.get(name, input_shape=(size, size, 3), **(info.small if small else {}))
    loaded = benchmark.Loaded(name, model)
    flatbuffer, report = benchmark.convert(loaded, "float")
    described = benchmark.describe(loaded, "float", flatbuffer, report)
    row = {
        "model": name,
        "input": described.input,
        "params": described.params,
        "macs": described.macs,
        "nn_mass": nn_mass.model_mass(model),
        "gelu_units": nn_mass.nonlinear_units(model),
        "size_bytes": described.size_bytes,
        "op_census": described.ops,
        "max_rel_diff_vs_keras": report.max_rel_diff,
    }
    return row, benchmark.inference(flatbuffer, "float", THREADS)


def table(report):
    lines = [
        "| model | input | params | MACs | NN-Mass | GELU units | .tflite bytes | "
        "median ms (1 thread) | FPS |",
        "|" + "---|" * 9,
    ]
    for r in report["models"]:
        lines.append(
            f"| {r['model']} | {r['input']} | {r['params'] / 1e6:.2f} M | "
            f"{r['macs'] / 1e9:.3f} G | {r['nn_mass']:,} | "
            f"{r['gelu_units'] / 1e6:.2f} M | "
            f"{r['size_bytes']:,} | {r['median_ms']:.2f} | {1e3 / r['median_ms']:.2f} |"
        )
    lines.append(
        f"\nconvnext_t / ran_i_t: latency {report['speedup']:.3f}x "
        f"(RAN-i-T FPS gain), MACs {report['mac_ratio']:.3f}x; "
        f"LiteRT, {THREADS} thread, median of {report['runs']} alternating runs"
    )
    return "\n".join(lines)


def plot(report, path):
    names = [r["model"] for r in report["models"]]
    with _report.figure(path, ncols=2, figsize=(9, 3.5)) as (figure, (latency, macs)):
        latency.bar(names, [r["median_ms"] for r in report["models"]], color=["C0", "C1"])
        latency.set(
            ylabel="median ms (LiteRT, 1 thread)",
            title=f"latency convnext_t / ran_i_t: {report['speedup']:.2f}x",
        )
        macs.bar(names, [r["macs"] / 1e9 for r in report["models"]], color=["C0", "C1"])
        macs.set(ylabel="GMACs", title=f"MACs convnext_t / ran_i_t: {report['mac_ratio']:.2f}x")
        figure.suptitle(f"float TFLite, {report['models'][0]['input']}")


def main(argv):
    import os

    from effkeras import benchmark, fileio
    from effkeras.errors import InputError

    if FLAGS.runs < 1 or FLAGS.warmup < 0:
        raise InputError("--runs must be >= 1 and --warmup >= 0")
    if FLAGS.input_size < 32:
        raise InputError(
            f"--input_size must be >= 32 (the models' total stride), got {FLAGS.input_size}"
        )
    if FLAGS.output_dir:
        fileio.check_writable(FLAGS.output_dir, "--output_dir", directory=True)
    rows, invokes = [], {}
    for name in MODELS:
        row, invokes[name] = prepare(name, FLAGS.input_size, FLAGS.small)
        rows.append(row)
    times = benchmark.time_interleaved(
        invokes, runs=FLAGS.runs, warmup=FLAGS.warmup, progress=False
    )
    for row in rows:
        row.update(
            median_ms=benchmark.quartiles(times[row["model"]])[0],
            runs=FLAGS.runs,
            times_ms=times[row["model"]],
        )
    ran_i, peer = rows
    report = {
        "models": rows,
        "threads": THREADS,
        "runs": FLAGS.runs,
        "warmup": FLAGS.warmup,
        "small": FLAGS.small,
        "speedup": peer["median_ms"] / ran_i["median_ms"],
        "mac_ratio": peer["macs"] / ran_i["macs"],
    }
    print(table(report))
    if FLAGS.output_dir:
        fileio.write_json(os.path.join(FLAGS.output_dir, f"{NAME}.json"), report)
        plot(report, os.path.join(FLAGS.output_dir, f"{NAME}.png"))


if __name__ == "__main__":
    _cli.run(main)
