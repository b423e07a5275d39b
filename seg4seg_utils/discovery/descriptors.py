"""Label-free slice descriptors: measurable properties of each image, its mask and its errors that *name* a slice.

A discovered slice is only actionable when a person can say what it is. Embedding-space slices carry no words;
metadata (:mod:`.explain`) is often missing. This module needs neither: it measures a fixed set of interpretable
properties of every test image (how bright, sharp, noisy, colourful it is), of its ground-truth mask (how large,
where, how many pieces, how convex, elongated, ragged or polygonal) and of the model's errors on it (false
positives or negatives, at the boundary or in the region, over- or under-segmentation), and then says in which of
them a slice differs from the rest of the test set, with an effect size and a corrected test:

1. :func:`describe_image` - one image, its ground truth and its prediction -> a flat dict of finite floats, always
   the same keys (:data:`DESCRIPTORS` lists them, by family, with the words used to name a slice).
2. :func:`describe_images` - a stream of ``(id, image, truth, prediction)`` -> one row per image (streaming: only
   the current image is in memory; ~4-5 ms of CPU per 256 x 256 RGB image and mask).
3. :func:`contrast_slices` - every slice against the rest of the test set, every descriptor: Hedges' g, a
   two-sided Mann-Whitney U test with Holm's correction over the descriptors of the slice, the words.
4. :func:`describe_slice` / :func:`top_descriptor` - the significant differences as a sentence fragment
   ("darker, blurrier than the rest; masks touch the border more often") and the single strongest one.

Why these definitions (details in :func:`describe_image`): each descriptor must be cheap (10,000 images), finite
for every input (an empty mask or a perfect prediction is a normal test image, not an error), and monotone in
the property its words claim, so that "the slice is higher" can be read as the word in :data:`DESCRIPTORS`.

``noise`` is Donoho's median-absolute-deviation estimator on the finest diagonal wavelet band, the estimator
:func:`skimage.restoration.estimate_sigma` implements; we use the Haar wavelet written out in two lines because
``estimate_sigma`` needs PyWavelets, which is not a dependency of this package. ``saturation`` is the HSV
saturation ``(max - min) / max`` of :func:`skimage.color.rgb2hsv`, computed alone because ``rgb2hsv`` also
computes the hue and costs ~14 ms per 256 x 256 image, three times the whole descriptor budget.
"""
from __future__ import annotations

import math
from typing import Iterable, Sequence

import numpy as np
import pandas as pd
from scipy import ndimage, stats
from scipy.spatial import ConvexHull, QhullError
from skimage import measure, segmentation

__all__ = ["DESCRIPTORS", "DESCRIPTOR_NAMES", "SOFT_DESCRIPTORS", "NOTHING_SIGNIFICANT", "describe_image",
           "describe_images", "mask_descriptors", "MASK_DESCRIPTOR_NAMES", "error_descriptors", "polygonality",
           "contrast_slices", "describe_slice",
           "top_descriptor"]

