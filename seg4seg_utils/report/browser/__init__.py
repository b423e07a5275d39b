"""A slice browser: the 2-d map of the test set, every slice's members with ground truth and prediction, its
metrics and its explanation - interactive in JupyterLab, and as static HTML for the book.

One model, two views, one file each (a file imports only the ones listed before it):

* :mod:`.model` - :class:`BrowserModel`, the data and the state: sample ids (the embedding order is the
  reference), 2-d coordinates, hard slice labels, the per-image metrics and attributes aligned to those ids
  (a mismatch is an error that names the missing ids), the protocol's report and slice table, explanations,
  the metadata contrast, a lazy, cached loader of predicted masks, and what the reader selected. Plain Python
  and pandas, testable without a display.
* :mod:`.figures` - matplotlib: the map, the overview maps, a slice's gallery.
* :mod:`.html` - the static view: one self-contained HTML fragment (overview, slice table, one collapsible
  ``<details>`` section per slice, images embedded as base64 PNG); what an executed notebook and the book show.
* :mod:`.widget` - :class:`BrowserWidget`, ipywidgets controls driving HTML areas (needs a live kernel;
  ipywidgets is imported only there).
* :mod:`.slice_browser` - :class:`SliceBrowser`, the model with the views as methods: the one object a
  notebook uses.

Explanations are optional and come from elsewhere (e.g. a text/metadata explainer): a mapping
``slice -> text`` or a DataFrame with a ``slice`` column and a ``sentence`` (or ``text``/``explanation``)
column.
"""
from seg4seg_utils.report.browser.figures import ATTRIBUTE_COLOR, PRED_COLOR, REST_COLOR
from seg4seg_utils.report.browser.model import NO_EXPLANATION, BrowserModel, normalise_explanations
from seg4seg_utils.report.browser.slice_browser import SliceBrowser
from seg4seg_utils.report.browser.widget import BrowserWidget

__all__ = ["SliceBrowser", "BrowserModel", "BrowserWidget", "normalise_explanations", "PRED_COLOR",
           "ATTRIBUTE_COLOR", "REST_COLOR", "NO_EXPLANATION"]
