"""The detection-rate benchmark: slicer fits over cases x prevalences x seeds x variants, cached and parallel.

One *item* = one trained model's test predictions (a case at a prevalence, data seed), one slicer seed,
one image variant (``x0``, ``x0*M_GT``, ``x0*M_pred``, or a mask-shape variant) and one performance variant
(e.g. ``("dice",)``).
Each item is one :func:`~seg4seg_utils.discovery.judge.fit_and_judge` on the test split, judged against the
hidden ``failure`` attribute. Results are
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

from seg4seg_utils.data.records import config_hash
from seg4seg_utils.discovery.judge import SlicerSettings

__all__ = ["BenchmarkItem", "benchmark_items", "run_item", "run_items", "reduction_key", "run_benchmark",
           "detection_table", "load_run"]


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


def load_run(run_root: str | os.PathLike):
    """A training run read back from its folder (see :meth:`seg4seg_utils.model.train.Run.from_folder`)."""
    from seg4seg_utils.model.train import Run

    return Run.from_folder(run_root)


def run_item(item: BenchmarkItem, ids: list[str], X: np.ndarray, metrics: pd.DataFrame, embedder_name: str,
             reduced_cache: str | os.PathLike | None = None) -> dict[str, Any]:
    """Fit and judge one item on precomputed test-split embeddings ``X`` (rows in ``ids`` order) and the
    run's per-image ``metrics`` (read once per run by :func:`run_benchmark`, not once per fit)."""
    from seg4seg_utils.data.inject import CASES
    from seg4seg_utils.discovery.embed import performance_matrix
    from seg4seg_utils.discovery.judge import fit_and_judge, reduced

    Y = performance_matrix(metrics, item.performance, ids=ids)
    attr = metrics.set_index("id").loc[ids, "failure"].astype(bool).to_numpy()
    n_slices = item.settings.n_slices or CASES[item.case].n_slices
    started = time.time()
    t1 = time.perf_counter()
    Z = reduced(X, item.settings, item.slicer_seed, reduced_cache)
    t_reduce = time.perf_counter() - t1
    t2 = time.perf_counter()
    _, report = fit_and_judge(Z, Y, attr, n_slices=n_slices, settings=item.settings, seed=item.slicer_seed)
    t_fit = time.perf_counter() - t2
    row = {"key": item.key, "case": item.case, "prevalence": item.prevalence, "data_seed": item.data_seed,
           "slicer_seed": item.slicer_seed, "image_variant": item.image_variant,
           "performance": "+".join(item.performance), "method": item.settings.method, "gamma": item.settings.gamma,
           "performance_model": item.settings.performance_model, "n_slices": n_slices, "n_test": len(Y),
           "embedder": embedder_name, **report.to_row(),
           "seconds_reduce": t_reduce, "seconds_fit": t_fit,
           # provenance only (which process ran the fit, and when): never part of the result itself
           "worker": f"{socket.gethostname()}:{os.getpid()}", "started": started}
    return {k: (v.item() if isinstance(v, np.generic) else v) for k, v in row.items()}


