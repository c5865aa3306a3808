"""ERN on Larq Compute Engine: the w1a2 rewrite's form per layer, file size, latency vs float.

    python -m tools.bench_ern_lce [--model=ern18] [--input_size=224] [--runs=30] [--warmup=3]
        [--layers] [--no_model] [--json] [--plot=ern18_lce.png]

Regenerates the ERN-18 size and x86 latency table of docs/ern/README.md ("Deploying w1a2
through LCE") with the defaults, and with --layers the per-layer form measurements that
`--w1a2_form=auto` rests on (effkeras/graph/passes/w1a2.py).

--layers: every w1a2 conv of the model alone (its input -> the conv), rewritten in the
    thermometer and the bit-plane form (effkeras/graph/passes/w1a2.py), converted with LCE and
    timed in the LCE interpreter, one thread, the two forms taking turns; median ms per form,
    with LCE's default bconv kernel and with its indirect BGEMM kernel (`_indirect`).
model (default): the model rewritten with form="auto" and converted by `lce.convert`
    (checked against Keras), then
    (a) its .tflite bytes against the weight bytes effkeras.graph.summary counts (1-bit params / 8;
        the float BN params are reported beside), and per form;
    (b) single-thread latency in the LCE interpreter against the same network with float
        activations and float convs (the quantizers removed) converted to float TFLite and run
        in LiteRT (XNNPack, one thread), taking turns in this process
        (`effkeras.benchmark.time_interleaved`): warm-up runs, then the median of --runs. LCE
        runs with its default kernels (`runtime.LCE(flatbuffer, num_threads=1)`) and, beside,
        with use_indirect_bgemm=True.
On x86 LCE runs portable kernels (measured: slower than XNNPack's float ones there): the ratio
is informative, the ARM result needs `lce_benchmark_model` on the device.
"""

import json
import os
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from absl import flags  # noqa: E402

from apps import _cli  # noqa: E402
from tools import _report  # noqa: E402

flags.DEFINE_string("model", "ern18", "The ERN model of the registry.")
flags.DEFINE_integer("input_size", 224, "Input height and width.")
flags.DEFINE_integer("num_classes", 1000, "Classes of the classifier.")
flags.DEFINE_integer("runs", 30, "Timed runs per runner (the runners take turns).")
flags.DEFINE_integer("warmup", 3, "Untimed runs per runner first.")
flags.DEFINE_bool("layers", False, "Time each w1a2 conv per form.")
flags.DEFINE_bool("no_model", False, "Skip the whole-model part.")
flags.DEFINE_bool("json", False, "Print one JSON object at the end.")
flags.DEFINE_string("plot", None, "Write the model's sizes and latencies as a PNG here.")
FLAGS = flags.FLAGS

FORMS = ("thermometer", "bitplane")


def timed_turns(runners, runs, warmup):
    """{name: median ms} of the zero-argument `runners`, which take turns run by run."""
    from effkeras import benchmark

    times = benchmark.time_interleaved(runners, runs=runs, warmup=warmup, progress=False)
    return {name: benchmark.quartiles(values)[0] for name, values in times.items()}


def invoke(run, x):
    """A zero-argument function running one inference of `x` (batch 1) in the runtime `run`
    (effkeras.deploy.runtime's protocol), the input encoded once."""
    encoded = run.encode([x[0]])
    return lambda: run.run_one(encoded)


def lce_runner(flatbuffer, x, indirect_bgemm=False):
    """One-thread LCE interpreter: its default bconv kernel (BGEMM), or the indirect BGEMM one."""
    from effkeras.deploy import runtime

    return invoke(runtime.LCE(flatbuffer, num_threads=1, use_indirect_bgemm=indirect_bgemm), x)


def layer_inputs(model, layer):
    """The tensor a w1a2 conv's rewrite reads: before its zero padding and pixel embedding."""
    from keras import layers as L

    from effkeras.layers.ern import PixelEmbedding

    tensor = layer.input
    for kind in (L.ZeroPadding2D, PixelEmbedding):
        producer = tensor._keras_history[0]
        if isinstance(producer, kind):
            tensor = producer.input
    return tensor


