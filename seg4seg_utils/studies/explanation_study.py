"""The explanation study: name the slices of one injected case, with and without metadata, and say whether the
name is the hidden attribute's (that last check reads the attribute: an **oracle upper bound**, labelled so).

Built from :mod:`seg4seg_utils.discovery.explain` (texts, TF-IDF, distinctiveness, text embeddings); the hidden
columns (:func:`~seg4seg_utils.discovery.explain.hidden_columns`) never enter discovery or naming.
:func:`write_summary`, :func:`distinctiveness_figures` and :func:`global_baseline_table` compute notebook 10's
tables and figures and write them into the study's results folder (:data:`RESULT_FILES`); the notebook only shows them.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import pandas as pd

from seg4seg_utils.discovery.explain import (
    ORACLE_LABEL,
    ORACLE_VARIANT,
    attribute_token,
    distinctiveness,
    explain_slices,
    global_baseline,
    hidden_columns,
    joint_features,
    metadata_text,
    text_embedding,
    tfidf,
)
from seg4seg_utils.studies.workspace import results_folder

if TYPE_CHECKING:  # pragma: no cover
    from seg4seg_utils.discovery.embed import ClipEmbedder

__all__ = ["JUDGED_COLUMNS", "RESULT_FILES", "explain_case", "summary_table", "write_summary",
           "distinctiveness_figures", "global_baseline_table"]

#: what the study writes into its results folder (``results/<preset>/explain/`` in the book), by function
RESULT_FILES = {"write_summary": ("explanations.csv", "explanations.md"),
                "distinctiveness_figures": ("distinctiveness.png", "distinctiveness_oracle.png"),
                "global_baseline_table": ("global_baseline.csv",)}

#: the protocol's columns (:meth:`~seg4seg_utils.discovery.protocol.SliceReport.to_row`) an explanation row carries
JUDGED_COLUMNS = ("success", "worst_slice", "worst_size", "worst_perf", "worst_purity", "precision_at_k")


def explain_case(table, run, embedder, case: str, seeds: Sequence[int] = (0, 1, 2, 3, 4),
                 cache_dir: str | os.PathLike | None = "cache/embeddings", clip: "ClipEmbedder | None" = None,
                 n_top: int = 5, gamma: float = 10.0, n_components: int = 8, oracle: bool = False,
                 reduce: str = "umap", progress: bool = False) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Image-only vs image+metadata SEG4SEG slicing of one trained model's test split, each slice explained.

    The honesty rule: the failure flag, the case's attribute column and every recoding of the flag
    (:func:`hidden_columns` of the sample table) never enter discovery - not the text embedding, not the slicer,
    not the explanations. Variants (the slicer's input):

    ``image`` - UMAP-``n_components`` of the image embedding (the benchmark's own cached reduction; ``reduce="pca"``
    for quick tests);
    ``image+metadata`` - the same side by side with the text embedding of the *remaining* metadata
    (:func:`joint_features`): what metadata a user could have recorded adds;
    :data:`ORACLE_VARIANT` (only with ``oracle=True``) - the text embedding built with the attribute recorded. It
    hands the slicer the answer, so it is an **oracle upper bound**, never a result (``status`` says so).

    Per slicer seed and variant: the SliceFinder (the case's ``n_slices``, ``gamma``), the protocol's verdict
    (``success``), and the *worst slice* (:func:`~seg4seg_utils.discovery.protocol.worst_slice`: lowest mean Dice among eligible slices,
    chosen without the hidden attribute, as a user would): its purity, precision@10 (of its 10 highest-probability
    samples, the share carrying the failure attribute), and its explanation from the remaining metadata
    (``top_tokens``, ``top_token``). The ``oracle_*`` columns explain the same slices with the attribute recorded
    and ask whether its token (:func:`attribute_token`) comes first (``oracle_names_attribute``), its rank
    (``oracle_attribute_rank``) and whether some bottom slice (protocol's bottom 40 %, label-free) is named by it
    (``oracle_names_attribute_bottom``): measures of the slices that read the hidden attribute, like purity.
    Returns (one row per seed x variant, extras: the remaining metadata text, the hidden columns, global baselines
    at 10 % and 20 % on the remaining metadata and, labelled oracle, with the attribute recorded, the text
    embedding's name and the explanation tables of seed ``seeds[0]``: ``explanations`` from the remaining metadata,
    ``explanations_oracle`` of the same slices with the attribute recorded).
    """
    from seg4seg_utils.data.inject import get_case
    from seg4seg_utils.discovery.embed import embed_dataset, performance_matrix
    from seg4seg_utils.discovery.judge import SlicerSettings, fit_and_judge
    from seg4seg_utils.discovery.protocol import precision_at_k
    from seg4seg_utils.discovery.reduce import cached_reduction

    c = get_case(case)
    emb = embed_dataset(table, embedder, "x0", run=run, cache_dir=cache_dir, progress=progress)
    metrics = run.metrics().set_index("id").loc[emb.ids].reset_index()
    dice = performance_matrix(metrics, ("dice",), ids=emb.ids)[:, 0]
    test = table.split("test").df.set_index("id").loc[emb.ids].reset_index()
    hidden_cols = hidden_columns(table.df, c.name)  # detected on every split: chance separations are rarer
    meta = metadata_text(test, exclude=hidden_cols)           # what discovery and naming may read
    meta_oracle = metadata_text(test)                         # with the attribute recorded: oracle only
    X_oracle, vocab_oracle = tfidf(meta_oracle)
    target = attribute_token(c.name)
    texts = {"image+metadata": text_embedding(meta, clip=clip, n_components=n_components, random_state=0)}
    if oracle:
        texts[ORACLE_VARIANT] = text_embedding(meta_oracle, clip=clip, n_components=n_components, random_state=0)
    clip_images = None
    if clip is not None:
        clip_images = embed_dataset(table, clip, "x0", run=run, cache_dir=cache_dir, progress=progress).X
    reduced_cache = Path(cache_dir) / "reduced" if cache_dir is not None else None
    rows, tables, oracle_tables = [], {}, {}
    for seed in seeds:
        Z = cached_reduction(emb.X, reduce, n_components, int(seed), reduced_cache)
        variants = {"image": Z}
        for name, (T, _) in texts.items():
            if T.shape[1] != Z.shape[1]:
                raise ValueError(f"the metadata supports only {T.shape[1]} text components but the image block has "
                                 f"{Z.shape[1]}; pass a smaller n_components")
            variants[name] = joint_features(Z, T)
        for variant, F in variants.items():
            hidden = metrics["failure"].astype(bool).to_numpy()
            sf, report = fit_and_judge(F, dice, hidden, n_slices=c.n_slices, settings=SlicerSettings(gamma=gamma),
                                       seed=int(seed))
            # naming reads the slices and the remaining metadata only; the slice named is the label-free worst one
            # (size, eligibility and mean Dice decide it, never purity)
            ex = explain_slices(sf.labels_, dice, meta["tokens"].tolist(), n_top=n_top, n_slices=c.n_slices,
                                clip=clip, image_embeddings=clip_images)
            worst = report.worst_slice
            top = ex.at[worst, "top_tokens"]
            # --- discovery and naming end here; below, the hidden flag judges what was found
            named = explain_slices(sf.labels_, dice, meta_oracle["tokens"].tolist(), n_top=n_top, n_slices=c.n_slices)
            oracle_top = named.at[worst, "top_tokens"]
            ref = named.at[worst, "reference_slice"]
            rank = float("nan")
            if oracle_top and not pd.isna(ref):
                full = distinctiveness(X_oracle, vocab_oracle, sf.labels_ == worst, sf.labels_ == int(ref))
                rank = int(list(full.index).index(target)) + 1 if target in full.index else float("nan")
            bottom = report.table.loc[report.table["bottom"], "slice"].tolist()
            judged = report.to_row()
            rows.append({"case": c.name, "variant": variant,
                         "status": ORACLE_LABEL if variant == ORACLE_VARIANT else "result",
                         "slicer_seed": int(seed), **{k: judged[k] for k in JUDGED_COLUMNS},
                         "worst_precision_at_k": float(precision_at_k(sf.proba_, hidden, 10)[worst]),
                         "top_tokens": top, "top_scores": ex.at[worst, "top_scores"],
                         "top_token": top[0] if top else None,
                         "clip_score_diff": float(ex.at[worst, "clip_score_diff"]),
                         "oracle_top_token": oracle_top[0] if oracle_top else None,
                         "oracle_names_attribute": bool(oracle_top) and oracle_top[0] == target,
                         "oracle_attribute_rank": rank,
                         "oracle_names_attribute_bottom": any(named.at[b, "top_tokens"][:1] == [target]
                                                              for b in bottom)})
            if int(seed) == int(seeds[0]):
                tables[variant], oracle_tables[variant] = ex, named
    extras = {"metadata": meta, "hidden_columns": hidden_cols, "attribute_token": target,
              "text_embedding": texts["image+metadata"][1], "global_10": global_baseline(meta, dice, 0.1),
              "global_20": global_baseline(meta, dice, 0.2),
              "global_10_oracle": global_baseline(meta_oracle, dice, 0.1),
              "global_20_oracle": global_baseline(meta_oracle, dice, 0.2), "explanations": tables,
              "explanations_oracle": oracle_tables,
              "n_test": len(dice), "n_failure": int(metrics["failure"].astype(bool).sum())}
    return pd.DataFrame(rows), extras


