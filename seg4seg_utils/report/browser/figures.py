"""The browser's matplotlib figures, drawn from a :class:`~seg4seg_utils.report.browser.model.BrowserModel`:
the 2-d map (coloured by slice, a metric or an attribute, one slice circled), the side-by-side overview maps,
and a slice's gallery (ground truth cyan, prediction pink).

Figures are built with ``matplotlib.figure.Figure`` rather than ``pyplot``, so drawing never opens a window or
leaks into the notebook's current figure; the views embed them as PNG.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from seg4seg_utils.report.browser.model import BrowserModel, metric_label
from seg4seg_utils.report.plots import is_thin, show_sample

__all__ = ["PRED_COLOR", "ATTRIBUTE_COLOR", "REST_COLOR", "draw_map", "scatter", "overview", "gallery"]

PRED_COLOR = "#ff4081"
ATTRIBUTE_COLOR = "#ff4081"
REST_COLOR = "#b0bec5"


def draw_map(model: BrowserModel, ax, colour_by: str | None = None, highlight: int | None = None,
             numbers: bool = True) -> None:
    """Draw the 2-d map on ``ax``, coloured by ``colour_by`` (default: the model's colouring); ``highlight``
    circles one slice's members."""
    from matplotlib import colormaps
    from matplotlib.lines import Line2D

    colour_by = model.check_colour(colour_by or model.colour_by)
    xy, values, labels = model.xy, model.colour_values(colour_by), model.labels
    fade = 0.35 if highlight is not None else 0.9
    legend = []
    if colour_by == "slice":
        cmap = colormaps["tab20"]
        ax.scatter(xy[:, 0], xy[:, 1], c=[cmap(v % 20) for v in values], s=10, lw=0, alpha=fade)
    elif colour_by in model.metric_columns or (pd.api.types.is_numeric_dtype(values.dtype) and
                                               values.dtype != bool and len(pd.unique(values)) > 6):
        v = pd.to_numeric(pd.Series(values), errors="coerce").to_numpy(dtype=float)
        lim = (0.0, 1.0) if colour_by in model.metric_columns else (np.nanmin(v), np.nanmax(v))
        sc = ax.scatter(xy[:, 0], xy[:, 1], c=v, cmap="viridis", s=10, lw=0, vmin=lim[0], vmax=lim[1], alpha=fade)
        ax.figure.colorbar(sc, ax=ax, shrink=0.8, label=metric_label(colour_by))
    else:
        cats = pd.Series(values).astype(str)
        levels = sorted(cats.unique())
        if set(levels) <= {"True", "False"}:
            # the rarer value is the subgroup a reader looks for (e.g. caliper=False): pink, the rest grey;
            # the purity attribute keeps True = pink, since True is what it marks
            rare = "True" if colour_by == model.attribute_name or (cats == "True").mean() <= 0.5 else "False"
            palette = {rare: ATTRIBUTE_COLOR, ("False" if rare == "True" else "True"): REST_COLOR}
        else:
            palette = {c: colormaps["tab10"](k % 10) for k, c in enumerate(levels)}
        for c in levels:
            sel = (cats == c).to_numpy()
            ax.scatter(xy[sel, 0], xy[sel, 1], color=palette[c], s=10 if c != "True" else 13, lw=0, alpha=fade)
            legend.append(Line2D([], [], marker="o", ls="", color=palette[c], label=c))
    if highlight is not None:
        sel = labels == highlight
        ax.scatter(xy[sel, 0], xy[sel, 1], facecolors="none", edgecolors="black", s=30, lw=0.9)
        legend.append(Line2D([], [], marker="o", ls="", mfc="none", mec="black", label=f"slice {highlight}"))
    if numbers and colour_by == "slice":
        for s in np.unique(labels):
            cx, cy = np.median(xy[labels == s], axis=0)
            ax.text(cx, cy, str(s), fontsize=8, ha="center", va="center", weight="bold",
                    bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="none", alpha=0.75))
    if legend:
        ax.legend(handles=legend, fontsize=6, loc="best", title=None if colour_by == "slice" else colour_by,
                  title_fontsize=6)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(f"coloured by {colour_by}", fontsize=9)


def scatter(model: BrowserModel, colour_by: str | None = None, highlight: int | None | str = "selected",
            size: tuple[float, float] = (4.4, 3.6)) -> Figure:
    """The map as a one-panel figure; by default the selected slice is circled."""
    hl = model.selected if highlight == "selected" else (None if highlight is None else model.slice_id(highlight))
    fig = Figure(figsize=size, layout="constrained")
    draw_map(model, fig.subplots(), colour_by, hl)
    return fig


def overview(model: BrowserModel, colour_by: Sequence[str] | None = None, panel: float = 3.3) -> Figure:
    """Side-by-side maps (default: slice, performance, and the attribute when one is given)."""
    views = list(colour_by) if colour_by else ["slice", model.performance] + \
        ([model.attribute_name] if model.attribute_name else [])
    for v in views:
        model.check_colour(v)
    fig = Figure(figsize=(panel * len(views) + 0.4 * len(views), panel), layout="constrained")
    for ax, v in zip(np.atleast_1d(fig.subplots(1, len(views))), views):
        draw_map(model, ax, v)
    return fig


def gallery(model: BrowserModel, s: int | None = None, n: int | None = None, ncols: int = 4,
            panel: float = 1.6) -> Figure:
    """Members of slice ``s`` (default: the selected one; the first ``n``, default the model's ``n_show``):
    ground truth as a cyan contour, the prediction in pink; titles give id and score.

    A ``*`` after the score marks carriers of the attribute. An empty slice gives a one-panel figure that says so.
    """
    s = model.slice_id(s)
    shown = model.members(s, n or model.n_show)
    if not shown:
        fig = Figure(figsize=(panel * 2, panel * 0.5), layout="constrained")
        ax = fig.subplots()
        ax.text(0.5, 0.5, f"slice {s} has no members", ha="center", va="center", fontsize=9)
        ax.axis("off")
        return fig
    ncols = min(ncols, len(shown))
    nrows = (len(shown) + ncols - 1) // ncols
    fig = Figure(figsize=(panel * ncols, panel * nrows + 0.45), layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    for ax, sid in zip(axes, shown):
        i = model.index[sid]
        image, truth = model.image(sid)
        star = " *" if model.attribute is not None and model.attribute[i] else ""
        show_sample(ax, image, truth, title=f"{sid}\n{metric_label(model.performance)} {model.scores[i]:.2f}{star}")
        pred = model.prediction(sid)
        if pred is not None:
            _draw_prediction(ax, pred, truth)
    for ax in axes[len(shown):]:
        ax.axis("off")
    key = f"slice {s}: cyan = ground truth, pink = prediction"
    if model.attribute is not None:
        key += f", * = {model.attribute_name}"
    fig.suptitle(key + f" ({len(shown)} of {model.size(s)} shown)", fontsize=8)
    return fig


def _draw_prediction(ax, pred: np.ndarray, truth: np.ndarray) -> None:
    """Prediction on top of the ground truth: a pink contour (regions) or a pink fill (thin structures, whose
    contour would hide them)."""
    if not pred.any():
        return
    if is_thin(truth) if truth.any() else is_thin(pred):
        from matplotlib.colors import to_rgba

        overlay = np.zeros((*pred.shape, 4))
        overlay[pred] = to_rgba(PRED_COLOR, alpha=0.45)
        ax.imshow(overlay, interpolation="nearest")
    elif not pred.all():
        ax.contour(pred.astype(float), levels=[0.5], colors=[PRED_COLOR], linewidths=0.8)
