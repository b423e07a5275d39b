"""Run the notebook collection with papermill (any preset, never over the sources) and build the book."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterable

import yaml

__all__ = ["NOTEBOOK_DIR", "NotebookFailures", "notebooks", "preset_parameters", "run_notebooks", "build_book"]

REPO = Path(__file__).resolve().parents[2]  # seg4seg_utils/report/book.py -> the repository
NOTEBOOK_DIR = REPO / "notebooks"
_NUMBERED = re.compile(r"^(\d{2})_[a-z0-9_]+\.ipynb$")


class NotebookFailures(RuntimeError):
    """Some notebooks raised; the others ran. ``failed`` maps each failed notebook's executed copy to its error."""

    def __init__(self, failed: dict[Path, str], written: list[Path]):
        self.failed, self.written = failed, written
        lines = "\n".join(f"  {path.name}: {error}" for path, error in failed.items())
        super().__init__(f"{len(failed)} of {len(written)} notebook(s) failed (the executed copies show the failing "
                         f"cell; the other notebooks ran):\n{lines}")


def notebooks(folder: str | os.PathLike = NOTEBOOK_DIR) -> list[Path]:
    """The numbered notebooks (``NN_name.ipynb``) in order."""
    return sorted(p for p in Path(folder).glob("*.ipynb") if _NUMBERED.match(p.name))


def preset_parameters(preset: str, folder: str | os.PathLike = NOTEBOOK_DIR, **overrides: Any) -> dict[str, Any]:
    """Parameters for a preset from ``notebooks/params/<preset>.yaml``, with overrides on top."""
    path = Path(folder) / "params" / f"{preset}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in (Path(folder) / "params").glob("*.yaml"))
        raise ValueError(f"{path}: no parameter file for preset {preset!r}; known presets: {known}")
    return {**(yaml.safe_load(path.read_text()) or {}), **overrides}


def run_notebooks(preset: str, out_dir: str | os.PathLike, only: Iterable[str] | None = None,
                  prepare_only: bool = False, progress: bool = True, folder: str | os.PathLike = NOTEBOOK_DIR,
                  **overrides: Any) -> list[Path]:
    """Execute (or, ``prepare_only``, just parameterise) every notebook with the preset into ``out_dir``.

    Sources are never modified: executed copies go to ``out_dir`` under the same names. Notebooks run with
    the repository root as working directory, so the relative data/results/runs paths are the CLI's.
    A notebook that raises does not stop the others (a failed check in one chapter should not hide the rest):
    they all run, then :class:`NotebookFailures` names every one that failed.
    """
    import papermill as pm

    out = Path(out_dir).resolve()
    if out == Path(folder).resolve():
        raise ValueError("out_dir must not be the notebooks/ source folder: executed copies never overwrite sources")
    out.mkdir(parents=True, exist_ok=True)
    params = preset_parameters(preset, folder, **overrides)
    chosen = [nb for nb in notebooks(folder) if not only or any(nb.name.startswith(o) for o in only)]
    written, failed = [], {}
    for nb in chosen:
        t0 = time.perf_counter()
        target = out / nb.name
        try:
            pm.execute_notebook(str(nb), str(target), parameters=params, cwd=str(REPO), prepare_only=prepare_only,
                                progress_bar=False, kernel_name="python3", log_output=False)
        except pm.PapermillExecutionError as exc:
            failed[target] = f"{exc.ename}: {exc.evalue}".strip()[:500]
        _fold_injected_parameters(target)
        if progress and not prepare_only:
            status = "FAILED" if target in failed else "ran"
            print(f"[seg4seg] {nb.name} ({preset}) {status} in {time.perf_counter() - t0:.0f} s -> {target}")
        written.append(target)
    if failed:
        raise NotebookFailures(failed, written)
    return written


def _fold_injected_parameters(path: Path) -> None:
    """Fold papermill's injected parameters cell in the book (``hide-input``: a "show" toggle), so a reader
    sees the notebook's own parameters cell once, with the preset's values one click away."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    changed = False
    for cell in nb.cells:
        tags = cell.get("metadata", {}).get("tags", [])
        if "injected-parameters" in tags and "hide-input" not in tags:
            cell.metadata["tags"] = [*tags, "hide-input"]
            changed = True
    if changed:
        nbformat.write(nb, path)


def build_book(book_dir: str | os.PathLike = REPO / "book") -> Path:
    """Build the jupyter-book (HTML) from the executed notebooks; returns the path of index.html."""
    book_dir = Path(book_dir)
    toc = yaml.safe_load((book_dir / "_toc.yml").read_text())
    missing = [c["file"] for c in toc.get("chapters", [])
               if not any((book_dir / f"{c['file']}{ext}").is_file() for ext in (".ipynb", ".md"))]
    if missing:
        raise FileNotFoundError(f"{book_dir}: chapters {missing} are missing. Execute the notebooks first: "
                                "`python -m seg4seg_utils notebooks --preset cpu --out book/executed` (make run does).")
    cmd = [str(Path(sys.executable).with_name("jupyter-book")), "build", str(book_dir), "--warningiserror", "--keep-going"]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError(f"jupyter-book build failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    return book_dir / "_build" / "html" / "index.html"
