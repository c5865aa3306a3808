"""A matplotlib figure drawn without a display and written as a PNG atomically: the one place
the library's reports and the measuring tools make their plots."""

import contextlib

from effkeras.fileio import atomic_path


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
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=120)
    finally:
        plt.close(fig)