def bench_layers(model, runs, warmup):
    import keras
    import numpy as np

    from effkeras.deploy import lce
    from effkeras.graph.passes import w1a2

    rng = np.random.default_rng(0)
    rows = []
    for layer in w1a2.w1a2_layers(model):
        inputs = layer_inputs(model, layer)
        single = keras.Model(inputs, layer.output, name=f"{layer.name}_alone")
        pixels = inputs is model.inputs[0]
        shape = (1, *inputs.shape[1:])
        # BN-like inputs on a grid of 1/96 offset by half a step: never on a threshold (1/3, 1,
        # 5/3), where Keras' graph mode and the quantizer's `.thresholds` can differ by one ulp.
        x = (
            rng.integers(0, 256, shape) if pixels else (rng.integers(-48, 240, shape) + 0.5) / 96
        ).astype("float32")
        flatbuffers = {form: lce.convert(single, sample=x, w1a2_form=form)[0] for form in FORMS}
        runners = {form: lce_runner(fb, x) for form, fb in flatbuffers.items()}
        runners.update(
            {
                f"{form}_indirect": lce_runner(fb, x, indirect_bgemm=True)
                for form, fb in flatbuffers.items()
            }
        )
        ms = timed_turns(runners, runs, warmup)
        h, w, c = layer.input.shape[1:]
        row = dict(
            layer=layer.name,
            kernel=layer.kernel_size[0],
            stride=layer.strides[0],
            input=f"{inputs.shape[1]}x{inputs.shape[2]}x{inputs.shape[3]}",
            output="x".join(map(str, layer.output.shape[1:])),
            auto=w1a2.choose_form(layer.kernel_size, c, layer.filters),
            **{f"{name}_ms": round(value, 3) for name, value in ms.items()},
            **{f"{form}_bytes": len(fb) for form, fb in flatbuffers.items()},
        )
        row["bitplane_over_thermometer"] = round(ms["bitplane"] / ms["thermometer"], 3)
        row["bitplane_over_thermometer_indirect"] = round(
            ms["bitplane_indirect"] / ms["thermometer_indirect"], 3
        )
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def float_twin(model):
    """The same architecture with float activations and float convs (quantizers removed)."""
    import keras

    from effkeras.layers.quantized import QuantConv2D

    def clone(layer):
        config = layer.get_config()
        if isinstance(layer, QuantConv2D):
            config.update(input_quantizer=None, kernel_quantizer=None)
        return layer.__class__.from_config(config)

    twin = keras.models.clone_model(model, clone_function=clone)
    for original, copy in zip(model.layers, twin.layers):
        copy.set_weights(original.get_weights())
    return twin


def float_tflite(model):
    import tensorflow as tf

    with tempfile.TemporaryDirectory() as saved_model:
        model.export(saved_model, format="tf_saved_model", verbose=False)
        return tf.lite.TFLiteConverter.from_saved_model(saved_model).convert()


