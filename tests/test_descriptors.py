"""Label-free slice descriptors: each descriptor moves the way its words say, and slices are named honestly.

Synthetic images throughout: a property is changed on purpose (darkened, blurred, noised, a polygonal or a
ragged mask, a shifted prediction) and the descriptor must move in the direction its words in DESCRIPTORS claim.
The slice contrast must find a darkened slice by brightness, and find nothing in a random split.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage
from skimage import color, draw, measure

from seg4seg_utils.discovery.descriptors import (DESCRIPTOR_NAMES, DESCRIPTORS, NOTHING_SIGNIFICANT, contrast_slices,
                                                 describe_image, describe_images, describe_slice, polygonality,
                                                 top_descriptor)

N = 64


# ------------------------------------------------------------------------------------------------- builders
def textured(rng: np.random.Generator, n: int = N, mean: float = 130.0, rgb: bool = True) -> np.ndarray:
    """A uint8 image with sharp-edged blocks and mild texture around grey level ``mean``."""
    blocks = np.kron(rng.integers(0, 2, (n // 8, n // 8)), np.ones((8, 8)))[:n, :n]
    grey = mean + 40 * (blocks - 0.5) + 8 * ndimage.gaussian_filter(rng.normal(size=(n, n)), 1.0)
    grey = np.clip(grey, 0, 255)
    if not rgb:
        return grey.astype(np.uint8)
    return np.clip(np.stack([grey, grey * 0.85, grey * 0.7], axis=-1), 0, 255).astype(np.uint8)


def ellipse_mask(n: int = N, centre: tuple[float, float] | None = None, radii: tuple[float, float] = (14, 20),
                 rotation: float = 0.3) -> np.ndarray:
    m = np.zeros((n, n), np.uint8)
    r, c = centre if centre is not None else (n / 2, n / 2)
    rr, cc = draw.ellipse(r, c, radii[0], radii[1], (n, n), rotation=rotation)
    m[rr, cc] = 1
    return m


def polygon_mask(rng: np.random.Generator, n: int = 128, radius: float = 45, vertices: int = 8) -> np.ndarray:
    """A coarse, roughly regular polygon (jittered angles and radii), like a click-around annotation."""
    angles = np.linspace(0, 2 * np.pi, vertices, endpoint=False) + rng.uniform(-0.2, 0.2, vertices) + rng.uniform(0, 6)
    radii = radius * rng.uniform(0.8, 1.0, vertices)
    m = np.zeros((n, n), np.uint8)
    rr, cc = draw.polygon(n / 2 + radii * np.sin(angles), n / 2 + radii * np.cos(angles), (n, n))
    m[rr, cc] = 1
    return m


def ragged_mask(rng: np.random.Generator, n: int = 128, radius: float = 45, amplitude: float = 0.1,
                bumps: int = 25) -> np.ndarray:
    """An ellipse whose radius carries smooth random noise: a ragged, flood-fill-like outline."""
    t = np.linspace(0, 2 * np.pi, 720, endpoint=False)
    noise = ndimage.gaussian_filter1d(rng.normal(size=t.size), t.size / bumps / 3, mode="wrap")
    r = radius * (1 + amplitude * noise / noise.std())
    m = np.zeros((n, n), np.uint8)
    rr, cc = draw.polygon(n / 2 + 0.8 * r * np.sin(t), n / 2 + r * np.cos(t), (n, n))
    m[rr, cc] = 1
    return m


def jagged_mask(rng: np.random.Generator, n: int = 128) -> np.ndarray:
    """An ellipse whose boundary pixels were flipped at random three times: a pixel-level ragged outline."""
    m = ellipse_mask(n, radii=(35, 45)).astype(bool)
    for _ in range(3):
        edge = ndimage.binary_dilation(m) ^ ndimage.binary_erosion(m)
        m ^= edge & (rng.random(m.shape) < 0.5)
    labels, _ = ndimage.label(ndimage.binary_fill_holes(m))
    return (labels == np.argmax(np.bincount(labels.ravel())[1:]) + 1).astype(np.uint8)


def describe(image=None, truth=None, prediction=None) -> dict[str, float]:
    """describe_image with harmless defaults for the parts a test does not look at."""
    truth = ellipse_mask() if truth is None else truth
    image = textured(np.random.default_rng(0), truth.shape[0]) if image is None else image
    return describe_image(image, truth, truth.copy() if prediction is None else prediction)


# ------------------------------------------------------------------------------------------ the table itself
def test_descriptor_table_names_families_and_words():
    assert tuple(DESCRIPTORS.index) == DESCRIPTOR_NAMES
    assert DESCRIPTOR_NAMES == ("brightness", "contrast", "sharpness", "noise", "saturation", "mask_area",
                                "centroid_offset", "touches_border", "n_components", "solidity", "eccentricity",
                                "boundary_roughness", "polygonality", "fp_fraction", "boundary_error_fraction",
                                "pred_area_ratio")
    assert set(DESCRIPTORS["family"]) == {"image", "mask", "error"}
    assert {"family", "higher", "lower", "unit", "explanation"} <= set(DESCRIPTORS.columns)
    assert (DESCRIPTORS["higher"] != DESCRIPTORS["lower"]).all()
    assert DESCRIPTORS.loc["brightness", ["higher", "lower"]].tolist() == ["brighter", "darker"]
    assert DESCRIPTORS.loc["sharpness", ["higher", "lower"]].tolist() == ["sharper", "blurrier"]
    assert DESCRIPTORS.loc["noise", "lower"] == "less noisy"
    assert DESCRIPTORS.loc["polygonality", "higher"] == "more polygonal (straight-edged) masks"
    assert DESCRIPTORS.loc["fp_fraction", ["higher", "lower"]].tolist() == [
        "errors dominated by false positives", "errors dominated by false negatives"]


CASES = {
    "rgb": lambda: (textured(np.random.default_rng(1)), ellipse_mask(), np.roll(ellipse_mask(), 2, axis=0)),
    "grey 2-D": lambda: (textured(np.random.default_rng(1), rgb=False), ellipse_mask(), ellipse_mask()),
    "rgba": lambda: (np.dstack([textured(np.random.default_rng(1)), np.full((N, N), 255, np.uint8)]),
                     ellipse_mask(), np.zeros((N, N), np.uint8)),
    "both empty": lambda: (textured(np.random.default_rng(1)), np.zeros((N, N), np.uint8), np.zeros((N, N), np.uint8)),
    "empty truth": lambda: (textured(np.random.default_rng(1)), np.zeros((N, N), np.uint8), ellipse_mask()),
    "empty prediction": lambda: (textured(np.random.default_rng(1)), ellipse_mask(), np.zeros((N, N), np.uint8)),
    "full mask": lambda: (textured(np.random.default_rng(1)), np.ones((N, N), np.uint8), ellipse_mask()),
    "one pixel": lambda: (np.zeros((N, N), np.uint8), np.pad(np.ones((1, 1), np.uint8), ((5, N - 6), (7, N - 8))),
                          np.zeros((N, N), np.uint8)),
    "thin line": lambda: (np.zeros((N, N), np.uint8), np.pad(np.ones((1, 30), np.uint8), ((9, N - 10), (3, N - 33))),
                          np.zeros((N, N), np.uint8)),
    "multi-class": lambda: (textured(np.random.default_rng(1)), ellipse_mask() + ellipse_mask(radii=(6, 6)),
                            ellipse_mask()),
    "black 1x1": lambda: (np.zeros((1, 1, 3), np.uint8), np.ones((1, 1), np.uint8), np.zeros((1, 1), np.uint8)),
}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_every_key_present_and_finite(case):
    values = describe_image(*CASES[case]())
    assert tuple(values) == DESCRIPTOR_NAMES
    assert all(isinstance(v, float) and math.isfinite(v) for v in values.values()), values


def test_empty_masks_have_the_documented_values():
    image = textured(np.random.default_rng(2))
    empty = np.zeros((N, N), np.uint8)
    d = describe_image(image, empty, empty)
    assert {k: d[k] for k in ("mask_area", "centroid_offset", "touches_border", "n_components", "solidity",
                              "eccentricity", "boundary_roughness", "polygonality")} == {
        "mask_area": 0.0, "centroid_offset": 0.0, "touches_border": 0.0, "n_components": 0.0, "solidity": 1.0,
        "eccentricity": 0.0, "boundary_roughness": 1.0, "polygonality": 0.0}
    assert (d["fp_fraction"], d["boundary_error_fraction"], d["pred_area_ratio"]) == (0.5, 0.5, 1.0)
    only_prediction = describe_image(image, empty, ellipse_mask())
    assert only_prediction["pred_area_ratio"] == 10.0 and only_prediction["fp_fraction"] == 1.0
    assert only_prediction["boundary_error_fraction"] == 0.0  # no true boundary: all region errors


def test_shapes_must_agree():
    with pytest.raises(ValueError, match="share"):
        describe_image(np.zeros((N, N), np.uint8), np.zeros((N, N), np.uint8), np.zeros((N, N + 1), np.uint8))
    with pytest.raises(ValueError, match="share"):
        describe_image(np.zeros((N, N + 1, 3), np.uint8), np.zeros((N, N), np.uint8), np.zeros((N, N), np.uint8))


# ------------------------------------------------------------------------------------------ image family
def test_darker_image_has_lower_brightness():
    image = textured(np.random.default_rng(3))
    dark = (image * 0.5).astype(np.uint8)
    assert describe(dark)["brightness"] < describe(image)["brightness"] - 0.2
    grey = np.full((N, N), 51, np.uint8)
    assert describe(grey)["brightness"] == pytest.approx(0.2, abs=1e-6)
    assert describe(grey)["contrast"] == 0.0 and describe(grey)["sharpness"] == 0.0


def test_blur_lowers_sharpness():
    image = textured(np.random.default_rng(4))
    blurred = ndimage.gaussian_filter(image.astype(float), sigma=(2, 2, 0)).round().astype(np.uint8)
    sharp, soft = describe(image)["sharpness"], describe(blurred)["sharpness"]
    assert soft < sharp / 5


def test_noise_raises_noise_and_measures_its_sigma():
    rng = np.random.default_rng(5)
    image = textured(rng, rgb=False)
    noisy = np.clip(image + rng.normal(0, 0.05 * 255, image.shape), 0, 255).astype(np.uint8)
    assert describe(noisy)["noise"] > describe(image)["noise"] + 0.03
    # on a flat image the estimate is the noise's standard deviation (0..1 units)
    flat = np.clip(128 + rng.normal(0, 0.05 * 255, (256, 256)), 0, 255).astype(np.uint8)
    estimate = describe_image(flat, np.zeros((256, 256), np.uint8), np.zeros((256, 256), np.uint8))["noise"]
    assert estimate == pytest.approx(0.05, rel=0.1)


def test_saturation_is_hsv_saturation_and_zero_for_grey():
    rng = np.random.default_rng(6)
    colourful = rng.integers(0, 256, (N, N, 3)).astype(np.uint8)
    assert describe(colourful)["saturation"] == pytest.approx(float(color.rgb2hsv(colourful)[..., 1].mean()),
                                                              abs=1e-5)
    grey = textured(rng, rgb=False)
    assert describe(grey)["saturation"] == 0.0
    assert describe(np.repeat(grey[..., None], 3, axis=2))["saturation"] == 0.0


# ------------------------------------------------------------------------------------------- mask family
def test_mask_at_the_border_touches_it_and_is_off_centre():
    centred = describe(truth=ellipse_mask(radii=(8, 8)))
    corner = describe(truth=ellipse_mask(centre=(4, 4), radii=(8, 8)))
    assert centred["touches_border"] == 0.0 and corner["touches_border"] == 1.0
    assert corner["centroid_offset"] > centred["centroid_offset"] + 0.5
    assert centred["centroid_offset"] < 0.05


def test_area_and_components():
    truth = ellipse_mask(centre=(16, 16), radii=(6, 6)) | ellipse_mask(centre=(46, 46), radii=(10, 10))
    d = describe(truth=truth)
    assert d["n_components"] == 2.0
    assert d["mask_area"] == pytest.approx(truth.sum() / truth.size)
    assert d["eccentricity"] < 0.2  # the largest component, a disc
    assert describe(truth=ellipse_mask(radii=(5, 25), rotation=0.0))["eccentricity"] > 0.9


@pytest.mark.parametrize("make", ["ellipse", "polygon", "ragged", "jagged"])
def test_solidity_and_roughness_equal_regionprops(make):
    """The cheap convex hull gives regionprops' solidity and perimeter / convex perimeter."""
    rng = np.random.default_rng(7)
    truth = {"ellipse": lambda: ellipse_mask(128, radii=(30, 45)), "polygon": lambda: polygon_mask(rng),
             "ragged": lambda: ragged_mask(rng), "jagged": lambda: jagged_mask(rng)}[make]()
    region = measure.regionprops(measure.label(truth, connectivity=2))[0]
    d = describe(truth=truth)
    assert d["solidity"] == pytest.approx(region.solidity, abs=2e-3)
    assert d["boundary_roughness"] == pytest.approx(region.perimeter / measure.perimeter(region.image_convex),
                                                    abs=2e-3)


