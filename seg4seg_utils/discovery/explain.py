"""Text and metadata explanations of discovered slices (after Liu, Bhatia & Fetit 2026, multimodal slice discovery).

A slice is only useful when a person can say what it *is*. Liu et al. turn each sample's metadata into short
text, slice on image + text embeddings, and name every slice by the tokens that are most over-represented in it
compared with well-performing samples, checked against the images with CLIP. This module does the same for
segmentation slices:

1. :func:`metadata_text` - the sample table's attribute columns as readable phrases ("no caliper", "low gain",
   "polygon annotation style") and as *phrase tokens* (``no_caliper``, ``low_gain``, ...). One token per
   attribute-value phrase, not per word: a word tokeniser would split "no caliper" into "no" (shared with "no
   hair") and "caliper" (in every "caliper" text too), and no single token could name the attribute. Numeric
   columns are binned into quantiles of the table given (low / medium / high), booleans read "hair" / "no hair"
   ("cropped" / "not cropped" for participles), categories read "<value> <column>". Free-text columns are split
   into lower-case word tokens. ``id``, ``split``, paths, ``failure`` and per-image performance columns are never
   used (the failure flag is what we want to *find*; performance is what the slicer already uses).
   :func:`leaky_columns` finds the columns that are a recoding of the failure flag (e.g. the injected case's
   ``caliper``) and :func:`hidden_columns` adds the case's attribute: **the honesty rule** is that these never
   enter discovery (embedding, reduction, slicing, naming). A result that uses them is an *oracle upper bound*
   and is labelled so (:data:`ORACLE_VARIANT`, the ``oracle_*`` columns).
2. :func:`tfidf` - TF-IDF of the phrase tokens (scikit-learn's smooth idf and l2 row norm, written out in
   :func:`tfidf`'s docstring so it can be checked by hand).
3. :func:`distinctiveness` - mean TF-IDF of each token in the slice minus in the *reference slice*; the reference
   of slice s is the best-performing *eligible* slice other than s (highest mean performance among slices with at
   least ``N_min`` = 2 % of the samples, the evaluation protocol's size rule), or every other sample
   (``reference="rest"``).
4. :func:`explain_slices` - one row per slice (size, mean performance, reference, top tokens with scores, a
   sentence), for the notebooks and the slice browser.
5. :func:`text_embedding` - the metadata texts through CLIP's text encoder when a :class:`~seg4seg_utils.discovery.embed.ClipEmbedder`
   is given, else an honest, named fallback: TF-IDF + truncated SVD (not CLIP, no language model). :func:`joint_features`
   concatenates it with the reduced image embedding so neither block dominates.
6. :func:`clip_score_difference` - the CLIP check: mean image-text cosine similarity of the top tokens' text
   in the slice minus in the reference (only with real CLIP weights; random weights test the mechanics only).
7. :func:`global_baseline` - no slicing: tokens ranked by mean TF-IDF in the worst ``q`` of images by
   performance minus the rest.

:func:`seg4seg_utils.studies.explanation_study.explain_case` runs all of it for one injected case and trained
model (image-only vs image+metadata slicing, several slicer seeds; the attribute and its recodings withheld from
both, and an optional, labelled oracle that records them); :mod:`seg4seg_utils.report.explain_plots` draws it.
"""
from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import pandas as pd

if TYPE_CHECKING:  # pragma: no cover
    from seg4seg_utils.discovery.embed import ClipEmbedder

__all__ = ["NOT_METADATA", "NEVER_USED", "BIN_LABELS", "FALLBACK_TEXT_EMBEDDING", "HONEST_VARIANTS", "ORACLE_VARIANT",
           "ORACLE_LABEL", "metadata_text", "leaky_columns", "hidden_columns", "attribute_token", "tfidf",
           "distinctiveness", "reference_slice", "explain_slices", "global_baseline", "text_embedding",
           "joint_features", "clip_score_difference"]

