"""Every chapter has the same skeleton (modelled on Project Pythia's cookbook template), checked statically (json + ast):

1. cell 0, markdown: ``# NN · Title``, an intro paragraph, ``## Overview`` (a numbered list naming every ``##`` body
   section in order, same wording, the heading's own number left out) and ``## Prerequisites`` (a bulleted list
   that names the time per preset: smoke, cpu, paper);
2. cell 1, code: the one imports cell (``%matplotlib inline`` and other magics first, then imports only); no
   import anywhere else; every imported name is used in a later cell;
3. cell 2, code tagged ``parameters``: one ``NAME = literal  # comment`` per line, every parameter used later
   (which names are allowed is ``tests/test_notebooks.py``'s business);
5. a check cell: a code cell whose first line starts with ``# check:`` and that asserts something;
6. the last cell, markdown: ``## Summary``, then ``### What's next`` linking the next chapter(s) by their titles;
7. numbers in the prose come from the run: every ``{glue:...}`name``` in markdown is glued in code
   (``glue("name", value, display=False)``, the project's :func:`seg4seg_utils.report.book.glue`, which makes numpy
   scalars plain so the book can format them) and every glued name is used in markdown;
8. notebooks write no result files themselves (no to_csv, savefig, write_text, open(..., "w"), ...).

Each rule is its own test, parametrised by notebook, and its message names the notebook and what is wrong.
"""
from __future__ import annotations

import ast
import io
import json
import re
import tokenize
from pathlib import Path

import pytest

from seg4seg_utils.report.book import notebooks

NOTEBOOKS = notebooks()
TITLE = re.compile(r"^# (\d{2}) · \S.*$")
NUMBERED_ITEM = re.compile(r"^\s*\d+\.\s+(.*\S)\s*$")
BULLET = re.compile(r"^\s*[-*]\s+\S")
HEADING_NUMBER = re.compile(r"^\d+\.\s+")
GLUE_ROLE = re.compile(r"\{glue(?::[a-z]+)?\}`([^`:]+)(?::[^`]*)?`")
GLUE_DIRECTIVE = re.compile(r"^```\{glue(?::[a-z]+)?\}\s+(\S+)", re.M)
CHAPTER_LINK = re.compile(r"\[([^\]]+)\]\(((\d{2})_[a-z0-9_]+\.ipynb)\)")
WRITERS = {"to_csv", "to_parquet", "to_excel", "to_pickle", "to_hdf", "to_feather", "to_stata", "to_sql",
           "savefig", "write_text", "write_bytes", "imwrite", "imsave", "savez", "savez_compressed", "savetxt",
           "save", "dump"}
WRITERS_WITH_TARGET = {"to_json", "to_markdown", "to_html", "to_latex", "to_string"}  # write only when given a path


def cells(path: Path) -> list[dict]:
    return json.loads(path.read_text())["cells"]


def text(cell: dict) -> str:
    return "".join(cell["source"])


def python(cell: dict) -> str:
    """A code cell's source without IPython magics and shell lines (blanked, so line numbers stay)."""
    lines = text(cell).splitlines()
    if lines and lines[0].startswith("%%"):
        return ""
    return "\n".join("" if line.lstrip().startswith(("%", "!")) else line for line in lines)


def tree(path: Path, cell: dict) -> ast.Module:
    try:
        return ast.parse(python(cell))
    except SyntaxError as exc:  # pragma: no cover - a broken cell is reported, not crashed on
        pytest.fail(f"{path.name}: a code cell does not parse ({exc}):\n{text(cell)[:300]}")


def names_used(path: Path, code: list[dict]) -> set[str]:
    return {n.id for c in code for n in ast.walk(tree(path, c)) if isinstance(n, ast.Name)}


def headings(markdown: str, level: int) -> list[str]:
    """The text of every heading of exactly ``level`` outside fenced code blocks."""
    out, fenced = [], False
    for line in markdown.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif not fenced and line.startswith("#" * level + " "):
            out.append(line[level + 1:].strip())
    return out


