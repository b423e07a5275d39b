"""The slice evaluation protocol of the paper (Sec. 4.3-4.4): does a slicer isolate the hidden failure attribute?

Inputs, for the n test images:

* ``labels``      (n,) int   - hard slice assignment (argmax of the slicer's probabilities), ids 0..K-1;
* ``proba``       (n, K)     - slice probabilities (optional; only precision@k needs them);
* ``performance`` (n,) float - per-image score such as Dice (lower = worse), finite;
* ``attribute``   (n,) bool  - True where the image carries the hidden failure attribute (0/1 also accepted).

Rules (defaults: ``p_theta = 0.8``, ``q_theta = 0.4``, ``n_min_frac = 0.02``, ``k = 10``, ``omega2_theta = 0.14``):

1. **Slices.** K = ``n_slices`` if given, else ``proba.shape[1]`` if given, else ``labels.max() + 1``. Every id
   0..K-1 gets a row, empty slices included (size 0, ``mean_perf`` and ``purity`` NaN, never eligible).
2. **Purity** of a slice = fraction of its members that carry the attribute.
3. **Minimum size.** ``N_min = max(1, ceil(n_min_frac * n))`` (2 % of the test set; ceil, so 2.4 samples' worth
   needs 3: n=50 -> 1, n=120 -> 3, n=200 -> 4). The product is rounded to 9 decimals before the ceil so that
   float noise (0.07 * 100 = 7.000000000000001) does not add a sample. A slice is **eligible** when size >= N_min.
4. **Bottom-q.** Only eligible slices are ranked, by mean performance ascending (rank 1 = worst), ties by
   ``method="min"`` (tied slices share the lower rank; means are compared after rounding to 12 decimals so that
   summation order cannot split a tie). A slice is in the **bottom** when
   ``rank <= ceil(q_theta * K_eligible)`` (same 9-decimal rounding), so every slice tied at the boundary counts.
   Ineligible slices have no rank (``<NA>``) and are never in the bottom.
5. **Success criterion.** Some slice is eligible, in the bottom-q, and has purity > ``p_theta`` (strict: purity
   exactly 0.8 fails). The **winning slice** is the qualifying slice with the highest purity; ties go to the
   lower mean performance, then the lower slice id. ``winning_slice`` is None when nothing qualifies.
6. **Separate passes** (paper Fig. 3b), reported beside the criterion:
   ``perf_pass`` = omega^2 of performance across the hard slices (only non-empty slices are groups) >
   ``omega2_theta`` (0.14, Cohen's "large"; a NaN omega^2 fails); ``purity_pass`` = the maximum purity over the
   eligible slices > ``p_theta`` (False when no slice is eligible). Neither looks at the bottom-q rule.
7. **Precision@k** (DOMINO-style). For each slice j, the min(k, n) samples with the highest ``proba[:, j]``
   (ties: lower sample index first) are taken and precision = fraction carrying the attribute. The report gives
   the maximum over slices and the slice achieving it (lowest id on ties). Without ``proba`` both are NaN/None.
   Slice membership (``labels``) plays no part here; ``labels`` is not checked to be the argmax of ``proba``.

omega^2 is the classic equal-variance one-way ANOVA effect size
``(SS_between - (k-1) * MS_within) / (SS_total + MS_within)`` with ``MS_within = SS_within / (N - k)``; it can be
negative, and it is NaN when fewer than two groups are present, when N - k < 1, or when all values are equal.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["P_THETA", "Q_THETA", "N_MIN_FRAC", "K_PRECISION", "OMEGA2_THETA", "omega_squared", "min_slice_size",
           "slice_table", "worst_slice", "precision_at_k", "SliceReport", "evaluate_slices"]

P_THETA: float = 0.8
Q_THETA: float = 0.4
N_MIN_FRAC: float = 0.02
K_PRECISION: int = 10
OMEGA2_THETA: float = 0.14

_TABLE_COLUMNS = ("slice", "size", "mean_perf", "purity", "eligible", "rank", "bottom")


# --------------------------------------------------------------------------- validation
def _ceil(x: float) -> int:
    """Ceiling after rounding to 9 decimals, so float noise such as 7.000000000000001 stays 7."""
    return int(math.ceil(round(float(x), 9)))


def _as_1d(x: Any, name: str) -> np.ndarray:
    """The argument as a 1-D array, or a ValueError naming it."""
    arr = np.asarray(x)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    return arr


def as_slice_labels(labels: Any, n: int | None = None) -> np.ndarray:
    """Non-negative integer slice ids (integral floats accepted) as int64."""
    arr = _as_1d(labels, "labels")
    if n is not None and len(arr) != n:
        raise ValueError(f"labels has {len(arr)} entries but performance has {n}")
    if arr.dtype.kind == "f":
        if not np.isfinite(arr).all() or not np.array_equal(arr, np.round(arr)):
            raise ValueError("labels must be integer slice ids (got non-integral or non-finite floats)")
    elif arr.dtype.kind not in "iu":
        raise ValueError(f"labels must be integer slice ids, got dtype {arr.dtype}")
    arr = arr.astype(np.int64)
    if len(arr) and arr.min() < 0:
        raise ValueError(f"labels must be non-negative slice ids, got minimum {arr.min()}")
    return arr


def _finite_float(arr: np.ndarray, name: str) -> np.ndarray:
    """``arr`` as float64 if numeric and finite, or a ValueError naming the argument."""
    if arr.dtype.kind not in "biuf":
        raise ValueError(f"{name} must be numeric, got dtype {arr.dtype}")
    arr = arr.astype(np.float64)
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} has {int((~np.isfinite(arr)).sum())} NaN/inf value(s)")
    return arr


def as_scores(values: Any, name: str = "performance") -> np.ndarray:
    """Finite float values (per-image scores), or a ValueError naming the argument."""
    return _finite_float(_as_1d(values, name), name)


def _check_attribute(attribute: Any, n: int) -> np.ndarray:
    """Boolean attribute flags (numeric 0/1 accepted)."""
    arr = _as_1d(attribute, "attribute")
    if len(arr) != n:
        raise ValueError(f"attribute has {len(arr)} entries but performance has {n}")
    if arr.dtype.kind == "b":
        return arr
    if arr.dtype.kind not in "iuf" or not np.isin(arr, (0, 1)).all():
        raise ValueError(f"attribute must be boolean or 0/1 (got dtype {arr.dtype} with other values)")
    return arr.astype(bool)


def _check_proba(proba: Any, n: int) -> np.ndarray:
    """A finite (n, K) float matrix of slice probabilities."""
    arr = np.asarray(proba)
    if arr.ndim != 2 or arr.shape[0] != n:
        raise ValueError(f"proba must have shape (n, K) = ({n}, K), got {arr.shape}")
    return _finite_float(arr, "proba")


def _check_unit(value: float, name: str, low_open: bool = False) -> float:
    """A threshold in [0, 1] (or (0, 1] with low_open)."""
    v = float(value)
    if not (0 < v <= 1 if low_open else 0 <= v <= 1):
        raise ValueError(f"{name} must be in {'(0, 1]' if low_open else '[0, 1]'}, got {value}")
    return v


def _inputs(labels: Any, performance: Any, attribute: Any, n_slices: int | None,
            proba: Any = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None, int]:
    """Validated (labels, performance, attribute, proba, K)."""
    perf = as_scores(performance, "performance")
    n = len(perf)
    if n == 0:
        raise ValueError("performance is empty; the protocol needs at least one sample")
    lab = as_slice_labels(labels, n)
    attr = _check_attribute(attribute, n)
    prob = None if proba is None else _check_proba(proba, n)
    k_seen = int(lab.max()) + 1
    if n_slices is not None:
        if int(n_slices) != n_slices or n_slices < 1:
            raise ValueError(f"n_slices must be a positive integer, got {n_slices}")
        n_slices = int(n_slices)
        if prob is not None and prob.shape[1] != n_slices:
            raise ValueError(f"proba has {prob.shape[1]} columns but n_slices={n_slices}")
    else:
        n_slices = prob.shape[1] if prob is not None else k_seen
    if k_seen > n_slices:
        raise ValueError(f"labels contains slice id {k_seen - 1} but there are only {n_slices} slices")
    return lab, perf, attr, prob, n_slices


# --------------------------------------------------------------------------- statistics
def omega_squared(values: Any, groups: Any) -> float:
    """One-way ANOVA omega^2 of ``values`` across ``groups`` (NaN if < 2 groups, N - k < 1 or all values equal)."""
    x = as_scores(values, "values")
    g = _as_1d(groups, "groups")
    if len(g) != len(x):
        raise ValueError(f"groups has {len(g)} entries but values has {len(x)}")
    if g.dtype.kind == "f" and np.isnan(g).any():
        raise ValueError("groups contains NaN")
    n = len(x)
    if n == 0:
        return float("nan")
    _, inv = np.unique(g, return_inverse=True)
    inv = inv.ravel()
    k = int(inv.max()) + 1
    if k < 2 or n - k < 1:
        return float("nan")
    counts = np.bincount(inv, minlength=k)
    means = np.bincount(inv, weights=x, minlength=k) / counts
    grand = x.mean()
    ss_between = float((counts * (means - grand) ** 2).sum())
    ss_within = float(((x - means[inv]) ** 2).sum())
    ss_total = ss_between + ss_within
    ms_within = ss_within / (n - k)
    den = ss_total + ms_within
    if den <= 0:
        return float("nan")
    return float((ss_between - (k - 1) * ms_within) / den)


def min_slice_size(n: int, n_min_frac: float = N_MIN_FRAC) -> int:
    """N_min = max(1, ceil(n_min_frac * n)) for a test set of n samples."""
    if int(n) != n or n < 0:
        raise ValueError(f"n must be a non-negative integer, got {n}")
    return max(1, _ceil(_check_unit(n_min_frac, "n_min_frac") * int(n)))


def slice_table(labels: Any, performance: Any, attribute: Any, n_slices: int | None = None,
                n_min: int | None = None, *, q_theta: float = Q_THETA,
                n_min_frac: float = N_MIN_FRAC) -> pd.DataFrame:
    """One row per slice id: slice, size, mean_perf, purity, eligible, rank (eligible only), bottom."""
    lab, perf, attr, _, k = _inputs(labels, performance, attribute, n_slices)
    q_theta = _check_unit(q_theta, "q_theta", low_open=True)
    if n_min is None:
        n_min = min_slice_size(len(perf), n_min_frac)
    elif int(n_min) != n_min or n_min < 1:
        raise ValueError(f"n_min must be a positive integer, got {n_min}")
    size = np.bincount(lab, minlength=k)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_perf = np.bincount(lab, weights=perf, minlength=k) / size
        purity = np.bincount(lab, weights=attr.astype(np.float64), minlength=k) / size
    eligible = size >= int(n_min)
    rank = pd.Series(np.round(mean_perf, 12)).where(eligible).rank(method="min").astype("Int64")
    cutoff = _ceil(q_theta * int(eligible.sum()))
    bottom = (rank <= cutoff).fillna(False).to_numpy(dtype=bool)
    return pd.DataFrame({"slice": np.arange(k), "size": size, "mean_perf": mean_perf, "purity": purity,
                         "eligible": eligible, "rank": rank, "bottom": bottom})


def worst_slice(labels: Any, performance: Any, n_slices: int | None = None, n_min: int | None = None, *,
                n_min_frac: float = N_MIN_FRAC) -> int:
    """The slice a user would look at first, chosen **without** the hidden attribute: the eligible slice (at least
    N_min members, rule 3) with the lowest mean performance, ties to the lower slice id; when no slice is eligible,
    the non-empty slice with the lowest mean performance.

    Why it exists: ``SliceReport.winning_slice`` is picked with the hidden attribute (purity), so a figure or an
    explanation built on it has seen the labels. Anything presented as label-free should use this instead.
    """
    no_attribute = np.zeros(np.shape(performance)[:1], dtype=bool)  # purity plays no part in the choice
    return _worst_in(slice_table(labels, performance, no_attribute, n_slices, n_min, n_min_frac=n_min_frac))


def _worst_in(table: pd.DataFrame) -> int:
    """:func:`worst_slice`'s rule on a slice table (reads size, eligible and mean_perf only, never purity)."""
    t = table[table["size"] > 0]
    pool = t[t["eligible"]] if t["eligible"].any() else t
    return int(pool.sort_values(["mean_perf", "slice"])["slice"].iloc[0])


