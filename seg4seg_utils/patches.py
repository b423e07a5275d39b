"""Patch-level slice discovery for pixel-level shortcuts (issue 6, item 1).

Why: SEG4SEG embeds and slices whole images. A *pixel-level* shortcut such as case B (a random half-size crop
resized back, so the image is zoomed in, blurrier and loses the dermatoscope's dark corners) changes every
small region of the image a little, while a whole-image embedding is dominated by the lesion and the global
layout; at 5 % prevalence the 10 cropped test images do not form their own image-level slice. Here every test
image is cut into a fixed ``grid x grid`` of non-overlapping patches; each patch gets its own embedding (the
same packaged EfficientNet-Lite0, or CLIP, applied to the patch resized to the embedder's input) and its own
performance (pixel accuracy, Dice or sensitivity of the saved prediction inside the patch); the SEG4SEG
mixture (:class:`~seg4seg_utils.slicer.SliceFinder`) then slices the *patches*.

Aggregation back to images (the rule, documented once here and used everywhere):

* A patch's slice responsibilities ``r_pk`` (rows sum to 1) are averaged over the image's patches:
  ``a_ik = mean_p r_pk`` = the expected share of image i's area that falls in patch slice k (a bag of patch
  slices, like a bag of visual words).
* ``aggregate="share"``: image i joins ``argmax_k a_ik``, the patch slice covering most of it (majority vote).
* ``aggregate="lift"`` (default): image i joins ``argmax_k a_ik / (mean_j a_jk + 1/n_patches)``: the patch slice
  that is most *over-represented* in it relative to an average image. A slice that holds most patches of every
  image (plain skin) no longer swallows all images, and a rare slice (zoomed, blurred skin) claims the images
  whose patches populate it. The additive ``1/n_patches`` (one patch's worth of area) keeps a single stray
  patch from pulling an image into a tiny slice: with it, a slice must hold well over one patch of the image
  before its lift beats the image's common slices.

The image-level groups ``image_labels_`` (K = the number of patch slices, one hard group per image) and the
normalised ``image_proba_`` are judged with exactly the image-level protocol,
:func:`~seg4seg_utils.protocol.evaluate_slices` on image Dice and the image's hidden attribute (purity > 0.8,
bottom 40 %, size >= 2 %). Aggregation to *regions*: :func:`region_map` is a (grid x grid) heatmap of where a
group's per-patch errors concentrate, :meth:`PatchSliceFinder.slice_region_map` where a patch slice lives.

Measured on the cpu-preset phantoms (notebook 09, 5 slicer seeds): case B is detected at 5 %, 10 % and 20 % in
every seed at patch level versus 0 / 5 / 5 seeds at image level. The controls there matter for reading it:
the same patch slicing with gamma = 0 detects as well (what separates cropped images is patch-scale appearance,
not the per-patch performance term), and averaging the patch embeddings per image before image-level slicing
(``aggregate="pooled"`` in :func:`run_patch_item`) reaches 3 of 5 seeds at 5 %.

Patch embeddings are cached on disk exactly like :func:`seg4seg_utils.embed.embed_dataset` caches image
embeddings (keyed by embedder, weights, grid, dataset and split; checksum; atomic writes).
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import pandas as pd

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

    from .data import SampleTable
    from .embed import Embedder
    from .train import Run

__all__ = ["PATCH_METRICS", "AGGREGATIONS", "patch_bounds", "split_patches", "assemble_patches", "patch_metrics",
           "PatchData", "embed_patches", "patch_dataset", "aggregate_patches", "PatchSliceFinder", "region_map",
           "PatchBenchmarkItem", "run_patch_item", "patch_benchmark", "level_names", "detection_summary",
           "patch_grid_figure", "region_heatmap_figure", "patch_scatter_figure", "detection_bars_figure"]

PATCH_METRICS: tuple[str, ...] = ("accuracy", "dice", "sensitivity")
AGGREGATIONS: tuple[str, ...] = ("lift", "share")
PATCH_CACHE_FORMAT = 1  # bump when the cached patch arrays' meaning changes


# --------------------------------------------------------------------------------------------- patching
def patch_bounds(size: int, grid: int) -> np.ndarray:
    """The ``grid + 1`` cut positions along one axis of ``size`` pixels: ``round(linspace(0, size, grid + 1))``.

    Patches tile the axis exactly (no gap, no overlap) also when ``size`` is not a multiple of ``grid``;
    their widths then differ by at most one pixel.
    """
    if int(grid) != grid or grid < 1:
        raise ValueError(f"grid must be a positive integer, got {grid}")
    if int(size) != size or size < grid:
        raise ValueError(f"an axis of {size} px cannot be cut into {grid} patches; use a smaller grid")
    return np.round(np.linspace(0, int(size), int(grid) + 1)).astype(int)


def split_patches(array: np.ndarray, grid: int) -> list[np.ndarray]:
    """Cut an image or mask (H x W[, C]) into ``grid * grid`` patches, row-major (patch p = row p // grid, col p % grid)."""
    array = np.asarray(array)
    if array.ndim not in (2, 3):
        raise ValueError(f"split_patches takes one H x W or H x W x C array, got shape {array.shape}")
    rows, cols = patch_bounds(array.shape[0], grid), patch_bounds(array.shape[1], grid)
    return [array[rows[r]:rows[r + 1], cols[c]:cols[c + 1]] for r in range(grid) for c in range(grid)]


def assemble_patches(patches: Sequence[np.ndarray], grid: int) -> np.ndarray:
    """Inverse of :func:`split_patches`: put ``grid * grid`` row-major patches back into one array."""
    if len(patches) != grid * grid:
        raise ValueError(f"{len(patches)} patches cannot fill a {grid} x {grid} grid ({grid * grid} needed)")
    rows = [np.concatenate(patches[r * grid:(r + 1) * grid], axis=1) for r in range(grid)]
    return np.concatenate(rows, axis=0)


def patch_metrics(gt: np.ndarray, pred: np.ndarray, grid: int) -> pd.DataFrame:
    """Per-patch confusion counts and scores of a binary prediction against the ground truth.

    Columns: ``patch`` (row-major index), ``row``, ``col``, ``tp``, ``fp``, ``fn``, ``tn``, ``fg`` (ground-truth
    foreground pixels) and the scores in :data:`PATCH_METRICS` (higher is better, all in [0, 1]):

    * ``accuracy`` = (tp + tn) / pixels: defined for every patch, so plain-skin patches with false positives and
      lesion patches with misses are on one scale (the default performance of :class:`PatchSliceFinder`);
    * ``dice`` = 2 tp / (2 tp + fp + fn), 1 when the patch has no foreground in either mask;
    * ``sensitivity`` = 1 - false-negative rate = tp / (tp + fn), 1 when the patch has no ground-truth foreground.
    """
    gt, pred = np.asarray(gt) > 0, np.asarray(pred) > 0
    if gt.ndim != 2 or gt.shape != pred.shape:
        raise ValueError(f"ground truth {gt.shape} and prediction {pred.shape} must be 2-d masks of the same size")
    rows = []
    for p, (g, q) in enumerate(zip(split_patches(gt, grid), split_patches(pred, grid))):
        tp, fp = int(np.count_nonzero(g & q)), int(np.count_nonzero(~g & q))
        fn, tn = int(np.count_nonzero(g & ~q)), int(np.count_nonzero(~g & ~q))
        rows.append({"patch": p, "row": p // grid, "col": p % grid, "tp": tp, "fp": fp, "fn": fn, "tn": tn,
                     "fg": tp + fn, "accuracy": (tp + tn) / g.size,
                     "dice": 1.0 if tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn),
                     "sensitivity": 1.0 if tp + fn == 0 else tp / (tp + fn)})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------- patch data