#: columns that are bookkeeping or per-image performance, not a description of the image
NOT_METADATA: frozenset[str] = frozenset({
    "id", "split", "image", "mask", "prediction", "path", "dice", "iou", "ppv", "npv", "tp", "fp", "fn", "tn"})
#: columns that never become text: the above plus the hidden failure flag (``failure``, or ``attribute`` as
#: :func:`~seg4seg_utils.studies.pipeline.attribute_study` and the slice browser call it)
NEVER_USED: frozenset[str] = NOT_METADATA | frozenset({"failure", "attribute"})
#: the slicer inputs of the explanation study (:mod:`seg4seg_utils.studies.explanation_study`) that never see
#: the failure attribute or a recoding of it
HONEST_VARIANTS: tuple[str, ...] = ("image", "image+metadata")
#: the slicer input that *records* the attribute: an oracle upper bound, never a result
ORACLE_VARIANT = "image+metadata (oracle: attribute recorded)"
ORACLE_LABEL = "oracle upper bound"
#: words for quantile bins, by number of bins
BIN_LABELS: dict[int, tuple[str, ...]] = {
    2: ("low", "high"), 3: ("low", "medium", "high"), 4: ("low", "medium low", "medium high", "high"),
    5: ("very low", "low", "medium", "high", "very high")}
FALLBACK_TEXT_EMBEDDING = "TF-IDF + truncated SVD of the metadata phrases (fallback: not CLIP, no language model)"


# ------------------------------------------------------------------------------------------- metadata text
def _words(name: Any) -> str:
    """A column name or value as lower-case words: 'annotation_style' -> 'annotation style'."""
    return re.sub(r"\s+", " ", re.sub(r"[_\-/]+", " ", str(name))).strip().lower()


def _token(phrase: str) -> str:
    """A phrase as one token: spaces become underscores ('no caliper' -> 'no_caliper')."""
    return phrase.replace(" ", "_")


def _bool_phrase(column: str, value: bool) -> str:
    """'hair' / 'no hair'; participles read better negated with 'not' ('cropped' / 'not cropped')."""
    name = _words(column)
    if value:
        return name
    return ("not " if name.endswith("ed") and " " not in name else "no ") + name


def _category_phrase(column: str, value: Any) -> str:
    """'<value> <column>': 'low quality', 'polygon annotation style', 'left disc side'."""
    return f"{_words(value)} {_words(column)}"


def _as_bool(series: pd.Series) -> pd.Series | None:
    """The column as booleans (with NaN kept) when it is boolean or only holds true/false strings; else None."""
    if pd.api.types.is_bool_dtype(series):
        return series.astype(object)
    values = series.dropna()
    if len(values) and values.map(lambda v: str(v).strip().lower() in ("true", "false")).all():
        return series.map(lambda v: v if pd.isna(v) else str(v).strip().lower() == "true")
    return None


def _looks_like_path(values: pd.Series) -> bool:
    s = values.dropna().astype(str)
    return bool(len(s)) and s.str.contains(r"[/\\]|\.(?:png|jpe?g|tiff?|bmp|npy|nii(?:\.gz)?)$", regex=True).mean() > 0.5