#: The descriptors, by family, with the words that name a slice whose mean is higher / lower than the rest's.
#: ``comparative`` is True when the words read with "than the rest" after them ("darker than the rest");
#: the error words describe the errors themselves and do not.
DESCRIPTORS: pd.DataFrame = pd.DataFrame.from_records([
    # name, family, higher, lower, comparative, unit, explanation
    ("brightness", "image", "brighter", "darker", True, "0..1",
     "mean grey level"),
    ("contrast", "image", "higher contrast", "lower contrast", True, "0..1",
     "standard deviation of the grey level"),
    ("sharpness", "image", "sharper", "blurrier", True, "(0..1 grey units)^2",
     "variance of the Laplacian of the grey image; low = blurred"),
    ("noise", "image", "noisier", "less noisy", True, "0..1 grey units",
     "noise standard deviation, median absolute deviation of the finest diagonal Haar wavelet band / 0.6745"),
    ("saturation", "image", "more saturated colours", "less saturated colours", True, "0..1",
     "mean HSV saturation (max - min) / max; 0 for grey images"),
    ("mask_area", "mask", "larger masks", "smaller masks", True, "fraction of pixels",
     "ground-truth foreground area / image area"),
    ("centroid_offset", "mask", "masks further off-centre", "masks more centred", True, "0..1",
     "distance of the foreground centroid from the image centre / half the diagonal; 0 for an empty mask"),
    ("touches_border", "mask", "masks touch the border more often", "masks touch the border less often", True,
     "0 or 1", "1 when a foreground pixel lies on the image border"),
    ("n_components", "mask", "masks in more pieces", "masks in fewer pieces", True, "count",
     "8-connected foreground components"),
    ("solidity", "mask", "more solid (convex) masks", "less solid (more concave) masks", True, "0..1",
     "area / convex-hull area of the largest component; 1 for an empty mask"),
    ("eccentricity", "mask", "more elongated masks", "rounder masks", True, "0..1",
     "eccentricity of the ellipse with the largest component's second moments; 0 for an empty mask"),
    ("boundary_roughness", "mask", "more ragged mask boundaries", "smoother mask boundaries", True, ">= 1",
     "perimeter / convex-hull perimeter of the largest component; 1 = convex and smooth, 1 for an empty mask"),
    ("polygonality", "mask", "more polygonal (straight-edged) masks", "less polygonal masks", True, "0..1",
     "share of the largest component's outline that is straight while its turning stays in a few corners "
     "(see polygonality()); 0 for an empty or tiny mask"),
    ("fp_fraction", "error", "errors dominated by false positives", "errors dominated by false negatives", False,
     "0..1", "FP / (FP + FN) over foreground pixels; 0.5 when there is no error"),
    ("boundary_error_fraction", "error", "errors concentrated at the mask boundary",
     "errors away from the mask boundary (region errors)", False, "0..1",
     "share of the wrong pixels in the 2 pixel layers on either side of a ground-truth label change; "
     "0.5 when there is no error"),
    ("pred_area_ratio", "error", "over-segmented (predicted masks too large)",
     "under-segmented (predicted masks too small)", False, "ratio, 0..10",
     "predicted / true foreground area, capped at 10 (10 when only the truth is empty, 1 when both are)"),
], columns=["name", "family", "higher", "lower", "comparative", "unit", "explanation"]).set_index("name")

DESCRIPTOR_NAMES: tuple[str, ...] = tuple(DESCRIPTORS.index)
#: the shape descriptors of a mask alone (the "mask" family), what :func:`mask_descriptors` returns
MASK_DESCRIPTOR_NAMES: tuple[str, ...] = tuple(DESCRIPTORS.index[DESCRIPTORS["family"] == "mask"])

#: words for the scores only probability outputs allow (:data:`seg4seg_utils.model.metrics.SOFT_METRICS`): they
#: describe the prediction, like the error family, so they say how the model fails, never what the inputs share
SOFT_DESCRIPTORS: pd.DataFrame = pd.DataFrame.from_records([
    ("boundary_uncertainty", "error", "less confident along the predicted boundary",
     "more confident along the predicted boundary", False, "0..1",
     "mean of 1 - |2p - 1| within 2 px of the thresholded prediction's boundary"),
    ("mean_uncertainty", "error", "less confident predictions", "more confident predictions", False, "0..1",
     "mean of 1 - |2p - 1| over the image"),
], columns=["name", "family", "higher", "lower", "comparative", "unit", "explanation"]).set_index("name")
NOTHING_SIGNIFICANT = "no descriptor distinguishes it from the rest"

# boundary errors: wrong pixels within this many pixels (city-block) of a ground-truth label boundary
_BOUNDARY_BAND_PX = 2
_MAX_AREA_RATIO = 10.0
# polygonality: turning is measured between chords of n/_CHORD_FRACTION resampled points (at least
# _MIN_CHORD_PX), a point is "straight" when its turning is under _STRAIGHT_REL of the turning around it
# (averaged over n/_REFERENCE_FRACTION points, floored at half a circle's); outlines shorter than
# _MIN_OUTLINE_CHORDS chords are too small to have edges and score 0
_CHORD_FRACTION = 30
_MIN_CHORD_PX = 4
_STRAIGHT_REL = 0.4
_REFERENCE_FRACTION = 4
_MIN_OUTLINE_CHORDS = 8
# ITU-R BT.709 luma weights, as skimage.color.rgb2gray uses
_GREY_WEIGHTS = np.array([0.2125, 0.7154, 0.0721], dtype=np.float32)
# the median absolute deviation of a standard normal
_MAD_TO_SIGMA = 0.6745


