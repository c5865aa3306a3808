"""Parameters by precision, memory and MACs of a registered model, per layer and in total, with
its NN-Mass ("n/a" where not defined) and non-linear units per image under the table. A model
with early exits (several outputs, e.g. ranet_cifar) also gets a table of its exits: parameters
and FLOPs up to each exit (cumulative, counted as early-exit papers do) and each stage's MACs.

python -m apps.summary --model=resnet20 [--input_shape=32,32,3] [--json]
python -m apps.summary --list
python -m apps.summary --list --markdown [--models=resnet20,ern18]   # docs/models.md's table
"""

import json

from absl import flags

from apps import _cli

flags.DEFINE_string("model", None, "Registered model name.")
flags.DEFINE_string("input_shape", None, "H,W,C (default: the model's).")
flags.DEFINE_integer("num_classes", None, "Number of classes (default: the model's).")
flags.DEFINE_bool("json", False, "Print JSON instead of a table.")
flags.DEFINE_bool("list", False, "List the registered models and exit.")
flags.DEFINE_bool(
    "markdown",
    False,
    "With --list: print the registry as a markdown table (family, parameters and "
    "MACs at the default input, default target, ...), as docs/models.md holds it.",
)
flags.DEFINE_list("models", None, "With --list --markdown: only the rows of these models.")
FLAGS = flags.FLAGS

# The docs page (docs/<page>/README.md) of each registry family; the families not named here
# have a page of their own name.
FAMILY_PAGES = {"peer": "peers", "reference": "peers"}
TABLE_HEADER = (
    "model",
    "family",
    "parameters",
    "MACs",
    "default target",
    "input",
    "classes",
    "recipe",
    "paper",
)


def family_page(family):
    """The docs folder of a registry family.

    Args:
        family: a registry family (`effkeras.models.info(name).family`).

    Returns:
        The folder under docs/ whose README.md is the family's page.
    """
    return FAMILY_PAGES.get(family, family)


def registry_row(name):
    """One row of the registry table: the registry's metadata of `name`, and its parameters (BN
    statistics included, as `--model` prints them) and MACs at its default input.

    The model is built with its weights left uninitialised (a Keras StatelessScope that does not
    initialise on exit): the counts need only shapes, and drawing random weights would be most
    of the time for the large models.

    Args:
        name: a registered model name.

    Returns:
        The row's cells (strings) in TABLE_HEADER's order.

    Raises:
        InputError: `name` is not registered.
    """
    import keras

    from effkeras import models
    from effkeras.graph import summary

    info = models.info(name)
    with keras.StatelessScope(initialize_variables=False):
        model = models.get(name)
    totals = summary.totals(summary.summarize(model))
    keras.backend.clear_session()  # also forgets the uninitialised variables
    macs = totals["binary_macs"] + totals["low_bit_macs"] + totals["float_macs"]
    return (
        f"`{name}`",
        f"[{info.family}]({family_page(info.family)}/README.md)",
        f"{totals['total_params']:,}",
        f"{macs:,}",
        f"`{info.deploy}`",
        "x".join(map(str, info.input_shape)),
        str(info.num_classes),
        f"`{info.recipe}`",
        info.paper,
    )


def markdown_table(names):
    """The registry table.

    Args:
        names: registered model names, one row each, in this order.

    Returns:
        The markdown table's lines (header, separator, rows).
    """
    lines = ["| " + " | ".join(TABLE_HEADER) + " |", "|" + "---|" * len(TABLE_HEADER)]
    lines += ["| " + " | ".join(registry_row(name)) + " |" for name in names]
    return lines


def main(argv):
    from effkeras import models
    from effkeras.errors import InputError
    from effkeras.graph import summary

    if FLAGS.markdown and not FLAGS.list:
        raise InputError("--markdown goes with --list")
    if FLAGS.models and not FLAGS.markdown:
        raise InputError("--models goes with --list --markdown")
    if FLAGS.list:
        if FLAGS.markdown:
            names = [models.info(name).name for name in FLAGS.models or models.names()]
            print("\n".join(markdown_table(names)))
            return
        for name in models.names():
            info = models.info(name)
            print(f"{name:28s} {info.family:12s} {info.deploy:8s} {info.paper}")
        return
    if not FLAGS.model:
        raise InputError("--model is required (or --list)")
    model = models.get(
        FLAGS.model, input_shape=_cli.parse_shape(FLAGS.input_shape), num_classes=FLAGS.num_classes
    )
    print(
        json.dumps(summary.as_dict(model), indent=2) if FLAGS.json else summary.format_table(model)
    )


if __name__ == "__main__":
    _cli.run(main)
