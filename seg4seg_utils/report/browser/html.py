"""The browser as static HTML: what an executed notebook and the book show, since widgets are inert there.

:func:`to_html` gives one self-contained fragment - overview maps, the slice table, then one collapsible
``<details>`` section per slice with its gallery, metrics and explanation. Every image is embedded as a base64
PNG, so the page needs no files beside it and no kernel. :func:`save_html` wraps it as a standalone page.
The metrics and explanation fragments are shared with the interactive widget.
"""
from __future__ import annotations

import base64
import io
from html import escape
from pathlib import Path
from typing import Any, Sequence

import pandas as pd
from matplotlib.figure import Figure

from seg4seg_utils.report.browser.figures import gallery, overview
from seg4seg_utils.report.browser.model import NO_EXPLANATION, BrowserModel, metric_label

__all__ = ["png_base64", "img_tag", "metrics_html", "explanation_html", "slice_html", "summary_html", "to_html",
           "static_view", "save_html"]


def png_base64(fig: Figure, dpi: int = 80) -> str:
    """The figure as a base64 PNG string (for ``<img src="data:image/png;base64,...">``)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def img_tag(fig: Figure, alt: str, dpi: int = 80) -> str:
    """An ``<img>`` with the figure embedded, so the HTML does not depend on image files."""
    return f'<img alt="{escape(alt)}" src="data:image/png;base64,{png_base64(fig, dpi)}" style="max-width:100%">'


def _fmt(v: Any) -> str:
    return "-" if v is None or pd.isna(v) else f"{float(v):.3f}"


def _yes(v: Any) -> str:
    return "yes" if bool(v) else "no"


def metrics_html(model: BrowserModel, s: int | None = None) -> str:
    """The slice's metrics as a small two-column HTML table."""
    row = model.slice_metrics(s)
    perf = metric_label(model.performance)
    items = [("size", f"{int(row['size'])} ({row['share']:.1%} of the test set)")]
    for col in model.metric_columns:
        items.append((f"mean {metric_label(col)}", _fmt(row[f"mean_{col}"])))
    if model.attribute is not None:
        items.append((f"purity ({model.attribute_name})", _fmt(row["purity"])))
        if "precision_at_k" in row and not pd.isna(row["precision_at_k"]):
            items.append((f"precision@{model.report.params.get('k', 10)}", _fmt(row["precision_at_k"])))
    rank = "-" if pd.isna(row["rank"]) else f"{int(row['rank'])} of {int(model.slices['eligible'].sum())}"
    items += [("eligible (>= 2 % of test set)", _yes(row["eligible"])),
              (f"rank by mean {perf} (1 = worst)", rank),
              ("in the bottom 40 %", _yes(row["bottom"])),
              ("failing slice" + (" (protocol winner)" if model.report.success else " (lowest mean)"),
               _yes(row["failing"]))]
    body = "".join(f"<tr><th style='text-align:left;padding:1px 1em 1px 0'>{escape(k)}</th><td>{escape(v)}"
                   "</td></tr>" for k, v in items)
    return f"<table class='s4s-metrics' style='font-size:90%'>{body}</table>"


def explanation_html(model: BrowserModel, s: int | None = None) -> str:
    """The explanation (given from outside) and the attribute contrast (computed by the model), as HTML."""
    text = model.explanation(s)
    style = "font-style:italic;color:#666" if text == NO_EXPLANATION else ""
    stands = model.contrast(s)
    facts = "; ".join(stands["text"]) if len(stands) else "nothing (no attribute differs by a medium effect)"
    return (f"<p class='s4s-explanation' style='{style}'><b>Explanation:</b> {escape(text)}</p>"
            f"<p class='s4s-contrast' style='font-size:90%'><b>Stands out in the metadata:</b> "
            f"{escape(facts)}</p>")


def slice_html(model: BrowserModel, s: int | None = None, n: int | None = None, dpi: int = 80) -> str:
    """Gallery, metrics and explanation of one slice as an HTML fragment."""
    s = model.slice_id(s)
    fig = gallery(model, s, n)
    return (f"<div class='s4s-slice' data-slice='{s}'>"
            f"<div style='display:flex;gap:1.5em;flex-wrap:wrap;align-items:flex-start'>"
            f"<div>{metrics_html(model, s)}{explanation_html(model, s)}</div>"
            f"<div>{img_tag(fig, f'gallery of slice {s}', dpi)}</div></div></div>")


