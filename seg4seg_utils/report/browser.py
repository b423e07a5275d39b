"""A slice browser: the 2-d map of the test set, every slice's members with ground truth and prediction, its
metrics and its explanation - interactive in JupyterLab, and as static HTML for the book.

Why a browser: the protocol's verdict (``evaluate_slices``) says *whether* a low-performing, pure slice exists;
a person still has to look at the slice to name the failure mode (paper Fig. 5). The browser puts the pieces
a reader needs side by side, for any slice, not only the winner.

One data model, two views:

* :class:`SliceBrowser` assembles everything once: sample ids (the embedding order is the reference), 2-d
  coordinates, hard slice labels, the per-image metrics and attributes aligned to those ids (a mismatch is an
  error that names the missing ids), the protocol's slice table, explanations, and a lazy, cached loader of
  predicted masks. Its state (selected slice, colour-by, members shown) is plain Python, so it is testable
  without a display.
* :meth:`SliceBrowser.widget` - ipywidgets controls (colour by, slice, members shown, previous / next /
  failing) driving HTML areas that show a matplotlib scatter (selected slice highlighted), the slice's gallery,
  its metrics and its explanation. Needs a live kernel; ipywidgets is imported only there. (Without ipympl
  matplotlib figures cannot receive clicks, so a slice is chosen with the controls, not by clicking a point.)
* :meth:`SliceBrowser.to_html` / :meth:`SliceBrowser.static_view` - the same content as one self-contained
  HTML fragment (overview scatter, slice table, then one collapsible ``<details>`` section per slice with
  its gallery PNG embedded as base64, metrics table and explanation). This is what an executed notebook and
  the book show, since widgets are inert there.

Explanations are optional and come from elsewhere (e.g. a text/metadata explainer): a mapping
``slice -> text`` or a DataFrame with a ``slice`` column and a ``sentence`` (or ``text``/``explanation``)
column.
"""
from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from seg4seg_utils.data.records import SampleTable, read_mask
from seg4seg_utils.model.metrics import METRICS
from seg4seg_utils.report.plots import show_sample

if TYPE_CHECKING:
    from seg4seg_utils.discovery.protocol import SliceReport
    from seg4seg_utils.model.train import Run

__all__ = ["SliceBrowser", "BrowserWidget", "normalise_explanations", "PRED_COLOR", "NO_EXPLANATION"]

PRED_COLOR = "#ff4081"
NO_EXPLANATION = "no explanation given"
ATTRIBUTE_COLOR = "#ff4081"
REST_COLOR = "#b0bec5"
# columns of a run's metrics table that are bookkeeping, not something to colour the map by
_NOT_ATTRIBUTES = ("id", "split", "image", "mask", "source", "prediction", "tp", "fp", "fn", "tn")
_TEXT_COLUMNS = ("sentence", "text", "explanation")
_ORDERS = ("auto", "proba", "performance", "table")


# ------------------------------------------------------------------------------------------------ helpers
def _short_list(items: Sequence[Any], k: int = 5) -> str:
    shown = ", ".join(repr(i) for i in list(items)[:k])
    return f"[{shown}{', ...' if len(items) > k else ''}]"


def _metric_label(name: str) -> str:
    return {"dice": "Dice", "iou": "IoU", "ppv": "PPV", "npv": "NPV"}.get(name, name)


