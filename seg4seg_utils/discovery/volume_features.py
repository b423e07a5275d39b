"""3-D description and embedding: what :mod:`.descriptors` and :mod:`.embed` do for a 2-D image, for a volume.

Why a module of its own: a CT or MR volume is not a big 2-D image. Its intensities are in scanner units (CT in
Hounsfield units, MR in arbitrary units), not 0..1; its voxels are boxes of different sizes per axis (a 5 mm
slice under 0.7 mm pixels), so "one voxel" is not a length; its structures have volumes and surfaces, not areas
and outlines; and the 2-D embedders see 2-D pictures only. Every rule below says how a volume is reduced to
comparable numbers or to a few pictures, so that the 2-D slice discovery (embed, reduce, slice, name) can run
on volumes. Nothing here reads files or wires the audit: the caller passes arrays from
:mod:`seg4seg_utils.data.volumes` (``Volume.array``, ``Volume.spacing``; one channel, see
``embedding_channel``).

Descriptors (:func:`describe_volume`, :data:`VOLUME_DESCRIPTORS`): one case -> a flat dict of finite floats,
always the same keys in table order. Names shared with the 2-D table (brightness, contrast, sharpness, noise,
touches_border, n_components, centroid_offset, fp_fraction, boundary_error_fraction) keep its family and its
words, so a slice is named the same way in 2-D and 3-D; units and definitions are the 3-D ones below.

* Regions. Foreground = any non-zero label. The **reference region** is the ground-truth foreground; with an
  empty truth the predicted foreground stands in (what the model took for the target), and with both empty
  the image statistics use the central half of the volume along every axis. The **surroundings** are the
  voxels outside the reference region more than 2 and at most 6 voxels away from it (Euclidean distance in
  voxels: partial-volume and blur reach a few voxels whatever the spacing); with fewer than 20 such voxels
  (the region fills the volume) every other voxel of the crop below, and with fewer than 20 of those there
  are no surroundings.
* Image statistics are comparable across cases only in units that mean the same thing in every case, so none
  is normalised by the case's own intensity range (a per-volume 1st-99th percentile normalisation would make
  every case's median look alike):

  - ``brightness``: the median raw intensity of the reference region, in image units (HU for CT; for MR only
    comparable within one protocol or an intensity-normalised dataset);
  - ``noise``: the robust standard deviation (median absolute deviation x 1.4826) of the high-pass residual
    ``image - gaussian_filter(image, 1 voxel)`` in the surroundings (else the reference region), divided by the
    residual's gain for white noise (0.947), so white noise of sd s reads s; image units;
  - ``contrast``: the contrast-to-noise ratio ``|median(reference) - median(surroundings)| / robust sd of the
    surroundings``: dimensionless, so CT and MR cases compare; capped at 1000 (a noiseless synthetic step),
    0 without surroundings;
  - ``sharpness``: the mean gradient magnitude (``numpy.gradient`` with the spacing, of the image smoothed by
    1 voxel so noise does not read as edges) over the voxels on either side of the reference region's surface,
    divided by the step ``|median(reference) - median(surroundings)|``, floored at the surroundings' robust sd
    (an edge hidden in noise must not divide by ~0): the share of the step crossed per mm, 1/mm; 0 without
    surroundings or a surface.

  Scanner B of :mod:`seg4seg_utils.data.phantoms3d` (lower organ contrast, twice the noise, blur along the
  last axis) therefore has lower ``contrast`` and higher ``noise`` than scanner A.
* Acquisition: ``spacing_anisotropy`` = largest / smallest voxel size (1 = isotropic), ``voxel_volume_mm3``.
* Ground-truth shape (foreground = any non-zero label; values for an empty truth in brackets):
  ``volume_ml`` = voxel count x voxel volume / 1000 [0]; ``n_components`` = 26-connected components (the 3-D
  full connectivity, as the 2-D table's 8) [0]; ``touches_border`` = 1 when a foreground voxel lies on a face
  of the volume [0]; ``centroid_offset`` = distance in mm of the foreground centroid from the volume's centre /
  half the volume's diagonal in mm, at most 1 [0]; ``elongation`` = sqrt(largest / smallest eigenvalue) of the
  second moments in mm of the largest component, each voxel counted as a solid box (its own variance
  spacing^2 / 12 per axis is added, so a one-voxel-thin sheet stays finite), 1 for a sphere [1];
  ``surface_roughness`` = surface area / area of the sphere of the same volume, both from the
  :func:`skimage.measure.marching_cubes` mesh (level 0.5, spacing-aware, on the truth's box padded by one
  voxel so the mesh is closed): area by :func:`skimage.measure.mesh_surface_area`, volume by the divergence
  theorem over the mesh's triangles, so the isoperimetric inequality keeps it >= 1; 1 for a sphere, higher for
  ragged, elongated or fragmented surfaces (``elongation`` and ``n_components`` tell those apart) [1].
* Errors, as the 2-D table (a wrong label inside the foreground counts as an error): ``fp_fraction`` = FP /
  (FP + FN) voxels [0.5 with no error]; ``boundary_error_fraction`` = share of the wrong voxels in the 2 voxel
  layers on either side of a ground-truth label change (:func:`skimage.segmentation.find_boundaries`, thick,
  face connectivity, grown by one face step) [0.5 with no error, 0 when no label change lies near any error,
  e.g. an empty truth]; ``pred_volume_ratio`` = predicted / true foreground voxels, capped at 10 [10 when only
  the truth is empty, 1 when both are].
* Speed: everything but the border, centroid and central-region checks runs on the bounding box of truth |
  prediction plus 8 voxels (the surroundings' 6 and the smoothing's reach), so a case costs what its
  structure costs, not what its field of view costs (a 128^3 phantom: about 0.1-0.2 s).

Planes for a 2-D embedder (:func:`volume_planes`, :func:`planes_from_axes`):

* Where: planes perpendicular to ``axis`` at the ROI's voxel quantiles ``(k + 0.5) / n``, k = 0..n-1 along
  that axis (each plane is the median plane of an equal share of the ROI's voxels, so every plane cuts the ROI,
  even one in two pieces); an empty ROI falls back to the volume's evenly spread centre planes (the same rule
  as if the ROI were the whole volume; one plane = the central one). The ROI is the caller's choice: the
  ground truth (as the ``x0*M_GT`` variant looks at the target) or truth | prediction (where the errors are).
* Grey levels: one window per volume, its 1st-99th intensity percentiles (whole volume), mapped linearly to
  0..255 and clipped: robust to a few extreme voxels (metal, air), the same for every plane of a case, and
  defined for any scanner unit (a constant volume maps to 0).
* Geometry: the plane keeps the array's axis order (rows = the first remaining axis). With ``spacing`` and
  unequal in-plane voxel sizes, the plane is resampled (:func:`skimage.transform.resize`, order 1; masks
  order 0) to square pixels of the finer in-plane size, coarsened just enough that its longer side has no more
  pixels than the plane had (an embedder shrinks it to ~224 px anyway), so the anatomy keeps its true
  proportions.
* :func:`planes_from_axes`: the same planes along each array axis, returned axial, coronal, sagittal (array
  axes 2, 1, 0 of a canonical RAS+ volume), for comparing what each view shows.

:func:`embed_volume`: the embedder on a volume's planes, pooled to one vector: ``mean`` (what the planes have
in common; the default) or ``max`` (any plane's strongest feature). When the embedder returns unit vectors
(CLIP does) the pooled vector is scaled back to unit length, so volumes and 2-D images share one sphere.
:func:`plane_montage`: the planes through truth | prediction side by side as RGB, the ground-truth contour in
cyan just outside its labels and the prediction's in pink on its own border voxels, so a perfect prediction
shows both lines, adjacent.
"""
from __future__ import annotations

