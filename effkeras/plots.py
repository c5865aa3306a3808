"""A matplotlib figure drawn without a display and written as a PNG atomically: the one place
the library's reports and the measuring tools make their plots."""

import contextlib

from effkeras.fileio import atomic_path


@contextlib.contextmanager
def figure(path, **subplots):
    """Yields (figure, axes) of `plt.subplots(**subplots)`, saved to `path` when the block ends.

    The figure is drawn with the Agg backend (no display), laid out tightly and written as a
    120-dpi PNG atomically; it is closed whether or not the block raises.

    Example:

    ```python
    with figure("curve.png", figsize=(4, 3)) as (fig, axis):
        axis.plot(x, y)
    ```

    Args:
        path: str or path. The PNG file to write.
        **subplots: passed on to `matplotlib.pyplot.subplots`.

    Yields:
        A tuple `(figure, axes)`.
    """
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


def activation_curves(layer, path, channels=16, x_range=None):
    """Per-channel plots of what a table activation (LerpPSA, ResPSA, BSplineActivation,
    LerpTable) computes, written to `path` (PNG); returns `path`.

    The first `channels` channels, each on a small axis of a grid (4x4 for 16). The layer itself
    is evaluated on an (N, C) input, so a ResPSA shows x + f(x) and a LerpTable includes its
    input affine. Dashed lines mark where the grid [-R, R] lies, beyond which the function is
    extrapolated linearly; for a LerpTable that is per channel, mapped back through its input
    affine a·x + b. The x axis (the layer's input) runs over `x_range` (lo, hi), by default
    [-1.25R, 1.25R] (for a LerpTable, the mapped grid widened 1.25x about its centre).

    Args:
        layer: LerpPSA, ResPSA, BSplineActivation or LerpTable. The layer to plot.
        path: str or path. The PNG file to write.
        channels: int > 0. How many channels to plot (the first ones). Defaults to `16`.
        x_range: pair of floats `(lo, hi)`, finite with lo < hi, or None. Defaults to `None`.

    Returns:
        `path`.

    Raises:
        TypeError: if `layer` is not a table activation.
        ValueError: if `channels` is not a positive int or `x_range` is not finite lo < hi.
    """
    import math

    import numpy as np
    from keras import ops

    from effkeras.layers.activations import LerpTable, _TableActivation

    if not isinstance(layer, _TableActivation):
        raise TypeError(
            f"activation_curves plots a LerpPSA, ResPSA, BSplineActivation or "
            f"LerpTable layer, got {type(layer).__name__}"
        )
    if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
        raise ValueError(
            f"channels must be a positive int (how many channels to plot), got {channels!r}"
        )
    if x_range is not None:
        lo, hi = x_range
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise ValueError(f"x_range must be (lo, hi) with finite lo < hi, got {x_range!r}")
    shown = min(channels, layer.channels)
    radius = layer.grid_range
    edges = np.tile([-radius, radius], (layer.channels, 1))  # the grid per channel, input units
    if isinstance(layer, LerpTable) and layer.built:
        scale = np.asarray(ops.convert_to_numpy(layer.input_scale), np.float64)
        offset = np.asarray(ops.convert_to_numpy(layer.input_offset), np.float64)
        live = scale != 0  # a channel with a = 0 is a constant: no grid to mark
        edges[live] = np.sort(
            (np.array([-radius, radius]) - offset[live, None]) / scale[live, None], axis=1
        )
    if x_range is None:
        centre, half = edges.mean(axis=1), 1.25 * (edges[:, 1] - edges[:, 0]) / 2
        spans = np.stack([centre - half, centre + half], axis=1)
    else:
        spans = np.tile([lo, hi], (layer.channels, 1))
    x = np.linspace(spans[:, 0], spans[:, 1], 401)  # (N, C): each channel over its own span
    y = np.asarray(
        ops.convert_to_numpy(layer(ops.convert_to_tensor(x, layer.compute_dtype))), np.float64
    )
    columns = math.ceil(math.sqrt(shown))
    rows = math.ceil(shown / columns)
    with figure(
        path, nrows=rows, ncols=columns, figsize=(2.4 * columns, 2.0 * rows), squeeze=False
    ) as (fig, axes):
        for c, axis in enumerate(axes.flat):
            if c >= shown:
                axis.axis("off")
                continue
            axis.plot(x[:, c], y[:, c], linewidth=1.2)
            for edge in edges[c]:
                if spans[c, 0] <= edge <= spans[c, 1]:
                    axis.axvline(edge, color="grey", linestyle="--", linewidth=0.8)
            axis.set_title(f"channel {c}", fontsize=8)
            axis.tick_params(labelsize=6)
        what = "x + f(x)" if getattr(layer, "residual", False) else "f(x)"
        fig.suptitle(
            f"{layer.name} ({type(layer).__name__}): {what}, grid ±{radius:g} dashed", fontsize=9
        )
    return path
