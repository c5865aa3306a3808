"""Microcontroller / micro-NPU table: MACs, parameters, int8 bytes, TFLite Micro arena bytes and
Vela's Ethos-U estimate for registry models, with a PNG plot (inferences/s against MACs).

python -m tools.mcu_table [--models=mlperf_tiny_resnet8,mobilenet_v2@96:alpha=0.35,efficientnet_lite0]
    [--accelerator=ethos-u55-128] [--reference=efficientnet_lite0] [--plot=mcu.png] [--json=mcu.json]

A model is NAME[@SIZE][:option=value,...]; weights are random (Vela's figures depend on the
weights only through compression), calibration random. Every number is measured by the run.
"""


from absl import flags

from apps import _cli
from tools import _report

flags.DEFINE_list("models", ["mlperf_tiny_resnet8", "mobilenet_v2@96:alpha=0.35",
                             "efficientnet_lite0"], "Models: NAME[@SIZE][:option=value].")
flags.DEFINE_string("accelerator", "ethos-u55-128", "Vela target.")
flags.DEFINE_string("reference", None, "A model of --models whose inferences/s the others are "
                    "given as a ratio of (e.g. efficientnet_lite0).")
flags.DEFINE_string("plot", None, "Write a PNG plot here.")
flags.DEFINE_string("json", None, "Write the rows as JSON here.")
FLAGS = flags.FLAGS


def parse(spec):
    """'mobilenet_v2@96:alpha=0.35' -> ('mobilenet_v2', 96, {'alpha': 0.35})."""
    head, _, options = spec.partition(":")
    name, _, size = head.partition("@")
    kwargs = {}
    for item in filter(None, options.split(",")):
        key, _, value = item.partition("=")
        kwargs[key] = float(value) if "." in value else int(value)
    return name, int(size) if size else None, kwargs


def measure(spec, accelerator):
    import keras

    from effkeras import deploy, models, summary

    name, size, kwargs = parse(spec)
    info = models.info(name)
    shape = (size, size, info.input_shape[-1]) if size else info.input_shape
    keras.utils.set_random_seed(0)
    model = models.get(name, input_shape=shape, **kwargs)
    totals = summary.totals(summary.summarize(model))
    int8, micro = deploy.convert(model, "tflm")
    _, npu = deploy.convert(int8, accelerator)
    return {"model": spec, "input": "x".join(map(str, shape)), "params": totals["total_params"],
            "macs": totals["binary_macs"] + totals["low_bit_macs"] + totals["float_macs"],
            "int8_bytes": len(int8), "arena_bytes": micro.arena_bytes,
            "max_lsb_diff": micro.max_lsb_diff, "npu_ops": npu.npu_ops, "cpu_ops": npu.cpu_ops,
            "inferences_per_second": npu.inferences_per_second, "sram_bytes": npu.sram_bytes,
            "flash_bytes": npu.flash_bytes}


def table(rows, accelerator, reference=None):
    """A markdown table; with `reference` (a model spec of `rows`), each model's inferences/s
    as a multiple of the reference's too."""
    base = {r["model"]: r["inferences_per_second"] for r in rows}.get(reference)
    if reference and base is None:
        raise ValueError(f"--reference {reference!r} is not one of --models")
    header = ("model", "input", "MACs", "params", "int8 bytes", "TFLM arena bytes",
              f"{accelerator} inferences/s", *((f"x {reference}",) if base else ()),
              "peak SRAM bytes", "NPU / CPU ops")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        ratio = (f"{r['inferences_per_second'] / base:.2f} | ",) if base else ()
        lines.append(f"| `{r['model']}` | {r['input']} | {r['macs'] / 1e6:.1f} M | {r['params']:,} | "
                     f"{r['int8_bytes']:,} | {r['arena_bytes']:,} | "
                     f"{r['inferences_per_second']:.1f} | {''.join(ratio)}{r['sram_bytes']:,} | "
                     f"{r['npu_ops']} / {r['cpu_ops']} |")
    return "\n".join(lines)


def plot(rows, accelerator, path):
    with _report.figure(path, figsize=(6, 4)) as (_, axis):
        for r in rows:
            axis.scatter(r["macs"] / 1e6, r["inferences_per_second"])
            axis.annotate(r["model"], (r["macs"] / 1e6, r["inferences_per_second"]), fontsize=8)
        axis.set(xscale="log", yscale="log", xlabel="MACs (M)",
                 ylabel="inferences/s (Vela estimate)", title=f"int8 on {accelerator}")


def main(argv):
    from effkeras.fileio import write_json

    from effkeras.errors import InputError

    if FLAGS.reference and FLAGS.reference not in FLAGS.models:
        raise InputError(f"--reference {FLAGS.reference!r} must be one of --models")
    rows = [measure(spec, FLAGS.accelerator) for spec in FLAGS.models]
    print(table(rows, FLAGS.accelerator, FLAGS.reference))
    if FLAGS.json:
        write_json(FLAGS.json, rows)
    if FLAGS.plot:
        plot(rows, FLAGS.accelerator, FLAGS.plot)


if __name__ == "__main__":
    _cli.run(main)
