"""End-to-end jobs that chain the module's steps; the CLI and the notebooks call these."""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, NamedTuple

import numpy as np
import pandas as pd

from seg4seg_utils.config import Preset, environment_report, get_preset, preset_dict
from seg4seg_utils.data.inject import CASES, inject, injected_name
from seg4seg_utils.data.records import SPLITS, DatasetError, SampleTable, read_dataset
from seg4seg_utils.discovery.judge import SlicerSettings

__all__ = ["CaseDataset", "TrainedCase", "trained_cases", "base_datasets", "case_datasets", "counts_table", "write_data_summary", "run_data_job", "train_grid",
           "detection_benchmark", "ablation", "gamma_sweep", "attribute_study", "run_job"]


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
    from seg4seg_utils.data.phantoms import generate_phantom_dataset

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


def counts_table(grid: list[CaseDataset]) -> pd.DataFrame:
    """Per injected dataset: samples and failure-attribute samples per split."""
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
    from seg4seg_utils.report.plots import dataset_gallery, injection_gallery

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
    counts = counts_table(grid)
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
        lines += ["Wall time of this run (datasets already on disk are reused, not rebuilt): "
                  + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items()), ""]
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


def train_grid(grid: list[CaseDataset], preset: str | Preset, runs_dir: str | Path, results_dir: str | Path | None,
               progress: bool = True, **overrides) -> pd.DataFrame:
    """Train one U-Net per injected dataset (the preset's training settings) and tabulate the subgroup gaps.

    Writes ``gaps.csv``, ``gaps.md``, ``subgroup_gap.png`` and ``learning_curves.png`` to ``results_dir``
    (``None``: write nothing, e.g. when looking up a subset of the grid) and returns the gap table: per case and prevalence, test Dice of the failure subgroup vs the rest,
    the gap, a Mann-Whitney p-value, training wall time and the best epoch.
    """
    from seg4seg_utils.model.metrics import subgroup_gap
    from seg4seg_utils.model.train import train, train_preset
    from seg4seg_utils.report.plots import learning_curves, subgroup_gap_plot

    p = get_preset(preset)
    cfg = train_preset(p.name, **overrides)
    rows, metrics, histories = [], {}, {}
    for k, cd in enumerate(grid, 1):
        name = f"{cd.case}-p{round(cd.prevalence * 100):02d}-seed{cd.seed}"
        if progress:
            print(f"[seg4seg] model {k}/{len(grid)}: {name}")
        t0 = time.perf_counter()
        run = train(cd.table, cfg, runs_dir=Path(runs_dir) / p.name, progress=progress)
        m = run.metrics()
        summary = run.summary()
        rows.append({"case": cd.case, "prevalence": cd.prevalence, "seed": cd.seed,
                     **subgroup_gap(m, "failure", "dice"), "test_dice": summary["test_dice"],
                     "best_epoch": summary["best_epoch"], "train_seconds": summary["train_seconds"],
                     "wall_seconds_this_call": time.perf_counter() - t0, "run": str(run.root)})
        metrics[(cd.case, cd.prevalence)] = m
        histories[name] = run.history()
    table = pd.DataFrame(rows)
    if results_dir is None:
        return table
    out = Path(results_dir)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "gaps.csv", index=False)
    shown = table[["case", "prevalence", "seed", "n_group", "dice_group", "dice_rest", "gap", "p_value",
                   "train_seconds"]].rename(columns={"n_group": "n_failure_test", "dice_group": "dice_failure"})
    (out / "gaps.md").write_text(f"# Subgroup gaps (preset `{p.name}`: {cfg.encoder}, {cfg.image_size} px, "
                                 f"{cfg.epochs} epochs)\n\n" + shown.to_markdown(index=False, floatfmt=".3g") + "\n")
    subgroup_gap_plot(metrics).savefig(out / "subgroup_gap.png", dpi=110)
    learning_curves(histories).savefig(out / "learning_curves.png", dpi=110)
    return table


class TrainedCase(NamedTuple):
    """One trained model of the grid: its case, prevalence, data seed, injected dataset and run. A tuple, so
    ``for case, prevalence, seed, table, run in trained_cases(...)`` reads it (as the benchmarks do)."""

    case: str
    prevalence: float
    seed: int
    table: SampleTable
    run: Any


def trained_cases(grid: list[CaseDataset], gaps: pd.DataFrame) -> list[TrainedCase]:
    """The trained run of every injected dataset of ``grid``, found through :func:`train_grid`'s table."""
    from seg4seg_utils.studies.benchmark import load_run

    run_of = {(r.case, r.prevalence, r.seed): r.run for r in gaps.itertuples()}
    return [TrainedCase(cd.case, cd.prevalence, cd.seed, cd.table, load_run(run_of[(cd.case, cd.prevalence, cd.seed)]))
            for cd in grid]


