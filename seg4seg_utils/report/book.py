"""Run the notebook collection with papermill (any preset, never over the sources) and build the book."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Iterable

import yaml

from seg4seg_utils.timing import stage

__all__ = ["NOTEBOOK_DIR", "IDEA_FIGURE", "LONGEST_FIRST", "NotebookFailures", "notebooks", "preset_parameters",
           "declared_parameters",
           "run_notebooks", "execution_order",
           "build_book", "glue", "plain"]

REPO = Path(__file__).resolve().parents[2]  # seg4seg_utils/report/book.py -> the repository
NOTEBOOK_DIR = REPO / "notebooks"
IDEA_FIGURE = "_generated/idea.png"  # relative to the book folder; intro.md shows it, build_book draws it
_USED_HEADER = "# the values this chapter ran with"
_NUMBERED = re.compile(r"^(\d{2})_[a-z0-9_]+\.ipynb$")


class NotebookFailures(RuntimeError):
    """Some notebooks raised; the others ran. ``failed`` maps each failed notebook's executed copy to its error."""

    def __init__(self, failed: dict[Path, str], written: list[Path]):
        self.failed, self.written = failed, written
        lines = "\n".join(f"  {path.name}: {error}" for path, error in failed.items())
        super().__init__(f"{len(failed)} of {len(written)} notebook(s) failed (the executed copies show the failing "
                         f"cell; the other notebooks ran):\n{lines}")


def plain(value: Any) -> Any:
    """``value`` with numpy scalars turned into Python ones (also inside lists, tuples and dicts)."""
    if hasattr(value, "item") and getattr(value, "shape", None) == ():
        return value.item()
    if isinstance(value, (list, tuple)):
        return type(value)(plain(v) for v in value)
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value


def glue(name: str, value: Any, display: bool = False) -> None:
    """myst-nb's ``glue`` for a chapter's prose, with numpy scalars made plain first: numpy 2 prints a float64 as
    ``np.float64(0.75)``, which a ``{glue:text}`name:.2f``` role cannot format, and the book build fails."""
    from myst_nb import glue as myst_glue

    myst_glue(name, plain(value), display=display)


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
                  jobs: int = 1, **overrides: Any) -> list[Path]:
    """Execute (or, ``prepare_only``, just parameterise) every notebook with the preset into ``out_dir``.

    Sources are never modified: executed copies go to ``out_dir`` under the same names. Notebooks run with
    the repository root as working directory, so the relative data/results/runs paths are the CLI's.
    A notebook that raises does not stop the others (a failed check in one chapter should not hide the rest):
    they all run, then :class:`NotebookFailures` names every one that failed.

    ``jobs`` > 1 executes that many notebooks side by side (one process each, the longest first, see
    :func:`execution_order`). That changes no number: every notebook reads the main job's cached results and
    writes only its own, caches are written atomically, and torch's thread count inside each computation is
    pinned (:mod:`seg4seg_utils.kernels`). Their kernels wait passively (``OMP_WAIT_POLICY=PASSIVE``): two
    notebooks training at once with spinning OpenMP threads would thrash on two cores.
    """
    out = Path(out_dir).resolve()
    if out == Path(folder).resolve():
        raise ValueError("out_dir must not be the notebooks/ source folder: executed copies never overwrite sources")
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    out.mkdir(parents=True, exist_ok=True)
    params = preset_parameters(preset, folder, **overrides)
    chosen = [nb for nb in notebooks(folder) if not only or any(nb.name.startswith(o) for o in only)]
    work = [(nb, out / nb.name) for nb in chosen]
    declared = {nb: declared_parameters(nb) for nb in notebooks(folder)}
    known = set().union(*declared.values())
    if set(overrides) - known:  # a typo would otherwise be dropped silently (each notebook gets only its own)
        raise ValueError(f"no notebook in {folder} has a parameter called {', '.join(sorted(set(overrides) - known))}; "
                         f"their parameters cells declare {sorted(known)}")
    failed: dict[Path, str] = {}

    def report(nb: Path, target: Path, error: str | None, seconds: float) -> None:
        if error is not None:
            failed[target] = error
        if progress and not prepare_only:
            print(f"[seg4seg] {nb.name} ({preset}) {'FAILED' if error is not None else 'ran'} in {seconds:.0f} s "
                  f"-> {target}", flush=True)

    if jobs == 1 or prepare_only or len(work) < 2:
        for nb, target in work:
            report(nb, target, *_execute_notebook(nb, target, _own(params, declared[nb]), prepare_only))
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed

        # spawn, not fork: each worker starts clean and hands its environment (passive OpenMP) to its kernels
        with ProcessPoolExecutor(max_workers=min(jobs, len(work)), mp_context=multiprocessing.get_context("spawn"),
                                 initializer=_wait_passively) as pool:
            futures = {pool.submit(_execute_notebook, nb, target, _own(params, declared[nb]), False): (nb, target)
                       for nb, target in execution_order(work)}
            for future in as_completed(futures):
                report(*futures[future], *future.result())
    written = [target for _, target in work]
    if failed:
        raise NotebookFailures({t: failed[t] for t in written if t in failed}, written)
    return written


