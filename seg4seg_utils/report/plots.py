"""Figures. Every function returns a matplotlib Figure and never calls ``plt.show``."""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np
from matplotlib.figure import Figure

from seg4seg_utils.data.records import SampleTable

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["show_sample", "dataset_gallery", "injection_gallery", "subgroup_gap_plot", "learning_curves",
           "detection_heatmap", "configuration_heatmap", "taxonomy_examples", "slice_scatter", "slice_gallery",
           "gamma_sweep_plot", "worker_timeline"]

MASK_COLOR = "#00e5ff"


def is_thin(mask: np.ndarray) -> bool:
    """True for line-like masks (vessels), whose contours would bury the image: thin for their extent.

    Area over boundary length is about half the thickness of a line and a quarter of the radius of a disc, so
    it is compared with the square root of the area: below 0.1 for a vessel tree of any width (8 px wide at
    256 px: about 0.04), above 0.2 for a lesion of any size, or two px thick or less at any size."""
    from scipy import ndimage as ndi

    area = np.count_nonzero(mask)
    boundary = max(np.count_nonzero(mask & ~ndi.binary_erosion(mask)), 1)
    return area < 2.5 * boundary or area / boundary < 0.1 * np.sqrt(area)


def show_sample(ax, image: np.ndarray, mask: np.ndarray | None = None, title: str | None = None,
                color: str = MASK_COLOR) -> None:
    """Draw an image with its mask: a contour for regions, a translucent fill for thin structures."""
    ax.imshow(image, cmap="gray" if image.ndim == 2 else None, vmin=0, vmax=255, interpolation="nearest")
    if mask is not None and mask.any() and not mask.all():
        if is_thin(mask):
            from matplotlib.colors import to_rgba

            overlay = np.zeros((*mask.shape, 4))
            overlay[mask] = to_rgba(color, alpha=0.55)
            ax.imshow(overlay, interpolation="nearest")
        else:
            ax.contour(mask.astype(float), levels=[0.5], colors=[color], linewidths=0.9)
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=8)


def _pick(n_total: int, n: int, seed: int) -> np.ndarray:
    return np.sort(np.random.default_rng(seed).choice(n_total, size=min(n, n_total), replace=False))


def dataset_gallery(tables: dict[str, SampleTable], n: int = 6, seed: int = 0, panel: float = 1.6) -> Figure:
    """One row per dataset: ``n`` random samples with mask contours."""
    fig = Figure(figsize=(panel * n, panel * len(tables) + 0.3), layout="constrained")
    axes = np.atleast_2d(fig.subplots(len(tables), n, squeeze=False))
    for r, (name, table) in enumerate(tables.items()):
        for c, i in enumerate(_pick(len(table), n, seed)):
            show_sample(axes[r, c], table.image(i), table.mask(i), title=table.df["id"].iat[i])
        for c in range(len(table), n):
            axes[r, c].axis("off")
        axes[r, 0].set_ylabel(name, fontsize=10)
    return fig


def injection_gallery(pairs: Sequence[tuple[str, SampleTable, SampleTable]], n: int = 3, seed: int = 0,
                      panel: float = 1.6) -> Figure:
    """For each (label, clean, injected): ``n`` manipulated samples, clean next to injected, masks as contours."""
    fig = Figure(figsize=(panel * 2 * n, panel * len(pairs) + 0.4), layout="constrained")
    axes = fig.subplots(len(pairs), 2 * n, squeeze=False)
    for r, (label, clean, injected) in enumerate(pairs):
        changed = np.flatnonzero((injected.df["image"].str.startswith("images/") |
                                  injected.df["mask"].str.startswith("masks/")).to_numpy())
        failure = injected.df["failure"].astype(bool).to_numpy()
        pick = changed[_pick(len(changed), n, seed)] if len(changed) else []
        position = dict(zip(clean.df["id"], range(len(clean))))
        mask_changed = injected.df["mask"].str.startswith("masks/").to_numpy()
        for k, i in enumerate(pick):
            j = position[injected.df["id"].iat[i]]
            show_sample(axes[r, 2 * k], clean.image(j), clean.mask(j), title="clean")
            tag = "failure" if failure[i] else "majority"
            # draw the mask only where it changed, so pixel changes (calipers, blur) stay visible
            show_sample(axes[r, 2 * k + 1], injected.image(i), injected.mask(i) if mask_changed[i] else None,
                        title=f"injected ({tag})", color="#ff4081")
        for k in range(2 * len(pick), 2 * n):
            axes[r, k].axis("off")
        axes[r, 0].set_ylabel(label, fontsize=9)
    return fig