def test_ragged_blob_has_rougher_boundary_than_an_ellipse():
    rng = np.random.default_rng(8)
    smooth = describe(truth=ellipse_mask(128, radii=(35, 45)))["boundary_roughness"]
    assert smooth == pytest.approx(1.0, abs=0.01)  # convex and smooth
    assert describe(truth=polygon_mask(rng))["boundary_roughness"] == pytest.approx(1.0, abs=0.02)
    for _ in range(3):
        assert describe(truth=ragged_mask(rng))["boundary_roughness"] > smooth + 0.05
    assert describe(truth=jagged_mask(rng))["boundary_roughness"] > smooth + 0.2


def test_polygonality_separates_polygons_from_ellipses_and_ragged_blobs():
    """Coarse 8-12-gons score above every smooth ellipse and every ragged blob (128 x 128, radius ~45 px).

    Below an equivalent radius of ~30 px raster steps make every outline look polygonal (see polygonality()).
    """
    rng = np.random.default_rng(9)
    polygons = [polygonality(polygon_mask(rng, vertices=k)) for k in (8, 8, 9, 10, 12)]
    ellipses = [polygonality(ellipse_mask(128, radii=(45 / a, 45), rotation=r))
                for a, r in ((1.0, 0.0), (1.25, 0.4), (1.5, 1.1), (1.6, 2.0))]
    ragged = [polygonality(ragged_mask(rng, amplitude=a, bumps=b)) for a, b in ((0.05, 40), (0.1, 25), (0.15, 12))]
    ragged.append(polygonality(jagged_mask(rng)))
    assert min(polygons) > 0.2
    assert max(ellipses) < 0.1
    assert max(ragged) < 0.2
    assert min(polygons) > max(ellipses + ragged) + 0.1
    # describe_image reports the same number, for the largest component
    truth = polygon_mask(rng)
    assert describe(truth=truth)["polygonality"] == pytest.approx(polygonality(truth))
    assert polygonality(np.zeros((8, 8))) == 0.0 and polygonality(np.ones((3, 3))) == 0.0  # empty, too small