# the longest chapters first, so that two workers finish together: the cpu preset's times one at a time on a 2-core
# Intel Xeon (timing.md, 2026-12-03: 09 459 s, 07 287, 06 126, 11 108, 13 51, 14 47, 08 26, 10 20, 12 17, 04 14,
# 05 12, 03 8, 00 7, 02 6, 01 4); a chapter not listed runs after these, in book order
LONGEST_FIRST = ("09", "07", "06", "11", "13", "14", "08", "10", "12", "04", "05", "03", "00", "02", "01")


def declared_parameters(nb: str | os.PathLike) -> set[str]:
    """The names a notebook's ``parameters`` cell assigns (papermill's own reading of it)."""
    import papermill as pm

    return set(pm.inspect_notebook(str(nb)))


def _own(params: dict[str, Any], declared: set[str]) -> dict[str, Any]:
    """The parameters one notebook declares: the shared ``--set`` folders go only where a chapter uses them,
    so papermill has nothing to warn about ("Passed unknown parameter")."""
    return {k: v for k, v in params.items() if k in declared}


def execution_order(work: list[tuple[Path, Path]]) -> list[tuple[Path, Path]]:
    """``(source, target)`` pairs in the order side-by-side execution starts them: :data:`LONGEST_FIRST`."""
    rank = {prefix: i for i, prefix in enumerate(LONGEST_FIRST)}
    return sorted(work, key=lambda pair: rank.get(pair[0].name[:2], len(rank)))


def _wait_passively() -> None:
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"  # read by each kernel's OpenMP runtime when it starts


def _execute_notebook(nb: Path, target: Path, params: dict[str, Any], prepare_only: bool) -> tuple[str | None, float]:
    """Execute (or parameterise) one notebook into ``target``; returns (the error, or None; its wall seconds)."""
    import papermill as pm

    t0 = time.perf_counter()
    error = None
    try:
        with stage("notebooks", nb.stem) if not prepare_only else nullcontext():
            pm.execute_notebook(str(nb), str(target), parameters=params, cwd=str(REPO), prepare_only=prepare_only,
                                progress_bar=False, kernel_name="python3", log_output=False)
    except pm.PapermillExecutionError as exc:
        error = f"{exc.ename}: {exc.evalue}".strip()[:500]
    _show_parameters_used(target, nb)
    return error, time.perf_counter() - t0


