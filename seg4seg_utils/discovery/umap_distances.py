"""UMAP's all-pairs distances for small data, computed by the same numba function without sklearn's Python loop.

For fewer than 4,096 points umap-learn computes every pairwise distance with
``sklearn.metrics.pairwise_distances(X, metric=umap.distances.euclidean)``. A callable metric sends scikit-learn
down its generic path: a Python loop over the n(n-1)/2 pairs that slices two rows and calls the numba function
once per pair. On the 3,200 patch embeddings of a cpu-preset case (chapter 09), on a 2-core AMD EPYC Zen 4, that
loop took 7.3 s and this module 0.9 s for the same matrix; a process fitting one such UMAP took 13.2 s with the
loop and 7.0 s without it (medians of 3 runs).

:func:`pairwise_distances` fills the same upper triangle with the same numba function, called from numba, then
mirrors it and fills the diagonal as scikit-learn does (``out + out.T``, then ``metric(x, x)``), in the dtype
scikit-learn gives (the input's float type). The matrix is the same, bit for bit, and so is every UMAP fit
(``tests/test_umap_distances.py``; ``tests/test_reproducible.py`` checks a fit against its reference digest).
Anything else (another metric, keyword arguments, a second matrix, sparse or non-finite input) goes to
scikit-learn unchanged. :func:`~seg4seg_utils.discovery.reduce.import_umap` installs it in ``umap.umap_``.
"""
from __future__ import annotations

import numba
import numpy as np
from sklearn.metrics import pairwise_distances as sklearn_pairwise_distances
from umap.distances import euclidean

__all__ = ["pairwise_distances", "install"]


@numba.njit(cache=True)
def _upper_triangle(X, out):
    """``out[i, j] = euclidean(X[i], X[j])`` for every i < j (numba casts to ``out``'s dtype, as numpy does)."""
    n = X.shape[0]
    for i in range(n):
        for j in range(i + 1, n):
            out[i, j] = euclidean(X[i], X[j])


def _takes_fast_path(X, Y, metric, kwds) -> bool:
    return (Y is None and metric is euclidean and not kwds and isinstance(X, np.ndarray) and X.ndim == 2
            and X.dtype in (np.float32, np.float64) and X.flags.c_contiguous and bool(np.isfinite(X).all()))


def pairwise_distances(X, Y=None, metric="euclidean", **kwds):
    """``sklearn.metrics.pairwise_distances`` with umap's euclidean metric on one dense finite matrix computed in
    numba (same numbers); any other call is scikit-learn's."""
    if not _takes_fast_path(X, Y, metric, kwds):
        return sklearn_pairwise_distances(X, Y, metric=metric, **kwds)
    out = np.zeros((X.shape[0], X.shape[0]), dtype=X.dtype)
    _upper_triangle(X, out)
    out = out + out.T
    for i in range(X.shape[0]):
        out[i, i] = euclidean(X[i], X[i])
    return out


def install(umap_module) -> None:
    """Make umap-learn's fit (``umap.umap_``, which imported scikit-learn's function by name) use
    :func:`pairwise_distances`."""
    umap_module.umap_.pairwise_distances = pairwise_distances
