"""Notebook conventions: numbered like the book's table of contents, one literal parameters cell, the imports
cell first, a check cell, no committed outputs. (nbval runs them, on the smoke preset, in `make test`.)"""
import ast
import json

import pytest
import yaml

from seg4seg_utils.report.book import NOTEBOOK_DIR, notebooks, preset_parameters, run_notebooks

BOOK = NOTEBOOK_DIR.parent / "book"
SHARED_PARAMETERS = {"PRESET", "SEED", "DATA_DIR", "RESULTS_DIR", "RUNS_DIR", "CACHE_DIR", "REAL_DIR", "CLIP_WEIGHTS"}
OWN_PARAMETERS = {  # a notebook declares the shared parameters it uses, PRESET always, plus only these of its own
    "04": {"CASE", "PREVALENCE"}, "07": {"ISIC_DIR", "FIVES_DIR"},
    "08": {"IMAGES", "MASKS", "PREDICTIONS", "METADATA", "N_SLICES"},
    "09": {"CASE", "GRID", "PATCH_METRIC", "AGGREGATE"}, "10": {"CASES", "TOP_TOKENS"},
    "11": {"TRAIN_ALIGNMENT", "CUE_STRENGTH", "TEST_SHIFT"}, "12": {"CASE", "PREVALENCE", "N_SHOW"},
    "13": {"CASE", "PREVALENCE", "SCHEDULER", "N_WORKERS"}, "14": {"N_CASES", "SIZE"},
}
NOTEBOOKS = notebooks()


def code_cells(path):
    return [c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]


def test_numbering_matches_the_books_table_of_contents():
    toc = yaml.safe_load((BOOK / "_toc.yml").read_text())
    chapters = [c["file"] for c in toc["chapters"] if c["file"].startswith("executed/")]
    assert [f"executed/{p.stem}" for p in NOTEBOOKS] == chapters
    numbers = [int(p.name[:2]) for p in NOTEBOOKS]
    assert numbers == sorted(set(numbers)) and numbers[0] == 0


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_conventions(path):
    nb = json.loads(path.read_text())
    cells = code_cells(path)
    assert nb["cells"][0]["cell_type"] == "markdown" and "".join(nb["cells"][0]["source"]).startswith("# ")
    first = "".join(cells[0]["source"]).splitlines()
    assert any(line.startswith(("import ", "from ")) for line in first) and \
        all(line.startswith(("import ", "from ", "%")) or not line.strip() for line in first), \
        "the imports cell comes first, and holds only imports"
    params = [c for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(params) == 1, "exactly one cell tagged parameters"
    tree = ast.parse("".join(params[0]["source"]))
    names = set()
    for node in tree.body:
        assert isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name), "parameters are literals only"
        ast.literal_eval(node.value)  # ValueError: parameters are literals only
        names.add(node.targets[0].id)
    allowed = SHARED_PARAMETERS | OWN_PARAMETERS.get(path.name[:2], set())
    assert "PRESET" in names and names <= allowed, \
        f"{path.name}: PRESET is always declared, and only shared or own parameters: {sorted(names - allowed)}"
    later = cells[cells.index(params[0]) + 1:]
    used = {n.id for c in later for n in ast.walk(ast.parse("\n".join(
        "" if line.lstrip().startswith(("%", "!")) else line for line in "".join(c["source"]).splitlines())))
        if isinstance(n, ast.Name)}
    assert names <= used, f"{path.name}: declared parameters no later cell uses: {sorted(names - used)}"
    assert any("assert" in "".join(c["source"]) and "# check" in "".join(c["source"]) for c in cells), "a check cell"
    for c in cells:
        assert not c.get("outputs") and c.get("execution_count") is None, "commit notebooks without outputs"
    ids = [c.get("id") for c in nb["cells"]]
    assert all(ids) and len(set(ids)) == len(ids), "every cell has its own id (nbformat 4.5; else nbformat warns)"


def test_preset_parameter_files():
    for preset in ("smoke", "cpu", "paper"):
        assert preset_parameters(preset)["PRESET"] == preset
    assert preset_parameters("cpu", SEED=3)["SEED"] == 3
    with pytest.raises(ValueError, match="no parameter file"):
        preset_parameters("fast")


def test_papermill_injects_parameters_and_never_touches_sources(tmp_path):
    before = {p: p.read_bytes() for p in NOTEBOOKS}
    written = run_notebooks("smoke", tmp_path, only=["01"], prepare_only=True, SEED=7)  # 01 declares SEED
    assert [p.name for p in written] == ["01_taxonomy.ipynb"]
    src = "".join("".join(c["source"]) for c in code_cells(written[0]))
    assert 'PRESET = "smoke"' in src and "SEED = 7" in src
    injected = [c for c in code_cells(written[0]) if "injected-parameters" in c["metadata"].get("tags", [])]
    assert len(injected) == 1 and "remove-cell" in injected[0]["metadata"]["tags"], "not shown twice in the book"
    visible = [c for c in code_cells(written[0]) if "parameters" in c["metadata"].get("tags", [])]
    shown = "".join(visible[0]["source"])
    assert len(visible) == 1 and 'PRESET = "smoke"' in shown, \
        "the parameters a reader sees are the ones the notebook runs with"
    assert not [line for line in shown.splitlines() if line.startswith(("PRESET = \"cpu\"", "SEED = 0"))]
    assert {p: p.read_bytes() for p in NOTEBOOKS} == before
    with pytest.raises(ValueError, match="never overwrite sources"):
        run_notebooks("smoke", NOTEBOOK_DIR, prepare_only=True)


