"""Fit and judge: the one step every study runs (slice reduced embeddings, then apply the protocol).

The EM loop lives in :mod:`.slicer`, the rules in :mod:`.protocol`, the reduction and its cache in
:mod:`.reduce`; this module joins them once, so an image-level study is three calls::

    Z = reduced(X, settings, seed, cache_dir)                       # UMAP-8, cached by content
    slicer, report = fit_and_judge(Z, Y, attribute, n_slices=K, settings=settings, seed=seed)
    row = report.to_row()                                           # one set of column names

``attribute=None`` gives a label-free report (what a user auditing their own model gets): no purity, no
winner, and ``report.focus_slice`` is the worst eligible slice.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from seg4seg_utils.discovery.protocol import SliceReport, evaluate_slices
from seg4seg_utils.discovery.reduce import as_matrix, cached_reduction

__all__ = ["METHODS", "SlicerSettings", "make_slicer", "reduced", "fit_and_judge"]

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
