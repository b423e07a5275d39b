"""Boundary-aware scores as the slicer's performance (seg4seg_utils.studies.boundary, shown in notebook 06).

    .venv/bin/python scripts/bench_boundary_scores.py [--preset cpu] [--cases ABCDEF] [--tolerance 2]
        [--data data] [--runs runs] [--results results] [--cache cache/embeddings] [--reduce umap|pca]

Surface Dice (at ``--tolerance`` pixels) and HD95 per test image from the saved predictions of the main job's
models (trained if missing, else read back), their subgroup gaps, and SEG4SEG on ``x0`` and ``x0*M_GT`` with
Dice, surface Dice and both as the score, every slicer seed. Writes ``<results>/<preset>/boundary/`` (see
:func:`seg4seg_utils.studies.boundary.boundary_benchmark`).
"""
from __future__ import annotations

import argparse
import time

import pandas as pd


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from seg4seg_utils.config import PRESETS

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument("--cases", default="ABCDEF", help="cases to run, e.g. ABCD or C (default: all, ABCDEF)")
    parser.add_argument("--tolerance", type=float, default=2.0, help="surface Dice tolerance in pixels (default: 2)")
    parser.add_argument("--data", default="data", help="datasets folder, as for the main job (default: data)")
    parser.add_argument("--runs", default="runs", help="trained models, as for the main job (default: runs)")
    parser.add_argument("--results", default="results", help="results folder (default: results)")
    parser.add_argument("--cache", default="cache/embeddings", help="embedding cache, as for the main job")
    parser.add_argument("--reduce", choices=("umap", "pca"), default="umap",
                        help="reduction before slicing; umap is the main job's (default), pca is for quick tests")
    args = parser.parse_args(argv)
    if args.tolerance <= 0:
        parser.error(f"--tolerance must be > 0 pixels, got {args.tolerance}")
    return args


def main(argv: list[str] | None = None) -> pd.DataFrame:
    from seg4seg_utils.studies.boundary import boundary_benchmark
    from seg4seg_utils.studies.workspace import Workspace

    args = parse_args(argv)
    ws = Workspace(args.preset, data_dir=args.data, runs_dir=args.runs, results_dir=args.results,
                   cache_dir=args.cache, progress=False)
    t0 = time.perf_counter()
    table = boundary_benchmark(ws, args.cases, args.tolerance, args.reduce,
                               log=lambda message: print(f"[bench] {message}", flush=True))
    print(f"[bench] wrote {ws.results('boundary')} in {time.perf_counter() - t0:.0f} s")
    return table


if __name__ == "__main__":
    main()