def precision_at_k(proba: Any, attribute: Any, k: int = K_PRECISION) -> np.ndarray:
    """Per-slice fraction of attribute carriers among the min(k, n) highest-probability samples of that slice."""
    if int(k) != k or k < 1:
        raise ValueError(f"k must be a positive integer, got {k}")
    prob = np.asarray(proba)
    n = prob.shape[0] if prob.ndim == 2 else -1
    prob = _check_proba(prob, n)
    attr = _check_attribute(attribute, n)
    if n == 0:
        return np.full(prob.shape[1], np.nan)
    top = np.argsort(-prob, axis=0, kind="stable")[: min(int(k), n)]  # (k, K) sample indices
    return attr[top].mean(axis=0)


# --------------------------------------------------------------------------- report
@dataclass
class SliceReport:
    """Outcome of the protocol for one slicer on one test set (see the module docstring for the rules)."""

    table: pd.DataFrame
    omega2: float
    perf_pass: bool
    purity_pass: bool
    success: bool
    winning_slice: int | None
    n_min: int
    precision_at_k: float
    precision_slice: int | None
    params: dict[str, float] = field(default_factory=dict)

    @property
    def n_samples(self) -> int:
        """Number of test samples."""
        return int(self.table["size"].sum())

    @property
    def n_slices(self) -> int:
        """Number of slices K (empty ones included)."""
        return len(self.table)

    @property
    def n_eligible(self) -> int:
        """Number of slices with at least N_min members."""
        return int(self.table["eligible"].sum())

    @property
    def max_purity(self) -> float:
        """Highest purity over eligible slices (NaN when none is eligible)."""
        p = self.table.loc[self.table["eligible"], "purity"]
        return float(p.max()) if len(p) else float("nan")

    @property
    def worst_slice(self) -> int:
        """The label-free choice (:func:`worst_slice`): lowest mean performance among eligible slices."""
        return _worst_in(self.table)

    @property
    def focus_slice(self) -> int:
        """The slice to show first: the winning slice when the criterion is met, else :attr:`worst_slice`.
        Label-free whenever nothing won (and always when the report was made without an attribute)."""
        return self.worst_slice if self.winning_slice is None else self.winning_slice

    def to_dict(self) -> dict[str, Any]:
        """The verdict's scalars, sizes and parameters (no slice table); :meth:`to_row` adds the two slices."""
        return {"success": self.success, "perf_pass": self.perf_pass, "purity_pass": self.purity_pass,
                "omega2": self.omega2, "max_purity": self.max_purity, "winning_slice": self.winning_slice,
                "precision_at_k": self.precision_at_k, "precision_slice": self.precision_slice,
                "n_samples": self.n_samples, "n_slices": self.n_slices, "n_eligible": self.n_eligible,
                "n_min": self.n_min, **self.params}

    def to_row(self) -> dict[str, Any]:
        """One result row with the one set of column names every study writes: :meth:`to_dict`, the winning
        slice's size and mean performance (None when nothing won), and the label-free worst slice's id, size,
        mean performance and purity (purity reads the attribute: a judgement, not a discovery input)."""
        win, worst = self.winning_slice, self.worst_slice
        t = self.table.set_index("slice")
        row = {**self.to_dict(),
               "winning_size": None if win is None else int(t.at[win, "size"]),
               "winning_perf": None if win is None else float(t.at[win, "mean_perf"]),
               "worst_slice": worst, "worst_size": int(t.at[worst, "size"]),
               "worst_perf": float(t.at[worst, "mean_perf"]), "worst_purity": float(t.at[worst, "purity"])}
        return {k: (v.item() if isinstance(v, np.generic) else v) for k, v in row.items()}

    def _summary(self) -> str:
        """A one-line verdict."""
        p = self.params
        win = "none" if self.winning_slice is None else f"slice {self.winning_slice}"
        prec = "n/a" if self.precision_slice is None else f"{self.precision_at_k:.3f} (slice {self.precision_slice})"
        return (f"success={self.success} (winner: {win}; purity>{p.get('p_theta')}, bottom {p.get('q_theta')}, "
                f"size>={self.n_min}) | perf_pass={self.perf_pass} (omega2={self.omega2:.3f}) | "
                f"purity_pass={self.purity_pass} (max purity={self.max_purity:.3f}) | "
                f"precision@{p.get('k')}={prec}")

    def __str__(self) -> str:
        """Verdict line followed by the slice table."""
        return f"{self._summary()}\n{self.table.to_string(index=False)}"

    def _repr_markdown_(self) -> str:
        """Verdict line and slice table for notebooks / Jupyter Book."""
        return f"**{self._summary()}**\n\n{self.table.to_markdown(index=False)}"


