"""The audit report: one self-contained HTML page a person would rather look at than read.

:func:`write_report` lays out, top to bottom: the verdict (one sentence per problematic slice), the slice table
(size, mean and worst performance, what sets each slice apart, the metadata when given), the 2-d map coloured by
slice and by performance, a gallery of each of the worst slices (ground truth cyan, prediction pink), the
n_slices curve, and how the audit was made (the embedder, named honestly, the settings, the CSV files beside the
page). Every figure is embedded as a base64 PNG and the style is inline, so the page opens offline, sent by mail
or on a disk without the CSVs. Maps and galleries are the slice browser's own (:mod:`.browser`).

The page has stable hooks for tests and scripts: ``<section id="verdict|slices|map|galleries|n-slices|method">``,
``<table class="s4s-audit-slices">``, and one ``<div class="s4s-gallery" data-slice="s">`` per gallery.
"""
from __future__ import annotations

from html import escape
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from seg4seg_utils.data.records import SampleTable
from seg4seg_utils.report.browser.html import explanation_html, img_tag
from seg4seg_utils.report.browser.model import BrowserModel, metric_label
from seg4seg_utils.report.browser.slice_browser import SliceBrowser

__all__ = ["STYLE", "audit_browser", "bic_figure", "slice_table_html", "write_report"]

STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;max-width:1120px;margin:1.5em auto;padding:0 1em;
     color:#222;line-height:1.45}
