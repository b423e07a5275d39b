"""Boundary-aware scores as the slicer's performance: surface Dice and HD95 per test image, beside Dice.

Dice weighs every pixel alike, while some failures live on the boundary (case C: polygon annotations against a
model's smooth prediction). :func:`boundary_benchmark` asks whether a boundary score finds them where Dice does
not. The scores come from the saved test predictions of the workspace's trained models: normalised surface Dice
at ``tolerance`` pixels and HD95 in pixels, from :func:`seg4seg_utils.model.volume_metrics.surface_scores` (the
project's own implementation of Nikolov et al.'s surface Dice, used by the 3-D audit too and tested on
hand-counted shapes; MONAI and DeepMind's ``surface-distance`` compute the same quantity but are not installed
here). Each score is sliced with the default SEG4SEG settings on ``x0`` and ``x0*M_GT`` with every slicer seed;
HD95 is unbounded, so it is reported as a gap only. ``scripts/bench_boundary_scores.py`` runs it from the shell;
notebook 06 shows it.
"""
from __future__ import annotations

import time
from typing import Iterable

import numpy as np
import pandas as pd
from PIL import Image

from seg4seg_utils.data.inject import ALL_CASES
from seg4seg_utils.studies.workspace import TrainedCase, Workspace

__all__ = ["SCORES", "VARIANTS", "boundary_scores", "boundary_benchmark"]

SCORES = (("dice",), ("surface_dice",), ("dice", "surface_dice"))
VARIANTS = ("x0", "x0*M_GT")


def boundary_scores(tc: TrainedCase, tolerance: float = 2.0) -> pd.DataFrame:
    """Per test image of one trained case: its metrics row with ``surface_dice`` and ``hd95`` added."""
    from seg4seg_utils.model.volume_metrics import surface_scores

    test = tc.table.split("test")
    rows = []
    for i, sid in enumerate(test.df["id"]):
        prediction = np.asarray(Image.open(tc.run.root / "predictions" / f"{sid}.png")) > 0
        nsd, hd95 = surface_scores(test.mask(i), prediction, (1.0, 1.0), tolerance_mm=tolerance)
        rows.append({"id": sid, "surface_dice": nsd, "hd95": hd95})
    return tc.run.metrics().merge(pd.DataFrame(rows), on="id", validate="one_to_one")


def boundary_benchmark(ws: Workspace, cases: Iterable[str] = ALL_CASES, tolerance: float = 2.0,
                       reduce: str = "umap", log=None) -> pd.DataFrame:
    """Score, gap and slice every trained case of ``cases``; returns the detection table (k/n, Wilson interval).

    Writes ``ws.results("boundary")``: ``boundary_scores.csv`` (per image: case, prevalence, id, failure, dice,
    surface_dice, hd95), ``boundary_gaps.csv`` (per cell: each score's subgroup gap, rest - failure, and its
    Mann-Whitney p; HD95 is lower for better masks, so there a negative gap means the failure is worse) and
    ``boundary_detection.csv`` / ``.md`` (detection rate per cell, image variant and score).
    ``log(message)`` is told when each cell is done.
    """
    from seg4seg_utils.data.inject import CASES
    from seg4seg_utils.discovery.embed import embed_dataset, performance_matrix
    from seg4seg_utils.discovery.judge import SlicerSettings, fit_and_judge, reduced
    from seg4seg_utils.model.metrics import subgroup_gap
    from seg4seg_utils.stats import RATE_NOTE, detection_display, with_detection_counts

    if tolerance <= 0:
        raise ValueError(f"tolerance must be > 0 pixels, got {tolerance}")
    settings = SlicerSettings(reduce=reduce)
    out = ws.results("boundary")
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    per_image, gaps, fits = [], [], []
    for tc in ws.trained_cases("".join(cases)):
        metrics = boundary_scores(tc, tolerance)
        per_image.append(metrics[["id", "failure", "dice", "surface_dice", "hd95"]].assign(
            case=tc.case, prevalence=tc.prevalence))
        cell = {"case": tc.case, "prevalence": tc.prevalence}
        for score in ("dice", "surface_dice", "hd95"):
            gap = subgroup_gap(metrics, "failure", score)
            gaps.append({**cell, "score": score, "gap": gap["gap"], "p_value": gap["p_value"]})
        for variant in VARIANTS:
            emb = embed_dataset(tc.table, ws.embedder, variant, run=tc.run, cache_dir=ws.cache_dir, progress=False)
            aligned = metrics.set_index("id").loc[emb.ids].reset_index()
            hidden = aligned["failure"].astype(bool).to_numpy()
            for score in SCORES:
                y = performance_matrix(aligned, score, ids=emb.ids)
                for seed in ws.preset.slicer_seeds:
                    Z = reduced(emb.X, settings, seed, ws.reduced_cache)
                    _, report = fit_and_judge(Z, y, hidden, n_slices=CASES[tc.case].n_slices, settings=settings,
                                              seed=seed)
                    fits.append({**cell, "image_variant": variant, "performance": "+".join(score),
                                 "success": bool(report.success)})
        if log:
            log(f"{tc.case} at {tc.prevalence:.0%}: {time.perf_counter() - t0:.0f} s")
    fits = pd.DataFrame(fits)
    table = with_detection_counts(fits.groupby(["case", "prevalence", "image_variant", "performance"], sort=False)
                                  .agg(detection_rate=("success", "mean"), n_seeds=("success", "size")).reset_index())
    pd.concat(per_image, ignore_index=True).to_csv(out / "boundary_scores.csv", index=False)
    pd.DataFrame(gaps).to_csv(out / "boundary_gaps.csv", index=False)
    table.to_csv(out / "boundary_detection.csv", index=False)
    shown = detection_display(table)
    shown["cell"] = shown["case"] + " " + (shown["prevalence"] * 100).round().astype(int).astype(str) + " %"
    shown["setting"] = shown["image_variant"] + " + " + shown["performance"]
    shown = shown.pivot(index="setting", columns="cell", values="detection_rate")[list(dict.fromkeys(shown["cell"]))]
    (out / "boundary_detection.md").write_text(
        f"# Boundary scores as the slicer's performance (preset `{ws.preset.name}`, surface Dice at "
        f"{tolerance:g} px, embedder {ws.embedder.name}, {len(ws.preset.slicer_seeds)} slicer seeds)\n\n"
        + RATE_NOTE + "\n\n" + shown.to_markdown() + "\n")
    return table