# ------------------------------------------------------------------------------------------ error family
def test_fp_fraction():
    truth = ellipse_mask()
    extra = truth.copy()
    extra[2:8, 2:8] = 1
    assert describe(truth=truth, prediction=extra)["fp_fraction"] == 1.0
    missing = truth.copy()
    missing[28:36, 28:36] = 0
    assert describe(truth=truth, prediction=missing)["fp_fraction"] == 0.0
    assert describe(truth=truth, prediction=truth)["fp_fraction"] == 0.5


def test_boundary_error_fraction_tells_boundary_from_region_errors():
    truth = np.zeros((N, N), np.uint8)
    truth[10:54, 10:54] = 1
    shifted = np.roll(truth, 1, axis=1)
    assert describe(truth=truth, prediction=shifted)["boundary_error_fraction"] == 1.0
    holed = truth.copy()
    holed[25:40, 25:40] = 0  # a missing blob far (>= 15 px) from the true boundary
    assert describe(truth=truth, prediction=holed)["boundary_error_fraction"] < 0.1
    far_fp = truth.copy()
    far_fp[58:62, 2:20] = 1  # a false blob 4 px from the truth: outside the 2-px band
    assert describe(truth=truth, prediction=far_fp)["boundary_error_fraction"] == 0.0


def test_pred_area_ratio():
    truth = np.zeros((N, N), np.uint8)
    truth[10:30, 10:30] = 1
    double = truth.copy()
    double[30:50, 10:30] = 1
    assert describe(truth=truth, prediction=double)["pred_area_ratio"] == pytest.approx(2.0)
    tiny = np.zeros((N, N), np.uint8)
    tiny[0, 0] = 1
    assert describe(truth=tiny, prediction=np.ones((N, N), np.uint8))["pred_area_ratio"] == 10.0  # capped


