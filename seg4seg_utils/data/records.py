"""The one on-disk record format every dataset uses, with validation, atomic writing and splits.

A dataset is a folder::

    <root>/
      samples.csv     one row per sample: id, split, image, mask, source, then attribute columns
      dataset.json    provenance: kind, modality, the config that made it and its hash, counts
      images/ masks/  PNG files written by this dataset (paths in samples.csv are relative to <root>;
                      an injected dataset points at its source dataset's files for untouched samples)

Masks are single-channel PNGs: binary masks hold {0, 255} (or {0, 1}); multi-class masks hold class
indices and say so with ``"mask_kind": "multiclass"`` in dataset.json.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import pandas as pd
from PIL import Image

__all__ = [
    "SPLITS", "REQUIRED_COLUMNS", "TABLE_FILE", "META_FILE", "DatasetError", "SampleTable",
    "read_dataset", "validate_dataset", "DatasetWriter", "build_dataset", "config_hash",
    "read_image", "read_mask", "write_png", "assign_splits",
]

SPLITS: tuple[str, ...] = ("train", "val", "test")
REQUIRED_COLUMNS: tuple[str, ...] = ("id", "split", "image", "mask", "source")
TABLE_FILE = "samples.csv"
META_FILE = "dataset.json"
FORMAT_VERSION = 1


class DatasetError(ValueError):
    """A dataset on disk is missing, malformed or inconsistent; the message says which file and what to do."""


# --------------------------------------------------------------------------------------------- pixels
def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image as uint8, HxW (grayscale) or HxWx3 (RGB); alpha and palettes are dropped."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: image file is missing. Check the path in samples.csv or re-run data preparation.")
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("L", "RGB"):
                arr = np.asarray(im)
            elif im.mode in ("I;16", "I", "F"):
                arr = np.asarray(im, dtype=np.float64)
                lo, hi = float(arr.min()), float(arr.max())
                arr = ((arr - lo) / (hi - lo if hi > lo else 1.0) * 255).round().astype(np.uint8)
            elif im.mode in ("LA",):
                arr = np.asarray(im.convert("L"))
            else:
                arr = np.asarray(im.convert("RGB"))
    except (OSError, SyntaxError, ValueError) as exc:
        raise DatasetError(f"{path}: cannot be read as an image ({exc}). Replace the file or remove its row.") from exc
    return np.ascontiguousarray(arr, dtype=np.uint8)


def read_mask(path: str | os.PathLike, kind: str = "binary") -> np.ndarray:
    """Read a mask: ``binary`` -> bool HxW (fails on any value outside {0,1} or {0,255}); ``multiclass`` -> uint8 labels."""
    path = Path(path)
    arr = read_image(path)
    if arr.ndim == 3:
        if not (np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 0], arr[..., 2])):
            raise DatasetError(f"{path}: mask has colour channels that differ; masks must be single-channel. "
                               "Convert it to grayscale labels first (data_prep does this for supported datasets).")
        arr = arr[..., 0]
    if kind == "multiclass":
        return arr
    values = np.unique(arr)
    if set(values.tolist()) <= {0, 255}:
        return arr == 255
    if set(values.tolist()) <= {0, 1}:
        return arr == 1
    shown = ", ".join(str(v) for v in values[:8]) + (" ..." if len(values) > 8 else "")
    raise DatasetError(f"{path}: mask is not binary ({len(values)} distinct values: {shown}). Binary masks must hold "
                       "only 0/255 or 0/1; threshold it (e.g. >127) when converting, and never store masks as JPEG.")


def write_png(array: np.ndarray, path: str | os.PathLike) -> None:
    """Write a uint8/bool array as PNG (bool masks become 0/255)."""
    arr = np.asarray(array)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    if arr.dtype != np.uint8:
        raise TypeError(f"write_png expects uint8 or bool, got {arr.dtype}")
    Image.fromarray(arr).save(path, compress_level=1)  # fast: PNGs are rewritten rarely, read often


# ------------------------------------------------------------------------------------------ the table
@dataclass
class SampleTable:
    """A dataset in memory: its folder, its per-sample table and its provenance."""

    root: Path
    df: pd.DataFrame
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.df)

    @property
    def mask_kind(self) -> str:
        return str(self.meta.get("mask_kind", "binary"))

    @property
    def attribute_columns(self) -> list[str]:
        """Every column beyond the required ones (e.g. caliper, cropped, annotation_style, quality, failure)."""
        return [c for c in self.df.columns if c not in REQUIRED_COLUMNS]

    def split(self, name: str) -> "SampleTable":
        """The rows of one split; an empty split is an error, not an empty result."""
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; expected one of {SPLITS}")
        sub = self.df[self.df["split"] == name].reset_index(drop=True)
        if sub.empty:
            raise DatasetError(f"{self.root / TABLE_FILE}: split {name!r} is empty. Assign some samples to it "
                               "(see seg4seg_utils.data.records.assign_splits) or re-run data preparation.")
        return SampleTable(self.root, sub, self.meta)

    def path(self, value: str) -> Path:
        """Resolve a path stored in the table (relative to the dataset root, or absolute)."""
        p = Path(value)
        return p if p.is_absolute() else Path(os.path.normpath(self.root / p))

    def image(self, i: int) -> np.ndarray:
        """The i-th sample's image (row position, not id)."""
        return read_image(self.path(self.df["image"].iat[i]))

    def mask(self, i: int) -> np.ndarray:
        """The i-th sample's mask (bool for binary datasets, uint8 labels for multi-class)."""
        return read_mask(self.path(self.df["mask"].iat[i]), self.mask_kind)

    def __iter__(self) -> Iterator[tuple[dict[str, Any], np.ndarray, np.ndarray]]:
        """Yield (row as dict, image, mask) for every sample, in table order."""
        for i, row in enumerate(self.df.to_dict("records")):
            yield row, self.image(i), self.mask(i)


