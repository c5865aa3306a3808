"""What the tools share: a matplotlib figure drawn without a display and saved as a PNG, a
result written as a markdown table and JSON (the docs/ files), and the metrics of a finished
training run."""

import os

from effkeras import plots

figure = plots.figure  # (figure, axes), saved to a PNG when the block ends


def write(output_dir, stem, table, rows):
    """`<stem>.md` (the table) and `<stem>.json` (the rows) in `output_dir`, atomically."""
    from effkeras import fileio

    os.makedirs(output_dir, exist_ok=True)
    fileio.write_bytes(os.path.join(output_dir, f"{stem}.md"), (table + "\n").encode())
    fileio.write_json(os.path.join(output_dir, f"{stem}.json"), rows)


def publish(output_dir, stem, table, rows, plot):
    """Prints the markdown `table`; with an `output_dir`, also writes `<stem>.md`, `<stem>.json`
    (`rows`) and `<stem>.png` (drawn by `plot(rows, path)`)."""
    print(table)
    if output_dir:
        write(output_dir, stem, table, rows)
        plot(rows, os.path.join(output_dir, f"{stem}.png"))


def read_run(directory):
    """metrics.json of a finished apps.train run; InputError when there is none."""
    import json

    from effkeras.errors import InputError

    path = os.path.join(directory, "metrics.json")
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise InputError(
            f"no finished training run in {directory} ({path}: {e}); train it "
            f"with apps.train --output_dir={directory}"
        ) from None
