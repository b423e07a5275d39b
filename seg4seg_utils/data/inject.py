"""The four injected failure cases (A-D) and exact prevalence control.

An injection reads a clean dataset and writes a new one beside it (the source is never modified):
every sample appears exactly once, either manipulated or not, and the failure attribute has the same
prevalence in train, val and test: exactly ``round(prevalence * n_split)`` samples per split (half-up).
Untouched files are referenced from the source dataset instead of being copied.

=====  ===========================  ==========================  =====================  ==================
case   manipulation                 applied to                  failure attribute       columns
=====  ===========================  ==========================  =====================  ==================
A      caliper marks drawn          the majority (1 - p)        no caliper (minority)   caliper
B      random half-size crop        the minority p              cropped                 cropped, crop_box
C      mask -> coarse polygon       the minority p              polygon style           annotation_style
D      darken x0.5 + blur sigma 2   the minority p              low quality             quality
E      thin vessels left out of     the minority p              thin vessels omitted    annotation
       the mask (images untouched)
F      lesion pigment faded to a    the minority p              amelanotic lesion       lesion_type
       pink, low-contrast lesion
=====  ===========================  ==========================  =====================  ==================

A-D are the paper's cases. E and F test failure types the paper lists but does not inject (issue 15): an
annotation *error* (E: omission, the taxonomy's ``label_noise_error``) and a rare *appearance* of the target
(F: amelanotic lesions, ``rare_appearance``). :data:`PAPER_CASES` and :data:`ALL_CASES` name the two sets.
Every injected dataset also gets a boolean ``failure`` column: True for samples with the failure attribute.
"""
from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage as ndi
from tqdm.auto import tqdm

from seg4seg_utils.data.records import SPLITS, DatasetError, DatasetWriter, SampleTable, build_dataset, read_dataset
from seg4seg_utils.seeding import rng_for

__all__ = [
    "CaliperStyle", "CropParams", "PolygonParams", "QualityParams", "OmissionParams", "AmelanoticParams", "Case",
    "CASES", "PAPER_CASES", "ALL_CASES", "get_case", "ellipse_from_mask", "draw_calipers", "crop_and_resize",
    "polygonize_mask", "degrade_quality", "omit_thin_structures", "fade_lesion",
    "select_failure_samples", "inject", "injected_name",
]

INJECT_VERSION = "1"  # bump when an injection's pixels change, so cached datasets are rebuilt


# ---------------------------------------------------------------------------------------- parameters
@dataclass(frozen=True)
class CaliperStyle:
    """How biometry marks look. Sizes are fractions of the image's shorter side (at least 1 px).

    Default: four '+' crosses at the ellipse's axis ends plus the clinical dotted trace along the head
    outline (a dot every 10 degrees). Measured on real HC18 (issue #2): crosses alone gave no Dice gap,
    crosses + dotted trace gave 0.980 vs 0.947 - the trace is what the model learns as a shortcut.
    """

    crosses: bool = True
    dotted_trace: bool = True
    dot_step_deg: float = 10.0
    cross_size: float = 0.025
    line_width: float = 0.005
    dot_radius: float = 0.006
    intensity: int = 255


@dataclass(frozen=True)
class CropParams:
    """Case B: a random crop of ``scale`` x the image size, resized back; crops without lesion are redrawn."""

    scale: float = 0.5
    max_tries: int = 100


@dataclass(frozen=True)
class PolygonParams:
    """Case C: a coarse polygon through ``n_vertices`` (min, max inclusive) boundary points."""

    n_vertices: tuple[int, int] = (6, 10)
    min_component_fraction: float = 0.002  # ignore specks smaller than this fraction of the image


@dataclass(frozen=True)
class QualityParams:
    """Case D: intensity x ``beta`` then a Gaussian blur of ``sigma`` pixels (paper: 0.5 and 2)."""

    beta: float = 0.5
    sigma: float = 2.0


@dataclass(frozen=True)
class OmissionParams:
    """Case E: the annotator leaves out every structure narrower than ``thin_width`` x the image's shorter side.

    The default, 0.0195, omits vessels under 5 px wide at 256 px: on the cpu-preset fundus phantoms that is
    34 % of the vessel area, and a prediction identical to the complete mask scores a Dice of 0.79 against the
    omitted one (mean of 20 phantoms). Thin vessels are what annotators of fundus images skip first. The
    fraction is of the image, so on real data prepared at another resolution choose it from the vessel widths.
    """

    thin_width: float = 0.0195
    min_fragment: float = 0.004  # kept pieces smaller than this fraction of the image are dropped too


