"""Figures of the label-flip study: the phantom, flip decompositions, flip-risk maps and scatter."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from seg4seg_utils.data.records import SampleTable
from seg4seg_utils.model.label_flips import flip_risk
from seg4seg_utils.model.multiclass import load_probabilities

__all__ = ["CLASS_COLORS", "DECOMPOSITION_COLORS", "phantom_gallery", "decomposition_bars", "risk_maps", "risk_scatter"]



CLASS_COLORS = {0: (0, 0, 0, 0), 1: (0.0, 0.9, 1.0, 0.45), 2: (1.0, 0.25, 0.5, 0.45)}


DECOMPOSITION_COLORS = {"correct": "#4caf50", "flipped": "#e91e63", "missed": "#9e9e9e"}


# -------------------------------------------------------------------------------------------- figures
def _overlay(ax, image: np.ndarray, labels: np.ndarray | None, title: str | None = None) -> None:
    ax.imshow(image, interpolation="nearest")
    if labels is not None:
        rgba = np.zeros((*labels.shape, 4))
        for c, col in CLASS_COLORS.items():
            rgba[labels == c] = col
        ax.imshow(rgba, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=7)


def phantom_gallery(table: SampleTable, n: int = 6, panel: float = 1.6) -> Figure:
    """Rows: training images (aligned tone), training images with the rare opposite tone, shifted test images;
    ground-truth classes coloured (cyan: cell A, one nucleus; pink: cell B, two nuclei)."""
    df = table.df
    groups = [("train, aligned", (df["split"] == "train") & df["aligned"].astype(bool)),
              ("train, opposite tone", (df["split"] == "train") & ~df["aligned"].astype(bool)),
              ("test, shifted", (df["split"] == "test") & df["shifted"].astype(bool))]
    groups = [(t, np.flatnonzero(m.to_numpy())[:n]) for t, m in groups if m.any()]
    fig = Figure(figsize=(panel * n, 2 * panel * len(groups) + 0.4), layout="constrained")
    axes = fig.subplots(2 * len(groups), n, squeeze=False)
    for r, (title, rows) in enumerate(groups):
        for c in range(n):
            top, bottom = axes[2 * r, c], axes[2 * r + 1, c]
            if c >= len(rows):
                top.axis("off")
                bottom.axis("off")
                continue
            i = rows[c]
            img = table.image(i)
            _overlay(top, img, None, f"{title}: cls {df['cls'].iat[i]}, {df['tone'].iat[i]}" if c == 0 else
                     f"cls {df['cls'].iat[i]}, {df['tone'].iat[i]}")
            _overlay(bottom, img, table.mask(i))
    return fig


def decomposition_bars(groups: pd.DataFrame, label: str = "group", title: str | None = None,
                       panel: float = 0.55) -> Figure:
    """Stacked bars of the pooled correct / flipped / missed fractions per group (output of group_decomposition)."""
    n = len(groups)
    fig = Figure(figsize=(max(3.2, 1.2 + panel * n), 2.8), layout="constrained")
    ax = fig.subplots()
    bottom = np.zeros(n)
    x = np.arange(n)
    for part in ("correct", "flipped", "missed"):
        vals = groups[part].to_numpy(dtype=float)
        ax.bar(x, vals, bottom=bottom, color=DECOMPOSITION_COLORS[part], label=part, width=0.75)
        bottom += vals
    ax.set_xticks(x, [f"{v}\n(n={k})" for v, k in zip(groups[label], groups["n_images"])], fontsize=7)
    ax.set_ylim(0, 1)
    ax.set_ylabel("share of GT foreground pixels")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    if title:
        ax.set_title(title, fontsize=9)
    return fig


def risk_maps(table: SampleTable, run, ids: Sequence[str], panel: float = 1.8) -> Figure:
    """Per image: the image with its ground truth, the prediction, the actual flips and the flip-risk map."""
    test = table.split("test")
    pos = {sid: k for k, sid in enumerate(test.df["id"].astype(str))}
    fig = Figure(figsize=(panel * 4 + 0.6, panel * len(ids) + 0.3), layout="constrained")
    axes = fig.subplots(len(ids), 4, squeeze=False)
    im = None
    for r, sid in enumerate(ids):
        i = pos[str(sid)]
        img, truth = test.image(i), test.mask(i)
        proba = load_probabilities(run, str(sid))
        pred = proba.argmax(axis=0)
        fg = pred != 0
        flips = fg & (truth != 0) & (pred != truth)
        risk = np.where(fg, flip_risk(proba), np.nan)
        first = r == 0
        _overlay(axes[r, 0], img, truth, f"{sid}: ground truth" if first else str(sid))
        _overlay(axes[r, 1], img, pred, "prediction" if first else None)
        axes[r, 2].imshow(img, interpolation="nearest")
        axes[r, 2].imshow(np.where(flips[..., None], [[[1.0, 0.9, 0.0, 0.85]]], 0.0), interpolation="nearest")
        axes[r, 2].set_title(f"flips ({flips.sum() / max((truth != 0).sum(), 1):.0%} of GT fg)", fontsize=7)
        axes[r, 3].imshow(img.mean(axis=2), cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        im = axes[r, 3].imshow(risk, cmap="magma", vmin=0, vmax=1, interpolation="nearest")
        axes[r, 3].set_title(f"flip-risk (mean {np.nanmean(risk) if fg.any() else 0:.2f})", fontsize=7)
        for ax in axes[r, 2:]:
            ax.set_xticks([])
            ax.set_yticks([])
    if im is not None:
        fig.colorbar(im, ax=axes[:, 3], shrink=0.6, label="flip-risk (GT-free)")
    return fig


def risk_scatter(metrics: pd.DataFrame, group: str = "shifted", panel: float = 3.4) -> Figure:
    """Mean flip-risk (GT-free) against the actual flip rate per image, coloured by ``group``."""
    from scipy.stats import spearmanr

    fig = Figure(figsize=(panel * 1.25, panel), layout="constrained")
    ax = fig.subplots()
    g = metrics[group].astype(bool).to_numpy()
    ax.scatter(metrics.loc[~g, "flip_risk"], metrics.loc[~g, "flip_rate"], s=12, color="#90a4ae", lw=0,
               label=f"not {group}")
    ax.scatter(metrics.loc[g, "flip_risk"], metrics.loc[g, "flip_rate"], s=14, color="#e91e63", lw=0, label=group)
    rho = spearmanr(metrics["flip_risk"], metrics["flip_rate"]).statistic
    ax.set_xlabel("mean flip-risk over predicted foreground (no ground truth)")
    ax.set_ylabel("actual flip rate (share of GT foreground)")
    ax.set_title(f"Spearman rho = {rho:.2f}", fontsize=9)
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.legend(fontsize=7)
    return fig
