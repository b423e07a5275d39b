"""Detection rate over training seeds: 3 models per cell x 5 slicer seeds, beside each model's own rate and gap.

    .venv/bin/python scripts/bench_model_seeds.py [--preset cpu] [--cases ABCDEF] [--prevalences 0.05 0.1 0.2]
        [--model-seeds 0 1 2] [--data data] [--runs runs] [--results results] [--cache cache/embeddings]
        [--configurations NAME ...] [--patch-cases B]

Why: the main job trains one model per case and prevalence, so its detection rate (5 slicer seeds) says
how stable the *slicer* is on that one model, not whether another training run of the same U-Net on the
same injected data would fail in the same, findable way. Here every cell gets one model per training seed
(``TrainConfig.seed``; the injected dataset, data seed ``preset.seeds[0]``, stays the same), each sliced
with every slicer seed: on ``cpu`` 3 x 5 = 15 fits per cell.

Reuse: model seed 0 is the main job's own configuration, so with the same ``--runs`` folder its trained
runs are found by their config hash and not retrained; the ``x0`` embedding does not depend on the model
and the UMAP reductions are cached by content, so every model seed shares the main job's embedding and
reduction cache (``--cache``). Resumable: a finished model (``done.json``) is never retrained and every
slicer fit is one JSON line of ``detection_items.jsonl``, keyed by item, so a rerun only does what is missing.

Configurations: every fit is repeated for each of the book's recommended configurations
(:data:`seg4seg_utils.studies.pipeline.CONFIGURATIONS`, ``--configurations`` picks some; the default
``SEG4SEG | x0 + dice`` always runs) and, for the cases of ``--patch-cases`` (default B, the pixel-level
shortcut), for patch-level slicing as chapter 09 runs it (:mod:`seg4seg_utils.studies.patch_study`: 4 x 4
patches, lift aggregation, per-patch accuracy; the patch embeddings do not depend on the model, so they are
computed once per cell). No configuration sees the hidden attribute: it only judges the slices.

Writes ``<results>/<preset>/model_seeds/``: ``detection_items.jsonl`` (one row per fit, with its model seed;
``patch_items.jsonl`` for the patch level), ``detection_by_model_seed.csv`` and ``.md`` (the default
configuration): per case x prevalence the detection rate over all fits with k/n and its 95 % Wilson interval,
then per model seed its rate (k/n) and its subgroup Dice gap (rest - failure); and
``detection_by_configuration.csv`` and ``.md``: the same per configuration.
"""
from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

import pandas as pd


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from seg4seg_utils.config import PRESETS

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument("--cases", default="ABCDEF", help="cases to run, e.g. ABCD or AD (default: all, ABCDEF)")
    parser.add_argument("--prevalences", type=float, nargs="+", default=None,
                        help="a subset of the preset's prevalences (default: all of them)")
    parser.add_argument("--model-seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds (default: 0 1 2)")
    parser.add_argument("--data", default="data", help="datasets folder, as for the main job (default: data)")
    parser.add_argument("--runs", default="runs", help="trained models, as for the main job (default: runs)")
    parser.add_argument("--results", default="results", help="results folder (default: results)")
    parser.add_argument("--cache", default="cache/embeddings", help="embedding cache, as for the main job")
    parser.add_argument("--clip-weights", default=None, metavar="FILE", help="CLIP weights (default: EfficientNet-Lite0)")
    parser.add_argument("--reduce", choices=("umap", "pca"), default="umap",
                        help="reduction before slicing; umap is the main job's (default), pca is for quick tests")
    parser.add_argument("--configurations", nargs="+", default=None, metavar="NAME",
                        help="configurations of seg4seg_utils.studies.pipeline.CONFIGURATIONS to run besides the "
                             "default (default: all of them)")
    parser.add_argument("--patch-cases", default="B",
                        help="cases also sliced at patch level as in chapter 09 (default: B; '' for none)")
    parser.add_argument("--jobs", type=int, default=2, help="parallel slicer fits (default: 2)")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars and per-epoch lines")
    args = parser.parse_args(argv)
    if len(set(args.model_seeds)) != len(args.model_seeds):
        parser.error(f"--model-seeds lists a seed twice: {args.model_seeds}")
    from seg4seg_utils.studies.pipeline import CONFIGURATIONS

    unknown = [c for c in args.configurations or () if c not in CONFIGURATIONS]
    if unknown:
        parser.error(f"unknown configuration(s) {unknown}; choose from {list(CONFIGURATIONS)}")
    default = next(iter(CONFIGURATIONS))
    args.configurations = [default] + [c for c in (args.configurations or CONFIGURATIONS) if c != default]
    preset = PRESETS[args.preset]
    unknown = [p for p in args.prevalences or () if not any(abs(p - q) < 1e-9 for q in preset.prevalences)]
    if unknown:
        parser.error(f"prevalence(s) {unknown} are not in preset {preset.name!r}: {list(preset.prevalences)}")
    return args