@dataclass(frozen=True)
class AmelanoticParams:
    """Case F: the lesion keeps ``contrast`` of its colour difference to the surrounding skin, tinted pink.

    Amelanotic (unpigmented) lesions are a rare type, a few per cent of melanomas, that dermoscopy models
    miss for lack of examples: pink, close to the skin's colour, with an ill-defined border. ``ring``
    (fractions of the shorter side) is the band outside the lesion whose median colour stands for the skin;
    ``feather`` (pixels at 256 px) is how far outside the lesion the pink fades out. On the cpu-preset phantoms
    a lighter version (contrast 0.35, a stronger tint, a 2-px border) cost a model only 0.01-0.02 Dice: the
    tint alone outlined the lesion. These values make the border as faint as the colour.
    """

    contrast: float = 0.2
    tint: tuple[float, float, float] = (1.05, 0.94, 0.96)
    ring: tuple[float, float] = (0.02, 0.06)
    feather: float = 6.0


@dataclass(frozen=True)
class Case:
    """One benchmark case: which data it uses and what its failure attribute is called."""

    name: str
    title: str
    modality: str           # phantom generator that stands in for the real dataset
    real_dataset: str       # the paper's dataset (see data_prep)
    taxonomy_key: str
    attribute: str          # descriptive column written by the injection
    failure_value: Any      # value of ``attribute`` that marks the failure subgroup
    manipulate_failure: bool  # True: the failure subgroup is the manipulated one; False (case A): the rest is
    n_slices: int = 10      # the paper's slice count for this case
    params: Any = field(default=None)


CASES: dict[str, Case] = {
    "A": Case("A", "Calipers (sample-level shortcut)", "ultrasound", "hc18", "shortcut_sample",
              "caliper", False, manipulate_failure=False, params=CaliperStyle()),
    "B": Case("B", "Central cropping (pixel-level shortcut)", "dermoscopy", "isic2018", "shortcut_pixel",
              "cropped", True, manipulate_failure=True, n_slices=20, params=CropParams()),
    "C": Case("C", "Polygon annotation style (label noise)", "dermoscopy", "isic2018", "label_noise_style",
              "annotation_style", "polygon", manipulate_failure=True, params=PolygonParams()),
    "D": Case("D", "Low quality: dark + blurred (underrepresentation)", "fundus", "fives", "underrepresentation",
              "quality", "low", manipulate_failure=True, params=QualityParams()),
    "E": Case("E", "Thin vessels omitted (annotation error)", "fundus", "fives", "label_noise_error",
              "annotation", "thin_vessels_omitted", manipulate_failure=True, params=OmissionParams()),
    "F": Case("F", "Amelanotic lesions (rare appearance)", "dermoscopy", "isic2018", "rare_appearance",
              "lesion_type", "amelanotic", manipulate_failure=True, params=AmelanoticParams()),
}
#: the paper's four cases, and every case (the paper's and the failure types it did not inject)
PAPER_CASES = "ABCD"
ALL_CASES = "".join(CASES)


def get_case(name: str) -> Case:
    """The case called ``name`` (a letter of :data:`ALL_CASES`, case-insensitive)."""
    try:
        return CASES[name.upper()]
    except (KeyError, AttributeError):
        raise ValueError(f"unknown case {name!r}; choose one of {sorted(CASES)}") from None


# ------------------------------------------------------------------------------------- manipulations
def ellipse_from_mask(mask: np.ndarray) -> tuple[float, float, float, float, float]:
    """(cy, cx, semi-major, semi-minor, angle in radians) of the filled ellipse with the mask's second moments."""
    ys, xs = np.nonzero(mask)
    if len(ys) < 5:
        raise ValueError("mask has fewer than 5 foreground pixels; cannot derive caliper positions from it")
    cy, cx = ys.mean(), xs.mean()
    cov = np.cov(np.stack([xs - cx, ys - cy]))
    evals, evecs = np.linalg.eigh(cov)  # ascending
    # a uniform filled ellipse with semi-axis a has variance a^2/4 along that axis
    a, b = 2 * math.sqrt(max(evals[1], 1e-9)), 2 * math.sqrt(max(evals[0], 1e-9))
    angle = math.atan2(evecs[1, 1], evecs[0, 1])
    return float(cy), float(cx), a, b, angle


