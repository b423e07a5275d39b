"""The slicers are scikit-learn estimators: scikit-learn's own ``check_estimator`` runs on them.

What is left out, and why:

* ``SliceFinder`` runs the checks with ``score_transform="identity"``: with the default logit transform the
  performance scores must lie in [0, 1], and scikit-learn's checks pass class labels 0..2 as ``y`` (every check
  that fits with ``y`` then stops at that ValueError, by design).
* ``reduce=None`` throughout: UMAP on each check's few samples would only slow the checks down; the reduction
  is :func:`seg4seg_utils.discovery.reduce.reduce_embeddings`, tested on its own.
* ``ErrorRankingSlicer`` is not checked: it ignores the embeddings and needs ``y``, while scikit-learn's
  clusterer checks fit without ``y``. ``PatchSliceFinder`` is not checked either: its ``X`` is 3-d patch
  embeddings (images x patches x features). Both share the base class, so ``clone``/``get_params`` are tested.
"""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.utils.estimator_checks import check_estimator

from seg4seg_utils.discovery.patches import PatchSliceFinder
from seg4seg_utils.discovery.slicer import BaseSlicer, ErrorRankingSlicer, KMeansSlicer, SliceFinder


@pytest.mark.parametrize("estimator", [SliceFinder(n_slices=3, reduce=None, score_transform="identity"),
                                       KMeansSlicer(n_slices=3, reduce=None)], ids=lambda e: type(e).__name__)
def test_scikit_learns_estimator_checks_pass(estimator):
    check_estimator(estimator)  # raises on the first failing check


@pytest.mark.parametrize("cls", [SliceFinder, KMeansSlicer, ErrorRankingSlicer, PatchSliceFinder])
def test_every_slicer_shares_the_base_and_clones(cls):
    est = cls(n_slices=4)
    assert isinstance(est, BaseSlicer)
    twin = clone(est)
    assert twin is not est and twin.get_params() == est.get_params()
    assert clone(est.set_params(n_slices=5)).n_slices == 5
    with pytest.raises(ValueError, match="Invalid parameter"):
        est.set_params(not_a_parameter=1)


def blobs(n=60, seed=0):
    rng = np.random.default_rng(seed)
    X = np.vstack([rng.normal(c, 0.3, size=(n // 3, 4)) for c in (0, 3, 6)])
    dice = np.clip(np.r_[np.full(n // 3, 0.5), np.full(2 * n // 3, 0.95)] + rng.normal(0, 0.02, n), 0, 1)
    return X, dice


def test_performance_as_y_or_keyword_gives_the_same_slices():
    X, dice = blobs()
    a = SliceFinder(n_slices=3, reduce=None).fit(X, dice)
    b = SliceFinder(n_slices=3, reduce=None).fit(X, performance=dice)
    assert np.array_equal(a.labels_, b.labels_) and np.array_equal(a.proba_, b.proba_)
    assert np.array_equal(SliceFinder(n_slices=3, reduce=None).fit_predict(X, dice), a.labels_)
    with pytest.raises(ValueError, match="given twice"):
        SliceFinder(n_slices=3, reduce=None).fit(X, dice, performance=dice)


def test_without_performance_it_is_the_plain_mixture():
    """fit(X) has no performance term: the same fit as gamma=0 with any performance."""
    X, dice = blobs()
    plain = SliceFinder(n_slices=3, reduce=None).fit(X)
    gmm = SliceFinder(n_slices=3, gamma=0.0, reduce=None).fit(X, dice)
    assert np.array_equal(plain.labels_, gmm.labels_) and np.allclose(plain.proba_, gmm.proba_)
    assert plain.n_features_in_ == 4
    assert np.array_equal(plain.predict(X), plain.labels_)