def subgroup_gap_plot(metrics: dict[tuple[str, float], "pd.DataFrame"], metric: str = "dice",
                      panel: float = 2.6) -> Figure:
    """Per case, per prevalence: the per-image ``metric`` of the failure subgroup (pink) next to the rest (cyan)."""
    cases = sorted({c for c, _ in metrics})
    fig = Figure(figsize=(panel * len(cases), panel + 0.4), layout="constrained")
    axes = fig.subplots(1, len(cases), squeeze=False)[0]
    rng = np.random.default_rng(0)
    for ax, case in zip(axes, cases):
        prevs = sorted(p for c, p in metrics if c == case)
        for k, prev in enumerate(prevs):
            df = metrics[(case, prev)]
            fail = df["failure"].astype(bool).to_numpy()
            for offset, sel, color in ((-0.18, ~fail, MASK_COLOR), (0.18, fail, "#ff4081")):
                y = df[metric].to_numpy()[sel]
                ax.scatter(k + offset + rng.uniform(-0.07, 0.07, len(y)), y, s=5, color=color, alpha=0.6, lw=0)
                if len(y):
                    ax.hlines(y.mean(), k + offset - 0.13, k + offset + 0.13, color="black", lw=1.5)
        ax.set_xticks(range(len(prevs)), [f"{p:.0%}" for p in prevs])
        ax.set_title(f"case {case}", fontsize=10)
        ax.set_xlabel("prevalence")
        ax.set_ylim(-0.02, 1.02)
    axes[0].set_ylabel(f"test {metric} per image")
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], marker="o", ls="", color=MASK_COLOR, label="rest"),
               Line2D([], [], marker="o", ls="", color="#ff4081", label="failure attribute"),
               Line2D([], [], color="black", label="mean")]
    axes[-1].legend(handles=handles, fontsize=7, loc="lower right")
    return fig


def learning_curves(histories: dict[str, "pd.DataFrame"], panel: float = 2.6) -> Figure:
    """Validation Dice per epoch for every run (one line per run, one panel per case letter)."""
    cases = sorted({k.split("-")[0] for k in histories})
    fig = Figure(figsize=(panel * len(cases), panel), layout="constrained")
    axes = fig.subplots(1, len(cases), squeeze=False)[0]
    for ax, case in zip(axes, cases):
        for name, h in sorted(histories.items()):
            if name.split("-")[0] == case:
                ax.plot(h["epoch"], h["val_dice"], marker="o", ms=2, lw=1, label=name.split("-")[1])
        ax.set_title(f"case {case}", fontsize=10)
        ax.set_xlabel("epoch")
        ax.legend(fontsize=7)
    axes[0].set_ylabel("validation Dice")
    return fig


def detection_heatmap(table: "pd.DataFrame", values: Sequence[str] = ("detection_rate", "perf_pass", "purity_pass"),
                      panel: float = 0.9) -> Figure:
    """Cases (rows) x prevalences (columns) per value (paper Fig. 3a/3b style): detection, perf-pass, purity-pass.

    With an ``n_seeds`` column (as :func:`~seg4seg_utils.studies.benchmark.detection_table` gives) every cell also
    shows its count k/n and 95 % Wilson interval: with 5 seeds a rate is a coarse statistic. Several rows per
    cell are pooled (their counts summed).
    """
    from seg4seg_utils.stats import format_rate, wilson_interval

    counted = "n_seeds" in table.columns
    if counted:
        table = table.assign(**{f"_k_{v}": np.rint(table[v] * table["n_seeds"]) for v in values})
    pivots = [table.pivot_table(index="case", columns="prevalence", values=v, aggfunc="mean") for v in values]
    rows, cols = pivots[0].shape
    fig = Figure(figsize=(len(values) * (0.9 + (panel + 0.3 * counted) * cols), 1.0 + (0.5 + 0.4 * counted) * rows),
                 layout="constrained")
    axes = fig.subplots(1, len(values), squeeze=False)[0]
    for ax, value, pivot in zip(axes, values, pivots):
        if counted:
            k = table.pivot_table(index="case", columns="prevalence", values=f"_k_{value}", aggfunc="sum")
            n = table.pivot_table(index="case", columns="prevalence", values="n_seeds", aggfunc="sum")
            pivot = (k / n).reindex_like(pivot)
        arr = pivot.to_numpy(dtype=float)
        im = ax.imshow(arr, vmin=0, vmax=1, cmap="viridis", aspect="auto")
        for (r, c), v in np.ndenumerate(arr):
            text = "-" if np.isnan(v) else format_rate(v) if counted else f"{v:.1f}"
            if counted and not np.isnan(v):
                kk, nn = int(k.iat[r, c]), int(n.iat[r, c])
                low, high = wilson_interval(kk, nn)
                text += f"\n{kk}/{nn}\n{low:.2f}-{high:.2f}"
            ax.text(c, r, text, ha="center", va="center", color="white" if (np.isnan(v) or v < 0.6) else "black",
                    fontsize=8 if counted else 9, linespacing=1.1)
        ax.set_xticks(range(arr.shape[1]), [f"{p:.0%}" for p in pivot.columns])
        ax.set_yticks(range(arr.shape[0]), [f"case {c}" for c in pivot.index])
        ax.set_xlabel("prevalence")
        ax.set_title(value.replace("_", " ").replace("detection rate", "detection rate (criterion)"), fontsize=9)
    fig.colorbar(im, ax=list(axes), shrink=0.8)
    return fig