def metadata_text(table: Any, exclude: Sequence[str] = (), n_bins: int = 3, max_categories: int = 12,
                  free_text: Sequence[str] = ()) -> pd.DataFrame:
    """Each sample's metadata as readable text and phrase tokens; one row per sample, in the table's order.

    ``table`` is a :class:`~seg4seg_utils.data.records.SampleTable` or a DataFrame (e.g. one split of ``samples.csv``, or a run's
    metrics table). Columns in :data:`NEVER_USED`, in ``exclude``, holding file paths, or constant-free
    identifiers are skipped. Numeric columns with more than ``max_categories`` distinct values are cut into
    ``n_bins`` quantile bins *of this table* (so "high gain" means the top third of these samples); other numeric
    and string columns with at most ``max_categories`` values are categories; string columns with more values
    are free text (word tokens) when they contain words, else skipped (e.g. ``crop_box`` coordinates). Columns
    named in ``free_text`` are always free text. Missing values add no phrase.

    Returns a DataFrame with ``text`` (phrases joined by ", ") and ``tokens`` (list of str), indexed like the
    table; ``.attrs`` records ``used`` (column -> kind) and ``skipped`` (column -> reason).
    """
    df = getattr(table, "df", table)
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"metadata_text needs a SampleTable or a pandas DataFrame, got {type(table).__name__}")
    if n_bins not in BIN_LABELS:
        raise ValueError(f"n_bins must be one of {sorted(BIN_LABELS)}, got {n_bins}")
    unknown = [c for c in list(exclude) + list(free_text) if c not in df.columns]
    if unknown:
        raise KeyError(f"column(s) {unknown} are not in the table; its columns are {list(df.columns)}")
    phrases: list[list[str]] = [[] for _ in range(len(df))]
    tokens: list[list[str]] = [[] for _ in range(len(df))]
    used: dict[str, str] = {}
    skipped: dict[str, str] = {}

    def add(i: int, phrase: str, toks: list[str] | None = None) -> None:
        phrases[i].append(phrase)
        tokens[i].extend(toks if toks is not None else [_token(phrase)])

    for col in df.columns:
        s = df[col]
        if str(col).lower() in NEVER_USED or col in exclude:
            skipped[col] = "never used (id, split, path, failure flag or performance)" if col not in exclude \
                else "excluded by the caller"
            continue
        if s.isna().all():
            skipped[col] = "all values missing"
            continue
        if col in free_text:
            kind = "free text"
        elif (b := _as_bool(s)) is not None:
            kind = "boolean"
            for i, v in enumerate(b):
                if not pd.isna(v):
                    add(i, _bool_phrase(col, bool(v)))
            used[col] = kind
            continue
        elif pd.api.types.is_numeric_dtype(s) or pd.to_numeric(s.dropna(), errors="coerce").notna().all():
            s = pd.to_numeric(s)  # numbers, also when stored as strings
            kind = "numeric bins" if s.nunique() > max_categories else "numeric categories"
        elif _looks_like_path(s):
            skipped[col] = "file paths"
            continue
        elif not s.dropna().astype(str).str.contains(r"[A-Za-z]", regex=True).all():
            # e.g. crop_box "44 47 128 128": coordinates or codes, not words a person would read
            skipped[col] = "values without words (identifiers or coordinates)"
            continue
        elif s.nunique() <= max_categories:
            kind = "categories"
        else:
            kind = "free text"
        used[col] = kind
        if kind == "numeric bins":
            ranks = s.rank(method="average", pct=True)  # quantile bins that never split tied values
            idx = np.minimum((np.ceil(ranks * n_bins) - 1).clip(lower=0), n_bins - 1)
            for i, (v, b) in enumerate(zip(s, idx)):
                if not pd.isna(v):
                    add(i, f"{BIN_LABELS[n_bins][int(b)]} {_words(col)}")
        elif kind == "numeric categories":
            for i, v in enumerate(s):
                if not pd.isna(v):
                    value = int(v) if float(v).is_integer() else v
                    add(i, f"{_words(col)} {value}")
        elif kind == "categories":
            for i, v in enumerate(s):
                if not pd.isna(v):
                    add(i, _category_phrase(col, v))
        else:  # free text: readable as written, tokens are its lower-case words
            for i, v in enumerate(s):
                if not pd.isna(v) and str(v).strip():
                    text = re.sub(r"\s+", " ", str(v)).strip()
                    add(i, text.replace(",", ";"), re.findall(r"[a-z0-9]+", text.lower()))
    out = pd.DataFrame({"text": [", ".join(p) for p in phrases], "tokens": tokens}, index=df.index)
    out.attrs["used"], out.attrs["skipped"] = used, skipped
    return out


