"""The slice evaluation protocol (Sec. 4.3-4.4) against hand-computed tables and hand-made scenarios."""
import numpy as np
import pandas as pd
import pytest
from scipy.stats import f_oneway

from seg4seg_utils.discovery.protocol import (
    SliceReport,
    evaluate_slices,
    min_slice_size,
    omega_squared,
    precision_at_k,
    slice_table,
)


# --------------------------------------------------------------------------- omega^2
def test_omega_squared_hand_computed():
    # A = [1, 3] (mean 2), B = [4, 6, 8] (mean 6), C = [9, 11] (mean 10); N = 7, k = 3, grand mean 42/7 = 6
    # SS_between = 2*(2-6)^2 + 3*0 + 2*(10-6)^2 = 32 + 0 + 32 = 64
    # SS_within  = (1+1) + (4+0+4) + (1+1) = 12,  SS_total = 76,  MS_within = 12 / (7-3) = 3
    # omega^2 = (64 - 2*3) / (76 + 3) = 58/79
    values = [1, 3, 4, 6, 8, 9, 11]
    groups = ["A", "A", "B", "B", "B", "C", "C"]
    assert omega_squared(values, groups) == pytest.approx(58 / 79)
    # group labels are arbitrary and unordered
    assert omega_squared(values[::-1], [2, 2, 7, 7, 7, 0, 0]) == pytest.approx(58 / 79)


def test_omega_squared_matches_f_oneway():
    rng = np.random.default_rng(0)
    groups = np.repeat([0, 1, 2, 3], [5, 8, 12, 6])
    values = rng.normal(size=len(groups)) + 0.7 * groups
    f = f_oneway(*(values[groups == g] for g in range(4))).statistic
    k, n = 4, len(values)
    assert omega_squared(values, groups) == pytest.approx((k - 1) * (f - 1) / ((k - 1) * (f - 1) + n))


def test_omega_squared_negative():
    # A = [1, 5], B = [2, 4]: both means 3 -> SS_between = 0; SS_within = 4+4+1+1 = 10; MS_within = 10/2 = 5
    # omega^2 = (0 - 1*5) / (10 + 5) = -1/3
    assert omega_squared([1, 5, 2, 4], [0, 0, 1, 1]) == pytest.approx(-1 / 3)


@pytest.mark.parametrize("values,groups", [
    ([1.0, 2.0, 3.0], [0, 0, 0]),        # a single group: k < 2
    ([1.0, 2.0], [0, 1]),                # one sample per group: N - k = 0
    ([0.5, 0.5, 0.5, 0.5], [0, 0, 1, 1]),  # no variance at all: 0/0
    ([], []),
])
def test_omega_squared_undefined_is_nan(values, groups):
    assert np.isnan(omega_squared(values, groups))


def test_omega_squared_bad_inputs():
    with pytest.raises(ValueError, match="values"):
        omega_squared([1.0, np.nan, 2.0], [0, 0, 1])
    with pytest.raises(ValueError, match="groups"):
        omega_squared([1.0, 2.0, 3.0], [0, 1])


# --------------------------------------------------------------------------- N_min
@pytest.mark.parametrize("n,expected", [(120, 3), (50, 1), (200, 4), (150, 3), (20, 1), (1, 1), (0, 1)])
def test_min_slice_size_default(n, expected):
    assert min_slice_size(n) == expected


def test_min_slice_size_ignores_float_noise():
    assert 0.07 * 100 > 7  # 7.000000000000001
    assert min_slice_size(100, 0.07) == 7
    assert min_slice_size(101, 0.07) == 8  # 7.07 -> 8


# --------------------------------------------------------------------------- the 20-sample scenario
def scenario(variant="pass"):
    """4 slices x 5 samples, Dice per slice 0.2/0.5/0.8/0.9; slice 0 holds the attribute (n_min_frac=0.2 -> N_min=4).

    With 4 eligible slices the bottom is rank <= ceil(0.4 * 4) = 2, i.e. slices 0 and 1.
    """
    sizes = [5, 5, 5, 5]
    perf_by_slice = [0.2, 0.5, 0.8, 0.9]
    attr0 = [True] * 5
    if variant == "purity_0.8":
        attr0 = [True, True, True, True, False]      # 4/5 = 0.8, not > 0.8
    elif variant == "too_small":
        sizes = [3, 7, 5, 5]                         # slice 0 has 3 < N_min = 4 members
        attr0 = [True] * 3
    elif variant == "not_bottom":
        perf_by_slice = [0.85, 0.5, 0.8, 0.9]        # slice 0 ranks 3rd of 4, cutoff 2
    labels = np.repeat(np.arange(4), sizes)
    perf = np.repeat(perf_by_slice, sizes)
    attribute = np.concatenate([attr0, [True] + [False] * (sizes[1] - 1), [False] * (sizes[2] + sizes[3])])
    return labels, perf, attribute


