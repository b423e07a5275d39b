"""fit_and_judge and the report's one row: the step every study runs, and the one rule for the slice to show."""
from __future__ import annotations

import numpy as np
import pytest

from seg4seg_utils.discovery.judge import SlicerSettings, choose_n_slices, fit_and_judge, make_slicer, reduced
from seg4seg_utils.discovery.protocol import evaluate_slices, worst_slice
from seg4seg_utils.discovery.slicer import ErrorRankingSlicer, KMeansSlicer, SliceFinder


def planted(n=90, seed=0):
    """Three blobs; the first is the failure group (low Dice, attribute True)."""
    rng = np.random.default_rng(seed)
    Z = np.vstack([rng.normal(c, 0.3, size=(n // 3, 3)) for c in (0, 3, 6)])
    attr = np.r_[np.ones(n // 3, bool), np.zeros(2 * n // 3, bool)]
    dice = np.clip(np.where(attr, 0.55, 0.95) + rng.normal(0, 0.02, n), 0, 1)
    return Z, dice, attr


def test_focus_is_the_winner_when_one_exists():
    """Five blobs; the attribute marks the second-worst one: it wins, the worst one does not."""
    rng = np.random.default_rng(0)
    Z = np.vstack([rng.normal(c, 0.3, size=(20, 3)) for c in (0, 3, 6, 9, 12)])
    dice = np.clip(np.repeat([0.5, 0.6, 0.8, 0.9, 0.95], 20) + rng.normal(0, 0.01, 100), 0, 1)
    attr = np.repeat([False, True, False, False, False], 20)
    _, report = fit_and_judge(Z, dice, attr, n_slices=5)
    assert report.success and report.focus_slice == report.winning_slice != report.worst_slice
    assert report.table.loc[report.focus_slice, "purity"] == 1.0


def test_focus_is_the_worst_eligible_slice_when_nothing_wins():
    Z, _, _ = planted()
    rng = np.random.default_rng(1)
    dice = np.clip(np.repeat([0.55, 0.75, 0.95], 30) + rng.normal(0, 0.02, 90), 0, 1)
    best_blob = np.repeat([False, False, True], 30)  # the attribute on the best blob: outside the bottom 40 %
    _, report = fit_and_judge(Z, dice, best_blob, n_slices=3)
    assert not report.success and report.winning_slice is None
    assert report.focus_slice == report.worst_slice == worst_slice(report_labels(Z, dice), dice, n_slices=3)
    assert report.table.loc[report.focus_slice, "mean_perf"] == report.table["mean_perf"].min()


def report_labels(Z, dice):
    return SliceFinder(n_slices=3, reduce=None, random_state=0).fit(Z, dice).labels_


def test_without_an_attribute_the_report_is_label_free():
    Z, dice, attr = planted()
    _, labelled = fit_and_judge(Z, dice, attr, n_slices=3)
    _, free = fit_and_judge(Z, dice, None, n_slices=3)
    assert free.winning_slice is None and not free.success and not free.purity_pass
    assert free.table["purity"].isna().all() and np.isnan(free.precision_at_k)
    # same slices, same label-free choice: the worst eligible slice never reads the attribute
    assert free.focus_slice == free.worst_slice == labelled.worst_slice
    assert free.table[["size", "mean_perf", "eligible"]].equals(labelled.table[["size", "mean_perf", "eligible"]])


def test_one_row_with_one_set_of_names():
    Z, dice, attr = planted()
    _, report = fit_and_judge(Z, dice, attr, n_slices=3)
    row = report.to_row()
    for column in ("success", "omega2", "max_purity", "precision_at_k", "winning_slice", "winning_size",
                   "winning_perf", "worst_slice", "worst_size", "worst_perf", "worst_purity"):
        assert column in row
    assert row["winning_size"] == int(report.table.loc[report.winning_slice, "size"])
    assert row["worst_perf"] == pytest.approx(report.table["mean_perf"].min())
    assert all(not isinstance(v, np.generic) for v in row.values())  # JSON-ready


def test_fit_and_judge_is_the_slicer_then_the_protocol():
    """The same numbers as the two steps written out: nothing is added or dropped on the way."""
    Z, dice, attr = planted()
    slicer, report = fit_and_judge(Z, dice, attr, n_slices=3, settings=SlicerSettings(gamma=5.0), seed=2)
    by_hand = SliceFinder(n_slices=3, gamma=5.0, reduce=None, random_state=2).fit(Z, dice)
    assert np.array_equal(slicer.labels_, by_hand.labels_) and np.array_equal(slicer.proba_, by_hand.proba_)
    direct = evaluate_slices(by_hand.labels_, dice, attr, proba=by_hand.proba_, n_slices=3)
    assert report.to_dict() == direct.to_dict()


@pytest.mark.parametrize("method, cls", [("seg4seg", SliceFinder), ("gmm", SliceFinder), ("kmeans", KMeansSlicer),
                                         ("error_ranking", ErrorRankingSlicer)])
def test_make_slicer_names_every_method(method, cls):
    slicer = make_slicer(SlicerSettings(method=method), n_slices=4, seed=1)
    assert isinstance(slicer, cls)
    if method == "gmm":
        assert slicer.gamma == 0.0
    with pytest.raises(ValueError, match="unknown slicer method"):
        make_slicer(SlicerSettings(method="dbscan"), n_slices=4, seed=1)


def test_reduced_is_cached_and_identical(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 12))
    first = reduced(X, SlicerSettings(reduce="pca", n_components=3), 0, tmp_path)
    assert len(list(tmp_path.glob("pca3-*.npy"))) == 1
    assert np.array_equal(first, reduced(X, SlicerSettings(reduce="pca", n_components=3), 0, tmp_path))


def four_clusters(seed=0, n_per=100, hidden=False):
    """Four well-separated unit Gaussians in 8-d, each with its own logit-normal Dice level; ``hidden``: a third
    of cluster 0 fails (logit mean -0.5) with no embedding difference - a fifth, performance-only slice."""
    from scipy.special import expit

    rng = np.random.default_rng(seed)
    Z = np.vstack([rng.normal(c, 1.0, (n_per, 8)) for c in 10.0 * np.eye(8)[:4]])
    cluster = np.repeat(np.arange(4), n_per)
    mu = np.array([2.5, 2.0, 1.5, 3.0])[cluster]
    failing = (cluster == 0) & (np.arange(len(Z)) % n_per < n_per // 3)
    if hidden:
        mu = np.where(failing, -0.5, mu)
    return Z, expit(rng.normal(mu, 0.3)), failing


@pytest.mark.parametrize("method", ["seg4seg", "gmm"])
def test_choose_n_slices_finds_the_planted_clusters(method):
    Z, dice, _ = four_clusters()
    settings = SlicerSettings(method=method)
    k, table = choose_n_slices(Z, dice, range(2, 9), settings=settings)
    assert k == 4
    assert list(table.columns) == ["n_slices", "bic", "lower_bound", "converged", "chosen"]
    assert table["n_slices"].tolist() == list(range(2, 9)) and table["chosen"].sum() == 1
    assert table.loc[table["chosen"], "n_slices"].item() == k and table["bic"].idxmin() == table["chosen"].idxmax()
    # each row is the standard fit (fit_and_judge's), scored by the untempered joint BIC
    slicer, _ = fit_and_judge(Z, dice, None, n_slices=5, settings=settings)
    assert table.loc[table["n_slices"] == 5, "bic"].item() == slicer.bic(Z, dice, tempered=False)


def test_choose_n_slices_sees_a_performance_only_slice():
    """The hidden failure group is a fifth slice only to seg4seg; the GMM, blind to performance, stays at 4."""
    Z, dice, failing = four_clusters(hidden=True)
    assert choose_n_slices(Z, dice, range(2, 9), settings=SlicerSettings(method="gmm"))[0] == 4
    k, _ = choose_n_slices(Z, dice, range(2, 9))
    assert k == 5
    labels = make_slicer(SlicerSettings(), k, 0).fit(Z, dice).labels_
    assert max(failing[labels == s].mean() for s in np.unique(labels)) > 0.9


def test_tempered_bic_would_always_add_slices():
    """Why choose_n_slices scores the proper joint density: at gamma=10 the tempered BIC keeps falling past k=4."""
    Z, dice, _ = four_clusters()
    tempered = [make_slicer(SlicerSettings(), k, 0).fit(Z, dice).bic(Z, dice) for k in (4, 8, 12)]
    assert tempered[0] > tempered[1] > tempered[2]


def test_choose_n_slices_candidates_and_methods():
    Z, dice, _ = four_clusters(n_per=5)  # 20 samples: k <= 10 only
    k, table = choose_n_slices(Z, dice, [3, 10, 11, 30], settings=SlicerSettings(method="gmm"))
    assert table["n_slices"].tolist() == [3, 10] and k in (3, 10)
    with pytest.raises(ValueError, match="no candidate"):
        choose_n_slices(Z, dice, [11, 12])
    for method in ("kmeans", "error_ranking"):
        with pytest.raises(ValueError, match="no likelihood"):
            choose_n_slices(Z, dice, settings=SlicerSettings(method=method))