def draw_calipers(image: np.ndarray, mask: np.ndarray, style: CaliperStyle = CaliperStyle()) -> np.ndarray:
    """Draw clinical biometry marks derived from the ground-truth mask (the image is not modified in place)."""
    h, w = image.shape[:2]
    side = min(h, w)
    cy, cx, a, b, ang = ellipse_from_mask(mask)
    ca, sa = math.cos(ang), math.sin(ang)

    def on_ellipse(t: float) -> tuple[float, float]:
        return cx + a * math.cos(t) * ca - b * math.sin(t) * sa, cy + a * math.cos(t) * sa + b * math.sin(t) * ca

    pil = Image.fromarray(image)
    draw = ImageDraw.Draw(pil)
    fill = style.intensity if image.ndim == 2 else (style.intensity,) * 3
    if style.dotted_trace:
        r = max(0.6, style.dot_radius * side)
        for deg in np.arange(0.0, 360.0, style.dot_step_deg):
            x, y = on_ellipse(math.radians(deg))
            draw.ellipse([x - r, y - r, x + r, y + r], fill=fill)
    if style.crosses:
        arm = max(2.0, style.cross_size * side)
        lw = max(1, round(style.line_width * side))
        for t in (0.0, math.pi / 2, math.pi, 3 * math.pi / 2):
            x, y = on_ellipse(t)
            draw.line([x - arm, y, x + arm, y], fill=fill, width=lw)
            draw.line([x, y - arm, x, y + arm], fill=fill, width=lw)
    return np.asarray(pil)


def _resize(arr: np.ndarray, hw: tuple[int, int], resample: int) -> np.ndarray:
    return np.asarray(Image.fromarray(arr).resize((hw[1], hw[0]), resample=resample))


