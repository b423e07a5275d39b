"""Figures of the patch-level study: a patch grid, the patch embedding, region heatmaps, detection bars."""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from seg4seg_utils.discovery.patches import patch_bounds, patch_metrics

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

__all__ = ["patch_grid_figure", "patch_scatter_figure", "region_heatmap_figure", "detection_bars_figure"]




# -------------------------------------------------------------------------------------------- figures
def patch_grid_figure(image: np.ndarray, gt: np.ndarray, pred: np.ndarray, grid: int = 4,
                      metric: str = "accuracy", title: str | None = None, panel: float = 3.0) -> "Figure":
    """One image cut into its patch grid: contours of ground truth (cyan) and prediction (pink) with each
    patch's error (1 - ``metric``) written in it, beside the same errors as a (grid x grid) heatmap."""
    from matplotlib.figure import Figure

    from seg4seg_utils.report.plots import show_sample

    m = patch_metrics(gt, pred, grid)
    err = 1 - m[metric].to_numpy().reshape(grid, grid)
    fig = Figure(figsize=(panel * 2 + 0.8, panel + 0.3), layout="constrained")
    ax, ax2 = fig.subplots(1, 2)
    show_sample(ax, image, np.asarray(gt) > 0, title=title)
    if np.asarray(pred).any():
        ax.contour(np.asarray(pred, float), levels=[0.5], colors=["#ff4081"], linewidths=0.8)
    rows, cols = patch_bounds(image.shape[0], grid), patch_bounds(image.shape[1], grid)
    for r in rows[1:-1]:
        ax.axhline(r - 0.5, color="white", lw=0.8)
    for c in cols[1:-1]:
        ax.axvline(c - 0.5, color="white", lw=0.8)
    for p in range(grid * grid):
        r, c = divmod(p, grid)
        ax.text((cols[c] + cols[c + 1]) / 2, (rows[r] + rows[r + 1]) / 2, f"{err[r, c]:.2f}", ha="center",
                va="center", fontsize=7, color="white", bbox={"facecolor": "black", "alpha": 0.35, "lw": 0, "pad": 1})
    im = ax2.imshow(err, cmap="magma", vmin=0, vmax=max(0.05, float(err.max())))
    ax2.set_xticks(range(grid))
    ax2.set_yticks(range(grid))
    ax2.set_title(f"per-patch error (1 - {metric})", fontsize=9)
    fig.colorbar(im, ax=ax2, shrink=0.8)
    return fig


def patch_scatter_figure(xy: np.ndarray, patch_labels: np.ndarray, image_attribute: np.ndarray,
                         highlight: int | None = None, panel: float = 3.4) -> "Figure":
    """2-d map of all patches: coloured by patch slice, and by the hidden attribute of the image they come from."""
    from matplotlib.figure import Figure

    lab = np.asarray(patch_labels).reshape(-1)
    n, p = np.asarray(patch_labels).shape
    attr = np.repeat(np.asarray(image_attribute, bool), p)
    xy = np.asarray(xy)
    if len(xy) != n * p:
        raise ValueError(f"xy has {len(xy)} rows but there are {n * p} patches")
    fig = Figure(figsize=(panel * 2 + 0.4, panel), layout="constrained")
    a, b = fig.subplots(1, 2)
    a.scatter(xy[:, 0], xy[:, 1], c=lab, cmap="tab20", s=3, lw=0)
    if highlight is not None:
        sel = lab == highlight
        a.scatter(xy[sel, 0], xy[sel, 1], facecolors="none", edgecolors="black", s=12, lw=0.5,
                  label=f"patch slice {highlight}")
        a.legend(fontsize=7, loc="best")
    a.set_title("patch slices", fontsize=9)
    b.scatter(xy[~attr, 0], xy[~attr, 1], color="#b0bec5", s=3, lw=0, label="patches of other images")
    b.scatter(xy[attr, 0], xy[attr, 1], color="#ff4081", s=5, lw=0, label="patches of images with the attribute")
    b.legend(fontsize=7, loc="best", markerscale=3)
    b.set_title("hidden attribute of the patch's image (never seen)", fontsize=9)
    for ax in (a, b):
        ax.set_xticks([])
        ax.set_yticks([])
    return fig


def region_heatmap_figure(maps: dict[str, np.ndarray], panel: float = 2.6, cmap: str = "RdBu_r") -> "Figure":
    """Side-by-side (grid x grid) heatmaps, one per title; a diverging scale centred on 0 (excess vs deficit)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(panel * len(maps) + 0.8, panel + 0.4), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(maps)))
    vmax = max(float(np.abs(m).max()) for m in maps.values()) or 1.0
    for ax, (title, m) in zip(axes, maps.items()):
        im = ax.imshow(m, cmap=cmap, vmin=-vmax, vmax=vmax)
        for (r, c), v in np.ndenumerate(m):
            ax.text(c, r, f"{v:+.2f}", ha="center", va="center", fontsize=7)
        ax.set_xticks(range(m.shape[1]))
        ax.set_yticks(range(m.shape[0]))
        ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=list(axes), shrink=0.8)
    return fig


def detection_bars_figure(summary: pd.DataFrame, case: str = "B", panel: float = 4.0) -> "Figure":
    """Detection rate per prevalence for one case, one bar per level (image-level SEG4SEG vs patch level).

    With :func:`detection_summary`'s ``ci_low``/``ci_high`` columns each bar gets its 95 % Wilson interval
    as an error bar, and its label the count k/n.
    """
    from matplotlib.figure import Figure

    sub = summary[summary["case"] == case]
    pivot = sub.pivot_table(index="prevalence", columns="level", values="detection_rate")
    counted = {"k", "n", "ci_low", "ci_high"} <= set(sub.columns)
    if counted:
        low, high, k, n = (sub.pivot_table(index="prevalence", columns="level", values=v).reindex_like(pivot)
                           for v in ("ci_low", "ci_high", "k", "n"))
    fig = Figure(figsize=(panel + 2.6 + 0.3 * len(pivot.columns), 3.0), layout="constrained")
    ax = fig.subplots()
    width = 0.8 / max(1, len(pivot.columns))
    x = np.arange(len(pivot))
    for j, level in enumerate(pivot.columns):
        vals = pivot[level].to_numpy()
        at = x + (j - (len(pivot.columns) - 1) / 2) * width
        yerr = np.vstack([vals - low[level].to_numpy(), high[level].to_numpy() - vals]) if counted else None
        ax.bar(at, vals, width, label=level, yerr=yerr, capsize=2, error_kw={"lw": 0.7, "ecolor": "0.3"})
        for i, (xi, v) in enumerate(zip(at, vals)):
            if np.isnan(v):  # this level was not run at this prevalence
                continue
            text = f"{v:.1f}" + (f"\n{int(k[level].iat[i])}/{int(n[level].iat[i])}" if counted else "")
            ax.text(xi, (high[level].iat[i] if counted else v) + 0.02, text, ha="center", fontsize=6 if counted else 7)
    ax.axhline(0.8, color="grey", ls="--", lw=0.8)
    ax.set_xticks(x, [f"{p:.0%}" for p in pivot.index])
    ax.set_ylim(0, 1.25 if counted else 1.12)
    ax.set_xlabel("prevalence")
    ax.set_ylabel("detection rate")
    ax.set_title(f"case {case}: share of slicer seeds meeting the criterion", fontsize=9)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return fig