def _check_table(df: pd.DataFrame, where: Path) -> None:
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise DatasetError(f"{where}: missing column(s) {missing}; a samples table needs {list(REQUIRED_COLUMNS)}.")
    if df.empty:
        raise DatasetError(f"{where}: the table has no rows.")
    for col in ("id", "image", "mask"):
        if df[col].isna().any():
            rows = df.index[df[col].isna()].tolist()[:5]
            raise DatasetError(f"{where}: column {col!r} is empty in row(s) {rows}.")
    dup = df["id"][df["id"].duplicated()].unique().tolist()
    if dup:
        raise DatasetError(f"{where}: duplicate sample id(s) {dup[:5]}; every sample appears once "
                           "(an injected dataset never holds both versions of one sample).")
    bad = sorted(set(df["split"].astype(str)) - set(SPLITS))
    if bad:
        raise DatasetError(f"{where}: unknown split value(s) {bad}; use only {list(SPLITS)}.")


def read_dataset(root: str | os.PathLike, validate: str = "files", require_splits: Sequence[str] = SPLITS) -> SampleTable:
    """Read a dataset folder; ``validate`` is ``"none"``, ``"files"`` (exist, sizes match) or ``"full"`` (decode every mask)."""
    root = Path(root)
    table_path = root / TABLE_FILE
    if not table_path.is_file():
        hint = ("it holds no dataset yet" if root.is_dir() else "the folder does not exist")
        raise DatasetError(f"{table_path}: not found ({hint}). Create the dataset with `python -m seg4seg_utils run` "
                           "(phantoms) or `python -m data_prep ...` (real data).")
    try:
        # only empty cells are missing: attribute strings such as "NA" or "None" stay strings
        df = pd.read_csv(table_path, dtype={"id": str, "split": str, "image": str, "mask": str, "source": str},
                         keep_default_na=False, na_values=[""])
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{table_path}: cannot be parsed as CSV ({exc}).") from exc
    meta: dict[str, Any] = {}
    meta_path = root / META_FILE
    if meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text())
        except json.JSONDecodeError as exc:
            raise DatasetError(f"{meta_path}: invalid JSON ({exc}).") from exc
    _check_table(df, table_path)
    table = SampleTable(root, df, meta)
    for name in require_splits:
        table.split(name)  # raises on an empty split
    if validate != "none":
        validate_dataset(table, level=validate)
    return table