def _png_base64(fig: Figure, dpi: int = 80) -> str:
    """The figure as a base64 PNG string (for ``<img src="data:image/png;base64,...">``)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _img_tag(fig: Figure, alt: str, dpi: int = 80) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{_png_base64(fig, dpi)}" style="max-width:100%">'


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


def _as_bool_attribute(values: pd.Series | np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.dtype == bool:
        return arr
    uniq = set(pd.unique(pd.Series(arr).dropna()))
    if uniq <= {0, 1, True, False}:
        return arr.astype(bool)
    raise ValueError(f"attribute {name!r} must be boolean (True = carries the suspected failure attribute) to "
                     f"compute purity; it has values {_short_list(sorted(map(str, uniq)))}. Pass a boolean array, "
                     f"e.g. metrics[{name!r}] == {str(next(iter(uniq)))!r}")


# ------------------------------------------------------------------------------------------------ model
class SliceBrowser:
    """Everything a reader needs to inspect the slices of one slicer fit on one test set.

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
        ``ids`` order. With it, the slice table is the full protocol (``evaluate_slices``).
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
    """

    def __init__(self, table: SampleTable, ids: Sequence[str], xy: Any, labels: Any, metrics: pd.DataFrame, *,
                 predictions: Mapping[str, Any] | Callable[[str], np.ndarray] | None = None,
                 attribute: str | Any | None = None, performance: str = "dice", explanations: Any = None,
                 proba: Any = None, n_slices: int | None = None, order: str = "auto", n_show: int = 8,
                 title: str | None = None) -> None:
        from seg4seg_utils.discovery.protocol import evaluate_slices, slice_table

        self.ids = [str(i) for i in ids]
        n = len(self.ids)
        if n == 0:
            raise ValueError("the browser needs at least one sample (ids is empty)")
        dup = pd.Index(self.ids)[pd.Index(self.ids).duplicated()].unique().tolist()
        if dup:
            raise ValueError(f"ids must be unique; repeated: {_short_list(dup)}")
        self.xy = np.asarray(xy, dtype=float)
        if self.xy.shape != (n, 2):
            raise ValueError(f"xy must have shape ({n}, 2) (one 2-d point per id), got {self.xy.shape}; "
                             "reduce the embeddings first, e.g. reduce.reduce_embeddings(X, 'umap', 2)")
        if not np.isfinite(self.xy).all():
            raise ValueError("xy contains NaN or infinite coordinates")
        lab = np.asarray(labels)
        if lab.shape != (n,):
            raise ValueError(f"labels must have shape ({n},) (one slice id per id), got {lab.shape}")
        if not (np.issubdtype(lab.dtype, np.integer) or (lab.size and np.all(np.mod(lab, 1) == 0))):
            raise ValueError("labels must be integer slice ids")
        self.labels = lab.astype(int)
        if (self.labels < 0).any():
            raise ValueError("labels must be slice ids >= 0")
        self.proba = None if proba is None else np.asarray(proba, dtype=float)
        if self.proba is not None and (self.proba.ndim != 2 or self.proba.shape[0] != n):
            raise ValueError(f"proba must have shape ({n}, K), got {self.proba.shape}")
        k = n_slices or (self.proba.shape[1] if self.proba is not None else int(self.labels.max()) + 1)
        if self.labels.max() >= k:
            raise ValueError(f"labels go up to {self.labels.max()} but n_slices={k}")
        self.n_slices = int(k)

        # --- images and masks: every id must be in the dataset
        self.table = table
        position = {str(s): i for i, s in enumerate(table.df["id"])}
        missing = [i for i in self.ids if i not in position]
        if missing:
            raise KeyError(f"the dataset at {table.root} has no sample for {len(missing)} of the {n} ids, e.g. "
                           f"{_short_list(missing)}; pass the dataset the embeddings were computed on")
        self._row = {i: position[i] for i in self.ids}

        # --- metrics and attributes aligned to ids
        if "id" not in metrics.columns:
            raise ValueError(f"metrics needs an 'id' column; it has {list(metrics.columns)}")
        m = metrics.assign(id=metrics["id"].astype(str))
        dup = m["id"][m["id"].duplicated()].unique().tolist()
        if dup:
            raise ValueError(f"metrics has more than one row for id(s) {_short_list(dup)}")
        have = set(m["id"])
        missing = [i for i in self.ids if i not in have]
        if missing:
            raise KeyError(f"metrics has no row for {len(missing)} of the {n} ids, e.g. {_short_list(missing)}; "
                           "the embeddings, labels and metrics must describe the same test images (use the "
                           "metrics of the run that predicted them)")
        self.metrics = m.set_index("id").loc[self.ids].reset_index()
        if performance not in self.metrics.columns:
            raise ValueError(f"performance column {performance!r} is not in metrics; numeric columns: "
                             f"{self._numeric_columns()}")
        self.performance = performance
        self.scores = pd.to_numeric(self.metrics[performance], errors="raise").to_numpy(dtype=float)

        # --- predictions: check coverage now, load lazily
        self._pred_cache: dict[str, np.ndarray] = {}
        if isinstance(predictions, Mapping):
            missing = [i for i in self.ids if i not in predictions]
            if missing:
                raise KeyError(f"predictions are missing for {len(missing)} of the {n} ids, e.g. "
                               f"{_short_list(missing)}")
        elif predictions is not None and not callable(predictions):
            raise TypeError("predictions must be a mapping id -> path/array, a callable id -> array, or None")
        self._predictions = predictions

        # --- attribute (purity) and the slice table
        if attribute is None:
            self.attribute_name, self.attribute = None, None
        elif isinstance(attribute, str):
            if attribute not in self.metrics.columns:
                raise ValueError(f"attribute {attribute!r} is not a column of metrics; columns you can use: "
                                 f"{self.attribute_columns}")
            self.attribute_name, self.attribute = attribute, _as_bool_attribute(self.metrics[attribute], attribute)
        else:
            arr = np.asarray(attribute)
            if arr.shape != (n,):
                raise ValueError(f"attribute array must have shape ({n},), got {arr.shape}")
            self.attribute_name, self.attribute = "attribute", _as_bool_attribute(arr, "attribute")
            self.metrics["attribute"] = self.attribute
        if self.attribute is not None:
            self.report: SliceReport | None = evaluate_slices(self.labels, self.scores, self.attribute,
                                                              proba=self.proba, n_slices=self.n_slices)
            base = self.report.table.copy()
        else:
            self.report = None
            base = slice_table(self.labels, self.scores, np.zeros(n, bool), self.n_slices).drop(columns="purity")
        for col in self.metric_columns:
            vals = pd.to_numeric(self.metrics[col], errors="coerce").to_numpy(dtype=float)
            size = np.bincount(self.labels, minlength=self.n_slices)
            with np.errstate(invalid="ignore", divide="ignore"):
                base[f"mean_{col}"] = np.bincount(self.labels, weights=vals, minlength=self.n_slices) / size
        self.slices = base

        self.explanations = normalise_explanations(explanations, self.n_slices)
        if order not in _ORDERS:
            raise ValueError(f"order must be one of {_ORDERS}, got {order!r}")
        if order == "proba" and self.proba is None:
            raise ValueError("order='proba' needs proba")
        self.order = ("proba" if self.proba is not None else "performance") if order == "auto" else order
        self.title = title

        # --- state shared by both views
        self.selected = self.failing_slice
        self.colour_by = "slice"
        self.n_show = self._check_n(n_show)

    # ------------------------------------------------------------------------ construction from a run
    @classmethod
    def from_run(cls, table: SampleTable, run: "Run", embeddings: Any, labels: Any, *, xy: Any = None,
                 attribute: str | Any | None = None, performance: str = "dice", explanations: Any = None,
                 proba: Any = None, n_slices: int | None = None, random_state: int | None = 0,
                 **kwargs: Any) -> "SliceBrowser":
        """A browser over a trained run's test predictions.

        ``embeddings`` is an :class:`~seg4seg_utils.discovery.embed.Embeddings` (its ``ids`` fix the order of ``labels``,
        ``proba`` and ``xy``); without ``xy`` the map is a 2-d UMAP of ``embeddings.X`` (seeded by
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
        (:func:`~seg4seg_utils.discovery.explain.leaky_columns`, e.g. case A's ``caliper`` when ``attribute="failure"``)."""
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

    def _check_colour(self, colour_by: str) -> str:
        if colour_by not in self.colour_options:
            raise ValueError(f"cannot colour by {colour_by!r}; choose one of {self.colour_options}")
        return colour_by

    def _check_slice(self, s: Any) -> int:
        try:
            si = int(s)
        except (TypeError, ValueError):
            raise ValueError(f"slice must be an integer 0..{self.n_slices - 1}, got {s!r}") from None
        if si != s or not 0 <= si < self.n_slices:
            raise ValueError(f"no slice {s!r}: slices are 0..{self.n_slices - 1}")
        return si

    def _check_n(self, n: Any) -> int:
        if int(n) != n or n < 1:
            raise ValueError(f"the number of members shown must be a positive integer, got {n!r}")
        return int(n)

    # ------------------------------------------------------------------------ state
    @property
    def failing_slice(self) -> int:
        """The slice the reader should look at first: the protocol's winning slice when there is one, else the
        eligible slice (>= 2 % of the test set) with the lowest mean performance (any non-empty one if none is)."""
        from seg4seg_utils.discovery.protocol import worst_slice

        if self.report is not None:
            return self.report.focus_slice
        return worst_slice(self.labels, self.scores, n_slices=self.n_slices)

    def select(self, s: int) -> "SliceBrowser":
        """Make slice ``s`` the selected one (both views follow)."""
        self.selected = self._check_slice(s)
        return self

    def colour(self, colour_by: str) -> "SliceBrowser":
        """Colour the map by ``colour_by`` (one of :attr:`colour_options`)."""
        self.colour_by = self._check_colour(colour_by)
        return self

    def show(self, n: int) -> "SliceBrowser":
        """Show ``n`` members per gallery."""
        self.n_show = self._check_n(n)
        return self

    @property
    def state(self) -> dict[str, Any]:
        return {"selected": self.selected, "colour_by": self.colour_by, "n_show": self.n_show}

    # ------------------------------------------------------------------------ data per slice
    def members(self, s: int | None = None, n: int | None = None) -> list[str]:
        """Ids of slice ``s`` (default: the selected one) in gallery order; the first ``n`` when given."""
        s = self.selected if s is None else self._check_slice(s)
        idx = np.flatnonzero(self.labels == s)
        if self.order == "proba":
            idx = idx[np.argsort(-self.proba[idx, s], kind="stable")]
        elif self.order == "performance":
            idx = idx[np.argsort(self.scores[idx], kind="stable")]
        if n is not None:
            idx = idx[: self._check_n(n)]
        return [self.ids[i] for i in idx]

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

    def slice_metrics(self, s: int | None = None) -> pd.Series:
        """One slice's row: size, share of the test set, mean metrics, purity (with an attribute), protocol flags."""
        s = self.selected if s is None else self._check_slice(s)
        row = self.slices.set_index("slice").loc[s].copy()
        row["share"] = row["size"] / len(self.ids)
        row["failing"] = s == self.failing_slice
        return row

    def explanation(self, s: int | None = None) -> str:
        """The slice's explanation, or ``"no explanation given"``."""
        s = self.selected if s is None else self._check_slice(s)
        return self.explanations.get(s, NO_EXPLANATION)

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
        s = self.selected if s is None else self._check_slice(s)
        inside = self.labels == s
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

    def slice_label(self, s: int) -> str:
        """One line per slice for the selector: size, mean performance and flags."""
        row = self.slice_metrics(s)
        if row["size"] == 0:
            return f"slice {s}: empty"
        text = f"slice {s}: {int(row['size'])} images, mean {_metric_label(self.performance)} {row['mean_perf']:.2f}"
        if self.attribute is not None:
            text += f", purity {row['purity']:.2f}"
        flags = (["failing"] if row["failing"] else []) + (["bottom"] if row["bottom"] else []) + \
            ([] if row["eligible"] else ["small"])
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

    # ------------------------------------------------------------------------ figures
    def _values(self, colour_by: str) -> np.ndarray:
        return self.labels if colour_by == "slice" else self.metrics[colour_by].to_numpy()

    def draw_map(self, ax, colour_by: str | None = None, highlight: int | None = None, numbers: bool = True) -> None:
        """Draw the 2-d map on ``ax``, coloured by ``colour_by``; ``highlight`` circles one slice's members."""
        from matplotlib import colormaps
        from matplotlib.lines import Line2D

        colour_by = self._check_colour(colour_by or self.colour_by)
        xy, values = self.xy, self._values(colour_by)
        fade = 0.35 if highlight is not None else 0.9
        legend = []
        if colour_by == "slice":
            cmap = colormaps["tab20"]
            ax.scatter(xy[:, 0], xy[:, 1], c=[cmap(v % 20) for v in values], s=10, lw=0, alpha=fade)
        elif colour_by in self.metric_columns or (pd.api.types.is_numeric_dtype(values.dtype) and
                                                  values.dtype != bool and len(pd.unique(values)) > 6):
            v = pd.to_numeric(pd.Series(values), errors="coerce").to_numpy(dtype=float)
            lim = (0.0, 1.0) if colour_by in self.metric_columns else (np.nanmin(v), np.nanmax(v))
            sc = ax.scatter(xy[:, 0], xy[:, 1], c=v, cmap="viridis", s=10, lw=0, vmin=lim[0], vmax=lim[1],
                            alpha=fade)
            ax.figure.colorbar(sc, ax=ax, shrink=0.8, label=_metric_label(colour_by))
        else:
            cats = pd.Series(values).astype(str)
            levels = sorted(cats.unique())
            if set(levels) <= {"True", "False"}:
                # the rarer value is the subgroup a reader looks for (e.g. caliper=False): pink, the rest grey;
                # the purity attribute keeps True = pink, since True is what it marks
                rare = "True" if colour_by == self.attribute_name or (cats == "True").mean() <= 0.5 else "False"
                palette = {rare: ATTRIBUTE_COLOR, ("False" if rare == "True" else "True"): REST_COLOR}
            else:
                palette = {c: colormaps["tab10"](k % 10) for k, c in enumerate(levels)}
            for c in levels:
                sel = (cats == c).to_numpy()
                ax.scatter(xy[sel, 0], xy[sel, 1], color=palette[c], s=10 if c != "True" else 13, lw=0, alpha=fade)
                legend.append(Line2D([], [], marker="o", ls="", color=palette[c], label=c))
        if highlight is not None:
            sel = self.labels == highlight
            ax.scatter(xy[sel, 0], xy[sel, 1], facecolors="none", edgecolors="black", s=30, lw=0.9)
            legend.append(Line2D([], [], marker="o", ls="", mfc="none", mec="black", label=f"slice {highlight}"))
        if numbers and colour_by == "slice":
            for s in np.unique(self.labels):
                cx, cy = np.median(xy[self.labels == s], axis=0)
                ax.text(cx, cy, str(s), fontsize=8, ha="center", va="center", weight="bold",
                        bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="none", alpha=0.75))
        if legend:
            ax.legend(handles=legend, fontsize=6, loc="best", title=None if colour_by == "slice" else colour_by,
                      title_fontsize=6)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"coloured by {colour_by}", fontsize=9)

    def scatter(self, colour_by: str | None = None, highlight: int | None | str = "selected",
                size: tuple[float, float] = (4.4, 3.6)) -> Figure:
        """The map as a one-panel figure; by default the selected slice is circled."""
        hl = self.selected if highlight == "selected" else (None if highlight is None else self._check_slice(highlight))
        fig = Figure(figsize=size, layout="constrained")
        self.draw_map(fig.subplots(), colour_by, hl)
        return fig

    def overview(self, colour_by: Sequence[str] | None = None, panel: float = 3.3) -> Figure:
        """Side-by-side maps (default: slice, performance, and the attribute when one is given)."""
        views = list(colour_by) if colour_by else ["slice", self.performance] + \
            ([self.attribute_name] if self.attribute_name else [])
        for v in views:
            self._check_colour(v)
        fig = Figure(figsize=(panel * len(views) + 0.4 * len(views), panel), layout="constrained")
        for ax, v in zip(np.atleast_1d(fig.subplots(1, len(views))), views):
            self.draw_map(ax, v)
        return fig

    def gallery(self, s: int | None = None, n: int | None = None, ncols: int = 4, panel: float = 1.6) -> Figure:
        """Members of slice ``s``: ground truth as a cyan contour, the prediction in pink; titles give id and score.

        A ``*`` after the score marks carriers of the attribute. An empty slice gives a one-panel figure that says so.
        """
        s = self.selected if s is None else self._check_slice(s)
        shown = self.members(s, n or self.n_show)
        if not shown:
            fig = Figure(figsize=(panel * 2, panel * 0.5), layout="constrained")
            ax = fig.subplots()
            ax.text(0.5, 0.5, f"slice {s} has no members", ha="center", va="center", fontsize=9)
            ax.axis("off")
            return fig
        ncols = min(ncols, len(shown))
        nrows = (len(shown) + ncols - 1) // ncols
        fig = Figure(figsize=(panel * ncols, panel * nrows + 0.45), layout="constrained")
        axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
        pos = {sid: i for i, sid in enumerate(self.ids)}
        for ax, sid in zip(axes, shown):
            i, row = pos[sid], self._row[sid]
            image, truth = self.table.image(row), self.table.mask(row) > 0
            star = " *" if self.attribute is not None and self.attribute[i] else ""
            show_sample(ax, image, truth, title=f"{sid}\n{_metric_label(self.performance)} {self.scores[i]:.2f}{star}")
            pred = self.prediction(sid)
            if pred is not None:
                _draw_prediction(ax, pred, truth)
        for ax in axes[len(shown):]:
            ax.axis("off")
        key = f"slice {s}: cyan = ground truth, pink = prediction"
        if self.attribute is not None:
            key += f", * = {self.attribute_name}"
        fig.suptitle(key + f" ({len(shown)} of {int((self.labels == s).sum())} shown)", fontsize=8)
        return fig

    # ------------------------------------------------------------------------ HTML pieces
    def metrics_html(self, s: int | None = None) -> str:
        """The slice's metrics as a small two-column HTML table."""
        row = self.slice_metrics(s)
        perf = _metric_label(self.performance)
        items = [("size", f"{int(row['size'])} ({row['share']:.1%} of the test set)")]
        for col in self.metric_columns:
            items.append((f"mean {_metric_label(col)}", _fmt(row[f"mean_{col}"])))
        if self.attribute is not None:
            items.append((f"purity ({self.attribute_name})", _fmt(row["purity"])))
            if "precision_at_k" in row and not pd.isna(row["precision_at_k"]):
                items.append((f"precision@{self.report.params.get('k', 10)}", _fmt(row["precision_at_k"])))
        rank = "-" if pd.isna(row["rank"]) else f"{int(row['rank'])} of {int(self.slices['eligible'].sum())}"
        items += [("eligible (>= 2 % of test set)", _yes(row["eligible"])),
                  (f"rank by mean {perf} (1 = worst)", rank),
                  ("in the bottom 40 %", _yes(row["bottom"])),
                  ("failing slice" + (" (protocol winner)" if self.report is not None and self.report.success
                                      else " (lowest mean)"), _yes(row["failing"]))]
        body = "".join(f"<tr><th style='text-align:left;padding:1px 1em 1px 0'>{html.escape(k)}</th><td>{html.escape(v)}"
                       "</td></tr>" for k, v in items)
        return f"<table class='s4s-metrics' style='font-size:90%'>{body}</table>"

    def explanation_html(self, s: int | None = None) -> str:
        """The explanation (given from outside) and the attribute contrast (computed here), as HTML."""
        text = self.explanation(s)
        style = "font-style:italic;color:#666" if text == NO_EXPLANATION else ""
        stands = self.contrast(s)
        facts = "; ".join(stands["text"]) if len(stands) else "nothing (no attribute differs by a medium effect)"
        return (f"<p class='s4s-explanation' style='{style}'><b>Explanation:</b> {html.escape(text)}</p>"
                f"<p class='s4s-contrast' style='font-size:90%'><b>Stands out in the metadata:</b> "
                f"{html.escape(facts)}</p>")

    def slice_html(self, s: int | None = None, n: int | None = None, dpi: int = 80) -> str:
        """Gallery, metrics and explanation of one slice as an HTML fragment (shared by widget and static view)."""
        s = self.selected if s is None else self._check_slice(s)
        gallery = self.gallery(s, n)
        return (f"<div class='s4s-slice' data-slice='{s}'>"
                f"<div style='display:flex;gap:1.5em;flex-wrap:wrap;align-items:flex-start'>"
                f"<div>{self.metrics_html(s)}{self.explanation_html(s)}</div>"
                f"<div>{_img_tag(gallery, f'gallery of slice {s}', dpi)}</div></div></div>")

    def verdict(self) -> str:
        """A one-sentence summary of the protocol (or of the failing slice without an attribute)."""
        f = self.slice_metrics(self.failing_slice)
        perf = _metric_label(self.performance)
        text = (f"{len(self.ids)} test images in {self.n_slices} slices "
                f"({int((self.slices['size'] > 0).sum())} non-empty). Failing slice: {self.failing_slice} "
                f"({int(f['size'])} images, mean {perf} {f['mean_perf']:.2f}")
        if self.report is not None:
            text += f", purity {f['purity']:.2f} for {self.attribute_name}). Protocol: " + \
                ("success" if self.report.success else "no slice meets the success criterion") + \
                f", omega^2 = {self.report.omega2:.2f}."
        else:
            text += "; no attribute given, so no purity)."
        return text

    def to_html(self, n: int | None = None, dpi: int = 80, open_slices: Sequence[int] | str = "failing") -> str:
        """The whole browser as one self-contained static HTML fragment (images embedded as base64 PNG).

        Overview maps, the slice table, then one ``<details>`` section per slice (worst first, empty ones last);
        ``open_slices`` ("failing", "all", "none" or a list of ids) are expanded.
        """
        if isinstance(open_slices, str):
            if open_slices not in ("failing", "all", "none"):
                raise ValueError(f"open_slices must be 'failing', 'all', 'none' or a list of slice ids, got {open_slices!r}")
            opened = {"failing": {self.failing_slice}, "all": set(range(self.n_slices)), "none": set()}[open_slices]
        else:
            opened = {self._check_slice(s) for s in open_slices}
        title = html.escape(self.title or "Slice browser")
        parts = [f"<div class='s4s-browser'><h3 style='margin-top:0.3em'>{title}</h3>",
                 f"<p>{html.escape(self.verdict())}</p>",
                 _img_tag(self.overview(), "overview maps", max(dpi, 100)),
                 "<p style='font-size:90%'>Each dot is a test image placed by a 2-d UMAP of its embedding; numbers "
                 "mark slice centres. Open a slice below for its members (ground truth cyan, prediction pink), "
                 "metrics and explanation.</p>",
                 _summary_html(self)]
        for label, s in self.slice_options():
            body = self.slice_html(s, n, dpi) if self.slices.loc[s, "size"] else \
                f"<div class='s4s-slice' data-slice='{s}'><p>No test image was assigned to this slice.</p></div>"
            parts.append(f"<details class='s4s-details' data-slice='{s}'{' open' if s in opened else ''} "
                         "style='margin:0.3em 0;border:1px solid #ddd;border-radius:4px;padding:0.2em 0.6em'>"
                         f"<summary style='cursor:pointer'><b>{html.escape(label)}</b></summary>{body}</details>")
        parts.append("</div>")
        return "\n".join(parts)

    def static_view(self, **kwargs: Any):
        """:meth:`to_html` wrapped for display in a notebook (the book shows this)."""
        from IPython.display import HTML

        return HTML(self.to_html(**kwargs))

    def save_html(self, path: str | Path, **kwargs: Any) -> Path:
        """Write the static view as a standalone HTML page."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        title = html.escape(self.title or "Slice browser")
        path.write_text(f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title></head>"
                        f"<body style='font-family:sans-serif;max-width:1100px;margin:auto'>{self.to_html(**kwargs)}"
                        "</body></html>\n")
        return path

    # ------------------------------------------------------------------------ interactive view
    def widget(self, dpi: int = 80) -> "BrowserWidget":
        """Interactive view (JupyterLab / Notebook with a live kernel); see :class:`BrowserWidget`."""
        return BrowserWidget(self, dpi=dpi)

    def __repr__(self) -> str:
        return (f"SliceBrowser({len(self.ids)} images, {self.n_slices} slices, performance={self.performance!r}, "
                f"attribute={self.attribute_name!r}, selected={self.selected}, colour_by={self.colour_by!r})")


def _fmt(v: Any) -> str:
    return "-" if v is None or pd.isna(v) else f"{float(v):.3f}"


def _yes(v: Any) -> str:
    return "yes" if bool(v) else "no"


def _draw_prediction(ax, pred: np.ndarray, truth: np.ndarray) -> None:
    """Prediction on top of the ground truth: a pink contour (regions) or a pink fill (thin structures)."""
    from seg4seg_utils.report.plots import is_thin

    if not pred.any():
        return
    if is_thin(truth) if truth.any() else is_thin(pred):
        from matplotlib.colors import to_rgba

        overlay = np.zeros((*pred.shape, 4))
        overlay[pred] = to_rgba(PRED_COLOR, alpha=0.45)
        ax.imshow(overlay, interpolation="nearest")
    elif not pred.all():
        ax.contour(pred.astype(float), levels=[0.5], colors=[PRED_COLOR], linewidths=0.8)


def _summary_html(b: SliceBrowser) -> str:
    """A compact slice table for the static view (narrow enough for a book page): flags in one column, the
    explanation only when some slice has one."""
    t = b.summary_table()
    t = t.set_index("slice").loc[[s for _, s in b.slice_options()]].reset_index()
    perf = b.performance
    show = pd.DataFrame({"slice": t["slice"], "size": t["size"], "share": [f"{v:.1%}" for v in t["share"]],
                         f"mean {_metric_label(perf)}": [_fmt(v) for v in t[f"mean_{perf}"]]})
    for extra in ("ppv", "npv"):
        if extra != perf and f"mean_{extra}" in t.columns:
            show[f"mean {_metric_label(extra)}"] = [_fmt(v) for v in t[f"mean_{extra}"]]
    if b.attribute is not None:
        show["purity"] = [_fmt(v) for v in t["purity"]]
        show[f"P@{b.report.params.get('k', 10)}"] = [_fmt(v) for v in t["precision_at_k"]]
    show["flags"] = [", ".join((["failing"] if f else []) + (["bottom"] if bt else []) +
                               ([] if e else ["empty" if n == 0 else "small"]))
                     for f, bt, e, n in zip(t["failing"], t["bottom"], t["eligible"], t["size"])]
    if b.explanations:
        show["explanation"] = [x if len(x) <= 90 else x[:87] + "..." for x in t["explanation"]]
    return show.to_html(index=False, classes="s4s-table", border=0, escape=True)


# ------------------------------------------------------------------------------------------------ widget
class BrowserWidget:
    """ipywidgets front end of a :class:`SliceBrowser`: controls drive its state, HTML areas redraw.

    Controls: ``colour`` (dropdown of :attr:`SliceBrowser.colour_options`), ``slice`` (dropdown listing each
    slice with size and mean score, worst first), ``n_show`` (members shown), and previous / next / failing
    buttons. Areas: ``map`` (scatter with the selected slice circled), ``details`` (metrics and explanation),
    ``gallery``. Figures are embedded as PNG in HTML widgets, so no plotting backend widget is needed.
    Display it as the last expression of a cell; it needs a live kernel (in a static page it does nothing).
    """

    def __init__(self, browser: SliceBrowser, dpi: int = 80) -> None:
        try:
            import ipywidgets as w
        except ImportError as exc:  # pragma: no cover - ipywidgets is a dependency, but keep the view optional
            raise ImportError("the interactive browser needs ipywidgets (pip install ipywidgets); "
                              "SliceBrowser.static_view() works without it") from exc
        self.browser, self.dpi = browser, dpi
        b = browser
        self.colour = w.Dropdown(options=b.colour_options, value=b.colour_by, description="colour by",
                                 layout=w.Layout(width="230px"))
        self.slice = w.Dropdown(options=b.slice_options(), value=b.selected, description="slice",
                                layout=w.Layout(width="480px"))
        largest = int(max(1, b.slices["size"].max()))
        self.n_show = w.IntSlider(value=min(b.n_show, largest), min=1, max=max(largest, 1), description="members",
                                  continuous_update=False, layout=w.Layout(width="300px"))
        self.prev_button = w.Button(description="◀", tooltip="previous slice (worse)", layout=w.Layout(width="40px"))
        self.next_button = w.Button(description="▶", tooltip="next slice (better)", layout=w.Layout(width="40px"))
        self.failing_button = w.Button(description="failing slice", tooltip="jump to the failing slice",
                                       layout=w.Layout(width="110px"))
        self.map = w.HTML()
        self.details = w.HTML()
        self.gallery = w.HTML()
        header = w.HTML(f"<b>{html.escape(b.title or 'Slice browser')}</b> - {html.escape(b.verdict())}")
        self.box = w.VBox([header,
                           w.HBox([self.colour, self.slice]),
                           w.HBox([self.n_show, self.prev_button, self.next_button, self.failing_button]),
                           w.HBox([self.map, self.details]),
                           self.gallery])
        self.colour.observe(self._on_colour, "value")
        self.slice.observe(self._on_slice, "value")
        self.n_show.observe(self._on_n, "value")
        self.prev_button.on_click(lambda _: self._step(-1))
        self.next_button.on_click(lambda _: self._step(+1))
        self.failing_button.on_click(lambda _: setattr(self.slice, "value", b.failing_slice))
        self.refresh()

    # redraws
    def _draw_map(self) -> None:
        self.map.value = _img_tag(self.browser.scatter(), "map", self.dpi)

    def _draw_slice(self) -> None:
        b = self.browser
        self.details.value = b.metrics_html() + b.explanation_html()
        if b.slices.loc[b.selected, "size"]:
            self.gallery.value = _img_tag(b.gallery(), f"gallery of slice {b.selected}", self.dpi)
        else:
            self.gallery.value = f"<p>Slice {b.selected} has no members.</p>"

    def refresh(self) -> None:
        """Redraw everything from the browser's state."""
        self._draw_map()
        self._draw_slice()

    # events
    def _on_colour(self, change: dict) -> None:
        self.browser.colour(change["new"])
        self._draw_map()

    def _on_slice(self, change: dict) -> None:
        self.browser.select(change["new"])
        self.refresh()

    def _on_n(self, change: dict) -> None:
        self.browser.show(change["new"])
        self._draw_slice()

    def _step(self, k: int) -> None:
        order = [s for _, s in self.slice.options]
        self.slice.value = order[(order.index(self.slice.value) + k) % len(order)]

    def _repr_mimebundle_(self, **kwargs: Any):
        bundle = self.box._repr_mimebundle_(**kwargs)
        bundle["text/plain"] = ("Interactive slice browser: needs a live Jupyter kernel (in a static page it does "
                                "nothing; the static view shows the same content).")
        return bundle

    def __repr__(self) -> str:
        return f"BrowserWidget({self.browser!r}) - interactive only with a live kernel"