def leaky_columns(table: Any, failure: Any = "failure", n_bins: int = 3, max_categories: int = 12) -> list[str]:
    """The columns that are a recoding of the failure flag, so would hand it to discovery; in table order.

    ``failure`` is a column name (that column is listed too) or a boolean array with one entry per row. A column
    is **leaky** when either

    * its value as :func:`metadata_text` writes it (its phrase tokens; numbers binned into the same ``n_bins``
      quantiles with the same ``max_categories``; a missing value is a value of its own) determines ``failure``
      exactly - every distinct value occurs with one failure value only - and not trivially so: it takes at most
      ``max_categories`` distinct values (the bound at which :func:`metadata_text` stops calling a column a
      category) and fewer than there are rows. Without the bound a column where (nearly) every row has its own
      value, such as an identifier or a free-text note, "determines" any flag; or
    * whether a value is recorded at all determines ``failure`` (e.g. case B's ``crop_box``: coordinates for the
      cropped images, empty for the rest).

    Columns that :func:`metadata_text` skips (coordinates, file paths) are compared by their raw values, since
    another consumer (e.g. the slice browser's metadata contrast) may still read them. Bookkeeping and
    performance columns (:data:`NOT_METADATA`) are not metadata and are never listed. When ``failure`` takes a
    single value there is nothing to encode and only the failure column itself is returned.

    Why exact recodings only: a column that merely *correlates* with the failure (a noisy proxy) is metadata a
    user could genuinely have recorded; a column that reproduces the flag row by row is the label under another
    name. The benchmark uses the hidden flag here only to *remove* columns; a real deployment has no flag and
    nothing to remove. Pass the whole sample table (every split) where you can: with few rows a column can
    separate a handful of failures by chance.
    """
    df = getattr(table, "df", table)
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"leaky_columns needs a SampleTable or a pandas DataFrame, got {type(table).__name__}")
    name = failure if isinstance(failure, str) else None
    if name is not None:
        if name not in df.columns:
            raise KeyError(f"failure column {name!r} is not in the table; its columns are {list(df.columns)}")
        flag = df[name]
    else:
        arr = np.asarray(failure)
        if arr.shape != (len(df),):
            raise ValueError(f"failure has shape {arr.shape}: expected {len(df)} entries, one per row of the table")
        flag = pd.Series(arr, index=df.index)
    flag = flag.map(lambda v: "<missing>" if pd.isna(v) else str(v).strip().lower() in ("true", "1", "1.0"))

    def determines(value: pd.Series) -> bool:
        groups = pd.DataFrame({"v": value.to_numpy(), "f": flag.to_numpy()}).groupby("v")["f"].nunique()
        return bool((groups == 1).all())

    out = []
    for col in df.columns:
        if col == name:
            out.append(col)
            continue
        if str(col).lower() in NOT_METADATA or flag.nunique() < 2:
            continue
        text = metadata_text(df[[col]], n_bins=n_bins, max_categories=max_categories)
        missing = df[col].map(lambda v: pd.isna(v) or str(v).strip() == "")
        if col in text.attrs["used"]:
            value = text["tokens"].map(lambda t: " ".join(t) if t else "<missing>")
        else:  # skipped by metadata_text: its raw values, missing as a value of its own
            value = df[col].where(~missing, "<missing>").astype(str)
        few = value.nunique() <= min(max_categories, len(value) - 1)  # a category, not one value per row
        if (few and determines(value)) or (missing.nunique() == 2 and determines(missing)):
            out.append(col)
    return out


def hidden_columns(table: Any, case: str | None = None, failure: str = "failure", **kwargs: Any) -> list[str]:
    """Every column of ``table`` the honesty rule keeps out of discovery: the failure column, the injected
    ``case``'s attribute column (by name, whatever its values) and every :func:`leaky_columns` recoding of the
    failure flag. Only columns present in the table are returned, so a table without them gives ``[]``.
    ``kwargs`` go to :func:`leaky_columns` (``n_bins``, ``max_categories``)."""
    df = getattr(table, "df", table)
    cols = [failure] if failure in df.columns else []
    if case is not None:
        from seg4seg_utils.data.inject import get_case

        attribute = get_case(case).attribute
        cols += [attribute] if attribute in df.columns else []
    if failure in df.columns:
        cols += leaky_columns(df, failure, **kwargs)
    return [c for c in df.columns if c in set(cols)]


