"""The label-flip study: can SEG4SEG find images whose cells got the wrong class, and with which performance?

The data (:mod:`seg4seg_utils.data.twin_cells`), the multi-class model (:mod:`seg4seg_utils.model.multiclass`)
and the flip metrics (:mod:`seg4seg_utils.model.label_flips`) live in their layers; this module composes them:
:func:`flip_mass_concentration` (how well flip-risk ranks the flips) and :func:`compare_performances` (SEG4SEG
with foreground Dice, per-class Dice or ``no_flip`` = 1 - flip rate as the performance column).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from seg4seg_utils.model.label_flips import top_share

__all__ = ["flip_mass_concentration", "compare_performances"]


def flip_mass_concentration(pixels: pd.DataFrame, metrics: pd.DataFrame, q: float = 0.1) -> dict[str, float]:
    """Top-decile share of flip mass at pixel level and image level, each with its chance level ``q``.

    ``pixel_share``: share of all flipped pixels among the ``q`` riskiest predicted-foreground pixels.
    ``image_share``: share of all flipped pixels in the ``q`` images with the highest mean flip-risk.
    ``*_lift`` divide by ``q`` (1 = no better than a random ranking).
    """
    pixel = top_share(pixels["risk"], pixels["flipped"], q)
    image = top_share(metrics["flip_risk"], metrics["flipped"], q)
    return {"q": q, "pixel_share": pixel, "pixel_lift": pixel / q, "image_share": image, "image_lift": image / q,
            "n_pixels": int(len(pixels)), "n_flipped_pixels": int(pixels["flipped"].sum()),
            "n_images": int(len(metrics))}


# ------------------------------------------------------------------------------------------- slicer
def compare_performances(X: np.ndarray, metrics: pd.DataFrame, attribute: Any,
                         performances: Sequence[str] = ("dice_fg", "dice_classes", "no_flip"),
                         seeds: Sequence[int] = (0,), n_slices: int = 10, gamma: float = 10.0,
                         cache_dir: str | os.PathLike | None = None, reduce: str | None = "umap"
                         ) -> tuple[pd.DataFrame, dict]:
    """SEG4SEG with each performance column in turn (same embedding, same UMAP per seed): does it find ``attribute``?

    ``metrics`` rows follow ``X``'s rows. ``no_flip`` = 1 - flip rate (higher is better, like Dice).
    ``reduce``: "umap" (8-d, the paper's setting; cached under ``cache_dir/reduced``), "pca" or None.
    Returns one row per (performance, seed) with the protocol's verdict plus the winning/worst slice, and
    the fitted slicers keyed by (performance, seed).
    """
    from seg4seg_utils.discovery.judge import SlicerSettings, fit_and_judge, reduced

    attr = np.asarray(attribute, dtype=bool)
    if len(attr) != len(X) or len(metrics) != len(X):
        raise ValueError(f"X has {len(X)} rows, metrics {len(metrics)}, attribute {len(attr)}; one per image in all")
    settings = SlicerSettings(gamma=gamma, reduce=reduce)
    rows, fitted = [], {}
    for seed in seeds:
        Z = reduced(np.asarray(X, dtype=np.float64), settings, int(seed),
                    None if cache_dir is None else Path(cache_dir) / "reduced")
        for perf in performances:
            y = metrics[perf].to_numpy(dtype=np.float64)
            sf, report = fit_and_judge(Z, y, attr, n_slices=n_slices, settings=settings, seed=int(seed))
            rows.append({"performance": perf, "slicer_seed": int(seed), **report.to_row()})
            fitted[(perf, int(seed))] = (sf, report)
    return pd.DataFrame(rows), fitted


