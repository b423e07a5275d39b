"""The patch-level detection study: patch slices (:mod:`seg4seg_utils.discovery.patches`) judged per image.

One :class:`PatchBenchmarkItem` = one trained model's test split, one slicer seed and one setting (grid, gamma,
aggregation, patch metric). :func:`patch_benchmark` runs a grid of them, resumable like the image-level
benchmark (:mod:`.benchmark`): one JSON line per finished fit, keyed by a hash of the item.
:func:`level_comparison` puts the patch- and image-level detection rates side by side and writes the table
(:data:`LEVEL_COMPARISON_FILE`) into the study's results folder; notebook 09 only shows it.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import pandas as pd

from seg4seg_utils.discovery.patches import PatchData, PatchSliceFinder, patch_dataset

if TYPE_CHECKING:  # pragma: no cover
    from seg4seg_utils.discovery.embed import Embedder

__all__ = ["PatchBenchmarkItem", "run_patch_item", "patch_benchmark", "level_names", "detection_summary",
           "level_comparison", "LEVEL_COMPARISON_FILE"]

#: the table :func:`level_comparison` writes into its results folder
LEVEL_COMPARISON_FILE = "detection_patch_vs_image.csv"


@dataclass(frozen=True)
class PatchBenchmarkItem:
    """One patch-level slicer fit on one trained model's test split (plain values: hashable, cheap to pickle)."""

    case: str
    prevalence: float
    data_seed: int
    slicer_seed: int
    run_root: str
    dataset_root: str
    grid: int = 4
    n_slices: int | None = None      # None: the case's image-level slice count (20 for B)
    gamma: float = 10.0
    aggregate: str = "lift"          # lift | share (PatchSliceFinder) | pooled (baseline, see run_patch_item)
    position: bool = False
    patch_metric: str = "accuracy"

    @property
    def key(self) -> str:

        from seg4seg_utils.data.records import config_hash

        return config_hash({**asdict(self), "run_root": Path(self.run_root).name, "kind": "patch-slices"})


def _reduced_patches(data: PatchData, seed: int, cache_dir: str | os.PathLike | None) -> np.ndarray:
    """UMAP-8 of the flattened patch embeddings, cached by content (the image-level studies share the same cache)."""
    from seg4seg_utils.discovery.reduce import cached_reduction

    return cached_reduction(data.X.reshape(-1, data.X.shape[-1]), "umap", 8, seed, cache_dir)


def run_patch_item(item: PatchBenchmarkItem, data: PatchData,
                   reduced_cache: str | os.PathLike | None = None) -> tuple[dict[str, Any], Any]:
    """Fit one item and judge its image groups with the image-level protocol -> (row, fitted slicer).

    ``aggregate`` "lift"/"share": a :class:`PatchSliceFinder` (patches sliced, then aggregated). "pooled" is a
    baseline that separates *patch features* from *patch slicing*: the image's patch embeddings are averaged into
    one image embedding and the ordinary image-level SliceFinder (UMAP-8, image Dice, ``gamma``) slices images.
    """
    from seg4seg_utils.data.inject import CASES
    from seg4seg_utils.discovery.judge import SlicerSettings, fit_and_judge, reduced
    from seg4seg_utils.discovery.protocol import evaluate_slices

    if item.patch_metric not in data.patch_perf:
        raise ValueError(f"unknown patch metric {item.patch_metric!r}; choose one of {sorted(data.patch_perf)}")
    n_slices = item.n_slices or CASES[item.case].n_slices
    dice = data.metrics["dice"].to_numpy(dtype=np.float64)
    attr = data.metrics["failure"].astype(bool).to_numpy()
    t0 = time.perf_counter()
    if item.aggregate == "pooled":
        settings = SlicerSettings(gamma=item.gamma)
        Z = reduced(data.X.mean(axis=1), settings, item.slicer_seed, reduced_cache)
        t1 = time.perf_counter()
        fitted, report = fit_and_judge(Z, dice, attr, n_slices=n_slices, settings=settings, seed=item.slicer_seed)
    else:
        Z = _reduced_patches(data, item.slicer_seed, reduced_cache)
        t1 = time.perf_counter()
        fitted = PatchSliceFinder(n_slices=n_slices, gamma=item.gamma, aggregate=item.aggregate,
                                  position=item.position, random_state=item.slicer_seed).fit(
            data.X, data.patch_perf[item.patch_metric], reduced=Z)
        # patches are sliced, images are judged: the image groups go through the same protocol
        report = evaluate_slices(fitted.image_labels_, dice, attr, proba=fitted.image_proba_, n_slices=n_slices)
    t2 = time.perf_counter()
    row = {"key": item.key, "level": "patch", "case": item.case, "prevalence": item.prevalence,
           "data_seed": item.data_seed, "slicer_seed": item.slicer_seed, "grid": item.grid, "n_slices": n_slices,
           "gamma": item.gamma, "aggregate": item.aggregate, "position": item.position,
           "patch_metric": item.patch_metric, "n_test": len(dice), "embedder": data.embedder_name,
           **report.to_row(), "seconds_reduce": t1 - t0, "seconds_fit": t2 - t1}
    return row, fitted