import math
from typing import Any, Protocol, Sequence

import numpy as np
import pandas as pd
from scipy import ndimage, stats
from skimage import measure, segmentation, transform

from seg4seg_utils.discovery.descriptors import DESCRIPTORS, error_descriptors

__all__ = ["VOLUME_DESCRIPTORS", "VOLUME_DESCRIPTOR_NAMES", "describe_volume", "intensity_window", "volume_planes",
           "central_plane_index", "planes_from_axes", "embed_volume", "plane_montage"]


def _shared(name: str, unit: str, explanation: str, new_name: str | None = None) -> tuple:
    """A 2-D table row's family and words (a slice is named alike in 2-D and 3-D) with the 3-D unit and rule."""
    row = DESCRIPTORS.loc[name]
    return (new_name or name, row["family"], row["higher"], row["lower"], bool(row["comparative"]), unit,
            explanation)


#: The 3-D descriptors, by family, with the words that name a slice whose mean is higher / lower than the rest's
#: (columns as :data:`seg4seg_utils.discovery.descriptors.DESCRIPTORS`; rules in the module docstring).
VOLUME_DESCRIPTORS: pd.DataFrame = pd.DataFrame.from_records([
    _shared("brightness", "image units (HU for CT)",
            "median raw intensity of the ground-truth foreground (else the prediction's, else the central volume)"),
    _shared("contrast", "ratio",
            "contrast-to-noise ratio |median foreground - median surroundings (2-6 voxels out)| / robust sd of the "
            "surroundings, capped at 1000; 0 without surroundings"),
    _shared("sharpness", "1/mm",
            "mean gradient magnitude of the 1-voxel-smoothed image across the foreground surface / the "
            "foreground-surroundings step (floored at the surroundings' robust sd); 0 without a surface"),
    _shared("noise", "image units",
            "robust sd (MAD x 1.4826) of the high-pass residual image - gaussian_filter(image, 1 voxel) in the "
            "surroundings, scaled so white noise of sd s reads s"),
    ("spacing_anisotropy", "image", "more anisotropic voxels (thicker slices)", "more isotropic voxels", True,
     ">= 1", "largest / smallest voxel size"),
    ("voxel_volume_mm3", "image", "coarser voxels", "finer voxels", True, "mm^3", "product of the voxel sizes"),
    ("volume_ml", "mask", "larger structures (by volume)", "smaller structures (by volume)", True, "ml",
     "ground-truth foreground voxels x voxel volume / 1000; 0 for an empty mask"),
    ("elongation", "mask", "more elongated structures", "rounder structures", True, ">= 1",
     "sqrt(largest / smallest principal second moment, mm) of the largest component, voxels as solid boxes; "
     "1 for an empty mask"),
    _shared("n_components", "count", "26-connected foreground components"),
    _shared("touches_border", "0 or 1", "1 when a foreground voxel lies on a face of the volume"),
    ("surface_roughness", "mask", "more ragged (less sphere-like) surfaces", "smoother (more sphere-like) surfaces",
     True, ">= 1", "marching-cubes surface area / area of the sphere of the mesh's volume; 1 for an empty mask"),
    _shared("centroid_offset", "0..1",
            "distance (mm) of the foreground centroid from the volume centre / half the diagonal; 0 for an "
            "empty mask"),
    _shared("fp_fraction", "0..1", "FP / (FP + FN) over foreground voxels; 0.5 when there is no error"),
    _shared("boundary_error_fraction", "0..1",
            "share of the wrong voxels in the 2 voxel layers on either side of a ground-truth label change; "
            "0.5 when there is no error"),
    _shared("pred_area_ratio", "ratio, 0..10",
            "predicted / true foreground volume, capped at 10 (10 when only the truth is empty, 1 when both are)",
            new_name="pred_volume_ratio"),
], columns=["name", "family", "higher", "lower", "comparative", "unit", "explanation"]).set_index("name")

