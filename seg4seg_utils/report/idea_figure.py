"""The book's landing figure: the whole idea in one row of panels.

test images -> embedding -> UMAP -> performance-weighted mixture -> the lowest-Dice slice -> verdict.

What is real and what is made up, so the caption can say it: the images are phantoms from the project's own
generator (one degraded exactly as case D does it); the 2-d points and their Dice values are **synthetic**
(seeded random draws standing in for UMAP coordinates and a model's scores, not results); the slices, the
chosen slice and the verdict are computed on those points by the project's own ``SliceFinder`` and
``evaluate_slices``. Deterministic: same seed, same figure.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.path import Path as MplPath
from matplotlib.patches import Ellipse, FancyArrowPatch, Rectangle

__all__ = ["IDEA_CAPTION", "synthetic_map", "idea_figure", "write_idea_figure"]

IDEA_CAPTION = ("Fundus images: phantoms from the project's generator, one darkened and blurred as in case D. "
                "Points and Dice values: synthetic (seeded random draws standing in for UMAP coordinates and a "
                "model's scores), not results. Slices, the chosen slice and the verdict: the project's own "
                "SliceFinder and evaluate_slices, run on those points.")

FAILURE_COLOR = "#ff4081"
GAMMA = 2.0  # the paper uses 10 on 8-d UMAP; on these 2-d points 2 keeps the slices readable


def synthetic_map(n: int = 300, prevalence: float = 0.1, seed: int = 0
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Synthetic stand-ins for (UMAP coordinates, per-image Dice, hidden attribute): four blobs of well-segmented
    images, and a ``prevalence`` share of images with the hidden attribute that sit together and score low."""
    rng = np.random.default_rng(seed)
    n_fail = int(round(prevalence * n))
    centres = np.array([[0.0, 0.0], [3.2, 0.4], [0.6, 3.3], [3.6, 3.4]])
    ok = centres[rng.integers(0, len(centres), n - n_fail)] + rng.normal(0, 0.62, (n - n_fail, 2))
    bad = np.array([1.9, 1.8]) + rng.normal(0, 0.45, (n_fail, 2))  # between the blobs: invisible by position alone
    z = np.vstack([ok, bad])
    dice = np.concatenate([np.clip(rng.normal(0.88, 0.05, n - n_fail), 0.5, 0.99),
                           np.clip(rng.normal(0.52, 0.12, n_fail), 0.05, 0.95)])
    stray = rng.choice(n - n_fail, size=max(1, n // 60), replace=False)  # a few failures without the attribute
    dice[stray] = np.clip(rng.normal(0.5, 0.1, len(stray)), 0.05, 0.95)
    attribute = np.r_[np.zeros(n - n_fail, bool), np.ones(n_fail, bool)]
    order = rng.permutation(n)
    return z[order], dice[order], attribute[order]


def _thumbnails(seed: int, size: int = 96) -> list[tuple[np.ndarray, bool]]:
    from seg4seg_utils.data.inject import CASES, manipulate
    from seg4seg_utils.data.phantoms import MODALITIES
    from seg4seg_utils.seeding import rng_for

    case = CASES["D"]
    out = []
    for k in range(4):
        image, mask = MODALITIES[case.modality](size, rng_for(seed, "idea", k))
        failure = k == 2
        if failure:
            image, _, _ = manipulate(case, case.params, image, mask, rng_for(seed, "idea-inject", k))
        out.append((image, failure))
    return out


def _panel_title(fig: Figure, rect: tuple[float, float, float, float], number: int, title: str, note: str) -> None:
    x, y, w, h = rect
    fig.text(x + w / 2, y + h + 0.02, f"{number}  {title}", ha="center", va="bottom", fontsize=14, weight="bold")
    fig.text(x + w / 2, y - 0.045, note, ha="center", va="top", fontsize=12, color="#37474f", linespacing=1.25)


def _bare(ax) -> None:
    ax.set_xticks([])
    ax.set_yticks([])


def idea_figure(seed: int = 0, n_slices: int = 5) -> Figure:
    """The landing figure (see the module docstring for what is synthetic). Returns a Figure; shows nothing."""
    from seg4seg_utils.discovery.protocol import evaluate_slices, worst_slice
    from seg4seg_utils.discovery.slicer import SliceFinder

    z, dice, attribute = synthetic_map(seed=seed)
    slicer = SliceFinder(n_slices=n_slices, gamma=GAMMA, reduce=None, random_state=seed).fit(z, performance=dice)
    labels, Z = slicer.labels_, slicer.embedding_
    worst = worst_slice(labels, dice, n_slices)
    report = evaluate_slices(labels, dice, attribute, n_slices=n_slices)
    row = report.table.set_index("slice").loc[worst]

    # two rows of three panels (readable at the width of the book's text column), read like text
    fig = Figure(figsize=(11.0, 8.6))
    height, (row1, row2) = 0.29, (0.635, 0.125)
    widths, lefts = ([0.26, 0.15, 0.26], [0.26, 0.26, 0.26]), 0.045
    rects = []
    for bottom, row_widths in zip((row1, row2), widths):
        gap, x = (0.99 - lefts - sum(row_widths)) / 2, lefts
        for w in row_widths:
            rects.append((x, bottom, w, height))
            x += w + gap
    arrow = dict(transform=fig.transFigure, arrowstyle="-|>", mutation_scale=16, color="#546e7a", lw=1.6)
    for k in (0, 1, 3, 4):
        (x0, y0, w0, h0), (x1, _, _, _) = rects[k], rects[k + 1]
        fig.patches.append(FancyArrowPatch((x0 + w0 + 0.01, y0 + h0 / 2), (x1 - 0.01, y0 + h0 / 2), **arrow))
    x3, y3, w3, h3 = rects[2]
    turn = row2 + height + 0.052  # from panel 3 down, back left under row 1, into panel 4
    fig.patches.append(FancyArrowPatch(path=MplPath([(x3 + w3 + 0.006, y3 + h3 / 2), (0.993, y3 + h3 / 2),
                                                     (0.993, turn), (0.012, turn), (0.012, row2 + height / 2),
                                                     (rects[3][0] - 0.008, row2 + height / 2)]), **arrow))

    # 1 test images: a 2 x 2 grid of phantoms, the one with the hidden attribute framed
    x0, y0, w0, h0 = rects[0]
    thumbs = _thumbnails(seed)
    for k, (image, failure) in enumerate(thumbs):
        ax = fig.add_axes((x0 + (k % 2) * w0 / 2 + 0.003, y0 + (1 - k // 2) * h0 / 2 + 0.006, w0 / 2 - 0.006,
                           h0 / 2 - 0.012))
        ax.imshow(image, cmap="gray" if image.ndim == 2 else None)
        _bare(ax)
        for side in ax.spines.values():
            side.set_color(FAILURE_COLOR if failure else "#cfd8dc")
            side.set_linewidth(3 if failure else 0.8)
    _panel_title(fig, rects[0], 1, "test images", "each scored by the model (Dice);\n"
                 "pink frame: a hidden attribute\n(low quality) nobody labelled")

    # 2 embedding: one vector per image
    ax = fig.add_axes(rects[1])
    vectors = np.random.default_rng(seed + 1).normal(size=(12, len(thumbs)))
    ax.imshow(vectors, cmap="PuOr", aspect="auto", vmin=-2.5, vmax=2.5)
    ax.set_xticks(range(len(thumbs)), [f"x{k + 1}" for k in range(len(thumbs))], fontsize=11)
    ax.set_yticks([])
    ax.get_xticklabels()[2].set_color(FAILURE_COLOR)
    _panel_title(fig, rects[1], 2, "embedding", "an image encoder\nf(x): one vector\nper image")

    # 3 UMAP: the reduced map, coloured by Dice
    ax = fig.add_axes(rects[2])
    ax.scatter(Z[:, 0], Z[:, 1], c=dice, cmap="viridis", vmin=0.3, vmax=1.0, s=9, lw=0)
    _bare(ax)
    _panel_title(fig, rects[2], 3, "UMAP", "z = UMAP(f(x)), a few dimensions\n(synthetic points here);\n"
                 "colour: Dice (dark = low)")

    # 4 the performance-weighted mixture
    ax = fig.add_axes(rects[3])
    ax.scatter(Z[:, 0], Z[:, 1], c=labels, cmap="tab10", vmin=0, vmax=9, s=9, lw=0)
    for s in range(n_slices):
        if np.any(labels == s):
            sd = np.sqrt(slicer.covariances_[s][:2])
            ax.add_patch(Ellipse(slicer.means_[s][:2], 4 * sd[0], 4 * sd[1], fill=False,
                                 color=colormaps["tab10"](s), lw=1.3))
    _bare(ax)
    _panel_title(fig, rects[3], 4, "Dice-weighted mixture",
                 r"$P(\mathrm{slice}\ s \mid \mathrm{image}\ i) \propto$" "\n"
                 r"$\pi_s\,P(z_i\mid s)\,P(\mathrm{Dice}_i\mid s)^{\gamma}$" "\n"
                 rf"($\gamma$ = {GAMMA:g}, {n_slices} slices)")

    # 5 the lowest-Dice slice, and who is in it
    ax = fig.add_axes(rects[4])
    sel = labels == worst
    ax.scatter(Z[~attribute, 0], Z[~attribute, 1], color="#b0bec5", s=9, lw=0)
    ax.scatter(Z[attribute, 0], Z[attribute, 1], color=FAILURE_COLOR, s=11, lw=0)
    ax.scatter(Z[sel, 0], Z[sel, 1], facecolors="none", edgecolors="black", s=26, lw=0.7)
    _bare(ax)
    _panel_title(fig, rects[4], 5, "the lowest-Dice slice",
                 f"chosen from Dice alone (circled);\npink = hidden attribute:\n"
                 f"{row['purity']:.0%} of the slice vs {attribute.mean():.0%} of all")

    # 6 the verdict
    x0, y0, w0, h0 = rects[5]
    ax = fig.add_axes(rects[5])
    ax.set_axis_off()
    ax.add_patch(Rectangle((0, 0), 1, 1, transform=ax.transAxes, facecolor="#e8f5e9" if report.success else "#ffebee",
                           edgecolor="#2e7d32" if report.success else "#c62828", lw=1.5))
    rest = dice[~sel].mean()
    lines = [f"Dice {row['mean_perf']:.2f} in the slice,", f"{rest:.2f} elsewhere",
             f"$\\omega^2$ = {report.omega2:.2f} (needs $\\geq$ {report.params.get('omega2_theta', 0.14):g})",
             f"purity {row['purity']:.2f} (needs $\\geq$ {report.params.get('p_theta', 0.8):g})",
             "", ("systematic failure found:\nthe low quality images" if report.success
                  else "no systematic failure found")]
    ax.text(0.5, 0.5, "\n".join(lines), ha="center", va="center", fontsize=13, linespacing=1.5,
            transform=ax.transAxes)
    _panel_title(fig, rects[5], 6, "verdict", "the paper's protocol: is the slice\nboth bad and pure?")
    return fig


def write_idea_figure(path: str | os.PathLike, seed: int = 0, dpi: int = 110) -> Path:
    """Draw :func:`idea_figure` and save it as a PNG (no timestamp in the file: same code, same bytes)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    idea_figure(seed).savefig(path, dpi=dpi, metadata={"Software": None}, bbox_inches="tight", pad_inches=0.15)
    return path
