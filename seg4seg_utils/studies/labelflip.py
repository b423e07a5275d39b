"""The label-flip study: can SEG4SEG find images whose cells got the wrong class, and with which performance?

The data (:mod:`seg4seg_utils.data.twin_cells`), the multi-class model (:mod:`seg4seg_utils.model.multiclass`)
and the flip metrics (:mod:`seg4seg_utils.model.label_flips`) live in their layers; this module composes them:
:func:`flip_mass_concentration` (how well flip-risk ranks the flips) and :func:`compare_performances` (SEG4SEG
with foreground Dice, per-class Dice or ``no_flip`` = 1 - flip rate as the performance column).

The notebook's tables come from four functions that compute them and write them into a results folder
(``results/<preset>/labelflip/`` in the book): :func:`decomposition_by_group`, :func:`flip_risk_quality`,
:func:`detection_by_performance` and :func:`flip_rate_per_slice` (:data:`RESULT_FILES`).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from seg4seg_utils.model.label_flips import group_decomposition, top_share
from seg4seg_utils.studies.workspace import Workspace, results_folder

__all__ = ["RESULT_FILES", "BOOK_PHANTOM", "twins_dataset", "twins_config", "twins_model", "flip_mass_concentration",
           "compare_performances", "decomposition_by_group",
           "flip_risk_quality", "detection_by_performance", "flip_rate_per_slice"]

#: the twin-cells phantom as chapter 11 runs it (its parameters cell): the main job trains this one's model ahead,
#: so that the chapter, run beside others, only reads it (tests/test_labelflip.py checks the two agree)
BOOK_PHANTOM = {"seed": 0, "train_alignment": 0.8, "cue_strength": 2.5, "test_shift": 0.25}


def twins_dataset(ws: Workspace, seed: int, train_alignment: float, cue_strength: float, test_shift: float):
    """The study's twin-cells phantom at the workspace's preset size (written once, then read back), in
    ``<data>/<preset>/labelflip/``."""
    from seg4seg_utils.data import twin_cells

    n, size = ws.preset.labelflip.n_images, ws.preset.labelflip.image_size
    folder = ws.data_dir / ws.preset.name / "labelflip" / f"twins-n{n}-s{size}-a{train_alignment}-c{cue_strength}"
    return twin_cells.generate_labelflip_dataset(folder, n=n, size=size, seed=seed, train_alignment=train_alignment,
                                                test_shift=test_shift, cue_strength=cue_strength, progress=False)


def twins_config(ws: Workspace, seed: int):
    """The study's training configuration: the workspace's recipe (:meth:`Workspace.train_config`, that of its
    preset object, not of the preset's name) at the study's size, with the model seed ``seed``."""
    from dataclasses import replace

    return replace(ws.train_config(), seed=seed, **ws.preset.labelflip.train_overrides()).validate()


def twins_model(ws: Workspace, table, seed: int):
    """The study's multi-class U-Net on ``table`` (:func:`twins_config`), trained once, then read back."""
    from seg4seg_utils.model.multiclass import train_multiclass

    return train_multiclass(table, twins_config(ws, seed), ws.runs, progress=False)


#: what the study writes into its results folder, by function
RESULT_FILES = {"decomposition_by_group": ("decomposition_by_group.csv",),
                "flip_risk_quality": ("flip_concentration.csv",),
                "detection_by_performance": ("detection_by_performance.csv", "detection_by_performance.md"),
                "flip_rate_per_slice": ("flip_rate_per_slice.csv", "flip_rate_per_slice.md")}


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




# ------------------------------------------------------------------------------- tables, written to a folder
def decomposition_by_group(metrics: pd.DataFrame, out_dir: str | os.PathLike | None
                           ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Correct / flipped / missed per image group of the test split (:func:`group_decomposition`).

    ``metrics``: the multi-class run's per-image metrics (``shifted``, ``cls`` and the pixel counts). Returns
    (by shift: "aligned" / "shifted", by group: "aligned, A", "shifted, B", ...); the first is written to
    ``out_dir`` as ``decomposition_by_group.csv`` (None: nothing is written).
    """
    shifted = np.where(metrics["shifted"], "shifted", "aligned")
    group = shifted + ", " + metrics["cls"].map({1: "A", 2: "B"})
    by_group = group_decomposition(metrics, group, name="group")
    by_shift = group_decomposition(metrics, shifted, name="group")
    out = results_folder(out_dir)
    if out is not None:
        by_shift.to_csv(out / "decomposition_by_group.csv", index=False)
    return by_shift, by_group


def flip_risk_quality(pixels: pd.DataFrame, metrics: pd.DataFrame, out_dir: str | os.PathLike | None,
                      q: float = 0.1) -> dict[str, float]:
    """How well the ground-truth-free flip-risk predicts the flips: :func:`flip_mass_concentration` plus
    ``spearman_image`` (Spearman rho of an image's mean flip-risk and its flip rate) and ``pixel_auroc`` (AUROC of
    flip-risk for "this predicted-foreground pixel is flipped"; NaN when all or none are).

    ``pixels``: :func:`seg4seg_utils.model.multiclass.pixel_flips` of the images in ``metrics``. Written to
    ``out_dir`` as ``flip_concentration.csv`` (one ``value`` column; None: not written). Returns the dict.
    """
    from scipy.stats import spearmanr
    from sklearn.metrics import roc_auc_score

    rho = float(spearmanr(metrics["flip_risk"], metrics["flip_rate"]).statistic)
    has_both = 0 < pixels["flipped"].sum() < len(pixels)
    pixel_auroc = float(roc_auc_score(pixels["flipped"], pixels["risk"])) if has_both else float("nan")
    conc = flip_mass_concentration(pixels, metrics, q=q)
    conc["spearman_image"], conc["pixel_auroc"] = rho, pixel_auroc
    out = results_folder(out_dir)
    if out is not None:
        pd.Series(conc).to_frame("value").to_csv(out / "flip_concentration.csv")
    return conc


def detection_by_performance(X: np.ndarray, metrics: pd.DataFrame, attribute: Any,
                             out_dir: str | os.PathLike | None,
                             performances: Sequence[str] = ("dice_fg", "dice_classes", "no_flip"),
                             seeds: Sequence[int] = (0,), n_slices: int = 10,
                             cache_dir: str | os.PathLike | None = None, reduce: str | None = "umap"
                             ) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """:func:`compare_performances` (arguments as there) and its rates per performance column (detection rate, mean
    max/worst purity, mean omega2, number of seeds).

    Written to ``out_dir``: the per-seed rows as ``detection_by_performance.csv``, the rates as
    ``detection_by_performance.md`` (None: nothing is written). Returns (rows, rates, fitted slicers).
    """
    detection, fitted = compare_performances(X, metrics, attribute, performances, seeds=seeds, n_slices=n_slices,
                                             cache_dir=cache_dir, reduce=reduce)
    rates = detection.groupby("performance", sort=False).agg(detection_rate=("success", "mean"),
                                                             max_purity=("max_purity", "mean"),
                                                             worst_purity=("worst_purity", "mean"),
                                                             omega2=("omega2", "mean"), n_seeds=("success", "size"))
    out = results_folder(out_dir)
    if out is not None:
        detection.to_csv(out / "detection_by_performance.csv", index=False)
        (out / "detection_by_performance.md").write_text(rates.to_markdown(floatfmt=".2f") + "\n")
    return detection, rates, fitted


def flip_rate_per_slice(metrics: pd.DataFrame, labels: Any, report: Any,
                        out_dir: str | os.PathLike | None) -> pd.DataFrame:
    """Correct / flipped / missed per slice (``labels``, one per row of ``metrics``) with the slice's purity from
    ``report`` (its :class:`~seg4seg_utils.discovery.protocol.SliceReport`), highest mean flip rate first.

    Written to ``out_dir`` as ``flip_rate_per_slice.csv`` and, rounded to 3 digits, ``flip_rate_per_slice.md``
    (None: nothing is written). Returns the table.
    """
    per_slice = group_decomposition(metrics, labels, name="slice")
    per_slice["purity_shifted"] = per_slice["slice"].map(report.table.set_index("slice")["purity"])
    per_slice = per_slice.sort_values("mean_flip_rate", ascending=False).reset_index(drop=True)
    out = results_folder(out_dir)
    if out is not None:
        per_slice.to_csv(out / "flip_rate_per_slice.csv", index=False)
        (out / "flip_rate_per_slice.md").write_text(per_slice.round(3).to_markdown(index=False) + "\n")
    return per_slice