VOLUME_DESCRIPTOR_NAMES: tuple[str, ...] = tuple(VOLUME_DESCRIPTORS.index)

_SHELL_VOX = (2.0, 6.0)      # surroundings: more than 2, at most 6 voxels outside the reference region
_MIN_REGION_VOXELS = 20      # fewer voxels than this give no stable median / MAD
_SMOOTH_VOX = 1.0            # Gaussian sigma of the smoothing (noise residual, edge gradient)
_MARGIN_VOX = 8              # crop margin: the surroundings' 6 voxels plus the smoothing's reach
_BOUNDARY_BAND_VOX = 2       # boundary errors: within this many voxel layers of a ground-truth label change
_MAX_VOLUME_RATIO = 10.0
_MAX_CONTRAST = 1000.0
_FULL = np.ones((3, 3, 3), dtype=bool)                  # 26-connectivity (components)
_CROSS = ndimage.generate_binary_structure(3, 1)        # face neighbours (boundary band growth)
_RESIDUAL_GAIN_CACHE: list[float] = []


# ----------------------------------------------------------------------------------------------- helpers
def _spacing(spacing: Sequence[float]) -> tuple[float, float, float]:
    s = tuple(float(v) for v in spacing)
    if len(s) != 3 or not all(math.isfinite(v) and v > 0 for v in s):
        raise ValueError(f"spacing must be three positive voxel sizes in mm, got {spacing}")
    return s  # type: ignore[return-value]