def test_scenario_passes():
    labels, perf, attr = scenario()
    r = evaluate_slices(labels, perf, attr, n_min_frac=0.2)
    assert r.n_min == 4
    t = r.table
    assert list(t.columns[:7]) == ["slice", "size", "mean_perf", "purity", "eligible", "rank", "bottom"]
    assert t["size"].tolist() == [5, 5, 5, 5]
    np.testing.assert_allclose(t["mean_perf"], [0.2, 0.5, 0.8, 0.9])
    np.testing.assert_allclose(t["purity"], [1.0, 0.2, 0.0, 0.0])
    assert t["rank"].tolist() == [1, 2, 3, 4]
    assert t["bottom"].tolist() == [True, True, False, False]
    assert r.success and r.winning_slice == 0
    assert r.purity_pass and r.perf_pass
    assert r.omega2 == pytest.approx(1.0)  # no within-slice variance: omega^2 = SS_between / SS_total


def test_scenario_purity_exactly_threshold_fails():
    labels, perf, attr = scenario("purity_0.8")
    r = evaluate_slices(labels, perf, attr, n_min_frac=0.2)
    assert r.table.loc[0, "purity"] == pytest.approx(0.8)
    assert not r.success and r.winning_slice is None
    assert not r.purity_pass  # strict as well
    assert r.perf_pass
    # a slightly lower threshold lets it through
    assert evaluate_slices(labels, perf, attr, n_min_frac=0.2, p_theta=0.79).winning_slice == 0


def test_scenario_slice_too_small_fails():
    labels, perf, attr = scenario("too_small")
    r = evaluate_slices(labels, perf, attr, n_min_frac=0.2)
    assert r.n_min == 4
    assert r.table["eligible"].tolist() == [False, True, True, True]
    assert pd.isna(r.table.loc[0, "rank"]) and not r.table.loc[0, "bottom"]
    assert r.table["rank"].tolist()[1:] == [1, 2, 3]
    assert not r.success and not r.purity_pass  # the pure slice is not eligible, so it is not counted either
    # N_min = ceil(0.15 * 20) = 3: size >= N_min is inclusive, so the 3-member slice now qualifies
    r3 = evaluate_slices(labels, perf, attr, n_min_frac=0.15)
    assert r3.n_min == 3 and r3.success and r3.winning_slice == 0


def test_scenario_not_in_bottom_fails():
    labels, perf, attr = scenario("not_bottom")
    r = evaluate_slices(labels, perf, attr, n_min_frac=0.2)
    assert r.table["rank"].tolist() == [3, 1, 2, 4]
    assert r.table["bottom"].tolist() == [False, True, True, False]
    assert not r.success and r.winning_slice is None
    assert r.purity_pass  # pure and eligible, just not among the worst: Fig. 3b separates the two
    # a looser bottom (ceil(0.75 * 4) = 3) includes it
    assert evaluate_slices(labels, perf, attr, n_min_frac=0.2, q_theta=0.75).winning_slice == 0


# --------------------------------------------------------------------------- ranking details
def test_tie_at_bottom_boundary_counts_both():
    # 5 eligible slices -> cutoff ceil(0.4 * 5) = 2; means 0.1, 0.3, 0.3, 0.5, 0.6 -> ranks 1, 2, 2, 4, 5
    labels = np.repeat(np.arange(5), 4)
    perf = np.repeat([0.1, 0.3, 0.3, 0.5, 0.6], 4)
    attr = labels == 2  # the pure slice is the second of the tied pair
    r = evaluate_slices(labels, perf, attr)
    assert r.table["rank"].tolist() == [1, 2, 2, 4, 5]
    assert r.table["bottom"].tolist() == [True, True, True, False, False]
    assert r.success and r.winning_slice == 2
    # break the tie against slice 2: it drops to rank 3 and out of the bottom
    perf2 = np.repeat([0.1, 0.3, 0.31, 0.5, 0.6], 4)
    r2 = evaluate_slices(labels, perf2, attr)
    assert r2.table["rank"].tolist() == [1, 2, 3, 4, 5] and not r2.success


