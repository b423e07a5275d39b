"""Scale out: the detection-rate sweep and embedding extraction on a Dask (or Ray) cluster, through joblib.

All of seg4seg's parallel work goes through :class:`joblib.Parallel` (``experiments.run_benchmark``: one
task per embedding to extract, then one per slicer fit), so any joblib backend can run it. Three ways in,
none of which changes a notebook:

* **environment** - ``SEG4SEG_BACKEND=dask SEG4SEG_SCHEDULER=tcp://host:8786`` (an existing cluster) or
  ``SEG4SEG_SCHEDULER=local:4`` (a local cluster of 4 worker processes, started and stopped around each
  sweep). Every sweep in the process, and in every notebook kernel started from it, uses it.
* **command line** - ``python -m seg4seg_utils run --backend dask --scheduler tcp://host:8786`` and
  ``python -m seg4seg_utils notebooks ... --backend dask --scheduler local:2`` set those variables.
* **Python** - ``with scaleout.joblib_backend("dask", scheduler="tcp://host:8786"): pipeline.detection_benchmark(...)``.

Workers need the project importable (same environment) and the data, runs and cache folders at the same
paths (a shared disk): tasks carry paths, and embedders travel as recipes that reload their weights
files on the worker (see ``Embedder.__reduce_ex__``), never as pickled tensors. Results do not depend on
the backend: every fit is seeded by its item alone (tested: identical rows with loky and with a local
two-worker Dask cluster).
"""
from __future__ import annotations

import logging
import os
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Iterator

__all__ = ["BACKEND_ENV", "SCHEDULER_ENV", "BackendInfo", "joblib_backend", "active_backend", "effective_n_jobs"]

BACKEND_ENV = "SEG4SEG_BACKEND"
SCHEDULER_ENV = "SEG4SEG_SCHEDULER"
DISTRIBUTED = ("dask", "ray")


@dataclass(frozen=True)
class BackendInfo:
    """Which joblib backend is in force: ``name`` (loky, threading, dask, ray, ...), whether it spans a
    cluster, and for Dask the scheduler address and number of workers."""

    name: str
    distributed: bool = False
    address: str | None = None
    n_workers: int | None = None


def active_backend() -> BackendInfo:
    """The joblib backend that a ``Parallel()`` created now would use."""
    from joblib.parallel import get_active_backend

    backend, _ = get_active_backend()
    kind = type(backend).__name__.lower()
    for name in DISTRIBUTED:
        if name in kind:
            return BackendInfo(name, True)
    return BackendInfo(kind.replace("backend", "") or "loky")


def effective_n_jobs(n_jobs: int) -> int:
    """``n_jobs`` for local backends; all the cluster's workers (-1) when a distributed backend is active."""
    return -1 if active_backend().distributed else n_jobs


def _parse_local(scheduler: str | None, n_workers: int) -> int | None:
    """``None``/``"local"``/``"local:N"`` -> number of local workers; an address -> None."""
    if scheduler in (None, "", "local"):
        return n_workers
    if scheduler.startswith("local:"):
        try:
            n = int(scheduler.split(":", 1)[1])
        except ValueError:
            n = 0
        if n < 1:
            raise ValueError(f"scheduler {scheduler!r}: write local:N with N >= 1 workers, e.g. local:2")
        return n
    return None


@contextmanager
def joblib_backend(backend: str | None = None, scheduler: str | None = None, n_workers: int = 2,
                   threads_per_worker: int = 1) -> Iterator[BackendInfo]:
    """Run the joblib work inside this block on ``backend``.

    ``backend=None`` reads ``SEG4SEG_BACKEND`` / ``SEG4SEG_SCHEDULER``; when neither names a backend the
    block changes nothing (joblib's own default or an enclosing ``joblib.parallel_config`` stays in force).
    ``"dask"``: connect to ``scheduler`` (``tcp://host:8786``), or start a local cluster of ``n_workers``
    processes for the block (``scheduler`` ``None``, ``"local"`` or ``"local:N"``). ``"ray"``: join the Ray
    cluster at ``scheduler`` (``None``: start a local one). Any other name (``loky``, ``threading``,
    ``multiprocessing``) is passed to joblib as is.
    """
    import joblib

    if backend is None:
        backend = os.environ.get(BACKEND_ENV) or None
        scheduler = scheduler or os.environ.get(SCHEDULER_ENV) or None
    if backend is None:
        yield active_backend()
        return
    backend = backend.lower()
    with ExitStack() as stack:
        if backend == "dask":
            try:
                from dask.distributed import Client, LocalCluster
            except ImportError as exc:
                raise ImportError("the dask backend needs dask.distributed: pip install 'dask[distributed]' "
                                  "(it is in requirements/base.txt)") from exc
            n_local = _parse_local(scheduler, n_workers)
            if n_local is not None:
                # processes, one thread each: torch/UMAP/numba release the GIL unevenly, processes never share it
                cluster = stack.enter_context(LocalCluster(n_workers=n_local, threads_per_worker=threads_per_worker,
                                                           processes=True, dashboard_address=None,
                                                           silence_logs=logging.ERROR))
                client = stack.enter_context(Client(cluster))
            else:
                client = stack.enter_context(Client(scheduler))
            stack.enter_context(joblib.parallel_config(backend="dask"))
            info = BackendInfo("dask", True, client.scheduler.address, len(client.scheduler_info()["workers"]))
        elif backend == "ray":
            try:
                import ray
                from ray.util.joblib import register_ray
            except ImportError as exc:
                raise ImportError("the ray backend needs Ray: pip install 'ray[default]' (not installed by default; "
                                  "the dask backend is, and is what the tests cover)") from exc
            register_ray()
            if not ray.is_initialized():
                ray.init(address=scheduler)
                stack.callback(ray.shutdown)
            stack.enter_context(joblib.parallel_config(backend="ray"))
            info = BackendInfo("ray", True, scheduler, None)
        else:
            stack.enter_context(joblib.parallel_config(backend=backend))
            info = BackendInfo(backend)
        yield info
