"""UMAP's small-data distances in numba: the matrix scikit-learn's loop gives, bit for bit, and the same fits."""
import numpy as np
import pytest
from sklearn.metrics import pairwise_distances as sklearn_pairwise_distances

from seg4seg_utils.discovery import umap_distances
from seg4seg_utils.discovery.reduce import import_umap, reduce_embeddings


def clustered(n, d, dtype, seed=0):
    rng = np.random.default_rng(seed)
    return (np.repeat(rng.normal(size=(4, d)), n // 4, axis=0) + rng.normal(size=(n // 4 * 4, d))).astype(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_same_matrix_as_sklearns_loop_bit_for_bit(dtype):
    from umap.distances import euclidean

    X = clustered(240, 1280, dtype)
    ours = umap_distances.pairwise_distances(X, metric=euclidean)
    theirs = sklearn_pairwise_distances(X, metric=euclidean)
    assert ours.dtype == theirs.dtype == dtype
    assert np.array_equal(ours, theirs)


def test_anything_else_goes_to_sklearn(monkeypatch):
    from umap.distances import euclidean, manhattan

    calls = []
    monkeypatch.setattr(umap_distances, "sklearn_pairwise_distances",
                        lambda X, Y=None, metric=None, **kw: calls.append(metric) or "sklearn")
    X = clustered(20, 8, np.float32)
    bad = X.copy()
    bad[0, 0] = np.nan
    for call in (lambda: umap_distances.pairwise_distances(X, X, metric=euclidean),     # a second matrix
                 lambda: umap_distances.pairwise_distances(X, metric=manhattan),        # another metric
                 lambda: umap_distances.pairwise_distances(X, metric=euclidean, p=2),   # keyword arguments
                 lambda: umap_distances.pairwise_distances(X[:, ::2], metric=euclidean),  # not C-contiguous
                 lambda: umap_distances.pairwise_distances(bad, metric=euclidean)):     # NaN: sklearn raises
        assert call() == "sklearn"
    assert len(calls) == 5
    assert umap_distances.pairwise_distances(X, metric=euclidean).shape == (20, 20)
    assert len(calls) == 5, "the plain case stays in numba"


def test_umap_fits_use_it_and_give_the_same_embedding(monkeypatch):
    umap = import_umap()
    assert umap.umap_.pairwise_distances is umap_distances.pairwise_distances, "import_umap installs it"
    X = clustered(400, 64, np.float32, seed=1)
    used = []
    monkeypatch.setattr(umap_distances, "_upper_triangle",
                        lambda X_, out, real=umap_distances._upper_triangle: used.append(len(X_)) or real(X_, out))
    ours = reduce_embeddings(X, "umap", 8, 3)[1]
    assert used == [400], "the fit computed its distances here"
    # umap-learn as it comes: import_umap (called by every fit) now leaves scikit-learn's function in place
    monkeypatch.setattr(umap_distances, "install", lambda module: setattr(module.umap_, "pairwise_distances",
                                                                          sklearn_pairwise_distances))
    used.clear()
    theirs = reduce_embeddings(X, "umap", 8, 3)[1]
    assert used == [] and umap.umap_.pairwise_distances is sklearn_pairwise_distances
    assert np.array_equal(ours, theirs)