def validate_dataset(table: SampleTable, level: str = "full") -> None:
    """Check every file of a dataset: exists, decodes (``full``), image and mask sizes agree, masks binary."""
    if level not in ("files", "full"):
        raise ValueError(f"validate level must be 'files' or 'full', got {level!r}")
    _check_table(table.df, table.root / TABLE_FILE)
    for sid, img_rel, mask_rel in table.df[["id", "image", "mask"]].itertuples(index=False):
        img_path, mask_path = table.path(img_rel), table.path(mask_rel)
        for p, what in ((img_path, "image"), (mask_path, "mask")):
            if not p.is_file():
                raise DatasetError(f"{p}: {what} of sample {sid!r} is missing. Restore the file, fix its path in "
                                   f"{table.root / TABLE_FILE}, or regenerate the dataset.")
        if level == "full":
            img = read_image(img_path)
            mask = read_mask(mask_path, table.mask_kind)
            img_hw, mask_hw = img.shape[:2], mask.shape
        else:
            img_hw, mask_hw = _header_size(img_path), _header_size(mask_path)
        if tuple(img_hw) != tuple(mask_hw):
            raise DatasetError(f"{mask_path}: mask of sample {sid!r} is {mask_hw[1]}x{mask_hw[0]} (WxH) but its image "
                               f"{img_path.name} is {img_hw[1]}x{img_hw[0]}; they must have the same size.")


def _header_size(path: Path) -> tuple[int, int]:
    try:
        with Image.open(path) as im:
            w, h = im.size
    except (OSError, SyntaxError) as exc:
        raise DatasetError(f"{path}: cannot be read as an image ({exc}). Replace the file or remove its row.") from exc
    return h, w