def configuration_heatmap(table: "pd.DataFrame", target: float = 0.8, panel: float = 0.62) -> Figure:
    """Configurations (rows) x case and prevalence (columns): the detection rate over all fits of a cell
    (columns ``configuration``, ``case``, ``prevalence``, ``k``, ``n``), each annotated with k/n; cells whose
    rate reaches ``target`` are framed. Which representation finds which failure, at a glance."""
    from matplotlib.patches import Rectangle

    configs = list(dict.fromkeys(table["configuration"]))
    cells = sorted({(c, p) for c, p in zip(table["case"], table["prevalence"])})
    k = table.pivot_table(index="configuration", columns=["case", "prevalence"], values="k", aggfunc="sum")
    n = table.pivot_table(index="configuration", columns=["case", "prevalence"], values="n", aggfunc="sum")
    k, n = k.reindex(index=configs, columns=cells), n.reindex(index=configs, columns=cells)
    rate = (k / n).to_numpy(dtype=float)
    fig = Figure(figsize=(3.2 + panel * len(cells), 0.9 + 0.42 * len(configs)), layout="constrained")
    ax = fig.subplots()
    im = ax.imshow(np.ma.masked_invalid(rate), cmap="viridis", vmin=0, vmax=1, aspect="auto")
    for r in range(rate.shape[0]):
        for c in range(rate.shape[1]):
            if np.isnan(rate[r, c]):
                continue
            ax.text(c, r, f"{int(k.iat[r, c])}/{int(n.iat[r, c])}", ha="center", va="center", fontsize=7,
                    color="white" if rate[r, c] < 0.6 else "black")
            if rate[r, c] >= target:
                ax.add_patch(Rectangle((c - 0.5, r - 0.5), 1, 1, fill=False, edgecolor="#ff4081", linewidth=1.5))
    ax.set_xticks(range(len(cells)), [f"{c} {p:.0%}" for c, p in cells], rotation=90, fontsize=8)
    ax.set_yticks(range(len(configs)), configs, fontsize=8)
    for x in range(1, len(cells)):
        if cells[x][0] != cells[x - 1][0]:
            ax.axvline(x - 0.5, color="white", linewidth=2)
    ax.set_title(f"detection rate over all fits (k/n); framed: at least {target:g}", fontsize=9)
    fig.colorbar(im, ax=ax, shrink=0.8)
    return fig


def taxonomy_examples(size: int = 192, seed: int = 0, panel: float = 1.9) -> Figure:
    """One generated example per injected case: the clean image next to its manipulated version."""
    from seg4seg_utils.data.inject import CASES, manipulate
    from seg4seg_utils.data.phantoms import MODALITIES
    from seg4seg_utils.seeding import rng_for

    fig = Figure(figsize=(panel * len(CASES), panel * 2 + 0.5), layout="constrained")
    axes = fig.subplots(2, len(CASES))
    for k, (name, case) in enumerate(sorted(CASES.items())):
        image, mask = MODALITIES[case.modality](size, rng_for(seed, "taxonomy", name))
        new_img, new_mask, _ = manipulate(case, case.params, image, mask, rng_for(seed, "taxonomy-inject", name))
        show_sample(axes[0, k], image, mask, title=f"{name}: clean")
        changed = new_mask is not None
        show_sample(axes[1, k], image if new_img is None else new_img, new_mask if changed else None,
                    title=f"{name}: {'with calipers' if name == 'A' else case.attribute.replace('_', ' ')}",
                    color="#ff4081")
    return fig