@dataclass
class PatchData:
    """Patches of one split: ``X[i, p]`` embeds patch p of image ``ids[i]``; ``metrics`` has one row per image.

    ``patch_perf`` is a dict metric name -> (n_images, grid * grid) array; ``metrics`` is the run's per-image
    table (Dice, hidden attributes, prediction path) in ``ids`` order.
    """

    ids: list[str]
    grid: int
    X: np.ndarray
    patch_perf: dict[str, np.ndarray]
    metrics: pd.DataFrame
    embedder_name: str
    key: dict[str, Any] = field(default_factory=dict)
    cache_path: Path | None = None
    from_cache: bool = False
    seconds_embed: float = 0.0

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def n_patches(self) -> int:
        return self.grid * self.grid


def _patch_ids(ids: Sequence[str], grid: int) -> list[str]:
    return [f"{i}#r{p // grid}c{p % grid}" for i in ids for p in range(grid * grid)]


def embed_patches(table: "SampleTable", embedder: "Embedder", grid: int = 4, split: str = "test",
                  cache_dir: str | os.PathLike | None = "cache/embeddings", batch_size: int = 64,
                  progress: bool = True) -> tuple[list[str], np.ndarray, dict[str, Any], Path | None, bool, float]:
    """Embed every patch of one split -> (image ids, float32 (n_images, grid*grid, dim), key, cache file,
    from_cache, seconds). The cache is keyed like ``embed_dataset`` (embedder, weights, dataset hash, split)
    plus the grid, and a cached file is reused only when its key, patch ids, shape and checksum all match."""
    from tqdm.auto import tqdm

    from .data import config_hash
    from .embed import _load_cache, _slug, save_cache

    sub = table.split(split)
    ids = sub.df["id"].astype(str).tolist()
    pids = _patch_ids(ids, grid)
    key: dict[str, Any] = {"format": PATCH_CACHE_FORMAT, "kind": "patches", "grid": int(grid),
                           **embedder.key_fields(), "variant": "x0",
                           "dataset": table.meta.get("config_hash") or str(Path(table.root).resolve()), "split": split}
    npy = sidecar = None
    if cache_dir is not None:
        cache = Path(cache_dir)
        cache.mkdir(parents=True, exist_ok=True)
        stem = (f"{_slug(Path(table.root).name)}_{split}_patches{grid}x{grid}_{_slug(embedder.key_name)}"
                f"_{config_hash(key)}")
        npy, sidecar = cache / f"{stem}.npy", cache / f"{stem}.json"
        X, why = _load_cache(npy, sidecar, key, pids, embedder.dim)
        if X is not None:
            meta = json.loads(sidecar.read_text())
            return ids, X.reshape(len(ids), grid * grid, -1), key, npy, True, float(meta.get("seconds", 0.0))
        if why != "absent":
            print(f"[seg4seg] patch embedding cache {npy.name} not reused ({why}); rebuilding it")
    t0 = time.perf_counter()
    chunks, batch = [], []
    per_batch = max(1, batch_size // (grid * grid))  # images per forward pass
    bar = tqdm(total=len(ids), desc=f"embed {grid}x{grid} patches", unit="img", disable=not progress, leave=False)
    try:
        for i in range(len(ids)):
            batch += split_patches(sub.image(i), grid)
            if (i + 1) % per_batch == 0 or i == len(ids) - 1:
                chunks.append(embedder.embed(batch, batch_size=len(batch)))
                bar.update(len(batch) // (grid * grid))
                batch = []
    finally:
        bar.close()
    X = np.ascontiguousarray(np.concatenate(chunks), dtype=np.float32)
    seconds = time.perf_counter() - t0
    if X.shape != (len(pids), embedder.dim):
        raise RuntimeError(f"{embedder.name}: produced {X.shape}, expected ({len(pids)}, {embedder.dim})")
    if npy is not None:
        save_cache(npy, sidecar, key, pids, X, embedder.name, seconds)
    return ids, X.reshape(len(ids), grid * grid, -1), key, npy, False, seconds


def patch_dataset(table: "SampleTable", run: "Run", embedder: "Embedder", grid: int = 4, split: str = "test",
                  cache_dir: str | os.PathLike | None = "cache/embeddings", progress: bool = True) -> PatchData:
    """Patch embeddings (cached) and per-patch metrics of a trained run's saved test predictions."""
    from .data import read_mask
    from .embed import _prediction_paths

    ids, X, key, path, cached, seconds = embed_patches(table, embedder, grid, split, cache_dir, progress=progress)
    preds = _prediction_paths(run, ids)
    sub = table.split(split)
    perf = {m: np.zeros((len(ids), grid * grid)) for m in PATCH_METRICS}
    for i in range(len(ids)):
        gt, pred = sub.mask(i), read_mask(preds[ids[i]])
        if gt.shape != pred.shape:
            raise ValueError(f"{preds[ids[i]]}: prediction of {ids[i]!r} is {pred.shape[1]}x{pred.shape[0]} but its "
                             f"mask is {gt.shape[1]}x{gt.shape[0]}; predictions must be saved at the image size")
        pm = patch_metrics(gt, pred, grid)
        for m in PATCH_METRICS:
            perf[m][i] = pm[m].to_numpy()
    metrics = run.metrics()
    metrics["id"] = metrics["id"].astype(str)
    metrics = metrics.set_index("id").loc[ids].reset_index()
    return PatchData(ids, int(grid), X, perf, metrics, embedder.name, key, path, cached, seconds)


# --------------------------------------------------------------------------------------- aggregation
def aggregate_patches(patch_proba: np.ndarray, rule: str = "lift") -> tuple[np.ndarray, np.ndarray]:
    """Image-level groups from patch responsibilities (n_images, n_patches, K) -> (labels (n,), proba (n, K)).

    ``share``: proba = mean patch responsibility (the share of the image in each patch slice).
    ``lift``: proba ∝ share / (dataset-mean share + 1 / n_patches), renormalised per image (module docstring).
    Labels are the row-wise argmax (ties: the lower slice id).
    """
    r = np.asarray(patch_proba, dtype=np.float64)
    if r.ndim != 3 or min(r.shape) < 1:
        raise ValueError(f"patch_proba must be (n_images, n_patches, n_slices), got shape {r.shape}")
    if not np.isfinite(r).all() or (r < 0).any():
        raise ValueError("patch_proba must be finite and non-negative")
    share = r.mean(axis=1)
    if rule == "share":
        score = share
    elif rule == "lift":
        score = share / (share.mean(axis=0, keepdims=True) + 1.0 / r.shape[1])
    else:
        raise ValueError(f"unknown aggregation rule {rule!r}; choose one of {AGGREGATIONS}")
    proba = score / np.where(score.sum(axis=1, keepdims=True) > 0, score.sum(axis=1, keepdims=True), 1.0)
    return proba.argmax(axis=1), proba


def region_map(patch_values: np.ndarray, grid: int, members: np.ndarray | None = None,
               reference: np.ndarray | None = None) -> np.ndarray:
    """A (grid x grid) map of a per-patch value (e.g. error = 1 - accuracy), averaged over the ``members`` images
    (bool mask, default all); with ``reference`` (another bool mask) the map is members minus reference, i.e.
    where the group's errors are *excess* errors."""
    v = np.asarray(patch_values, dtype=np.float64)
    if v.ndim != 2 or v.shape[1] != grid * grid:
        raise ValueError(f"patch_values must be (n_images, {grid * grid}) for a {grid} x {grid} grid, got {v.shape}")
    sel = np.ones(len(v), bool) if members is None else np.asarray(members, bool)
    if sel.shape != (len(v),) or not sel.any():
        raise ValueError("members must be a non-empty boolean mask with one entry per image")
    out = v[sel].mean(axis=0)
    if reference is not None:
        ref = np.asarray(reference, bool)
        if ref.shape != (len(v),) or not ref.any():
            raise ValueError("reference must be a non-empty boolean mask with one entry per image")
        out = out - v[ref].mean(axis=0)
    return out.reshape(grid, grid)


# ------------------------------------------------------------------------------------------ estimator
class PatchSliceFinder:
    """SEG4SEG on patches, aggregated back to images (scikit-learn conventions; module docstring for the rule).

    ``fit(X, performance, reduced=None)`` takes patch embeddings ``X`` (n_images, n_patches, d) and per-patch
    scores (n_images, n_patches) in [0, 1] (higher = better), reduces the n_images * n_patches embeddings
    (UMAP, 8-d, unless ``reduced`` - an already reduced (n_images * n_patches, c) array, e.g. from the cache in
    :func:`seg4seg_utils.experiments._reduced` - is given), optionally appends the patch position
    (``position=True``: standardised row and column, so slices can be position-specific) and fits
    :class:`~seg4seg_utils.slicer.SliceFinder` with ``gamma`` on the per-patch scores.

    Fitted attributes: ``slicer_``, ``patch_labels_`` / ``patch_proba_`` (n_images, n_patches[, K]),
    ``image_labels_`` / ``image_proba_`` (n_images[, K]), ``grid_``.
    """

    def __init__(self, n_slices: int = 20, gamma: float = 10.0, aggregate: str = "lift", position: bool = False,
                 reduce: str | None = "umap", n_components: int = 8, random_state: int | None = 0):
        self.n_slices = n_slices
        self.gamma = gamma
        self.aggregate = aggregate
        self.position = position
        self.reduce = reduce
        self.n_components = n_components
        self.random_state = random_state

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """The constructor parameters."""
        return {k: getattr(self, k) for k in ("n_slices", "gamma", "aggregate", "position", "reduce",
                                              "n_components", "random_state")}

    def set_params(self, **params: Any) -> "PatchSliceFinder":
        """Set constructor parameters; unknown names are an error."""
        for k, v in params.items():
            if k not in self.get_params():
                raise ValueError(f"unknown parameter {k!r}; valid: {sorted(self.get_params())}")
            setattr(self, k, v)
        return self

    def __repr__(self) -> str:
        return f"PatchSliceFinder({', '.join(f'{k}={v!r}' for k, v in self.get_params().items())})"

    def _check(self, X: np.ndarray, performance: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
        X = np.asarray(X)
        Y = np.asarray(performance, dtype=np.float64)
        if X.ndim != 3:
            raise ValueError(f"X must be patch embeddings of shape (n_images, n_patches, dim), got {X.shape}; "
                             "patch_dataset(...).X has that shape")
        if Y.shape != X.shape[:2]:
            raise ValueError(f"performance must be (n_images, n_patches) = {X.shape[:2]}, got {Y.shape}")
        grid = int(round(np.sqrt(X.shape[1])))
        if grid * grid != X.shape[1]:
            raise ValueError(f"{X.shape[1]} patches per image is not a square grid")
        if self.aggregate not in AGGREGATIONS:
            raise ValueError(f"unknown aggregation rule {self.aggregate!r}; choose one of {AGGREGATIONS}")
        if X.shape[0] < 2:
            raise ValueError("need at least two images to slice")
        return X, Y, grid

    def fit(self, X: np.ndarray, performance: np.ndarray, reduced: np.ndarray | None = None) -> "PatchSliceFinder":
        """Slice the patches, then aggregate to images; returns self."""
        from .slicer import SliceFinder, reduce_embeddings

        X, Y, grid = self._check(X, performance)
        n, p = Y.shape
        flat = X.reshape(n * p, -1)
        if reduced is None:
            _, Z = reduce_embeddings(flat, self.reduce, self.n_components, self.random_state)
        else:
            Z = np.asarray(reduced, dtype=np.float64)
            if Z.ndim != 2 or len(Z) != n * p:
                raise ValueError(f"reduced must be (n_images * n_patches, c) = ({n * p}, c), got {Z.shape}")
        Z = (Z - Z.mean(0)) / np.where(Z.std(0) > 0, Z.std(0), 1.0)
        if self.position:
            pos = np.tile(np.stack([np.arange(p) // grid, np.arange(p) % grid], 1), (n, 1)).astype(np.float64)
            Z = np.hstack([Z, (pos - pos.mean(0)) / np.where(pos.std(0) > 0, pos.std(0), 1.0)])
        self.slicer_ = SliceFinder(n_slices=self.n_slices, gamma=self.gamma, reduce=None,
                                   random_state=self.random_state).fit(Z, Y.reshape(-1))
        K = self.slicer_.proba_.shape[1]
        self.patch_proba_ = self.slicer_.proba_.reshape(n, p, K)
        self.patch_labels_ = self.slicer_.labels_.reshape(n, p)
        self.image_labels_, self.image_proba_ = aggregate_patches(self.patch_proba_, self.aggregate)
        self.grid_ = grid
        self.embedding_ = Z
        return self

    def slice_region_map(self, k: int, members: np.ndarray | None = None) -> np.ndarray:
        """(grid x grid) share of patches at each position that belong to patch slice ``k`` (over ``members``)."""
        if not hasattr(self, "patch_labels_"):
            raise RuntimeError("this PatchSliceFinder is not fitted yet; call fit(X, performance) first")
        return region_map((self.patch_labels_ == k).astype(float), self.grid_, members)


# ------------------------------------------------------------------------------------------ benchmark
@dataclass(frozen=True)
class PatchBenchmarkItem:
    """One patch-level slicer fit on one trained model's test split (plain values: hashable, cheap to pickle)."""

    case: str
    prevalence: float
    data_seed: int
    slicer_seed: int
    run_root: str
    dataset_root: str
    grid: int = 4
    n_slices: int | None = None      # None: the case's image-level slice count (20 for B)
    gamma: float = 10.0
    aggregate: str = "lift"          # lift | share (PatchSliceFinder) | pooled (baseline, see run_patch_item)
    position: bool = False
    patch_metric: str = "accuracy"

    @property
    def key(self) -> str:
        from dataclasses import asdict

        from .data import config_hash

        return config_hash({**asdict(self), "run_root": Path(self.run_root).name, "kind": "patch-slices"})


def _reduced_patches(data: PatchData, seed: int, cache_dir: str | os.PathLike | None) -> np.ndarray:
    """UMAP-8 of the flattened patch embeddings, cached by content (shared with experiments._reduced)."""
    from .experiments import _reduced

    return _reduced(data.X.reshape(-1, data.X.shape[-1]), "umap", 8, seed, cache_dir)


def run_patch_item(item: PatchBenchmarkItem, data: PatchData,
                   reduced_cache: str | os.PathLike | None = None) -> tuple[dict[str, Any], Any]:
    """Fit one item and judge its image groups with the image-level protocol -> (row, fitted slicer).

    ``aggregate`` "lift"/"share": a :class:`PatchSliceFinder` (patches sliced, then aggregated). "pooled" is a
    baseline that separates *patch features* from *patch slicing*: the image's patch embeddings are averaged into
    one image embedding and the ordinary image-level SliceFinder (UMAP-8, image Dice, ``gamma``) slices images.
    """
    from .experiments import _reduced
    from .inject import CASES
    from .protocol import evaluate_slices
    from .slicer import SliceFinder

    if item.patch_metric not in data.patch_perf:
        raise ValueError(f"unknown patch metric {item.patch_metric!r}; choose one of {sorted(data.patch_perf)}")
    n_slices = item.n_slices or CASES[item.case].n_slices
    dice = data.metrics["dice"].to_numpy(dtype=np.float64)
    attr = data.metrics["failure"].astype(bool).to_numpy()
    t0 = time.perf_counter()
    if item.aggregate == "pooled":
        Z = _reduced(data.X.mean(axis=1), "umap", 8, item.slicer_seed, reduced_cache)
        t1 = time.perf_counter()
        fitted: Any = SliceFinder(n_slices=n_slices, gamma=item.gamma, reduce=None,
                                  random_state=item.slicer_seed).fit(Z, dice)
        labels, proba = fitted.labels_, fitted.proba_
    else:
        Z = _reduced_patches(data, item.slicer_seed, reduced_cache)
        t1 = time.perf_counter()
        fitted = PatchSliceFinder(n_slices=n_slices, gamma=item.gamma, aggregate=item.aggregate,
                                  position=item.position, random_state=item.slicer_seed).fit(
            data.X, data.patch_perf[item.patch_metric], reduced=Z)
        labels, proba = fitted.image_labels_, fitted.image_proba_
    t2 = time.perf_counter()
    report = evaluate_slices(labels, dice, attr, proba=proba, n_slices=n_slices)
    win = report.winning_slice
    row = {"key": item.key, "level": "patch", "case": item.case, "prevalence": item.prevalence,
           "data_seed": item.data_seed, "slicer_seed": item.slicer_seed, "grid": item.grid, "n_slices": n_slices,
           "gamma": item.gamma, "aggregate": item.aggregate, "position": item.position,
           "patch_metric": item.patch_metric, "n_test": len(dice), "embedder": data.embedder_name,
           **report.to_dict(),
           "winning_size": int(report.table.loc[win, "size"]) if win is not None else None,
           "winning_perf": float(report.table.loc[win, "mean_perf"]) if win is not None else None,
           "seconds_reduce": t1 - t0, "seconds_fit": t2 - t1}
    return {k: (v.item() if isinstance(v, np.generic) else v) for k, v in row.items()}, fitted


def patch_benchmark(runs: Sequence[tuple], embedder: "Embedder", results_path: str | os.PathLike,
                    cache_dir: str | os.PathLike | None = "cache/embeddings", slicer_seeds: Sequence[int] = (0, 1, 2, 3, 4),
                    grid: int = 4, settings: Sequence[dict[str, Any]] = ({},), progress: bool = True) -> pd.DataFrame:
    """Patch-level detection benchmark over ``(case, prevalence, data_seed, table, run)`` tuples x slicer seeds
    x ``settings`` (dicts of :class:`PatchBenchmarkItem` fields, e.g. ``{"aggregate": "share"}``).

    Resumable like :func:`seg4seg_utils.experiments.run_benchmark`: one JSON line per finished fit, keyed by a
    hash of the item; finished items are read back, not refitted. Patch embeddings and UMAP reductions are
    cached under ``cache_dir``. Runs in this process (the UMAP of n_images x grid^2 patches dominates).
    """
    from tqdm.auto import tqdm

    from .experiments import _read_rows, open_rows_for_append

    results_path = Path(results_path)
    results_path.parent.mkdir(parents=True, exist_ok=True)
    reduced = Path(cache_dir) / "reduced" if cache_dir is not None else None
    items, data_of = [], {}
    for case, prevalence, data_seed, table, run in runs:
        for st in settings:
            for s in slicer_seeds:
                it = PatchBenchmarkItem(case, float(prevalence), int(data_seed), int(s), str(run.root),
                                        str(table.root), grid=grid, **st)
                items.append(it)
                data_of[it] = (table, run)
    done = {r["key"] for r in _read_rows(results_path)}
    todo = [it for it in items if it.key not in done]
    loaded: dict[tuple[str, str], PatchData] = {}
    with open_rows_for_append(results_path) as fh:
        for it in tqdm(todo, desc="patch slicer fits", disable=not progress):
            k = (it.dataset_root, it.run_root)
            if k not in loaded:
                table, run = data_of[it]
                loaded[k] = patch_dataset(table, run, embedder, grid, cache_dir=cache_dir, progress=progress)
            row, _ = run_patch_item(it, loaded[k], reduced)
            fh.write(json.dumps(row) + "\n")
            fh.flush()
    wanted = {it.key for it in items}
    return pd.DataFrame([r for r in _read_rows(results_path) if r["key"] in wanted])


def level_names(patch_rows: pd.DataFrame) -> list[str]:
    """A readable name per patch-benchmark row: "patch, lift", "patch, share, gamma=0.0", ... (settings that vary
    between the patch-slicing rows are named), and "image, pooled patch features" for the pooled baseline."""
    sliced = patch_rows[patch_rows["aggregate"] != "pooled"]
    varying = [c for c in ("gamma", "position", "patch_metric", "grid", "n_slices") if c in sliced.columns
               and sliced[c].nunique() > 1]
    names = []
    for _, r in patch_rows.iterrows():
        if r["aggregate"] == "pooled":
            names.append("image, pooled patch features")
            continue
        extra = [f"{c}={r[c]}" for c in varying if not (c == "gamma" and r[c] == sliced["gamma"].max())]
        names.append(", ".join(["patch", str(r["aggregate"]), *extra]))
    return names


def detection_summary(patch_rows: pd.DataFrame, image_rows: pd.DataFrame | None = None) -> pd.DataFrame:
    """Detection rate (share of slicer seeds meeting the criterion) per level, case and prevalence, side by side.

    ``image_rows`` are rows of :func:`seg4seg_utils.experiments.run_benchmark` (image-level SEG4SEG); they get
    ``level = "image"``. Patch rows are named by :func:`level_names`. Each rate carries its count ``k``/``n``
    and 95 % Wilson interval (:func:`seg4seg_utils.stats.with_detection_counts`).
    """
    from .stats import with_detection_counts

    p = patch_rows.copy()
    p["level"] = level_names(p)
    frames = [p]
    if image_rows is not None and len(image_rows):
        i = image_rows.copy()
        i["level"] = "image"
        frames.append(i)
    rows = pd.concat(frames, ignore_index=True)
    return with_detection_counts(rows.groupby(["level", "case", "prevalence"])
                                 .agg(detection_rate=("success", "mean"), purity_pass=("purity_pass", "mean"),
                                      max_purity=("max_purity", "mean"), n_seeds=("success", "size")).reset_index())


# -------------------------------------------------------------------------------------------- figures
def patch_grid_figure(image: np.ndarray, gt: np.ndarray, pred: np.ndarray, grid: int = 4,
                      metric: str = "accuracy", title: str | None = None, panel: float = 3.0) -> "Figure":
    """One image cut into its patch grid: contours of ground truth (cyan) and prediction (pink) with each
    patch's error (1 - ``metric``) written in it, beside the same errors as a (grid x grid) heatmap."""
    from matplotlib.figure import Figure

    from .plots import show_sample

    m = patch_metrics(gt, pred, grid)
    err = 1 - m[metric].to_numpy().reshape(grid, grid)
    fig = Figure(figsize=(panel * 2 + 0.8, panel + 0.3), layout="constrained")
    ax, ax2 = fig.subplots(1, 2)
    show_sample(ax, image, np.asarray(gt) > 0, title=title)
    if np.asarray(pred).any():
        ax.contour(np.asarray(pred, float), levels=[0.5], colors=["#ff4081"], linewidths=0.8)
    rows, cols = patch_bounds(image.shape[0], grid), patch_bounds(image.shape[1], grid)
    for r in rows[1:-1]:
        ax.axhline(r - 0.5, color="white", lw=0.8)
    for c in cols[1:-1]:
        ax.axvline(c - 0.5, color="white", lw=0.8)
    for p in range(grid * grid):
        r, c = divmod(p, grid)
        ax.text((cols[c] + cols[c + 1]) / 2, (rows[r] + rows[r + 1]) / 2, f"{err[r, c]:.2f}", ha="center",
                va="center", fontsize=7, color="white", bbox={"facecolor": "black", "alpha": 0.35, "lw": 0, "pad": 1})
    im = ax2.imshow(err, cmap="magma", vmin=0, vmax=max(0.05, float(err.max())))
    ax2.set_xticks(range(grid))
    ax2.set_yticks(range(grid))
    ax2.set_title(f"per-patch error (1 - {metric})", fontsize=9)
    fig.colorbar(im, ax=ax2, shrink=0.8)
    return fig


def patch_scatter_figure(xy: np.ndarray, patch_labels: np.ndarray, image_attribute: np.ndarray,
                         highlight: int | None = None, panel: float = 3.4) -> "Figure":
    """2-d map of all patches: coloured by patch slice, and by the hidden attribute of the image they come from."""
    from matplotlib.figure import Figure

    lab = np.asarray(patch_labels).reshape(-1)
    n, p = np.asarray(patch_labels).shape
    attr = np.repeat(np.asarray(image_attribute, bool), p)
    xy = np.asarray(xy)
    if len(xy) != n * p:
        raise ValueError(f"xy has {len(xy)} rows but there are {n * p} patches")
    fig = Figure(figsize=(panel * 2 + 0.4, panel), layout="constrained")
    a, b = fig.subplots(1, 2)
    a.scatter(xy[:, 0], xy[:, 1], c=lab, cmap="tab20", s=3, lw=0)
    if highlight is not None:
        sel = lab == highlight
        a.scatter(xy[sel, 0], xy[sel, 1], facecolors="none", edgecolors="black", s=12, lw=0.5,
                  label=f"patch slice {highlight}")
        a.legend(fontsize=7, loc="best")
    a.set_title("patch slices", fontsize=9)
    b.scatter(xy[~attr, 0], xy[~attr, 1], color="#b0bec5", s=3, lw=0, label="patches of other images")
    b.scatter(xy[attr, 0], xy[attr, 1], color="#ff4081", s=5, lw=0, label="patches of images with the attribute")
    b.legend(fontsize=7, loc="best", markerscale=3)
    b.set_title("hidden attribute of the patch's image (never seen)", fontsize=9)
    for ax in (a, b):
        ax.set_xticks([])
        ax.set_yticks([])
    return fig


def region_heatmap_figure(maps: dict[str, np.ndarray], panel: float = 2.6, cmap: str = "RdBu_r") -> "Figure":
    """Side-by-side (grid x grid) heatmaps, one per title; a diverging scale centred on 0 (excess vs deficit)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(panel * len(maps) + 0.8, panel + 0.4), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(maps)))
    vmax = max(float(np.abs(m).max()) for m in maps.values()) or 1.0
    for ax, (title, m) in zip(axes, maps.items()):
        im = ax.imshow(m, cmap=cmap, vmin=-vmax, vmax=vmax)
        for (r, c), v in np.ndenumerate(m):
            ax.text(c, r, f"{v:+.2f}", ha="center", va="center", fontsize=7)
        ax.set_xticks(range(m.shape[1]))
        ax.set_yticks(range(m.shape[0]))
        ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=list(axes), shrink=0.8)
    return fig


def detection_bars_figure(summary: pd.DataFrame, case: str = "B", panel: float = 4.0) -> "Figure":
    """Detection rate per prevalence for one case, one bar per level (image-level SEG4SEG vs patch level).

    With :func:`detection_summary`'s ``ci_low``/``ci_high`` columns each bar gets its 95 % Wilson interval
    as an error bar, and its label the count k/n.
    """
    from matplotlib.figure import Figure

    sub = summary[summary["case"] == case]
    pivot = sub.pivot_table(index="prevalence", columns="level", values="detection_rate")
    counted = {"k", "n", "ci_low", "ci_high"} <= set(sub.columns)
    if counted:
        low, high, k, n = (sub.pivot_table(index="prevalence", columns="level", values=v).reindex_like(pivot)
                           for v in ("ci_low", "ci_high", "k", "n"))
    fig = Figure(figsize=(panel + 2.6 + 0.3 * len(pivot.columns), 3.0), layout="constrained")
    ax = fig.subplots()
    width = 0.8 / max(1, len(pivot.columns))
    x = np.arange(len(pivot))
    for j, level in enumerate(pivot.columns):
        vals = pivot[level].to_numpy()
        at = x + (j - (len(pivot.columns) - 1) / 2) * width
        yerr = np.vstack([vals - low[level].to_numpy(), high[level].to_numpy() - vals]) if counted else None
        ax.bar(at, vals, width, label=level, yerr=yerr, capsize=2, error_kw={"lw": 0.7, "ecolor": "0.3"})
        for i, (xi, v) in enumerate(zip(at, vals)):
            if np.isnan(v):  # this level was not run at this prevalence
                continue
            text = f"{v:.1f}" + (f"\n{int(k[level].iat[i])}/{int(n[level].iat[i])}" if counted else "")
            ax.text(xi, (high[level].iat[i] if counted else v) + 0.02, text, ha="center", fontsize=6 if counted else 7)
    ax.axhline(0.8, color="grey", ls="--", lw=0.8)
    ax.set_xticks(x, [f"{p:.0%}" for p in pivot.index])
    ax.set_ylim(0, 1.25 if counted else 1.12)
    ax.set_xlabel("prevalence")
    ax.set_ylabel("detection rate")
    ax.set_title(f"case {case}: share of slicer seeds meeting the criterion", fontsize=9)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return fig
