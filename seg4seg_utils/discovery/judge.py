"""Fit and judge: the one step every study runs (slice reduced embeddings, then apply the protocol).

The EM loop lives in :mod:`.slicer`, the rules in :mod:`.protocol`, the reduction and its cache in
:mod:`.reduce`; this module joins them once, so an image-level study is three calls::

    Z = reduced(X, settings, seed, cache_dir)                       # UMAP-8, cached by content
    slicer, report = fit_and_judge(Z, Y, attribute, n_slices=K, settings=settings, seed=seed)
    row = report.to_row()                                           # one set of column names

``attribute=None`` gives a label-free report (what a user auditing their own model gets): no purity, no
winner, and ``report.focus_slice`` is the worst eligible slice.

``k, table = choose_n_slices(Z, Y, settings=settings)`` picks the number of slices by BIC (seg4seg and gmm
only: the baselines have no likelihood), scoring each tempered fit by the proper joint density of (z, y).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np
import pandas as pd

from seg4seg_utils.discovery.protocol import SliceReport, evaluate_slices
from seg4seg_utils.discovery.reduce import as_matrix, cached_reduction

__all__ = ["METHODS", "SlicerSettings", "make_slicer", "reduced", "fit_and_judge", "choose_n_slices"]

METHODS = ("seg4seg", "gmm", "kmeans", "error_ranking")


@dataclass(frozen=True)
class SlicerSettings:
    """Slicer hyper-parameters shared by every fit of a study (``n_slices=None``: the case's default)."""

    gamma: float = 10.0
    n_slices: int | None = None
    performance_model: str = "gaussian"
    score_transform: str = "logit"
    reduce: str | None = "umap"
    n_components: int = 8
    method: str = "seg4seg"   # seg4seg | gmm (gamma=0) | kmeans | error_ranking


def make_slicer(settings: SlicerSettings, n_slices: int, seed: int):
    """The unfitted slicer ``settings.method`` names, for already reduced embeddings (``reduce=None``)."""
    # imported here: the package's top level (which reads SlicerSettings) stays free of scikit-learn
    from seg4seg_utils.discovery.slicer import ErrorRankingSlicer, KMeansSlicer, SliceFinder

    if settings.method not in METHODS:
        raise ValueError(f"unknown slicer method {settings.method!r}; choose one of {METHODS}")
    if settings.method == "kmeans":
        return KMeansSlicer(n_slices=n_slices, reduce=None, random_state=seed)
    if settings.method == "error_ranking":
        return ErrorRankingSlicer(n_slices=n_slices)
    gamma = 0.0 if settings.method == "gmm" else settings.gamma
    return SliceFinder(n_slices=n_slices, gamma=gamma, performance_model=settings.performance_model,
                       score_transform=settings.score_transform, reduce=None, random_state=seed)


def reduced(X: np.ndarray, settings: SlicerSettings, seed: int,
            cache_dir: str | os.PathLike | None = None) -> np.ndarray:
    """``settings``' reduction of the embeddings ``X`` (cached under ``cache_dir`` when given)."""
    return cached_reduction(X, settings.reduce, settings.n_components, seed, cache_dir)


def fit_and_judge(Z: np.ndarray, performance: Any, attribute: Any = None, *, n_slices: int,
                  settings: SlicerSettings = SlicerSettings(), seed: int = 0) -> tuple[Any, SliceReport]:
    """Fit ``settings``' slicer on reduced embeddings ``Z`` and per-image ``performance`` (n or n x m; the
    first column is the one judged), then judge its slices against ``attribute`` (None: label-free).

    Returns (fitted slicer, :class:`~.protocol.SliceReport`). The attribute is read only by the judgement.
    """
    Y = as_matrix(performance, "performance")
    slicer = make_slicer(settings, n_slices, seed).fit(Z, Y)
    return slicer, evaluate_slices(slicer.labels_, Y[:, 0], attribute, proba=slicer.proba_, n_slices=n_slices)


def choose_n_slices(Z: np.ndarray, performance: Any, candidates: Iterable[int] = range(2, 21), *,
                    settings: SlicerSettings = SlicerSettings(), seed: int = 0) -> tuple[int, pd.DataFrame]:
    """The number of slices with the lowest BIC among ``candidates``, and the table of every fit.

    Fits ``make_slicer(settings, k, seed)`` (the standard fit, as :func:`fit_and_judge` runs it) on reduced
    embeddings ``Z`` and ``performance`` for each ``k``; candidates above ``n_samples // 2`` are skipped. Only
    for the likelihood-based methods ``"seg4seg"`` and ``"gmm"``.

    The criterion is ``slicer.bic(Z, Y, tempered=False)``: each fit (found by the tempered EM at
    ``settings.gamma``) is scored by the *proper* joint density ``sum_s pi_s N(z|s) P(y|s)`` plus the usual
    ``n_parameters * log(n)``; for ``"gmm"`` that is the plain diagonal GMM's BIC. The tempered likelihood
    itself is no use here: for ``gamma > 1`` its BIC keeps falling as slices are added and picks the largest
    candidate (see :meth:`.SliceFinder.bic`). Parameters come from the tempered fit, not the joint maximum
    likelihood, so this is a penalised-likelihood comparison of the slicings actually used, at that gamma.
    Each k gets one standard fit (a single k-means start): a poor local optimum at the true k inflates its
    BIC and can move the choice up by one or two (four planted clusters, ten seeds: gmm picked 4 eight
    times, 5 and 6 once each); compare a few seeds when it matters.

    Returns ``(k, table)``; ``table`` has one row per fitted candidate, in the order given, with columns
    ``n_slices``, ``bic`` (the criterion), ``lower_bound`` (the tempered EM objective per sample),
    ``converged`` and ``chosen`` (True on the chosen row only; a tie goes to the first candidate).
    """
    if settings.method not in ("seg4seg", "gmm"):
        raise ValueError(f"choose_n_slices compares likelihoods (BIC), so it needs method 'seg4seg' or 'gmm'; "
                         f"{settings.method!r} has no likelihood - choose its number of slices another way")
    Y = as_matrix(performance, "performance")
    n = len(Y)
    ks = [int(k) for k in candidates]
    usable = [k for k in ks if 1 <= k <= n // 2]
    if not usable:
        raise ValueError(f"no candidate number of slices is usable with {n} samples: need 1 <= k <= "
                         f"n_samples // 2 = {n // 2}, got candidates {ks}")
    rows = []
    for k in usable:
        slicer = make_slicer(settings, k, seed).fit(Z, Y)
        rows.append({"n_slices": k, "bic": slicer.bic(Z, Y, tempered=False),
                     "lower_bound": float(slicer.lower_bound_), "converged": bool(slicer.converged_)})
    table = pd.DataFrame(rows)
    best = int(np.argmin(table["bic"].to_numpy()))
    table["chosen"] = np.arange(len(table)) == best
    return int(table.loc[best, "n_slices"]), table
