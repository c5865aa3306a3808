"""What the measuring tools share: a matplotlib figure drawn without a display and saved as a
PNG, and a result written as a markdown table and JSON."""

import contextlib
import os


@contextlib.contextmanager
def figure(path, **subplots):
    """(figure, axes) of `plt.subplots(**subplots)`, saved to `path` (PNG) when the block ends."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(**subplots)
    try:
        yield fig, axes
        fig.tight_layout()
        fig.savefig(path, dpi=120)
    finally:
        plt.close(fig)


def write(output_dir, stem, table, rows):
    """`<stem>.md` (the table) and `<stem>.json` (the rows) in `output_dir`, atomically."""
    from effkeras import fileio

    os.makedirs(output_dir, exist_ok=True)
    fileio.write_bytes(os.path.join(output_dir, f"{stem}.md"), (table + "\n").encode())
    fileio.write_json(os.path.join(output_dir, f"{stem}.json"), rows)