def test_tie_survives_summation_order():
    # the same multiset of scores in different orders must give equal means, hence tied ranks
    vals = np.array([0.1, 0.7, 0.2, 0.3, 0.9, 0.05])
    labels = np.repeat([0, 1], 6)
    perf = np.concatenate([vals, vals[::-1]])
    t = slice_table(labels, perf, np.zeros(12, bool))
    assert t["rank"].tolist() == [1, 1]


def test_winning_slice_tie_breaks():
    # slices 0, 1, 2 pure; means 0.3, 0.2, 0.2 -> all bottom with q = 1; purity tie -> lowest mean -> slices 1, 2
    # tie on mean as well -> lower id: slice 1
    labels = np.repeat(np.arange(4), 5)
    perf = np.repeat([0.3, 0.2, 0.2, 0.9], 5)
    attr = labels < 3
    assert evaluate_slices(labels, perf, attr, q_theta=1.0).winning_slice == 1
    # higher purity beats lower mean: make slice 1 only 4/5 pure (0.8 > 0.79) -> slice 2 (purity 1.0) wins
    attr2 = attr.copy()
    attr2[5] = False
    assert evaluate_slices(labels, perf, attr2, q_theta=1.0, p_theta=0.79).winning_slice == 2


def test_empty_slices_are_rows_but_not_ranked():
    labels = np.array([0, 0, 0, 2, 2, 2])
    perf = np.array([0.1, 0.2, 0.3, 0.7, 0.8, 0.9])
    t = slice_table(labels, perf, np.array([1, 1, 1, 0, 0, 0]), n_slices=4)
    assert t["slice"].tolist() == [0, 1, 2, 3]
    assert t["size"].tolist() == [3, 0, 3, 0]
    assert t["purity"].isna().tolist() == [False, True, False, True]
    assert t["eligible"].tolist() == [True, False, True, False]
    assert t["rank"].isna().tolist() == [False, True, False, True]
    # K_eligible = 2 -> cutoff ceil(0.8) = 1: only slice 0
    assert t["bottom"].tolist() == [True, False, False, False]
    r = evaluate_slices(labels, perf, np.array([1, 1, 1, 0, 0, 0]), n_slices=4)
    assert r.success and r.winning_slice == 0
    assert r.omega2 == pytest.approx(omega_squared(perf, labels))  # only non-empty slices are groups
    assert "<NA>" in str(r) and r._repr_markdown_()  # renders with unranked rows


def test_single_nonempty_slice_has_nan_omega2_and_fails_perf():
    r = evaluate_slices(np.zeros(6, int), np.linspace(0, 1, 6), np.ones(6, bool), n_slices=3)
    assert np.isnan(r.omega2) and not r.perf_pass
    assert r.success  # one eligible slice, rank 1 <= ceil(0.4), fully pure


# --------------------------------------------------------------------------- precision@k
def test_precision_at_k_hand_computed():
    p0 = np.array([0.9, 0.8, 0.7, 0.1, 0.2, 0.3])
    proba = np.stack([p0, 1 - p0], axis=1)
    attr = np.array([True, False, True, False, False, True])
    # slice 0 top-3: samples 0, 1, 2 -> 2/3; slice 1 top-3: samples 3, 4, 5 -> 1/3
    np.testing.assert_allclose(precision_at_k(proba, attr, k=3), [2 / 3, 1 / 3])
    # k > n: all 6 samples -> 3/6 for both
    np.testing.assert_allclose(precision_at_k(proba, attr, k=10), [0.5, 0.5])
    r = evaluate_slices(proba.argmax(1), np.linspace(0.2, 0.9, 6), attr, proba, k=3)
    assert r.precision_at_k == pytest.approx(2 / 3) and r.precision_slice == 0
    np.testing.assert_allclose(r.table["precision_at_k"], [2 / 3, 1 / 3])