def attribute_token(case: str) -> str:
    """The phrase token that names an injected case's failure attribute, built by the same rules as the text.

    A -> ``no_caliper``, B -> ``cropped``, C -> ``polygon_annotation_style``, D -> ``low_quality``.
    """
    from seg4seg_utils.data.inject import get_case

    c = get_case(case)
    if isinstance(c.failure_value, (bool, np.bool_)):
        return _token(_bool_phrase(c.attribute, bool(c.failure_value)))
    return _token(_category_phrase(c.attribute, c.failure_value))


# ------------------------------------------------------------------------------------------------ TF-IDF
def _token_lists(docs: Any) -> list[list[str]]:
    """Token lists from metadata_text output, a DataFrame of metadata, or a sequence of token lists."""
    if isinstance(docs, pd.DataFrame) or hasattr(docs, "df"):
        frame = getattr(docs, "df", docs)
        if "tokens" not in frame.columns:
            frame = metadata_text(frame)
        docs = frame["tokens"].tolist()
    docs = list(docs)
    for i, d in enumerate(docs):
        if isinstance(d, str) or not all(isinstance(t, str) for t in d):
            raise TypeError(f"document {i} must be a list of str tokens (use metadata_text to build them), got {d!r}")
    return [list(d) for d in docs]


def tfidf(docs: Any) -> tuple[np.ndarray, list[str]]:
    """TF-IDF matrix (n_docs, n_tokens) and its vocabulary (sorted), of token lists or metadata.

    tf = count of the token in the document; idf = ln((1 + n) / (1 + df)) + 1 (df = documents containing it);
    each row is divided by its l2 norm (scikit-learn's ``TfidfVectorizer`` defaults). A document without tokens
    is a zero row.
    """
    from sklearn.feature_extraction.text import TfidfVectorizer

    docs = _token_lists(docs)
    if not docs:
        raise ValueError("tfidf needs at least one document")
    if not any(docs):
        raise ValueError("no document has any token: was every metadata column excluded?")
    vec = TfidfVectorizer(analyzer=lambda d: d, lowercase=False, norm="l2", smooth_idf=True, sublinear_tf=False)
    X = vec.fit_transform(docs).toarray().astype(np.float64)
    return X, list(vec.get_feature_names_out())


def _members(mask_or_index: Any, n: int, name: str) -> np.ndarray:
    arr = np.asarray(mask_or_index)
    if arr.dtype == bool:
        if arr.shape != (n,):
            raise ValueError(f"{name} is a boolean mask of shape {arr.shape}, expected ({n},)")
        return arr
    idx = arr.astype(np.int64).ravel()
    if idx.size and (idx.min() < 0 or idx.max() >= n):
        raise ValueError(f"{name} has indices outside 0..{n - 1}")
    mask = np.zeros(n, dtype=bool)
    mask[idx] = True
    return mask


def distinctiveness(X: np.ndarray, vocab: Sequence[str], members: Any, reference: Any) -> pd.Series:
    """Mean TF-IDF per token over ``members`` minus over ``reference`` (boolean masks or index arrays), sorted
    from most to least distinctive (ties by token name)."""
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or X.shape[1] != len(vocab):
        raise ValueError(f"X must be (n, len(vocab)) = (n, {len(vocab)}), got {X.shape}")
    m, r = _members(members, len(X), "members"), _members(reference, len(X), "reference")
    if not m.any() or not r.any():
        raise ValueError(f"both groups need samples: members has {int(m.sum())}, reference has {int(r.sum())}")
    score = X[m].mean(axis=0) - X[r].mean(axis=0)
    s = pd.Series(score, index=list(vocab), name="distinctiveness")
    order = sorted(range(len(s)), key=lambda j: (-round(score[j], 12), vocab[j]))
    return s.iloc[order]