def run_items(items: Sequence[BenchmarkItem], ids: list[str], X: np.ndarray, metrics: pd.DataFrame,
              embedder_name: str, reduced_cache: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """:func:`run_item` for items that share one reduction (a joblib task): the first computes it, the others
    read it back. As separate tasks, two workers would each fit the same UMAP when they met those items at the
    same time (the cache is written only when a fit ends)."""
    return [run_item(item, ids, X, metrics, embedder_name, reduced_cache) for item in items]


def reduction_key(item: BenchmarkItem) -> tuple:
    """What decides an item's reduction: its embedding (dataset, run, variant), slicer seed and reducer."""
    return (item.dataset_root, item.run_root, item.image_variant, item.slicer_seed, item.settings.reduce,
            item.settings.n_components)


def _embed_item(dataset_root: str, run_root: str, variant: str, embedder, cache_dir
                ) -> tuple[list[str], np.ndarray, pd.DataFrame, str]:
    """One (dataset, run, variant) test-split embedding, from the cache or computed, with the run's per-image
    metrics and the name of what embedded it (a joblib task: the run is read here once for every fit that
    uses it)."""
    from seg4seg_utils.data.records import read_dataset
    from seg4seg_utils.discovery.embed import embed_dataset

    run = load_run(run_root)
    emb = embed_dataset(read_dataset(dataset_root, validate="none", require_splits=()), embedder, variant,
                        run=run, split="test", cache_dir=cache_dir, progress=False)
    return emb.ids, emb.X, run.metrics(), emb.embedder_name


def run_benchmark(items: Sequence[BenchmarkItem], embedder, results_path: str | os.PathLike,
                  cache_dir: str | os.PathLike = "cache/embeddings", n_jobs: int = 1, progress: bool = True) -> pd.DataFrame:
    """Run every item not already in ``results_path`` (JSON lines), in parallel with joblib; return all rows.

    Two rounds of joblib tasks: one embedding per (dataset, run, variant), read from or written to the
    cache (with the run's metrics, read once), then the items that share a reduction (:func:`reduction_key`),
    reduce-fit-judge one after another in one task. Rows are appended as they finish, so an interrupted
    benchmark resumes where it stopped. Any joblib backend runs them: ``SEG4SEG_BACKEND=dask`` (see
    :mod:`seg4seg_utils.studies.scaleout`) or an enclosing ``joblib.parallel_config``; on a cluster ``n_jobs`` is
    ignored and every worker is used.
    """
    from joblib import Parallel, delayed
    from tqdm.auto import tqdm

    from seg4seg_utils.studies.scaleout import effective_n_jobs, joblib_backend

    results_path = Path(results_path)
    results_path.parent.mkdir(parents=True, exist_ok=True)
    done = {r["key"] for r in read_rows(results_path)}
    todo = [it for it in items if it.key not in done]
    if todo:
        with joblib_backend():  # SEG4SEG_BACKEND / SEG4SEG_SCHEDULER when set; otherwise nothing changes
            jobs = list(dict.fromkeys((it.dataset_root, it.run_root, it.image_variant) for it in todo))
            runner = Parallel(n_jobs=effective_n_jobs(n_jobs), return_as="generator")
            results = runner(delayed(_embed_item)(*job, embedder, cache_dir) for job in jobs)
            embeddings = dict(zip(jobs, tqdm(results, total=len(jobs), desc="embeddings", disable=not progress)))
            runner = Parallel(n_jobs=effective_n_jobs(n_jobs), return_as="generator_unordered")
            reduced = Path(cache_dir) / "reduced" if cache_dir is not None else None
            groups: dict[tuple, list[BenchmarkItem]] = {}
            for it in todo:
                groups.setdefault(reduction_key(it), []).append(it)
            done_groups = runner(delayed(run_items)(group, *embeddings[group[0].dataset_root, group[0].run_root,
                                                                       group[0].image_variant], reduced)
                                 for group in groups.values())
            with open_rows_for_append(results_path) as fh, \
                    tqdm(total=len(todo), desc="slicer fits", disable=not progress) as bar:
                for rows in done_groups:
                    for row in rows:
                        fh.write(json.dumps(row) + "\n")
                    fh.flush()
                    bar.update(len(rows))
    wanted = {it.key for it in items}
    return pd.DataFrame([r for r in read_rows(results_path) if r["key"] in wanted])


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


def read_rows(path: Path) -> list[dict[str, Any]]:
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
    from seg4seg_utils.stats import with_detection_counts

    g = results.groupby(list(by))
    out = g.agg(detection_rate=("success", "mean"), perf_pass=("perf_pass", "mean"),
                purity_pass=("purity_pass", "mean"), omega2=("omega2", "mean"), max_purity=("max_purity", "mean"),
                n_seeds=("success", "size")).reset_index()
    return with_detection_counts(out)
