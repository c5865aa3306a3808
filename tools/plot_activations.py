"""Plots of the learned per-channel 1-D functions of a model's table activations (LerpPSA,
ResPSA, BSplineActivation, LerpTable): one PNG per layer, a small plot per channel.

python -m tools.plot_activations (--checkpoint=model.keras | --model=resmlp_psa_h1)
    --output_dir=DIR [--layer=NAME] [--channels=16] [--x_range=-5,5]

A registered --model is built with its untrained initial weights (seeded by --seed). Each layer
is evaluated on inputs that run across (by default) 1.25x its grid [-R, R], which the plot marks
with dashed lines; a ResPSA is plotted as the x + f(x) it computes. Writes DIR/<layer>.png and
prints the paths.

Regenerates docs/lerp_psa/functions/*.png from the trained LERP-PSA model of docs/lerp_psa
(--checkpoint=<its model.keras> --output_dir=docs/lerp_psa/functions).
"""

import os

from absl import flags

from apps import _cli

# allow_override: apps and other tools define flags of these names, and a process that imports
# several of them (the tests) must be able to.
flags.DEFINE_string(
    "model", None, "Registered model name (untrained weights).", allow_override=True
)
flags.DEFINE_string(
    "checkpoint", None, "A .keras model file (instead of --model).", allow_override=True
)
flags.DEFINE_string(
    "output_dir", None, "Where to write one <layer>.png per table activation.", allow_override=True
)
flags.DEFINE_string("layer", None, "Plot only this layer (default: every table activation).")
flags.DEFINE_integer("channels", 16, "Plot the first this many channels of each layer.")
flags.DEFINE_list("x_range", None, "lo,hi of the inputs plotted (default: 1.25x the grid).")
flags.DEFINE_integer("seed", 0, "Random seed of --model's initial weights.", allow_override=True)
FLAGS = flags.FLAGS


def table_layers(model):
    """The table activations of `model` (nested models walked into), in order."""
    from effkeras.graph import leaf_layers
    from effkeras.layers.activations import _TableActivation

    return [layer for layer in leaf_layers(model) if isinstance(layer, _TableActivation)]


def plot_model(model, output_dir, layer=None, channels=16, x_range=None):
    """Writes `output_dir`/<layer>.png for each table activation of `model` (only `layer`, a
    name, if given); returns the paths. InputError when there is nothing to plot."""
    from effkeras import plots
    from effkeras.errors import InputError

    found = table_layers(model)
    if not found:
        raise InputError(
            f"model {model.name!r} has no table activation (LerpPSA, ResPSA, "
            f"BSplineActivation, LerpTable) to plot"
        )
    if layer is not None:
        chosen = [candidate for candidate in found if candidate.name == layer]
        if not chosen:
            raise InputError(
                f"--layer={layer!r} is not a table activation of {model.name!r}; "
                f"its table activations: {', '.join(f.name for f in found)}"
            )
        found = chosen
    return [
        plots.activation_curves(
            candidate,
            os.path.join(output_dir, f"{candidate.name}.png"),
            channels=channels,
            x_range=x_range,
        )
        for candidate in found
    ]


def parse_range(values):
    """['-5', '5'] -> (-5.0, 5.0); None -> None; InputError for anything but lo < hi."""
    from effkeras.errors import InputError

    if not values:
        return None
    try:
        lo, hi = (float(v) for v in values)
    except ValueError:
        raise InputError(
            f"--x_range must be lo,hi (two numbers), got {','.join(values)!r}"
        ) from None
    if not lo < hi:
        raise InputError(f"--x_range must have lo < hi, got {lo:g},{hi:g}")
    return lo, hi


def load():
    import keras

    from effkeras import models, saving
    from effkeras.errors import InputError

    if bool(FLAGS.model) == bool(FLAGS.checkpoint):
        raise InputError("give exactly one of --model=NAME or --checkpoint=FILE.keras")
    if FLAGS.checkpoint:
        return saving.load_model(FLAGS.checkpoint)
    models.info(FLAGS.model)  # an unknown name fails here, listing the known ones
    keras.utils.set_random_seed(FLAGS.seed)
    return models.get(FLAGS.model)


def main(argv):
    from effkeras import fileio
    from effkeras.errors import InputError

    if not FLAGS.output_dir:
        raise InputError("--output_dir is required: where the PNGs go")
    if FLAGS.channels < 1:
        raise InputError(f"--channels must be a positive integer, got {FLAGS.channels}")
    x_range = parse_range(FLAGS.x_range)
    fileio.check_writable(FLAGS.output_dir, "--output_dir", directory=True)
    model = load()
    for path in plot_model(model, FLAGS.output_dir, FLAGS.layer, FLAGS.channels, x_range):
        print(path)


if __name__ == "__main__":
    _cli.run(main)