def sections(markdown: str) -> dict[str, list[str]]:
    """Lines under each ``##`` heading of a markdown cell ('' holds what comes before the first one)."""
    out, current = {"": []}, ""
    for line in markdown.splitlines():
        if line.startswith("## "):
            current = line[3:].strip()
            out[current] = []
        else:
            out[current].append(line)
    return out


def body_sections(nb: list[dict]) -> list[str]:
    """The ``##`` headings of the body (cells between the parameters cell and the summary), numbers dropped."""
    return [HEADING_NUMBER.sub("", h) for c in nb[3:-1] if c["cell_type"] == "markdown"
            for h in headings(text(c), 2)]


def title_of(path: Path) -> str:
    first = text(cells(path)[0]).splitlines()
    return first[0][2:].strip() if first else ""


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_cell0_title_intro_overview_prerequisites(path):
    nb = cells(path)
    assert nb[0]["cell_type"] == "markdown", f"{path.name}: cell 0 must be markdown (title, overview, prerequisites)"
    md = text(nb[0])
    lines = md.splitlines()
    match = TITLE.match(lines[0]) if lines else None
    assert match, f"{path.name}: cell 0 must start with '# NN · Title', found {lines[:1]}"
    assert match.group(1) == path.name[:2], f"{path.name}: the title's number {match.group(1)} is not the file's"
    parts = sections("\n".join(lines[1:]))
    assert [h for h in parts if h] == ["Overview", "Prerequisites"], \
        f"{path.name}: cell 0 must have exactly '## Overview' then '## Prerequisites', found {[h for h in parts if h]}"
    assert any(line.strip() and not line.startswith("#") for line in parts[""]), \
        f"{path.name}: cell 0 needs a short intro paragraph between the title and '## Overview'"
    assert any(NUMBERED_ITEM.match(line) for line in parts["Overview"]), \
        f"{path.name}: '## Overview' must be a numbered list of the body sections"
    prereq = parts["Prerequisites"]
    assert any(BULLET.match(line) for line in prereq), f"{path.name}: '## Prerequisites' must be a bulleted list"
    missing = [p for p in ("smoke", "cpu", "paper") if p not in "\n".join(prereq)]
    assert not missing, f"{path.name}: '## Prerequisites' must give the rough time per preset; {missing} not named"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_overview_lists_the_body_sections_in_order(path):
    nb = cells(path)
    overview = sections(text(nb[0])).get("Overview", [])
    items = [HEADING_NUMBER.sub("", m.group(1)) for m in map(NUMBERED_ITEM.match, overview) if m]
    body = body_sections(nb)
    assert body, f"{path.name}: the body has no '##' sections"
    assert items == body, (f"{path.name}: '## Overview' must list every '##' body section in order with the same "
                           f"wording:\n  overview: {items}\n  sections: {body}")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_cell1_is_the_one_imports_cell(path):
    nb = cells(path)
    assert len(nb) > 1 and nb[1]["cell_type"] == "code", f"{path.name}: cell 1 must be the imports (code) cell"
    lines = [line for line in text(nb[1]).splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert "%matplotlib inline" in lines, f"{path.name}: the imports cell must start with '%matplotlib inline'"
    magics = [i for i, line in enumerate(lines) if line.startswith("%")]
    assert magics == list(range(len(magics))), f"{path.name}: the '%' magics come first in the imports cell"
    body = tree(path, nb[1]).body
    assert body, f"{path.name}: the imports cell imports nothing"
    wrong = [ast.get_source_segment(python(nb[1]), n) for n in body if not isinstance(n, (ast.Import, ast.ImportFrom))]
    assert not wrong, f"{path.name}: the imports cell holds only magics and imports, not {wrong}"
    star = [n.module for n in body if isinstance(n, ast.ImportFrom) and any(a.name == "*" for a in n.names)]
    assert not star, f"{path.name}: no star imports ({star})"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_no_imports_outside_the_imports_cell(path):
    nb = cells(path)
    for i, cell in enumerate(nb[2:], start=2):
        if cell["cell_type"] != "code":
            continue
        found = [ast.get_source_segment(python(cell), n) for n in ast.walk(tree(path, cell))
                 if isinstance(n, (ast.Import, ast.ImportFrom))]
        assert not found, f"{path.name}: cell {i} imports {found}; every import belongs in the imports cell (cell 1)"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_imported_name_is_used(path):
    nb = cells(path)
    bound = set()
    for node in tree(path, nb[1]).body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            for alias in node.names:
                bound.add(alias.asname or alias.name.split(".")[0])
    used = names_used(path, [c for c in nb[2:] if c["cell_type"] == "code"])
    unused = sorted(bound - used)
    assert not unused, f"{path.name}: imported but never used in a later cell: {unused}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_cell2_parameters_are_commented_literals(path):
    nb = cells(path)
    tagged = [i for i, c in enumerate(nb) if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert tagged == [2], f"{path.name}: exactly one cell, cell 2, is tagged 'parameters' (found cells {tagged})"
    src = text(nb[2])
    comments = {tok.start[0] for tok in tokenize.generate_tokens(io.StringIO(src).readline)
                if tok.type == tokenize.COMMENT}
    seen = set()
    for node in ast.parse(src).body:
        line = src.splitlines()[node.lineno - 1]
        assert isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name), \
            f"{path.name}: the parameters cell holds only 'NAME = literal' lines, not {line!r}"
        name = node.targets[0].id
        try:
            ast.literal_eval(node.value)
        except ValueError:
            pytest.fail(f"{path.name}: parameter {name} is not a literal: {line!r}")
        assert node.lineno == node.end_lineno and node.lineno in comments, \
            f"{path.name}: parameter {name} must be one line with a comment saying what it is: {line!r}"
        assert name not in seen, f"{path.name}: parameter {name} is assigned twice"
        seen.add(name)
    assert "PRESET" in seen, f"{path.name}: the parameters cell must declare PRESET"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_parameter_is_used(path):
    nb = cells(path)
    declared = {n.targets[0].id for n in ast.parse(text(nb[2])).body
                if isinstance(n, ast.Assign) and isinstance(n.targets[0], ast.Name)}
    unused = sorted(declared - names_used(path, [c for c in nb[3:] if c["cell_type"] == "code"]))
    assert not unused, f"{path.name}: parameters that no later cell uses (remove them): {unused}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_a_check_cell_asserts(path):
    nb = cells(path)
    checks = [c for c in nb[3:] if c["cell_type"] == "code" and text(c).lstrip().startswith("# check:")]
    assert checks, f"{path.name}: no check cell (a code cell whose first line starts with '# check:')"
    for c in checks:
        assert any(isinstance(n, ast.Assert) for n in ast.walk(tree(path, c))), \
            f"{path.name}: the check cell {text(c).splitlines()[0]!r} asserts nothing"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_last_cell_is_summary_and_whats_next(path):
    nb = cells(path)
    last = nb[-1]
    assert last["cell_type"] == "markdown", f"{path.name}: the last cell must be markdown ('## Summary')"
    md = text(last)
    assert md.startswith("## Summary\n"), f"{path.name}: the last cell must start with '## Summary' on its own line"
    assert headings(md, 2) == ["Summary"], f"{path.name}: the last cell has one '##' heading, '## Summary'"
    assert headings(md, 3)[-1:] == ["What's next"], f"{path.name}: the summary must end with '### What's next'"
    summary, nxt = md.split("### What's next", 1)
    assert summary[len("## Summary"):].strip(), f"{path.name}: '## Summary' must say what this chapter showed"
    assert nxt.strip(), f"{path.name}: '### What's next' is empty"
    links = CHAPTER_LINK.findall(nxt)
    if path != NOTEBOOKS[-1]:
        assert links, f"{path.name}: '### What's next' must link the next chapter(s), e.g. [05 · Detection rates](05_detection_rates.ipynb)"
    for label, target, _ in links:
        target_path = path.parent / target
        assert target_path.is_file(), f"{path.name}: '### What's next' links {target}, which does not exist"
        title = title_of(target_path)
        assert label.startswith(f"{target[:2]} · ") and title.startswith(label), \
            f"{path.name}: the link to {target} must read its title {title!r} (or its start), not {label!r}"


def glued_in_code(path: Path) -> tuple[set[str], list[re.Pattern]]:
    """Names glued in code: literal names, and patterns for names built with f-strings."""
    names, patterns = set(), []
    for c in cells(path):
        if c["cell_type"] != "code":
            continue
        for node in ast.walk(tree(path, c)):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "glue"):
                continue
            first = node.args[0] if node.args else next((k.value for k in node.keywords if k.arg == "name"), None)
            if isinstance(first, ast.Constant) and isinstance(first.value, str):
                names.add(first.value)
            elif isinstance(first, ast.JoinedStr):
                patterns.append(re.compile("".join(re.escape(v.value) if isinstance(v, ast.Constant) else ".+"
                                                   for v in first.values) + "$"))
            else:
                pytest.fail(f"{path.name}: glue's name must be a string or an f-string: {ast.unparse(node)}")
    return names, patterns