def detection_benchmark(grid: list[CaseDataset], gaps: pd.DataFrame, preset: str | Preset, results_dir: str | Path,
                        embedder=None, cache_dir: str | Path = "cache/embeddings", n_jobs: int = 2,
                        image_variants=("x0",), performances=(("dice",),), settings=None,
                        progress: bool = True) -> pd.DataFrame:
    """Slice every trained model's test split with every slicer seed and judge it; write the detection tables.

    Writes ``detection_items.jsonl`` (one row per fit, resumable), ``detection_rates.csv``/``.md`` and
    ``detection_heatmap.png`` to ``results_dir``; returns the detection-rate table.
    """
    from seg4seg_utils.discovery.embed import default_embedder
    from seg4seg_utils.report.plots import detection_heatmap
    from seg4seg_utils.stats import RATE_NOTE, detection_display
    from seg4seg_utils.studies.benchmark import benchmark_items, detection_table, run_benchmark

    p = get_preset(preset)
    out = Path(results_dir)
    out.mkdir(parents=True, exist_ok=True)
    embedder = embedder or default_embedder()
    runs = trained_cases(grid, gaps)
    items = benchmark_items(runs, p.slicer_seeds, image_variants, performances, settings or SlicerSettings())
    rows = run_benchmark(items, embedder, out / "detection_items.jsonl", cache_dir=cache_dir, n_jobs=n_jobs,
                         progress=progress)
    table = detection_table(rows, by=("case", "prevalence", "image_variant", "performance"))
    table.to_csv(out / "detection_rates.csv", index=False)
    (out / "detection_rates.md").write_text(
        f"# Detection rates (preset `{p.name}`, embedder: {embedder.name}, {len(p.slicer_seeds)} slicer seeds "
        f"x {len(p.seeds)} model seeds)\n\n" + RATE_NOTE + "\n\n"
        + detection_display(table).to_markdown(index=False, floatfmt=".2f") + "\n")
    default = table[(table["image_variant"] == image_variants[0]) & (table["performance"] == "+".join(performances[0]))]
    detection_heatmap(default).savefig(out / "detection_heatmap.png", dpi=110)
    return table


def ablation(grid: list[CaseDataset], gaps: pd.DataFrame, preset: str | Preset, results_dir: str | Path,
             embedder=None, cache_dir: str | Path = "cache/embeddings", n_jobs: int = 2, reduce: str | None = "umap",
             progress: bool = True) -> pd.DataFrame:
    """Embedding, metric, likelihood-form and baseline ablations (paper Table 2 style) on the same trained models.

    Settings: every image variant x performance variant with the default slicer; the soft-categorical
    likelihood; and the baselines (plain GMM = gamma 0, k-means, error-only ranking) on ``x0`` + Dice.
    Writes ``ablation_items.jsonl``, ``ablation.csv`` (per case and prevalence) and ``ablation.md``
    (detection rate per setting and case, averaged over prevalences) to ``results_dir``.
    """
    from seg4seg_utils.discovery.embed import VARIANTS, default_embedder
    from seg4seg_utils.stats import RATE_NOTE, detection_pivot
    from seg4seg_utils.studies.benchmark import benchmark_items, detection_table, run_benchmark

    p = get_preset(preset)
    out = Path(results_dir)
    out.mkdir(parents=True, exist_ok=True)
    embedder = embedder or default_embedder()
    runs = trained_cases(grid, gaps)
    perfs = (("dice",), ("ppv",), ("npv",))
    items = benchmark_items(runs, p.slicer_seeds, VARIANTS, perfs, SlicerSettings(reduce=reduce))
    for settings in (SlicerSettings(performance_model="soft_categorical", reduce=reduce),
                     SlicerSettings(method="gmm", reduce=reduce), SlicerSettings(method="kmeans", reduce=reduce),
                     SlicerSettings(method="error_ranking", reduce=reduce)):
        items += benchmark_items(runs, p.slicer_seeds, ("x0",), (("dice",),), settings)
    rows = run_benchmark(items, embedder, out / "ablation_items.jsonl", cache_dir=cache_dir, n_jobs=n_jobs,
                         progress=progress)
    rows["setting"] = [("SEG4SEG" if m == "seg4seg" else {"gmm": "GMM (gamma=0)", "kmeans": "k-means",
                                                           "error_ranking": "error ranking"}[m])
                       + (" soft-categorical" if pm == "soft_categorical" and m == "seg4seg" else "")
                       + f" | {v} + {perf}" for m, pm, v, perf in
                       zip(rows["method"], rows["performance_model"], rows["image_variant"], rows["performance"])]
    table = detection_table(rows, by=("setting", "case", "prevalence"))
    table.to_csv(out / "ablation.csv", index=False)
    summary = table.pivot_table(index="setting", columns="case", values="detection_rate", aggfunc="mean")
    summary["mean"] = summary.mean(axis=1)
    shown = detection_pivot(table, "setting", "case", order=summary.sort_values("mean", ascending=False).index)
    shown.index = shown.index.str.replace("|", "\\|")  # a bare | in a setting name would split the markdown cell
    (out / "ablation.md").write_text(
        f"# Ablation: detection rate per setting and case (mean over prevalences {list(p.prevalences)}; "
        f"{len(p.slicer_seeds)} slicer seeds; embedder {embedder.name})\n\n" + RATE_NOTE + "\n\n"
        + shown.to_markdown() + "\n")
    return table