def summary_table(rows: pd.DataFrame) -> pd.DataFrame:
    """:func:`explain_case` rows (any number of cases/prevalences) aggregated over slicer seeds.

    Per case, prevalence (when present) and variant: ``status`` ("result", or "oracle upper bound" for the
    variant that recorded the attribute), detection rate, mean P@10 of the worst slice and the protocol's max P@10,
    mean purity of the worst slice, the worst slice's most frequent top token from the remaining metadata
    ("token (k/n)"), the mean CLIP score difference (NaN without CLIP), and - reading the hidden attribute, so
    labelled oracle - the most frequent top token with the attribute recorded, the share of seeds where it is the
    attribute's token, the median rank of that token, and the share where some bottom slice is named by it.
    """
    from seg4seg_utils.stats import with_detection_counts

    keys = [k for k in ("case", "prevalence", "variant") if k in rows.columns]
    if not len(rows):
        raise ValueError("no rows to summarise")

    def mode(tokens: pd.Series) -> str:
        counts = tokens.fillna("-").value_counts()
        return f"{counts.index[0]} ({counts.iloc[0]}/{len(tokens)})"

    out = rows.groupby(keys, sort=False).agg(
        status=("status", "first"), detection_rate=("success", "mean"),
        worst_precision_at_k=("worst_precision_at_k", "mean"), precision_at_k=("precision_at_k", "mean"), worst_purity=("worst_purity", "mean"), top_token=("top_token", mode),
        clip_score_diff=("clip_score_diff", "mean"), oracle_top_token=("oracle_top_token", mode),
        oracle_names_attribute=("oracle_names_attribute", "mean"),
        oracle_attribute_rank=("oracle_attribute_rank", "median"),
        oracle_named_by_a_bottom_slice=("oracle_names_attribute_bottom", "mean"),
        n_seeds=("success", "size")).reset_index()
    return with_detection_counts(out)  # k/n and a 95 % Wilson interval beside the rate


