"""Per-image metrics against hand-computed values, including every empty-mask convention."""
import numpy as np
import pytest

from seg4seg_utils.model.metrics import (SOFT_METRICS, confusion_counts, metrics_table, segmentation_metrics,
                                         soft_scores)


def masks(*rows):
    return np.array([[c == "1" for c in r] for r in rows])


def test_hand_computed_example():
    truth = masks("1100", "1100", "0000")
    pred = masks("1110", "0100", "0000")
    # TP=3 (0,0),(0,1),(1,1); FP=1 (0,2); FN=1 (1,0); TN=12-5=7
    m = segmentation_metrics(pred, truth)
    assert (m["tp"][0], m["fp"][0], m["fn"][0], m["tn"][0]) == (3, 1, 1, 7)
    assert m["dice"][0] == pytest.approx(6 / 8)
    assert m["iou"][0] == pytest.approx(3 / 5)
    assert m["ppv"][0] == pytest.approx(3 / 4)
    assert m["npv"][0] == pytest.approx(7 / 8)


@pytest.mark.parametrize("pred,truth,expected", [
    ("0000", "0000", dict(dice=1, iou=1, ppv=1, npv=1)),          # both empty: perfect agreement
    ("0000", "0110", dict(dice=0, iou=0, ppv=0, npv=2 / 4)),      # prediction empty: a total miss
    ("0110", "0000", dict(dice=0, iou=0, ppv=0, npv=1)),          # truth empty: hallucination
    ("1111", "1111", dict(dice=1, iou=1, ppv=1, npv=1)),          # both all-foreground: no negatives anywhere
    ("1111", "0110", dict(dice=4 / 6, iou=2 / 4, ppv=2 / 4, npv=0)),  # no predicted negatives, truth has some
])
def test_empty_mask_conventions(pred, truth, expected):
    m = segmentation_metrics(masks(pred), masks(truth))
    for k, v in expected.items():
        assert m[k][0] == pytest.approx(v), k
        assert np.isfinite(m[k]).all()


def test_batched_equals_one_by_one():
    rng = np.random.default_rng(0)
    pred = rng.random((7, 16, 12)) > 0.5
    truth = rng.random((7, 16, 12)) > 0.6
    batched = segmentation_metrics(pred, truth)
    for i in range(7):
        single = segmentation_metrics(pred[i], truth[i])
        for k in batched:
            assert batched[k][i] == pytest.approx(single[k][0])


def test_metrics_table_chunks_and_ids():
    rng = np.random.default_rng(1)
    pred = rng.random((10, 8, 8)) > 0.5
    truth = rng.random((10, 8, 8)) > 0.5
    df = metrics_table(pred, truth, ids=[f"s{i}" for i in range(10)], chunk=3)
    assert list(df.columns[:5]) == ["id", "dice", "iou", "ppv", "npv"]
    assert len(df) == 10
    ref = segmentation_metrics(pred, truth)
    np.testing.assert_allclose(df["dice"], ref["dice"])


def test_bad_inputs():
    with pytest.raises(ValueError, match="shape"):
        confusion_counts(np.zeros((2, 3), bool), np.zeros((3, 2), bool))
    with pytest.raises(TypeError, match="boolean"):
        confusion_counts(np.zeros((2, 3)), np.zeros((2, 3), bool))
    with pytest.raises(ValueError, match="ids"):
        metrics_table(np.zeros((2, 3, 3), bool), np.zeros((2, 3, 3), bool), ids=["a"])


def test_subgroup_gap_hand_computed():
    import pandas as pd

    from seg4seg_utils.model.metrics import subgroup_gap

    df = pd.DataFrame({"failure": [True, True, True, False, False, False, False],
                       "dice": [0.5, 0.6, 0.7, 0.9, 0.95, 0.85, 0.9 - 1e-9]})
    g = subgroup_gap(df)
    assert (g["n_group"], g["n_rest"]) == (3, 4)
    assert g["dice_group"] == pytest.approx(0.6) and g["dice_rest"] == pytest.approx(0.9)  # no ties: exact test
    assert g["gap"] == pytest.approx(0.3)
    assert g["p_value"] == pytest.approx(0.0571, abs=1e-3)  # exact two-sided U test, U=0, n=3 vs 4: 2/35
    one = subgroup_gap(df.iloc[2:])
    assert np.isnan(one["p_value"]) and one["n_group"] == 1
    with pytest.raises(KeyError, match="needs columns"):
        subgroup_gap(df, metric="iou")


def disk(size=64, radius=15):
    yy, xx = np.mgrid[:size, :size]
    return (yy - size // 2) ** 2 + (xx - size // 2) ** 2 <= radius ** 2


def test_soft_scores_of_a_perfect_confident_prediction():
    truth = disk()
    s = soft_scores(truth.astype(float), truth)
    assert tuple(s) == SOFT_METRICS
    assert s == {"soft_dice": 1.0, "boundary_uncertainty": 0.0, "mean_uncertainty": 0.0}


def test_soft_dice_hand_computed_and_empty():
    p = np.array([[0.8, 0.2], [0.6, 0.0]])
    t = masks("10", "10")
    assert soft_scores(p, t)["soft_dice"] == pytest.approx(2 * 1.4 / (1.6 + 2))
    empty = np.zeros((4, 4), bool)
    assert soft_scores(np.zeros((4, 4)), empty)["soft_dice"] == 1.0  # agreed-empty: as Dice in the table
    assert soft_scores(np.full((4, 4), 0.1), empty)["soft_dice"] == 0.0


def test_uncertainties_hand_computed():
    p = np.full((5, 6), 0.5)
    s = soft_scores(p, np.zeros((5, 6), bool))
    assert s["mean_uncertainty"] == 1.0
    assert s["boundary_uncertainty"] == 0.0  # p >= 0.5 everywhere: all foreground, no edge to be unsure about
    # one foreground column (2, p=0.9); its thick boundary is columns 1-3, uncertainties 0, 0.2, 0.4
    p = np.tile([0.0, 0.0, 0.9, 0.2, 0.0, 0.0], (5, 1))
    assert soft_scores(p, p >= 0.5, band=0)["boundary_uncertainty"] == pytest.approx(0.6 / 3)
    assert soft_scores(p, p >= 0.5, band=1)["boundary_uncertainty"] == pytest.approx(0.6 / 5)  # columns 0-4
    assert soft_scores(p, p >= 0.5)["mean_uncertainty"] == pytest.approx(0.6 / 6)


def test_blurring_raises_boundary_uncertainty_only():
    from scipy.ndimage import distance_transform_edt, gaussian_filter

    truth = disk()
    p = gaussian_filter(truth.astype(float), 2)  # values may overshoot [0, 1] by rounding: accepted
    s = soft_scores(p, truth)
    assert s["boundary_uncertainty"] > 0.5 > s["mean_uncertainty"] > 0
    assert 0.85 < s["soft_dice"] < 1  # 0.894
    inside = distance_transform_edt(truth) > 8  # the interior, far from the edge, stays confident
    assert (1 - np.abs(2 * p[inside] - 1)).max() < 1e-3


def test_soft_scores_bad_inputs():
    with pytest.raises(ValueError, match="shape"):
        soft_scores(np.zeros((2, 3)), np.zeros((3, 2), bool))
    with pytest.raises(TypeError, match="boolean"):
        soft_scores(np.zeros((2, 3)), np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        soft_scores(np.full((2, 3), 1.5), np.zeros((2, 3), bool))
    with pytest.raises(ValueError, match="band"):
        soft_scores(np.zeros((2, 3)), np.zeros((2, 3), bool), band=-1)
