"""Dimensionality reduction of image embeddings (UMAP to 8-d in the paper), written once and cached once.

:func:`reduce_embeddings` fits a reducer; :func:`cached_reduction` is what every study calls: the same reduction,
stored on disk by a hash of its input, so settings that differ only after the reduction (gamma, likelihood
form, performance columns, patch aggregation) share one UMAP fit per embedding and seed.

:func:`import_umap` is the one place umap is imported: it asks numba to keep umap's compiled functions on disk
and computes small data's all-pairs distances without a Python loop (:mod:`.umap_distances`, same numbers);
:func:`compile_umap_in_background` fills that cache in a child process while the main job trains its models.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

__all__ = ["as_matrix", "import_umap", "compile_umap_in_background", "reduce_embeddings", "cached_reduction"]

def as_matrix(a: np.ndarray, name: str, one_d: bool = True) -> np.ndarray:
    """``a`` as a finite float64 (samples x features) matrix (1-d: one feature, unless ``one_d=False``, which
    asks for a 2-d array as scikit-learn's estimators do), or a ValueError naming it.

    scikit-learn's ``check_array`` does the type checks (sparse, complex, object, empty input), so every slicer
    refuses bad input with scikit-learn's messages; the shape and finiteness messages name the argument.
    """
    from sklearn.utils import check_array

    a = check_array(a, dtype=np.float64, ensure_2d=not one_d, allow_nd=True, ensure_all_finite=False,
                    input_name=name)
    if a.ndim == 1:
        a = a[:, None]
    if a.ndim != 2:
        raise ValueError(f"{name} must be 1-d or 2-d (samples x features), got shape {a.shape}")
    if not np.isfinite(a).all():
        bad = np.argwhere(~np.isfinite(a))[0]
        raise ValueError(f"{name} contains NaN or infinite values (first at row {bad[0]}, column {bad[1]}); "
                         "drop or fix those samples first")
    return a


def import_umap():
    """The ``umap`` module, its numba functions compiled once per machine instead of once per process.

    umap-learn compiles its numba kernels on first use in every process and does not cache them (only
    pynndescent's are declared ``cache=True``): about 5.6 s before the first fit of a 100-image UMAP on a 2-core
    AMD EPYC, paid again by every notebook kernel, joblib worker and ``seg4seg audit``. Caching them is numba's
    own mechanism (``Dispatcher.enable_caching``, what ``cache=True`` does); the cache sits in umap's
    ``__pycache__`` (or ``NUMBA_CACHE_DIR``), is keyed by the function's source and the pinned numba target
    (:mod:`seg4seg_utils.kernels`), and holds the same machine code a fresh compile gives, so no number changes
    (``tests/test_reproducible.py`` checks a UMAP fit against its reference digest).
    """
    import umap  # the first import in a fresh environment compiles pynndescent's cached kernels (~20 s, once)
    from numba.core.dispatcher import Dispatcher

    for name, module in list(sys.modules.items()):
        if module is not None and (name == "umap" or name.startswith("umap.")):
            for obj in list(vars(module).values()):
                if isinstance(obj, Dispatcher) and not obj.overloads:  # compiled ones are left as they are
                    obj.enable_caching()
    from seg4seg_utils.discovery import umap_distances

    umap_distances.install(umap)  # small data's all-pairs distances in numba, not a Python loop: same numbers
    return umap


def _umap_kernels_cached() -> bool:
    """Whether umap's numba kernels are on disk already (numba's index files in umap's ``__pycache__``)."""
    import importlib.util

    if os.environ.get("NUMBA_CACHE_DIR"):  # a cache elsewhere: not looked for, the child then only loads it
        return False
    spec = importlib.util.find_spec("umap")
    folders = spec.submodule_search_locations if spec is not None else None
    return bool(folders) and any(Path(folders[0], "__pycache__").glob("umap_.*.nbi"))


def compile_umap_in_background() -> subprocess.Popen | None:
    """Start a child process that compiles and caches umap's numba kernels (one tiny fit); None when cached.

    Why: in a fresh environment the first UMAP of every process compiles them (pynndescent's at import, umap's at
    the first fit: about 20 s of one core on a 2-core AMD EPYC), and the detection stage's two joblib workers
    used to compile them side by side, twice. Started before training, the compile runs beside it, once, and
    the workers load the result (:func:`import_umap`). The caller waits for it before its first UMAP; a failed
    child only means that the workers compile as before (the cache holds the code a fresh compile gives)."""
    if _umap_kernels_cached():
        return None
    code = "from seg4seg_utils.discovery.reduce import compile_umap; compile_umap()"
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def compile_umap() -> None:
    """Compile (or load) and cache the kernels a UMAP fit uses, with a 60-point fit (what the child above runs)."""
    X = np.random.default_rng(0).normal(size=(60, 32))
    reduce_embeddings(X, "umap", 8, 0)


def reduce_embeddings(X: np.ndarray, method: str | None = "umap", n_components: int = 8,
                      random_state: int | None = 0, n_neighbors: int = 15, min_dist: float = 0.1):
    """Fit a reducer (UMAP, PCA or none) and return (reducer or None, reduced float64 array)."""
    X = as_matrix(X, "embeddings")
    if method is None or method == "none" or X.shape[1] <= n_components:
        return None, X
    if method == "umap":
        umap = import_umap()  # imported lazily: umap is slow to import
        reducer = umap.UMAP(n_components=n_components, n_neighbors=min(n_neighbors, len(X) - 1),
                            min_dist=min_dist, random_state=random_state,
                            n_jobs=1 if random_state is not None else -1)
    elif method == "pca":
        from sklearn.decomposition import PCA

        reducer = PCA(n_components=n_components, random_state=random_state)
    else:
        raise ValueError(f"reduce must be 'umap', 'pca' or None, got {method!r}")
    return reducer, np.asarray(reducer.fit_transform(X), dtype=np.float64)


def cached_reduction(X: np.ndarray, method: str | None, n_components: int, seed: int,
                     cache_dir: str | os.PathLike | None) -> np.ndarray:
    """UMAP/PCA of ``X``, cached on disk by content hash: settings that differ only after the reduction
    (gamma, likelihood form, performance columns) share one UMAP fit per embedding and seed. The key names
    the CPU numerics too (numpy's SIMD level moves UMAP: see :mod:`.kernels`)."""
    from seg4seg_utils.kernels import kernel_key

    if cache_dir is None or method in (None, "none"):
        return reduce_embeddings(X, method, n_components, seed)[1]
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