def _residual_gain() -> float:
    """The sd of ``x - gaussian_filter(x, 1)`` for unit white noise x: the norm of the filter (delta - kernel)."""
    if not _RESIDUAL_GAIN_CACHE:
        delta = np.zeros((11, 11, 11))  # the kernel (truncate 4 -> radius 4) fits with room to spare
        delta[5, 5, 5] = 1.0
        response = delta - ndimage.gaussian_filter(delta, _SMOOTH_VOX, mode="constant")
        _RESIDUAL_GAIN_CACHE.append(float(np.sqrt(np.sum(response ** 2))))
    return _RESIDUAL_GAIN_CACHE[0]


def _robust_sd(values: np.ndarray) -> float:
    """Median absolute deviation scaled to a normal sd: a few edge or organ voxels cannot inflate it."""
    return float(stats.median_abs_deviation(values, scale="normal")) if values.size else 0.0


def _box(mask: np.ndarray, margin: int) -> tuple[slice, ...] | None:
    """The bounding box of a boolean volume grown by ``margin`` voxels (clipped), None when it is empty."""
    found = ndimage.find_objects(mask.view(np.uint8) if mask.dtype == bool else mask.astype(np.uint8))
    if not found or found[0] is None:
        return None
    return tuple(slice(max(s.start - margin, 0), min(s.stop + margin, n)) for s, n in zip(found[0], mask.shape))


# ------------------------------------------------------------------------------------------- descriptors
def _image_stats(image: np.ndarray, reference: np.ndarray | None, spacing: tuple[float, float, float]
                 ) -> dict[str, float]:
    """brightness, contrast, sharpness, noise of a (cropped) float32 image around its reference region."""
    smooth = ndimage.gaussian_filter(image, _SMOOTH_VOX, mode="nearest")
    residual = image - smooth
    gain = _residual_gain()
    if reference is None or not reference.any():  # no structure at all: the central half of the volume
        return {"brightness": float(np.median(image)), "contrast": 0.0, "sharpness": 0.0,
                "noise": _robust_sd(residual.ravel()) / gain}
    distance = ndimage.distance_transform_edt(~reference)  # voxels to the reference region, 0 inside it
    surroundings = (distance > _SHELL_VOX[0]) & (distance <= _SHELL_VOX[1])
    if np.count_nonzero(surroundings) < _MIN_REGION_VOXELS:
        surroundings = ~reference  # the region nearly fills the crop: whatever else there is
    inside = image[reference]
    brightness = float(np.median(inside))
    if np.count_nonzero(surroundings) < _MIN_REGION_VOXELS:
        return {"brightness": brightness, "contrast": 0.0, "sharpness": 0.0,
                "noise": _robust_sd(residual[reference]) / gain}
    outside = image[surroundings]
    step = abs(brightness - float(np.median(outside)))
    spread = _robust_sd(outside)
    noise = _robust_sd(residual[surroundings]) / gain
    # a noiseless step (synthetic data) has spread 0: the ratio is capped rather than infinite
    contrast = min(step / spread, _MAX_CONTRAST) if spread > 0 else (_MAX_CONTRAST if step > 0 else 0.0)
    surface = segmentation.find_boundaries(reference, connectivity=1, mode="thick")  # both sides of the surface
    denominator = max(step, spread)
    if surface.any() and denominator > 0:
        gradients = np.gradient(smooth, *spacing)
        magnitude = np.sqrt(sum(g[surface].astype(np.float64) ** 2 for g in gradients))
        sharpness = float(magnitude.mean()) / denominator
    else:
        sharpness = 0.0
    return {"brightness": brightness, "contrast": float(contrast), "sharpness": sharpness, "noise": noise}


