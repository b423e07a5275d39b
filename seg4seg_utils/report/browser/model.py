"""The data and state of a slice browser, without any view: which slice each test image is in, the members,
metrics, protocol flags and explanation of every slice, what stands out in its metadata, and what a reader has
selected. No matplotlib, HTML or ipywidgets here, so the model is testable (and usable) without a display.

The protocol's verdict (eligibility, bottom-40 %, the winning slice, the label-free worst slice) comes from
:func:`seg4seg_utils.discovery.protocol.evaluate_slices` - the browser shows it, it never re-derives it.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from seg4seg_utils.data.records import SampleTable, read_mask
from seg4seg_utils.discovery.protocol import SliceReport, as_slice_labels, evaluate_slices
from seg4seg_utils.model.metrics import METRICS

if TYPE_CHECKING:
    from seg4seg_utils.model.train import Run

__all__ = ["BrowserModel", "normalise_explanations", "metric_label", "NO_EXPLANATION"]

NO_EXPLANATION = "no explanation given"
# columns of a run's metrics table that are bookkeeping, not something to colour the map by
_NOT_ATTRIBUTES = ("id", "split", "image", "mask", "source", "prediction", "tp", "fp", "fn", "tn")
_TEXT_COLUMNS = ("sentence", "text", "explanation")
_ORDERS = ("auto", "proba", "performance", "table")


def short_list(items: Sequence[Any], k: int = 5) -> str:
    """The first ``k`` items for an error message (a long list of ids would drown the message)."""
    shown = ", ".join(repr(i) for i in list(items)[:k])
    return f"[{shown}{', ...' if len(items) > k else ''}]"


def metric_label(name: str) -> str:
    """How a metric is written for a reader (``iou`` -> ``IoU``); other names unchanged."""
    return {"dice": "Dice", "iou": "IoU", "ppv": "PPV", "npv": "NPV"}.get(name, name)


def normalise_explanations(explanations: Any, n_slices: int | None = None) -> dict[int, str]:
    """Explanations as ``{slice id: text}`` from a mapping or a DataFrame (``slice`` + ``sentence``/``text``).

    Slices without an entry are simply absent (the browser shows "no explanation given"); an entry for a slice
    id outside 0..n_slices-1 is an error, since it would mean the explanations belong to another fit.
    """
    if explanations is None:
        return {}
    if isinstance(explanations, pd.DataFrame):
        if "slice" not in explanations.columns:
            raise ValueError(f"explanations DataFrame needs a 'slice' column; it has {list(explanations.columns)}")
        text_col = next((c for c in _TEXT_COLUMNS if c in explanations.columns), None)
        if text_col is None:
            raise ValueError(f"explanations DataFrame needs one of the columns {list(_TEXT_COLUMNS)} with the "
                             f"text per slice; it has {list(explanations.columns)}")
        pairs = list(zip(explanations["slice"], explanations[text_col]))
    elif isinstance(explanations, Mapping):
        pairs = list(explanations.items())
    else:
        raise TypeError("explanations must be a mapping slice -> text or a DataFrame with 'slice' and 'sentence' "
                        f"(or 'text') columns, got {type(explanations).__name__}")
    out: dict[int, str] = {}
    for key, text in pairs:
        try:
            s = int(key)
        except (TypeError, ValueError):
            raise ValueError(f"explanations: slice id {key!r} is not an integer") from None
        if n_slices is not None and not 0 <= s < n_slices:
            raise ValueError(f"explanations: slice {s} does not exist (slices are 0..{n_slices - 1}); "
                             "were they computed for another slicer fit?")
        if text is None or (isinstance(text, float) and np.isnan(text)) or not str(text).strip():
            continue
        if s in out:
            raise ValueError(f"explanations: slice {s} is given twice")
        out[s] = str(text).strip()
    return out


# ------------------------------------------------------------------------------------------------ checks
# Each check names what is wrong and how to fix it: a browser is built by hand in a notebook, where a
# misaligned table would otherwise show the wrong images without any error.
def _as_bool_attribute(values: pd.Series | np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.dtype == bool:
        return arr
    uniq = set(pd.unique(pd.Series(arr).dropna()))
    if uniq <= {0, 1, True, False}:
        return arr.astype(bool)
    raise ValueError(f"attribute {name!r} must be boolean (True = carries the suspected failure attribute) to "
                     f"compute purity; it has values {short_list(sorted(map(str, uniq)))}. Pass a boolean array, "
                     f"e.g. metrics[{name!r}] == {str(next(iter(uniq)))!r}")


def _unique_ids(ids: Sequence[Any]) -> list[str]:
    out = [str(i) for i in ids]
    if not out:
        raise ValueError("the browser needs at least one sample (ids is empty)")
    index = pd.Index(out)
    dup = index[index.duplicated()].unique().tolist()
    if dup:
        raise ValueError(f"ids must be unique; repeated: {short_list(dup)}")
    return out


def _map_coordinates(xy: Any, n: int) -> np.ndarray:
    arr = np.asarray(xy, dtype=float)
    if arr.shape != (n, 2):
        raise ValueError(f"xy must have shape ({n}, 2) (one 2-d point per id), got {arr.shape}; "
                         "reduce the embeddings first, e.g. reduce.reduce_embeddings(X, 'umap', 2)")
    if not np.isfinite(arr).all():
        raise ValueError("xy contains NaN or infinite coordinates")
    return arr


def _slice_labels(labels: Any, n: int) -> np.ndarray:
    lab = np.asarray(labels)
    if lab.shape != (n,):  # checked here: the protocol's message would blame "performance" for the length
        raise ValueError(f"labels must have shape ({n},) (one slice id per id), got {lab.shape}")
    return as_slice_labels(lab).astype(int)


def _dataset_rows(table: SampleTable, ids: list[str]) -> dict[str, int]:
    position = {str(s): i for i, s in enumerate(table.df["id"])}
    missing = [i for i in ids if i not in position]
    if missing:
        raise KeyError(f"the dataset at {table.root} has no sample for {len(missing)} of the {len(ids)} ids, e.g. "
                       f"{short_list(missing)}; pass the dataset the embeddings were computed on")
    return {i: position[i] for i in ids}


def _aligned_metrics(metrics: pd.DataFrame, ids: list[str]) -> pd.DataFrame:
    if "id" not in metrics.columns:
        raise ValueError(f"metrics needs an 'id' column; it has {list(metrics.columns)}")
    m = metrics.assign(id=metrics["id"].astype(str))
    dup = m["id"][m["id"].duplicated()].unique().tolist()
    if dup:
        raise ValueError(f"metrics has more than one row for id(s) {short_list(dup)}")
    have = set(m["id"])
    missing = [i for i in ids if i not in have]
    if missing:
        raise KeyError(f"metrics has no row for {len(missing)} of the {len(ids)} ids, e.g. {short_list(missing)}; "
                       "the embeddings, labels and metrics must describe the same test images (use the "
                       "metrics of the run that predicted them)")
    return m.set_index("id").loc[ids].reset_index()


def _check_predictions(predictions: Any, ids: list[str]) -> Any:
    if isinstance(predictions, Mapping):
        missing = [i for i in ids if i not in predictions]
        if missing:
            raise KeyError(f"predictions are missing for {len(missing)} of the {len(ids)} ids, e.g. "
                           f"{short_list(missing)}")
    elif predictions is not None and not callable(predictions):
        raise TypeError("predictions must be a mapping id -> path/array, a callable id -> array, or None")
    return predictions


# ------------------------------------------------------------------------------------------------ model
class BrowserModel:
    """Everything a reader needs to inspect the slices of one slicer fit on one test set (no view attached;
    :class:`~seg4seg_utils.report.browser.SliceBrowser` adds the figures, the HTML and the widget).

    Parameters
    ----------
    table:
        The dataset (any split; rows are looked up by ``id``) - images and ground-truth masks come from here.
    ids:
        Sample ids in the order of ``xy``, ``labels`` and ``proba`` (the embedding order).
    xy:
        (n, 2) coordinates of the map (e.g. a 2-d UMAP of the embeddings).
    labels:
        (n,) hard slice ids 0..K-1.
    metrics:
        Per-image table with an ``id`` column, the ``performance`` column and any attribute columns (a run's
        ``metrics.csv`` has both). Extra rows are ignored; a missing id is an error.
    predictions:
        Predicted masks: a mapping id -> file path or array, a callable id -> array, or None (galleries then show
        the ground truth only). Loaded on first use and cached.
    attribute:
        Optional suspected/hidden attribute for purity: a boolean column name of ``metrics`` or a boolean array in
        ``ids`` order. With it, :attr:`report` is the full protocol; without it, the protocol's label-free report
        (no purity, no winner).
    performance:
        The per-image score the slices were fitted on (lower = worse), a column of ``metrics``.
    explanations:
        Optional mapping slice -> text or DataFrame (see :func:`normalise_explanations`).
    proba:
        Optional (n, K) slice probabilities: members are then shown most typical first, and precision@k is reported.
    n_slices:
        K (default: ``proba.shape[1]``, else ``labels.max() + 1``); slices without members are kept and shown empty.
    order:
        How members are ordered in a gallery: ``"proba"`` (highest slice probability first), ``"performance"``
        (worst first), ``"table"`` (``ids`` order), or ``"auto"`` (proba when given, else performance).
    n_show:
        Members shown per gallery (the widget's slider starts here).
    title:
        Heading of the views.

    :meth:`from_run` and :meth:`from_slicer` build one from a trained run (metrics and predicted masks from its
    folder) with fewer arguments.
    """

    def __init__(self, table: SampleTable, ids: Sequence[str], xy: Any, labels: Any, metrics: pd.DataFrame, *,
                 predictions: Mapping[str, Any] | Callable[[str], np.ndarray] | None = None,
                 attribute: str | Any | None = None, performance: str = "dice", explanations: Any = None,
                 proba: Any = None, n_slices: int | None = None, order: str = "auto", n_show: int = 8,
                 title: str | None = None) -> None:
        self.ids = _unique_ids(ids)
        n = len(self.ids)
        self.index = {sid: i for i, sid in enumerate(self.ids)}
        self.xy = _map_coordinates(xy, n)
        self.labels = _slice_labels(labels, n)
        self.proba = None if proba is None else np.asarray(proba, dtype=float)
        self.table = table
        self._row = _dataset_rows(table, self.ids)
        self.metrics = _aligned_metrics(metrics, self.ids)
        if performance not in self.metrics.columns:
            raise ValueError(f"performance column {performance!r} is not in metrics; numeric columns: "
                             f"{self._numeric_columns()}")
        self.performance = performance
        self.scores = pd.to_numeric(self.metrics[performance], errors="raise").to_numpy(dtype=float)
        self._predictions = _check_predictions(predictions, self.ids)
        self._pred_cache: dict[str, np.ndarray] = {}
        self.attribute_name, self.attribute = self._purity_attribute(attribute)

        # the protocol decides K, eligibility, rank, bottom-40 % and the failing slice; the browser only adds
        # the mean of every other segmentation metric per slice
        self.report: SliceReport = evaluate_slices(self.labels, self.scores, self.attribute, proba=self.proba,
                                                   n_slices=n_slices)
        self.n_slices = self.report.n_slices
        slices = self.report.table.copy()
        if self.attribute is None:  # a label-free report's purity and precision are all NaN: not worth a column
            slices = slices.drop(columns=["purity", "precision_at_k"])
        size = slices["size"].to_numpy()
        for col in self.metric_columns:
            vals = pd.to_numeric(self.metrics[col], errors="coerce").to_numpy(dtype=float)
            with np.errstate(invalid="ignore", divide="ignore"):
                slices[f"mean_{col}"] = np.bincount(self.labels, weights=vals, minlength=self.n_slices) / size
        self.slices = slices

        self.explanations = normalise_explanations(explanations, self.n_slices)
        if order not in _ORDERS:
            raise ValueError(f"order must be one of {_ORDERS}, got {order!r}")
        if order == "proba" and self.proba is None:
            raise ValueError("order='proba' needs proba")
        self.order = ("proba" if self.proba is not None else "performance") if order == "auto" else order
        self.title = title

        # the state both views follow
        self.selected = self.failing_slice
        self.colour_by = "slice"
        self.n_show = self.check_n(n_show)

    def _purity_attribute(self, attribute: str | Any | None) -> tuple[str | None, np.ndarray | None]:
        """(name, boolean flags in ``ids`` order) of the purity attribute; an array is added to the metrics as
        column ``attribute`` so that the map can be coloured by it."""
        if attribute is None:
            return None, None
        if isinstance(attribute, str):
            if attribute not in self.metrics.columns:
                raise ValueError(f"attribute {attribute!r} is not a column of metrics; columns you can use: "
                                 f"{self.attribute_columns}")
            return attribute, _as_bool_attribute(self.metrics[attribute], attribute)
        arr = np.asarray(attribute)
        if arr.shape != (len(self.ids),):
            raise ValueError(f"attribute array must have shape ({len(self.ids)},), got {arr.shape}")
        flags = _as_bool_attribute(arr, "attribute")
        self.metrics["attribute"] = flags
        return "attribute", flags

    # ------------------------------------------------------------------------ construction from a run
    @classmethod
    def from_run(cls, table: SampleTable, run: "Run", embeddings: Any, labels: Any, *, xy: Any = None,
                 attribute: str | Any | None = None, performance: str = "dice", explanations: Any = None,
                 proba: Any = None, n_slices: int | None = None, random_state: int | None = 0,
                 **kwargs: Any):
        """A browser over a trained run's test predictions.

        ``embeddings`` is an :class:`~seg4seg_utils.discovery.embed.Embeddings` (its ``ids`` fix the order of
        ``labels``, ``proba`` and ``xy``); without ``xy`` the map is a 2-d UMAP of ``embeddings.X`` (seeded by
        ``random_state``). Metrics and predicted-mask files come from the run's ``metrics.csv``.
        """
        ids = list(embeddings.ids)
        if xy is None:
            from seg4seg_utils.discovery.reduce import reduce_embeddings

            xy = reduce_embeddings(np.asarray(embeddings.X), "umap", 2, random_state=random_state)[1]
        metrics = run.metrics()
        root = Path(run.root)
        predictions = None
        if "prediction" in metrics.columns:
            predictions = {str(i): root / p for i, p in zip(metrics["id"], metrics["prediction"])
                           if isinstance(p, str) and p}
        kwargs.setdefault("title", f"run {root.parent.name}/{root.name}")
        return cls(table, ids, xy, labels, metrics, predictions=predictions, attribute=attribute,
                   performance=performance, explanations=explanations, proba=proba, n_slices=n_slices, **kwargs)

    @classmethod
    def from_slicer(cls, table: SampleTable, run: "Run", embeddings: Any, slicer: Any, **kwargs: Any):
        """:meth:`from_run` for a fitted slicer (any :class:`~seg4seg_utils.discovery.slicer.BaseSlicer`): its
        ``labels_``, ``proba_`` and ``n_slices`` are the slices, so they cannot disagree. The slicer must have
        been fitted on ``embeddings`` (same samples, same order); ``kwargs`` go to :meth:`from_run`."""
        from sklearn.utils.validation import check_is_fitted

        check_is_fitted(slicer, "labels_")
        clash = {"labels", "proba", "n_slices"} & set(kwargs)
        if clash:
            raise TypeError(f"from_slicer takes {sorted(clash)} from the slicer; use from_run to pass them")
        return cls.from_run(table, run, embeddings, slicer.labels_, proba=getattr(slicer, "proba_", None),
                            n_slices=getattr(slicer, "n_slices", None), **kwargs)

    # ------------------------------------------------------------------------ what can be shown
    def _numeric_columns(self) -> list[str]:
        return [c for c in self.metrics.columns if c != "id" and pd.api.types.is_numeric_dtype(self.metrics[c])
                and not pd.api.types.is_bool_dtype(self.metrics[c])]

    @property
    def metric_columns(self) -> list[str]:
        """Segmentation metrics present in the metrics table (performance first)."""
        cols = [self.performance] + [c for c in METRICS if c != self.performance]
        return [c for c in cols if c in self.metrics.columns]

    @property
    def attribute_columns(self) -> list[str]:
        """Columns that describe the images (dataset attributes), usable for colouring."""
        skip = set(_NOT_ATTRIBUTES) | set(self.metric_columns)
        return [c for c in self.metrics.columns if c not in skip]

    @property
    def hidden_columns(self) -> list[str]:
        """Attribute columns that hold the hidden answer, kept out of :meth:`contrast` by default: the purity
        attribute, a ``failure`` column, and every column that is a recoding of either
        (:func:`~seg4seg_utils.discovery.explain.leaky_columns`, e.g. case A's ``caliper`` when
        ``attribute="failure"``)."""
        from seg4seg_utils.discovery.explain import leaky_columns

        hidden = {c for c in (self.attribute_name, "failure") if c is not None and c in self.metrics.columns}
        if self.attribute is not None:
            hidden |= set(leaky_columns(self.metrics, self.attribute))
        if "failure" in self.metrics.columns:
            hidden |= set(leaky_columns(self.metrics, "failure"))
        return [c for c in self.attribute_columns if c in hidden]

    @property
    def colour_options(self) -> list[str]:
        """What the map can be coloured by: ``slice``, the metrics, then every attribute column."""
        return ["slice", *self.metric_columns, *self.attribute_columns]

    def check_colour(self, colour_by: str) -> str:
        """``colour_by`` if the map can be coloured by it, else a ValueError listing what it can be coloured by."""
        if colour_by not in self.colour_options:
            raise ValueError(f"cannot colour by {colour_by!r}; choose one of {self.colour_options}")
        return colour_by

    def colour_values(self, colour_by: str) -> np.ndarray:
        """The per-image values (in ``ids`` order) the map is coloured by."""
        return self.labels if colour_by == "slice" else self.metrics[colour_by].to_numpy()

    def slice_id(self, s: Any = None) -> int:
        """Slice ``s`` as an int (default: the selected slice), or a ValueError naming the valid ids."""
        if s is None:
            return self.selected
        try:
            si = int(s)
        except (TypeError, ValueError):
            raise ValueError(f"slice must be an integer 0..{self.n_slices - 1}, got {s!r}") from None
        if si != s or not 0 <= si < self.n_slices:
            raise ValueError(f"no slice {s!r}: slices are 0..{self.n_slices - 1}")
        return si

    @staticmethod
    def check_n(n: Any) -> int:
        """A number of members shown, as a positive int (else a ValueError)."""
        if int(n) != n or n < 1:
            raise ValueError(f"the number of members shown must be a positive integer, got {n!r}")
        return int(n)

    # ------------------------------------------------------------------------ state
    @property
    def failing_slice(self) -> int:
        """The slice the reader should look at first (:attr:`SliceReport.focus_slice`): the protocol's winning
        slice when there is one, else the eligible slice with the lowest mean performance (label-free)."""
        return self.report.focus_slice

    def select(self, s: int) -> "BrowserModel":
        """Make slice ``s`` the selected one (every view follows)."""
        self.selected = self.slice_id(s)
        return self

    def colour(self, colour_by: str) -> "BrowserModel":
        """Colour the map by ``colour_by`` (one of :attr:`colour_options`)."""
        self.colour_by = self.check_colour(colour_by)
        return self

    def show(self, n: int) -> "BrowserModel":
        """Show ``n`` members per gallery."""
        self.n_show = self.check_n(n)
        return self

    @property
    def state(self) -> dict[str, Any]:
        """What a reader has chosen: selected slice, colouring, members shown."""
        return {"selected": self.selected, "colour_by": self.colour_by, "n_show": self.n_show}

    # ------------------------------------------------------------------------ data per image
    def image(self, sid: str) -> tuple[np.ndarray, np.ndarray]:
        """The image and its boolean ground-truth mask."""
        row = self._row[sid]
        return self.table.image(row), self.table.mask(row) > 0

    def prediction(self, sid: str) -> np.ndarray | None:
        """The predicted mask of one id (bool), loaded on first use and cached; None without predictions."""
        if self._predictions is None:
            return None
        if sid not in self._pred_cache:
            preds = self._predictions
            src = preds[sid] if isinstance(preds, Mapping) else preds(sid)
            arr = read_mask(src) if isinstance(src, (str, Path)) else np.asarray(src)
            self._pred_cache[sid] = arr > 0 if arr.dtype != bool else arr
        return self._pred_cache[sid]

    # ------------------------------------------------------------------------ data per slice
    def members(self, s: int | None = None, n: int | None = None) -> list[str]:
        """Ids of slice ``s`` (default: the selected one) in gallery order; the first ``n`` when given."""
        s = self.slice_id(s)
        idx = np.flatnonzero(self.labels == s)
        if self.order == "proba":
            idx = idx[np.argsort(-self.proba[idx, s], kind="stable")]
        elif self.order == "performance":
            idx = idx[np.argsort(self.scores[idx], kind="stable")]
        if n is not None:
            idx = idx[: self.check_n(n)]
        return [self.ids[i] for i in idx]

    def size(self, s: int | None = None) -> int:
        """Number of members of slice ``s`` (default: the selected one)."""
        return int(self.slices.at[self.slice_id(s), "size"])

    def slice_metrics(self, s: int | None = None) -> pd.Series:
        """One slice's row: size, share of the test set, mean metrics, purity (with an attribute), protocol flags."""
        s = self.slice_id(s)
        row = self.slices.set_index("slice").loc[s].copy()
        row["share"] = row["size"] / len(self.ids)
        row["failing"] = s == self.failing_slice
        return row

    def explanation(self, s: int | None = None) -> str:
        """The slice's explanation, or ``"no explanation given"``."""
        return self.explanations.get(self.slice_id(s), NO_EXPLANATION)

    def contrast(self, s: int | None = None, top: int = 2, min_effect: float = 0.5,
                 oracle: bool = False) -> pd.DataFrame:
        """What stands out about a slice's attributes compared with the rest of the test set.

        For every attribute column except the metrics and the :attr:`hidden_columns` (the purity attribute, the
        failure flag and their recodings: reading them would name the slice by the answer):
        categorical or boolean columns compare, per value, the share inside the slice with the share outside
        (effect size Cohen's h = |2 asin sqrt(p_in) - 2 asin sqrt(p_out)|); numeric columns with more than six
        distinct values compare means (Cohen's d with the pooled standard deviation). Returns the ``top`` rows
        with effect >= ``min_effect`` (0.5 = "medium"), largest first, with a readable ``text``. This is a plain
        description of the metadata, not a learned explanation; an empty or full slice gives an empty table.

        ``oracle=True`` also reads the hidden columns (except the purity attribute, which has its own row); their
        rows' ``text`` ends with "(oracle: hidden attribute)": an oracle upper bound of what the metadata could
        say, not something a user without the labels would see.
        """
        inside = self.labels == self.slice_id(s)
        cols = ["column", "value", "effect", "text"]
        if inside.all() or not inside.any():
            return pd.DataFrame(columns=cols)
        hidden = set(self.hidden_columns)
        rows = []
        for col in self.attribute_columns:
            if col == self.attribute_name or (col in hidden and not oracle):
                continue
            tag = " (oracle: hidden attribute)" if col in hidden else ""
            v = self.metrics[col]
            if pd.api.types.is_numeric_dtype(v) and not pd.api.types.is_bool_dtype(v) and v.nunique() > 6:
                x = pd.to_numeric(v, errors="coerce").to_numpy(dtype=float)
                a, b = x[inside], x[~inside]
                a, b = a[np.isfinite(a)], b[np.isfinite(b)]
                if len(a) < 1 or len(b) < 1:
                    continue
                pooled = np.sqrt(((len(a) - 1) * a.var(ddof=1 if len(a) > 1 else 0) +
                                  (len(b) - 1) * b.var(ddof=1 if len(b) > 1 else 0)) / max(len(a) + len(b) - 2, 1))
                if pooled == 0:
                    continue
                d = abs(a.mean() - b.mean()) / pooled
                rows.append((col, None, d, f"{col}: mean {a.mean():.3g} here vs {b.mean():.3g} elsewhere{tag}", True))
            else:
                cats = v.astype(str).to_numpy()
                for level in pd.unique(cats):
                    p_in, p_out = (cats[inside] == level).mean(), (cats[~inside] == level).mean()
                    h = abs(2 * np.arcsin(np.sqrt(p_in)) - 2 * np.arcsin(np.sqrt(p_out)))
                    rows.append((col, level, h, f"{col} = {level}: {p_in:.0%} here vs {p_out:.0%} elsewhere{tag}",
                                 p_in > p_out))
        if not rows:
            return pd.DataFrame(columns=cols)
        out = pd.DataFrame(rows, columns=[*cols, "_over"])
        # ties (a boolean's two values have the same h) go to the value over-represented in the slice
        out = out[out["effect"] >= min_effect].assign(_e=lambda t: t["effect"].round(9))
        out = out.sort_values(["_e", "_over"], ascending=False, kind="stable")[cols]
        # one row per column (its most different value), so a boolean column is not listed twice
        return out.drop_duplicates("column").head(top).reset_index(drop=True)

    def slice_flags(self, s: int) -> list[str]:
        """The protocol's flags of a slice in words: ``failing``, ``bottom``, and ``small`` or ``empty``."""
        s = self.slice_id(s)
        row = self.slices.loc[s]
        return (["failing"] if s == self.failing_slice else []) + (["bottom"] if row["bottom"] else []) + \
            ([] if row["eligible"] else ["empty" if row["size"] == 0 else "small"])

    def slice_label(self, s: int) -> str:
        """One line per slice for the selector: size, mean performance and flags."""
        row = self.slice_metrics(s)
        if row["size"] == 0:
            return f"slice {s}: empty"
        text = f"slice {s}: {int(row['size'])} images, mean {metric_label(self.performance)} {row['mean_perf']:.2f}"
        if self.attribute is not None:
            text += f", purity {row['purity']:.2f}"
        flags = self.slice_flags(s)
        return text + (f" [{', '.join(flags)}]" if flags else "")

    def slice_options(self) -> list[tuple[str, int]]:
        """(label, slice id) for every slice: the failing slice first, then by mean performance (worst first),
        slices too small to be eligible after the eligible ones, empty slices last."""
        t = self.slices.assign(_first=self.slices["slice"] != self.failing_slice, _small=~self.slices["eligible"],
                               _empty=self.slices["size"] == 0)
        t = t.sort_values(["_first", "_empty", "_small", "mean_perf", "slice"])
        return [(self.slice_label(int(s)), int(s)) for s in t["slice"]]

    def summary_table(self) -> pd.DataFrame:
        """The slice table the views show: protocol columns, mean metrics, share and explanation."""
        t = self.slices.copy()
        t.insert(2, "share", t["size"] / len(self.ids))
        t["failing"] = t["slice"] == self.failing_slice
        t["explanation"] = [self.explanation(int(s)) for s in t["slice"]]
        return t

    def verdict(self) -> str:
        """A one-sentence summary of the protocol (or of the failing slice without an attribute)."""
        f = self.slice_metrics(self.failing_slice)
        perf = metric_label(self.performance)
        text = (f"{len(self.ids)} test images in {self.n_slices} slices "
                f"({int((self.slices['size'] > 0).sum())} non-empty). Failing slice: {self.failing_slice} "
                f"({int(f['size'])} images, mean {perf} {f['mean_perf']:.2f}")
        if self.attribute is not None:
            text += f", purity {f['purity']:.2f} for {self.attribute_name}). Protocol: " + \
                ("success" if self.report.success else "no slice meets the success criterion") + \
                f", omega^2 = {self.report.omega2:.2f}."
        else:
            text += "; no attribute given, so no purity)."
        return text

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({len(self.ids)} images, {self.n_slices} slices, "
                f"performance={self.performance!r}, attribute={self.attribute_name!r}, selected={self.selected}, "
                f"colour_by={self.colour_by!r})")
