"""Are two runs of the main job the same? A diff of their results, ignoring only timing and provenance.

``python -m seg4seg_utils compare A B`` (or :func:`diff_job_outputs`) takes two job roots, each holding the
``results/`` and ``runs/`` folders of one ``python -m seg4seg_utils run`` (e.g. two fresh clones), and lists
every difference in:

- every generated or injected dataset (``data/<preset>/**/samples.csv`` and the bytes of every image and
  mask it lists), when the job roots hold their own ``data/``;
- the detection benchmark's rows (``results/<preset>/detection/detection_items.jsonl``), matched by item key;
- the subgroup-gap table (``results/<preset>/training/gaps.csv``);
- every trained run's per-image test metrics (``runs/<preset>/**/metrics.csv``) and best-epoch weights.

Columns that are *about* a computation rather than its result (wall times, which process ran it, when,
absolute paths) are left out: :data:`PROVENANCE`. An empty list means identical to the last bit.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pandas as pd

__all__ = ["PROVENANCE", "ITEM_IDENTITY", "detection_rows", "weights_digest", "dataset_digest", "diff_job_outputs"]

PROVENANCE = ("key", "seconds_reduce", "seconds_fit", "worker", "started", "path", "run", "run_root",
              "dataset_root", "seconds", "train_seconds", "wall_seconds_this_call")
# what identifies a detection row across job roots (the item key also hashes the dataset's absolute path)
ITEM_IDENTITY = ("case", "prevalence", "data_seed", "slicer_seed", "image_variant", "performance", "method", "gamma",
                 "performance_model", "n_slices", "embedder")


def detection_rows(path: str | Path) -> dict[tuple, dict[str, Any]]:
    """The rows of a detection JSON-lines file keyed by :data:`ITEM_IDENTITY`, without provenance columns."""
    rows = {}
    for line in Path(path).read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:  # a line cut short by an interruption
            continue
        rows[tuple(str(row.get(k)) for k in ITEM_IDENTITY)] = {k: v for k, v in row.items() if k not in PROVENANCE}
    return rows


def _same(x: Any, y: Any) -> bool:
    """Equal, counting NaN as equal to NaN (a slice table's omega-squared is NaN when undefined)."""
    return x == y or (isinstance(x, float) and isinstance(y, float) and x != x and y != y)


def weights_digest(checkpoint: str | Path) -> str:
    """SHA-256 of a checkpoint's model tensors (names, shapes and bytes), independent of pickling details."""
    import torch

    state = torch.load(checkpoint, map_location="cpu", weights_only=False)["model"]
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}{tuple(t.shape)}{t.dtype}".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def dataset_digest(folder: str | Path) -> str:
    """SHA-256 of a record-format dataset: its ``samples.csv`` and the bytes of every image and mask it lists."""
    folder = Path(folder)
    table = pd.read_csv(folder / "samples.csv")
    h = hashlib.sha256((folder / "samples.csv").read_bytes())
    for column in ("image", "mask"):
        for rel in table[column].dropna():
            h.update((folder / rel).read_bytes())
    return h.hexdigest()


def _dataset_diff(a: Path, b: Path, preset: str) -> list[str]:
    sets_a = {p.parent.relative_to(a): p.parent for p in (a / "data" / preset).glob("**/samples.csv")}
    sets_b = {p.parent.relative_to(b): p.parent for p in (b / "data" / preset).glob("**/samples.csv")}
    diffs = [f"{rel}: dataset in only one of the two" for rel in sorted(set(sets_a) ^ set(sets_b))]
    for rel in sorted(set(sets_a) & set(sets_b)):
        if dataset_digest(sets_a[rel]) != dataset_digest(sets_b[rel]):
            diffs.append(f"{rel}: dataset differs (samples.csv or image/mask bytes)")
    return diffs


def _frame_diff(a: pd.DataFrame, b: pd.DataFrame, what: str) -> list[str]:
    a = a.drop(columns=[c for c in PROVENANCE if c in a.columns])
    b = b.drop(columns=[c for c in PROVENANCE if c in b.columns])
    if list(a.columns) != list(b.columns) or a.shape != b.shape:
        return [f"{what}: shape/columns differ ({a.shape} {list(a.columns)} vs {b.shape} {list(b.columns)})"]
    out = []
    for col in a.columns:
        x, y = a[col].reset_index(drop=True), b[col].reset_index(drop=True)
        differs = ~((x == y) | (x.isna() & y.isna())).to_numpy()
        if differs.any():
            i = int(differs.argmax())
            out.append(f"{what}: column {col!r} differs in {int(differs.sum())} of {len(x)} rows "
                       f"(first: {x.iat[i]!r} vs {y.iat[i]!r})")
    return out


def diff_job_outputs(a: str | Path, b: str | Path, preset: str = "cpu") -> list[str]:
    """Every difference between the results of two job roots (see the module docstring); [] when identical."""
    a, b = Path(a), Path(b)
    diffs: list[str] = _dataset_diff(a, b, preset)
    det = Path("results") / preset / "detection" / "detection_items.jsonl"
    if (a / det).is_file() or (b / det).is_file():
        if not ((a / det).is_file() and (b / det).is_file()):
            diffs.append(f"{det}: present in only one of the two")
        else:
            ra, rb = detection_rows(a / det), detection_rows(b / det)
            for key in sorted(set(ra) ^ set(rb)):
                diffs.append(f"{det}: item {dict(zip(ITEM_IDENTITY, key))} in only one of the two")
            for key in sorted(set(ra) & set(rb)):
                changed = {c: (ra[key].get(c), rb[key].get(c)) for c in set(ra[key]) | set(rb[key])
                           if not _same(ra[key].get(c), rb[key].get(c))}
                if changed:
                    label = f"{ra[key].get('case')} p={ra[key].get('prevalence')} seed={ra[key].get('slicer_seed')}"
                    diffs.append(f"{det}: {label}: {changed}")
    gaps = Path("results") / preset / "training" / "gaps.csv"
    if (a / gaps).is_file() and (b / gaps).is_file():
        diffs += _frame_diff(pd.read_csv(a / gaps), pd.read_csv(b / gaps), str(gaps))
    runs_a = {p.relative_to(a): p for p in (a / "runs" / preset).glob("**/metrics.csv")}
    runs_b = {p.relative_to(b): p for p in (b / "runs" / preset).glob("**/metrics.csv")}
    for rel in sorted(set(runs_a) ^ set(runs_b)):
        diffs.append(f"{rel}: in only one of the two")
    for rel in sorted(set(runs_a) & set(runs_b)):
        diffs += _frame_diff(pd.read_csv(runs_a[rel]), pd.read_csv(runs_b[rel]), str(rel))
        best_a, best_b = runs_a[rel].with_name("best.pt"), runs_b[rel].with_name("best.pt")
        if best_a.is_file() and best_b.is_file() and weights_digest(best_a) != weights_digest(best_b):
            diffs.append(f"{rel.parent}/best.pt: weights differ")
    if not (runs_a or runs_b or (a / det).is_file()):
        diffs.append(f"nothing to compare: neither {a} nor {b} holds results/{preset}/ or runs/{preset}/")
    return diffs