def _mesh_roughness(fg: np.ndarray, spacing: tuple[float, float, float]) -> float:
    """Surface area / area of the same-volume sphere of the marching-cubes mesh of a non-empty mask."""
    box = _box(fg, 0)
    padded = np.pad(fg[box], 1).astype(np.float32)  # closed mesh: background all round
    verts, faces, _, _ = measure.marching_cubes(padded, 0.5, spacing=spacing)
    area = measure.mesh_surface_area(verts, faces)
    # enclosed volume by the divergence theorem: the sum of the signed tetrahedra (origin, triangle) / 6;
    # scikit-image has no mesh-volume function
    a, b, c = verts[faces[:, 0]], verts[faces[:, 1]], verts[faces[:, 2]]
    volume = abs(float(np.einsum("ij,ij->", a, np.cross(b, c)))) / 6.0
    if volume <= 0 or area <= 0:
        return 1.0
    sphere_area = math.pi ** (1 / 3) * (6 * volume) ** (2 / 3)
    return max(1.0, float(area / sphere_area))  # >= 1 in exact arithmetic; rounding must not dip below


def _mask_stats(fg: np.ndarray, spacing: tuple[float, float, float]) -> dict[str, float]:
    """volume_ml, elongation, n_components, surface_roughness of a (cropped) non-empty foreground."""
    voxel_mm3 = float(np.prod(spacing))
    labels, n_components = ndimage.label(fg, structure=_FULL)
    largest = int(np.argmax(np.bincount(labels.ravel())[1:])) + 1
    coords = np.argwhere(labels == largest).astype(np.float64) * np.asarray(spacing)
    # second moments of the component as a solid: the voxel centres' covariance plus each box's own variance
    moments = (np.cov(coords, rowvar=False, bias=True) if len(coords) > 1 else np.zeros((3, 3))) \
        + np.diag(np.square(spacing) / 12.0)
    eigen = np.linalg.eigvalsh(moments)
    return {"volume_ml": float(np.count_nonzero(fg)) * voxel_mm3 / 1000.0,
            "elongation": float(math.sqrt(eigen[-1] / eigen[0])),
            "n_components": float(n_components), "surface_roughness": _mesh_roughness(fg, spacing)}


def _placement(truth_fg: np.ndarray, box: tuple[slice, ...], spacing: tuple[float, float, float]
               ) -> dict[str, float]:
    """touches_border and centroid_offset of the full-size ground-truth foreground (``box`` holds all of it)."""
    border = any(truth_fg.take(i, axis=a).any() for a in range(3) for i in (0, -1))  # the six faces only
    centroid = np.array(ndimage.center_of_mass(truth_fg[box])) + [s.start for s in box]
    shape = np.asarray(truth_fg.shape, dtype=float)
    half_diagonal = float(np.linalg.norm((shape - 1) * spacing)) / 2 or 1.0  # a one-voxel volume: its centre
    offset = float(np.linalg.norm((centroid - (shape - 1) / 2) * spacing)) / half_diagonal
    return {"touches_border": float(border), "centroid_offset": min(offset, 1.0)}