def crop_and_resize(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator,
                    params: CropParams = CropParams()) -> tuple[np.ndarray, np.ndarray, tuple[int, int, int, int]]:
    """Case B: crop a random window of ``scale`` x the size, resize back; redraw windows without lesion pixels.

    Returns (image, mask, (y0, x0, height, width) of the window). If ``max_tries`` random windows all
    miss the lesion (tiny lesions), the window is centred on a random lesion pixel instead.
    """
    h, w = mask.shape
    ch, cw = max(1, round(h * params.scale)), max(1, round(w * params.scale))
    y0 = x0 = 0
    for _ in range(params.max_tries):
        y0, x0 = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        if mask[y0:y0 + ch, x0:x0 + cw].any():
            break
    else:
        ys, xs = np.nonzero(mask)
        if len(ys):  # an empty mask has no lesion to keep: keep the last random window
            k = int(rng.integers(len(ys)))
            y0 = int(np.clip(ys[k] - ch // 2, 0, h - ch))
            x0 = int(np.clip(xs[k] - cw // 2, 0, w - cw))
    img_c = _resize(image[y0:y0 + ch, x0:x0 + cw], (h, w), Image.BILINEAR)
    # resize the mask smoothly and threshold at 0.5, which keeps boundaries from turning into staircases
    soft = _resize(mask[y0:y0 + ch, x0:x0 + cw].astype(np.uint8) * 255, (h, w), Image.BILINEAR)
    return img_c, soft >= 128, (y0, x0, ch, cw)


def _boundary_polygon(component: np.ndarray, n_vertices: int, rng: np.random.Generator) -> list[tuple[float, float]]:
    """``n_vertices`` points spaced evenly (random phase) along the component's outer contour, as (x, y)."""
    from skimage.measure import find_contours

    padded = np.pad(component.astype(np.float32), 1)
    contours = find_contours(padded, 0.5)
    contour = max(contours, key=len) - 1.0  # undo padding; (row, col)
    seg = np.linalg.norm(np.diff(contour, axis=0), axis=1)
    arclen = np.concatenate([[0.0], np.cumsum(seg)])
    total = arclen[-1]
    targets = (rng.uniform(0, 1) + np.arange(n_vertices)) / n_vertices * total
    idx = np.searchsorted(arclen, targets, side="left").clip(0, len(contour) - 1)
    return [(float(contour[i, 1]), float(contour[i, 0])) for i in idx]


def polygonize_mask(mask: np.ndarray, rng: np.random.Generator, params: PolygonParams = PolygonParams()) -> np.ndarray:
    """Case C: replace each region of a flood-fill-style mask by a coarse polygon through a few boundary points."""
    labels, n = ndi.label(mask)
    if n == 0:
        return mask.copy()
    sizes = ndi.sum_labels(mask, labels, index=np.arange(1, n + 1))
    min_size = max(3, params.min_component_fraction * mask.size)
    pil = Image.new("L", (mask.shape[1], mask.shape[0]), 0)
    draw = ImageDraw.Draw(pil)
    lo, hi = params.n_vertices
    for lab in np.flatnonzero(sizes >= min_size) + 1:
        comp = labels == lab
        pts = _boundary_polygon(comp, int(rng.integers(lo, hi + 1)), rng)
        draw.polygon(pts, fill=255, outline=255)
    out = np.asarray(pil) > 0
    return out if out.any() else mask.copy()  # never turn a real mask into an empty one


def degrade_quality(image: np.ndarray, params: QualityParams = QualityParams()) -> np.ndarray:
    """Case D: darken by ``beta`` and blur with a Gaussian of ``sigma`` pixels (channels are blurred separately)."""
    x = image.astype(np.float32) * params.beta
    sigma = (params.sigma, params.sigma, 0) if x.ndim == 3 else params.sigma
    x = ndi.gaussian_filter(x, sigma=sigma, mode="reflect")
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def omit_thin_structures(mask: np.ndarray, params: OmissionParams = OmissionParams()) -> np.ndarray:
    """Case E: the mask without its structures narrower than ``params.thin_width`` x the shorter side.

    A morphological opening with a disk of radius ``floor(thin_width * side / 2)`` keeps what the disk fits
    into; the kept structures get their own boundary back (the opening rounds their corners) by a one-pixel
    dilation intersected with the original. Pieces left smaller than ``min_fragment`` x the image area (a
    vessel whose width wavers round the threshold) are dropped as well: an annotator skips a thin branch
    whole, not in dashes. A radius of 0 (tiny images) leaves the mask unchanged.
    """
    radius = int(params.thin_width * min(mask.shape) / 2)
    if radius < 1 or not mask.any():
        return mask.copy()
    yy, xx = np.mgrid[-radius:radius + 1, -radius:radius + 1]
    kept = ndi.binary_opening(mask, structure=xx * xx + yy * yy <= radius * radius)
    kept = mask & ndi.binary_dilation(kept, structure=ndi.generate_binary_structure(2, 2))
    labels, n = ndi.label(kept, structure=ndi.generate_binary_structure(2, 2))
    if n:
        sizes = ndi.sum_labels(kept, labels, index=np.arange(1, n + 1))
        kept = np.isin(labels, np.flatnonzero(sizes >= params.min_fragment * mask.size) + 1)
    return kept


def fade_lesion(image: np.ndarray, mask: np.ndarray, params: AmelanoticParams = AmelanoticParams()) -> np.ndarray:
    """Case F: an amelanotic look: the lesion's colour moves towards the surrounding skin and turns pink.

    Inside the lesion each pixel becomes ``skin + contrast * (pixel - skin)``, times ``tint``, where ``skin`` is
    the median colour of a ring around the lesion (the whole non-lesion area when the ring is empty); outside
    it the same blend fades out linearly over ``feather`` pixels (at 256 px), so no pigmented rim is left. The
    mask is unchanged: the lesion is still there, only harder to see.
    """
    if not mask.any():
        return image.copy()
    side = min(mask.shape)
    outside = ndi.distance_transform_edt(~mask)  # distance to the lesion, 0 inside it
    ring = (outside > params.ring[0] * side) & (outside <= max(1.0, params.ring[1] * side))
    x = image.astype(np.float32)
    skin = np.median(x[ring if ring.any() else ~mask], axis=0)
    faded = (skin + params.contrast * (x - skin)) * np.asarray(params.tint, dtype=np.float32)
    weight = np.clip(1 - outside / max(params.feather * side / 256, 1e-6), 0, 1).astype(np.float32)
    weight = weight[..., None] if x.ndim == 3 else weight
    return np.clip(np.rint(x * (1 - weight) + faded * weight), 0, 255).astype(np.uint8)


# -------------------------------------------------------------------------------- prevalence control
def select_failure_samples(splits: np.ndarray | list[str], prevalence: float, seed: int, case: str) -> np.ndarray:
    """Boolean array: exactly ``floor(prevalence * n_split + 0.5)`` True per split, chosen by a seeded permutation."""
    if not 0.0 <= prevalence <= 1.0:
        raise ValueError(f"prevalence must lie in [0, 1], got {prevalence}")
    splits = np.asarray(splits, dtype=object)
    chosen = np.zeros(len(splits), dtype=bool)
    for split in SPLITS:
        where = np.flatnonzero(splits == split)
        k = int(math.floor(prevalence * len(where) + 0.5))
        if k:
            pick = rng_for(seed, "select", case, split).permutation(len(where))[:k]
            chosen[where[pick]] = True
    return chosen


# ---------------------------------------------------------------------------------------- injection
def injected_name(case: str, prevalence: float, seed: int) -> str:
    """Folder name of an injected dataset, e.g. ``A-p10-seed0``."""
    return f"{get_case(case).name}-p{round(prevalence * 100):02d}-seed{seed}"


def manipulate(case: Case, params: Any, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator
                ) -> tuple[np.ndarray | None, np.ndarray | None, dict[str, Any]]:
    """Apply one case's manipulation; ``None`` means that file is unchanged."""
    if case.name == "A":
        return draw_calipers(image, mask, params), None, {}
    if case.name == "B":
        img, msk, box = crop_and_resize(image, mask, rng, params)
        return img, msk, {"crop_box": " ".join(map(str, box))}
    if case.name == "C":
        return None, polygonize_mask(mask, rng, params), {}
    if case.name == "D":
        return degrade_quality(image, params), None, {}
    if case.name == "E":
        return None, omit_thin_structures(mask, params), {}
    if case.name == "F":
        return fade_lesion(image, mask, params), None, {}
    raise AssertionError(case.name)


def _attribute_value(case: Case, failure: bool) -> Any:
    if isinstance(case.failure_value, bool):
        return case.failure_value if failure else not case.failure_value
    healthy = {"annotation_style": "flood_fill", "quality": "good", "annotation": "complete",
               "lesion_type": "pigmented"}[case.attribute]
    return case.failure_value if failure else healthy


def inject(source: SampleTable | str | os.PathLike, case: str, prevalence: float, seed: int,
           out: str | os.PathLike, params: Any = None, progress: bool = True) -> SampleTable:
    """Write a copy of ``source`` with ``case``'s failure at ``prevalence`` (same in every split) to ``out``.

    Deterministic in (source, case, prevalence, seed, params); a dataset already at ``out`` made from the
    same inputs is reused, a different one is an error (never overwritten).
    """
    src = source if isinstance(source, SampleTable) else read_dataset(source, validate="files")
    spec = get_case(case)
    params = spec.params if params is None else params
    if type(params) is not type(spec.params):
        raise TypeError(f"case {spec.name} takes {type(spec.params).__name__} parameters, got {type(params).__name__}")
    if src.mask_kind != "binary":
        raise DatasetError(f"{src.root}: case {spec.name} needs binary masks, this dataset has {src.mask_kind} masks")
    config = {"case": spec.name, "prevalence": float(prevalence), "seed": int(seed), "params": asdict(params),
              "source_config_hash": src.meta.get("config_hash"), "version": INJECT_VERSION}
    failure = select_failure_samples(src.df["split"].to_numpy(), prevalence, seed, spec.name)
    changed = failure if spec.manipulate_failure else ~failure

    def build(writer: DatasetWriter) -> dict[str, Any]:
        rows = src.df.to_dict("records")
        for i, row in enumerate(tqdm(rows, desc=f"case {spec.name} p={prevalence:.0%}", disable=not progress,
                                     leave=False)):
            image_path, mask_path = src.path(row["image"]), src.path(row["mask"])
            new_img = new_mask = None
            extra: dict[str, Any] = {}
            if changed[i]:
                rng = rng_for(seed, "inject", spec.name, row["id"])
                new_img, new_mask, extra = manipulate(spec, params, src.image(i), src.mask(i), rng)
            attrs = {k: v for k, v in row.items() if k not in ("id", "split", "image", "mask", "source")}
            if spec.attribute in attrs:  # keep a pre-existing column of the same name (e.g. real styles)
                attrs[f"orig_{spec.attribute}"] = attrs.pop(spec.attribute)
            attrs[spec.attribute] = _attribute_value(spec, bool(failure[i]))
            if spec.name == "B":
                attrs.setdefault("crop_box", "")
                attrs.update(extra)
            attrs["failure"] = bool(failure[i])
            writer.add(row["id"], row["split"], new_img if new_img is not None else image_path,
                       new_mask if new_mask is not None else mask_path, row["source"], **attrs)
        counts = {s: int(failure[src.df["split"].to_numpy() == s].sum()) for s in SPLITS}
        return {"failure_counts": counts}

    meta = {"kind": "injected", "case": spec.name, "case_title": spec.title, "modality": src.meta.get("modality"),
            "failure_attribute": f"{spec.attribute} == {spec.failure_value!r}", "failure_column": "failure",
            "prevalence": float(prevalence), "seed": int(seed), "source_dataset": str(Path(src.root).resolve())}
    return build_dataset(out, config, build, meta=meta)
