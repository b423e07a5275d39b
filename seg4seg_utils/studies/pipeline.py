"""End-to-end jobs that chain the module's steps; the CLI and the notebooks call these.

Every job takes a :class:`~seg4seg_utils.studies.workspace.Workspace` (folders, preset, embedder, cache,
parallelism) and, where it works on trained models, the :class:`~seg4seg_utils.studies.workspace.TrainedCase`
handles of :func:`train_grid` (``None``: the workspace's whole grid, trained or read back)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from seg4seg_utils.config import Preset, environment_report, get_preset, preset_dict
from seg4seg_utils.data.inject import ALL_CASES, CASES
from seg4seg_utils.data.records import SPLITS, SampleTable
from seg4seg_utils.discovery.judge import SlicerSettings
from seg4seg_utils.discovery.reduce import compile_umap_in_background
from seg4seg_utils.studies.workspace import CaseDataset, TrainedCase, Workspace
from seg4seg_utils.timing import stage

__all__ = ["counts_table", "write_data_summary", "run_data_job", "gap_table", "train_grid",
           "detection_benchmark", "ablation", "gamma_sweep", "CONFIGURATIONS", "attribute_study", "false_alarms",
           "book_models", "run_job"]


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


def run_data_job(ws: Workspace) -> dict[str, Path]:
    """The main job so far: clean datasets, every injected case, and a summary with figures."""
    with stage("data", "clean datasets") as clean:
        bases = ws.base_datasets()
    with stage("data", "injections") as injections:
        grid = ws.case_datasets()
    with stage("data", "summary and galleries"):
        paths = write_data_summary(grid, bases, ws.results("data"), ws.preset,
                                   timings={"clean datasets": clean.seconds, "injections": injections.seconds})
    return paths


def gap_table(trained: Sequence[TrainedCase]) -> pd.DataFrame:
    """Per trained model: test Dice of the failure subgroup vs the rest, the gap, a Mann-Whitney p-value,
    the test Dice, the best epoch, the training wall time and the run's folder."""
    from seg4seg_utils.model.metrics import subgroup_gap

    rows = []
    for tc in trained:
        summary = tc.run.summary()
        rows.append({"case": tc.case, "prevalence": tc.prevalence, "seed": tc.seed,
                     **subgroup_gap(tc.run.metrics(), "failure", "dice"), "test_dice": summary["test_dice"],
                     "best_epoch": summary["best_epoch"], "train_seconds": summary["train_seconds"],
                     "run": str(tc.run.root)})
    return pd.DataFrame(rows)


def train_grid(ws: Workspace, cases: str = ALL_CASES) -> list[TrainedCase]:
    """Train (or read back) one U-Net per injected dataset of ``cases`` and write the subgroup-gap tables.

    Writes ``gaps.csv``, ``gaps.md``, ``subgroup_gap.png`` and ``learning_curves.png`` to
    ``ws.results("training")`` and returns the trained cases (:func:`gap_table` tabulates them).
    """
    from seg4seg_utils.report.plots import learning_curves, subgroup_gap_plot

    trained = ws.trained_cases(cases)
    table = gap_table(trained)
    cfg = ws.train_config()
    out = ws.results("training")
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "gaps.csv", index=False)
    shown = table[["case", "prevalence", "seed", "n_group", "dice_group", "dice_rest", "gap", "p_value",
                   "train_seconds"]].rename(columns={"n_group": "n_failure_test", "dice_group": "dice_failure"})
    (out / "gaps.md").write_text(f"# Subgroup gaps (preset `{ws.preset.name}`: {cfg.encoder}, {cfg.image_size} px, "
                                 f"{cfg.epochs} epochs)\n\n" + shown.to_markdown(index=False, floatfmt=".3g") + "\n")
    subgroup_gap_plot({(tc.case, tc.prevalence): tc.run.metrics() for tc in trained}).savefig(
        out / "subgroup_gap.png", dpi=110)
    learning_curves({f"{tc.case}-p{round(tc.prevalence * 100):02d}-seed{tc.seed}": tc.run.history()
                     for tc in trained}).savefig(out / "learning_curves.png", dpi=110)
    return trained