def test_precision_at_k_ties_prefer_lower_index():
    proba = np.full((4, 1), 0.5)
    assert precision_at_k(proba, np.array([0, 1, 1, 1]), k=1)[0] == 0.0
    assert precision_at_k(proba, np.array([1, 0, 0, 0]), k=1)[0] == 1.0


def test_precision_without_proba_is_nan():
    labels, perf, attr = scenario()
    r = evaluate_slices(labels, perf, attr)
    assert np.isnan(r.precision_at_k) and r.precision_slice is None
    assert r.table["precision_at_k"].isna().all()


# --------------------------------------------------------------------------- report
def test_report_row_and_rendering():
    labels, perf, attr = scenario()
    r = evaluate_slices(labels, perf, attr, n_min_frac=0.2)
    assert isinstance(r, SliceReport)
    row = r.to_dict()
    assert "table" not in row
    assert row["success"] is True and row["winning_slice"] == 0 and row["n_min"] == 4
    assert row["n_samples"] == 20 and row["n_slices"] == 4 and row["n_eligible"] == 4
    assert row["max_purity"] == 1.0
    assert {"p_theta": 0.8, "q_theta": 0.4, "n_min_frac": 0.2, "k": 10}.items() <= row.items()
    assert len(pd.DataFrame([row])) == 1
    assert "success=True" in str(r) and "mean_perf" in str(r)
    assert "|" in r._repr_markdown_()


# --------------------------------------------------------------------------- bad inputs
@pytest.mark.parametrize("kwargs,name", [
    (dict(labels=np.zeros(5, int)), "labels"),                        # length mismatch
    (dict(attribute=np.zeros(5, bool)), "attribute"),                 # length mismatch
    (dict(performance=np.r_[np.nan, np.ones(5)]), "performance"),     # NaN score
    (dict(attribute=np.array([0, 1, 2, 0, 1, 0])), "attribute"),      # not 0/1
    (dict(attribute=np.array(list("abcdef"))), "attribute"),          # not numeric
    (dict(labels=np.array([0, 1, -1, 0, 1, 0])), "labels"),           # negative id
    (dict(labels=np.array([0, 1, 0.5, 0, 1, 0])), "labels"),          # non-integral id
    (dict(proba=np.ones((5, 2))), "proba"),                           # wrong row count
    (dict(proba=np.full((6, 2), np.nan)), "proba"),                   # NaN probabilities
    (dict(n_slices=1), "slice id"),                                   # labels beyond n_slices
    (dict(proba=np.ones((6, 3)), n_slices=2), "proba"),               # proba columns vs n_slices
    (dict(p_theta=1.5), "p_theta"),
    (dict(q_theta=0.0), "q_theta"),
    (dict(n_min_frac=-0.1), "n_min_frac"),
    (dict(k=0), "k"),
])
def test_bad_inputs_raise_naming_the_argument(kwargs, name):
    args = dict(labels=np.array([0, 1, 0, 1, 0, 1]), performance=np.linspace(0, 1, 6),
                attribute=np.array([1, 0, 1, 0, 1, 0]))
    args.update(kwargs)
    with pytest.raises(ValueError, match=name):
        evaluate_slices(**args)


def test_zero_one_attribute_is_accepted():
    labels, perf, attr = scenario()
    a = evaluate_slices(labels, perf, attr.astype(float), n_min_frac=0.2)
    b = evaluate_slices(labels, perf, attr, n_min_frac=0.2)
    pd.testing.assert_series_equal(pd.Series(a.to_dict()), pd.Series(b.to_dict()))
    pd.testing.assert_frame_equal(a.table, b.table)


def test_worst_slice_is_chosen_without_the_attribute():
    from seg4seg_utils.discovery.protocol import worst_slice

    labels = np.array([0, 0, 0, 1, 1, 1, 2, 3, 3, 3])
    perf = np.array([0.9, 0.9, 0.9, 0.5, 0.6, 0.4, 0.0, 0.7, 0.7, 0.7])
    assert worst_slice(labels, perf, n_min=2) == 1            # slice 2 is worse but too small
    assert worst_slice(labels, perf, n_min=1) == 2
    assert worst_slice(labels, perf, n_slices=6, n_min=5) == 2  # none eligible: the worst non-empty slice
    tie = np.array([0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.9, 0.9, 0.9])
    assert worst_slice(labels, tie, n_min=2) == 0              # ties go to the lower id
