"""The one verifier every deploy target shares: does the converted file agree with Keras.

- `random_sample` / `random_inputs` / `check_sample`: the sample batch a conversion is checked
  on (uniform random inputs in the model's input range, or images given), of fixed shapes;
- `max_diffs`: the largest difference of the file's outputs from Keras's, absolute and relative
  to the largest Keras output;
- `check_agreement`: that difference within the target's allowance, or within the model's own
  numerical sensitivity (`sensitivity`: deep binary nets flip signs at near-ties).

Reading the file (operators, op census, io tensors) is flatbuffer.py's; the Report types are
report.py's; each target checks its own op census (e.g. converter.float_ops, lce's bconv count).
"""

import numpy as np

from effkeras.errors import InputError

SAMPLE_SIZE = 4
PIXEL_RANGE = (0.0, 255.0)  # registry models take raw pixels (e.g. models/resnet.py)
ABS_FLOOR = 1e-6  # outputs this close agree whatever their scale (an untrained net's ~0 logits)


# --- the sample -----------------------------------------------------------------------------------


def batch_size(sample):
    """The number of examples in `sample`.

    Args:
        sample: a batch, or a list of batches (one per input).

    Returns:
        An int.
    """
    return len(sample[0] if isinstance(sample, (list, tuple)) else sample)


def input_shapes(model):
    """Each input's shape without the batch axis.

    Args:
        model: a Keras model.

    Returns:
        A list of shape tuples.

    Raises:
        InputError: an input shape is not fixed.
    """
    shapes = [tuple(tensor.shape[1:]) for tensor in model.inputs]
    for shape in shapes:
        if None in shape:
            raise InputError(
                f"deployment needs a fixed input shape (TFLite Micro and Vela take "
                f"static shapes only), and {model.name} takes {shape}: build it "
                f"with one, e.g. models.get(name, input_shape=(224, 224, 3)) or "
                f"--input_shape=224,224,3"
            )
    return shapes


def random_inputs(shapes, input_range=PIXEL_RANGE, size=SAMPLE_SIZE, seed=0):
    """Uniform random inputs of the given shapes.

    Args:
        shapes: one shape (without the batch axis) per input.
        input_range: (low, high).
        size: examples per input.
        seed: the generator's seed.

    Returns:
        A float32 array (size, *shape), or a list of them for several inputs.
    """
    rng = np.random.default_rng(seed)
    low, high = input_range
    sample = [rng.uniform(low, high, (size, *shape)).astype("float32") for shape in shapes]
    return sample[0] if len(sample) == 1 else sample


def random_sample(model, input_range=PIXEL_RANGE, size=SAMPLE_SIZE, seed=0):
    """Uniform random inputs for each of `model`'s inputs.

    Args:
        model: a Keras model with fixed input shapes.
        input_range: (low, high).
        size: examples per input.
        seed: the generator's seed.

    Returns:
        As `random_inputs`.

    Raises:
        InputError: an input shape is not fixed.
    """
    return random_inputs(input_shapes(model), input_range, size, seed)


def check_sample(model, sample, what="sample"):
    """Checks that `sample` is a batch (or list of batches) of the model's input shapes, of at
    least one example, holding finite real numbers.

    Args:
        model: a Keras model.
        sample: the batch(es).
        what: what the sample is, for the message.

    Raises:
        InputError: the shapes differ, a batch is empty, or a value is not a finite real
            number (NaN, infinite, complex, not numeric).
    """
    arrays = sample if isinstance(sample, (list, tuple)) else [sample]
    shapes = input_shapes(model)
    got = [tuple(np.shape(a)[1:]) for a in arrays]
    if len(got) != len(shapes) or got != shapes or any(np.ndim(a) < 2 for a in arrays):
        raise InputError(
            f"the {what} has shape {[np.shape(a) for a in arrays]}, but {model.name} "
            f"takes batches of {shapes}; give images of the model's input shape"
        )
    for array in arrays:
        array = np.asarray(array)
        if len(array) == 0:
            raise InputError(f"the {what} is empty; give at least one image")
        if array.dtype.kind not in "biuf":
            raise InputError(
                f"the {what} holds {array.dtype} values; give real numbers (pixels in the "
                f"model's input range)"
            )
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            raise InputError(
                f"the {what} holds NaN or infinite values; give finite pixels in the model's "
                f"input range"
            )