def bench_model(model, input_size, runs, warmup):
    import numpy as np

    from effkeras.deploy import flatbuffer as files
    from effkeras.deploy import lce, runtime, verify
    from effkeras.graph import summary
    from effkeras.testing import tie_free_weights

    tie_free_weights(model)  # so the agreement check is meaningful (not all zeros)
    rng = np.random.default_rng(1)
    sample = rng.integers(0, 256, (2, input_size, input_size, 3)).astype("float32")
    totals = summary.as_dict(model)["totals"]
    one_bit = totals["params"].get("1bit", 0)
    float_params = totals["params"].get("32bit", 0)
    weight_bytes = one_bit / 8  # the packed binary weights; the float BN params come on top
    result = dict(
        model=model.name,
        input_size=input_size,
        one_bit_params=one_bit,
        weight_bytes=weight_bytes,
        float_params=float_params,
        float_param_bytes=4 * float_params,
    )

    flatbuffers = {}
    for form in ("auto", *FORMS):
        start = time.perf_counter()
        flatbuffer, checked = lce.convert(model, sample=sample, w1a2_form=form)
        flatbuffers[form] = flatbuffer
        result[f"{form}_tflite_bytes"] = len(flatbuffer)
        result[f"{form}_over_weight_bytes"] = round(len(flatbuffer) / weight_bytes, 3)
        result[f"{form}_bconv_ops"] = checked.bconv_ops
        result[f"{form}_max_rel_diff"] = checked.max_rel_diff
        print(
            f"{form}: {len(flatbuffer):,} bytes ({len(flatbuffer) / weight_bytes:.2f}x the "
            f"{weight_bytes:,.0f} 1-bit weight bytes), {checked.bconv_ops} LceBconv2d, "
            f"max rel diff {checked.max_rel_diff:.2g} vs Keras, converted in "
            f"{time.perf_counter() - start:.0f} s",
            flush=True,
        )
    census = files.op_census(files.operators(flatbuffers["auto"]))
    result["auto_op_census"] = census

    twin = float_twin(model)
    float_flatbuffer = float_tflite(twin)
    result["float_tflite_bytes"] = len(float_flatbuffer)
    x = sample[:1]
    expected = twin.predict(x, verbose=0)
    float_runtime = runtime.LiteRT(float_flatbuffer, num_threads=1)  # XNNPack
    got = float_runtime.predict(x)
    result["float_max_rel_diff"] = verify.max_diffs(expected, got)[1]
    runners = {f"lce_{form}": lce_runner(fb, x) for form, fb in flatbuffers.items()}
    runners["lce_auto_indirect_bgemm"] = lce_runner(flatbuffers["auto"], x, indirect_bgemm=True)
    runners["float_xnnpack"] = invoke(float_runtime, x)
    ms = timed_turns(runners, runs, warmup)
    for name, value in ms.items():
        result[f"{name}_ms"] = round(value, 2)
    result["lce_auto_over_float"] = round(ms["lce_auto"] / ms["float_xnnpack"], 3)
    result["lce_auto_indirect_bgemm_over_float"] = round(
        ms["lce_auto_indirect_bgemm"] / ms["float_xnnpack"], 3
    )
    print(
        f"latency, 1 thread, median of {runs}: "
        + ", ".join(f"{name} {value:.1f} ms" for name, value in ms.items()),
        flush=True,
    )
    return result


def plot(result, path):
    """Two bar charts: .tflite bytes per form (and the 1-bit weight bytes), latency per runtime."""
    sizes = {
        "1-bit weights": result["weight_bytes"],
        **{form: result[f"{form}_tflite_bytes"] for form in ("auto", *FORMS)},
        "float twin": result["float_tflite_bytes"],
    }
    latencies = {name[:-3]: value for name, value in result.items() if name.endswith("_ms")}
    with _report.figure(path, ncols=2, figsize=(11, 4)) as (_, (left, right)):
        left.bar(list(sizes), [v / 2**20 for v in sizes.values()], color="tab:blue")
        left.set_ylabel("MiB")
        left.set_title(f"{result['model']} at {result['input_size']}: file size")
        right.bar(list(latencies), list(latencies.values()), color="tab:orange")
        right.set_ylabel("ms, 1 thread (x86: ratios only)")
        right.set_title("latency")
        for axis in (left, right):
            axis.tick_params(axis="x", rotation=30)


def main(argv):
    from effkeras import models
    from effkeras.errors import InputError

    if FLAGS.runs < 1 or FLAGS.warmup < 0 or FLAGS.input_size < 32:
        raise InputError("--runs >= 1, --warmup >= 0 and --input_size >= 32")
    build = dict(input_shape=(FLAGS.input_size, FLAGS.input_size, 3), num_classes=FLAGS.num_classes)
    if models.info(FLAGS.model).family != "ern":  # InputError for an unknown name
        raise InputError(f"--model={FLAGS.model} is not an ERN model")
    model = models.get(FLAGS.model, **build)
    output = {}
    if FLAGS.layers:
        output["layers"] = bench_layers(model, FLAGS.runs, FLAGS.warmup)
    if not FLAGS.no_model:
        output["model"] = bench_model(
            models.get(FLAGS.model, **build), FLAGS.input_size, FLAGS.runs, FLAGS.warmup
        )
        if FLAGS.plot:
            plot(output["model"], FLAGS.plot)
            print(f"wrote {FLAGS.plot}")
    if FLAGS.json:
        print(json.dumps(output))


if __name__ == "__main__":
    _cli.run(main)