def patch_benchmark(runs: Sequence[tuple], embedder: "Embedder", results_path: str | os.PathLike,
                    cache_dir: str | os.PathLike | None = "cache/embeddings", slicer_seeds: Sequence[int] = (0, 1, 2, 3, 4),
                    grid: int = 4, settings: Sequence[dict[str, Any]] = ({},), progress: bool = True) -> pd.DataFrame:
    """Patch-level detection benchmark over ``(case, prevalence, data_seed, table, run)`` tuples x slicer seeds
    x ``settings`` (dicts of :class:`PatchBenchmarkItem` fields, e.g. ``{"aggregate": "share"}``).

    Resumable like :func:`seg4seg_utils.studies.benchmark.run_benchmark`: one JSON line per finished fit, keyed by a
    hash of the item; finished items are read back, not refitted. Patch embeddings and UMAP reductions are
    cached under ``cache_dir``. Runs in this process (the UMAP of n_images x grid^2 patches dominates).
    """
    from tqdm.auto import tqdm

    from seg4seg_utils.studies.benchmark import open_rows_for_append, read_rows

    results_path = Path(results_path)
    results_path.parent.mkdir(parents=True, exist_ok=True)
    reduced = Path(cache_dir) / "reduced" if cache_dir is not None else None
    items, data_of = [], {}
    for case, prevalence, data_seed, table, run in runs:
        for st in settings:
            for s in slicer_seeds:
                it = PatchBenchmarkItem(case, float(prevalence), int(data_seed), int(s), str(run.root),
                                        str(table.root), grid=grid, **st)
                items.append(it)
                data_of[it] = (table, run)
    done = {r["key"] for r in read_rows(results_path)}
    todo = [it for it in items if it.key not in done]
    loaded: dict[tuple[str, str], PatchData] = {}
    with open_rows_for_append(results_path) as fh:
        for it in tqdm(todo, desc="patch slicer fits", disable=not progress):
            k = (it.dataset_root, it.run_root)
            if k not in loaded:
                table, run = data_of[it]
                loaded[k] = patch_dataset(table, run, embedder, grid, cache_dir=cache_dir, progress=progress)
            row, _ = run_patch_item(it, loaded[k], reduced)
            fh.write(json.dumps(row) + "\n")
            fh.flush()
    wanted = {it.key for it in items}
    return pd.DataFrame([r for r in read_rows(results_path) if r["key"] in wanted])


def level_names(patch_rows: pd.DataFrame) -> list[str]:
    """A readable name per patch-benchmark row: "patch, lift", "patch, share, gamma=0.0", ... (settings that vary
    between the patch-slicing rows are named), and "image, pooled patch features" for the pooled baseline."""
    sliced = patch_rows[patch_rows["aggregate"] != "pooled"]
    varying = [c for c in ("gamma", "position", "patch_metric", "grid", "n_slices") if c in sliced.columns
               and sliced[c].nunique() > 1]
    names = []
    for _, r in patch_rows.iterrows():
        if r["aggregate"] == "pooled":
            names.append("image, pooled patch features")
            continue
        extra = [f"{c}={r[c]}" for c in varying if not (c == "gamma" and r[c] == sliced["gamma"].max())]
        names.append(", ".join(["patch", str(r["aggregate"]), *extra]))
    return names


def detection_summary(patch_rows: pd.DataFrame, image_rows: pd.DataFrame | None = None) -> pd.DataFrame:
    """Detection rate (share of slicer seeds meeting the criterion) per level, case and prevalence, side by side.

    ``image_rows`` are rows of :func:`seg4seg_utils.studies.benchmark.run_benchmark` (image-level SEG4SEG); they get
    ``level = "image"``. Patch rows are named by :func:`level_names`. Each rate carries its count ``k``/``n``
    and 95 % Wilson interval (:func:`seg4seg_utils.stats.with_detection_counts`).
    """
    from seg4seg_utils.stats import with_detection_counts

    p = patch_rows.copy()
    p["level"] = level_names(p)
    frames = [p]
    if image_rows is not None and len(image_rows):
        i = image_rows.copy()
        i["level"] = "image"
        frames.append(i)
    rows = pd.concat(frames, ignore_index=True)
    return with_detection_counts(rows.groupby(["level", "case", "prevalence"])
                                 .agg(detection_rate=("success", "mean"), purity_pass=("purity_pass", "mean"),
                                      max_purity=("max_purity", "mean"), n_seeds=("success", "size")).reset_index())


def level_comparison(patch_rows: pd.DataFrame, image_rows: pd.DataFrame | None,
                     out_dir: str | os.PathLike | None) -> pd.DataFrame:
    """:func:`detection_summary` of patch- and image-level rows, written to ``out_dir`` as
    :data:`LEVEL_COMPARISON_FILE` (``results/<preset>/patches/`` in the book; ``None``: nothing is written).

    Returns the table. The same rows always give the same file, so rerunning the study leaves it unchanged.
    """
    summary = detection_summary(patch_rows, image_rows)
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        summary.to_csv(Path(out_dir) / LEVEL_COMPARISON_FILE, index=False)
    return summary