def _error_stats(truth: np.ndarray, prediction: np.ndarray) -> dict[str, float]:
    """fp_fraction, boundary_error_fraction, pred_volume_ratio of (cropped) label maps: the 2-D descriptors' own
    :func:`~seg4seg_utils.discovery.descriptors.error_descriptors`, which works in any dimension."""
    d = error_descriptors(truth, prediction, band=_BOUNDARY_BAND_VOX)
    return {"fp_fraction": d["fp_fraction"], "boundary_error_fraction": d["boundary_error_fraction"],
            "pred_volume_ratio": d["pred_size_ratio"]}


def describe_volume(image: np.ndarray, spacing: Sequence[float], truth: np.ndarray,
                    prediction: np.ndarray) -> dict[str, float]:
    """All :data:`VOLUME_DESCRIPTORS` of one case: a flat dict of finite floats, always the same keys, in order.

    ``image``: a 3-D single-channel volume in scanner units (finite); ``spacing``: voxel size in mm per array
    axis; ``truth`` and ``prediction``: 3-D label maps of the image's shape, 0 = background. Empty masks and
    perfect predictions are ordinary inputs; their values are in the module docstring and the table.
    """
    image, truth, prediction = np.asarray(image), np.asarray(truth), np.asarray(prediction)
    spacing = _spacing(spacing)
    if image.ndim != 3 or truth.shape != image.shape or prediction.shape != image.shape:
        raise ValueError(f"image {image.shape}, truth {truth.shape} and prediction {prediction.shape} must share one "
                         "3-D shape (one image channel; truth and prediction label maps)")
    truth_fg, pred_fg = truth > 0, prediction > 0
    box = _box(truth_fg | pred_fg, _MARGIN_VOX)
    values: dict[str, Any] = {"spacing_anisotropy": max(spacing) / min(spacing),
                              "voxel_volume_mm3": float(np.prod(spacing))}
    if box is None:  # nothing segmented by anyone: the central half of the volume describes the image
        centre = tuple(slice(n // 4, n - n // 4) for n in image.shape)
        values.update(_image_stats(image[centre].astype(np.float32), None, spacing))
    else:
        crop = image[box].astype(np.float32)
        # the truth names the target; without one, what the model took for it
        reference = truth_fg[box] if truth_fg[box].any() else pred_fg[box]
        values.update(_image_stats(crop, reference, spacing))
    if box is not None and truth_fg[box].any():
        values.update(_mask_stats(truth_fg[box], spacing))
        values.update(_placement(truth_fg, box, spacing))
    else:
        values.update({"volume_ml": 0.0, "elongation": 1.0, "n_components": 0.0, "surface_roughness": 1.0,
                       "touches_border": 0.0, "centroid_offset": 0.0})
    if box is None:
        values.update({"fp_fraction": 0.5, "boundary_error_fraction": 0.5, "pred_volume_ratio": 1.0})
    else:
        values.update(_error_stats(truth[box], prediction[box]))
    out = {name: float(values[name]) for name in VOLUME_DESCRIPTOR_NAMES}
    bad = [k for k, v in out.items() if not math.isfinite(v)]
    if bad:
        raise ValueError(f"non-finite descriptors {bad}: the image holds NaN or infinite voxels")
    return out


# ------------------------------------------------------------------------------------------------ planes
def intensity_window(image: np.ndarray) -> tuple[float, float]:
    """The volume's grey-level window: its 1st and 99th intensity percentiles (module docstring)."""
    lo, hi = np.percentile(np.asarray(image), [1.0, 99.0])
    return float(lo), float(hi)


def _to_uint8(plane: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    lo, hi = window
    if hi <= lo:  # a constant volume: nothing to show
        return np.zeros(plane.shape, dtype=np.uint8)
    scaled = np.clip((plane.astype(np.float32) - lo) / (hi - lo), 0.0, 1.0)
    return np.round(scaled * 255).astype(np.uint8)


def _plane_indices(roi: np.ndarray, n_planes: int, axis: int) -> list[int]:
    """The ``n_planes`` indices along ``axis``: the ROI's voxel quantiles, else evenly spread centre planes."""
    length = roi.shape[axis]
    counts = np.asarray(roi > 0).sum(axis=tuple(a for a in range(3) if a != axis), dtype=np.int64)
    total = int(counts.sum())
    shares = (np.arange(n_planes) + 0.5) / n_planes
    if total == 0:
        return [min(int(q * length), length - 1) for q in shares]
    # the first index where the cumulative count reaches the share: always a plane holding ROI voxels
    return [int(i) for i in np.searchsorted(np.cumsum(counts), shares * total, side="left")]


def central_plane_index(roi: np.ndarray, axis: int = 2) -> int:
    """The index along ``axis`` of the plane holding the ROI's median voxel: the plane ``volume_planes`` returns
    with one plane (the volume's central plane for an empty ROI)."""
    roi = np.asarray(roi)
    if roi.ndim != 3:
        raise ValueError(f"roi must be 3-D, got shape {roi.shape}")
    if axis not in (0, 1, 2):
        raise ValueError(f"axis must be 0, 1 or 2, got {axis}")
    return _plane_indices(roi, 1, axis)[0]


def _resampled(plane: np.ndarray, in_plane: tuple[float, float] | None, order: int) -> np.ndarray:
    """The plane with square pixels (module docstring): unchanged without spacing or when already square."""
    if in_plane is None or math.isclose(in_plane[0], in_plane[1], rel_tol=1e-3):
        return plane
    extents = (plane.shape[0] * in_plane[0], plane.shape[1] * in_plane[1])
    pixel = max(min(in_plane), max(extents) / max(plane.shape))
    shape = tuple(max(1, int(round(e / pixel))) for e in extents)
    if order == 0:  # labels: nearest neighbour, no smoothing, values kept
        return transform.resize(plane, shape, order=0, preserve_range=True, anti_aliasing=False).astype(plane.dtype)
    return transform.resize(plane.astype(np.float32), shape, order=order, preserve_range=True)


def _checked(image: np.ndarray, roi: np.ndarray, axis: int, spacing: Sequence[float] | None
             ) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float] | None]:
    image, roi = np.asarray(image), np.asarray(roi)
    if image.ndim != 3 or roi.shape != image.shape:
        raise ValueError(f"image {image.shape} and roi {roi.shape} must share one 3-D shape")
    if axis not in (0, 1, 2):
        raise ValueError(f"axis must be 0, 1 or 2, got {axis}")
    return image, roi > 0, None if spacing is None else _spacing(spacing)


def _planes(image: np.ndarray, roi: np.ndarray, n_planes: int, axis: int, spacing: tuple[float, float, float] | None,
            window: tuple[float, float]) -> list[np.ndarray]:
    in_plane = None if spacing is None else tuple(s for a, s in enumerate(spacing) if a != axis)
    return [_to_uint8(_resampled(np.take(image, i, axis=axis), in_plane, 1), window)  # type: ignore[arg-type]
            for i in _plane_indices(roi, n_planes, axis)]


def volume_planes(image: np.ndarray, roi: np.ndarray, n_planes: int = 3, axis: int = 2,
                  spacing: Sequence[float] | None = None) -> list[np.ndarray]:
    """The 2-D pictures a 2-D embedder sees of a volume: ``n_planes`` uint8 planes perpendicular to ``axis``.

    Planes at the ROI's voxel quantiles along ``axis`` (an empty ROI: evenly spread centre planes), grey levels
    by the volume's 1st-99th percentile window, resampled to square pixels when ``spacing`` makes the in-plane
    pixels oblong (rules in the module docstring).
    """
    if n_planes < 1:
        raise ValueError(f"n_planes must be at least 1, got {n_planes}")
    image, roi, spacing_ = _checked(image, roi, axis, spacing)
    return _planes(image, roi, n_planes, axis, spacing_, intensity_window(image))


def planes_from_axes(image: np.ndarray, roi: np.ndarray, per_axis: int = 1,
                     spacing: Sequence[float] | None = None) -> list[np.ndarray]:
    """``per_axis`` ROI planes along each axis: axial (axis 2), then coronal (1), then sagittal (0) planes.

    One window for all of them (the volume's), so the three views of a case have the same grey levels.
    """
    if per_axis < 1:
        raise ValueError(f"per_axis must be at least 1, got {per_axis}")
    image, roi, spacing_ = _checked(image, roi, 2, spacing)
    window = intensity_window(image)
    return [plane for axis in (2, 1, 0) for plane in _planes(image, roi, per_axis, axis, spacing_, window)]


# -------------------------------------------------------------------------------------------- embedding
class _Embeds(Protocol):
    def embed(self, images: Sequence[np.ndarray]) -> np.ndarray: ...


def embed_volume(embedder: _Embeds, planes: Sequence[np.ndarray], pool: str = "mean") -> np.ndarray:
    """One float32 vector per volume: ``embedder.embed(planes)`` pooled over the planes (``"mean"`` or ``"max"``).

    Unit-length plane embeddings (CLIP's) give a unit-length pooled vector (module docstring).
    """
    if pool not in ("mean", "max"):
        raise ValueError(f"pool must be 'mean' or 'max', got {pool!r}")
    planes = list(planes)
    if not planes:
        raise ValueError("embed_volume needs at least one plane (volume_planes gives them)")
    vectors = np.asarray(embedder.embed(planes), dtype=np.float64)
    if vectors.ndim != 2 or vectors.shape[0] != len(planes):
        raise ValueError(f"the embedder returned shape {vectors.shape} for {len(planes)} planes; expected (n, dim)")
    pooled = vectors.mean(axis=0) if pool == "mean" else vectors.max(axis=0)
    norms = np.linalg.norm(vectors, axis=1)
    if np.allclose(norms, 1.0, atol=1e-3) and np.linalg.norm(pooled) > 0:
        pooled = pooled / np.linalg.norm(pooled)
    return pooled.astype(np.float32)


_CYAN = np.array([0, 255, 255], dtype=np.uint8)
_PINK = np.array([255, 105, 180], dtype=np.uint8)


def plane_montage(image: np.ndarray, truth: np.ndarray, prediction: np.ndarray, n: int = 3, axis: int = 2,
                  spacing: Sequence[float] | None = None) -> np.ndarray:
    """``n`` planes through truth | prediction side by side: uint8 RGB of shape (H, W * n, 3), for galleries.

    Same planes, window and resampling as :func:`volume_planes` (ROI = truth | prediction); the ground-truth
    label contours in cyan just outside each label (``find_boundaries`` mode ``outer``), the prediction's in pink
    on its border voxels (mode ``inner``), so both lines show even where they agree.
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    truth, prediction = np.asarray(truth), np.asarray(prediction)
    if truth.shape != prediction.shape:
        raise ValueError(f"truth {truth.shape} and prediction {prediction.shape} must share one shape")
    image, roi, spacing_ = _checked(image, (truth > 0) | (prediction > 0), axis, spacing)
    window = intensity_window(image)
    in_plane = None if spacing_ is None else tuple(s for a, s in enumerate(spacing_) if a != axis)
    tiles = []
    for i in _plane_indices(roi, n, axis):
        grey = _to_uint8(_resampled(np.take(image, i, axis=axis), in_plane, 1), window)  # type: ignore[arg-type]
        tile = np.repeat(grey[..., None], 3, axis=2)
        for labels, colour, mode in ((truth, _CYAN, "outer"), (prediction, _PINK, "inner")):
            plane = _resampled(np.take(labels, i, axis=axis), in_plane, 0)  # type: ignore[arg-type]
            tile[segmentation.find_boundaries(plane, mode=mode)] = colour
        tiles.append(tile)
    return np.concatenate(tiles, axis=1)
