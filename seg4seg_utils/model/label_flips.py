"""Label flips in multi-class segmentation: right regions, wrong labels (after Achara et al. 2026).

Binary foreground Dice does not see a flip at all; a per-class Dice sees it only mixed with boundary errors.
This module separates the two:

* :func:`decompose` splits every ground-truth foreground pixel into **correct** (predicted as its own
  class), **flipped** (predicted as *another foreground class*) and **missed** (predicted background);
  ``correct + flipped + missed == gt_foreground`` exactly. Predicted-foreground pixels on ground-truth
  background are counted separately as ``spurious``.
* :func:`flip_risk` is the ground-truth-free per-pixel signal: the entropy of the foreground class
  probabilities renormalised to sum to one, divided by ``log(K)`` (K foreground classes) so that it lies
  in [0, 1]: 0 when the model is sure *which* foreground class, 1 when it cannot tell them apart.
  Per image it is averaged over the predicted-foreground pixels (:func:`image_summary`).
* :func:`top_share` measures how well flip-risk *concentrates* the flips. The **top-decile share of flip
  mass** (the paper's name for it) is, at pixel level, the share of all flipped pixels of the test set
  that lie in the 10 % of predicted-foreground pixels with the highest flip-risk (1.0: every flip is in
  the riskiest decile; 0.1: flip-risk ranks no better than chance). The image-level variant (the share of
  all flipped pixels carried by the 10 % of images with the highest mean flip-risk) answers "if I review
  the riskiest tenth of the images, how many of the flips do I see?"; both are reported by
  :func:`seg4seg_utils.studies.labelflip.flip_mass_concentration`. Ties at the decile boundary are split
  fractionally, so the value does not depend on the order of equal scores.

For the slicer, use ``1 - flip_rate`` as performance (column ``no_flip`` of the metrics table): higher is
better, the same direction as Dice, so the protocol's "bottom 40 % of slices" rule applies unchanged.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["decompose", "decomposition_rates", "flip_risk", "dice_score", "image_summary", "top_share", "group_decomposition"]



# ------------------------------------------------------------------------------------- decomposition
def _labels(a: Any, name: str) -> np.ndarray:
    arr = np.asarray(a)
    if arr.dtype == bool or not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"{name} must hold integer class labels (0 = background), got dtype {arr.dtype}; "
                        "take the argmax of probabilities first")
    if arr.size and arr.min() < 0:
        raise ValueError(f"{name} holds negative labels ({int(arr.min())}); labels are 0 (background), 1, 2, ...")
    return arr


def decompose(truth: Any, pred: Any, background: int = 0) -> dict[str, np.ndarray]:
    """Per-image pixel counts: gt_foreground = correct + flipped + missed, plus spurious (GT bg predicted fg).

    ``truth`` and ``pred`` are integer label maps, one image (H, W) or a batch (N, H, W); every label other
    than ``background`` is a foreground class. Returns int64 arrays of length N (length 1 for one image).
    """
    t, p = _labels(truth, "truth"), _labels(pred, "pred")
    if t.shape != p.shape:
        raise ValueError(f"truth has shape {t.shape} but pred has shape {p.shape}; they must match pixel for pixel")
    if t.ndim == 2:
        t, p = t[None], p[None]
    if t.ndim != 3:
        raise ValueError(f"label maps must be (H, W) or (N, H, W), got shape {t.shape}")
    t, p = t.reshape(len(t), -1), p.reshape(len(p), -1)
    gt_fg, pred_fg = t != background, p != background
    correct = np.count_nonzero(gt_fg & (p == t), axis=1)
    missed = np.count_nonzero(gt_fg & ~pred_fg, axis=1)
    flipped = np.count_nonzero(gt_fg & pred_fg & (p != t), axis=1)
    return {"gt_foreground": np.count_nonzero(gt_fg, axis=1), "correct": correct, "flipped": flipped,
            "missed": missed, "spurious": np.count_nonzero(~gt_fg & pred_fg, axis=1)}


def decomposition_rates(counts: dict[str, Any] | pd.DataFrame) -> pd.DataFrame:
    """Fractions of the ground-truth foreground: correct_rate, flip_rate, miss_rate (they sum to 1).

    An image without ground-truth foreground has nothing to flip or miss: correct_rate 1, flip_rate and
    miss_rate 0 (the metrics module's convention that agreeing on "nothing here" is perfect), so every
    value stays finite for the slicer.
    """
    c = pd.DataFrame(counts)
    gt = c["gt_foreground"].to_numpy(dtype=np.float64)
    safe = np.maximum(gt, 1)
    has = gt > 0
    return pd.DataFrame({"correct_rate": np.where(has, c["correct"] / safe, 1.0),
                         "flip_rate": np.where(has, c["flipped"] / safe, 0.0),
                         "miss_rate": np.where(has, c["missed"] / safe, 0.0)}, index=c.index)


def _check_proba(proba: Any, axis: int, tol: float) -> np.ndarray:
    p = np.asarray(proba, dtype=np.float64)
    if p.ndim < 1 or p.shape[axis] < 3:
        raise ValueError(f"flip-risk needs probabilities over background + at least 2 foreground classes along "
                         f"axis {axis}; got shape {p.shape}")
    if not np.isfinite(p).all():
        raise ValueError("probabilities contain NaN or infinite values")
    if (p < -tol).any() or (p > 1 + tol).any():
        raise ValueError(f"probabilities must lie in [0, 1] (found {p.min():.3g}..{p.max():.3g}); apply softmax first")
    total = p.sum(axis=axis)
    if np.abs(total - 1).max() > tol:
        raise ValueError(f"class probabilities must sum to 1 along axis {axis} (found sums "
                         f"{total.min():.4g}..{total.max():.4g}); apply softmax over the class axis first")
    return np.clip(p, 0, 1)


def flip_risk(proba: Any, axis: int = 0, background: int = 0, tol: float = 1e-2) -> np.ndarray:
    """Per-pixel normalised entropy of the renormalised foreground class probabilities, in [0, 1].

    ``proba``: class probabilities with the class axis at ``axis`` (e.g. (C, H, W) or (N, C, H, W) with
    ``axis=1``), C = 1 background + K >= 2 foreground classes. For q_k = p_k / sum_j p_j over foreground
    classes, risk = -sum_k q_k log q_k / log K. One-hot foreground probabilities give 0, a uniform split
    between the foreground classes gives 1, whatever the background probability. A pixel whose foreground
    probabilities are all exactly 0 has no defined split: NaN (never the case on predicted foreground).
    ``tol`` is how far sums may stray from 1 (float16 storage).
    """
    p = _check_proba(proba, axis, tol)
    fg = np.delete(np.moveaxis(p, axis, 0), background, axis=0)
    k = fg.shape[0]
    total = fg.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        q = fg / total
        ent = -np.where(q > 0, q * np.log(np.where(q > 0, q, 1)), 0.0).sum(axis=0)
    risk = np.clip(ent / math.log(k), 0.0, 1.0)
    return np.where(total > 0, risk, np.nan)


def dice_score(a: np.ndarray, b: np.ndarray) -> float:
    den = np.count_nonzero(a) + np.count_nonzero(b)
    return 1.0 if den == 0 else 2.0 * np.count_nonzero(a & b) / den


def image_summary(truth: Any, proba: Any, background: int = 0) -> dict[str, float]:
    """Everything per image from its label map and (C, H, W) probabilities: decomposition, Dice, flip-risk.

    ``dice_fg`` is class-agnostic foreground Dice (what a binary pipeline would report); ``dice_classes`` is
    the mean per-class Dice over foreground classes present in truth or prediction (1 when there are none);
    ``flip_risk`` is the mean flip-risk over predicted-foreground pixels (0 when nothing is predicted).
    """
    p = _check_proba(proba, 0, 1e-2)
    t = _labels(truth, "truth")
    if p.shape[1:] != t.shape:
        raise ValueError(f"probabilities are {p.shape[1:]} (H, W) but the label map is {t.shape}")
    if t.size and t.max() >= p.shape[0]:
        raise ValueError(f"truth holds label {int(t.max())} but the probabilities have only {p.shape[0]} classes")
    pred = p.argmax(axis=0)
    counts = {k: int(v[0]) for k, v in decompose(t, pred, background).items()}
    rates = decomposition_rates({k: [v] for k, v in counts.items()}).iloc[0].to_dict()
    classes = [c for c in range(p.shape[0]) if c != background and ((t == c).any() or (pred == c).any())]
    dice_classes = float(np.mean([dice_score(t == c, pred == c) for c in classes])) if classes else 1.0
    fg_pred = pred != background
    risk = flip_risk(p, 0, background)
    return {**counts, **rates, "no_flip": 1.0 - rates["flip_rate"],
            "dice_fg": dice_score(t != background, fg_pred), "dice_classes": dice_classes,
            "flip_risk": float(risk[fg_pred].mean()) if fg_pred.any() else 0.0}


def top_share(score: Any, mass: Any, q: float = 0.1) -> float:
    """Share of the total ``mass`` held by the top fraction ``q`` of units ranked by ``score`` (highest first).

    The top set holds exactly ``q * n`` units (a fraction of a unit counts fractionally); units tied at the
    boundary score contribute their mass in proportion to the part of the tie that fits, so the result does
    not depend on the order of equal scores. A random score gives ``q`` in expectation, a perfect one
    min(1, q * n / number of units carrying mass) for 0/1 mass. NaN when the total mass is 0.
    """
    s, m = np.asarray(score, dtype=np.float64).ravel(), np.asarray(mass, dtype=np.float64).ravel()
    if s.shape != m.shape:
        raise ValueError(f"score has {s.size} values but mass has {m.size}; one of each per unit")
    if not (0 < q <= 1):
        raise ValueError(f"q must lie in (0, 1], got {q}")
    if not (np.isfinite(s).all() and np.isfinite(m).all()):
        raise ValueError("score and mass must be finite (drop units without a score first)")
    if (m < 0).any():
        raise ValueError("mass must be non-negative (e.g. flipped pixel counts)")
    total = m.sum()
    if s.size == 0 or total == 0:
        return float("nan")
    budget = q * s.size
    uniq, inverse = np.unique(-s, return_inverse=True)   # groups of equal score, highest score first
    n_g = np.bincount(inverse)
    m_g = np.bincount(inverse, weights=m)
    before = np.concatenate([[0.0], np.cumsum(n_g)[:-1]])
    take = np.clip(budget - before, 0, n_g) / n_g
    return float((take * m_g).sum() / total)


def group_decomposition(metrics: pd.DataFrame, groups: Any, name: str = "group") -> pd.DataFrame:
    """Decomposition per group (slice, subgroup, ...): pooled pixel fractions and mean per-image rates.

    ``correct``/``flipped``/``missed`` are pooled over the group's pixels (they sum to 1); ``mean_flip_rate``
    and ``mean_flip_risk`` average the per-image values; ``n_images`` counts the members.
    """
    g = np.asarray(groups)
    if len(g) != len(metrics):
        raise ValueError(f"{len(g)} group labels for {len(metrics)} metrics rows; one label per image")
    df = metrics.assign(**{name: g})
    agg = df.groupby(name).agg(n_images=("gt_foreground", "size"), gt_foreground=("gt_foreground", "sum"),
                               correct=("correct", "sum"), flipped=("flipped", "sum"), missed=("missed", "sum"),
                               mean_flip_rate=("flip_rate", "mean"), mean_flip_risk=("flip_risk", "mean"),
                               mean_dice_fg=("dice_fg", "mean"), mean_dice_classes=("dice_classes", "mean"))
    for col in ("correct", "flipped", "missed"):
        agg[col] = agg[col] / agg["gt_foreground"].clip(lower=1)
    return agg.reset_index()
