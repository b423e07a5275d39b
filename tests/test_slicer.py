"""The performance-weighted mixture: planted slices, the gamma=0 limit, determinism, numerical safety, bad input."""
import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score
from sklearn.mixture import GaussianMixture

from seg4seg_utils.discovery.slicer import ErrorRankingSlicer, KMeansSlicer, SliceFinder


def planted(seed=0, n_per=120):
    """Three embedding blobs; inside blob 0 a hidden quarter fails (low Dice) with *no* embedding difference."""
    rng = np.random.default_rng(seed)
    centres = np.array([[0, 0, 0, 0], [6, 0, 0, 0], [0, 6, 0, 0]], float)
    X = np.vstack([rng.normal(c, 1.0, (n_per, 4)) for c in centres])
    truth = np.repeat([0, 1, 2], n_per)
    dice = np.clip(rng.normal(0.95, 0.02, len(X)), 0, 1)
    hidden = np.zeros(len(X), bool)
    hidden[: n_per // 4] = True  # first quarter of blob 0
    dice[hidden] = np.clip(rng.normal(0.55, 0.08, hidden.sum()), 0, 1)
    truth = np.where(hidden, 3, truth)
    return X, dice, truth, hidden


def assert_recovered(labels, dice, truth, hidden):
    """The hidden failure group comes out as pure slices: slices > 90 % hidden cover > 90 % of it, worst first.

    With gamma=10 the performance term outweighs the embedding, so the other slices may group
    well-performing samples across blobs (and the failure group may split in two pure halves);
    only the failure slices are the point here.
    """
    ids = np.unique(labels)
    pure = [k for k in ids if hidden[labels == k].mean() > 0.9]
    assert np.isin(labels[hidden], pure).mean() > 0.9
    assert min(ids, key=lambda k: dice[labels == k].mean()) in pure


def test_recovers_planted_slices_including_a_performance_only_one():
    X, dice, truth, hidden = planted()
    sf = SliceFinder(n_slices=6, gamma=10, reduce=None, random_state=0).fit(X, dice)
    assert_recovered(sf.labels_, dice, truth, hidden)
    # gamma=1 weighs the embedding more: the planted blobs themselves come out as slices
    mild = SliceFinder(n_slices=4, gamma=1, reduce=None, random_state=0).fit(X, dice)
    assert adjusted_rand_score(np.where(truth == 3, 0, truth), mild.labels_) > 0.9
    # without the performance term the hidden failures cannot be separated from their blob
    plain = SliceFinder(n_slices=4, gamma=0, reduce=None, random_state=0).fit(X, dice)
    best_purity = max(hidden[plain.labels_ == k].mean() for k in range(4) if (plain.labels_ == k).any())
    assert best_purity < 0.6


def test_gamma_zero_is_sklearns_diagonal_gmm():
    X, dice, _, _ = planted(1)
    sf = SliceFinder(n_slices=3, gamma=0, reduce=None, tol=1e-6, max_iter=500, random_state=0)
    sf.fit(X, dice)
    Z = sf.embedding_
    init = sf._m_step(Z, dice[:, None], sf._init_resp(Z, dice[:, None],
                                                       int(np.random.default_rng(0).integers(2 ** 31 - 1)), 0.0))
    gm = GaussianMixture(3, covariance_type="diag", reg_covar=sf.reg_covar, tol=1e-6, max_iter=500,
                         weights_init=init[0], means_init=init[1], precisions_init=1 / init[2]).fit(Z)
    np.testing.assert_allclose(sf.means_, gm.means_, atol=1e-8)
    np.testing.assert_allclose(sf.covariances_, gm.covariances_, rtol=1e-7)
    np.testing.assert_allclose(sf.weights_, gm.weights_, atol=1e-10)
    assert sf.n_iter_ == gm.n_iter_
    assert sf.lower_bound_ == pytest.approx(gm.lower_bound_, abs=1e-9)
    np.testing.assert_array_equal(sf.labels_, gm.predict(Z))


@pytest.mark.parametrize("model", ["gaussian", "soft_categorical"])
def test_deterministic_and_finite_with_extreme_scores(model):
    X, dice, _, _ = planted(2)
    dice[:30] = 0.0
    dice[30:60] = 1.0
    X[60:90] = X[60]  # a block of identical points: a degenerate component must stay finite
    a = SliceFinder(n_slices=8, performance_model=model, reduce=None, random_state=3).fit(X, dice)
    b = SliceFinder(n_slices=8, performance_model=model, reduce=None, random_state=3).fit(X, dice)
    np.testing.assert_array_equal(a.labels_, b.labels_)
    np.testing.assert_array_equal(a.proba_, b.proba_)
    for arr in (a.proba_, a.means_, a.covariances_, a.weights_):
        assert np.isfinite(arr).all()
    np.testing.assert_allclose(a.proba_.sum(1), 1.0)


def test_several_performance_columns_and_predict():
    X, dice, truth, hidden = planted(4)
    ppv = np.where(hidden, 0.5, 0.97)
    sf = SliceFinder(n_slices=6, reduce=None, random_state=0).fit(X, np.c_[dice, ppv])
    assert sf.perf_params_["means"].shape == (6, 2)
    assert_recovered(sf.labels_, dice, truth, hidden)
    np.testing.assert_array_equal(sf.predict(X[:5], np.c_[dice, ppv][:5]), sf.labels_[:5])
    assert sf.predict_proba(X[:1], np.c_[dice, ppv][:1]).shape == (1, 6)  # fewer samples than slices is fine here


def test_soft_categorical_is_domino_formula():
    sf = SliceFinder(n_slices=2, performance_model="soft_categorical", gamma=1)
    d = np.array([[0.0], [1.0], [0.25]])
    p = np.array([[0.2], [0.9]])
    expected = np.log(np.array([[0.8, 0.1], [0.2, 0.9], [0.25 * 0.2 + 0.75 * 0.8, 0.25 * 0.9 + 0.75 * 0.1]]))
    np.testing.assert_allclose(sf._soft_cat_log_lik(d, p), expected)


def test_pca_reduction_and_params():
    X, dice, truth, _ = planted(5)
    Xw = np.hstack([X, np.random.default_rng(0).normal(0, 0.01, (len(X), 20))])
    sf = SliceFinder(n_slices=4, reduce="pca", n_components=4, random_state=0).fit(Xw, dice)
    assert sf.embedding_.shape == (len(X), 4)
    assert sf.get_params()["n_slices"] == 4 and "reduce='pca'" in repr(sf)
    with pytest.raises(ValueError, match="Invalid parameter"):  # scikit-learn's BaseEstimator.set_params
        sf.set_params(slices=3)


@pytest.mark.parametrize("kwargs,X,y,pattern", [
    ({}, np.zeros((20, 3)), np.r_[np.full(19, 0.9), np.nan], "performance contains NaN"),
    ({}, np.zeros((20, 3)), np.full(19, 0.9), "20 rows but performance has 19"),
    ({}, np.zeros((5, 3)), np.full(5, 0.9), "5 samples but n_slices=10"),
    ({}, np.zeros((20, 3, 2)), np.full(20, 0.9), "embeddings must be 1-d or 2-d"),
    ({}, np.zeros((20, 3)), np.full(20, 1.5), r"must lie in \[0, 1\]"),
    ({"gamma": -1}, np.zeros((20, 3)), np.full(20, 0.9), "gamma must be"),
    ({"performance_model": "beta"}, np.zeros((20, 3)), np.full(20, 0.9), "performance_model must be"),
])
def test_bad_input_is_a_clear_error(kwargs, X, y, pattern):
    with pytest.raises(ValueError, match=pattern):
        SliceFinder(reduce=None, **kwargs).fit(X, y)


def test_predict_before_fit():
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError, match="not fitted"):
        SliceFinder().predict(np.zeros((3, 2)), np.zeros(3))