def gamma_sweep(grid: list[CaseDataset], gaps: pd.DataFrame, preset: str | Preset, results_dir: str | Path,
                gammas=(1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0, 1000.0), embedder=None,
                cache_dir: str | Path = "cache/embeddings", n_jobs: int = 2, reduce: str | None = "umap",
                progress: bool = True) -> pd.DataFrame:
    """Detection rate as a function of gamma (paper Fig. 3c style), ``x0`` + Dice; writes gamma_sweep.csv."""
    from seg4seg_utils.discovery.embed import default_embedder
    from seg4seg_utils.studies.benchmark import benchmark_items, detection_table, run_benchmark

    p = get_preset(preset)
    out = Path(results_dir)
    out.mkdir(parents=True, exist_ok=True)
    embedder = embedder or default_embedder()
    runs = trained_cases(grid, gaps)
    items = [it for g in gammas for it in benchmark_items(runs, p.slicer_seeds, settings=SlicerSettings(gamma=g, reduce=reduce))]
    rows = run_benchmark(items, embedder, out / "gamma_items.jsonl", cache_dir=cache_dir, n_jobs=n_jobs,
                         progress=progress)
    table = detection_table(rows, by=("gamma", "case", "prevalence"))
    table.to_csv(out / "gamma_sweep.csv", index=False)
    return table


def attribute_study(table: SampleTable, attribute: Callable[[pd.DataFrame], np.ndarray], preset: str | Preset,
                    runs_dir: str | Path, embedder, n_slices: int = 10, cache_dir: str | Path = "cache/embeddings",
                    progress: bool = True) -> tuple[pd.DataFrame, dict[str, float], pd.DataFrame]:
    """Train on a dataset with a *naturally occurring* attribute (no injection) and ask whether SEG4SEG finds it.

    ``attribute(metrics) -> bool array`` marks the subgroup from the per-image metrics table (which carries
    every column of the sample table, e.g. ``quality`` or ``annotation_style``). Returns (one row per slicer
    seed, the subgroup's Dice gap, the run's metrics with an ``attribute`` column).
    """
    from seg4seg_utils.discovery.embed import embed_dataset, performance_matrix
    from seg4seg_utils.discovery.judge import fit_and_judge, reduced
    from seg4seg_utils.model.metrics import subgroup_gap
    from seg4seg_utils.model.train import train, train_preset

    p = get_preset(preset)
    run = train(table, train_preset(p.name), runs_dir=Path(runs_dir) / p.name, progress=progress)
    metrics = run.metrics()
    metrics["attribute"] = np.asarray(attribute(metrics), dtype=bool)
    emb = embed_dataset(table, embedder, "x0", run=run, cache_dir=cache_dir, progress=progress)
    metrics = metrics.set_index("id").loc[emb.ids].reset_index()
    dice = performance_matrix(metrics, ("dice",), ids=emb.ids)
    rows = []
    for seed in p.slicer_seeds:
        Z = reduced(emb.X, SlicerSettings(), seed, Path(cache_dir) / "reduced")
        _, report = fit_and_judge(Z, dice, metrics["attribute"].to_numpy(), n_slices=n_slices, seed=seed)
        rows.append({"slicer_seed": seed, **report.to_row()})
    return pd.DataFrame(rows), subgroup_gap(metrics, "attribute", "dice"), metrics


def run_job(preset: str | Preset = "cpu", data_dir: str | Path = "data", results_dir: str | Path = "results",
            runs_dir: str | Path = "runs", real_root: str | Path | None = None, until: str = "detect",
            clip_weights: str | None = None, cache_dir: str | Path = "cache/embeddings",
            progress: bool = True, n_jobs: int = 2) -> dict[str, Path]:
    """The README's main job: data, one model per injected dataset, then the detection-rate benchmark.

    ``until`` stops early: ``"data"`` (clean + injected datasets and their summary), ``"train"`` (also the
    models and subgroup gaps) or ``"detect"`` (everything).
    """
    stages = ("data", "train", "detect")
    if until not in stages:
        raise ValueError(f"until must be one of {stages}, got {until!r}")
    p = get_preset(preset)
    paths = run_data_job(p, data_dir, results_dir, real_root=real_root, progress=progress)
    if stages.index(until) >= 1:
        grid = case_datasets(p, data_dir, real_root=real_root, progress=progress)
        out = Path(results_dir) / p.name / "training"
        gaps = train_grid(grid, p, runs_dir, out, progress=progress)
        paths.update({"gaps": out / "gaps.md", "subgroup_gap": out / "subgroup_gap.png",
                      "learning_curves": out / "learning_curves.png"})
    if until == "detect":
        from seg4seg_utils.discovery.embed import default_embedder

        out = Path(results_dir) / p.name / "detection"
        detection_benchmark(grid, gaps, p, out, embedder=default_embedder(clip_weights), cache_dir=cache_dir,
                            n_jobs=n_jobs, progress=progress)
        paths.update({"detection": out / "detection_rates.md", "detection_heatmap": out / "detection_heatmap.png"})
    return paths