# ------------------------------------------------------------------------------------------- writing
def config_hash(config: dict[str, Any]) -> str:
    """A short, stable hash of a JSON-serialisable config (key order does not matter)."""
    blob = json.dumps(config, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


class DatasetWriter:
    """Collects samples into a staging folder beside ``final_root``; :func:`build_dataset` renames it into place."""

    def __init__(self, staging: Path, final_root: Path, mask_kind: str = "binary"):
        self.staging, self.final_root, self.mask_kind = staging, final_root, mask_kind
        (staging / "images").mkdir(parents=True, exist_ok=True)
        (staging / "masks").mkdir(parents=True, exist_ok=True)
        self.rows: list[dict[str, Any]] = []
        self._ids: set[str] = set()

    def _store(self, sid: str, value: np.ndarray | str | os.PathLike, folder: str) -> str:
        if isinstance(value, np.ndarray):
            write_png(value, self.staging / folder / f"{sid}.png")
            return f"{folder}/{sid}.png"
        # an existing file (a raw download or a source dataset's file): reference it, never copy or modify it
        src = Path(os.path.abspath(value))  # abspath, not resolve: keep the user's symlinked folder names
        if not src.is_file():
            raise DatasetError(f"{src}: referenced {folder[:-1]} of sample {sid!r} does not exist.")
        try:
            return Path(os.path.relpath(src, os.path.abspath(self.final_root))).as_posix()
        except ValueError:  # different drives on Windows
            return src.as_posix()

    def add(self, sid: str, split: str, image: np.ndarray | str | os.PathLike, mask: np.ndarray | str | os.PathLike,
            source: str, **attributes: Any) -> None:
        """Add one sample: arrays are written as PNG, paths are referenced in place."""
        sid = str(sid)
        if sid in self._ids:
            raise DatasetError(f"sample id {sid!r} added twice to {self.final_root}")
        if not sid or any(c in sid for c in '/\\:*?"<>|'):
            raise DatasetError(f"sample id {sid!r} is not usable as a file name")
        if split not in SPLITS:
            raise DatasetError(f"sample {sid!r}: split {split!r} is not one of {SPLITS}")
        self._ids.add(sid)
        self.rows.append({"id": sid, "split": split, "image": self._store(sid, image, "images"),
                          "mask": self._store(sid, mask, "masks"), "source": source, **attributes})

    def finish(self, meta: dict[str, Any]) -> pd.DataFrame:
        """Write samples.csv and dataset.json into the staging folder."""
        if not self.rows:
            raise DatasetError(f"{self.final_root}: no samples were added; nothing to write.")
        df = pd.DataFrame(self.rows)
        df.to_csv(self.staging / TABLE_FILE, index=False)
        counts = df["split"].value_counts().reindex(list(SPLITS), fill_value=0)
        full_meta = {"format_version": FORMAT_VERSION, "mask_kind": self.mask_kind, **meta,
                     "n_samples": int(len(df)), "split_counts": {k: int(v) for k, v in counts.items()}}
        (self.staging / META_FILE).write_text(json.dumps(full_meta, indent=2, default=str) + "\n")
        return df


def build_dataset(root: str | os.PathLike, config: dict[str, Any], build: Callable[[DatasetWriter], dict[str, Any] | None],
                  *, meta: dict[str, Any] | None = None, mask_kind: str = "binary", validate: str = "files") -> SampleTable:
    """Build a dataset atomically, or reuse it when ``root`` already holds one made from the same ``config``.

    ``build(writer)`` adds the samples and may return extra metadata. Nothing is written at ``root``
    until it succeeded (staging folder + rename); a different dataset already at ``root`` is never
    overwritten: that is an error telling the user to pick another folder or delete the old one.
    """
    root = Path(root)
    digest = config_hash(config)
    if root.exists() and not root.is_dir():
        raise DatasetError(f"{root}: is a file, not a folder. Choose a folder path for the dataset.")
    if (root / META_FILE).is_file() or root.exists() and any(root.iterdir()):
        existing = {}
        try:
            existing = json.loads((root / META_FILE).read_text())
        except (OSError, json.JSONDecodeError):
            pass
        if existing.get("config_hash") == digest:
            return read_dataset(root, validate=validate, require_splits=())
        raise DatasetError(f"{root}: already holds a different dataset (config hash {existing.get('config_hash')!r}, "
                           f"wanted {digest!r}). Choose another output folder or delete that one; it is never overwritten.")
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
    try:
        writer = DatasetWriter(staging, root, mask_kind=mask_kind)
        extra = build(writer) or {}
        writer.finish({**(meta or {}), **extra, "config": config, "config_hash": digest})
        os.replace(staging, root)  # atomic; also replaces an existing *empty* folder
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return read_dataset(root, validate="none", require_splits=())


# -------------------------------------------------------------------------------------------- splits
def assign_splits(ids: Iterable[str], fractions: Sequence[float] = (0.64, 0.16, 0.20), seed: int = 0) -> list[str]:
    """Deterministically assign ids to train/val/test in the given fractions (paper: 64/16/20).

    Counts are floor(n*f) for train and val, the rest to test; the order is a seeded permutation of
    the sorted ids, so the result does not depend on the order ids are listed in.
    """
    ids = [str(i) for i in ids]
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-9:
        raise ValueError(f"fractions must be three non-negative numbers summing to 1, got {fractions}")
    n = len(ids)
    n_train, n_val = int(n * fractions[0]), int(n * fractions[1])
    order = np.random.default_rng(seed).permutation(n)
    ranked = sorted(range(n), key=lambda i: ids[i])
    labels = [""] * n
    for rank, pos in enumerate(order):
        idx = ranked[pos]
        labels[idx] = "train" if rank < n_train else "val" if rank < n_train + n_val else "test"
    return labels