def write_summary(rows: pd.DataFrame, out_dir: str | os.PathLike | None, preset: str, image_embedder: str,
                  text_embedding: str) -> pd.DataFrame:
    """:func:`summary_table` of ``rows``, written to ``out_dir`` as ``explanations.csv`` and ``explanations.md``
    (a title naming the preset, the image embedder and the text embedding, the oracle warning, the table).

    ``out_dir`` None: nothing is written. Returns the table; the same rows always give the same files.
    """
    table = summary_table(rows)
    out = results_folder(out_dir)
    if out is not None:
        table.to_csv(out / "explanations.csv", index=False)
        (out / "explanations.md").write_text(
            f"# Slice explanations (preset `{preset}`, image embedder: {image_embedder}; text: {text_embedding})\n\n"
            f"Rows with status `{ORACLE_LABEL}` recorded the failure attribute: an oracle upper bound, not a result. "
            "The `oracle_*` columns read the attribute too.\n\n" + table.to_markdown(index=False, floatfmt=".2f") + "\n")
    return table


def distinctiveness_figures(rows: pd.DataFrame, extras: dict[tuple[str, float], dict[str, Any]], cases: Sequence[str],
                            prevalence: float, out_dir: str | os.PathLike | None, n_top: int = 5):
    """The worst slice's most distinctive tokens per case (image-only slicing, the first slicer seed, at
    ``prevalence``): from the remaining metadata, and - an **oracle upper bound** - the same slices explained with
    the attribute recorded, its token in red (:func:`seg4seg_utils.report.explain_plots.distinctiveness_plot`).

    ``rows``/``extras``: :func:`explain_case`'s, the rows carrying ``prevalence`` and the extras keyed by
    ``(case, prevalence)``. Saved to ``out_dir`` as ``distinctiveness.png`` and ``distinctiveness_oracle.png``
    (110 dpi; None: not saved). Returns (figure, oracle figure).
    """
    from seg4seg_utils.report.explain_plots import distinctiveness_plot

    scores, scores_oracle, highlight = {}, {}, {}
    for case in cases:
        ex = extras[(case, prevalence)]
        sel = rows[(rows["case"] == case) & (rows["prevalence"] == prevalence) & (rows["variant"] == "image")].iloc[0]
        key = f"case {case} ({prevalence:.0%}), slice {sel['worst_slice']}"
        scores[key] = pd.Series(sel["top_scores"], index=sel["top_tokens"])
        named = ex["explanations_oracle"]["image"].loc[sel["worst_slice"]]
        scores_oracle[key] = pd.Series(named["top_scores"], index=named["top_tokens"])
        highlight[key] = ex["attribute_token"]
    fig = distinctiveness_plot(scores, n_top=n_top, title="Most distinctive tokens of the worst slice, remaining metadata")
    fig_oracle = distinctiveness_plot(scores_oracle, highlight, n_top=n_top,
                                      title="ORACLE UPPER BOUND - attribute recorded: the same slices")
    out = results_folder(out_dir)
    if out is not None:
        fig.savefig(out / "distinctiveness.png", dpi=110)
        fig_oracle.savefig(out / "distinctiveness_oracle.png", dpi=110)
    return fig, fig_oracle


def global_baseline_table(extras: dict[tuple[str, float], dict[str, Any]],
                          out_dir: str | os.PathLike | None) -> pd.DataFrame:
    """The global baseline without slicing, one row per (case, prevalence) of :func:`explain_case`'s ``extras``:
    the top 3 tokens of the worst 10 % and 20 % of test images (remaining metadata) and whether, with the attribute
    recorded, the top token is the attribute's (``names it (oracle)``: an oracle upper bound).

    Written to ``out_dir`` as ``global_baseline.csv`` (None: not written). Returns the table.
    """
    base = pd.DataFrame([{"case": c, "prevalence": p, "attribute token": ex["attribute_token"],
                          "worst 10 %: top 3": list(ex["global_10"].index[:3]),
                          "worst 20 %: top 3": list(ex["global_20"].index[:3]),
                          "10 % names it (oracle)": ex["global_10_oracle"].index[0] == ex["attribute_token"],
                          "20 % names it (oracle)": ex["global_20_oracle"].index[0] == ex["attribute_token"]}
                         for (c, p), ex in extras.items()])
    out = results_folder(out_dir)
    if out is not None:
        base.to_csv(out / "global_baseline.csv", index=False)
    return base