# ------------------------------------------------------------------------------------------------ slices
def _slice_stats(labels: np.ndarray, perf: np.ndarray, n_slices: int, n_min: int) -> pd.DataFrame:
    size = np.bincount(labels, minlength=n_slices)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.bincount(labels, weights=perf, minlength=n_slices) / size
    return pd.DataFrame({"slice": np.arange(n_slices), "size": size, "mean_perf": mean, "eligible": size >= n_min})


def reference_slice(stats: pd.DataFrame, s: int) -> int | None:
    """The best-performing eligible slice other than ``s`` (ties: lower id), or None when there is none."""
    cand = stats[stats["eligible"] & (stats["slice"] != s)]
    if not len(cand):
        return None
    return int(cand.sort_values(["mean_perf", "slice"], ascending=[False, True])["slice"].iloc[0])


def _check_inputs(labels: Any, performance: Any, n_slices: int | None) -> tuple[np.ndarray, np.ndarray, int]:
    from seg4seg_utils.discovery.protocol import as_scores, as_slice_labels

    perf = as_scores(performance, "performance")
    lab = as_slice_labels(labels, len(perf))
    if len(lab) == 0:
        raise ValueError("no samples: labels and performance are empty")
    k = int(lab.max()) + 1 if n_slices is None else int(n_slices)
    if lab.max() >= k:
        raise ValueError(f"labels contains slice id {lab.max()} but n_slices={k}")
    return lab, perf, k


def explain_slices(labels: Any, performance: Any, metadata: Any, *, n_top: int = 5, reference: str = "best",
                   n_slices: int | None = None, n_min: int | None = None, perf_name: str = "Dice",
                   clip: "ClipEmbedder | None" = None, image_embeddings: np.ndarray | None = None) -> pd.DataFrame:
    """Explain every slice by its most distinctive metadata tokens; one row per slice id 0..K-1.

    ``labels`` (n,) hard slice ids, ``performance`` (n,) per-image scores (higher = better), ``metadata`` the
    samples' attributes in the same row order: a DataFrame / SampleTable (turned into text by
    :func:`metadata_text`), :func:`metadata_text` output, or token lists. ``reference="best"`` compares each
    slice with the best-performing eligible slice other than itself (eligible: at least ``n_min`` samples,
    default the protocol's 2 % rule); ``"rest"`` with all other samples. With ``clip`` (a real
    :class:`~seg4seg_utils.discovery.embed.ClipEmbedder`) and its ``image_embeddings`` (n, d) of the same samples, adds the CLIP score
    difference of the top token's text (:func:`clip_score_difference`); otherwise that column is NaN.

    Columns: ``slice, size, mean_perf, eligible, reference_slice, top_tokens (list), top_scores (list),
    clip_score_diff, sentence``. Empty slices get empty lists and a sentence saying so.
    """
    from seg4seg_utils.discovery.protocol import min_slice_size

    if reference not in ("best", "rest"):
        raise ValueError(f"reference must be 'best' (best-performing eligible slice) or 'rest', got {reference!r}")
    if int(n_top) != n_top or n_top < 1:
        raise ValueError(f"n_top must be a positive integer, got {n_top}")
    lab, perf, k = _check_inputs(labels, performance, n_slices)
    docs = _token_lists(metadata)
    if len(docs) != len(lab):
        raise ValueError(f"metadata has {len(docs)} rows but labels has {len(lab)}; one row per sample, same order")
    X, vocab = tfidf(docs)
    n_min = min_slice_size(len(lab)) if n_min is None else int(n_min)
    stats = _slice_stats(lab, perf, k, n_min)
    texts = None
    if clip is not None:
        if image_embeddings is None or len(image_embeddings) != len(lab):
            raise ValueError("clip= needs image_embeddings= from the same CLIP model, one row per sample")
        texts = {}
    rows = []
    for s in range(k):
        row = {"slice": s, "size": int(stats["size"].iat[s]), "mean_perf": float(stats["mean_perf"].iat[s]),
               "eligible": bool(stats["eligible"].iat[s])}
        members = lab == s
        ref = None if reference == "rest" else reference_slice(stats, s)
        ref_mask = ~members if reference == "rest" else (lab == ref if ref is not None else None)
        if not members.any() or ref_mask is None or not ref_mask.any():
            why = "empty slice" if not members.any() else "no reference slice (no other eligible slice)"
            rows.append({**row, "reference_slice": ref, "top_tokens": [], "top_scores": [],
                         "clip_score_diff": float("nan"), "sentence": f"Slice {s}: {why}, nothing to explain."})
            continue
        d = distinctiveness(X, vocab, members, ref_mask).iloc[:int(n_top)]
        toks, scores = list(d.index), [float(v) for v in d.to_numpy()]
        clip_diff = float("nan")
        if texts is not None and toks:
            phrase = toks[0].replace("_", " ")
            if phrase not in texts:
                texts[phrase] = clip.embed_text([phrase])[0]
            clip_diff = clip_score_difference(image_embeddings, texts[phrase], members, ref_mask)
        ref_txt = "all other samples" if reference == "rest" else f"reference slice {ref} (mean {perf_name} " \
                  f"{stats['mean_perf'].iat[ref]:.2f})"
        listed = ", ".join(f"'{t.replace('_', ' ')}' ({v:+.2f})" for t, v in zip(toks[:3], scores[:3]))
        sentence = (f"Slice {s} ({row['size']} images, mean {perf_name} {row['mean_perf']:.2f}) vs {ref_txt}: "
                    f"most distinctive {listed}.")
        rows.append({**row, "reference_slice": ref, "top_tokens": toks, "top_scores": scores,
                     "clip_score_diff": clip_diff, "sentence": sentence})
    out = pd.DataFrame(rows)
    out["reference_slice"] = out["reference_slice"].astype("Int64")
    return out


