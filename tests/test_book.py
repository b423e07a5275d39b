"""The book as a reader sees it: code cells wrap at the page width, the parameters cell shows the values a chapter
ran with, the landing page's figure is drawn by the project's own code, and the book is built from the executed
notebooks without executing them again. (The HTML itself is checked by building it, `make run`; these are the
cheap structural checks.)"""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import nbformat
import numpy as np
import pytest
import yaml

from seg4seg_utils.report.book import IDEA_FIGURE, build_book, run_notebooks

BOOK = Path(__file__).resolve().parents[1] / "book"


def test_book_is_built_from_executed_notebooks_without_executing_them():
    config = yaml.safe_load((BOOK / "_config.yml").read_text())
    assert config["execute"]["execute_notebooks"] == "off"


def test_code_cells_wrap_instead_of_scrolling():
    """jupyter-book 1.x links every book/_static/*.css into each page; ours makes code inputs and outputs wrap."""
    from jupyter_book.config import get_final_config

    sphinx, _ = get_final_config(user_yaml=BOOK / "_config.yml", sourcedir=BOOK,
                                 cli_config={"latex_individualpages": False})
    css = [BOOK / "_static" / name for name in sphinx.get("html_css_files", [])]
    assert css, "no stylesheet of ours reaches the pages"
    rules = re.sub(r"/\*.*?\*/", "", "".join(p.read_text() for p in css), flags=re.S)
    for selector in ("div.cell_input pre", "div.cell_output pre"):
        block = next((m.group(1) for m in re.finditer(r"([^{}]+)\{([^}]*)\}", rules)
                      if selector in m.group(1) and "pre-wrap" in m.group(2)), None)
        assert block, f"{selector}: long lines would scroll sideways (no white-space: pre-wrap)"


def _notebook(path: Path, cells: list) -> None:
    nb = nbformat.v4.new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)


def test_the_visible_parameters_cell_holds_the_values_the_chapter_ran_with(tmp_path):
    src = tmp_path / "src"
    (src / "params").mkdir(parents=True)
    (src / "params" / "smoke.yaml").write_text("PRESET: smoke\nSEED: 3\n")
    params = nbformat.v4.new_code_cell('PRESET = "cpu"     # smoke | cpu | paper\nSEED = 0\nLIMIT = {\n  "a": 1}\n',
                                       metadata={"tags": ["parameters"]})
    _notebook(src / "01_ran.ipynb", [params, nbformat.v4.new_code_cell("print(f'ran with {PRESET} {SEED}')")])
    _notebook(src / "02_other.ipynb", [nbformat.v4.new_code_cell("EXTRA = 0", metadata={"tags": ["parameters"]})])
    executed, other = run_notebooks("smoke", tmp_path / "out", folder=src, progress=False, LIMIT={"a": 2}, EXTRA=1)
    nb = nbformat.read(executed, as_version=4)
    shown = [c for c in nb.cells if "remove-cell" not in c.metadata.get("tags", [])]
    [cell] = [c for c in shown if "parameters" in c.metadata.get("tags", [])]
    assert 'PRESET = "smoke"   # smoke | cpu | paper' in cell.source, "value replaced, comment kept in its column"
    assert "SEED = 3" in cell.source and 'LIMIT = {"a": 2}' in cell.source
    assert "EXTRA" not in cell.source, "a passed name the notebook never declares (nor reads) is not shown"
    assert "cpu\"" not in cell.source and "SEED = 0" not in cell.source
    assert not [c for c in shown if "injected-parameters" in c.metadata.get("tags", [])], "shown once, not twice"
    assert shown[-1].outputs[0]["text"].strip() == "ran with smoke 3", "what the cell says is what ran"
    assert "EXTRA = 1" in nbformat.read(other, as_version=4).cells[0].source, "each notebook gets its own"
    injected = "".join(c.source for c in nb.cells if "injected-parameters" in c.metadata.get("tags", []))
    assert "LIMIT" in injected and "EXTRA" not in injected, "and only its own (papermill would warn of the rest)"
    with pytest.raises(ValueError, match="no notebook .* has a parameter called EXTA"):  # a typo is named, not dropped
        run_notebooks("smoke", tmp_path / "out", folder=src, progress=False, EXTA=1)


def test_the_idea_figure_is_drawn_by_the_projects_code(tmp_path, monkeypatch):
    """intro.md shows the figure build_book draws (synthetic points, the project's own slicer and protocol)."""
    from seg4seg_utils.report.idea_figure import idea_figure, synthetic_map

    assert f"{{figure}} {IDEA_FIGURE}" in (BOOK / "intro.md").read_text()
    assert "synthetic" in (BOOK / "intro.md").read_text(), "the caption says what is made up"
    a, b = synthetic_map(), synthetic_map()
    assert all(np.array_equal(x, y) for x, y in zip(a, b)), "deterministic"
    fig = idea_figure()
    texts = " ".join(t.get_text() for t in fig.texts) + " ".join(t.get_text() for ax in fig.axes for t in ax.texts)
    for step in ("test images", "embedding", "UMAP", "Dice-weighted mixture", "lowest-Dice slice", "verdict"):
        assert step in texts
    assert "systematic failure found" in texts

    book = tmp_path / "book"
    book.mkdir()
    (book / "_toc.yml").write_text("format: jb-book\nroot: intro\n")
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(a, 0, "", ""))
    build_book(book)
    assert (book / IDEA_FIGURE).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_glue_makes_numpy_scalars_plain_so_the_book_can_format_them(monkeypatch):
    """numpy 2 prints np.float64(0.75) as 'np.float64(0.75)': a {glue:text}`name:.2f` role cannot format that and
    the book build fails. The project's glue stores plain Python values."""
    import myst_nb

    from seg4seg_utils.report import book

    stored = {}
    monkeypatch.setattr(myst_nb, "glue", lambda name, value, display=True: stored.__setitem__(name, (value, display)))
    book.glue("rate", np.float64(0.75))
    book.glue("counts", [np.int64(3), np.float32(0.5)])
    book.glue("label", "5/5")
    assert stored["rate"] == (0.75, False) and type(stored["rate"][0]) is float
    assert stored["counts"][0] == [3, 0.5] and [type(v) for v in stored["counts"][0]] == [int, float]
    assert stored["label"][0] == "5/5"
    assert repr(stored["rate"][0]) == "0.75"  # what myst-nb writes as text/plain and the role formats