def detection_benchmark(ws: Workspace, trained: Sequence[TrainedCase] | None = None,
                        image_variants=("x0",), performances=(("dice",),),
                        settings: SlicerSettings | None = None) -> pd.DataFrame:
    """Slice every trained model's test split with every slicer seed and judge it; write the detection tables.

    Writes ``detection_items.jsonl`` (one row per fit, resumable), ``detection_rates.csv``/``.md`` and
    ``detection_heatmap.png`` to ``ws.results("detection")``; returns the detection-rate table.
    """
    from seg4seg_utils.report.plots import detection_heatmap
    from seg4seg_utils.stats import RATE_NOTE, detection_display
    from seg4seg_utils.studies.benchmark import benchmark_items, detection_table, run_benchmark

    p, embedder = ws.preset, ws.embedder
    out = ws.results("detection")
    out.mkdir(parents=True, exist_ok=True)
    trained = ws.trained_cases() if trained is None else trained
    items = benchmark_items(trained, p.slicer_seeds, image_variants, performances, settings or SlicerSettings())
    rows = run_benchmark(items, embedder, out / "detection_items.jsonl", cache_dir=ws.cache_dir, n_jobs=ws.n_jobs,
                         progress=ws.progress)
    table = detection_table(rows, by=("case", "prevalence", "image_variant", "performance"))
    table.to_csv(out / "detection_rates.csv", index=False)
    (out / "detection_rates.md").write_text(
        f"# Detection rates (preset `{p.name}`, embedder: {embedder.name}, {len(p.slicer_seeds)} slicer seeds "
        f"x {len(p.seeds)} model seeds)\n\n" + RATE_NOTE + "\n\n"
        + detection_display(table).to_markdown(index=False, floatfmt=".2f") + "\n")
    default = table[(table["image_variant"] == image_variants[0]) & (table["performance"] == "+".join(performances[0]))]
    detection_heatmap(default).savefig(out / "detection_heatmap.png", dpi=110)
    return table


def ablation(ws: Workspace, trained: Sequence[TrainedCase] | None = None, reduce: str | None = "umap") -> pd.DataFrame:
    """Embedding, metric, likelihood-form and baseline ablations (paper Table 2 style) on the same trained models.

    Settings: every image variant (the paper's three and the two mask shapes of
    :data:`~seg4seg_utils.discovery.embed.SHAPE_VARIANTS`) x performance variant with the default slicer; the
    soft-categorical likelihood; and the baselines (plain GMM = gamma 0, k-means, error-only ranking) on ``x0`` + Dice.
    Writes ``ablation_items.jsonl``, ``ablation.csv`` (per case and prevalence) and ``ablation.md``
    (detection rate per setting and case, averaged over prevalences) to ``ws.results("ablation")``.
    """
    from seg4seg_utils.discovery.embed import ALL_VARIANTS
    from seg4seg_utils.stats import RATE_NOTE, detection_pivot
    from seg4seg_utils.studies.benchmark import benchmark_items, detection_table, run_benchmark

    p, embedder = ws.preset, ws.embedder
    out = ws.results("ablation")
    out.mkdir(parents=True, exist_ok=True)
    runs = ws.trained_cases() if trained is None else trained
    perfs = (("dice",), ("ppv",), ("npv",))
    items = benchmark_items(runs, p.slicer_seeds, ALL_VARIANTS, perfs, SlicerSettings(reduce=reduce))
    for settings in (SlicerSettings(performance_model="soft_categorical", reduce=reduce),
                     SlicerSettings(method="gmm", reduce=reduce), SlicerSettings(method="kmeans", reduce=reduce),
                     SlicerSettings(method="error_ranking", reduce=reduce)):
        items += benchmark_items(runs, p.slicer_seeds, ("x0",), (("dice",),), settings)
    rows = run_benchmark(items, embedder, out / "ablation_items.jsonl", cache_dir=ws.cache_dir, n_jobs=ws.n_jobs,
                         progress=ws.progress)
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