def test_a_failing_notebook_does_not_stop_the_others(tmp_path):
    """Every notebook runs; the failures are named together at the end (a failed check hides no chapter)."""
    import nbformat

    from seg4seg_utils.report.book import NotebookFailures

    src = tmp_path / "src"
    (src / "params").mkdir(parents=True)
    (src / "params" / "smoke.yaml").write_text("PRESET: smoke\n")
    for name, code in [("01_fails.ipynb", "assert PRESET == 'cpu', 'claim does not hold'"),
                       ("02_runs.ipynb", "ok = PRESET")]:
        nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell('PRESET = "cpu"', metadata={"tags": ["parameters"]}),
                                             nbformat.v4.new_code_cell(code)])
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        nbformat.write(nb, src / name)
    with pytest.raises(NotebookFailures, match="claim does not hold") as failures:
        run_notebooks("smoke", tmp_path / "out", folder=src, progress=False)
    assert [p.name for p in failures.value.failed] == ["01_fails.ipynb"]
    assert [p.name for p in failures.value.written] == ["01_fails.ipynb", "02_runs.ipynb"]
    assert (tmp_path / "out" / "02_runs.ipynb").is_file()


def test_notebooks_run_side_by_side_with_the_same_outputs_and_failures(tmp_path):
    """jobs=2 executes two notebooks at once (their run intervals overlap), each with passive OpenMP, and gives
    the same executed outputs and the same failure report as one at a time."""
    import json

    import nbformat

    from seg4seg_utils.report.book import NotebookFailures

    src = tmp_path / "src"
    (src / "params").mkdir(parents=True)
    (src / "params" / "smoke.yaml").write_text("PRESET: smoke\n")
    # each notebook sleeps long enough for the other kernel to start while it runs (when they run side by side)
    record = ("import json, os, time\nt0 = time.time(); time.sleep(4)\n"
              "print(json.dumps([t0, time.time(), os.environ.get('OMP_WAIT_POLICY'), PRESET]))")
    for name, code in [("01_a.ipynb", record), ("02_b.ipynb", record),
                       ("03_fails.ipynb", "assert PRESET == 'cpu', 'claim does not hold'")]:
        params = nbformat.v4.new_code_cell('PRESET = "cpu"', metadata={"tags": ["parameters"]})
        nb = nbformat.v4.new_notebook(cells=[params, nbformat.v4.new_code_cell(code)])
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        nbformat.write(nb, src / name)
    printed = {}
    for jobs in (1, 2):
        with pytest.raises(NotebookFailures, match="claim does not hold") as failures:
            run_notebooks("smoke", tmp_path / f"out{jobs}", folder=src, progress=False, jobs=jobs)
        assert [p.name for p in failures.value.failed] == ["03_fails.ipynb"]
        assert [p.name for p in failures.value.written] == ["01_a.ipynb", "02_b.ipynb", "03_fails.ipynb"]
        executed = [nbformat.read(tmp_path / f"out{jobs}" / n, as_version=4) for n in ("01_a.ipynb", "02_b.ipynb")]
        printed[jobs] = [json.loads(nb.cells[-1].outputs[0]["text"]) for nb in executed]
    (a0, a1, *_), (b0, b1, *_) = printed[2]
    assert a0 < b1 and b0 < a1, "with two jobs the two notebooks ran at the same time"
    (a0, a1, *_), (b0, b1, *_) = printed[1]
    assert a1 <= b0 or b1 <= a0, "with one job, one after the other"
    assert [p[2:] for p in printed[2]] == [["PASSIVE", "smoke"]] * 2
    with pytest.raises(ValueError, match="jobs must be >= 1"):
        run_notebooks("smoke", tmp_path / "out0", folder=src, progress=False, jobs=0)


def test_side_by_side_starts_the_longest_chapters_first():
    from seg4seg_utils.report.book import LONGEST_FIRST, execution_order

    work = [(NOTEBOOK_DIR / n.name, n) for n in notebooks()]
    order = [src.name[:2] for src, _ in execution_order(work)]
    assert sorted(order) == sorted(n.name[:2] for n in notebooks()), "every chapter runs, once"
    assert order[:len(LONGEST_FIRST)] == [p for p in LONGEST_FIRST if p in order]
    assert set(LONGEST_FIRST) >= set(order), "every chapter has a place in the order"