def test_baselines():
    X, dice, truth, hidden = planted(6)
    km = KMeansSlicer(n_slices=3, reduce=None).fit(X)
    assert adjusted_rand_score(np.where(truth == 3, 0, truth), km.labels_) > 0.9
    er = ErrorRankingSlicer(n_slices=10).fit(None, dice)
    assert np.bincount(er.labels_).tolist() == [36] * 10
    assert dice[er.labels_ == 0].max() <= dice[er.labels_ == 1].min()  # slice 0 holds the worst samples
    assert (er.labels_[hidden] == 0).all()  # the hidden failures are the worst-ranked samples


@pytest.mark.slow
def test_umap_path_end_to_end():
    X, dice, truth, hidden = planted(7, n_per=60)
    X = np.hstack([X, np.random.default_rng(1).normal(0, 0.1, (len(X), 28))])  # 32-d input
    a = SliceFinder(n_slices=6, random_state=0).fit(X, dice)
    b = SliceFinder(n_slices=6, random_state=0).fit(X, dice)
    assert a.embedding_.shape == (len(X), 8)
    np.testing.assert_array_equal(a.labels_, b.labels_)  # UMAP with a random_state is deterministic
    assert_recovered(a.labels_, dice, truth, hidden)


def sklearn_gmm_with(sf):
    """A scikit-learn diagonal GaussianMixture holding ``sf``'s fitted mixture parameters."""
    gm = GaussianMixture(len(sf.weights_), covariance_type="diag")
    gm.weights_, gm.means_, gm.covariances_ = sf.weights_, sf.means_, sf.covariances_
    gm.precisions_cholesky_ = 1 / np.sqrt(sf.covariances_)
    return gm


