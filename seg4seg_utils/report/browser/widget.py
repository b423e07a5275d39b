"""The interactive browser: ipywidgets controls that change a model's state, and HTML areas that redraw from it.

ipywidgets is imported only when a widget is built, so the model, the figures and the static HTML work without
it. Figures are embedded as PNG in HTML widgets: without ipympl matplotlib figures cannot receive clicks, so a
slice is chosen with the controls, not by clicking a point.
"""
from __future__ import annotations

from html import escape
from typing import Any

from seg4seg_utils.report.browser.figures import gallery, scatter
from seg4seg_utils.report.browser.html import explanation_html, img_tag, metrics_html
from seg4seg_utils.report.browser.model import BrowserModel

__all__ = ["BrowserWidget"]


class BrowserWidget:
    """ipywidgets front end of a :class:`~seg4seg_utils.report.browser.model.BrowserModel` (e.g. a
    ``SliceBrowser``): controls drive its state, HTML areas redraw.

    Controls: ``colour`` (dropdown of the model's ``colour_options``), ``slice`` (dropdown listing each slice with
    size and mean score, worst first), ``n_show`` (members shown), and previous / next / failing buttons. Areas:
    ``map`` (scatter with the selected slice circled), ``details`` (metrics and explanation), ``gallery``.
    Display it as the last expression of a cell; it needs a live kernel (in a static page it does nothing).
    """

    def __init__(self, browser: BrowserModel, dpi: int = 80) -> None:
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
        header = w.HTML(f"<b>{escape(b.title or 'Slice browser')}</b> - {escape(b.verdict())}")
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
        self.map.value = img_tag(scatter(self.browser), "map", self.dpi)

    def _draw_slice(self) -> None:
        b = self.browser
        self.details.value = metrics_html(b) + explanation_html(b)
        if b.size():
            self.gallery.value = img_tag(gallery(b), f"gallery of slice {b.selected}", self.dpi)
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
