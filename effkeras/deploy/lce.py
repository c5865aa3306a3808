"""Keras 3 model -> Larq Compute Engine flatbuffer, checked against the Keras model.

The path is `converter.export_saved_model` then LCE's `convert_saved_model` (which looks up the
`serving_default` signature). LCE silently leaves a binary conv in float when it does not
recognise the sign pattern, so every conversion checks its own result:

- every binary layer (input and kernel 1-bit) must have become an `LceBconv2d`;
- the LCE interpreter must agree with Keras on a sample batch.

LCE has no binary kernel for Dense, DepthwiseConv2D or SeparableConv2D: a binary one of those
is an error too (use a 1x1 QuantConv2D instead), unless `allow_float_fallback=True` keeps such
layers in float: correct outputs, no speed-up, weights stored as float32.

LCE has no w1a2 kernel either: a model with 1-bit-weight, multi-bit-input convs (ERN) is first
rewritten by the w1a2 pass (`graph.passes.w1a2.w1a2_to_binary`) into binary convs over ±1 planes
of the input (exact), and the flatbuffer is checked against the model as given, before the
rewrite. A w1a2 layer that cannot be rewritten, or whose bconvs LCE did not make, is an error
naming it.
"""

import contextlib
import tempfile

import keras
import larq_compute_engine
import numpy as np

from effkeras.deploy import verify
from effkeras.deploy.converter import export_saved_model
from effkeras.deploy.flatbuffer import op_census, operators
from effkeras.deploy.registry import register_target
from effkeras.deploy.report import LceReport
from effkeras.deploy.verify import PIXEL_RANGE
from effkeras.errors import InputError
from effkeras.graph import layer_precision, leaf_layers
from effkeras.graph.passes import w1a2 as w1a2_pass

TARGETS = ("arm", "xcore")  # what larq_compute_engine.convert_saved_model accepts
MAX_REL_DIFF = 1e-3  # float reassociation gives ~1e-6; a wrong conversion gives O(1)


@register_target(
    "arm",
    "Larq Compute Engine flatbuffer for 64-bit ARM CPUs (Raspberry Pi, "
    "Android): binary convs become LceBconv2d",
)
def convert(
    model,
    *,
    target="arm",
    allow_float_fallback=False,
    sample=None,
    input_range=PIXEL_RANGE,
    max_rel_diff=MAX_REL_DIFF,
    w1a2_form="auto",
    reference=None,
    calibration=None,
):
    """(flatbuffer bytes, LceReport) for `model`; raises unless the result checks out.

    w1a2 convs are first rewritten as binary convs (`passes.w1a2.w1a2_to_binary(model,
    w1a2_form)`). Raises InputError when a binary layer (a rewritten w1a2 one included) did not
    become LceBconv2d (naming the layers) and RuntimeError when the LCE interpreter's outputs
    differ from the Keras `reference` (default: `model` as given, before any rewrite) by more
    than `max_rel_diff` (relative to the largest Keras output) on `sample`, by default
    verify.SAMPLE_SIZE uniform random inputs in `input_range`. `calibration` is not used (LCE
    needs none); it is accepted like every target's.
    """
    del calibration
    if target not in TARGETS:
        raise InputError(f"unknown LCE target {target!r}; use one of {', '.join(TARGETS)}")
    if model.compute_dtype != "float32":
        raise InputError(
            f"LCE converts float32 models only, {model.name} computes in "
            f"{model.compute_dtype}; rebuild it under the float32 dtype policy"
        )
    reference = model if reference is None else reference
    w1a2 = w1a2_pass.w1a2_layers(model)
    if w1a2:
        model = w1a2_pass.w1a2_to_binary(model, w1a2_form, strict=not allow_float_fallback)
    binary = [layer for layer in leaf_layers(model) if is_binary(layer)]
    _check_zero_padding([layer for layer in binary if layer_precision(layer) == (1, 1)])
    with tempfile.TemporaryDirectory() as saved_model:
        with _quantized_kernels_as_constants(model):
            export_saved_model(model, saved_model, batch=None)
        flatbuffer = larq_compute_engine.convert_saved_model(saved_model, target=target)

    ops = operators(flatbuffer)
    float_layers = _layers_left_float(binary, [op for op in ops if op.type == "LceBconv2d"])
    if float_layers and not allow_float_fallback:
        raise InputError(_explain(float_layers))

    if sample is None:
        sample = verify.random_sample(model, input_range)
    verify.check_sample(reference, sample)
    # The converter fixes the batch size to 1; the interpreter runs the batch one by one.
    expected = reference.predict(sample, verbose=0)
    actual = larq_compute_engine.testing.Interpreter(flatbuffer).predict(sample)
    abs_diff, rel_diff, sensitivity = verify.check_agreement(
        expected,
        actual,
        max_rel_diff=max_rel_diff,
        what="LCE flatbuffer",
        model=reference,
        sample=sample,
        input_range=input_range,
    )

    census = op_census(ops)
    report = LceReport(
        target=f"lce ({target})",
        size_bytes=len(flatbuffer),
        op_census=census,
        max_abs_diff=abs_diff,
        max_rel_diff=rel_diff,
        samples=verify.batch_size(sample),
        binary_layers=len(binary),
        w1a2_layers=len(w1a2),
        bconv_ops=census.get("LceBconv2d", 0),
        float_fallback=tuple(layer.name for layer in float_layers),
        sensitivity=sensitivity,
    )
    return flatbuffer, report


