"""The picture: optimizer paths over each 2-D test function's contour, and the network's loss curves."""

from __future__ import annotations

import math as pymath

import numpy as np

from .problems import Problem, numpy_math
from .report import Row

PANEL_INCHES = (6.4, 5.2)
DPI = 100
COLUMNS = 2
# The JAX path is drawn dashed over the solid torch path: where they agree they coincide.
STYLES = {"torch": dict(linestyle="-", linewidth=1.6, alpha=0.9), "jax": dict(linestyle=(0, (2, 2)), linewidth=1.6)}


def _grid(panels: int) -> tuple[int, int]:
    """(columns, rows) of panels for this many problems."""
    return min(panels, COLUMNS), pymath.ceil(panels / COLUMNS)


def figure_pixels(panels: int) -> tuple[int, int]:
    """The (width, height) in pixels of the PNG drawn for this many problems."""
    columns, rows = _grid(panels)
    return round(PANEL_INCHES[0] * columns * DPI), round(PANEL_INCHES[1] * rows * DPI)


def draw(results: list[tuple[Problem, list[Row]]], path: str, steps: int, dtype: str) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no screen needed; only the file is wanted
    import matplotlib.pyplot as plt

    columns, rows = _grid(len(results))
    figure, axes = plt.subplots(
        rows, columns, figsize=(PANEL_INCHES[0] * columns, PANEL_INCHES[1] * rows), dpi=DPI, squeeze=False
    )
    names = list(dict.fromkeys(row.optimizer for _, problem_rows in results for row in problem_rows))
    palette = [*plt.get_cmap("tab20").colors, "black"]  # type: ignore[attr-defined]  # a ListedColormap
    colors = {name: palette[i % len(palette)] for i, name in enumerate(names)}
    for axis, (problem, problem_rows) in zip(axes.flat, results):
        if problem.view is not None:
            _paths(axis, problem, problem_rows, colors)
        else:
            _loss_curves(axis, problem, problem_rows, colors)
        axis.set_title(problem.title, fontsize=10)
    for axis in axes.flat[len(results) :]:
        axis.set_visible(False)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="lower center", ncol=min(len(labels), 6), fontsize=8, frameon=False)
    figure.suptitle(f"optimizers: torch backend (solid) and JAX backend (dashed), {steps} steps, {dtype}", fontsize=11)
    figure.tight_layout(rect=(0, 0.06, 1, 0.97))
    figure.savefig(path, dpi=DPI)
    plt.close(figure)


def _lines(row: Row):
    """(run, style, legend label) of each of our backends' runs; one label per optimizer."""
    for name, style in STYLES.items():
        if name in row.runs:
            label = row.optimizer if name == "torch" or "torch" not in row.runs else None
            yield row.runs[name], style, label


def _paths(axis, problem: Problem, rows: list[Row], colors) -> None:
    from matplotlib.colors import LogNorm

    assert problem.view is not None and problem.minimum is not None, "only 2-D problems are drawn as paths"
    (x_low, x_high), (y_low, y_high) = problem.view
    x, y = np.meshgrid(np.linspace(x_low, x_high, 300), np.linspace(y_low, y_high, 300))
    surface = problem.loss(numpy_math(), [np.stack([x, y])], problem.data(None))
    surface = surface - surface.min() + 1e-3  # log-spaced levels need a positive surface
    axis.contourf(
        x, y, surface, levels=np.geomspace(surface.min(), surface.max(), 30), cmap="Greys_r", alpha=0.55, norm=LogNorm()
    )
    axis.contour(
        x,
        y,
        surface,
        levels=np.geomspace(surface.min(), surface.max(), 15),
        colors="white",
        linewidths=0.4,
        norm=LogNorm(),
    )
    for row in rows:
        for run, style, label in _lines(row):
            axis.plot(run.path[:, 0], run.path[:, 1], color=colors[row.optimizer], label=label, **style)
    axis.plot(*problem.minimum, marker="*", markersize=12, color="gold", markeredgecolor="black", linestyle="none")
    axis.plot(*rows[0].runs[next(iter(rows[0].runs))].path[0], marker="o", color="black", linestyle="none")
    axis.set_xlim(x_low, x_high)
    axis.set_ylim(y_low, y_high)
    axis.set_xlabel("x")
    axis.set_ylabel("y")


def _loss_curves(axis, problem: Problem, rows: list[Row], colors) -> None:
    for row in rows:
        for run, style, label in _lines(row):
            axis.plot(np.arange(run.losses.size), run.losses, color=colors[row.optimizer], label=label, **style)
    axis.axhline(problem.target, color="grey", linewidth=0.8, linestyle=":")
    axis.set_yscale("log")
    axis.set_xlabel("step")
    axis.set_ylabel("loss")
