"""End-to-end jobs that chain the module's steps; the CLI and the notebooks call these."""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import pandas as pd

from .config import Preset, environment_report, get_preset, preset_dict
from .data import SPLITS, DatasetError, SampleTable, read_dataset
from .inject import CASES, inject, injected_name

__all__ = ["CaseDataset", "base_datasets", "case_datasets", "write_data_summary", "run_data_job"]


@dataclass(frozen=True)
class CaseDataset:
    """One injected dataset of the benchmark grid."""

    case: str
    prevalence: float
    seed: int
    table: SampleTable


def base_datasets(preset: str | Preset, data_dir: str | Path, real_root: str | Path | None = None,
                  modalities: Iterable[str] | None = None, progress: bool = True) -> dict[str, SampleTable]:
    """The clean dataset per modality: generated phantoms, or (``real_root``) prepared real datasets.

    ``real_root`` holds the outputs of ``python -m data_prep`` as ``hc18/``, ``isic2018/``, ``fives/``.
    """
    from .phantoms import generate_phantom_dataset

    p = get_preset(preset)
    wanted = sorted(set(modalities or (c.modality for c in CASES.values())))
    if p.real_data and real_root is None:
        raise ValueError(f"preset {p.name!r} runs on real data: prepare it with `python -m data_prep` "
                         "(see data_prep/README.md) and pass its folder as real_root / --real")
    out: dict[str, SampleTable] = {}
    for modality in wanted:
        if real_root is not None:
            real = next(c.real_dataset for c in CASES.values() if c.modality == modality)
            folder = Path(real_root) / real
            try:
                out[modality] = read_dataset(folder, validate="files")
            except DatasetError as exc:
                raise DatasetError(f"{exc}\nExpected the prepared {real} dataset at {folder} "
                                   f"(python -m data_prep {real} --raw ... --out {folder}).") from exc
        else:
            out[modality] = generate_phantom_dataset(
                modality, Path(data_dir) / p.name / "phantoms" / modality, n=p.n_images, size=p.image_size,
                seed=0, progress=progress)
    return out


def case_datasets(preset: str | Preset, data_dir: str | Path, cases: Iterable[str] = "ABCD",
                  real_root: str | Path | None = None, progress: bool = True) -> list[CaseDataset]:
    """Every injected dataset of the preset's grid (cases x prevalences x seeds), built or reused from disk."""
    p = get_preset(preset)
    cases = [CASES[c.upper()] for c in cases]
    bases = base_datasets(p, data_dir, real_root, {c.modality for c in cases}, progress=progress)
    root = Path(data_dir) / p.name / ("injected-real" if real_root is not None else "injected")
    grid = []
    for case in cases:
        for prevalence in p.prevalences:
            for seed in p.seeds:
                table = inject(bases[case.modality], case.name, prevalence, seed,
                               root / injected_name(case.name, prevalence, seed), progress=progress)
                grid.append(CaseDataset(case.name, prevalence, seed, table))
    return grid


def _counts_table(grid: list[CaseDataset]) -> pd.DataFrame:
    rows = []
    for cd in grid:
        df = cd.table.df
        row = {"case": cd.case, "prevalence": cd.prevalence, "seed": cd.seed, "path": str(cd.table.root)}
        for s in SPLITS:
            in_split = df["split"] == s
            row[f"n_{s}"] = int(in_split.sum())
            row[f"failure_{s}"] = int(df.loc[in_split, "failure"].astype(bool).sum())
        rows.append(row)
    return pd.DataFrame(rows)


def write_data_summary(grid: list[CaseDataset], bases: dict[str, SampleTable], out_dir: str | Path,
                       preset: str | Preset, timings: dict[str, float] | None = None) -> dict[str, Path]:
    """Galleries, a counts table and a short markdown summary of the generated/injected data."""
    from .plots import dataset_gallery, injection_gallery

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"phantom_gallery": out / "phantom_gallery.png", "injection_gallery": out / "injection_gallery.png",
             "datasets": out / "datasets.csv", "summary": out / "summary.md", "environment": out / "environment.json"}
    dataset_gallery(bases).savefig(paths["phantom_gallery"], dpi=110)
    first = {}
    for cd in grid:  # the highest prevalence of seed 0 shows the most manipulated samples
        if cd.seed == grid[0].seed and cd.prevalence >= first.get(cd.case, cd).prevalence:
            first[cd.case] = cd
    pairs = [(f"{c}: {CASES[c].attribute.replace('_', ' ')}", bases[CASES[c].modality], cd.table)
             for c, cd in sorted(first.items())]
    injection_gallery(pairs).savefig(paths["injection_gallery"], dpi=110)
    counts = _counts_table(grid)
    counts.to_csv(paths["datasets"], index=False)
    paths["environment"].write_text(json.dumps({"preset": preset_dict(preset),
                                                "environment": environment_report(with_torch=False)}, indent=2))
    lines = [f"# seg4seg data summary (preset `{get_preset(preset).name}`)", "",
             "Clean datasets:", ""]
    lines += [f"- **{m}**: {len(t)} samples at `{t.root}` ({t.meta.get('kind', '?')})" for m, t in bases.items()]
    lines += ["", "Injected datasets (failure-attribute count per split; prevalence is exact in every split):", "",
              counts.drop(columns="path").to_markdown(index=False),
              "", "![phantoms](phantom_gallery.png)", "", "![injections](injection_gallery.png)", ""]
    if timings:
        lines += ["Wall time: " + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items()), ""]
    paths["summary"].write_text("\n".join(lines))
    return paths


def run_data_job(preset: str | Preset = "cpu", data_dir: str | Path = "data", results_dir: str | Path = "results",
                 real_root: str | Path | None = None, progress: bool = True) -> dict[str, Path]:
    """The main job so far: clean datasets, every injected case, and a summary with figures."""
    p = get_preset(preset)
    t0 = time.perf_counter()
    bases = base_datasets(p, data_dir, real_root, progress=progress)
    t1 = time.perf_counter()
    grid = case_datasets(p, data_dir, real_root=real_root, progress=progress)
    t2 = time.perf_counter()
    paths = write_data_summary(grid, bases, Path(results_dir) / p.name / "data", p,
                               timings={"clean datasets": t1 - t0, "injections": t2 - t1})
    return paths