# (quantizer attribute, kernel attributes to try) of the quantized layers.
QUANTIZED_KERNELS = (
    ("kernel_quantizer", ("kernel",)),
    ("depthwise_quantizer", ("depthwise_kernel", "kernel")),
    ("pointwise_quantizer", ("pointwise_kernel",)),
)


@contextlib.contextmanager
def _quantized_kernels_as_constants(model):
    """Exports each quantized kernel as its precomputed value (e.g. ±1, ±α).

    Otherwise the graph quantizes the kernel variable at run time and relies on the converter's
    constant folding, which gives up on tensors over ~1 MB (3x3x128x256 and up): LCE then
    takes the weight `Select` for an activation sign and leaves the conv in float.
    """
    replaced = []
    for layer in leaf_layers(model):
        for quantizer_attribute, kernel_attributes in QUANTIZED_KERNELS:
            quantizer = layer.__dict__.get(quantizer_attribute)  # skips read-only aliases
            kernel = next((getattr(layer, k) for k in kernel_attributes if hasattr(layer, k)), None)
            if quantizer is None or kernel is None:
                continue
            value = keras.ops.convert_to_numpy(quantizer(keras.ops.convert_to_tensor(kernel)))
            replaced.append((layer, quantizer_attribute, quantizer))
            setattr(
                layer,
                quantizer_attribute,
                lambda _, value=value: keras.ops.convert_to_tensor(value),
            )
    try:
        yield
    finally:
        for layer, quantizer_attribute, quantizer in replaced:
            setattr(layer, quantizer_attribute, quantizer)


def _check_zero_padding(binary_layers):
    """LCE 0.16 computes a zero-padded ("same", pad_values=0) bconv wrongly when its input map
    is smaller than its kernel (measured: 2x2 and 1x1 maps under a 3x3 kernel; 3x3 is exact)."""
    for layer in binary_layers:
        if getattr(layer, "padding", None) != "same" or getattr(layer, "pad_values", 0.0):
            continue
        height, width = layer.input.shape[1:3]
        if height < layer.kernel_size[0] or width < layer.kernel_size[1]:
            raise InputError(
                f"{layer.name}: LCE computes zero-padded binary convs wrongly on maps smaller "
                f"than the kernel ({height}x{width} under "
                f"{layer.kernel_size[0]}x{layer.kernel_size[1]}); "
                f"convert at a larger input size (every binary conv's map >= its kernel)"
            )


