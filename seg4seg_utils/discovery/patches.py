"""Patch-level slice discovery for pixel-level shortcuts (issue 6, item 1).

Why: SEG4SEG embeds and slices whole images. A *pixel-level* shortcut such as case B (a random half-size crop
resized back, so the image is zoomed in, blurrier and loses the dermatoscope's dark corners) changes every
small region of the image a little, while a whole-image embedding is dominated by the lesion and the global
layout; at 5 % prevalence the 10 cropped test images do not form their own image-level slice. Here every test
image is cut into a fixed ``grid x grid`` of non-overlapping patches; each patch gets its own embedding (the
same packaged EfficientNet-Lite0, or CLIP, applied to the patch resized to the embedder's input) and its own
performance (pixel accuracy, Dice or sensitivity of the saved prediction inside the patch); the SEG4SEG
mixture (:class:`~seg4seg_utils.discovery.slicer.SliceFinder`) then slices the *patches*.

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
:func:`~seg4seg_utils.discovery.protocol.evaluate_slices` on image Dice and the image's hidden attribute (purity > 0.8,
bottom 40 %, size >= 2 %). Aggregation to *regions*: :func:`region_map` is a (grid x grid) heatmap of where a
group's per-patch errors concentrate, :meth:`PatchSliceFinder.slice_region_map` where a patch slice lives.

Measured on the cpu-preset phantoms (notebook 09, 5 slicer seeds): case B is detected at 5 %, 10 % and 20 % in
every seed at patch level versus 0 / 5 / 5 seeds at image level. The controls there matter for reading it:
the same patch slicing with gamma = 0 detects as well (what separates cropped images is patch-scale appearance,
not the per-patch performance term), and averaging the patch embeddings per image before image-level slicing
(``aggregate="pooled"`` in :func:`seg4seg_utils.studies.patch_study.run_patch_item`) reaches 3 of 5 seeds at 5 %.

Patch embeddings are cached on disk exactly like :func:`seg4seg_utils.discovery.embed.embed_dataset` caches image
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

from seg4seg_utils.discovery.reduce import reduce_embeddings
from seg4seg_utils.discovery.slicer import BaseSlicer, SliceFinder, resolve_performance

if TYPE_CHECKING:  # pragma: no cover
    from seg4seg_utils.data.records import SampleTable
    from seg4seg_utils.discovery.embed import Embedder
    from seg4seg_utils.model.train import Run

__all__ = ["PATCH_METRICS", "AGGREGATIONS", "patch_bounds", "split_patches", "assemble_patches", "patch_metrics",
           "PatchData", "embed_patches", "patch_dataset", "aggregate_patches", "PatchSliceFinder", "region_map"]

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

    from seg4seg_utils.data.records import config_hash
    from seg4seg_utils.discovery.embed import MEMO_ROUND, load_cache, slug, stack_and_cache
    from seg4seg_utils.discovery.embedding_memo import EmbeddingMemo, embed_batches

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
        stem = (f"{slug(Path(table.root).name)}_{split}_patches{grid}x{grid}_{slug(embedder.key_name)}"
                f"_{config_hash(key)}")
        npy, sidecar = cache / f"{stem}.npy", cache / f"{stem}.json"
        X, why = load_cache(npy, sidecar, key, pids, embedder.dim)
        if X is not None:
            meta = json.loads(sidecar.read_text())
            return ids, X.reshape(len(ids), grid * grid, -1), key, npy, True, float(meta.get("seconds", 0.0))
        if why != "absent":
            print(f"[seg4seg] patch embedding cache {npy.name} not reused ({why}); rebuilding it")
    t0 = time.perf_counter()
    chunks = []
    per_batch = max(1, batch_size // (grid * grid))  # images per forward pass
    # patches of images seen at another prevalence are read back, not embedded again (embedding_memo)
    memo = EmbeddingMemo(Path(cache_dir) / "images", embedder) if cache_dir is not None else None
    bar = tqdm(total=len(ids), desc=f"embed {grid}x{grid} patches", unit="img", disable=not progress, leave=False)
    try:
        for start in range(0, len(ids), per_batch * MEMO_ROUND):
            stop = min(start + per_batch * MEMO_ROUND, len(ids))
            batches = [[patch for i in range(b, min(b + per_batch, stop)) for patch in split_patches(sub.image(i), grid)]
                       for b in range(start, stop, per_batch)]
            chunks += embed_batches(embedder, batches, memo)
            bar.update(stop - start)
    finally:
        bar.close()
    X, seconds = stack_and_cache(chunks, pids, embedder, t0, npy, sidecar, key)
    return ids, X.reshape(len(ids), grid * grid, -1), key, npy, False, seconds


def patch_dataset(table: "SampleTable", run: "Run", embedder: "Embedder", grid: int = 4, split: str = "test",
                  cache_dir: str | os.PathLike | None = "cache/embeddings", progress: bool = True) -> PatchData:
    """Patch embeddings (cached) and per-patch metrics of a trained run's saved test predictions."""
    from seg4seg_utils.data.records import read_mask
    from seg4seg_utils.discovery.embed import prediction_paths

    ids, X, key, path, cached, seconds = embed_patches(table, embedder, grid, split, cache_dir, progress=progress)
    preds = prediction_paths(run, ids)
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
class PatchSliceFinder(BaseSlicer):
    """SEG4SEG on patches, aggregated back to images (scikit-learn conventions; module docstring for the rule).

    ``fit(X, performance, reduced=None)`` takes patch embeddings ``X`` (n_images, n_patches, d) and per-patch
    scores (n_images, n_patches) in [0, 1] (higher = better), reduces the n_images * n_patches embeddings
    (UMAP, 8-d, unless ``reduced`` - an already reduced (n_images * n_patches, c) array, e.g. from the cache in
    :func:`seg4seg_utils.discovery.reduce.cached_reduction` - is given), optionally appends the patch position
    (``position=True``: standardised row and column, so slices can be position-specific) and fits
    :class:`~seg4seg_utils.discovery.slicer.SliceFinder` with ``gamma`` on the per-patch scores.

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

    def fit(self, X: np.ndarray, y: np.ndarray | None = None, *, performance: np.ndarray | None = None,
            reduced: np.ndarray | None = None) -> "PatchSliceFinder":
        """Slice the patches, then aggregate to images; returns self. Per-patch performance comes as ``y`` or
        ``performance=``; ``reduced``: the already reduced patch embeddings (see the class docstring)."""
        return self._fit(X, resolve_performance(y, performance), reduced)

    def _fit(self, X: np.ndarray, performance: np.ndarray | None,
             reduced: np.ndarray | None = None) -> "PatchSliceFinder":
        if performance is None:
            raise ValueError("PatchSliceFinder needs per-patch performance (n_images, n_patches): pass it as y")
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


