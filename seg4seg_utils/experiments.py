"""The detection-rate benchmark: slicer fits over cases x prevalences x seeds x variants, cached and parallel.

One *item* = one trained model's test predictions (a case at a prevalence, data seed), one slicer seed,
one image variant (``x0``, ``x0*M_GT``, ``x0*M_pred``) and one performance variant (e.g. ``("dice",)``).
Each item fits a :class:`~seg4seg_utils.slicer.SliceFinder` on the test split and is judged by
:func:`~seg4seg_utils.protocol.evaluate_slices` against the hidden ``failure`` attribute. Results are
appended to a JSON-lines file keyed by a hash of everything that defines the item, so an interrupted
benchmark resumes where it stopped and a finished one is read back instantly.
"""
from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd

from .data import config_hash

__all__ = ["SlicerSettings", "BenchmarkItem", "benchmark_items", "run_item", "run_benchmark", "detection_table",
           "load_run"]

@dataclass(frozen=True)
class SlicerSettings:
    """Slicer hyper-parameters shared by every item of a benchmark (``n_slices=None``: the case's default)."""

    gamma: float = 10.0
    n_slices: int | None = None
    performance_model: str = "gaussian"
    transform: str = "logit"
    reduce: str | None = "umap"
    n_components: int = 8
    method: str = "seg4seg"   # seg4seg | gmm (gamma=0) | kmeans | error_ranking


@dataclass(frozen=True)
class BenchmarkItem:
    """Everything that defines one slicer fit (all plain values, so it hashes and pickles cheaply)."""

    case: str
    prevalence: float
    data_seed: int
    slicer_seed: int
    image_variant: str
    performance: tuple[str, ...]
    run_root: str
    dataset_root: str
    settings: SlicerSettings = field(default_factory=SlicerSettings)

    @property
    def key(self) -> str:
        return config_hash({**asdict(self), "run_root": Path(self.run_root).name})


def benchmark_items(runs: Iterable[tuple[str, float, int, Any, Any]], slicer_seeds: Sequence[int] = (0, 1, 2, 3, 4),
                    image_variants: Sequence[str] = ("x0",), performances: Sequence[tuple[str, ...]] = (("dice",),),
                    settings: SlicerSettings = SlicerSettings()) -> list[BenchmarkItem]:
    """The full grid of items from ``(case, prevalence, data_seed, table, run)`` tuples."""
    items = []
    for case, prevalence, data_seed, table, run in runs:
        for variant in image_variants:
            for perf in performances:
                for s in slicer_seeds:
                    items.append(BenchmarkItem(case, float(prevalence), int(data_seed), int(s), variant,
                                               tuple(perf), str(run.root), str(table.root), settings))
    return items


def _slicer(item: BenchmarkItem, n_slices: int):
    from .slicer import ErrorRankingSlicer, KMeansSlicer, SliceFinder

    st = item.settings
    if st.method == "kmeans":
        return KMeansSlicer(n_slices=n_slices, reduce=None, random_state=item.slicer_seed)
    if st.method == "error_ranking":
        return ErrorRankingSlicer(n_slices=n_slices)
    gamma = 0.0 if st.method == "gmm" else st.gamma
    return SliceFinder(n_slices=n_slices, gamma=gamma, performance_model=st.performance_model,
                       transform=st.transform, reduce=None, random_state=item.slicer_seed)


def load_run(run_root: str | os.PathLike):
    """A training run read back from its folder (see :meth:`seg4seg_utils.train.Run.from_folder`)."""
    from .train import Run

    return Run.from_folder(run_root)


def _reduced(X: np.ndarray, method: str | None, n_components: int, seed: int,
             cache_dir: str | os.PathLike | None) -> np.ndarray:
    """UMAP/PCA of ``X``, cached on disk by content hash: settings that differ only after the reduction
    (gamma, likelihood form, performance columns) share one UMAP fit per embedding and seed. The key names
    the CPU numerics too (numpy's SIMD level moves UMAP: see :mod:`.kernels`)."""
    from .kernels import kernel_key
    from .slicer import reduce_embeddings

    if cache_dir is None or method in (None, "none"):
        return reduce_embeddings(X, method, n_components, seed)[1]
    import hashlib

    digest = hashlib.sha256(np.ascontiguousarray(X).tobytes()).hexdigest()[:16]
    numerics = hashlib.sha256(kernel_key(None).encode()).hexdigest()[:8]
    path = Path(cache_dir) / f"{method}{n_components}-seed{seed}-{digest}-{numerics}.npy"
    if path.is_file():
        return np.load(path)
    Z = reduce_embeddings(X, method, n_components, seed)[1]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        np.save(fh, Z)
    os.replace(tmp, path)  # parallel workers may race to write the same file: last one wins, both identical
    return Z