def glued_in_markdown(path: Path) -> set[str]:
    md = "\n".join(text(c) for c in cells(path) if c["cell_type"] == "markdown")
    return set(GLUE_ROLE.findall(md)) | set(GLUE_DIRECTIVE.findall(md))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_glued_numbers_are_glued_in_code_and_used_in_prose(path):
    names, patterns = glued_in_code(path)
    used = glued_in_markdown(path)
    missing = sorted(n for n in used if n not in names and not any(p.match(n) for p in patterns))
    assert not missing, f"{path.name}: the prose uses {{glue}} names that no code cell glues: {missing}"
    unused = sorted(names - used)
    assert not unused, f"{path.name}: glued in code but never used in the prose: {unused}"
    idle = [p.pattern for p in patterns if not any(p.match(n) for n in used)]
    assert not idle, f"{path.name}: f-string glue names that the prose never uses: {idle}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_glue_goes_through_the_projects_wrapper(path):
    """myst_nb.glue stores numpy 2 scalars as 'np.float64(0.75)', which a formatted glue role cannot read, and the
    book build fails; seg4seg_utils.report.book.glue stores plain values."""
    imports = text(cells(path)[1])
    assert "from myst_nb import" not in imports and "import myst_nb" not in imports, \
        f"{path.name}: glue through `from seg4seg_utils.report.book import glue`, not myst_nb's own"
    names, patterns = glued_in_code(path)
    if names or patterns:
        assert "from seg4seg_utils.report.book import glue" in imports, f"{path.name}: glues without the wrapper"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebooks_write_no_result_files(path):
    for i, c in enumerate(cells(path)):
        if c["cell_type"] != "code":
            continue
        for node in ast.walk(tree(path, c)):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
            writes = name in WRITERS or (name in WRITERS_WITH_TARGET and (node.args or any(
                k.arg in ("path_or_buf", "buf", "path") for k in node.keywords)))
            if name == "open":
                mode = node.args[1] if len(node.args) > 1 else next((k.value for k in node.keywords if k.arg == "mode"), None)
                writes = not (mode is None or (isinstance(mode, ast.Constant) and set(str(mode.value)) <= set("rbt")))
            assert not writes, (f"{path.name}: cell {i} writes a file ({ast.unparse(node)[:120]}); "
                                "notebooks only show results, the studies in seg4seg_utils write them")
