"""Per-image segmentation metrics, vectorised over a batch of binary masks.

Empty-mask conventions (every score stays finite, so the slicer never sees NaN):

============================  ======  ======  ======  ======
case                           Dice    IoU     PPV     NPV
============================  ======  ======  ======  ======
truth and prediction empty     1       1       1       formula
prediction empty, truth not    0       0       0       formula
truth empty, prediction not    0       0       0       formula
prediction covers every pixel  formula formula formula 1 if the truth does too, else 0
============================  ======  ======  ======  ======

Rationale: agreeing that there is nothing to segment is perfect agreement (1); any other undefined ratio
arises only when the model missed or hallucinated the whole structure, which is a complete failure (0) -
so PPV of an empty prediction on a non-empty truth is 0, not "no false positives, hence 1".

Scores only soft outputs allow (:func:`soft_scores`, one image, names in ``SOFT_METRICS``), with the pixel
uncertainty u = 1 - |2p - 1| (0 for a confident 0 or 1, 1 at p = 0.5):

* ``soft_dice`` = 2 sum(p t) / (sum(p) + sum(t)), in [0, 1], higher is better; 1 when both sums are 0 (truth
  empty and probability all zero: agreed-empty, as Dice in the table). Usable as a performance score.
* ``boundary_uncertainty``: mean u over the pixels within ``band`` px of the edge of the thresholded
  prediction (p >= 0.5) - how unsure the model is where it draws the edge; 0 when the prediction has no edge.
* ``mean_uncertainty``: mean u over the whole image.

The two uncertainties need no ground truth; they are descriptors (higher = less sure), not quality scores.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["METRICS", "SOFT_METRICS", "confusion_counts", "segmentation_metrics", "metrics_table", "subgroup_gap",
           "soft_scores"]

METRICS: tuple[str, ...] = ("dice", "iou", "ppv", "npv")
SOFT_METRICS: tuple[str, ...] = ("soft_dice", "boundary_uncertainty", "mean_uncertainty")


def confusion_counts(pred: np.ndarray, truth: np.ndarray) -> dict[str, np.ndarray]:
    """Per-image TP, FP, FN, TN counts for boolean arrays shaped (N, ...) (a single HxW pair is also accepted)."""
    pred, truth = np.asarray(pred), np.asarray(truth)
    if pred.shape != truth.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from ground-truth shape {truth.shape}")
    if pred.dtype != bool or truth.dtype != bool:
        raise TypeError(f"masks must be boolean (got {pred.dtype} and {truth.dtype}); threshold probabilities first")
    if pred.ndim == 2:
        pred, truth = pred[None], truth[None]
    p = pred.reshape(len(pred), -1)
    t = truth.reshape(len(truth), -1)
    n_pix = p.shape[1]
    tp = np.count_nonzero(p & t, axis=1)
    n_pred = np.count_nonzero(p, axis=1)
    n_true = np.count_nonzero(t, axis=1)
    fp, fn = n_pred - tp, n_true - tp
    tn = n_pix - tp - fp - fn
    return {"tp": tp, "fp": fp, "fn": fn, "tn": tn}


def _ratio(num: np.ndarray, den: np.ndarray, both_empty_value: np.ndarray) -> np.ndarray:
    """num/den where den > 0, else the convention value (1 for agreed-empty, 0 for a total miss)."""
    out = np.where(den > 0, num / np.maximum(den, 1), both_empty_value)
    return out.astype(np.float64)


def segmentation_metrics(pred: np.ndarray, truth: np.ndarray) -> dict[str, np.ndarray]:
    """Dice, IoU, PPV, NPV and the confusion counts per image (see the module docstring for empty masks)."""
    c = confusion_counts(pred, truth)
    tp, fp, fn, tn = c["tp"], c["fp"], c["fn"], c["tn"]
    fg_agree_empty = ((tp + fp + fn) == 0).astype(float)  # neither mask has any foreground
    bg_agree_empty = ((tn + fn + fp) == 0).astype(float)  # neither mask has any background
    return {
        "dice": _ratio(2 * tp, 2 * tp + fp + fn, fg_agree_empty),
        "iou": _ratio(tp, tp + fp + fn, fg_agree_empty),
        "ppv": _ratio(tp, tp + fp, fg_agree_empty),
        "npv": _ratio(tn, tn + fn, bg_agree_empty),
        **c,
    }


def metrics_table(preds: np.ndarray, truths: np.ndarray, ids: list[str] | None = None,
                  chunk: int = 64) -> pd.DataFrame:
    """A tidy per-image table (id, dice, iou, ppv, npv, tp, fp, fn, tn), computed in chunks to bound memory."""
    n = len(preds)
    if len(truths) != n:
        raise ValueError(f"{n} predictions but {len(truths)} ground-truth masks")
    parts = [segmentation_metrics(np.asarray(preds[i:i + chunk]), np.asarray(truths[i:i + chunk]))
             for i in range(0, n, chunk)]
    df = pd.DataFrame({k: np.concatenate([p[k] for p in parts]) for k in parts[0]} if parts else
                      {k: [] for k in (*METRICS, "tp", "fp", "fn", "tn")})
    if ids is not None:
        if len(ids) != n:
            raise ValueError(f"{len(ids)} ids for {n} images")
        df.insert(0, "id", list(ids))
    return df


def subgroup_gap(table: pd.DataFrame, group: str = "failure", metric: str = "dice") -> dict[str, float]:
    """Mean ``metric`` of the ``group`` subgroup vs the rest, their gap (rest - group) and a two-sided Mann-Whitney p.

    The p-value is NaN when either side has fewer than two samples (no test is meaningful then).
    """
    from scipy.stats import mannwhitneyu

    if group not in table.columns or metric not in table.columns:
        raise KeyError(f"table needs columns {group!r} and {metric!r}; it has {list(table.columns)}")
    inside = table[group].astype(bool).to_numpy()
    values = table[metric].to_numpy(dtype=float)
    a, b = values[inside], values[~inside]
    p = float(mannwhitneyu(a, b, alternative="two-sided").pvalue) if len(a) > 1 and len(b) > 1 else float("nan")
    mean_a = float(a.mean()) if len(a) else float("nan")
    mean_b = float(b.mean()) if len(b) else float("nan")
    return {"n_group": int(len(a)), "n_rest": int(len(b)), f"{metric}_group": mean_a, f"{metric}_rest": mean_b,
            "gap": mean_b - mean_a, "p_value": p}


def soft_scores(probability: np.ndarray, truth: np.ndarray, band: int = 2) -> dict[str, float]:
    """``soft_dice``, ``boundary_uncertainty`` and ``mean_uncertainty`` of one image (see the module docstring).

    ``probability``: float HxW in [0, 1] (a rounding overshoot up to 1e-6 is clipped); ``truth``: boolean HxW. The boundary band is the pixels at
    Euclidean distance <= ``band`` from the thick boundary (pixels on either side of the edge,
    ``skimage.segmentation.find_boundaries(mode="thick")``) of ``probability >= 0.5``; the image border is
    not an edge, so an all-foreground (or all-background) prediction has no band and scores 0.
    """
    from scipy.ndimage import distance_transform_edt
    from skimage.segmentation import find_boundaries

    p = np.asarray(probability, dtype=np.float64)
    t = np.asarray(truth)
    if p.shape != t.shape:
        raise ValueError(f"probability shape {p.shape} differs from ground-truth shape {t.shape}")
    if t.dtype != bool:
        raise TypeError(f"the ground truth must be boolean (got {t.dtype})")
    if not np.isfinite(p).all() or (p < -1e-6).any() or (p > 1 + 1e-6).any():
        raise ValueError("probabilities must be finite and lie in [0, 1]")
    p = np.clip(p, 0.0, 1.0)  # rounding overshoot (resampled or filtered maps) of at most 1e-6
    if int(band) != band or band < 0:
        raise ValueError(f"band must be a whole number of pixels >= 0, got {band}")
    overlap, total = float((p * t).sum()), float(p.sum() + t.sum())
    uncertainty = 1.0 - np.abs(2.0 * p - 1.0)
    edge = find_boundaries(p >= 0.5, mode="thick")
    if edge.any():
        near = distance_transform_edt(~edge) <= band
        boundary_uncertainty = float(uncertainty[near].mean())
    else:
        boundary_uncertainty = 0.0
    return {"soft_dice": 2.0 * overlap / total if total > 0 else 1.0,
            "boundary_uncertainty": boundary_uncertainty,
            "mean_uncertainty": float(uncertainty.mean()) if uncertainty.size else 0.0}
