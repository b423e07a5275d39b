"""Spacing-aware 3-D metrics: known shapes give known distances, spacing scales them, empty masks follow the
documented conventions, multi-class keys. Speed is printed, not asserted (it depends on the CPU)."""
from __future__ import annotations

import time

import numpy as np
import pytest

from seg4seg_utils.model.metrics import segmentation_metrics
from seg4seg_utils.model.volume_metrics import VOLUME_METRICS, surface_scores, volume_metrics


def _sphere(n: int = 32, radius: float = 9.0, centre=(16, 16, 16)) -> np.ndarray:
    x, y, z = np.ogrid[:n, :n, :n]
    return ((x - centre[0]) ** 2 + (y - centre[1]) ** 2 + (z - centre[2]) ** 2) <= radius ** 2


def _box(n: int = 32) -> np.ndarray:
    m = np.zeros((n, n, n), bool)
    m[8:24, 10:22, 6:20] = True
    return m


def test_sphere_against_itself():
    s = _sphere().astype(np.uint8)
    m = volume_metrics(s, s, (1.0, 1.0, 1.0))
    assert set(m) == set(VOLUME_METRICS)
    assert m["dice"] == m["iou"] == m["surface_dice"] == 1.0 and m["hd95"] == 0.0


def test_sphere_shifted_by_one_voxel():
    s = _sphere()
    m = volume_metrics(s, np.roll(s, 1, axis=0), (1.0, 1.0, 1.0), tolerance_mm=1.0)
    assert m["surface_dice"] == 1.0 and m["hd95"] == 1.0 and 0.8 < m["dice"] < 1.0
    assert volume_metrics(s, np.roll(s, 1, axis=0), (1.0, 1.0, 1.0), tolerance_mm=0.5)["surface_dice"] < 1.0


def test_anisotropic_spacing_scales_hd95():
    b = _box()
    spacing = (1.0, 1.0, 3.0)
    along_thick = volume_metrics(b, np.roll(b, 1, axis=2), spacing, tolerance_mm=1.0)
    along_thin = volume_metrics(b, np.roll(b, 1, axis=0), spacing, tolerance_mm=1.0)
    assert along_thick["hd95"] == pytest.approx(3.0) and along_thin["hd95"] == pytest.approx(1.0)
    assert along_thin["surface_dice"] == 1.0 and along_thick["surface_dice"] < 0.9
    assert volume_metrics(b, np.roll(b, 1, axis=2), spacing, tolerance_mm=3.0)["surface_dice"] == 1.0


def test_overlap_scores_are_the_2d_module_s():
    t, p = _sphere(), _sphere(radius=7.0, centre=(15, 17, 16))
    m = volume_metrics(t, p, (0.7, 0.7, 2.0))
    ref = segmentation_metrics(p[None], t[None])
    for k in ("dice", "iou", "ppv", "npv"):
        assert m[k] == pytest.approx(float(ref[k][0]))


def test_empty_mask_conventions():
    empty, s = np.zeros((16, 16, 16), np.uint8), _sphere(16, 4, (8, 8, 8)).astype(np.uint8)
    spacing = (1.0, 2.0, 2.0)
    both = volume_metrics(empty, empty, spacing)
    assert (both["dice"], both["surface_dice"], both["hd95"]) == (1.0, 1.0, 0.0)
    diagonal = float(np.sqrt(16 ** 2 + 32 ** 2 + 32 ** 2))
    for truth, pred in ((s, empty), (empty, s)):
        one = volume_metrics(truth, pred, spacing)
        assert (one["dice"], one["surface_dice"]) == (0.0, 0.0) and one["hd95"] == pytest.approx(diagonal)
        assert all(np.isfinite(v) for v in one.values())


def test_multiclass_keys_and_stable_columns():
    organ = _sphere(32, 10)
    truth = organ.astype(np.uint8)
    truth[_sphere(32, 3, (14, 16, 16))] = 2
    pred = organ.astype(np.uint8)  # the lesion is missed
    m = volume_metrics(truth, pred, (1.0, 1.0, 1.0))
    assert {"dice_1", "dice_2", "surface_dice_1", "surface_dice_2", "hd95_1", "hd95_2"} <= set(m)
    assert m["dice"] == 1.0 and m["dice_2"] == 0.0 and m["surface_dice_2"] == 0.0 and m["dice_1"] < 1.0
    # with the labels given, a class absent from both masks still has its columns ("both empty")
    no_lesion = volume_metrics(pred, pred, (1.0, 1.0, 1.0), labels=[1, 2])
    assert no_lesion["dice_2"] == 1.0 and no_lesion["hd95_2"] == 0.0
    binary = volume_metrics(organ, organ, (1.0, 1.0, 1.0))  # booleans: one class, no per-class keys
    assert set(binary) == set(VOLUME_METRICS)


def test_input_checks():
    s = _sphere(16, 4, (8, 8, 8))
    with pytest.raises(ValueError, match="spacing"):
        volume_metrics(s, s, (1.0, 0.0, 1.0))
    with pytest.raises(ValueError, match="3-D"):
        volume_metrics(s, s[:8], (1.0, 1.0, 1.0))
    with pytest.raises(TypeError, match="threshold"):
        volume_metrics(s.astype(np.float32), s, (1.0, 1.0, 1.0))


def test_timing_128():
    """Printed, not asserted: a multi-class 128^3 case."""
    truth = _sphere(128, 40, (64, 64, 64)).astype(np.uint8)
    truth[_sphere(128, 10, (60, 64, 70))] = 2
    pred = np.roll(truth, 2, axis=1)
    start = time.perf_counter()
    volume_metrics(truth, pred, (0.8, 0.8, 2.5), labels=[1, 2])
    print(f"\nvolume_metrics, 128^3, 2 classes: {time.perf_counter() - start:.3f} s")
    start = time.perf_counter()
    surface_scores(np.ones((128,) * 3, bool), np.roll(truth, 2, axis=1) > 0, (1.0, 1.0, 1.0))
    print(f"surface_scores, 128^3, a mask filling the volume (no crop): {time.perf_counter() - start:.3f} s")


def test_surface_scores_in_2d_count_boundary_pixels():
    """In 2-D the surface is the boundary pixels (edge neighbours). A 10 x 10 square against itself shifted by one
    pixel: 36 boundary pixels each; the shifted square's boundary lies within 1 px of the truth's (and back), and
    within 0.5 px only where the two coincide: 9 pixels of the top row and 9 of the bottom row, on each side, so
    2 x 18 of the 72 (counted by hand)."""
    t = np.zeros((16, 16), bool)
    t[2:12, 3:13] = True
    p = np.roll(t, 1, axis=1)
    assert surface_scores(t, t, (1.0, 1.0)) == (1.0, 0.0)
    nsd, hd95 = surface_scores(t, p, (1.0, 1.0), tolerance_mm=1.0)
    assert nsd == 1.0 and hd95 == 1.0
    strict, _ = surface_scores(t, p, (1.0, 1.0), tolerance_mm=0.5)
    assert strict == pytest.approx(36 / 72)
    assert surface_scores(t, p, (2.0, 2.0), tolerance_mm=1.0)[1] == 2.0  # pixel size scales the distances
    with pytest.raises(ValueError, match="2 positive"):
        surface_scores(t, p, (1.0, 1.0, 1.0))
