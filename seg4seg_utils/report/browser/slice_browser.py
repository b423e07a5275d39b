""":class:`SliceBrowser`: the model with its views attached, so a notebook needs one object
(``browser.select(3).scatter()``, ``browser.static_view()``, ``browser.widget()``).

Each view method is a thin call of the function of the same name in :mod:`.figures`, :mod:`.html` or
:mod:`.widget`; the behaviour lives there and in :mod:`.model`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from matplotlib.figure import Figure

from seg4seg_utils.report.browser import figures, html
from seg4seg_utils.report.browser.model import BrowserModel
from seg4seg_utils.report.browser.widget import BrowserWidget

__all__ = ["SliceBrowser"]


class SliceBrowser(BrowserModel):
    """Everything a reader needs to inspect the slices of one slicer fit on one test set, and two views of it:
    interactive (:meth:`widget`, JupyterLab) and static HTML (:meth:`to_html`, :meth:`static_view`,
    :meth:`save_html`; what the book shows).

    Why a browser: the protocol's verdict (``evaluate_slices``) says *whether* a low-performing, pure slice exists;
    a person still has to look at the slice to name the failure mode (paper Fig. 5). The browser puts the pieces
    a reader needs side by side, for any slice, not only the winner.

    The parameters and the data/state methods are :class:`~seg4seg_utils.report.browser.model.BrowserModel`'s;
    build one with :meth:`from_run` or :meth:`from_slicer` from a trained run.
    """

    # ------------------------------------------------------------------------ figures
    def draw_map(self, ax, colour_by: str | None = None, highlight: int | None = None, numbers: bool = True) -> None:
        """Draw the 2-d map on ``ax`` (:func:`.figures.draw_map`)."""
        figures.draw_map(self, ax, colour_by, highlight, numbers)

    def scatter(self, colour_by: str | None = None, highlight: int | None | str = "selected",
                size: tuple[float, float] = (4.4, 3.6)) -> Figure:
        """The map as a one-panel figure; by default the selected slice is circled (:func:`.figures.scatter`)."""
        return figures.scatter(self, colour_by, highlight, size)

    def overview(self, colour_by: Sequence[str] | None = None, panel: float = 3.3) -> Figure:
        """Side-by-side maps: slice, performance and the attribute (:func:`.figures.overview`)."""
        return figures.overview(self, colour_by, panel)

    def gallery(self, s: int | None = None, n: int | None = None, ncols: int = 4, panel: float = 1.6) -> Figure:
        """Members of slice ``s`` with ground truth and prediction (:func:`.figures.gallery`)."""
        return figures.gallery(self, s, n, ncols, panel)

    # ------------------------------------------------------------------------ static HTML
    def metrics_html(self, s: int | None = None) -> str:
        """The slice's metrics as a small HTML table (:func:`.html.metrics_html`)."""
        return html.metrics_html(self, s)

    def explanation_html(self, s: int | None = None) -> str:
        """The slice's explanation and metadata contrast as HTML (:func:`.html.explanation_html`)."""
        return html.explanation_html(self, s)

    def slice_html(self, s: int | None = None, n: int | None = None, dpi: int = 80) -> str:
        """Gallery, metrics and explanation of one slice as HTML (:func:`.html.slice_html`)."""
        return html.slice_html(self, s, n, dpi)

    def to_html(self, n: int | None = None, dpi: int = 80, open_slices: Sequence[int] | str = "failing") -> str:
        """The whole browser as one self-contained HTML fragment (:func:`.html.to_html`)."""
        return html.to_html(self, n, dpi, open_slices)

    def static_view(self, **kwargs: Any):
        """:meth:`to_html` wrapped for display in a notebook (the book shows this)."""
        return html.static_view(self, **kwargs)

    def save_html(self, path: str | Path, **kwargs: Any) -> Path:
        """Write the static view as a standalone HTML page."""
        return html.save_html(self, path, **kwargs)

    # ------------------------------------------------------------------------ interactive view
    def widget(self, dpi: int = 80) -> BrowserWidget:
        """Interactive view (JupyterLab / Notebook with a live kernel); see :class:`BrowserWidget`."""
        return BrowserWidget(self, dpi=dpi)
