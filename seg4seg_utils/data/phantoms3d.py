"""A 3-D phantom (an organ with an optional lesion, from two scanners) and an nnU-Net v2 test set made of it.

Why: the 3-D input layer (:mod:`seg4seg_utils.data.volumes`) and spacing-aware metrics
(:mod:`seg4seg_utils.model.volume_metrics`) need volumes whose truth is exact and whose failure slice is known,
small enough for tests and demos to build in milliseconds, without downloading a CT dataset.

The volume (:func:`phantom_volume`), all in coordinates normalised to [-1, 1] per axis:

* organ (label 1): an ellipsoid, semi-axes 0.45-0.65 / 0.35-0.5 / 0.3-0.45, centre within 0.1 of the middle,
  turned by up to 30 degrees about the last axis;
* lesion (label 2, present with probability 0.5): a sphere of radius 0.1-0.16 lying wholly inside the organ,
  darker than the organ (hypodense, as a liver metastasis in CT);
* intensities: background 0.2, organ 0.6, lesion 0.4, times a gentle linear bias field (+-8 %), plus
  Gaussian noise. Scanner ``"A"`` is the reference: that contrast, noise sd 0.05, isotropic sharpness.
  Scanner ``"B"`` has lower contrast (organ 0.45, lesion 0.38), noise sd 0.1 and an anisotropic blur
  (Gaussian sigma 0.6 / 0.6 / 2.0 voxels: thick-slice-like smearing along the last axis).

Attributes: ``scanner``, ``has_lesion``, ``organ_volume`` and ``lesion_volume`` (voxel counts of labels 1 and 2;
the lesion's voxels are not in the organ's count), ``lesion_radius`` (voxels, 0 without a lesion). Every value is a
pure function of the ``np.random.Generator``, so a fixed seed reproduces a case exactly.

The test set (:func:`write_nnunet_phantoms`): ``n`` cases ``case_000``..., exactly ``round(prevalence_b * n)``
of them from scanner B (which ones: drawn from the seed), written as nnU-Net v2 raw data
(``imagesTs/{case}_0000.nii.gz`` float32, ``labelsTs/{case}.nii.gz`` uint8, ``dataset.json`` with labels
background/organ/lesion), plus ``predictions/{case}.nii.gz`` from a simulated model and ``metadata.csv``
(``id, scanner, has_lesion, organ_volume_ml``) that holds the hidden answer, for evaluation only. The affine is
``diag(spacing)``, so the stored orientation is already canonical (RAS+). The simulated model:

* scanner A: the truth with small boundary noise (each structure's mask smoothed with a Gaussian of sigma 1
  voxel, Gaussian noise of sd 0.15 clipped to +-0.3 added, thresholded at 0.5), so only voxels within about a
  voxel of an edge can flip, never a stray voxel far away; union Dice about 0.95;
* scanner B: the failure slice: the organ under-segmented (eroded by ``max(2, size // 16)`` voxels, using the
  distance transform) and the lesion missed (predicted as organ where it survives the erosion).
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Sequence

import nibabel as nib
import numpy as np
import pandas as pd
from scipy import ndimage

from seg4seg_utils.seeding import rng_for

__all__ = ["SCANNERS", "LABELS", "phantom_volume", "simulated_prediction", "write_nnunet_phantoms"]

# scanner -> (organ, lesion) intensity, noise sd, blur sigma per axis (voxels; None: none)
SCANNERS: dict[str, dict[str, Any]] = {
    "A": {"organ": 0.6, "lesion": 0.4, "noise": 0.05, "blur": None},
    "B": {"organ": 0.45, "lesion": 0.38, "noise": 0.10, "blur": (0.6, 0.6, 2.0)},
}
LABELS: dict[str, int] = {"background": 0, "organ": 1, "lesion": 2}
_BACKGROUND = 0.2
_LESION_PROBABILITY = 0.5


def _axes(size: int) -> list[np.ndarray]:
    """Normalised coordinates per axis, shaped to broadcast: cheap, never a full (size,)*3 grid per axis."""
    c = np.linspace(-1.0, 1.0, size, dtype=np.float32)
    return [c.reshape(-1, 1, 1), c.reshape(1, -1, 1), c.reshape(1, 1, -1)]


def phantom_volume(size: int, rng: np.random.Generator,
                   scanner: str = "A") -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """One case: float32 image and uint8 labels of shape ``(size,)*3``, and its attributes (module docstring)."""
    if scanner not in SCANNERS:
        raise ValueError(f"scanner must be one of {sorted(SCANNERS)}, got {scanner!r}")
    if size < 8:
        raise ValueError(f"size must be at least 8 voxels, got {size}")
    profile = SCANNERS[scanner]
    x, y, z = _axes(size)
    centre = rng.uniform(-0.1, 0.1, 3)
    semi = np.array([rng.uniform(0.45, 0.65), rng.uniform(0.35, 0.5), rng.uniform(0.3, 0.45)])
    angle = rng.uniform(-math.pi / 6, math.pi / 6)
    ca, sa = np.float32(math.cos(angle)), np.float32(math.sin(angle))
    dx, dy, dz = x - np.float32(centre[0]), y - np.float32(centre[1]), z - np.float32(centre[2])
    u, v = ca * dx + sa * dy, -sa * dx + ca * dy  # (size, size, 1): the rotation costs a 2-D plane only
    organ = ((u / semi[0]) ** 2 + (v / semi[1]) ** 2) + (dz / semi[2]) ** 2 <= 1.0
    labels = organ.astype(np.uint8)
    has_lesion = bool(rng.random() < _LESION_PROBABILITY)
    radius = float(rng.uniform(0.1, 0.16))
    offset = rng.uniform(-1, 1, 3)
    if has_lesion:
        # a point of the organ's inner ellipsoid shrunk by the radius, so the sphere lies inside the organ
        offset *= min(1.0, 0.6 / max(float(np.linalg.norm(offset)), 1e-9))
        local = offset * np.maximum(semi - radius, 0.05)
        lx = centre[0] + math.cos(angle) * local[0] - math.sin(angle) * local[1]
        ly = centre[1] + math.sin(angle) * local[0] + math.cos(angle) * local[1]
        lz = centre[2] + local[2]
        lesion = ((x - np.float32(lx)) ** 2 + (y - np.float32(ly)) ** 2) + (z - np.float32(lz)) ** 2 <= radius ** 2
        labels[lesion & organ] = 2
    values = np.array([_BACKGROUND, profile["organ"], profile["lesion"]], dtype=np.float32)
    image = values[labels]
    gradient = rng.uniform(-0.08, 0.08, 3).astype(np.float32)
    image *= 1 + (gradient[0] * x + gradient[1] * y) + gradient[2] * z  # a scanner's gentle bias field
    if profile["blur"] is not None:
        image = ndimage.gaussian_filter(image, sigma=profile["blur"], mode="nearest")
    image += rng.standard_normal(image.shape, dtype=np.float32) * np.float32(profile["noise"])
    counts = np.bincount(labels.ravel(), minlength=3)
    attributes = {"scanner": scanner, "has_lesion": bool(counts[2] > 0), "organ_volume": int(counts[1]),
                  "lesion_volume": int(counts[2]), "lesion_radius": radius * (size - 1) / 2 if counts[2] else 0.0}
    return image.astype(np.float32, copy=False), labels, attributes


def simulated_prediction(labels: np.ndarray, scanner: str, rng: np.random.Generator) -> np.ndarray:
    """A simulated model's uint8 label map: near-perfect on scanner A, failing on B (module docstring)."""
    if scanner == "A":
        out = np.zeros_like(labels)
        for c in (1, 2):  # organ includes the lesion, then the lesion on top: nested structures stay nested
            soft = ndimage.gaussian_filter((labels >= c).astype(np.float32), sigma=1.0)
            noise = rng.standard_normal(labels.shape, dtype=np.float32) * np.float32(0.15)
            soft += np.clip(noise, -0.3, 0.3)  # clipped: far from an edge (soft 0 or 1) nothing can flip
            out[soft >= 0.5] = c
        return out
    depth = max(2, labels.shape[0] // 16)
    inside = ndimage.distance_transform_edt(labels > 0)  # the lesion is inside the organ: erode both as one
    return (inside > depth).astype(np.uint8)  # everything left is "organ": the lesion is missed


def _save(array: np.ndarray, affine: np.ndarray, path: Path) -> None:
    img = nib.Nifti1Image(array, affine)
    img.set_qform(affine, code=1)  # both forms set (scanner coordinates): ITK, SimpleITK and nibabel agree
    img.set_sform(affine, code=1)
    nib.save(img, path)


def write_nnunet_phantoms(root: str | os.PathLike, n: int, size: int = 48, seed: int = 0, prevalence_b: float = 0.2,
                          spacing: Sequence[float] = (1.0, 1.0, 1.0)) -> pd.DataFrame:
    """Write ``n`` phantom cases as an nnU-Net v2 test set with simulated predictions; returns metadata.csv's table.

    Layout under ``root``: ``imagesTs/``, ``labelsTs/``, ``predictions/``, ``dataset.json``, ``metadata.csv``
    (rules in the module docstring). Deterministic for a seed; existing files of the same names are replaced.
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    if not 0 <= prevalence_b <= 1:
        raise ValueError(f"prevalence_b must lie in [0, 1], got {prevalence_b}")
    spacing = tuple(float(s) for s in spacing)
    if len(spacing) != 3 or not all(s > 0 for s in spacing):
        raise ValueError(f"spacing must be three positive voxel sizes in mm, got {spacing}")
    root = Path(root)
    folders = {k: root / k for k in ("imagesTs", "labelsTs", "predictions")}
    for f in folders.values():
        f.mkdir(parents=True, exist_ok=True)
    affine = np.diag([*spacing, 1.0])
    n_b = int(round(prevalence_b * n))
    scanners = np.array(["A"] * n)
    scanners[rng_for(seed, "scanners").permutation(n)[:n_b]] = "B"
    voxel_ml = float(np.prod(spacing)) / 1000.0
    rows = []
    for i, scanner in enumerate(scanners):
        case = f"case_{i:03d}"
        image, labels, attributes = phantom_volume(size, rng_for(seed, "volume", case), str(scanner))
        prediction = simulated_prediction(labels, str(scanner), rng_for(seed, "model", case))
        _save(image, affine, folders["imagesTs"] / f"{case}_0000.nii.gz")
        _save(labels, affine, folders["labelsTs"] / f"{case}.nii.gz")
        _save(prediction, affine, folders["predictions"] / f"{case}.nii.gz")
        rows.append({"id": case, "scanner": str(scanner), "has_lesion": attributes["has_lesion"],
                     "organ_volume_ml": round(attributes["organ_volume"] * voxel_ml, 3)})
    dataset = {"name": "seg4seg 3-D phantom", "description": "Synthetic organ/lesion volumes from two scanners; "
               "scanner B is the simulated model's failure slice (the answer, per case, is for evaluation only).",
               "channel_names": {"0": "phantom"}, "labels": LABELS, "numTraining": 0, "file_ending": ".nii.gz"}
    (root / "dataset.json").write_text(json.dumps(dataset, indent=2) + "\n")
    table = pd.DataFrame(rows, columns=["id", "scanner", "has_lesion", "organ_volume_ml"])
    table.to_csv(root / "metadata.csv", index=False)
    return table
