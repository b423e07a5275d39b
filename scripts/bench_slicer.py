"""Benchmark the slicer: UMAP and the mixture separately, wall time and peak memory, for growing n.

    .venv/bin/python scripts/bench_slicer.py [--sizes 1000 10000 100000] [--dim 512] [--out results/bench_slicer.csv]

Each size runs in a fresh subprocess so peak resident memory (ru_maxrss) is that size's own. Inputs are
synthetic: 12 Gaussian clusters in ``--dim`` dimensions and Dice-like scores with a low-performing subgroup.
UMAP's first fit in a process includes numba compilation; a tiny warm-up fit runs first and is excluded.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path


def one(n: int, dim: int, seed: int, umap_jobs: int) -> dict:
    import numpy as np

    from seg4seg_utils.discovery.reduce import reduce_embeddings
    from seg4seg_utils.discovery.slicer import SliceFinder

    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 3, (12, dim)).astype(np.float32)
    labels = rng.integers(0, 12, n)
    X = centres[labels] + rng.normal(0, 1, (n, dim)).astype(np.float32)
    dice = np.clip(rng.normal(0.93, 0.03, n), 0, 1)
    dice[labels == 0] = np.clip(rng.normal(0.6, 0.1, (labels == 0).sum()), 0, 1)
    reduce_embeddings(X[:300], "umap", 8, random_state=None if umap_jobs != 1 else seed)  # numba warm-up
    t0 = time.perf_counter()
    _, Z = reduce_embeddings(X, "umap", 8, random_state=None if umap_jobs != 1 else seed)
    t_umap = time.perf_counter() - t0
    t1 = time.perf_counter()
    sf = SliceFinder(n_slices=10, gamma=10, reduce=None, random_state=seed).fit(Z, dice)
    t_mix = time.perf_counter() - t1
    return {"n": n, "dim": dim, "umap_seconds": t_umap, "mixture_seconds": t_mix, "em_iterations": sf.n_iter_,
            "umap_threads": "all" if umap_jobs != 1 else 1,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000])
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--umap-jobs", type=int, default=-1,
                        help="-1: all cores (UMAP is then not bit-reproducible); 1: seeded and single-threaded")
    parser.add_argument("--out", type=Path, default=Path("results/bench_slicer.csv"))
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(one(args.child, args.dim, args.seed, args.umap_jobs)))
        return
    import pandas as pd

    rows = []
    for n in args.sizes:
        out = subprocess.run([sys.executable, __file__, "--child", str(n), "--dim", str(args.dim), "--seed",
                              str(args.seed), "--umap-jobs", str(args.umap_jobs)], capture_output=True, text=True)
        if out.returncode:
            raise SystemExit(out.stderr)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(rows[-1], flush=True)
    df = pd.DataFrame(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(args.out, index=False)
    print(df.to_markdown(index=False, floatfmt=".1f"))


if __name__ == "__main__":
    main()
