"""Spacing-aware per-case metrics for 3-D segmentations: overlap (Dice, IoU, PPV, NPV), surface Dice and HD95.

Why a module of its own: in a volume, voxels are rarely cubes (CT slices are often 2.5-5 mm thick while in-plane
pixels are under 1 mm), so a boundary error of "one voxel" can mean 0.7 mm or 5 mm. Overlap scores do not care,
but boundary scores must be measured in millimetres, and they see failures overlap hides (a thin missed rim,
a stray blob far away). Overlap scores are :func:`seg4seg_utils.model.metrics.segmentation_metrics` on the
boolean volumes, so 2-D and 3-D audits share one definition and its empty-mask conventions.

Rules
    * Foreground classes: ``labels`` (e.g. dataset.json's non-zero values), else the non-zero values present in
      truth or prediction. Pass ``labels`` to get the same keys for every case: a class absent from both masks
      then scores as "both empty". ``dice``, ``iou``, ``ppv``, ``npv``, ``surface_dice``, ``hd95`` are computed
      on the union of the foreground classes (binary: the one class); with more than one class,
      ``dice_<label>``, ``surface_dice_<label>`` and ``hd95_<label>`` are added per class.
    * Surface: the mask voxels with a face neighbour outside the mask (the mask minus its erosion with the
      6-connected cross, ``scipy.ndimage.binary_erosion``; the volume's edge counts as outside), as in MONAI's
      ``get_mask_edges``. Distances: ``scipy.ndimage.distance_transform_edt(..., sampling=spacing)``, in mm,
      from each surface voxel of one mask to the nearest surface voxel of the other.
    * Surface Dice at ``tolerance_mm`` (normalised surface distance, Nikolov et al. 2021): the share of both
      surfaces' voxels that lie within the tolerance of the other surface, ``(#{d_PT <= tau} + #{d_TP <= tau}) /
      (|dP| + |dT|)``. Surface voxels are counted, not weighted by surfel area as in DeepMind's
      ``surface-distance`` package (as MONAI's ``compute_surface_dice`` does); for smooth shapes the two agree
      closely. A distance counts as within tolerance up to ``tolerance_mm + 1e-6`` (float sums of non-integer
      spacings, e.g. 0.7 mm, must not drop a voxel that is exactly at the tolerance).
    * HD95: the 95th percentile (numpy's linear interpolation) of the pooled distances of both directions
      (d_PT and d_TP together, as MedPy's ``hd95``), in mm. MONAI's variant takes the larger of the two
      directed 95th percentiles instead, so it can be a little higher.
    * Speed: distances are computed only inside the bounding box of both masks plus one voxel, which leaves
      them exact (every surface voxel lies in the box and a box is convex) and makes small structures cheap.

Empty masks (every value finite, so tables stay numeric; overlap scores as in :mod:`~seg4seg_utils.model.metrics`):

===============================  ======  ============  ==========================================
case (per class or union)         Dice    surface Dice   HD95
===============================  ======  ============  ==========================================
truth and prediction empty        1       1              0
one of them empty                 0       0              the volume's diagonal in mm (the worst case)
===============================  ======  ============  ==========================================

:func:`volume_metrics_table` reads the paired cases of a :mod:`seg4seg_utils.data.volumes` table, checks each
case's geometry and returns one row of these metrics per case.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
from scipy import ndimage

from seg4seg_utils.data.volumes import check_case, read_image_channels, read_label_volume
from seg4seg_utils.model.metrics import METRICS, segmentation_metrics

__all__ = ["VOLUME_METRICS", "volume_metrics", "surface_scores", "volume_metrics_table"]

VOLUME_METRICS: tuple[str, ...] = (*METRICS, "surface_dice", "hd95")
_SLACK_MM = 1e-6  # float rounding of distances summed from non-integer spacings


def _spacing(spacing: Sequence[float], ndim: int = 3) -> tuple[float, ...]:
    s = tuple(float(v) for v in spacing)
    if len(s) != ndim or not all(np.isfinite(v) and v > 0 for v in s):
        raise ValueError(f"spacing must be {ndim} positive voxel sizes in mm, got {spacing}")
    return s


def _diagonal(shape: Sequence[int], spacing: Sequence[float]) -> float:
    return float(np.sqrt(np.sum((np.asarray(shape, dtype=float) * np.asarray(spacing)) ** 2)))


def _surface(mask: np.ndarray) -> np.ndarray:
    # face (edge, in 2-D) neighbours: a surface voxel touches the outside by a face
    cross = ndimage.generate_binary_structure(mask.ndim, 1)
    return mask & ~ndimage.binary_erosion(mask, structure=cross, border_value=0)


def surface_scores(truth: np.ndarray, prediction: np.ndarray, spacing: Sequence[float],
                   tolerance_mm: float = 1.0) -> tuple[float, float]:
    """``(surface_dice, hd95)`` of two boolean 3-D masks, or 2-D ones with a 2-D ``spacing`` (pixel sizes; the
    surface is then the boundary pixels): rules and empty-mask values in the module docstring."""
    t, p = np.asarray(truth, dtype=bool), np.asarray(prediction, dtype=bool)
    if t.shape != p.shape or t.ndim not in (2, 3):
        raise ValueError(f"truth {t.shape} and prediction {p.shape} must be 2-D or 3-D masks of one shape")
    spacing = _spacing(spacing, t.ndim)
    has_t, has_p = bool(t.any()), bool(p.any())
    if not has_t and not has_p:
        return 1.0, 0.0
    if not has_t or not has_p:
        return 0.0, _diagonal(t.shape, spacing)
    box = ndimage.find_objects((t | p).view(np.uint8))[0]
    # one voxel of margin keeps the erosion at the box's edge identical to the erosion in the whole volume
    box = tuple(slice(max(b.start - 1, 0), min(b.stop + 1, n)) for b, n in zip(box, t.shape))
    st, sp = _surface(t[box]), _surface(p[box])
    to_truth = ndimage.distance_transform_edt(~st, sampling=spacing)[sp]  # each predicted surface voxel -> truth
    to_pred = ndimage.distance_transform_edt(~sp, sampling=spacing)[st]
    limit = tolerance_mm + _SLACK_MM
    within = int(np.count_nonzero(to_truth <= limit)) + int(np.count_nonzero(to_pred <= limit))
    distances = np.concatenate([to_truth, to_pred])
    return within / distances.size, float(np.percentile(distances, 95))


def _classes(arr: np.ndarray) -> set[int]:
    """Non-zero values of a label map (bincount: far cheaper than np.unique on millions of voxels)."""
    if arr.dtype == bool:
        return {1} if arr.any() else set()
    if arr.dtype.kind not in "iu" or (arr.size and arr.min() < 0):
        raise TypeError(f"label maps must hold non-negative integers (got {arr.dtype}); threshold probabilities first")
    return {int(v) for v in np.flatnonzero(np.bincount(arr.ravel(), minlength=1)) if v}


def volume_metrics(truth: np.ndarray, prediction: np.ndarray, spacing: Sequence[float], tolerance_mm: float = 1.0,
                   labels: Sequence[int] | None = None) -> dict[str, float]:
    """Dice, IoU, PPV, NPV, surface Dice at ``tolerance_mm`` and HD95 (mm) of one 3-D case.

    ``truth``, ``prediction``: label maps (integers or booleans) of one shape; ``spacing``: voxel size in mm per
    array axis; ``labels``: the foreground classes (None: those present). Keys and empty-mask values are in
    the module docstring; every value is a finite float.
    """
    t, p = np.asarray(truth), np.asarray(prediction)
    if t.shape != p.shape or t.ndim != 3:
        raise ValueError(f"truth {t.shape} and prediction {p.shape} must be 3-D label maps of one shape")
    if tolerance_mm < 0:
        raise ValueError(f"tolerance_mm must be >= 0, got {tolerance_mm}")
    spacing = _spacing(spacing)
    if t.dtype == bool:
        t = t.view(np.uint8)
    if p.dtype == bool:
        p = p.view(np.uint8)
    classes = sorted(int(c) for c in labels) if labels is not None else sorted(_classes(t) | _classes(p))
    if any(c <= 0 for c in classes):
        raise ValueError(f"labels are the foreground classes (> 0), got {classes}")
    if labels is None:  # every non-zero value is foreground
        fg_t, fg_p = t > 0, p > 0
    else:
        fg_t, fg_p = np.isin(t, classes), np.isin(p, classes)
    overlap = segmentation_metrics(fg_p[None], fg_t[None])
    out = {k: float(overlap[k][0]) for k in METRICS}
    out["surface_dice"], out["hd95"] = surface_scores(fg_t, fg_p, spacing, tolerance_mm)
    if len(classes) > 1:
        for c in classes:
            ct, cp = t == c, p == c
            out[f"dice_{c}"] = float(segmentation_metrics(cp[None], ct[None])["dice"][0])
            out[f"surface_dice_{c}"], out[f"hd95_{c}"] = surface_scores(ct, cp, spacing, tolerance_mm)
    return out


def volume_metrics_table(pairs: pd.DataFrame, labels: Sequence[int] | None = None, tolerance_mm: float = 1.0,
                         atol: float = 1e-3) -> pd.DataFrame:
    """One row of :func:`volume_metrics` per case of a paired table (``id, images, mask, prediction``).

    Each case's image, ground truth and prediction are read (:mod:`seg4seg_utils.data.volumes`), checked to
    share one grid (:func:`~seg4seg_utils.data.volumes.check_case`), and the label maps' values checked against
    ``{0} | labels`` when ``labels`` (the foreground classes) is given. Columns: ``id`` then the metrics.
    """
    allowed = None if labels is None else {0, *(int(c) for c in labels)}
    rows = []
    for case in pairs.itertuples(index=False):
        image = read_image_channels(case.images, atol=atol)
        truth = read_label_volume(case.mask, allowed, what="ground truth")
        prediction = read_label_volume(case.prediction, allowed, what="prediction")
        check_case(case.id, image, truth, prediction, atol=atol)
        rows.append({"id": case.id, **volume_metrics(truth.array, prediction.array, image.spacing, tolerance_mm,
                                                       labels)})
    return pd.DataFrame(rows, columns=None if rows else ["id", *VOLUME_METRICS])
