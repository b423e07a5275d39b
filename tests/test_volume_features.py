"""3-D descriptors, planes, pooled embeddings and montages (seg4seg_utils.discovery.volume_features) on small
phantoms and synthetic volumes (32-48 voxels a side). No network is loaded: a fake embedder stands in."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from seg4seg_utils.data.phantoms3d import phantom_volume, simulated_prediction
from seg4seg_utils.discovery.descriptors import DESCRIPTORS
from seg4seg_utils.discovery.volume_features import (VOLUME_DESCRIPTOR_NAMES, VOLUME_DESCRIPTORS, describe_volume,
                                                      embed_volume, intensity_window, plane_montage,
                                                      planes_from_axes, volume_planes)

N = 40


def ball(shape=(N, N, N), centre=None, radius=10.0) -> np.ndarray:
    """A boolean sphere (voxel units)."""
    centre = np.asarray(centre if centre is not None else [(s - 1) / 2 for s in shape], dtype=float)
    grid = np.indices(shape, dtype=float)
    return np.sum((grid - centre.reshape(3, 1, 1, 1)) ** 2, axis=0) <= radius ** 2


def phantom_case(seed: int, scanner: str = "A", size: int = N):
    image, labels, _ = phantom_volume(size, np.random.default_rng(seed), scanner)
    return image, labels, simulated_prediction(labels, scanner, np.random.default_rng(seed + 1000))


# ------------------------------------------------------------------------------------------- the table
def test_table_columns_and_shared_words():
    assert list(VOLUME_DESCRIPTORS.columns) == list(DESCRIPTORS.columns)
    assert VOLUME_DESCRIPTOR_NAMES == tuple(VOLUME_DESCRIPTORS.index)
    for name in ("brightness", "contrast", "sharpness", "noise", "touches_border", "n_components", "fp_fraction",
                 "boundary_error_fraction"):
        for column in ("family", "higher", "lower", "comparative"):
            assert VOLUME_DESCRIPTORS.at[name, column] == DESCRIPTORS.at[name, column]
    assert VOLUME_DESCRIPTORS.at["pred_volume_ratio", "higher"] == DESCRIPTORS.at["pred_area_ratio", "higher"]
    assert set(VOLUME_DESCRIPTORS["family"]) == {"image", "mask", "error"}


# ------------------------------------------------------------------------------------------ descriptors
def _cases():
    rng = np.random.default_rng(0)
    image = rng.normal(0.2, 0.05, (N, N, N)).astype(np.float32)
    sphere = ball().astype(np.uint8)
    empty = np.zeros_like(sphere)
    single = empty.copy()
    single[5, 6, 7] = 1
    sheet = empty.copy()
    sheet[10:30, 10:30, 20] = 1
    two_classes = sphere.copy()
    two_classes[ball(radius=4)] = 2
    return {
        "both empty": (image, empty, empty),
        "truth only": (image, sphere, empty),
        "prediction only": (image, empty, sphere),
        "perfect": (image + sphere * 0.4, sphere, sphere),
        "fills the volume": (image, np.ones_like(sphere), sphere),
        "single voxel": (image, single, single),
        "flat sheet": (image, sheet, empty),
        "constant image": (np.zeros((N, N, N), np.float32), sphere, sphere),
        "noiseless step": (sphere.astype(np.float32), sphere, empty),
        "class confusion": (image, two_classes, sphere),
        "integer image": ((image * 1000).astype(np.int16), sphere, two_classes),
    }


@pytest.mark.parametrize("case", list(_cases()))
def test_always_the_same_finite_keys(case):
    image, truth, prediction = _cases()[case]
    d = describe_volume(image, (1.0, 0.8, 2.5), truth, prediction)
    assert list(d) == list(VOLUME_DESCRIPTOR_NAMES)
    assert all(isinstance(v, float) and math.isfinite(v) for v in d.values()), d
    assert d["surface_roughness"] >= 1.0 and d["elongation"] >= 1.0 and 0 <= d["centroid_offset"] <= 1
    assert math.isclose(d["spacing_anisotropy"], 2.5 / 0.8) and math.isclose(d["voxel_volume_mm3"], 2.0)


def test_documented_values_for_empty_masks_and_no_error():
    image, truth, prediction = _cases()["both empty"]
    d = describe_volume(image, (1, 1, 1), truth, prediction)
    assert (d["volume_ml"], d["n_components"], d["touches_border"], d["centroid_offset"]) == (0, 0, 0, 0)
    assert (d["elongation"], d["surface_roughness"]) == (1, 1)
    assert (d["fp_fraction"], d["boundary_error_fraction"], d["pred_volume_ratio"]) == (0.5, 0.5, 1.0)
    assert (d["contrast"], d["sharpness"]) == (0, 0) and 0.03 < d["noise"] < 0.07  # white noise of sd 0.05
    only_pred = describe_volume(*_cases()["prediction only"][:1], (1, 1, 1), *_cases()["prediction only"][1:])
    assert only_pred["pred_volume_ratio"] == 10 and only_pred["fp_fraction"] == 1
    assert only_pred["boundary_error_fraction"] == 0  # no truth label change anywhere: region errors
    only_truth = describe_volume(*_cases()["truth only"][:1], (1, 1, 1), *_cases()["truth only"][1:])
    assert only_truth["pred_volume_ratio"] == 0 and only_truth["fp_fraction"] == 0
    perfect = describe_volume(*_cases()["perfect"][:1], (1, 1, 1), *_cases()["perfect"][1:])
    assert (perfect["fp_fraction"], perfect["boundary_error_fraction"], perfect["pred_volume_ratio"]) == (0.5, 0.5, 1)
    assert describe_volume(*_cases()["noiseless step"][:1], (1, 1, 1), *_cases()["noiseless step"][1:])[
        "contrast"] == 1000  # capped, not infinite


def test_volume_ml_uses_the_spacing():
    image, truth, prediction = phantom_case(3)
    base = describe_volume(image, (1.0, 1.0, 1.0), truth, prediction)
    assert math.isclose(base["volume_ml"], np.count_nonzero(truth) / 1000)
    for axis in range(3):
        spacing = [1.0, 1.0, 1.0]
        spacing[axis] = 2.0
        assert math.isclose(describe_volume(image, spacing, truth, prediction)["volume_ml"], 2 * base["volume_ml"])
    assert math.isclose(describe_volume(image, (0.5, 0.7, 3.0), truth, prediction)["volume_ml"],
                        base["volume_ml"] * 0.5 * 0.7 * 3.0)


def test_scanner_b_has_lower_contrast_and_more_noise_than_a():
    a = [describe_volume(*phantom_case(s, "A")[:1], (1, 1, 1), *phantom_case(s, "A")[1:]) for s in range(3)]
    b = [describe_volume(*phantom_case(s, "B")[:1], (1, 1, 1), *phantom_case(s, "B")[1:]) for s in range(3)]
    assert max(x["contrast"] for x in b) < min(x["contrast"] for x in a)
    assert min(x["noise"] for x in b) > max(x["noise"] for x in a)
    # the documented scale: white noise of sd s reads about s (scanner noise 0.05 / 0.1)
    assert all(0.04 < x["noise"] < 0.06 for x in a) and all(0.08 < x["noise"] < 0.12 for x in b)
    assert np.mean([x["sharpness"] for x in b]) < np.mean([x["sharpness"] for x in a])  # B is blurred
    assert all(x["pred_volume_ratio"] < 0.8 for x in b)  # the simulated model under-segments B


def test_a_jagged_sphere_is_rougher_than_a_smooth_one():
    smooth = ball(radius=12).astype(np.uint8)
    grid = np.indices(smooth.shape, dtype=float) - (N - 1) / 2
    bumps = ndimage.gaussian_filter(np.random.default_rng(1).normal(size=smooth.shape), 1.0)
    jagged = (np.sqrt(np.sum(grid ** 2, axis=0)) + 25 * bumps <= 12).astype(np.uint8)
    image = np.zeros(smooth.shape, np.float32)
    r_smooth = describe_volume(image, (1, 1, 1), smooth, smooth)["surface_roughness"]
    r_jagged = describe_volume(image, (1, 1, 1), jagged, jagged)["surface_roughness"]
    assert r_smooth < 1.15  # a digitised sphere: marching cubes' facets add a few per cent
    assert r_jagged > r_smooth + 0.1


def test_shape_and_placement():
    # an ellipsoid 3:1 in voxels is 1:1 in mm when the short axis has thrice the spacing
    grid = np.indices((N, N, N), dtype=float) - (N - 1) / 2
    ellipsoid = ((grid[0] / 15) ** 2 + (grid[1] / 5) ** 2 + (grid[2] / 5) ** 2 <= 1).astype(np.uint8)
    image = np.zeros(ellipsoid.shape, np.float32)
    assert describe_volume(image, (1, 1, 1), ellipsoid, ellipsoid)["elongation"] > 2.5
    assert describe_volume(image, (1, 3, 3), ellipsoid, ellipsoid)["elongation"] < 1.2
    corner = ball(centre=(0, 0, 0), radius=6).astype(np.uint8)
    two = (ball(centre=(9, 9, 9), radius=4) | ball(centre=(30, 30, 30), radius=4)).astype(np.uint8)
    d_corner = describe_volume(image, (1, 1, 1), corner, corner)
    d_two = describe_volume(image, (1, 1, 1), two, two)
    assert d_corner["touches_border"] == 1 and d_corner["centroid_offset"] > 0.7
    assert d_two["touches_border"] == 0 and d_two["n_components"] == 2 and d_two["centroid_offset"] < 0.01


def test_boundary_errors_versus_region_errors():
    truth = ball(radius=12).astype(np.uint8)
    image = np.zeros(truth.shape, np.float32)
    shrunk = ndimage.binary_erosion(truth, iterations=1).astype(np.uint8)
    holed = truth.copy()
    holed[ball(radius=4)] = 0  # a hole in the middle, far from the surface
    assert describe_volume(image, (1, 1, 1), truth, shrunk)["boundary_error_fraction"] == 1
    assert describe_volume(image, (1, 1, 1), truth, holed)["boundary_error_fraction"] == 0


def test_bad_inputs_are_refused():
    truth = ball().astype(np.uint8)
    with pytest.raises(ValueError, match="spacing"):
        describe_volume(np.zeros(truth.shape), (1, 1), truth, truth)
    with pytest.raises(ValueError, match="3-D shape"):
        describe_volume(np.zeros((N, N)), (1, 1, 1), truth, truth)
    with pytest.raises(ValueError, match="non-finite"):
        describe_volume(np.full(truth.shape, np.nan, np.float32), (1, 1, 1), truth, truth)


# ------------------------------------------------------------------------------------------------- planes
def _index_image(shape=(N, N, N), axis=2) -> np.ndarray:
    """Every voxel holds its own index along ``axis``: a plane's grey level says where it was cut."""
    return np.broadcast_to(np.arange(shape[axis], dtype=np.float32).reshape([-1 if a == axis else 1 for a in
                                                                              range(3)]), shape).copy()