def test_bic_at_gamma_zero_is_sklearns():
    X, dice, _, _ = planted(1)
    sf = SliceFinder(n_slices=3, gamma=0, reduce=None, tol=1e-6, max_iter=500, random_state=0).fit(X, dice)
    Z = sf.embedding_
    # the formula, at the same parameters
    gm = sklearn_gmm_with(sf)
    assert sf._n_parameters() == gm._n_parameters() == 2 + 2 * 3 * 4
    np.testing.assert_allclose(sf.score_samples(X, dice), gm.score_samples(Z), rtol=1e-12)
    assert sf.score(X, dice) == pytest.approx(gm.score(Z), rel=1e-12)
    assert sf.bic(X, dice) == pytest.approx(gm.bic(Z), rel=1e-10)
    assert sf.bic(X) == sf.bic(X, dice) == sf.bic(X, dice, tempered=False)  # no performance term at gamma=0
    # and sklearn's own fit from the same start reaches the same BIC
    init = sf._m_step(Z, dice[:, None], sf._init_resp(Z, dice[:, None],
                                                       int(np.random.default_rng(0).integers(2 ** 31 - 1)), 0.0))
    fitted = GaussianMixture(3, covariance_type="diag", reg_covar=sf.reg_covar, tol=1e-6, max_iter=500,
                             weights_init=init[0], means_init=init[1], precisions_init=1 / init[2]).fit(Z)
    assert sf.bic(X, dice) == pytest.approx(fitted.bic(Z), rel=1e-6)


@pytest.mark.parametrize("model", ["gaussian", "soft_categorical"])
def test_bic_with_performance_is_the_tempered_joint_likelihood(model):
    from scipy.special import logsumexp

    from seg4seg_utils.discovery.slicer import _diag_log_gaussian

    X, dice, _, hidden = planted(3)
    Y = np.c_[dice, np.where(hidden, 0.5, 0.97)]
    sf = SliceFinder(n_slices=4, gamma=10, performance_model=model, reduce=None, random_state=0).fit(X, Y)
    Z, Ys = sf._transform_inputs(X, Y)
    if model == "gaussian":
        perf = _diag_log_gaussian(Ys, sf.perf_params_["means"], sf.perf_params_["variances"])
        n_perf = 2 * 4 * 2
    else:
        p = sf.perf_params_["p"]
        perf = np.log(Ys[:, None, :] * p[None] + (1 - Ys[:, None, :]) * (1 - p[None])).sum(axis=2)
        n_perf = 4 * 2
    base = np.log(sf.weights_) + _diag_log_gaussian(Z, sf.means_, sf.covariances_)
    n_par = 3 + 2 * 4 * 4 + n_perf
    assert sf._n_parameters() == n_par and sf._n_parameters(False) == n_par - n_perf
    for gamma, tempered in ((10.0, True), (1.0, False)):
        ll = logsumexp(base + gamma * perf, axis=1)
        np.testing.assert_allclose(sf.score_samples(X, Y, tempered=tempered), ll, rtol=1e-12)
        assert sf.bic(X, Y, tempered=tempered) == pytest.approx(-2 * ll.sum() + n_par * np.log(len(X)), rel=1e-12)
    assert sf.score(X, Y) == sf.score(X, performance=Y) == pytest.approx(sf.score_samples(X, Y).mean())
    # without performance: the embedding mixture alone, performance parameters not counted
    ll_z = logsumexp(base, axis=1)
    assert sf.bic(X) == pytest.approx(-2 * ll_z.sum() + (n_par - n_perf) * np.log(len(X)), rel=1e-12)


def test_score_before_fit():
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError, match="not fitted"):
        SliceFinder().bic(np.zeros((3, 2)), np.zeros(3))