def _show_parameters_used(path: Path, source: Path | None = None) -> None:
    """Make the parameters cell a reader sees hold the values the chapter actually ran with.

    papermill leaves the notebook's own ``parameters`` cell (its defaults, e.g. ``PRESET = "cpu"``) and adds an
    ``injected-parameters`` cell after it that overrides them. Here each injected value is written into the
    notebook's own cell, in place of the default (comments and order kept; a passed name the notebook does not
    declare, which no cell reads, is not shown), and the injected cell is tagged ``remove-cell``: the book
    shows one parameters cell, with the values used. Executing the result again (nbval on ``--prepare-only`` copies) gives the same
    values, since both cells now agree; the defaults stay in ``notebooks/``. If the notebook has no
    ``parameters`` cell or it is not plain assignments, the injected cell simply stays visible.
    """
    import nbformat

    nb = nbformat.read(path, as_version=4)
    injected = [c for c in nb.cells if "injected-parameters" in c.get("metadata", {}).get("tags", [])]
    own = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    if len(injected) != 1:
        return
    merged = _merge_parameters(own[0].source, injected[0].source) if len(own) == 1 else None
    if merged is None:
        return
    tags = [t for t in injected[0].metadata.get("tags", []) if t not in ("hide-input", "remove-cell")]
    injected[0].metadata["tags"] = [*tags, "remove-cell"]
    where = source.resolve() if source else path
    where = where.relative_to(REPO) if where.is_relative_to(REPO) else where.name
    header = f"{_USED_HEADER} (papermill; the defaults are in {where})\n"
    own[0].source = merged if merged.startswith(_USED_HEADER) else header + merged
    nbformat.write(nb, path)


def _merge_parameters(own: str, injected: str) -> str | None:
    """``own`` (the notebook's literal parameters cell) with every value assigned in ``injected`` written in place
    of its default; ``None`` if either is not plain ``NAME = value`` assignments."""
    import ast

    try:
        own_tree, injected_tree = ast.parse(own), ast.parse(injected)
    except SyntaxError:
        return None
    if not all(isinstance(n, ast.Assign) and len(n.targets) == 1 and isinstance(n.targets[0], ast.Name)
               for n in [*own_tree.body, *injected_tree.body]):
        return None
    values = {n.targets[0].id: ast.get_source_segment(injected, n.value) for n in injected_tree.body}
    if not values:
        return None
    lines = own.splitlines(keepends=True)
    starts = [0]
    for line in lines:
        starts.append(starts[-1] + len(line))

    def offset(lineno: int, col: int) -> int:  # ast columns are UTF-8 byte offsets
        return starts[lineno - 1] + len(lines[lineno - 1].encode()[:col].decode())

    merged, declared = own, set()
    for node in sorted(own_tree.body, key=lambda n: n.lineno, reverse=True):
        name = node.targets[0].id
        declared.add(name)
        if name in values:
            v = node.value
            a, b = offset(v.lineno, v.col_offset), offset(v.end_lineno, v.end_col_offset)
            pad = re.match(r"[ \t]*(?=#)", merged[b:])  # keep a trailing comment in its column
            gap = pad.end() if pad else 0
            if pad and v.lineno == v.end_lineno:
                gap_new = max(2, gap - (len(values[name]) - (b - a)))
                merged = merged[:a] + values[name] + " " * gap_new + merged[b + gap:]
            else:
                merged = merged[:a] + values[name] + merged[b:]
    return merged  # a passed name the notebook does not declare is never read: it stays in the hidden cell only


def build_book(book_dir: str | os.PathLike = REPO / "book") -> Path:
    """Build the jupyter-book (HTML) from the executed notebooks; returns the path of index.html.

    Draws the landing page's figure first (:mod:`seg4seg_utils.report.idea_figure`, into ``IDEA_FIGURE``)."""
    from seg4seg_utils.report.idea_figure import write_idea_figure

    book_dir = Path(book_dir)
    toc = yaml.safe_load((book_dir / "_toc.yml").read_text())
    missing = [c["file"] for c in toc.get("chapters", [])
               if not any((book_dir / f"{c['file']}{ext}").is_file() for ext in (".ipynb", ".md"))]
    if missing:
        raise FileNotFoundError(f"{book_dir}: chapters {missing} are missing. Execute the notebooks first: "
                                "`python -m seg4seg_utils notebooks --preset cpu --out book/executed` (make run does).")
    with stage("book", "HTML build"):
        write_idea_figure(book_dir / IDEA_FIGURE)
        cmd = [str(Path(sys.executable).with_name("jupyter-book")), "build", str(book_dir), "--warningiserror",
               "--keep-going"]
        result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError(f"jupyter-book build failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    return book_dir / "_build" / "html" / "index.html"