def global_baseline(metadata: Any, performance: Any, quantile: float = 0.2, n_top: int | None = None) -> pd.Series:
    """No slicing: mean TF-IDF per token in the worst ``quantile`` of samples by performance minus in the rest.

    The worst group is the ``ceil(quantile * n)`` lowest scores (ties: lower index first), so it is never empty
    and never everything. Returns the tokens sorted by score (all of them, or the ``n_top`` first).
    """
    from seg4seg_utils.discovery.protocol import as_scores

    perf = as_scores(performance, "performance")
    if not 0 < quantile < 1:
        raise ValueError(f"quantile must be in (0, 1), got {quantile}")
    docs = _token_lists(metadata)
    if len(docs) != len(perf):
        raise ValueError(f"metadata has {len(docs)} rows but performance has {len(perf)}")
    if len(perf) < 2:
        raise ValueError("the global baseline needs at least two samples")
    n_worst = min(len(perf) - 1, max(1, math.ceil(round(quantile * len(perf), 9))))
    worst = np.zeros(len(perf), dtype=bool)
    worst[np.argsort(perf, kind="stable")[:n_worst]] = True
    X, vocab = tfidf(docs)
    d = distinctiveness(X, vocab, worst, ~worst)
    return d if n_top is None else d.iloc[:int(n_top)]