def slice_scatter(xy: np.ndarray, labels: np.ndarray, attribute: np.ndarray, performance: np.ndarray,
                  highlight: int | None = None, panel: float = 3.2) -> Figure:
    """Three views of the same 2-d map: coloured by slice, by the hidden attribute, by performance."""
    fig = Figure(figsize=(panel * 3 + 0.6, panel), layout="constrained")
    axes = fig.subplots(1, 3)
    axes[0].scatter(xy[:, 0], xy[:, 1], c=labels, cmap="tab20", s=9, lw=0)
    if highlight is not None:
        sel = labels == highlight
        axes[0].scatter(xy[sel, 0], xy[sel, 1], facecolors="none", edgecolors="black", s=28, lw=0.8,
                        label=f"slice {highlight}")
        axes[0].legend(fontsize=7, loc="best")
    axes[0].set_title("slices", fontsize=9)
    attr = np.asarray(attribute, bool)
    axes[1].scatter(xy[~attr, 0], xy[~attr, 1], color="#b0bec5", s=9, lw=0, label="rest")
    axes[1].scatter(xy[attr, 0], xy[attr, 1], color="#ff4081", s=12, lw=0, label="hidden failure attribute")
    axes[1].legend(fontsize=7, loc="best")
    axes[1].set_title("hidden attribute (never seen by the slicer)", fontsize=9)
    sc = axes[2].scatter(xy[:, 0], xy[:, 1], c=performance, cmap="viridis", s=9, lw=0, vmin=0, vmax=1)
    fig.colorbar(sc, ax=axes[2], shrink=0.8, label="Dice")
    axes[2].set_title("per-image Dice", fontsize=9)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    return fig


def slice_gallery(table: SampleTable, rows: Sequence[int], predictions: Sequence[np.ndarray | None],
                  titles: Sequence[str], ncols: int = 6, panel: float = 1.7) -> Figure:
    """Samples of one slice: ground truth as a cyan contour, the model's prediction in pink."""
    n = max(1, len(rows))
    nrows = (n + ncols - 1) // ncols
    fig = Figure(figsize=(panel * ncols, panel * nrows + 0.3), layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    for ax, i, pred, title in zip(axes, rows, predictions, titles):
        show_sample(ax, table.image(i), table.mask(i), title=title)
        if pred is not None and pred.any():
            ax.contour(pred.astype(float), levels=[0.5], colors=["#ff4081"], linewidths=0.8)
    for ax in axes[len(rows):]:
        ax.axis("off")
    return fig


def gamma_sweep_plot(table: "pd.DataFrame", value: str = "detection_rate", panel: float = 2.6) -> Figure:
    """Detection rate against gamma (log scale), one panel per case, one line per prevalence."""
    cases = sorted(table["case"].unique())
    fig = Figure(figsize=(panel * len(cases), panel), layout="constrained")
    axes = fig.subplots(1, len(cases), squeeze=False, sharey=True)[0]
    for ax, case in zip(axes, cases):
        sub = table[table["case"] == case]
        for prev, g in sub.groupby("prevalence"):
            g = g.sort_values("gamma")
            ax.plot(g["gamma"], g[value], marker="o", ms=3, label=f"{prev:.0%}")
        ax.set_xscale("log")
        ax.axvline(10, color="grey", lw=0.8, ls=":")
        ax.set_title(f"case {case}", fontsize=10)
        ax.set_xlabel("gamma")
        ax.set_ylim(-0.05, 1.05)
    axes[0].set_ylabel(value.replace("_", " "))
    axes[-1].legend(fontsize=7, title="prevalence", title_fontsize=7)
    return fig


def worker_timeline(rows: dict[str, "pd.DataFrame"], panel: float = 2.2) -> Figure:
    """Which process ran which slicer fit, and when: one panel per backend, one lane per worker.

    ``rows`` maps a label (e.g. ``"loky, 2 processes"``) to benchmark rows with the provenance columns
    ``worker``, ``started``, ``seconds_reduce`` and ``seconds_fit`` (see ``experiments.run_item``).
    """
    fig = Figure(figsize=(7.0, 0.6 + panel * len(rows) * 0.6), layout="constrained")
    axes = fig.subplots(len(rows), 1, squeeze=False)[:, 0]
    for ax, (label, r) in zip(axes, rows.items()):
        t0 = float(r["started"].min())  # each run on its own clock: panels compare shapes, not start times
        lanes = {w: i for i, w in enumerate(sorted(r["worker"].unique()))}
        for row in r.itertuples():
            start = row.started - t0
            ax.barh(lanes[row.worker], row.seconds_reduce, left=start, color="#9ecae1", edgecolor="none")
            ax.barh(lanes[row.worker], row.seconds_fit, left=start + row.seconds_reduce, color="#08519c",
                    edgecolor="none")
        ax.set_yticks(range(len(lanes)), [f"pid {w.rsplit(':', 1)[1]}" for w in lanes])
        ax.set_title(f"{label}: {len(r)} fits on {len(lanes)} worker(s)", fontsize=9)
    axes[-1].set_xlabel("seconds since the run's first fit started (light: reduction, dark: mixture fit)")
    return fig