# ---------------------------------------------------------------------------------------------- streaming
def test_describe_images_streams_samples_into_a_table():
    consumed = []

    def samples():
        rng = np.random.default_rng(10)
        for i in range(4):
            consumed.append(i)
            truth = ellipse_mask(radii=(6 + 3 * i, 10))
            yield f"img{i}", textured(rng), truth, truth
    table = describe_images(samples())
    assert list(table.columns) == ["id", *DESCRIPTOR_NAMES]
    assert table["id"].tolist() == ["img0", "img1", "img2", "img3"] and consumed == [0, 1, 2, 3]
    assert table["mask_area"].is_monotonic_increasing
    empty = describe_images(iter(()))
    assert list(empty.columns) == ["id", *DESCRIPTOR_NAMES] and empty.empty


# ---------------------------------------------------------------------------------------- slice contrasts
def population(n: int, seed: int, darken: np.ndarray | None = None) -> pd.DataFrame:
    """n images of one distribution (random texture, mask size, place and prediction error); rows in
    ``darken`` get 60 grey levels less, and nothing else changes (no clipping: the images sit in 70..230; grey
    images, because an offset on colour channels changes the HSV saturation (max - min) / max too)."""
    rng = np.random.default_rng(seed)
    darken = np.zeros(n, bool) if darken is None else darken

    def samples():
        for i in range(n):
            image = textured(rng, mean=150, rgb=False)
            if darken[i]:
                image = (image.astype(int) - 60).astype(np.uint8)
            truth = ellipse_mask(centre=tuple(rng.uniform(24, 40, 2)), radii=tuple(rng.uniform(8, 16, 2)),
                                 rotation=rng.uniform(0, 3))
            prediction = ndimage.binary_dilation(truth, iterations=int(rng.integers(0, 3))).astype(np.uint8)
            yield f"s{i}", image, truth, prediction
    return describe_images(samples())


