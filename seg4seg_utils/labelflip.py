"""Label flips in multi-class segmentation: right regions, wrong labels (after Achara et al. 2026).

A model trained where a structure's class *correlates* with an easy context cue can learn the cue instead
of the structure's own appearance. Under a correlation shift it still finds the right region but gives it
the wrong class. Binary foreground Dice does not see this at all; a per-class Dice sees it only mixed with
boundary errors. This module separates the two:

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
  :func:`flip_mass_concentration`. Ties at the decile boundary are split fractionally, so the value does
  not depend on the order of equal scores.

The multi-class phantom (:func:`twin_cells`, :func:`generate_labelflip_dataset`) makes the effect
visible: two cell types of near-identical appearance whose class is given by a subtle intrinsic cue (one
nucleus vs two) while, in training, it also correlates with an easy context cue (a dark or light
background). The test split holds an exact share of *shifted* images whose tone is anti-correlated with
their class. :func:`train_multiclass` trains the project's U-Net with cross-entropy on such data (reusing
:mod:`seg4seg_utils.train`'s config, data augmentation, device choice and normalisation) and stores
softmax probabilities of the test split (float16, compressed) next to the usual run files, so flip-risk can
be computed afterwards without the model.

For the slicer, use ``1 - flip_rate`` as performance (column ``no_flip`` of the metrics table): higher is
better, the same direction as Dice, so the protocol's "bottom 40 % of slices" rule applies unchanged.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from PIL import Image

from .data import DatasetError, SampleTable, assign_splits, build_dataset, config_hash, write_png
from .kernels import kernel_report, pinned
from .seeding import rng_for

__all__ = [
    "GENERATOR_VERSION", "CLASS_NAMES", "TONES", "twin_cells", "generate_labelflip_dataset", "decompose",
    "decomposition_rates", "flip_risk", "image_summary", "top_share", "flip_mass_concentration",
    "group_decomposition", "train_multiclass", "load_multiclass_model", "load_probabilities", "pixel_flips",
    "compare_performances", "phantom_gallery", "decomposition_bars", "risk_maps", "risk_scatter",
]

GENERATOR_VERSION = "twins-1"   # bump when twin_cells' pixels change: cached datasets are then rejected
CLASS_NAMES = {1: "cell A (one nucleus)", 2: "cell B (two nuclei)"}
TONES = ("dark", "light")
CLASS_COLORS = {0: (0, 0, 0, 0), 1: (0.0, 0.9, 1.0, 0.45), 2: (1.0, 0.25, 0.5, 0.45)}
DECOMPOSITION_COLORS = {"correct": "#4caf50", "flipped": "#e91e63", "missed": "#9e9e9e"}


# ------------------------------------------------------------------------------------------- phantom
def _aligned_tone(cls: int) -> str:
    """The tone a class has in training (class 1 on dark, class 2 on light): the shortcut the model may learn."""
    return "dark" if cls == 1 else "light"


def twin_cells(size: int | tuple[int, int], rng: np.random.Generator | int, cls: int, tone: str,
               cue_strength: float = 1.0, *, return_attributes: bool = False):
    """One image of 1-3 cells of class ``cls`` (1 or 2) on a ``tone`` ("dark"/"light") background.

    Both classes share size, shape, colour, rim and texture; only the nuclei differ (class 1: one central
    nucleus, class 2: two smaller ones), with a contrast scaled by ``cue_strength``. The background tone is
    the easy context cue. Returns (uint8 HxWx3 image, uint8 HxW labels 0/cls[, attributes]).
    """
    from .phantoms import _as_rng, _fourier_k, _grid, _noise, _shape, _to_uint8

    if cls not in (1, 2):
        raise ValueError(f"cls must be 1 or 2 (the two foreground classes), got {cls!r}")
    if tone not in TONES:
        raise ValueError(f"tone must be one of {TONES}, got {tone!r}")
    if not 0 <= cue_strength <= 3:
        raise ValueError(f"cue_strength must lie in [0, 3] (1 = default contrast of the nuclei), got {cue_strength}")
    h, w = _shape(size)
    rng = _as_rng(rng)
    s = min(h, w)
    yy, xx = _grid(h, w)
    base = rng.uniform(55, 80) if tone == "dark" else rng.uniform(155, 180)
    tint = np.array([1.0, 0.97, 1.03], dtype=np.float32) * rng.uniform(0.97, 1.03, 3).astype(np.float32)
    bg = base * (1 + 0.08 * _noise(rng, (h, w), 4)) + 3.0 * _noise(rng, (h, w), s / 6)
    img = bg[..., None] * tint[None, None]
    labels = np.zeros((h, w), dtype=np.uint8)

    n_cells = int(rng.integers(1, 4))
    placed: list[tuple[float, float, float]] = []
    for _ in range(n_cells):
        r = float(rng.uniform(0.10, 0.15) * s)
        for _attempt in range(40):
            cx, cy = rng.uniform(r + 2, w - 3 - r), rng.uniform(r + 2, h - 3 - r)
            if all(math.hypot(cx - px, cy - py) > r + pr + 3 for px, py, pr in placed):
                placed.append((cx, cy, r))
                break
    fill = np.array([150.0, 105.0, 130.0], dtype=np.float32) * np.float32(rng.uniform(0.92, 1.08))
    nucleus_rgb = np.array([0.55, 0.45, 0.75], dtype=np.float32)
    for cx, cy, r in placed:
        aspect, ang = rng.uniform(0.8, 1.0), rng.uniform(0, math.pi)
        ca, sa = math.cos(ang), math.sin(ang)
        u, v = (xx - cx) * ca + (yy - cy) * sa, -(xx - cx) * sa + (yy - cy) * ca
        phi = np.arctan2(v, u)
        wobble = 1 + _fourier_k(phi, (2, 3, 5), rng.normal(0, 0.05, 3), rng.uniform(0, 2 * math.pi, 3))
        rho = np.sqrt((u / r) ** 2 + (v / (r * aspect)) ** 2) / wobble
        inside = rho <= 1.0
        labels[inside] = cls
        alpha = np.clip((1.0 - rho) * r + 0.5, 0, 1)[..., None]  # anti-aliased edge
        body = fill[None, None] * (1 + 0.06 * _noise(rng, (h, w), s / 5)[..., None])
        rim = np.clip(1 - np.abs(rho - 0.9) / 0.1, 0, 1)[..., None]
        body = body * (1 - 0.4 * rim)
        # the intrinsic cue: nuclei (one central one for class 1, two smaller ones for class 2); both classes
        # draw the same random numbers, so one seed gives the same cells and textures for either class
        jitter, t = rng.normal(0, 0.08, 2) * r, rng.uniform(0, math.pi)
        if cls == 1:
            nuclei = [(jitter[0], jitter[1], 0.30 * r)]
        else:
            d = 0.38 * r
            nuclei = [(d * math.cos(t), d * math.sin(t), 0.21 * r), (-d * math.cos(t), -d * math.sin(t), 0.21 * r)]
        nuc = np.zeros((h, w), dtype=np.float32)
        for nx, ny, nr in nuclei:
            dn = np.hypot(xx - cx - nx, yy - cy - ny)
            nuc = np.maximum(nuc, np.clip(nr - dn + 0.5, 0, 1))
        body = body * (1 - 0.35 * cue_strength * nuc[..., None] * (1 - nucleus_rgb[None, None]))
        img = img * (1 - alpha) + body * alpha
    img += 2.0 * rng.standard_normal(img.shape, dtype=np.float32)
    attributes = {"cls": cls, "tone": tone, "n_cells": len(placed),
                  "fg_fraction": round(float((labels > 0).mean()), 5)}
    image = _to_uint8(img)
    return (image, labels, attributes) if return_attributes else (image, labels)


def _round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


def generate_labelflip_dataset(root: str | os.PathLike, n: int = 600, size: int = 128, seed: int = 0,
                               train_alignment: float = 0.95, test_shift: float = 0.25, cue_strength: float = 1.0,
                               fractions: Sequence[float] = (0.64, 0.16, 0.20), progress: bool = True) -> SampleTable:
    """Write (or reuse) the two-class correlation-shift phantom dataset at ``root``.

    Each sample's class is drawn per sample (seeded by id). In train and val exactly
    ``round(train_alignment * n_split)`` samples (half-up) have the *aligned* tone (class 1 dark, class 2
    light); the rest have the opposite tone. In test exactly ``round(test_shift * n_test)`` samples are
    *shifted* (anti-aligned tone), the rest aligned. Columns: ``cls``, ``tone``, ``aligned``, ``shifted``
    and ``failure`` (= shifted, the hidden attribute the slicer should find), ``n_cells``, ``fg_fraction``.
    Masks are multi-class label PNGs (0 background, 1 cell A, 2 cell B; ``mask_kind: multiclass``).
    """
    from .phantoms import _MIN_DATASET_SIDE

    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 3:
        raise ValueError(f"n must be an integer of at least 3, got {n!r}")
    if not isinstance(size, (int, np.integer)) or size < _MIN_DATASET_SIDE:
        raise ValueError(f"size must be an int of at least {_MIN_DATASET_SIDE} pixels, got {size!r}")
    for name, value in (("train_alignment", train_alignment), ("test_shift", test_shift)):
        if not 0 <= value <= 1:
            raise ValueError(f"{name} must lie in [0, 1], got {value}")
    n, size, seed = int(n), int(size), int(seed)
    ids = [f"twins_{i:05d}" for i in range(n)]
    splits = assign_splits(ids, fractions, seed)
    aligned: dict[str, bool] = {}
    for split in ("train", "val", "test"):
        members = sorted(i for i, s in zip(ids, splits) if s == split)
        share = (1 - test_shift) if split == "test" else train_alignment
        k = _round_half_up(share * len(members))
        order = rng_for(seed, "twins-align", split).permutation(len(members))
        for rank, pos in enumerate(order):
            aligned[members[pos]] = rank < k
    config = {"kind": "phantom", "modality": "twin_cells", "n": n, "size": size, "seed": seed,
              "fractions": [float(f) for f in fractions], "train_alignment": float(train_alignment),
              "test_shift": float(test_shift), "cue_strength": float(cue_strength),
              "generator_version": GENERATOR_VERSION}

    def build(writer) -> dict[str, Any]:
        from tqdm.auto import tqdm

        for sid, split in tqdm(list(zip(ids, splits)), desc="phantom twin_cells", unit="img", disable=not progress):
            cls = 1 + int(rng_for(seed, "twins-class", sid).integers(2))
            tone = _aligned_tone(cls) if aligned[sid] else ("light" if _aligned_tone(cls) == "dark" else "dark")
            image, labels, attrs = twin_cells(size, rng_for(seed, "twin_cells", sid), cls, tone, cue_strength,
                                              return_attributes=True)
            writer.add(sid, split, image, labels, source="phantom-twin_cells", **attrs, aligned=aligned[sid],
                       shifted=not aligned[sid], failure=not aligned[sid])
        return {}

    meta = {"kind": "phantom", "modality": "twin_cells", "generator_version": GENERATOR_VERSION, "image_mode": "RGB",
            "size": size, "seed": seed, "n_classes": 3, "class_names": {"0": "background",
                                                                         **{str(k): v for k, v in CLASS_NAMES.items()}}}
    return build_dataset(root, config, build, meta=meta, mask_kind="multiclass")


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


def _dice(a: np.ndarray, b: np.ndarray) -> float:
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
    dice_classes = float(np.mean([_dice(t == c, pred == c) for c in classes])) if classes else 1.0
    fg_pred = pred != background
    risk = flip_risk(p, 0, background)
    return {**counts, **rates, "no_flip": 1.0 - rates["flip_rate"],
            "dice_fg": _dice(t != background, fg_pred), "dice_classes": dice_classes,
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


# ---------------------------------------------------------------------------------------- training
def _load_pair(table: SampleTable, i: int, size: int, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    img, labels = table.image(i), table.mask(i)
    where = table.path(table.df["mask"].iat[i])
    if labels.dtype == bool:
        raise DatasetError(f"{where}: a binary mask in a multi-class run; the dataset must say "
                           "'\"mask_kind\": \"multiclass\"' in dataset.json (DatasetWriter(mask_kind='multiclass')).")
    if img.shape[:2] != labels.shape:
        raise DatasetError(f"{where}: mask is {labels.shape[1]}x{labels.shape[0]} but its image is "
                           f"{img.shape[1]}x{img.shape[0]}; they must have the same size.")
    if labels.max() >= n_classes:
        raise DatasetError(f"{where}: holds label {int(labels.max())} but n_classes={n_classes} (labels 0.."
                           f"{n_classes - 1}); pass the right n_classes or fix the mask.")
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    img = np.asarray(Image.fromarray(img).resize((size, size), Image.BILINEAR))
    lab = np.asarray(Image.fromarray(labels).resize((size, size), Image.NEAREST))  # labels never blend
    return img.transpose(2, 0, 1), lab.astype(np.int64)


def _load_arrays(table: SampleTable, size: int, n_classes: int, workers: int = 0) -> tuple[np.ndarray, np.ndarray]:
    workers = workers or os.cpu_count() or 1
    with ThreadPoolExecutor(max_workers=workers) as pool:
        pairs = list(pool.map(lambda i: _load_pair(table, i, size, n_classes), range(len(table))))
    return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


def _augment(x, y, cfg, gen, n_classes: int):
    """train.augment_batch on one-hot labels; pixels no class claims any more (rotated in from outside the
    image, or split evenly at a boundary) are ignored by the loss (-100)."""
    import torch
    import torch.nn.functional as F

    from .train import augment_batch

    onehot = F.one_hot(y, n_classes).permute(0, 3, 1, 2).float()
    x, onehot = augment_batch(x, onehot, cfg, gen)
    labels = onehot.argmax(dim=1)
    return x, torch.where(onehot.amax(dim=1) > 0.5, labels, torch.full_like(labels, -100))


def _build(cfg, n_classes: int):
    import segmentation_models_pytorch as smp
    import torch

    from .pretrained import load_encoder_weights

    torch.manual_seed(cfg.seed)
    model = smp.Unet(cfg.encoder, encoder_weights=None, in_channels=3, classes=n_classes,
                     decoder_channels=tuple(cfg.decoder_channels))
    return model, load_encoder_weights(model, cfg.encoder, cfg.encoder_weights)


def _run_root(table: SampleTable, cfg, runs_dir: Path, n_classes: int, name: str | None) -> tuple[Path, dict[str, Any]]:
    dataset = {"root": str(Path(table.root).resolve()), "config_hash": table.meta.get("config_hash"),
               "name": Path(table.root).name}
    # "task" and "n_classes" keep multi-class runs apart from binary runs of the same TrainConfig
    from .train import run_hash_payload

    digest = config_hash(run_hash_payload(cfg, dataset, task="multiclass", n_classes=n_classes))
    return Path(runs_dir) / dataset["name"] / f"{name or cfg.encoder}-mc{n_classes}-{digest[:10]}", dataset


def _evaluate(model, x_all, y_all, cfg, device, n_classes: int) -> tuple[float, float]:
    """Mean cross-entropy and mean per-image class Dice of a held-out split."""
    import torch

    from .train import _normalise

    model.eval()
    losses, dices = [], []
    loss_fn = torch.nn.CrossEntropyLoss(reduction="none")
    with torch.no_grad():
        for s in range(0, len(x_all), cfg.batch_size):
            x = _normalise(x_all[s:s + cfg.batch_size], device, cfg.encoder)
            y = y_all[s:s + cfg.batch_size].to(device)
            logits = model(x).float()
            losses.append(loss_fn(logits, y).mean(dim=(1, 2)).cpu())
            pred = logits.argmax(dim=1).cpu().numpy()
            truth = y.cpu().numpy()
            for t, p in zip(truth, pred):
                classes = [c for c in range(1, n_classes) if (t == c).any() or (p == c).any()]
                dices.append(np.mean([_dice(t == c, p == c) for c in classes]) if classes else 1.0)
    return float(torch.cat(losses).mean()), float(np.mean(dices))


def _n_classes(table: SampleTable, n_classes: int | None) -> int:
    if n_classes is None:
        n_classes = table.meta.get("n_classes")
        if n_classes is None:
            raise ValueError(f"{table.root}: dataset.json does not say n_classes; pass n_classes= (background + "
                             "foreground classes, e.g. 3 for two foreground classes)")
    if int(n_classes) < 3:
        raise ValueError(f"n_classes must be >= 3 (background + at least two foreground classes: label flips need "
                         f"two classes to flip between), got {n_classes}; use seg4seg_utils.train for binary masks")
    return int(n_classes)


def train_multiclass(table: SampleTable, cfg, runs_dir: str | os.PathLike = "runs", n_classes: int | None = None,
                     name: str | None = None, progress: bool = True):
    """Train (or reuse) a multi-class U-Net with cross-entropy; predict the test split with probabilities.

    ``cfg`` is a :class:`seg4seg_utils.train.TrainConfig` (``threshold`` is unused: the prediction is the
    argmax class). Same augmentation, normalisation, optimiser and model selection on validation (here the
    mean class Dice) as the binary trainer, deterministic for a seed on CPU. The run folder
    (``<runs>/<dataset>/<encoder>-mc<C>-<hash>/``) holds config.json, history.csv, best.pt, predictions/
    (uint8 label PNGs), probabilities/ (one ``<id>.npz`` per test image: float16 (C, H, W) softmax at the
    original size), metrics.csv (one row per image: :func:`image_summary` plus the sample attributes) and
    done.json. A finished run is reused; an interrupted one restarts from scratch (minutes on CPU).
    Returns a :class:`seg4seg_utils.train.Run` (load the network with :func:`load_multiclass_model`).
    """
    import torch

    from .train import Run, _normalise, _save_checkpoint, select_device, train_val_tables

    if table.mask_kind != "multiclass":
        raise DatasetError(f"{table.root}: masks are {table.mask_kind!r}, not 'multiclass'; train binary masks with "
                           "seg4seg_utils.train.train")
    n_classes = _n_classes(table, n_classes)
    cfg.validate()
    root, dataset = _run_root(table, cfg, Path(runs_dir), n_classes, name)
    run = Run(root, cfg, dataset)
    if run.done:
        return run
    train_t, val_t = train_val_tables(table, cfg)
    device = select_device(cfg.device)
    torch.manual_seed(cfg.seed)
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True, warn_only=True)
    with pinned(cfg.threads, device):  # thread count and kernels fixed: see seg4seg_utils.kernels
        model, init = _build(cfg, n_classes)
        model.to(device)
        optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
        loss_fn = torch.nn.CrossEntropyLoss(ignore_index=-100)
        if root.exists():
            shutil.rmtree(root)  # an unfinished earlier attempt of this very run (no done.json)
        root.mkdir(parents=True)
        (root / "config.json").write_text(json.dumps({"train": asdict(cfg), "task": "multiclass", "n_classes": n_classes,
                                                      "dataset": dataset, "initialisation": init, "device": str(device),
                                                      "kernels": kernel_report(cfg.threads)},
                                                     indent=2))
        if progress:
            print(f"[seg4seg] training multi-class ({n_classes} classes) {root} on {device}; encoder {cfg.encoder}: {init}")
        x_tr, y_tr = (torch.from_numpy(a) for a in _load_arrays(train_t, cfg.image_size, n_classes, cfg.num_workers))
        x_va, y_va = (torch.from_numpy(a) for a in _load_arrays(val_t, cfg.image_size, n_classes, cfg.num_workers))
        steps = len(x_tr) // cfg.batch_size + (len(x_tr) % cfg.batch_size > 1)
        n_seen = min(len(x_tr), steps * cfg.batch_size)
        history, best = [], -1.0
        for epoch in range(1, cfg.epochs + 1):
            model.train()
            t0 = time.perf_counter()
            gen = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
            order = torch.randperm(len(x_tr), generator=gen)
            total = 0.0
            for b in range(steps):
                idx = order[b * cfg.batch_size:(b + 1) * cfg.batch_size]
                x, y = _augment(_normalise(x_tr[idx], device, cfg.encoder), y_tr[idx].to(device), cfg, gen, n_classes)
                optimizer.zero_grad(set_to_none=True)
                loss = loss_fn(model(x).float(), y)
                loss.backward()
                optimizer.step()
                total += loss.item() * len(idx)
            val_loss, val_dice = _evaluate(model, x_va, y_va, cfg, device, n_classes)
            history.append({"epoch": epoch, "train_loss": total / n_seen, "val_loss": val_loss,
                            "val_dice_classes": val_dice, "seconds": time.perf_counter() - t0})
            if progress:
                print(f"  epoch {epoch}/{cfg.epochs}: train loss {total / n_seen:.4f}, val loss {val_loss:.4f}, "
                      f"val class Dice {val_dice:.4f} ({history[-1]['seconds']:.1f} s)")
            if val_dice > best:
                best = val_dice
                _save_checkpoint(root / "best.pt", {"model": model.state_dict(), "epoch": epoch, "val_dice": val_dice})
            pd.DataFrame(history).to_csv(root / "history.csv", index=False)
        state = torch.load(root / "best.pt", map_location=device, weights_only=False)
        model.load_state_dict(state["model"])
        metrics = _predict(model, table.split("test"), cfg, device, root, n_classes)
        metrics.to_csv(root / "metrics.csv", index=False)
        summary = {"best_epoch": int(state["epoch"]), "best_val_dice_classes": float(state["val_dice"]),
                   "test_dice_fg": float(metrics["dice_fg"].mean()),
                   "test_dice_classes": float(metrics["dice_classes"].mean()),
                   "test_flip_rate": float(metrics["flip_rate"].mean()), "n_classes": n_classes, "initialisation": init,
                   "device": str(device), "train_seconds": float(sum(h["seconds"] for h in history)), "n_train": len(x_tr)}
        (root / "done.json").write_text(json.dumps(summary, indent=2))
        return run


def _predict(model, table: SampleTable, cfg, device, root: Path, n_classes: int) -> pd.DataFrame:
    import torch
    import torch.nn.functional as F

    from .train import _normalise

    model.eval().to(device)
    for sub in ("predictions", "probabilities"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    x_all, _ = _load_arrays(table, cfg.image_size, n_classes, cfg.num_workers)
    rows = []
    with torch.no_grad():
        for s in range(0, len(table), cfg.batch_size):
            logits = model(_normalise(torch.from_numpy(x_all[s:s + cfg.batch_size]), device, cfg.encoder)).float()
            for k in range(logits.shape[0]):
                i = s + k
                truth = table.mask(i)
                full = F.interpolate(logits[k:k + 1], size=truth.shape, mode="bilinear", align_corners=False)
                proba = torch.softmax(full[0], dim=0).cpu().numpy()
                stored = proba.astype(np.float16)
                sid = str(table.df["id"].iat[i])
                np.savez_compressed(root / "probabilities" / f"{sid}.npz", proba=stored)
                # summaries from what is stored, so a later recomputation from disk gives the same numbers
                summary = image_summary(truth, stored.astype(np.float32))
                write_png(stored.astype(np.float32).argmax(axis=0).astype(np.uint8), root / "predictions" / f"{sid}.png")
                rows.append({"id": sid, **summary, "prediction": f"predictions/{sid}.png",
                             "probabilities": f"probabilities/{sid}.npz"})
    attrs = table.df.drop(columns=["split"])
    return attrs.merge(pd.DataFrame(rows), on="id", how="inner", validate="one_to_one")


def load_multiclass_model(run, which: str = "best"):
    """The trained multi-class network of ``run`` (eval mode, CPU)."""
    import torch

    saved = json.loads((Path(run.root) / "config.json").read_text())
    if saved.get("task") != "multiclass":
        raise ValueError(f"{run.root}: not a multi-class run (use Run.load_model for binary runs)")
    model, _ = _build(replace(run.config, encoder_weights=None), int(saved["n_classes"]))
    state = torch.load(Path(run.root) / f"{which}.pt", map_location="cpu", weights_only=False)
    model.load_state_dict(state["model"])
    return model.eval()


def load_probabilities(run, sample_id: str) -> np.ndarray:
    """float32 (C, H, W) test-split probabilities of one sample, as stored by :func:`train_multiclass`."""
    path = Path(run.root) / "probabilities" / f"{sample_id}.npz"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no stored probabilities for {sample_id!r}; is it in the test split of the "
                                "dataset this run was trained on, and did the run finish (done.json)?")
    with np.load(path) as z:
        return z["proba"].astype(np.float32)


def pixel_flips(run, table: SampleTable, ids: Sequence[str] | None = None) -> pd.DataFrame:
    """Every predicted-foreground test pixel: its image id, flip-risk and whether it is a flip (0/1).

    Flipped pixels are always predicted foreground, so this table holds every flip of the test split; it is
    what the pixel-level top-decile share ranks.
    """
    test = table.split("test")
    ids = list(test.df["id"].astype(str)) if ids is None else [str(i) for i in ids]
    pos = {sid: k for k, sid in enumerate(test.df["id"].astype(str))}
    parts = []
    for sid in ids:
        proba = load_probabilities(run, sid)
        truth = test.mask(pos[sid])
        pred = proba.argmax(axis=0)
        fg = pred != 0
        flipped = fg & (truth != 0) & (pred != truth)
        parts.append(pd.DataFrame({"id": sid, "risk": flip_risk(proba)[fg], "flipped": flipped[fg].astype(np.uint8)}))
    return pd.concat(parts, ignore_index=True)


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
    from .experiments import _reduced
    from .protocol import evaluate_slices
    from .slicer import SliceFinder

    attr = np.asarray(attribute, dtype=bool)
    if len(attr) != len(X) or len(metrics) != len(X):
        raise ValueError(f"X has {len(X)} rows, metrics {len(metrics)}, attribute {len(attr)}; one per image in all")
    rows, fitted = [], {}
    for seed in seeds:
        Z = _reduced(np.asarray(X, dtype=np.float64), reduce, 8, int(seed),
                     None if cache_dir is None else Path(cache_dir) / "reduced")
        for perf in performances:
            y = metrics[perf].to_numpy(dtype=np.float64)
            sf = SliceFinder(n_slices=n_slices, gamma=gamma, reduce=None, random_state=int(seed)).fit(Z, y)
            report = evaluate_slices(sf.labels_, y, attr, proba=sf.proba_, n_slices=n_slices)
            worst = int(report.table.loc[report.table["eligible"], "mean_perf"].idxmin())
            rows.append({"performance": perf, "slicer_seed": int(seed), "success": report.success,
                         "max_purity": report.max_purity, "omega2": report.omega2,
                         "precision_at_10": report.precision_at_k, "worst_slice": worst,
                         "worst_slice_size": int(report.table.at[worst, "size"]),
                         "worst_slice_purity": float(report.table.at[worst, "purity"])})
            fitted[(perf, int(seed))] = (sf, report)
    return pd.DataFrame(rows), fitted


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