def run_item(item: BenchmarkItem, ids: list[str], X: np.ndarray, embedder_name: str,
             reduced_cache: str | os.PathLike | None = None) -> dict[str, Any]:
    """Fit and judge one item on precomputed test-split embeddings ``X`` (rows in ``ids`` order)."""
    from .embed import performance_matrix
    from .inject import CASES
    from .protocol import evaluate_slices
    metrics = load_run(item.run_root).metrics()
    Y = performance_matrix(metrics, item.performance, ids=ids)
    attr = metrics.set_index("id").loc[ids, "failure"].astype(bool).to_numpy()
    n_slices = item.settings.n_slices or CASES[item.case].n_slices
    started = time.time()
    t1 = time.perf_counter()
    Z = _reduced(X, item.settings.reduce, item.settings.n_components, item.slicer_seed, reduced_cache)
    t_reduce = time.perf_counter() - t1
    t2 = time.perf_counter()
    slicer = _slicer(item, n_slices).fit(Z, Y)
    t_fit = time.perf_counter() - t2
    report = evaluate_slices(slicer.labels_, Y[:, 0], attr, proba=slicer.proba_, n_slices=n_slices)
    win = report.winning_slice
    row = {"key": item.key, "case": item.case, "prevalence": item.prevalence, "data_seed": item.data_seed,
           "slicer_seed": item.slicer_seed, "image_variant": item.image_variant,
           "performance": "+".join(item.performance), "method": item.settings.method, "gamma": item.settings.gamma,
           "performance_model": item.settings.performance_model, "n_slices": n_slices, "n_test": len(Y),
           "embedder": embedder_name, **report.to_dict(),
           "winning_size": int(report.table.loc[win, "size"]) if win is not None else None,
           "winning_perf": float(report.table.loc[win, "mean_perf"]) if win is not None else None,
           "seconds_reduce": t_reduce, "seconds_fit": t_fit,
           # provenance only (which process ran the fit, and when): never part of the result itself
           "worker": f"{socket.gethostname()}:{os.getpid()}", "started": started}
    return {k: (v.item() if isinstance(v, np.generic) else v) for k, v in row.items()}


def _embed_item(dataset_root: str, run_root: str, variant: str, embedder, cache_dir) -> tuple[list[str], np.ndarray]:
    """One (dataset, run, variant) test-split embedding, from the cache or computed (a joblib task)."""
    from .data import read_dataset
    from .embed import embed_dataset

    emb = embed_dataset(read_dataset(dataset_root, validate="none", require_splits=()), embedder, variant,
                        run=load_run(run_root), split="test", cache_dir=cache_dir, progress=False)
    return emb.ids, emb.X


def run_benchmark(items: Sequence[BenchmarkItem], embedder, results_path: str | os.PathLike,
                  cache_dir: str | os.PathLike = "cache/embeddings", n_jobs: int = 1, progress: bool = True) -> pd.DataFrame:
    """Run every item not already in ``results_path`` (JSON lines), in parallel with joblib; return all rows.

    Two rounds of joblib tasks: one embedding per (dataset, run, variant), read from or written to the
    cache, then one reduce-fit-judge per item. Rows are appended as they finish, so an interrupted
    benchmark resumes where it stopped. Any joblib backend runs them: ``SEG4SEG_BACKEND=dask`` (see
    :mod:`seg4seg_utils.scaleout`) or an enclosing ``joblib.parallel_config``; on a cluster ``n_jobs`` is
    ignored and every worker is used.
    """
    from joblib import Parallel, delayed
    from tqdm.auto import tqdm

    from .scaleout import effective_n_jobs, joblib_backend

    results_path = Path(results_path)
    results_path.parent.mkdir(parents=True, exist_ok=True)
    done = {r["key"] for r in _read_rows(results_path)}
    todo = [it for it in items if it.key not in done]
    if todo:
        with joblib_backend():  # SEG4SEG_BACKEND / SEG4SEG_SCHEDULER when set; otherwise nothing changes
            jobs = list(dict.fromkeys((it.dataset_root, it.run_root, it.image_variant) for it in todo))
            runner = Parallel(n_jobs=effective_n_jobs(n_jobs), return_as="generator")
            results = runner(delayed(_embed_item)(*job, embedder, cache_dir) for job in jobs)
            embeddings = dict(zip(jobs, tqdm(results, total=len(jobs), desc="embeddings", disable=not progress)))
            runner = Parallel(n_jobs=effective_n_jobs(n_jobs), return_as="generator_unordered")
            reduced = Path(cache_dir) / "reduced" if cache_dir is not None else None
            rows = runner(delayed(run_item)(it, *embeddings[(it.dataset_root, it.run_root, it.image_variant)],
                                            embedder.name, reduced) for it in todo)
            with open_rows_for_append(results_path) as fh:
                for row in tqdm(rows, total=len(todo), desc="slicer fits", disable=not progress):
                    fh.write(json.dumps(row) + "\n")
                    fh.flush()
    wanted = {it.key for it in items}
    return pd.DataFrame([r for r in _read_rows(results_path) if r["key"] in wanted])


def open_rows_for_append(path: Path):
    """``path`` (JSON lines) opened for appending rows; a last line cut short by an interruption is ended first
    (it is skipped when read back, and that item reruns), so new rows always start on a line of their own."""
    if path.is_file() and path.stat().st_size:
        with path.open("rb") as fh:
            fh.seek(-1, os.SEEK_END)
            cut_short = fh.read(1) != b"\n"
        if cut_short:
            with path.open("a") as fh:
                fh.write("\n")
    return path.open("a")


def _read_rows(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut short by an interruption: that item simply reruns
            continue
    return rows


def detection_table(results: pd.DataFrame, by: Sequence[str] = ("case", "prevalence")) -> pd.DataFrame:
    """Detection rate (share of seeds meeting the success criterion) with perf-pass and purity-pass rates.

    Beside the rate: its count ``k`` of ``n`` fits and 95 % Wilson interval ``ci_low``-``ci_high``
    (:func:`seg4seg_utils.stats.with_detection_counts`), because a rate over a handful of seeds is coarse.
    """
    from .stats import with_detection_counts

    g = results.groupby(list(by))
    out = g.agg(detection_rate=("success", "mean"), perf_pass=("perf_pass", "mean"),
                purity_pass=("purity_pass", "mean"), omega2=("omega2", "mean"), max_purity=("max_purity", "mean"),
                n_seeds=("success", "size")).reset_index()
    return with_detection_counts(out)
