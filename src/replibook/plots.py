"""One plotting style for the whole book, and the figures chapters share.

`use_style()` is called by every chapter; the helpers draw mean ± std bands
over seeds, which is how every curve in the book is shown.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import matplotlib as mpl
import matplotlib.pyplot as plt
import numpy as np

PALETTE = ["#1b6ca8", "#d1495b", "#66a182", "#edae49", "#8d6cab", "#00798c", "#6c757d", "#3d405b"]
VERDICT_COLOURS = {"reproduced": "#66a182", "not reproduced": "#d1495b",
                   "inconclusive": "#edae49", "not assessed": "#adb5bd"}


def use_style(dpi: int = 90) -> None:
    """Readable defaults: modest dpi (executed chapters are committed), light grid, no top/right spines."""
    mpl.rcParams.update({
        "figure.dpi": dpi, "savefig.dpi": dpi, "figure.figsize": (6.4, 3.6),
        "axes.grid": True, "grid.alpha": 0.3, "axes.spines.top": False, "axes.spines.right": False,
        "axes.prop_cycle": mpl.cycler(color=PALETTE), "axes.titlesize": 11, "axes.labelsize": 10,
        "legend.fontsize": 9, "legend.frameon": False, "font.size": 10,
    })


def band(ax: plt.Axes, x: Sequence[float], runs: Sequence[Sequence[float]], label: str | None = None,
         color: str | None = None, alpha: float = 0.2, **kw) -> None:
    """Mean curve over runs (rows) with a ±1 std band."""
    arr = np.asarray(runs, dtype=float)
    mean = arr.mean(0)
    std = arr.std(0, ddof=1) if arr.shape[0] > 1 else np.zeros_like(mean)
    line, = ax.plot(x, mean, label=label, color=color, **kw)
    ax.fill_between(x, mean - std, mean + std, color=line.get_color(), alpha=alpha, linewidth=0)


def curves_panel(ax: plt.Axes, curves: Mapping[str, tuple[Sequence[float], Sequence[Sequence[float]]]],
                 xlabel: str, ylabel: str, title: str | None = None, logy: bool = False) -> None:
    """Several mean ± std curves on one axis: ``curves[label] = (x, runs)``."""
    for i, (label, (x, runs)) in enumerate(curves.items()):
        band(ax, x, runs, label=label, color=PALETTE[i % len(PALETTE)])
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if logy:
        ax.set_yscale("log")
    if title:
        ax.set_title(title)
    ax.legend()


def bar_with_seeds(ax: plt.Axes, labels: Sequence[str], runs: Sequence[Sequence[float]], ylabel: str,
                   colors: Sequence[str] | None = None) -> None:
    """Bars of the mean with ±1 std error bars and each seed as a dot."""
    for i, (label, vals) in enumerate(zip(labels, runs)):
        vals = np.asarray(vals, dtype=float)
        c = (colors or PALETTE)[i % len(colors or PALETTE)]
        ax.bar(i, vals.mean(), yerr=vals.std(ddof=1) if vals.size > 1 else 0, color=c, alpha=0.75, capsize=4)
        ax.scatter(np.full(vals.size, i) + np.linspace(-0.12, 0.12, vals.size), vals, color="k", s=10, zorder=3)
    ax.set_xticks(range(len(labels)), labels)
    ax.set_ylabel(ylabel)