# ------------------------------------------------------------------------------------------------ per image
def _as_unit_float(image: np.ndarray) -> np.ndarray:
    """The image in 0..1 float32 (uint8 / 255; other integers by their dtype's maximum; floats as given)."""
    if np.issubdtype(image.dtype, np.integer):
        return image.astype(np.float32) / np.float32(np.iinfo(image.dtype).max)
    return image.astype(np.float32, copy=False)


def _image_descriptors(image: np.ndarray) -> dict[str, float]:
    """brightness, contrast, sharpness, noise, saturation of a HxW or HxWxC image."""
    rgb = _as_unit_float(image)
    if rgb.ndim == 3 and rgb.shape[2] == 1:
        rgb = rgb[..., 0]
    if rgb.ndim == 3:
        rgb = rgb[..., :3]  # an alpha channel says nothing about the picture
        grey = rgb @ _GREY_WEIGHTS
        # HSV saturation as rgb2hsv defines it, 0 where the pixel is black (max = 0); channel by channel because
        # a reduction over the last axis (rgb.max(axis=2)) is ~50x slower than elementwise maxima
        channels = [rgb[..., k] for k in range(rgb.shape[2])]
        top, bottom = channels[0].copy(), channels[0].copy()
        for channel in channels[1:]:
            np.maximum(top, channel, out=top)
            np.minimum(bottom, channel, out=bottom)
        saturation = float(np.mean(np.divide(top - bottom, top, out=np.zeros_like(top), where=top > 0)))
    else:
        grey, saturation = rgb, 0.0
    # Haar finest diagonal band: (a - b - c + d) / 2 over 2x2 blocks has the noise's sigma for white noise, and
    # its median absolute value ignores the few large coefficients that edges make (Donoho & Johnstone 1994)
    h, w = (grey.shape[0] // 2) * 2, (grey.shape[1] // 2) * 2
    if h and w:
        g = grey[:h, :w]
        diagonal = (g[0::2, 0::2] - g[0::2, 1::2] - g[1::2, 0::2] + g[1::2, 1::2]) / 2
        noise = float(np.median(np.abs(diagonal))) / _MAD_TO_SIGMA
    else:
        noise = 0.0
    # float32 pixels, float64 sums: a flat image has contrast and sharpness exactly 0
    return {"brightness": float(grey.mean(dtype=np.float64)), "contrast": float(grey.std(dtype=np.float64)),
            "sharpness": float(ndimage.laplace(grey, mode="reflect").var(dtype=np.float64)), "noise": noise,
            "saturation": saturation}


def polygonality(mask: np.ndarray) -> float:
    """How straight-edged the outline of a binary mask is: high for a coarse polygon, low for curves and rags.

    The outline (:func:`skimage.measure.find_contours` at 0.5, the longest contour, resampled to 1 px steps, n
    points) is followed point by point. The *turning* at a point is the angle between the chord from L points
    back to it and the chord from it to L points ahead, L = max(4, n / 30) (chords long enough that raster
    steps do not read as bends). A point is **straight** when its turning is under 0.4 times the turning around
    it (the mean over the n / 4 points centred on it, floored at half of what a circle of the same perimeter
    turns in L points). Then::

        polygonality = share of straight points * min(1, 2 pi / total absolute turning)

    A polygon turns only at its corners, so its edges are straight next to the corners' turning; a circle or
    ellipse turns everywhere at a slowly changing rate, so no point turns much less than its neighbours (the
    local reference keeps an ellipse's flatter sides from counting); a ragged outline passes through zero
    turning often but turns back and forth far more than the 2 pi of a convex shape, and the second factor
    takes that away ("few corners"). On random 8-12-gons vs ellipses (aspect <= 1.6) vs ragged blobs this
    separates every polygon from every ellipse and blob once the equivalent radius is about 30 px or more
    (polygons ~0.3-0.45, ellipses < 0.1, blobs < 0.2); smaller outlines are dominated by raster steps, and an
    outline shorter than 8 chords scores 0. Simpler rules fail: the vertex count of
    :func:`skimage.measure.approximate_polygon` at a fixed tolerance is the same for a 10-gon and a circle of
    radius ~20 px, because a digitised circle *is* a polygon at that tolerance.
    """
    mask = np.asarray(mask) > 0
    if not mask.any():
        return 0.0
    return _outline_polygonality(_outline(mask))


def _outline(mask: np.ndarray) -> np.ndarray:
    """The outer outline of a non-empty binary mask: the longest 0.5 iso-contour, (m, 2) row/col, closed."""
    contours = measure.find_contours(np.pad(mask, 1).astype(np.float32), 0.5)
    return max(contours, key=len) - 1.0  # back to the unpadded coordinates


def _outline_polygonality(outline: np.ndarray) -> float:
    """:func:`polygonality` of a closed outline (see there)."""
    steps = np.hypot(*np.diff(outline, axis=0).T)
    arc = np.concatenate([[0.0], np.cumsum(steps)])
    n = int(round(arc[-1]))
    chord = max(_MIN_CHORD_PX, int(round(n / _CHORD_FRACTION)))
    if n < _MIN_OUTLINE_CHORDS * chord:
        return 0.0
    at = np.linspace(0.0, arc[-1], n, endpoint=False)  # the contour is closed: its last point is its first
    points = np.stack([np.interp(at, arc, outline[:, 0]), np.interp(at, arc, outline[:, 1])], axis=1)
    ahead = np.roll(points, -chord, axis=0) - points
    behind = points - np.roll(points, chord, axis=0)
    heading_change = np.arctan2(ahead[:, 0], ahead[:, 1]) - np.arctan2(behind[:, 0], behind[:, 1])
    turn = np.abs(np.angle(np.exp(1j * heading_change)))  # wrapped to [0, pi]
    circle_turn = 2 * np.pi * chord / n
    around = np.maximum(ndimage.uniform_filter1d(turn, max(3, n // _REFERENCE_FRACTION), mode="wrap"),
                        0.5 * circle_turn)
    straight = float(np.mean(turn < _STRAIGHT_REL * around))
    total_turning = float(turn.sum()) / chord  # each bend is seen by `chord` consecutive points
    return straight * min(1.0, 2 * np.pi / total_turning) if total_turning > 0 else 0.0


def _convex_image(component: np.ndarray, outline: np.ndarray) -> np.ndarray:
    """The filled convex hull of a component: ``regionprops``' ``image_convex``, ten times cheaper.

    The hull of the sub-pixel outline (a few hundred points, :class:`scipy.spatial.ConvexHull`), filled row by
    row: a convex polygon meets each pixel row in one span, so every pixel centre between the leftmost and
    rightmost edge crossing of its row is inside. The same pixels as :func:`skimage.draw.polygon` on the hull
    (which tests every pixel against every edge, ~2 ms on a 256 x 256 lesion, as does
    :func:`skimage.morphology.convex_hull_image`, which hulls every pixel's four corners) and, on 180 random
    shapes, the same as ``image_convex`` but for 7 pixels of one. The component is added so the hull always
    contains it.
    """
    try:
        vertices = outline[ConvexHull(outline).vertices]
    except QhullError:  # a degenerate (collinear) outline: the component is its own hull
        return component.copy()
    start, end = vertices, np.roll(vertices, -1, axis=0)
    rows = np.arange(component.shape[0], dtype=float)[:, None]
    height = end[:, 0] - start[:, 0]
    eps = 1e-6  # a pixel centre on the hull's edge is inside
    with np.errstate(divide="ignore", invalid="ignore"):
        t = (rows - start[:, 0]) / height  # where each edge crosses each row (rows x edges)
        crossing = start[:, 1] + t * (end[:, 1] - start[:, 1])
    meets = (height != 0) & (t >= -eps) & (t <= 1 + eps)
    on_flat = (height == 0) & (np.abs(rows - start[:, 0]) <= eps)  # a horizontal edge lying on the row
    left = np.minimum(np.where(meets, crossing, np.inf).min(axis=1),
                      np.where(on_flat, np.minimum(start[:, 1], end[:, 1]), np.inf).min(axis=1))
    right = np.maximum(np.where(meets, crossing, -np.inf).max(axis=1),
                       np.where(on_flat, np.maximum(start[:, 1], end[:, 1]), -np.inf).max(axis=1))
    cols = np.arange(component.shape[1])[None, :]
    return ((cols >= left[:, None] - eps) & (cols <= right[:, None] + eps)) | component


def mask_descriptors(truth: np.ndarray) -> dict[str, float]:
    """Shape descriptors of the ground-truth foreground (any non-zero label)."""
    fg = truth > 0
    h, w = fg.shape
    empty = {"mask_area": 0.0, "centroid_offset": 0.0, "touches_border": 0.0, "n_components": 0.0,
             # an empty mask is unremarkable in shape (a small smooth disc's values): it shows through
             # mask_area and n_components instead of reading as "smoother" or "more convex" than everything
             "solidity": 1.0, "eccentricity": 0.0, "boundary_roughness": 1.0, "polygonality": 0.0}
    area = int(fg.sum())
    if area == 0:
        return empty
    # centroid from the row and column profiles (a fifth of the cost of np.nonzero on a 256 x 256 mask)
    centre_row = float(np.arange(h) @ fg.sum(axis=1)) / area
    centre_col = float(fg.sum(axis=0) @ np.arange(w)) / area
    half_diagonal = math.hypot(h - 1, w - 1) / 2 or 1.0  # a 1x1 image has its only pixel at the centre
    offset = math.hypot(centre_row - (h - 1) / 2, centre_col - (w - 1) / 2) / half_diagonal
    border = bool(fg[0].any() or fg[-1].any() or fg[:, 0].any() or fg[:, -1].any())
    # 8-connected components (scipy's labelling: the same components as skimage.measure.label, 40 % cheaper)
    labels, n_components = ndimage.label(fg, structure=np.ones((3, 3), dtype=bool))
    largest = int(np.argmax(np.bincount(labels.ravel())[1:])) + 1
    # the shape properties of the largest component only, on its bounding box padded by a pixel (cheap on big
    # images, and the outline and perimeter see background all round)
    box = ndimage.find_objects(labels, max_label=largest)[largest - 1]
    component = np.pad(labels[box] == largest, 1)
    outline = _outline(component)
    convex = _convex_image(component, outline)
    eccentricity = measure.regionprops_table(component.astype(np.uint8), properties=("eccentricity",))["eccentricity"]
    # perimeter as regionprops defines it (4-connected boundary, weighted steps), of the component and its hull
    perimeter, convex_perimeter = measure.perimeter(component), measure.perimeter(convex)
    return {"mask_area": area / fg.size, "centroid_offset": float(min(offset, 1.0)),
            "touches_border": float(border), "n_components": float(n_components),
            "solidity": float(np.count_nonzero(component) / np.count_nonzero(convex)),
            "eccentricity": float(np.nan_to_num(eccentricity[0])),
            # a one- or two-pixel component has no measurable perimeter: call it smooth
            "boundary_roughness": float(perimeter / convex_perimeter) if perimeter > 0 and convex_perimeter > 0
            else 1.0,
            "polygonality": _outline_polygonality(outline)}


def error_descriptors(truth: np.ndarray, prediction: np.ndarray, band: int = _BOUNDARY_BAND_PX) -> dict[str, float]:
    """Error type of a 2-D or 3-D label map pair: ``fp_fraction`` (false positives / all wrong foreground
    decisions), ``boundary_error_fraction`` (share of the wrong pixels or voxels within ``band`` layers of a
    ground-truth label change) and ``pred_size_ratio`` (predicted / true foreground size, capped). One function for
    images and volumes (:mod:`.volume_features` calls it too), so the two cannot drift apart."""
    true_fg, pred_fg = truth > 0, prediction > 0
    fp = int(np.count_nonzero(pred_fg & ~true_fg))
    fn = int(np.count_nonzero(true_fg & ~pred_fg))
    wrong = truth != prediction  # a class confusion inside the foreground is an error too
    n_wrong = int(np.count_nonzero(wrong))
    if n_wrong == 0:
        boundary_fraction = 0.5  # no error: neither kind dominates
    else:
        # only the box around the wrong pixels matters: a boundary pixel within the band of a wrong pixel lies
        # within band + 1 of it (the +1: "thick" boundaries look one pixel to each side); cheap on big images
        idx = np.nonzero(wrong)
        pad = band + 2
        box = tuple(slice(max(int(i.min()) - pad, 0), int(i.max()) + pad + 1) for i in idx)
        boundary = segmentation.find_boundaries(truth[box], mode="thick")  # both sides of every label change
        if boundary.any():
            # the band layers on either side of a label change: the thick boundary (1 layer each side) dilated
            # by a city-block step per further layer
            cross = ndimage.generate_binary_structure(truth.ndim, 1)
            grown = ndimage.binary_dilation(boundary, cross, iterations=band - 1) if band > 1 else boundary
            boundary_fraction = float(np.count_nonzero(grown & wrong[box])) / n_wrong
        else:
            boundary_fraction = 0.0  # no label boundary near any error (e.g. an empty truth): region errors
    true_n, pred_n = int(np.count_nonzero(true_fg)), int(np.count_nonzero(pred_fg))
    if true_n == 0:
        ratio = 1.0 if pred_n == 0 else _MAX_AREA_RATIO
    else:
        ratio = min(pred_n / true_n, _MAX_AREA_RATIO)
    return {"fp_fraction": fp / (fp + fn) if fp + fn else 0.5, "boundary_error_fraction": boundary_fraction,
            "pred_size_ratio": float(ratio)}


def _error_descriptors(truth: np.ndarray, prediction: np.ndarray) -> dict[str, float]:
    """Error type of an image: :func:`error_descriptors` with the size ratio named as an area."""
    d = error_descriptors(truth, prediction)
    return {"fp_fraction": d["fp_fraction"], "boundary_error_fraction": d["boundary_error_fraction"],
            "pred_area_ratio": d["pred_size_ratio"]}


def describe_image(image: np.ndarray, truth: np.ndarray, prediction: np.ndarray) -> dict[str, float]:
    """All :data:`DESCRIPTORS` of one test image: a flat dict of finite floats, always the same keys, in order.

    ``image``: uint8 HxW or HxWx3 (HxWx4: alpha ignored; other integer types are scaled by their maximum,
    floats are taken as 0..1). ``truth`` and ``prediction``: HxW label maps, 0 = background; any non-zero label
    is foreground for the mask descriptors, and a wrong label counts as an error. Empty masks and perfect
    predictions are ordinary inputs: their values are given in :data:`DESCRIPTORS`' explanations.
    """
    image, truth, prediction = np.asarray(image), np.asarray(truth), np.asarray(prediction)
    if truth.ndim != 2 or truth.shape != prediction.shape or image.shape[:2] != truth.shape:
        raise ValueError(f"image {image.shape}, truth {truth.shape} and prediction {prediction.shape} must share "
                         "one HxW (truth and prediction 2-D label maps)")
    values = {**_image_descriptors(image), **mask_descriptors(truth), **_error_descriptors(truth, prediction)}
    return {name: float(values[name]) for name in DESCRIPTOR_NAMES}


def describe_images(samples: Iterable[tuple[str, np.ndarray, np.ndarray, np.ndarray]],
                    progress: bool = False) -> pd.DataFrame:
    """``(id, image, truth, prediction)`` tuples -> a table: column ``id``, then one column per descriptor.

    Streaming: each sample is described and dropped before the next is read, so a generator that loads images
    from disk keeps one image in memory. ``progress`` shows a tqdm bar.
    """
    rows: list[dict[str, object]] = []
    if progress:
        from tqdm.auto import tqdm  # only when asked: the bar is the one thing that needs it
        samples = tqdm(samples, desc="descriptors", unit="image")
    for sample_id, image, truth, prediction in samples:
        rows.append({"id": sample_id, **describe_image(image, truth, prediction)})
    return pd.DataFrame(rows, columns=["id", *DESCRIPTOR_NAMES])


# ------------------------------------------------------------------------------------------ slice contrasts
def _holm(p: np.ndarray) -> np.ndarray:
    """Holm's step-down adjusted p-values (NaN entries are left out of the family and stay NaN)."""
    adjusted = np.full(p.shape, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    if ok.size == 0:
        return adjusted
    order = ok[np.argsort(p[ok], kind="stable")]
    m = order.size
    stepped = np.maximum.accumulate((m - np.arange(m)) * p[order])
    adjusted[order] = np.minimum(stepped, 1.0)
    return adjusted


def _hedges_g(x: np.ndarray, y: np.ndarray) -> float:
    """Hedges' g of x vs y (pooled sd, small-sample correction J); 0 when equal, +-inf for constant groups."""
    n1, n2 = x.size, y.size
    dof = n1 + n2 - 2
    if n1 == 0 or n2 == 0 or dof <= 0:
        return float("nan")
    difference = float(x.mean() - y.mean())
    pooled = ((n1 - 1) * (x.var(ddof=1) if n1 > 1 else 0.0) + (n2 - 1) * (y.var(ddof=1) if n2 > 1 else 0.0)) / dof
    sd = math.sqrt(pooled)
    # equal means: no effect; both groups constant yet different: perfectly separated, an infinite effect
    scale = max(abs(float(x.mean())), abs(float(y.mean())), 1.0)
    if abs(difference) <= 1e-12 * scale:
        return 0.0
    if sd <= 1e-12 * scale:
        return math.copysign(math.inf, difference)
    correction = 1 - 3 / (4 * (n1 + n2) - 9) if n1 + n2 > 2 else 1.0
    return difference / sd * correction


def contrast_slices(descriptors: pd.DataFrame, labels: np.ndarray, columns: Sequence[str] | None = None,
                    alpha: float = 0.01, words: pd.DataFrame | None = None) -> pd.DataFrame:
    """Every slice against the rest of the images, descriptor by descriptor: a tidy long table.

    ``descriptors``: one row per image (as :func:`describe_images` gives); ``labels``: the slice of each row
    (ints, usually 0..K-1; every distinct value is a slice). ``columns``: the descriptors to test, default
    every :data:`DESCRIPTORS` name present (others are allowed, named "higher <column>" / "lower <column>").

    Per slice s and descriptor (non-finite values are left out):

    * ``effect`` - Hedges' g of the slice vs the rest (pooled sd, small-sample correction): 0 for a constant
      descriptor, +-inf when both groups are constant but differ (perfect separation);
    * ``p_value`` - two-sided Mann-Whitney U (rank-based: descriptors are skewed and bounded); 1 for a constant
      descriptor, NaN for a slice with fewer than 2 members (or a rest with fewer than 2);
    * ``p_adjusted`` - Holm's correction over the descriptors of that slice (each slice is its own question:
      "what names this slice?");
    * ``slice_mean``, ``rest_mean``, ``direction`` ("higher", "lower", or "equal"), ``family``, ``words``
      (the :data:`DESCRIPTORS` word for the direction, "" when equal);
    * ``significant`` - ``p_adjusted < alpha`` and ``|effect| >= 0.5`` (a medium effect: with thousands of
      images a tiny shift is "significant" but names nothing);
    * ``rank`` - 1 = largest ``|effect|`` among the slice's significant descriptors (ties: smaller p, then
      table order), NaN when not significant.

    * ``comparative`` - whether the words read with "than the rest" after them (from the words table).

    ``words`` is the table of families and words (default :data:`DESCRIPTORS`; e.g. with
    :data:`SOFT_DESCRIPTORS` appended for probability outputs, or a table of volume descriptors); ``columns``
    defaults to its names present in ``descriptors``. Rows are ordered by slice, then rank, then ``|effect|``.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.size != len(descriptors):
        raise ValueError(f"labels must be 1-D with one entry per row: {labels.shape} vs {len(descriptors)} rows")
    words = DESCRIPTORS if words is None else words
    if columns is None:
        columns = [name for name in words.index if name in descriptors.columns]
    missing = [c for c in columns if c not in descriptors.columns]
    if missing:
        raise KeyError(f"descriptor columns not in the table: {missing}")
    values = {c: pd.to_numeric(descriptors[c], errors="coerce").to_numpy(dtype=float) for c in columns}
    records: list[dict[str, object]] = []
    for s in np.unique(labels):
        member = labels == s
        slice_rows: list[dict[str, object]] = []
        for c in columns:
            v = values[c]
            finite = np.isfinite(v)
            x, y = v[member & finite], v[~member & finite]
            effect = _hedges_g(x, y)
            if x.size < 2 or y.size < 2:
                p = float("nan")
            elif np.ptp(np.concatenate([x, y])) == 0:
                p = 1.0  # constant: nothing to test (scipy would divide by a zero variance)
            else:
                p = float(stats.mannwhitneyu(x, y, alternative="two-sided").pvalue)
            slice_mean = float(x.mean()) if x.size else float("nan")
            rest_mean = float(y.mean()) if y.size else float("nan")
            direction = "higher" if effect > 0 else "lower" if effect < 0 else "equal"
            if c in words.index:
                family, comparative = str(words.at[c, "family"]), bool(words.at[c, "comparative"])
                text = str(words.at[c, direction]) if direction != "equal" else ""
            else:
                family, comparative, text = "other", False, f"{direction} {c}" if direction != "equal" else ""
            slice_rows.append({"slice": s.item(), "descriptor": c, "family": family, "effect": effect, "p_value": p,
                               "slice_mean": slice_mean, "rest_mean": rest_mean, "direction": direction,
                               "words": text, "comparative": comparative})
        adjusted = _holm(np.array([r["p_value"] for r in slice_rows], dtype=float))
        for r, q in zip(slice_rows, adjusted):
            r["p_adjusted"] = float(q)
            r["significant"] = bool(np.isfinite(q) and q < alpha and abs(r["effect"]) >= 0.5)
        order = sorted((i for i, r in enumerate(slice_rows) if r["significant"]),
                       key=lambda i: (-abs(slice_rows[i]["effect"]), slice_rows[i]["p_adjusted"], i))
        for r in slice_rows:
            r["rank"] = float("nan")
        for position, i in enumerate(order, start=1):
            slice_rows[i]["rank"] = float(position)
        records.extend(slice_rows)
    table = pd.DataFrame(records, columns=["slice", "descriptor", "family", "effect", "p_value", "p_adjusted",
                                           "slice_mean", "rest_mean", "direction", "words", "significant", "rank",
                                           "comparative"])
    if table.empty:
        return table
    table["_abs"] = table["effect"].abs()
    table = table.sort_values(["slice", "rank", "_abs"], ascending=[True, True, False], na_position="last",
                              kind="stable")
    return table.drop(columns="_abs").reset_index(drop=True)


def describe_slice(contrast: pd.DataFrame, slice_id: int, max_terms: int = 3) -> str:
    """The slice's top significant differences as a sentence fragment, grouped by family.

    E.g. ``"darker, blurrier than the rest; masks touch the border more often"``: the ``max_terms`` best-ranked
    significant descriptors of :func:`contrast_slices`, families in the order of their best term, terms joined
    by ", " and families by "; ". "than the rest" follows the first family whose words are all comparatives
    (once: the rest of the fragment reads as the same comparison). :data:`NOTHING_SIGNIFICANT` when nothing is
    significant.
    """
    rows = contrast[(contrast["slice"] == slice_id) & contrast["significant"].astype(bool)]
    rows = rows.sort_values("rank").head(max_terms)
    if rows.empty:
        return NOTHING_SIGNIFICANT
    groups: dict[str, list[str]] = {}
    comparative: dict[str, bool] = {}
    for _, r in rows.iterrows():
        groups.setdefault(r["family"], []).append(r["words"])
        if "comparative" in r.index and not pd.isna(r["comparative"]):
            is_comparative = bool(r["comparative"])
        else:  # a table made by hand: the standard words
            is_comparative = bool(DESCRIPTORS.at[r["descriptor"], "comparative"]) \
                if r["descriptor"] in DESCRIPTORS.index else False
        comparative[r["family"]] = comparative.get(r["family"], True) and is_comparative
    parts, said_than = [], False
    for family, words in groups.items():
        text = ", ".join(words)
        if comparative[family] and not said_than:
            text, said_than = f"{text} than the rest", True
        parts.append(text)
    return "; ".join(parts)


def top_descriptor(contrast: pd.DataFrame, slice_id: int, families: Sequence[str] | None = None) -> str | None:
    """The name of the slice's largest significant difference, None when nothing is significant.

    ``families`` restricts it, e.g. ``("image", "mask")`` for what the slice's *inputs* have in common (the
    cause a reader looks for), leaving out the ``error`` family, which says how the model fails there."""
    rows = contrast[(contrast["slice"] == slice_id) & contrast["significant"].astype(bool)]
    if families is not None:
        rows = rows[rows["family"].isin(list(families))]
    if rows.empty:
        return None
    return str(rows.loc[rows["effect"].abs().idxmax(), "descriptor"])