h1{font-size:1.6em;margin-bottom:0.1em} h2{border-bottom:1px solid #ddd;padding-bottom:0.15em;margin-top:1.6em}
.lead{color:#555;margin-top:0}
.verdict li{margin:0.35em 0}
.verdict.bad{background:#fff3f3;border-left:4px solid #d32f2f;padding:0.4em 1em}
.verdict.good{background:#f2f9f2;border-left:4px solid #388e3c;padding:0.4em 1em}
table.s4s-audit-slices{border-collapse:collapse;font-size:0.88em;width:100%}
table.s4s-audit-slices th,table.s4s-audit-slices td{padding:3px 8px;border-bottom:1px solid #eee;text-align:left;
     vertical-align:top}
table.s4s-audit-slices tr.problematic td{background:#fff3f3}
table.s4s-audit-slices td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.s4s-gallery{margin:1em 0 2em 0}
.muted{color:#777;font-size:0.9em}
code{background:#f4f4f4;padding:0 3px;border-radius:3px}
"""


def _fmt(v: Any, spec: str = ".3f") -> str:
    return "-" if v is None or (isinstance(v, float) and not np.isfinite(v)) or pd.isna(v) else format(v, spec)


def bic_figure(bic: pd.DataFrame, size: tuple[float, float] = (4.6, 2.6)) -> Figure:
    """BIC against the number of slices: its minimum circled in red, the number the audit used in black."""
    fig = Figure(figsize=size, layout="constrained")
    ax = fig.subplots()
    ax.plot(bic["n_slices"], bic["bic"], "o-", color="#546e7a", ms=3.5, lw=1.2)
    chosen = bic[bic["chosen"]]
    ax.plot(chosen["n_slices"], chosen["bic"], "o", color="#d32f2f", ms=9, mfc="none", mew=1.6,
            label=f"BIC minimum: {int(chosen['n_slices'].iat[0])}")
    used = bic[bic["used"]] if "used" in bic else chosen
    if len(used):
        ax.plot(used["n_slices"], used["bic"], "s", color="black", ms=4, label=f"used: {int(used['n_slices'].iat[0])}")
    ax.set_xlabel("number of slices")
    ax.set_ylabel("BIC")
    ax.legend(fontsize=8, frameon=False)
    ax.grid(alpha=0.3)
    return fig


def slice_table_html(slices: pd.DataFrame, performance: str, model: BrowserModel | None = None,
                     metadata_columns: Sequence[str] = (), unit: str = "images") -> str:
    """The slice table: problematic slices highlighted, eligible slices first, worst first."""
    name = metric_label(performance)
    head = ["slice", unit, "share", f"mean {name}", f"worst {name}", "gap to rest", "p", "what sets it apart"]
    if metadata_columns:
        head.append("metadata")
    rows = []
    for _, r in slices.iterrows():
        s = int(r["slice"])
        flags = "problematic" if r["problematic"] else ("" if r["eligible"] else
                                                        ("empty" if r["size"] == 0 else "small (< 2 %)"))
        cells = [f"<b>{s}</b>" + (f"<br><span class='muted'>{flags}</span>" if flags else ""),
                 f"<td class='num'>{int(r['size'])}", f"<td class='num'>{r['share']:.1%}",
                 f"<td class='num'>{_fmt(r['mean_perf'])}", f"<td class='num'>{_fmt(r['worst'])}",
                 f"<td class='num'>{_fmt(r['gap'], '+.3f')}", f"<td class='num'>{_fmt(r['p_value'], '.1g')}",
                 escape(str(r["description"]))]
        if metadata_columns:
            stands = model.contrast(s) if model is not None and r["size"] > 0 else pd.DataFrame()
            cells.append(escape("; ".join(stands["text"])) if len(stands) else "-")
        tds = "".join(c if c.startswith("<td") else f"<td>{c}" for c in cells)
        rows.append(f"<tr class='{'problematic' if r['problematic'] else ''}' data-slice='{s}'>{tds}</tr>")
    return (f"<table class='s4s-audit-slices'><thead><tr>{''.join(f'<th>{escape(h)}</th>' for h in head)}</tr>"
            f"</thead><tbody>{''.join(rows)}</tbody></table>")


def audit_browser(table: SampleTable, per_image: pd.DataFrame, slices: pd.DataFrame, xy: np.ndarray,
                  labels: np.ndarray, proba: np.ndarray, performance: str,
                  metadata_columns: Sequence[str] = ()) -> SliceBrowser:
    """The slice browser over an audit: maps, galleries (ground truth cyan, prediction pink), the descriptors'
    words as each slice's explanation, and the metadata columns for the contrast (never the descriptors).

    ``per_image`` rows follow ``labels``/``proba``/``xy``; ``table`` holds the images, the normalised masks and the
    hard predictions (column ``prediction``)."""
    ids = per_image["id"].astype(str).tolist()
    metric_cols = [c for c in ("dice", "iou", "ppv", "npv") if c in per_image.columns]
    cols = ["id", *dict.fromkeys([performance, *metric_cols]), *metadata_columns]
    preds = {str(i): table.path(p) for i, p in zip(table.df["id"], table.df["prediction"])}
    return SliceBrowser(table, ids, xy, labels, per_image[cols], predictions=preds, performance=performance,
                        proba=proba, n_slices=proba.shape[1],
                        explanations=dict(zip(slices["slice"].astype(int), slices["description"])),
                        title="seg4seg audit")


def write_report(path: str | Path, model: SliceBrowser, *, slices: pd.DataFrame, verdicts: Sequence[str],
                 metadata_columns: Sequence[str], bic: pd.DataFrame, n_slices_rule: str, embedder_name: str,
                 inputs: dict[str, str], threshold: float, n_gallery: int = 8, max_galleries: int = 4,
                 title: str = "seg4seg audit", unit: str = "images") -> Path:
    """Write the report page to ``path`` (see the module docstring for its sections); returns ``path``.

    ``unit``: what the audit counts, ``"images"`` or ``"volumes"``; for volumes the page says that each volume
    is shown by its central ground-truth plane and how the volumes were embedded.

    ``model`` is the :func:`audit_browser`. Galleries: every problematic slice (at most ``max_galleries``), or the
    worst eligible slice when none is problematic, so there is always something to look at."""
    path = Path(path)
    performance = model.performance
    ids = model.ids
    n = len(ids)
    problematic = slices[slices["problematic"]].sort_values("mean_perf")
    shown = [int(s) for s in problematic["slice"][:max_galleries]] or [model.failing_slice]
    name = metric_label(performance)
    one = unit[:-1]  # "image" / "volume"
    volumes = unit == "volumes"

    parts = [f"<h1>{escape(title)}</h1>",
             f"<p class='lead'>{n} {escape(unit)} &middot; {len(slices)} slices"
             f" ({escape(n_slices_rule)}) &middot; performance: {escape(name)} &middot; "
             f"embedder: {escape(embedder_name)}</p>"]
    kind = "bad" if len(problematic) else "good"
    parts.append(f"<section id='verdict'><h2>Verdict</h2><ul class='verdict {kind}'>"
                 + "".join(f"<li>{escape(v)}</li>" for v in verdicts) + "</ul>"
                 f"<p class='muted'>A slice is a group of {unit} the model treats alike (close in the embedding and "
                 f"similar in performance). <i>Problematic</i>: at least 2 % of the {unit}, among the worst 40 % of "
                 f"slices, and worse than the other {unit} (a lower mean, by a medium effect at least, and "
                 "significantly by ranks). The descriptors name a slice; they were "
                 "not used to find it. A slice points at a failure mode: read its members as examples, not as a "
                 "complete list.</p></section>")
    parts.append(f"<section id='slices'><h2>Slices</h2>"
                 f"{slice_table_html(slices, performance, model, metadata_columns, unit)}</section>")
    parts.append("<section id='map'><h2>Map</h2>"
                 + img_tag(model.overview(["slice", performance]), "map coloured by slice and by performance", 100)
                 + f"<p class='muted'>Each dot is {'a volume' if volumes else 'an image'}, placed by a 2-d UMAP of "
                 "the 8-d UMAP embedding the slicer "
                 "saw; numbers mark slice centres.</p></section>")
    gal = []
    for s in shown:
        row = slices.set_index("slice").loc[s]
        gal.append(f"<div class='s4s-gallery' data-slice='{s}'><h3>Slice {s}: {int(row['size'])} {unit}, mean "
                   f"{escape(name)} {_fmt(row['mean_perf'], '.2f')}</h3>"
                   f"<p>{escape(str(row['description']))}</p>"
                   + (explanation_html(model, s) if metadata_columns else "")
                   + img_tag(model.gallery(s, min(n_gallery, int(row["size"]))), f"gallery of slice {s}", 90)
                   + "</div>")
    heading = "The worst slices" if len(problematic) else "The worst slice (not significantly worse)"
    shown_as = (" Each volume is shown by its central ground-truth plane (the axial plane holding the median "
                "ground-truth voxel); its number is the whole volume's." if volumes else "")
    parts.append(f"<section id='galleries'><h2>{heading}</h2><p class='muted'>Members most typical of the slice "
                 f"first; ground truth in cyan, prediction in pink; the number is the {one}'s "
                 f"{escape(name)}.{shown_as}</p>{''.join(gal)}</section>")
    k_bic = int(bic.loc[bic["chosen"], "n_slices"].iat[0])
    parts.append("<section id='n-slices'><h2>How many slices</h2>" + img_tag(bic_figure(bic), "BIC curve", 100)
                 + f"<p class='muted'>This audit used {len(slices)} slices ({escape(n_slices_rule)}). The curve is the "
                 "Bayesian information criterion of the slicer's joint likelihood (embedding and performance); its "
                 f"minimum, {k_bic}, is what <code>--n-slices auto</code> uses. BIC rewards a good fit of the data, "
                 "not an isolated failure: fewer slices can merge a small failing group into a large one, so the "
                 "default is 10 (the paper's); pass <code>--n-slices N</code> to try others.</p></section>")
    files = ["per_image.csv", "slices.csv", "slice_probabilities.csv", "descriptor_contrast.csv", "n_slices_bic.csv"]
    parts.append("<section id='method'><h2>How this was made</h2><ul>"
                 f"<li>Images: <code>{escape(inputs['images'])}</code>; ground truth: "
                 f"<code>{escape(inputs['masks'])}</code>; predictions: <code>{escape(inputs['predictions'])}"
                 "</code>.</li>"
                 + ("<li>Volumes: metrics with the voxel spacing (surface Dice at 1 mm and HD95 in mm too, in "
                    "per_image.csv); each volume embedded as the mean of the 2-D embeddings of 3 axial planes "
                    "through its ground truth (at its voxel quantiles 1/6, 1/2, 5/6); the descriptors are the 3-D "
                    "ones.</li>" if volumes else "")
                 + f"<li>Embedder: {escape(embedder_name)}. Embeddings reduced to 8 dimensions by UMAP, then sliced by "
                 f"a Gaussian mixture whose likelihood also weighs each {one}'s performance (SEG4SEG, after DOMINO)."
                 "</li>"
                 f"<li>Probabilistic predictions are thresholded at {threshold:g} for Dice, IoU, PPV and NPV.</li>"
                 "<li>Tables beside this page: " + ", ".join(f"<a href='{f}'>{f}</a>" for f in files) + ".</li>"
                 "</ul></section>")
    page = (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{escape(title)}</title>"
            f"<meta name='viewport' content='width=device-width,initial-scale=1'><style>{STYLE}</style></head>"
            f"<body>{''.join(parts)}</body></html>\n")
    tmp = path.with_suffix(".html.tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(path)
    return path