def _decode(plane: np.ndarray, image: np.ndarray) -> int:
    lo, hi = intensity_window(image)
    values = np.unique(plane)
    assert values.size == 1  # a plane of an index image is constant
    return int(round(values[0] / 255 * (hi - lo) + lo))


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_planes_lie_in_the_roi(axis):
    image = _index_image(axis=axis)
    roi = np.zeros(image.shape, bool)
    box = [slice(5, 12), slice(20, 31), slice(30, 38)]
    roi[tuple(box)] = True
    planes = volume_planes(image, roi, n_planes=4, axis=axis)
    assert len(planes) == 4 and all(p.dtype == np.uint8 and p.ndim == 2 for p in planes)
    indices = [_decode(p, image) for p in planes]
    assert all(box[axis].start <= i < box[axis].stop for i in indices), indices
    assert indices == sorted(indices) and len(set(indices)) == 4  # spread through the ROI, in order


def test_every_plane_cuts_a_roi_in_two_pieces():
    roi = ball(centre=(20, 20, 7), radius=6) | ball(centre=(20, 20, 32), radius=6)  # 3 % of the volume
    planes = volume_planes(roi.astype(np.float32), roi, n_planes=5, axis=2)
    assert all(p.max() == 255 for p in planes)  # each plane holds ROI voxels, none falls in the gap