def summarise(rows: pd.DataFrame, gaps: pd.DataFrame, model_seeds: list[int]) -> pd.DataFrame:
    """One row per case x prevalence: the rate over all fits (k, n, Wilson interval), then per model seed
    its rate, k, n and subgroup Dice gap (``rate_seed<s>``, ``k_seed<s>``, ``n_seed<s>``, ``gap_seed<s>``)."""
    from seg4seg_utils.studies.benchmark import detection_table

    keys = ["case", "prevalence"]
    table = detection_table(rows, by=keys)[keys + ["detection_rate", "k", "n", "ci_low", "ci_high"]]
    per_seed = detection_table(rows, by=keys + ["model_seed"])
    for s in model_seeds:
        one = per_seed[per_seed["model_seed"] == s].set_index(keys)[["detection_rate", "k", "n"]]
        one.columns = [f"rate_seed{s}", f"k_seed{s}", f"n_seed{s}"]
        gap = gaps[gaps["model_seed"] == s].set_index(keys)["gap"].rename(f"gap_seed{s}")
        table = table.join(one, on=keys).join(gap, on=keys)
    table["n_models"] = len(model_seeds)
    return table


#: the name of the patch-level rows in ``detection_by_configuration``
PATCH_CONFIGURATION = "patch slices, lift | x0 patches + accuracy"


def by_configuration(rows: pd.DataFrame, gaps: pd.DataFrame, model_seeds: list[int]) -> pd.DataFrame:
    """:func:`summarise` per configuration (rows need a ``configuration`` column), stacked."""
    return pd.concat([summarise(group, gaps, model_seeds).assign(configuration=name)
                      for name, group in rows.groupby("configuration", sort=False)], ignore_index=True)


def configuration_markdown(table: pd.DataFrame, title: str) -> str:
    """Configuration x case rows, one column per prevalence: ``rate (k/n, low-high)`` over all fits."""
    from seg4seg_utils.stats import RATE_NOTE, rate_label

    shown = table.assign(cell=[rate_label(int(k), int(n)) for k, n in zip(table["k"], table["n"])])
    shown = shown.pivot_table(index=["configuration", "case"], columns="prevalence", values="cell",
                              aggfunc="first", sort=False)
    shown.columns = [f"{p:.0%}" for p in shown.columns]
    shown = shown.reset_index()
    shown["configuration"] = shown["configuration"].str.replace("|", "\\|")
    return f"# {title}\n\n{RATE_NOTE}\n\n" + shown.to_markdown(index=False) + "\n"


def markdown(table: pd.DataFrame, model_seeds: list[int], title: str) -> str:
    """The summary as markdown: ``rate (k/n, low-high)`` over all fits, ``rate (k/n)`` and the gap per model."""
    from seg4seg_utils.stats import RATE_NOTE, format_rate, rate_label

    shown = table[["case", "prevalence"]].copy()
    shown["all fits"] = [rate_label(int(k), int(n)) for k, n in zip(table["k"], table["n"])]
    for s in model_seeds:
        shown[f"model seed {s}"] = [f"{format_rate(k / n)} ({int(k)}/{int(n)})" if n else "-"
                                    for k, n in zip(table[f"k_seed{s}"], table[f"n_seed{s}"])]
        shown[f"gap {s}"] = table[f"gap_seed{s}"]
    return (f"# {title}\n\n{RATE_NOTE} Per model seed: its own rate over the slicer seeds, and its subgroup "
            "Dice gap (mean test Dice of the rest minus that of the failure subgroup).\n\n"
            + shown.to_markdown(index=False, floatfmt=".3g") + "\n")