# ------------------------------------------------------------------------------------ text embedding, CLIP
def text_embedding(metadata: Any, clip: "ClipEmbedder | None" = None, n_components: int = 8,
                   random_state: int | None = 0) -> tuple[np.ndarray, str]:
    """The samples' metadata texts as an (n, n_components) embedding and its honest name.

    With ``clip`` (a :class:`~seg4seg_utils.discovery.embed.ClipEmbedder`) the readable texts go through CLIP's text encoder, then PCA
    to ``n_components``; without it the fallback is TF-IDF of the phrase tokens + truncated SVD
    (:data:`FALLBACK_TEXT_EMBEDDING`). Fewer columns come back when the data cannot support more (fewer
    tokens / samples than ``n_components``).
    """
    from sklearn.decomposition import PCA, TruncatedSVD

    if int(n_components) != n_components or n_components < 1:
        raise ValueError(f"n_components must be a positive integer, got {n_components}")
    frame = getattr(metadata, "df", metadata)
    if isinstance(frame, pd.DataFrame) and not {"text", "tokens"} <= set(frame.columns):
        frame = metadata_text(frame)
    if not isinstance(frame, pd.DataFrame):
        raise TypeError("text_embedding needs a DataFrame of metadata (or metadata_text output)")
    if clip is not None:
        T = np.asarray(clip.embed_text(frame["text"].tolist()), dtype=np.float64)
        k = min(int(n_components), T.shape[1], len(T))
        T = PCA(n_components=k, random_state=random_state).fit_transform(T) if T.shape[1] > k else T
        return np.ascontiguousarray(T), f"CLIP text encoder of {clip.name}, PCA to {k}"
    X, vocab = tfidf(frame["tokens"].tolist())
    k = min(int(n_components), X.shape[1] - 1, len(X) - 1)
    if k < 1:
        raise ValueError(f"the metadata has only {X.shape[1]} distinct token(s): nothing to embed")
    T = TruncatedSVD(n_components=k, random_state=random_state).fit_transform(X)
    return np.ascontiguousarray(T), f"{FALLBACK_TEXT_EMBEDDING}, {k} components"


def joint_features(image: np.ndarray, text: np.ndarray) -> np.ndarray:
    """Image and text blocks side by side, each column standardised, with as many text as image columns.

    Why equal column counts: the slicer standardises every column and its diagonal mixture sums one
    log-likelihood term per column, so a block's weight is its number of columns. Giving both blocks the same
    number (e.g. UMAP-8 of the image, 8 text components) weighs image and metadata equally, whatever the raw
    dimensions (1280-d EfficientNet, 512-d CLIP, ...).
    """
    image, text = np.asarray(image, dtype=np.float64), np.asarray(text, dtype=np.float64)
    if image.ndim != 2 or text.ndim != 2 or len(image) != len(text):
        raise ValueError(f"image and text must be 2-D with one row per sample, got {image.shape} and {text.shape}")
    if image.shape[1] != text.shape[1]:
        raise ValueError(f"image block has {image.shape[1]} columns but text block {text.shape[1]}: reduce both "
                         "to the same number (a block's weight in the slicer is its column count)")
    if not (np.isfinite(image).all() and np.isfinite(text).all()):
        raise ValueError("image or text features contain NaN/inf")

    def z(a: np.ndarray) -> np.ndarray:
        sd = a.std(axis=0)
        return (a - a.mean(axis=0)) / np.where(sd > 0, sd, 1.0)

    return np.hstack([z(image), z(text)])


def clip_score_difference(image_embeddings: np.ndarray, text_embedding_: np.ndarray, members: Any,
                          reference: Any) -> float:
    """Mean cosine similarity between the images and one text embedding over ``members`` minus over ``reference``.

    Positive: CLIP sees the text (e.g. the slice's top token, "no caliper") more in the slice than in the
    reference. Meaningful only with real CLIP weights whose image and text towers share a space.
    """
    I = np.asarray(image_embeddings, dtype=np.float64)
    t = np.asarray(text_embedding_, dtype=np.float64).ravel()
    if I.ndim != 2 or I.shape[1] != t.shape[0]:
        raise ValueError(f"image embeddings {I.shape} and text embedding ({t.shape[0]},) must share the dimension")
    norms = np.linalg.norm(I, axis=1) * np.linalg.norm(t)
    if (norms == 0).any():
        raise ValueError("zero-length image or text embedding: cosine similarity is undefined")
    sim = I @ t / norms
    m, r = _members(members, len(I), "members"), _members(reference, len(I), "reference")
    if not m.any() or not r.any():
        raise ValueError("members and reference both need samples")
    return float(sim[m].mean() - sim[r].mean())