def read_images(path, model, what="images"):
    """The .npy array of images at `path` as float32, its shape and values checked against
    `model` (check_sample) before it is read into memory: a header may claim more than the file
    holds, so the array is memory-mapped first.

    Raises:
        InputError: not a readable .npy array (an .npz archive, a header claiming more than the
            file holds), or images the model cannot take.
    """
    try:
        mapped = np.load(path, mmap_mode="r", allow_pickle=False)  # the header only, mapped
    except (OSError, ValueError, EOFError) as e:
        raise InputError(f"cannot read {what}={path} as a .npy array: {e}") from None
    if not isinstance(mapped, np.ndarray):
        raise InputError(f"{what}={path} is an .npz archive; give one .npy array")
    check_sample(model, mapped, f"{what}={path}")
    return np.asarray(mapped, np.float32)


# --- agreement with Keras -------------------------------------------------------------------------


def max_diffs(expected, actual):
    """The largest difference over all outputs, absolute and relative.

    Relative to the output's scale rather than per element: per element, outputs near 0 would
    turn float rounding into huge ratios.

    Args:
        expected: Keras's outputs (an array, or a list of arrays).
        actual: the file's outputs, alike.

    Returns:
        (max |actual - expected|, that divided by max |expected|).

    Raises:
        ValueError: the outputs differ in number or shape.
    """
    expected = expected if isinstance(expected, (list, tuple)) else [expected]
    actual = actual if isinstance(actual, (list, tuple)) else [actual]
    if len(expected) != len(actual):
        raise ValueError(f"{len(expected)} Keras outputs but {len(actual)} flatbuffer outputs")
    abs_diff, scale = 0.0, 0.0
    for e, a in zip(expected, actual):
        e, a = np.asarray(e, np.float64), np.asarray(a, np.float64)
        if e.shape != a.shape:
            raise ValueError(f"Keras output shape {e.shape} != flatbuffer output shape {a.shape}")
        abs_diff = max(abs_diff, float(np.max(np.abs(a - e), initial=0.0)))
        scale = max(scale, float(np.max(np.abs(e), initial=0.0)))
    return abs_diff, (abs_diff / scale if scale else abs_diff)


def sensitivity(model, sample, input_range, noise=1e-4):
    """How far `model`'s own outputs move under input noise.

    Args:
        model: a Keras model.
        sample: its inputs.
        input_range: (low, high) of the inputs.
        noise: the Gaussian noise's standard deviation, as a fraction of the range.

    Returns:
        The max rel diff (`max_diffs`) of the outputs on `sample` with and without the noise.
    """
    low, high = input_range
    rng = np.random.default_rng(1)
    inputs = sample if isinstance(sample, (list, tuple)) else [sample]
    noisy = [
        x + rng.normal(0.0, noise * (high - low), np.shape(x)).astype(np.float32) for x in inputs
    ]
    noisy = noisy if isinstance(sample, (list, tuple)) else noisy[0]
    return max_diffs(model.predict(sample, verbose=0), model.predict(noisy, verbose=0))[1]


def check_agreement(
    expected,
    actual,
    *,
    max_rel_diff,
    what,
    model=None,
    sample=None,
    input_range=PIXEL_RANGE,
    remedy=None,
):
    """Checks the file's outputs `actual` against Keras's `expected`.

    Beyond `max_rel_diff` (and ABS_FLOOR), `model`'s own sensitivity to input noise of 1e-4 of
    the range is measured (when a model is given): within twice that, it passes (sensitivity
    reported).

    Args:
        expected: Keras's outputs.
        actual: the file's outputs.
        max_rel_diff: the target's allowance, relative to the largest Keras output.
        what: the file, for the message.
        model: the Keras model, to measure its sensitivity; None: none allowed.
        sample: the inputs both ran on.
        input_range: (low, high) of the inputs.
        remedy: what the user can do about a disagreement (e.g. another calibration set), or
            None where a disagreement is the converter's fault.

    Returns:
        (max abs diff, max rel diff, sensitivity or None when not measured).

    Raises:
        RuntimeError: the file disagrees beyond the allowance and the sensitivity.
        InputError: the same, where a `remedy` is given (it ends the message).
    """
    abs_diff, rel_diff = max_diffs(expected, actual)
    measured = None
    if not (rel_diff <= max_rel_diff or abs_diff <= ABS_FLOOR):
        measured = sensitivity(model, sample, input_range) if model is not None else 0.0
        if not rel_diff <= 2 * measured:
            message = (
                f"the {what} disagrees with Keras: max abs diff {abs_diff:.3g}, max rel diff "
                f"{rel_diff:.3g} > {max_rel_diff:g}, and Keras itself moves only "
                f"{measured:.3g} under input noise"
            )
            if remedy:
                raise InputError(f"{message}. {remedy}")
            raise RuntimeError(message)
    return abs_diff, rel_diff, measured