def summary_html(model: BrowserModel) -> str:
    """A compact slice table (narrow enough for a book page): flags in one column, the explanation only when
    some slice has one, slices in the selector's order."""
    order = [s for _, s in model.slice_options()]
    t = model.summary_table().set_index("slice").loc[order].reset_index()
    perf = model.performance
    show = pd.DataFrame({"slice": t["slice"], "size": t["size"], "share": [f"{v:.1%}" for v in t["share"]],
                         f"mean {metric_label(perf)}": [_fmt(v) for v in t[f"mean_{perf}"]]})
    for extra in ("ppv", "npv"):
        if extra != perf and f"mean_{extra}" in t.columns:
            show[f"mean {metric_label(extra)}"] = [_fmt(v) for v in t[f"mean_{extra}"]]
    if model.attribute is not None:
        show["purity"] = [_fmt(v) for v in t["purity"]]
        show[f"P@{model.report.params.get('k', 10)}"] = [_fmt(v) for v in t["precision_at_k"]]
    show["flags"] = [", ".join(model.slice_flags(s)) for s in order]
    if model.explanations:
        show["explanation"] = [x if len(x) <= 90 else x[:87] + "..." for x in t["explanation"]]
    return show.to_html(index=False, classes="s4s-table", border=0, escape=True)


def _opened(model: BrowserModel, open_slices: Sequence[int] | str) -> set[int]:
    if not isinstance(open_slices, str):
        return {model.slice_id(s) for s in open_slices}
    if open_slices not in ("failing", "all", "none"):
        raise ValueError(f"open_slices must be 'failing', 'all', 'none' or a list of slice ids, got {open_slices!r}")
    return {"failing": {model.failing_slice}, "all": set(range(model.n_slices)), "none": set()}[open_slices]


def to_html(model: BrowserModel, n: int | None = None, dpi: int = 80,
            open_slices: Sequence[int] | str = "failing") -> str:
    """The whole browser as one self-contained static HTML fragment (images embedded as base64 PNG).

    Overview maps, the slice table, then one ``<details>`` section per slice (worst first, empty ones last);
    ``open_slices`` ("failing", "all", "none" or a list of ids) are expanded.
    """
    opened = _opened(model, open_slices)
    parts = [f"<div class='s4s-browser'><h3 style='margin-top:0.3em'>{escape(model.title or 'Slice browser')}</h3>",
             f"<p>{escape(model.verdict())}</p>",
             img_tag(overview(model), "overview maps", max(dpi, 100)),
             "<p style='font-size:90%'>Each dot is a test image placed by a 2-d UMAP of its embedding; numbers "
             "mark slice centres. Open a slice below for its members (ground truth cyan, prediction pink), "
             "metrics and explanation.</p>",
             summary_html(model)]
    for label, s in model.slice_options():
        body = slice_html(model, s, n, dpi) if model.size(s) else \
            f"<div class='s4s-slice' data-slice='{s}'><p>No test image was assigned to this slice.</p></div>"
        parts.append(f"<details class='s4s-details' data-slice='{s}'{' open' if s in opened else ''} "
                     "style='margin:0.3em 0;border:1px solid #ddd;border-radius:4px;padding:0.2em 0.6em'>"
                     f"<summary style='cursor:pointer'><b>{escape(label)}</b></summary>{body}</details>")
    parts.append("</div>")
    return "\n".join(parts)


def static_view(model: BrowserModel, **kwargs: Any):
    """:func:`to_html` wrapped for display in a notebook (the book shows this)."""
    from IPython.display import HTML

    return HTML(to_html(model, **kwargs))


def save_html(model: BrowserModel, path: str | Path, **kwargs: Any) -> Path:
    """Write the static view (:func:`to_html` ``**kwargs``) as a standalone HTML page."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    title = escape(model.title or "Slice browser")
    path.write_text(f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title></head>"
                    f"<body style='font-family:sans-serif;max-width:1100px;margin:auto'>{to_html(model, **kwargs)}"
                    "</body></html>\n")
    return path
