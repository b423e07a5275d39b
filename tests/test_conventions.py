"""The package's structure, enforced: layers import only downwards, and no module reaches into another's
private names (a leading underscore means "may change without notice", so a second module must not rely on it).

The layers, bottom to top (README, "Layout"):

0. foundation: ``config``, ``kernels``, ``seeding``, ``stats``, ``timing``
1. ``data``      2. ``model``      3. ``discovery``      4. ``report``      5. ``studies``
6. the entry points: ``cli``, ``__main__`` and the package's ``__init__`` (its re-exports)
"""
from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "seg4seg_utils"
NOTEBOOKS = PACKAGE.parent / "notebooks"
LAYERS = {"config": 0, "kernels": 0, "allocator": 0, "seeding": 0, "stats": 0, "timing": 0, "data": 1, "model": 2,
          "discovery": 3, "report": 4, "studies": 5, "cli": 6, "__main__": 6, "__init__": 6}


def module_name(path: Path) -> str:
    """``seg4seg_utils/discovery/slicer.py`` -> ``seg4seg_utils.discovery.slicer`` (a package: its folder name)."""
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" and len(parts) > 2 else parts)


def layer(module: str) -> int:
    """The layer of ``seg4seg_utils.<first part>...``."""
    parts = module.split(".")
    return LAYERS[parts[1] if len(parts) > 1 else "__init__"]


def package_imports(path: Path):
    """(line, imported module, imported names) for every import of a package module in ``path``, lazy ones too."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                raise AssertionError(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}: relative import; "
                                     "write the absolute seg4seg_utils.<layer>.<module> path")
            if (node.module or "").startswith("seg4seg_utils"):
                yield node.lineno, node.module, [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("seg4seg_utils"):
                    yield node.lineno, a.name, []


SOURCES = sorted(PACKAGE.rglob("*.py"))


def test_every_module_has_a_layer():
    unknown = {module_name(p) for p in SOURCES if module_name(p).split(".")[1:2] and
               module_name(p).split(".")[1] not in LAYERS}
    assert not unknown, f"modules outside the layer map (add them to LAYERS and the README): {sorted(unknown)}"


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_only_go_downwards(path):
    me = module_name(path)
    if me == "seg4seg_utils":  # the package's __init__ sits at the top and may re-export anything
        return
    upward = []
    for line, target, names in package_imports(path):
        targets = [target] if names and target != "seg4seg_utils" else [f"{target}.{n}" for n in names] or [target]
        for t in targets:
            if t != "seg4seg_utils" and layer(t) > layer(me):
                upward.append(f"line {line}: {t} (layer {layer(t)}) from layer {layer(me)}")
    assert not upward, f"{me} imports upwards:\n" + "\n".join(upward)


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_private_name_crosses_a_module(path):
    me = module_name(path)
    crossing = [f"line {line}: {target}.{n}" for line, target, names in package_imports(path)
                for n in names if n.startswith("_") and not n.startswith("__") and target != me]
    assert not crossing, f"{me} imports private names of other modules:\n" + "\n".join(crossing)


def test_notebooks_use_public_names_only():
    """A notebook is a reader's first example: it must not call ``module._private``."""
    offenders = []
    for nb in sorted(NOTEBOOKS.glob("*.ipynb")):
        code = "\n".join("".join(c["source"]) for c in json.loads(nb.read_text())["cells"] if c["cell_type"] == "code")
        aliases = set(re.findall(r"from seg4seg_utils[.\w]* import (\w+)(?: as (\w+))?", code)) | {("su", "")}
        for name, alias in aliases:
            for hit in re.findall(rf"\b{alias or name}\._[a-z]\w*", code):
                offenders.append(f"{nb.name}: {hit}")
    assert not offenders, "notebooks use private names:\n" + "\n".join(offenders)


def test_the_checks_above_can_fail(tmp_path):
    """The walker sees lazy imports inside functions and private names (so a violation cannot hide)."""
    src = tmp_path / "mod.py"
    src.write_text("def f():\n    from seg4seg_utils.studies.pipeline import _grid_runs\n")
    assert list(package_imports(src)) == [(2, "seg4seg_utils.studies.pipeline", ["_grid_runs"])]
    assert layer("seg4seg_utils.studies.pipeline") > layer("seg4seg_utils.discovery.slicer")