def evaluate_slices(labels: Any, performance: Any, attribute: Any, proba: Any = None, *,
                    p_theta: float = P_THETA, q_theta: float = Q_THETA, n_min_frac: float = N_MIN_FRAC,
                    k: int = K_PRECISION, n_slices: int | None = None,
                    omega2_theta: float = OMEGA2_THETA) -> SliceReport:
    """Apply the full protocol (module docstring) and return a SliceReport; its table adds a precision_at_k column.

    ``attribute=None``: a label-free report (sizes, mean performance, omega^2 and ``worst_slice`` only; purity
    and precision NaN, no winner, ``success``/``purity_pass`` False), e.g. for a model whose failures are unknown.
    """
    if attribute is None:
        report = _judge(labels, performance, np.zeros(np.shape(performance)[:1], dtype=bool), proba, p_theta,
                        q_theta, n_min_frac, k, n_slices, omega2_theta)
        table = report.table.assign(purity=np.nan, precision_at_k=np.nan)
        return replace(report, table=table, purity_pass=False, success=False, winning_slice=None,
                       precision_at_k=float("nan"), precision_slice=None)
    return _judge(labels, performance, attribute, proba, p_theta, q_theta, n_min_frac, k, n_slices, omega2_theta)


def _judge(labels: Any, performance: Any, attribute: Any, proba: Any, p_theta: float, q_theta: float,
           n_min_frac: float, k: int, n_slices: int | None, omega2_theta: float) -> SliceReport:
    """:func:`evaluate_slices` with an attribute."""
    lab, perf, attr, prob, n_k = _inputs(labels, performance, attribute, n_slices, proba)
    p_theta = _check_unit(p_theta, "p_theta")
    if int(k) != k or k < 1:
        raise ValueError(f"k must be a positive integer, got {k}")
    n_min = min_slice_size(len(perf), n_min_frac)
    table = slice_table(lab, perf, attr, n_k, n_min, q_theta=q_theta)

    omega2 = omega_squared(perf, lab)
    perf_pass = bool(omega2 > omega2_theta)  # NaN compares False
    eligible = table["eligible"].to_numpy()
    purity_pass = bool(eligible.any() and table.loc[eligible, "purity"].max() > p_theta)

    qualifying = table[eligible & table["bottom"].to_numpy() & (table["purity"] > p_theta).to_numpy()]
    winning_slice = None
    if len(qualifying):
        best = qualifying.assign(_neg=-qualifying["purity"]).sort_values(["_neg", "mean_perf", "slice"])
        winning_slice = int(best["slice"].iloc[0])

    if prob is None:
        per_slice = np.full(n_k, np.nan)
        prec, prec_slice = float("nan"), None
    else:
        per_slice = precision_at_k(prob, attr, k)
        prec_slice = int(np.argmax(per_slice))
        prec = float(per_slice[prec_slice])
    table["precision_at_k"] = per_slice

    params = {"p_theta": p_theta, "q_theta": float(q_theta), "n_min_frac": float(n_min_frac), "k": int(k),
              "omega2_theta": float(omega2_theta)}
    return SliceReport(table=table, omega2=omega2, perf_pass=perf_pass, purity_pass=purity_pass,
                       success=winning_slice is not None, winning_slice=winning_slice, n_min=n_min,
                       precision_at_k=prec, precision_slice=prec_slice, params=params)