def test_contrast_names_a_darkened_slice():
    labels = np.repeat([0, 1], 40)
    table = population(80, seed=11, darken=labels == 1)
    contrast = contrast_slices(table, labels)
    assert list(contrast.columns) == ["slice", "descriptor", "family", "effect", "p_value", "p_adjusted",
                                      "slice_mean", "rest_mean", "direction", "words", "significant", "rank",
                                      "comparative"]
    assert len(contrast) == 2 * len(DESCRIPTOR_NAMES)
    row = contrast[(contrast["slice"] == 1) & (contrast["descriptor"] == "brightness")].iloc[0]
    assert row["direction"] == "lower" and row["words"] == "darker" and row["family"] == "image"
    assert row["effect"] < -3 and row["significant"] and row["rank"] == 1
    assert row["slice_mean"] < row["rest_mean"] - 0.2
    assert top_descriptor(contrast, 1) == "brightness" and top_descriptor(contrast, 0) == "brightness"
    assert top_descriptor(contrast, 1, families=("image",)) == "brightness"
    masks_only = top_descriptor(contrast, 1, families=("mask",))
    assert masks_only is None or DESCRIPTORS.at[masks_only, "family"] == "mask"
    assert "darker" in describe_slice(contrast, 1)
    assert describe_slice(contrast, 1).startswith("darker") and describe_slice(contrast, 0).startswith("brighter")
    # only brightness moved: nothing else may be claimed
    assert set(contrast.loc[contrast["significant"], "descriptor"]) == {"brightness"}


def test_a_random_split_of_one_distribution_finds_nothing():
    table = population(80, seed=12)
    labels = np.random.default_rng(13).permutation(np.repeat([0, 1], 40))
    contrast = contrast_slices(table, labels)
    assert not contrast["significant"].any()
    assert contrast["rank"].isna().all()
    for s in (0, 1):
        assert describe_slice(contrast, s) == NOTHING_SIGNIFICANT == "no descriptor distinguishes it from the rest"
        assert top_descriptor(contrast, s) is None


