"""Uncertainty of detection rates: counts and Wilson intervals beside every rate a table or figure shows.

A detection rate over 5 slicer seeds can only be 0, 0.2, ..., 1, and 4/5 is compatible with a true rate
anywhere from about 0.38 to 0.96. Every detection rate the module reports therefore carries its count
(``k`` successes of ``n`` fits) and a 95 % Wilson score interval (Wilson 1927, "Probable inference, the law
of succession, and statistical inference", JASA 22:209-212; recommended over the normal approximation for
small n by Brown, Cai & DasGupta 2001, Statistical Science 16:101-133). It stays inside [0, 1] and is not
degenerate at k = 0 or k = n, which the plain normal ("Wald") interval is.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import pandas as pd

__all__ = ["RATE_NOTE", "wilson_interval", "with_detection_counts", "rate_label", "format_rate", "detection_labels", "detection_display",
           "detection_pivot"]

COUNT_COLUMNS = ("k", "n", "ci_low", "ci_high")
# the legend written above every markdown table of rate_label texts
RATE_NOTE = ("Each detection rate is shown as `rate (k/n, low-high)`: k of n slicer fits met the criterion, "
             "and low-high is its 95 % Wilson interval.")


def wilson_interval(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """The Wilson score interval ``(low, high)`` for ``k`` successes in ``n`` trials ((nan, nan) when n = 0).

    Computed by :meth:`scipy.stats.binomtest(k, n).proportion_ci(method="wilson")
    <scipy.stats._result_classes.BinomTestResult.proportion_ci>`.
    """
    if int(k) != k or int(n) != n or not 0 <= k <= n:
        raise ValueError(f"need integers 0 <= k <= n, got k={k}, n={n}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    if n == 0:
        return float("nan"), float("nan")
    from scipy.stats import binomtest

    ci = binomtest(int(k), int(n)).proportion_ci(confidence_level=confidence, method="wilson")
    return float(ci.low), float(ci.high)


def with_detection_counts(table: pd.DataFrame, rate: str = "detection_rate", n: str = "n_seeds",
                          confidence: float = 0.95) -> pd.DataFrame:
    """``table`` with ``k``, ``n``, ``ci_low``, ``ci_high`` inserted right after its ``rate`` column.

    ``rate`` is a share of ``n`` fits (a mean of booleans), so ``k = rate * n`` is exact up to rounding.
    """
    counts = table[n].astype(int).to_numpy()
    k = np.rint(table[rate].to_numpy(float) * counts).astype(int)
    ci = np.array([wilson_interval(a, b, confidence) for a, b in zip(k, counts)]).reshape(-1, 2)
    out = table.drop(columns=[c for c in COUNT_COLUMNS if c in table.columns])  # recomputed, never duplicated
    at = out.columns.get_loc(rate) + 1
    for offset, (col, values) in enumerate(zip(COUNT_COLUMNS, (k, counts, ci[:, 0], ci[:, 1]))):
        out.insert(at + offset, col, values)
    return out


def rate_label(k: int, n: int, confidence: float = 0.95) -> str:
    """A rate with its count and interval, e.g. ``"0.8 (4/5, 0.38-0.96)"`` ("-" when n = 0)."""
    if n == 0:
        return "-"
    low, high = wilson_interval(k, n, confidence)
    return f"{format_rate(k / n)} ({k}/{n}, {low:.2f}-{high:.2f})"


def format_rate(rate: float) -> str:
    """Two decimals, one when the second is 0: 0.8, 0.47, 1.0 (a share of 5 seeds reads as it is)."""
    text = f"{rate:.2f}"
    return text[:-1] if text.endswith("0") else text


def detection_labels(table: pd.DataFrame, k: str = "k", n: str = "n") -> pd.Series:
    """One :func:`rate_label` per row of a table that has count columns (see :func:`with_detection_counts`)."""
    return pd.Series([rate_label(int(a), int(b)) for a, b in zip(table[k], table[n])], index=table.index,
                     dtype=object)


def detection_display(table: pd.DataFrame, rate: str = "detection_rate") -> pd.DataFrame:
    """For markdown: ``rate`` replaced by its :func:`rate_label` text, the separate count columns dropped."""
    out = table.copy()
    out[rate] = detection_labels(out)
    return out.drop(columns=[c for c in COUNT_COLUMNS if c in out.columns])


def detection_pivot(table: pd.DataFrame, index: str, columns: str, total: str | None = "mean",
                    order: Sequence | None = None) -> pd.DataFrame:
    """``index`` x ``columns`` of :func:`rate_label` texts, the counts pooled (summed) over the rows in each cell.

    ``total`` adds a column pooled over ``columns`` too. With the same ``n`` in every row the pooled rate is
    the mean of the rates (what ``pivot_table`` shows); the count and interval then describe all the fits.
    """
    k = table.pivot_table(index=index, columns=columns, values="k", aggfunc="sum")
    n = table.pivot_table(index=index, columns=columns, values="n", aggfunc="sum")
    if total is not None:
        k[total], n[total] = k.sum(axis=1), n.sum(axis=1)
    out = pd.DataFrame({c: [rate_label(int(a), int(b)) if not (math.isnan(a) or math.isnan(b)) else "-"
                            for a, b in zip(k[c], n[c])] for c in k.columns}, index=k.index)
    out.columns.name = columns
    return out.loc[list(order)] if order is not None else out