def patch_level(ws, runs_by_seed: dict[int, list], results, progress: bool) -> pd.DataFrame:
    """Chapter 09's patch-level slicing (4 x 4 patches, 2 x 2 on smoke; lift; per-patch accuracy) of every
    model in ``runs_by_seed``; rows carry ``model_seed`` and ``configuration`` (:data:`PATCH_CONFIGURATION`)."""
    from seg4seg_utils.studies.patch_study import patch_benchmark

    frames = []
    for seed, runs in runs_by_seed.items():
        if runs:
            rows = patch_benchmark(runs, ws.embedder, results, cache_dir=ws.cache_dir,
                                   slicer_seeds=ws.preset.slicer_seeds, grid=2 if ws.preset.name == "smoke" else 4,
                                   settings=[{"aggregate": "lift", "patch_metric": "accuracy"}], progress=progress)
            frames.append(rows.assign(model_seed=seed, configuration=PATCH_CONFIGURATION))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def main(argv: list[str] | None = None) -> pd.DataFrame:
    args = parse_args(argv)
    from seg4seg_utils.config import get_preset
    from seg4seg_utils.studies.benchmark import benchmark_items, run_benchmark
    from seg4seg_utils.studies.pipeline import CONFIGURATIONS, gap_table
    from seg4seg_utils.studies.workspace import Workspace

    t0 = time.perf_counter()
    progress = not args.no_progress
    preset = get_preset(args.preset)
    if args.prevalences:
        preset = replace(preset, prevalences=tuple(q for q in preset.prevalences
                                                   if any(abs(p - q) < 1e-9 for p in args.prevalences)))
    preset = replace(preset, seeds=preset.seeds[:1])  # one injected dataset per cell; models differ by seed
    out = Path(args.results) / preset.name / "model_seeds"
    out.mkdir(parents=True, exist_ok=True)
    ws = Workspace(preset, data_dir=args.data, runs_dir=args.runs, results_dir=args.results, cache_dir=args.cache,
                   clip_weights=args.clip_weights, n_jobs=args.jobs, progress=progress)
    grid = ws.case_datasets(args.cases)
    print(f"[bench] {len(grid)} cells (cases {args.cases}, prevalences {list(preset.prevalences)}) x model seeds "
          f"{args.model_seeds} x slicer seeds {list(preset.slicer_seeds)}", flush=True)

    items, seed_of, config_of, gaps, patch_runs = [], {}, {}, [], {}
    for i, seed in enumerate(args.model_seeds, 1):
        print(f"[bench] model seed {seed} ({i}/{len(args.model_seeds)}): training or reusing {len(grid)} models "
              f"in {args.runs}/{preset.name}", flush=True)
        trained = ws.replace(train_overrides={"seed": seed}).trained_cases(grid)
        gaps.append(gap_table(trained).assign(model_seed=seed))
        for name in args.configurations:
            variant, performance, settings = CONFIGURATIONS[name]
            for it in benchmark_items(trained, preset.slicer_seeds, (variant,), (performance,),
                                      replace(settings, reduce=args.reduce)):
                items.append(it)
                seed_of[it.key], config_of[it.key] = seed, name
        patch_runs[seed] = [tc for tc in trained if tc.case in args.patch_cases.upper()]
    gaps = pd.concat(gaps, ignore_index=True)
    gaps.to_csv(out / "gaps_by_model_seed.csv", index=False)

    results = out / "detection_items.jsonl"
    print(f"[bench] {len(items)} slicer fits ({len(args.configurations)} configurations); finished ones are read "
          f"back from {results}", flush=True)
    rows = run_benchmark(items, ws.embedder, results, cache_dir=ws.cache_dir, n_jobs=ws.n_jobs, progress=progress)
    rows["model_seed"], rows["configuration"] = rows["key"].map(seed_of), rows["key"].map(config_of)
    patch_rows = patch_level(ws, patch_runs, out / "patch_items.jsonl", progress)
    configurations = by_configuration(pd.concat([rows, patch_rows], ignore_index=True), gaps, args.model_seeds)
    configurations.to_csv(out / "detection_by_configuration.csv", index=False)
    (out / "detection_by_configuration.md").write_text(configuration_markdown(configurations, (
        f"Detection rate per configuration over model seeds (preset `{preset.name}`, {len(args.model_seeds)} "
        f"models x {len(preset.slicer_seeds)} slicer seeds per cell; embedder: {rows['embedder'].iat[0]})")))
    rows = rows[rows["configuration"] == args.configurations[0]]
    table = summarise(rows, gaps, args.model_seeds)
    table.to_csv(out / "detection_by_model_seed.csv", index=False)
    title = (f"Detection rate over model seeds (preset `{preset.name}`, {len(args.model_seeds)} models x "
             f"{len(preset.slicer_seeds)} slicer seeds per cell; embedder: {rows['embedder'].iat[0]}; "
             f"reduction: {args.reduce})")
    text = markdown(table, args.model_seeds, title)
    (out / "detection_by_model_seed.md").write_text(text)
    print(text)
    print(f"[bench] wrote {out / 'detection_by_model_seed.csv'} and .md in {time.perf_counter() - t0:.0f} s")
    return table


if __name__ == "__main__":
    main()