def gamma_sweep(ws: Workspace, trained: Sequence[TrainedCase] | None = None,
                gammas=(1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0, 1000.0), reduce: str | None = "umap") -> pd.DataFrame:
    """Detection rate as a function of gamma (paper Fig. 3c style), ``x0`` + Dice; writes gamma_sweep.csv
    (and the resumable ``gamma_items.jsonl``) to ``ws.results("ablation")``."""
    from seg4seg_utils.studies.benchmark import benchmark_items, detection_table, run_benchmark

    out = ws.results("ablation")
    out.mkdir(parents=True, exist_ok=True)
    runs = ws.trained_cases() if trained is None else trained
    items = [it for g in gammas
             for it in benchmark_items(runs, ws.preset.slicer_seeds, settings=SlicerSettings(gamma=g, reduce=reduce))]
    rows = run_benchmark(items, ws.embedder, out / "gamma_items.jsonl", cache_dir=ws.cache_dir, n_jobs=ws.n_jobs,
                         progress=ws.progress)
    table = detection_table(rows, by=("gamma", "case", "prevalence"))
    table.to_csv(out / "gamma_sweep.csv", index=False)
    return table


#: the configurations notebook 06 compares and the book recommends, by their ablation names: (image variant,
#: performance scores, slicer settings). The default first; x0*M_GT for failures that live in the mask (case C);
#: the ground truth's shape with PPV, the one setting that finds C's polygon annotations at 5 % (chapter 06)
CONFIGURATIONS: dict[str, tuple[str, tuple[str, ...], SlicerSettings]] = {
    "SEG4SEG | x0 + dice": ("x0", ("dice",), SlicerSettings()),
    "SEG4SEG soft-categorical | x0 + dice": ("x0", ("dice",), SlicerSettings(performance_model="soft_categorical")),
    "SEG4SEG | x0 + npv": ("x0", ("npv",), SlicerSettings()),
    "SEG4SEG | x0*M_GT + dice": ("x0*M_GT", ("dice",), SlicerSettings()),
    "SEG4SEG | x0*M_GT + ppv": ("x0*M_GT", ("ppv",), SlicerSettings()),
    "SEG4SEG | shape(M_GT) + ppv": ("shape(M_GT)", ("ppv",), SlicerSettings()),
}


def attribute_study(ws: Workspace, table: SampleTable, attribute: Callable[[pd.DataFrame], np.ndarray],
                    n_slices: int = 10, variant: str = "x0", performance: Sequence[str] = ("dice",),
                    settings: SlicerSettings = SlicerSettings()) -> tuple[pd.DataFrame, dict[str, float], pd.DataFrame]:
    """Train on a dataset with a *naturally occurring* attribute (no injection) and ask whether SEG4SEG finds it.

    ``attribute(metrics) -> bool array`` marks the subgroup from the per-image metrics table (which carries
    every column of the sample table, e.g. ``quality`` or ``annotation_style``); the slicer sees the image
    ``variant``, the ``performance`` scores and ``settings`` (one of :data:`CONFIGURATIONS`). Returns (one row per
    slicer seed, the subgroup's Dice gap, the run's metrics with an ``attribute`` column).
    """
    from seg4seg_utils.discovery.embed import embed_dataset, performance_matrix
    from seg4seg_utils.discovery.judge import fit_and_judge, reduced
    from seg4seg_utils.model.metrics import subgroup_gap
    from seg4seg_utils.model.train import train

    run = train(table, ws.train_config(), runs_dir=ws.runs, progress=ws.progress)
    metrics = run.metrics()
    metrics["attribute"] = np.asarray(attribute(metrics), dtype=bool)
    emb = embed_dataset(table, ws.embedder, variant, run=run, cache_dir=ws.cache_dir, progress=ws.progress)
    metrics = metrics.set_index("id").loc[emb.ids].reset_index()
    scores = performance_matrix(metrics, tuple(performance), ids=emb.ids)
    rows = []
    for seed in ws.preset.slicer_seeds:
        Z = reduced(emb.X, settings, seed, ws.reduced_cache)
        _, report = fit_and_judge(Z, scores, metrics["attribute"].to_numpy(), n_slices=n_slices, settings=settings,
                                  seed=seed)
        rows.append({"slicer_seed": seed, **report.to_row()})
    return pd.DataFrame(rows), subgroup_gap(metrics, "attribute", "dice"), metrics