def is_binary(layer):
    """A layer LCE must run as LceBconv2d: 1-bit x 1-bit, a rewritten w1a2 conv (PlaneConv2D),
    or a w1a2 layer left as it is (allow_float_fallback), which stays float."""
    return (
        layer_precision(layer) == (1, 1)
        or hasattr(layer, "bconv_kernels")
        or w1a2_pass.is_w1a2(layer)
    )


def _expected_bconvs(layer):
    """The ±1 kernels (kh, kw, in, out) that must each be one LceBconv2d's filter; None for a
    layer LCE has no binary kernel for."""
    if hasattr(layer, "bconv_kernels"):
        return layer.bconv_kernels()
    if isinstance(layer, keras.layers.Conv2D) and layer_precision(layer) == (1, 1):
        kernel = layer.kernel_quantizer(keras.ops.convert_to_tensor(layer.kernel))
        return [np.where(keras.ops.convert_to_numpy(kernel) < 0, -1.0, 1.0)]
    return None


def _layers_left_float(binary_layers, bconvs):
    """Binary layers with fewer LceBconv2d than they need, in model order.

    Each expected kernel is matched to the bconv whose bitpacked filter holds it, so the right
    layer is named even among convs of one shape; should LCE ever store a filter in a way this
    does not model, filter shape (in order) still matches it. Layers that are not plain convs
    (and w1a2 layers not rewritten) have no LCE kernel at all.
    """
    wanted = [
        (layer, kernel) for layer in binary_layers for kernel in _expected_bconvs(layer) or ()
    ]
    left = list(bconvs)
    for same in (_same_kernel, _same_shape):
        wanted = _pair_off(wanted, left, same)
    unmatched = {id(layer) for layer, _ in wanted}
    return [
        layer
        for layer in binary_layers
        if id(layer) in unmatched or _expected_bconvs(layer) is None
    ]


def _pair_off(wanted, ops, same):
    """Removes from `ops` the first op `same` as each kernel; returns the (layer, kernel) left."""
    unpaired = []
    for layer, kernel in wanted:
        match = next((op for op in ops if same(kernel, op)), None)
        if match is None:
            unpaired.append((layer, kernel))
        else:
            ops.remove(match)
    return unpaired


def _filter_signs(op, channels):
    """An LceBconv2d filter unpacked: bitpacked int32 words along the input channels."""
    filters = op.inputs[1]
    packed = np.frombuffer(filters.data, np.uint8).reshape(*filters.shape[:3], -1)
    return np.unpackbits(packed, axis=-1, bitorder="little")[..., :channels].astype(bool)


def _same_shape(kernel, op):
    out, kh, kw, words = op.inputs[1].shape
    k_h, k_w, channels, filters = kernel.shape
    return (out, kh, kw, words) == (filters, k_h, k_w, -(-channels // 32))


def _same_kernel(kernel, op):
    """True when the op's filter is `kernel` (±1, (kh, kw, in, out)): LCE lays it out (out, kh,
    kw, in), True for -1."""
    if not _same_shape(kernel, op):
        return False
    ours = np.transpose(kernel < 0, (3, 0, 1, 2)).reshape(kernel.shape[-1], -1)
    theirs = _filter_signs(op, kernel.shape[2]).reshape(len(ours), -1)
    # LCE flips an output channel's signs when the scale after it (a BN) is negative.
    same_or_flipped = np.all(ours == theirs, axis=1) | np.all(ours != theirs, axis=1)
    return bool(np.all(same_or_flipped))


def _explain(layers):
    names = ", ".join(f"{layer.name} ({type(layer).__name__})" for layer in layers)
    return (
        f"{len(layers)} binary layer(s) did not become LceBconv2d and would run in float: "
        f"{names}. LCE binarizes only Conv2D whose input and kernel signs are "
        f"where(x >= 0, 1, -1) under a custom gradient (not x + stop_gradient(q - x), not "
        f"sign(x)), with nothing between the sign and the conv; use a 1x1 QuantConv2D for a "
        f"binary Dense; a w1a2 conv must be a plain QuantConv2D whose quantizers give "
        f"thresholds/step and signs/scale (passes.w1a2). Or pass "
        f"allow_float_fallback (--allow_float_fallback) to keep them float."
    )
