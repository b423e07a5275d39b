"""The twin-cells phantom: a multi-class dataset where a cell's class correlates with an easy context cue.

Two cell types of near-identical appearance whose class is given by a subtle intrinsic cue (one nucleus vs two)
while, in training, it also correlates with an easy context cue (a dark or light background). The test split holds
an exact share of *shifted* images whose tone is anti-correlated with their class, so a model that learned the cue
finds the right region but gives it the wrong class: a *label flip* (after Achara et al. 2026; measured by
:mod:`seg4seg_utils.model.label_flips`).
"""
from __future__ import annotations

import math
import os
from typing import Any, Sequence

import numpy as np

from seg4seg_utils.data.records import SampleTable, assign_splits, build_dataset
from seg4seg_utils.seeding import rng_for

__all__ = ["GENERATOR_VERSION", "CLASS_NAMES", "TONES", "twin_cells", "generate_labelflip_dataset"]



GENERATOR_VERSION = "twins-1"   # bump when twin_cells' pixels change: cached datasets are then rejected


CLASS_NAMES = {1: "cell A (one nucleus)", 2: "cell B (two nuclei)"}


TONES = ("dark", "light")


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
    from seg4seg_utils.data.drawing import canvas, fourier_series, smooth_noise, to_uint8

    if cls not in (1, 2):
        raise ValueError(f"cls must be 1 or 2 (the two foreground classes), got {cls!r}")
    if tone not in TONES:
        raise ValueError(f"tone must be one of {TONES}, got {tone!r}")
    if not 0 <= cue_strength <= 3:
        raise ValueError(f"cue_strength must lie in [0, 3] (1 = default contrast of the nuclei), got {cue_strength}")
    h, w, rng, s, _, yy, xx = canvas(size, rng)
    base = rng.uniform(55, 80) if tone == "dark" else rng.uniform(155, 180)
    tint = np.array([1.0, 0.97, 1.03], dtype=np.float32) * rng.uniform(0.97, 1.03, 3).astype(np.float32)
    bg = base * (1 + 0.08 * smooth_noise(rng, (h, w), 4)) + 3.0 * smooth_noise(rng, (h, w), s / 6)
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
        wobble = 1 + fourier_series(phi, (2, 3, 5), rng.normal(0, 0.05, 3), rng.uniform(0, 2 * math.pi, 3))
        rho = np.sqrt((u / r) ** 2 + (v / (r * aspect)) ** 2) / wobble
        inside = rho <= 1.0
        labels[inside] = cls
        alpha = np.clip((1.0 - rho) * r + 0.5, 0, 1)[..., None]  # anti-aliased edge
        body = fill[None, None] * (1 + 0.06 * smooth_noise(rng, (h, w), s / 5)[..., None])
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
    image = to_uint8(img)
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
    from seg4seg_utils.data.drawing import MIN_DATASET_SIDE

    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 3:
        raise ValueError(f"n must be an integer of at least 3, got {n!r}")
    if not isinstance(size, (int, np.integer)) or size < MIN_DATASET_SIDE:
        raise ValueError(f"size must be an int of at least {MIN_DATASET_SIDE} pixels, got {size!r}")
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