def false_alarms(ws: Workspace, studies: dict[str, tuple[SampleTable, Callable[[pd.DataFrame], np.ndarray]]],
                 configurations: dict[str, tuple[str, tuple[str, ...], SlicerSettings]] | None = None,
                 n_slices: int = 10) -> pd.DataFrame:
    """Negative controls: every configuration sliced against subgroups the model does *not* fail on.

    ``studies`` maps a name to (dataset, attribute) as :func:`attribute_study` takes them; each should be a
    subgroup that looks different but is segmented about as well as the rest (check its ``gap`` and ``p_value``
    here). The right answer is "no problematic slice", so every fit that meets the success criterion is a false
    alarm: one row per study and configuration (default :data:`CONFIGURATIONS`) with the false-alarm rate over
    the slicer seeds, its count and 95 % Wilson interval, and the subgroup's gap.
    """
    from seg4seg_utils.stats import with_detection_counts

    rows = []
    for study, (table, attribute) in studies.items():
        for name, (variant, performance, settings) in (configurations or CONFIGURATIONS).items():
            per_seed, gap, _ = attribute_study(ws, table, attribute, n_slices, variant, performance, settings)
            rows.append({"study": study, "setting": name, "false_alarm_rate": per_seed["success"].mean(),
                         "n_seeds": len(per_seed), "purity_pass": per_seed["purity_pass"].mean(),
                         "gap": gap["gap"], "p_value": gap["p_value"]})
    return with_detection_counts(pd.DataFrame(rows), rate="false_alarm_rate")


#: the clean phantom datasets whose models chapter 07 reads (its negative controls)
BOOK_CLEAN_MODALITIES = ("dermoscopy", "fundus")


def book_models(ws: Workspace) -> list:
    """Train (or read back) the models the book's later chapters read besides the grid's: a clean model per
    modality of :data:`BOOK_CLEAN_MODALITIES` (chapter 07) and the twin-cells model (chapter 11, at
    :data:`~seg4seg_utils.studies.labelflip.BOOK_PHANTOM`). ``make run`` trains them here, one after another,
    so that the chapters, run two side by side, only read them (two trainings beside other chapters took
    several times as long). Phantom presets only: on real data those chapters take their own datasets."""
    from seg4seg_utils.model.train import TrainJob, train_all
    from seg4seg_utils.studies import labelflip

    if ws.real_root is not None or ws.preset.real_data:
        return []
    bases = ws.base_datasets(BOOK_CLEAN_MODALITIES)
    runs = train_all([TrainJob(bases[m], ws.train_config(), ws.runs, label=f"[seg4seg] book model: clean {m}")
                      for m in BOOK_CLEAN_MODALITIES], progress=ws.progress)
    twins = labelflip.twins_dataset(ws, **labelflip.BOOK_PHANTOM)
    return runs + [labelflip.twins_model(ws, twins, labelflip.BOOK_PHANTOM["seed"])]


def run_job(ws: Workspace, until: str = "detect") -> dict[str, Path]:
    """The README's main job: data, one model per injected dataset (and the :func:`book_models`), then the
    detection-rate benchmark.

    ``until`` stops early: ``"data"`` (clean + injected datasets and their summary), ``"train"`` (also the
    models, the book's models and the subgroup gaps) or ``"detect"`` (everything).
    """
    stages = ("data", "train", "detect")
    if until not in stages:
        raise ValueError(f"until must be one of {stages}, got {until!r}")
    paths = run_data_job(ws)
    # umap's kernels compile beside the training (once, in a child) instead of in each detection worker
    compiling = compile_umap_in_background() if until == "detect" else None
    if stages.index(until) >= 1:
        with stage("training") as timed:
            trained = train_grid(ws)
            timed.step = f"{len(trained)} models (finished ones are read back)"
        out = ws.results("training")
        paths.update({"gaps": out / "gaps.md", "subgroup_gap": out / "subgroup_gap.png",
                      "learning_curves": out / "learning_curves.png"})
        with stage("training") as timed:
            timed.step = f"{len(book_models(ws))} models chapters 07 and 11 read"
    if until == "detect":
        with stage("detection", f"{len(trained)} models x {len(ws.preset.slicer_seeds)} slicer seeds"):
            if compiling is not None:
                compiling.wait()
            detection_benchmark(ws, trained)
        out = ws.results("detection")
        paths.update({"detection": out / "detection_rates.md", "detection_heatmap": out / "detection_heatmap.png"})
    return paths