def test_contrast_edge_cases():
    rng = np.random.default_rng(14)
    table = pd.DataFrame({"id": [f"i{k}" for k in range(30)], "brightness": rng.normal(0.5, 0.1, 30),
                          "contrast": np.full(30, 0.2), "touches_border": np.repeat([1.0, 0.0, 0.0], 10)})
    labels = np.repeat([0, 1, 2], 10)
    labels[-1] = 3  # a one-member slice
    contrast = contrast_slices(table, labels)
    assert set(contrast["descriptor"]) == {"brightness", "contrast", "touches_border"}  # named ones only, no id
    constant = contrast[contrast["descriptor"] == "contrast"]
    assert (constant["effect"] == 0).all() and (constant.loc[constant["slice"] != 3, "p_value"] == 1).all()
    assert (constant["direction"] == "equal").all() and (constant["words"] == "").all()
    single = contrast[contrast["slice"] == 3]
    assert single["p_value"].isna().all() and not single["significant"].any() and single["rank"].isna().all()
    # perfect separation of a constant slice from a constant rest: an infinite effect, significant, named
    border = contrast[(contrast["slice"] == 0) & (contrast["descriptor"] == "touches_border")].iloc[0]
    assert border["effect"] == np.inf and border["significant"] and border["rank"] == 1
    assert describe_slice(contrast, 0) == "masks touch the border more often than the rest"
    with pytest.raises(ValueError):
        contrast_slices(table, labels[:-1])
    with pytest.raises(KeyError):
        contrast_slices(table, labels, columns=["no_such_column"])


def test_holm_adjustment_and_ranks():
    rng = np.random.default_rng(15)
    n = 60
    labels = np.repeat([0, 1], n // 2)
    shift = np.where(labels == 1, 1.0, 0.0)
    table = pd.DataFrame({"brightness": rng.normal(0, 1, n) - 2.0 * shift, "sharpness": rng.normal(0, 1, n) - shift,
                          "noise": rng.normal(0, 1, n)})
    contrast = contrast_slices(table, labels, alpha=0.05)
    one = contrast[contrast["slice"] == 1].set_index("descriptor")
    p = one["p_value"].sort_values()
    expected = np.minimum(1, np.maximum.accumulate([3 * p.iloc[0], 2 * p.iloc[1], 1 * p.iloc[2]]))
    assert one.loc[p.index, "p_adjusted"].to_numpy() == pytest.approx(expected)
    assert one.loc["brightness", "rank"] == 1 and one.loc["sharpness", "rank"] == 2
    assert describe_slice(contrast, 1) == "darker, blurrier than the rest"
    assert describe_slice(contrast, 1, max_terms=1) == "darker than the rest"
    assert contrast.iloc[0]["descriptor"] == "brightness"  # rows: slice, then rank


def test_describe_slice_groups_by_family():
    rows = [("brightness", "image", -2.0, "darker", 1), ("touches_border", "mask", 1.5, "masks touch the border "
            "more often", 3), ("sharpness", "image", -1.8, "blurrier", 2),
            ("fp_fraction", "error", 1.2, "errors dominated by false positives", 4),
            ("noise", "image", 0.1, "noisier", np.nan)]
    contrast = pd.DataFrame([{"slice": 5, "descriptor": d, "family": f, "effect": e, "words": w,
                              "significant": not np.isnan(r), "rank": r} for d, f, e, w, r in rows])
    assert describe_slice(contrast, 5) == "darker, blurrier than the rest; masks touch the border more often"
    assert describe_slice(contrast, 5, max_terms=4) == ("darker, blurrier than the rest; masks touch the border more "
                                                        "often; errors dominated by false positives")
    error_first = contrast.assign(rank=[2, 3, 4, 1, np.nan])
    assert describe_slice(error_first, 5, max_terms=2) == "errors dominated by false positives; darker than the rest"
    assert describe_slice(contrast, 6) == NOTHING_SIGNIFICANT
    assert top_descriptor(contrast, 5) == "brightness" and top_descriptor(contrast, 6) is None