def test_an_empty_roi_falls_back_to_the_centre_planes():
    image = _index_image()
    empty = np.zeros(image.shape, bool)
    assert [_decode(p, image) for p in volume_planes(image, empty, n_planes=1)] == [N // 2]
    assert [_decode(p, image) for p in volume_planes(image, empty, n_planes=4)] == [5, 15, 25, 35]


def test_anisotropic_spacing_resamples_the_plane():
    shape = (32, 36, 12)
    rng = np.random.default_rng(0)
    image = rng.normal(size=shape).astype(np.float32)
    roi = np.ones(shape, bool)
    assert volume_planes(image, roi, 1, axis=0)[0].shape == (36, 12)
    assert volume_planes(image, roi, 1, axis=0, spacing=(1, 1, 1))[0].shape == (36, 12)
    # 36 x 1 mm by 12 x 3 mm: square pixels of 1 mm -> 36 x 36, the true proportions
    assert volume_planes(image, roi, 1, axis=0, spacing=(2.0, 1.0, 3.0))[0].shape == (36, 36)
    # in-plane 1 mm x 1 mm along axis 2: nothing to resample, whatever the slice thickness
    assert volume_planes(image, roi, 1, axis=2, spacing=(1.0, 1.0, 3.0))[0].shape == (32, 36)


def test_planes_from_axes_gives_axial_coronal_sagittal():
    shape = (32, 36, 40)
    image = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    roi = np.zeros(shape, bool)
    roi[10:20, 10:20, 10:20] = True
    planes = planes_from_axes(image, roi, per_axis=2)
    assert [p.shape for p in planes] == [(32, 36)] * 2 + [(32, 40)] * 2 + [(36, 40)] * 2
    assert all(p.dtype == np.uint8 for p in planes)


def test_window_is_the_volumes_robust_range():
    image = np.random.default_rng(0).normal(size=(N, N, N)).astype(np.float32)
    image[0, 0, 0] = 1e6  # one metal voxel must not turn every plane black
    plane = volume_planes(image, np.ones(image.shape, bool), 1)[0]
    assert 100 < plane.mean() < 155 and plane.min() == 0 and plane.max() == 255
    assert not volume_planes(np.zeros((N, N, N)), np.ones((N, N, N)), 1)[0].any()  # constant volume -> 0


# ---------------------------------------------------------------------------------------------- embedding
class MeanEmbedder:
    """A stand-in for a 2-D embedder: each image -> (mean, max) of its grey levels."""

    def __init__(self, unit: bool = False) -> None:
        self.unit = unit

    def embed(self, images):
        out = np.array([[float(np.mean(i)), float(np.max(i)) + 1.0] for i in images], dtype=np.float32)
        return out / np.linalg.norm(out, axis=1, keepdims=True) if self.unit else out


def test_embed_volume_pools_the_planes_into_one_vector():
    image, truth, _ = phantom_case(0)
    planes = volume_planes(image, truth, n_planes=3)
    rows = MeanEmbedder().embed(planes)
    mean = embed_volume(MeanEmbedder(), planes)
    assert mean.shape == (2,) and mean.dtype == np.float32
    np.testing.assert_allclose(mean, rows.mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(embed_volume(MeanEmbedder(), planes, pool="max"), rows.max(axis=0), rtol=1e-6)
    assert math.isclose(float(np.linalg.norm(embed_volume(MeanEmbedder(unit=True), planes))), 1.0, rel_tol=1e-5)
    with pytest.raises(ValueError, match="pool"):
        embed_volume(MeanEmbedder(), planes, pool="median")
    with pytest.raises(ValueError, match="at least one plane"):
        embed_volume(MeanEmbedder(), [])


def test_plane_montage_shape_and_contours():
    image, truth, prediction = phantom_case(1, "B")
    montage = plane_montage(image, truth, prediction, n=3)
    h, w = volume_planes(image, truth > 0, 1)[0].shape
    assert montage.shape == (h, 3 * w, 3) and montage.dtype == np.uint8
    pixels = montage.reshape(-1, 3)
    assert (pixels == [0, 255, 255]).all(axis=1).any() and (pixels == [255, 105, 180]).all(axis=1).any()
    anisotropic = plane_montage(image[:, :, ::4], truth[:, :, ::4], prediction[:, :, ::4], n=2, axis=0,
                                spacing=(1, 1, 4))
    assert anisotropic.shape == (N, 2 * N, 3)  # 40 x 1 mm by 10 x 4 mm: square 1 mm pixels, 40 x 40
