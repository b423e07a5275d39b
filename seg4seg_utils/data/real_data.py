"""Converters from the official real-dataset downloads (HC18, ISIC 2018 Task 1, FIVES) to the record format.

Every converter reads a raw download in its official layout and writes a dataset folder with
:func:`seg4seg_utils.data.records.build_dataset`: raw images (and masks that are already binary single-channel
PNGs) are referenced in place, never copied or modified; only masks that need conversion are written.
Layout problems raise :class:`~seg4seg_utils.data.records.DatasetError` naming the file or folder and what to do;
recoverable oddities (a missing metadata row, an orphan mask) are reported as :class:`DataPrepWarning`.
``data_prep/README.md`` says how to download each dataset and what comes out.
"""
from __future__ import annotations

import math
import re
import warnings
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd
from PIL import Image
from scipy import ndimage as ndi
from tqdm.auto import tqdm

from seg4seg_utils.data.inject import ellipse_from_mask
from seg4seg_utils.data.records import (
    SPLITS,
    DatasetError,
    DatasetWriter,
    SampleTable,
    assign_splits,
    build_dataset,
    read_image,
)

__all__ = [
    "DataPrepWarning", "CONVERTER_VERSION",
    "fill_outline", "head_circumference_mm", "prepare_hc18",
    "ISIC2018_FOLDERS", "isic_annotation_styles", "prepare_isic2018",
    "FIVES_DISEASES", "read_fives_quality", "prepare_fives",
]

CONVERTER_VERSION = 1  # part of every config hash: bump it when a converter's output changes
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


class DataPrepWarning(UserWarning):
    """Something in a raw download was odd but recoverable (e.g. a metadata row is missing)."""


def _warn(message: str) -> None:
    warnings.warn(message, DataPrepWarning, stacklevel=3)


# ------------------------------------------------------------------------------------------ helpers
def _require_dir(path: Path, what: str, hint: str) -> Path:
    """``path`` if it is a folder, else a DatasetError saying what was expected there."""
    if not path.is_dir():
        state = "is a file, not a folder" if path.exists() else "does not exist"
        raise DatasetError(f"{path}: {what} {state}. {hint}")
    return path


def _image_files(folder: Path) -> list[Path]:
    """Image files directly in ``folder``, sorted by name (licence/attribution texts are skipped)."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _header_hw(path: Path) -> tuple[int, int]:
    """(height, width) from the image header, without decoding the pixels."""
    try:
        with Image.open(path) as im:
            w, h = im.size
    except (OSError, SyntaxError, ValueError) as exc:
        raise DatasetError(f"{path}: cannot be read as an image ({exc}). Re-download or re-extract this file.") from exc
    return h, w


def _check_same_size(image_path: Path, image_hw: tuple[int, int], mask_path: Path, mask_hw: tuple[int, int]) -> None:
    if tuple(image_hw) != tuple(mask_hw):
        raise DatasetError(f"{mask_path}: mask is {mask_hw[1]}x{mask_hw[0]} (WxH) but its image {image_path.name} is "
                           f"{image_hw[1]}x{image_hw[0]}; they must match. Check that the pair belongs together.")


def _binary_mask_source(path: Path) -> Path | np.ndarray:
    """The mask file itself when it is a single-channel 0/255 (or 0/1) image, else a bool array (>127 on channel 0)."""
    arr = read_image(path)  # raises a DatasetError naming the file when it cannot be decoded
    if arr.ndim == 2:
        used = np.flatnonzero(np.bincount(arr.ravel(), minlength=256))
        if set(used.tolist()) <= {0, 255} or set(used.tolist()) <= {0, 1}:
            return path  # read_mask accepts it as it is: reference in place
    first = arr[..., 0] if arr.ndim == 3 else arr
    return first > 127


def _progress(items: Sequence[Any], desc: str, enabled: bool) -> Iterable[Any]:
    return tqdm(items, desc=desc, unit="img", disable=not enabled, leave=False)


# --------------------------------------------------------------------------------------------- HC18
HC18_CSV = "training_set_pixel_size_and_HC.csv"
HC18_META = {
    "kind": "real", "dataset": "hc18", "modality": "ultrasound",
    "url": "https://doi.org/10.5281/zenodo.1327317", "licence": "CC BY 4.0",
    "citation": "van den Heuvel TLA, de Bruijn D, de Korte CL, van Ginneken B. Automated measurement of fetal head "
                "circumference using 2D ultrasound images. PLoS ONE 13(8): e0200412, 2018.",
}


def _fit_ellipse(xs: np.ndarray, ys: np.ndarray) -> tuple[np.ndarray, float, float, float]:
    """Direct least-squares ellipse fit (Fitzgibbon; Halir-Flusser form) in normalised coordinates.

    Returns the conic coefficients (a, b, c, d, e, f) of a x^2 + b xy + c y^2 + d x + e y + f = 0 for
    x = (X - mx) / s, y = (Y - my) / s, and (mx, my, s). The constraint 4ac - b^2 = 1 makes the result
    an ellipse whatever the points are, which a plain conic fit does not guarantee.
    """
    mx, my = float(xs.mean()), float(ys.mean())
    s = float(max(xs.std(), ys.std(), 1e-9))
    x, y = (xs - mx) / s, (ys - my) / s
    d1 = np.column_stack([x * x, x * y, y * y])
    d2 = np.column_stack([x, y, np.ones_like(x)])
    s1, s2, s3 = d1.T @ d1, d1.T @ d2, d2.T @ d2
    t = -np.linalg.solve(s3, s2.T)
    m = s1 + s2 @ t
    m = np.vstack([m[2] / 2, -m[1], m[0] / 2])
    _, vecs = np.linalg.eig(m)
    vecs = np.real(vecs)
    ok = 4 * vecs[0] * vecs[2] - vecs[1] ** 2 > 0
    if ok.sum() != 1:
        raise np.linalg.LinAlgError("no unique elliptical solution")
    a1 = vecs[:, ok][:, 0]
    return np.concatenate([a1, t @ a1]), mx, my, s


def _rasterise_ellipse(coeffs: np.ndarray, mx: float, my: float, s: float, shape: tuple[int, int]) -> np.ndarray:
    """Pixels inside the fitted ellipse (clipped to ``shape``)."""
    a, b, c, d, e, f = coeffs
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]]
    x, y = (xx - mx) / s, (yy - my) / s
    value = a * x * x + b * x * y + c * y * y + d * x + e * y + f
    x0, y0 = np.linalg.solve([[2 * a, b], [b, 2 * c]], [-d, -e])  # the centre, where the conic is extremal
    inside_sign = np.sign(a * x0 * x0 + b * x0 * y0 + c * y0 * y0 + d * x0 + e * y0 + f)
    return value * inside_sign >= 0


def fill_outline(outline: np.ndarray) -> tuple[np.ndarray, bool]:
    """Fill a closed ellipse outline into a mask; an open one gets a least-squares ellipse. Returns (mask, used_fit)."""
    outline = np.asarray(outline, dtype=bool)
    n_outline = int(outline.sum())
    if n_outline < 5:
        raise ValueError(f"the outline has {n_outline} pixels; at least 5 are needed to define an ellipse")
    filled = ndi.binary_fill_holes(outline)
    # A closed outline encloses far more pixels than it has (area ~ r/2 x perimeter); an open one encloses
    # almost none, so "interior smaller than the outline" means the fill leaked out and failed.
    if int(filled.sum()) - n_outline >= n_outline:
        return filled, False
    ys, xs = np.nonzero(outline)
    coeffs, mx, my, s = _fit_ellipse(xs.astype(float), ys.astype(float))
    return _rasterise_ellipse(coeffs, mx, my, s, outline.shape) | outline, True


def head_circumference_mm(mask: np.ndarray, pixel_size_mm: float) -> float:
    """Head circumference of a filled head mask: perimeter of its moment ellipse (Ramanujan) times the pixel size."""
    _, _, a, b, _ = ellipse_from_mask(np.asarray(mask, dtype=bool))
    perimeter = math.pi * (3 * (a + b) - math.sqrt((3 * a + b) * (a + 3 * b)))
    return perimeter * float(pixel_size_mm)


def _hc18_pairs(folder: Path) -> list[tuple[str, Path, Path]]:
    """(id, image, annotation) for every image in training_set/; an image without annotation is an error."""
    files = {p.name: p for p in folder.iterdir() if p.is_file() and p.suffix.lower() == ".png"}
    images = sorted(name for name in files if not name.endswith("_Annotation.png"))
    if not images:
        raise DatasetError(f"{folder}: no ultrasound images (NNN_HC.png) found. Extract the HC18 training_set.zip "
                           "so that this folder holds the images and their *_Annotation.png files.")
    pairs, missing = [], []
    for name in images:
        ann = name[:-len(".png")] + "_Annotation.png"
        if ann in files:
            pairs.append((name[:-len(".png")], files[name], files[ann]))
        else:
            missing.append(name)
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise DatasetError(f"{folder}: {len(missing)} image(s) have no annotation beside them: {shown} (expected e.g. "
                           f"{missing[0][:-4]}_Annotation.png). Re-extract training_set.zip, or remove the image.")
    orphans = set(files) - set(images) - {p[2].name for p in pairs}
    if orphans:
        _warn(f"{folder}: {len(orphans)} annotation(s) without an image were ignored, e.g. {sorted(orphans)[0]}")
    return pairs


def _find_column(columns: Sequence[str], *needles: str) -> str | None:
    """The first column whose lower-cased name contains every needle."""
    for col in columns:
        if all(n in str(col).lower() for n in needles):
            return col
    return None


def _hc18_measurements(raw: Path, ids: Sequence[str]) -> dict[str, tuple[float, float]]:
    """id -> (pixel size in mm, head circumference in mm) from the official CSV; empty (with a warning) without it."""
    path = raw / HC18_CSV
    if not path.is_file():
        _warn(f"{path}: not found, so pixel_size_mm and hc_mm are left empty. It is part of the HC18 training "
              "download; put it beside training_set/ to get them.")
        return {}
    try:
        df = pd.read_csv(path, skipinitialspace=True)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
        raise DatasetError(f"{path}: cannot be parsed as CSV ({exc}). Re-download it or delete it.") from exc
    name_col = _find_column(df.columns, "file") or _find_column(df.columns, "name")
    px_col = _find_column(df.columns, "pixel")
    hc_col = (_find_column(df.columns, "circumference")
              or next((c for c in df.columns if str(c).strip().lower() == "hc"), None))
    if not (name_col and px_col and hc_col):
        raise DatasetError(f"{path}: expected columns 'filename', 'pixel size(mm)' and 'head circumference (mm)', "
                           f"found {list(df.columns)}. Use the official CSV, or delete it to convert without "
                           "measurements.")
    stems = df[name_col].astype(str).str.strip().str.replace(r"\.png$", "", regex=True, case=False)
    table = {stem: (float(px), float(hc)) for stem, px, hc in zip(stems, df[px_col], df[hc_col])}
    absent = [i for i in ids if i not in table]
    if absent:
        _warn(f"{path}: {len(absent)} image(s) have no row (e.g. {absent[0]}.png); "
              "their pixel_size_mm and hc_mm are empty.")
    return table


def prepare_hc18(raw: Path, out: Path, seed: int = 0, fractions: Sequence[float] = (0.64, 0.16, 0.20),
                 progress: bool = True) -> SampleTable:
    """Convert the HC18 training set (``raw/training_set``) into a dataset at ``out``, split 64/16/20 by default.

    Images are referenced in place; each annotation's ellipse outline is filled into a mask (an open
    outline gets a least-squares ellipse; how many did is recorded in dataset.json). Attributes:
    ``pixel_size_mm``, ``hc_mm`` (from the official CSV; empty without it) and ``mask_method``
    (``fill`` or ``ellipse_fit``). HC18 has no test masks, so all splits come from the training set.
    """
    raw, out = Path(raw), Path(out)
    _require_dir(raw, "the HC18 download folder", "Pass --raw the folder that holds training_set/ and "
                 f"{HC18_CSV} (see data_prep/README.md).")
    folder = raw / "training_set"
    hint = (" You passed training_set/ itself; pass its parent folder." if raw.name == "training_set" else "")
    _require_dir(folder, "the HC18 training_set/ folder",
                 f"Extract training_set.zip from the HC18 download into {raw}.{hint}")
    pairs = _hc18_pairs(folder)
    ids = [sid for sid, _, _ in pairs]
    measures = _hc18_measurements(raw, ids)
    splits = assign_splits(ids, fractions, seed)
    config = {"dataset": "hc18", "raw": str(raw.resolve()), "seed": int(seed),
              "fractions": [float(f) for f in fractions], "version": CONVERTER_VERSION}

    def build(writer: DatasetWriter) -> dict[str, Any]:
        fitted: list[str] = []
        for (sid, img_path, ann_path), split in _progress(list(zip(pairs, splits)), "hc18", progress):
            image = read_image(img_path)  # decode once: an unreadable image fails here, naming the file
            ann = read_image(ann_path)
            outline = (ann.max(axis=2) if ann.ndim == 3 else ann) > 127
            _check_same_size(img_path, image.shape[:2], ann_path, outline.shape)
            try:
                mask, used_fit = fill_outline(outline)
            except (ValueError, np.linalg.LinAlgError) as exc:
                raise DatasetError(f"{ann_path}: cannot turn this annotation into a head mask ({exc}). It should "
                                   "show the head's ellipse as a white outline on black; replace or remove the "
                                   "pair.") from exc
            if used_fit:
                fitted.append(sid)
            px, hc = measures.get(sid, (math.nan, math.nan))
            writer.add(sid, split, img_path, mask, "hc18", pixel_size_mm=px, hc_mm=hc,
                       mask_method="ellipse_fit" if used_fit else "fill")
        return {"n_ellipse_fallback": len(fitted), "ellipse_fallback_ids": fitted}

    return build_dataset(out, config, build, meta={**HC18_META, "raw": str(raw.resolve())})


# ----------------------------------------------------------------------------------------- ISIC 2018
ISIC2018_FOLDERS: dict[str, tuple[str, str]] = {
    "train": ("ISIC2018_Task1-2_Training_Input", "ISIC2018_Task1_Training_GroundTruth"),
    "val": ("ISIC2018_Task1-2_Validation_Input", "ISIC2018_Task1_Validation_GroundTruth"),
    "test": ("ISIC2018_Task1-2_Test_Input", "ISIC2018_Task1_Test_GroundTruth"),
}
ISIC_META = {
    "kind": "real", "dataset": "isic2018", "modality": "dermoscopy",
    "url": "https://challenge.isic-archive.com/data/#2018", "licence": "CC BY-NC 4.0 (see the ISIC challenge terms)",
    "citation": "Codella N, et al. Skin Lesion Analysis Toward Melanoma Detection 2018: A Challenge Hosted by the "
                "International Skin Imaging Collaboration (ISIC). arXiv:1902.03368, 2019; Tschandl P, Rosendahl C, "
                "Kittler H. The HAM10000 dataset. Sci Data 5:180161, 2018.",
}
IMA_CONSENSUS_TOOLS = frozenset({"ST", "MV"})  # STAPLE / majority-vote masks computed from the others
IMA_STYLE_OF_TOOL = {"T1": "polygon", "T3": "flood_fill"}  # T1 manual point list, T3 autofill; T2 is unknown
STYLE_COLUMNS = ("n_masks", "ima_tool", "annotation_style", "annotator", "skill_level")


def isic_annotation_styles(styles_csv: Path) -> pd.DataFrame:
    """Per-image annotation style from the IMA++ per-mask metadata CSV, indexed by ISIC id.

    Columns: ``n_masks`` (annotator masks; the ST/MV consensus rows are derived from those, not drawn,
    so they are not counted), ``ima_tool`` (the tool when there is exactly one mask, else
    ``"multiple"``), ``annotation_style`` (``polygon`` for T1, ``flood_fill`` for T3, ``unknown`` for
    T2 or several masks: with several we cannot tell which one the challenge used), and ``annotator`` /
    ``skill_level`` (the value shared by all the image's masks, else ``"multiple"``).
    """
    styles_csv = Path(styles_csv)
    if not styles_csv.is_file():
        raise DatasetError(f"{styles_csv}: IMA++ metadata CSV not found. Download IMAplusplus_seg_metadata.csv "
                           "(see data_prep/README.md) or leave the styles option out.")
    try:
        df = pd.read_csv(styles_csv, dtype=str)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
        raise DatasetError(f"{styles_csv}: cannot be parsed as CSV ({exc}).") from exc
    missing = [c for c in ("ISIC_id", "annotator", "tool", "skill_level") if c not in df.columns]
    if missing:
        raise DatasetError(f"{styles_csv}: missing column(s) {missing} (found {list(df.columns)}); this does not look "
                           "like the IMA++ per-mask metadata (ISIC_id, img_filename, seg_filename, annotator, tool, "
                           "...).")
    df = df.dropna(subset=["ISIC_id"])
    df = df[~df["tool"].isin(IMA_CONSENSUS_TOOLS)]

    def shared(values: pd.Series) -> str:
        unique = values.dropna().unique()
        return str(unique[0]) if len(unique) == 1 else "multiple"

    grouped = df.groupby("ISIC_id", sort=True)
    out = pd.DataFrame({"n_masks": grouped.size().astype(int),
                        "annotator": grouped["annotator"].agg(shared),
                        "skill_level": grouped["skill_level"].agg(shared),
                        "first_tool": grouped["tool"].first()})
    single = out["n_masks"] == 1
    out["ima_tool"] = np.where(single, out["first_tool"].astype(str), "multiple")
    out["annotation_style"] = np.where(single, out["first_tool"].map(IMA_STYLE_OF_TOOL).fillna("unknown"), "unknown")
    out.index.name = "isic_id"
    return out[list(STYLE_COLUMNS)]


def _isic_folders(raw: Path) -> dict[str, tuple[Path, Path]]:
    """The six official folders by split; a DatasetError lists which were found and which are missing."""
    wanted = {name: raw / name for pair in ISIC2018_FOLDERS.values() for name in pair}
    found = [n for n, p in wanted.items() if p.is_dir()]
    missing = [n for n in wanted if n not in found]
    if missing:
        raise DatasetError(f"{raw}: the ISIC 2018 Task 1 download is incomplete. Found {found or 'none'}; missing "
                           f"{missing}. Download and unzip the Task 1-2 input and Task 1 ground-truth archives of the "
                           "training, validation and test sets into this folder (see data_prep/README.md).")
    return {split: (raw / inp, raw / gt) for split, (inp, gt) in ISIC2018_FOLDERS.items()}


def _isic_pairs(split: str, inputs: Path, truths: Path) -> list[tuple[str, Path, Path]]:
    """(ISIC id, image, mask) for one split; an image without its ``_segmentation.png`` is an error."""
    images = [p for p in _image_files(inputs) if p.suffix.lower() in (".jpg", ".jpeg")]
    if not images:
        raise DatasetError(f"{inputs}: no .jpg images found for the {split} split. Re-extract the official archive.")
    masks = {p.name: p for p in truths.iterdir() if p.is_file() and p.name.endswith("_segmentation.png")}
    pairs, missing = [], []
    for img in images:
        name = f"{img.stem}_segmentation.png"
        if name in masks:
            pairs.append((img.stem, img, masks.pop(name)))
        else:
            missing.append(img.name)
    if missing:
        raise DatasetError(f"{truths}: no mask for {len(missing)} {split} image(s), e.g. {missing[0]} (expected "
                           f"{Path(missing[0]).stem}_segmentation.png). Re-extract the ground-truth archive.")
    if masks:
        _warn(f"{truths}: {len(masks)} mask(s) without an image were ignored, e.g. {sorted(masks)[0]}")
    return pairs


def prepare_isic2018(raw: Path, out: Path, styles_csv: Path | None = None, progress: bool = True) -> SampleTable:
    """Convert the ISIC 2018 Task 1 download (six official folders in ``raw``) into a dataset at ``out``.

    The official training/validation/test sets become train/val/test. Images are referenced in place,
    and so are masks that are binary single-channel PNGs (the official ones are); others are
    thresholded (>127) and written. With ``styles_csv`` (the IMA++ per-mask metadata) the columns of
    :func:`isic_annotation_styles` are joined; images absent from it get ``unknown`` and ``n_masks`` 0.
    """
    raw, out = Path(raw), Path(out)
    _require_dir(raw, "the ISIC 2018 download folder", "Pass --raw the folder that holds the six ISIC2018_Task1* "
                 "folders (see data_prep/README.md).")
    folders = _isic_folders(raw)
    styles = isic_annotation_styles(styles_csv) if styles_csv is not None else None
    samples = [(split, *pair) for split in SPLITS for pair in _isic_pairs(split, *folders[split])]
    config = {"dataset": "isic2018", "raw": str(raw.resolve()), "version": CONVERTER_VERSION,
              "styles_csv": str(Path(styles_csv).resolve()) if styles_csv is not None else None}

    def build(writer: DatasetWriter) -> dict[str, Any]:
        written = 0
        style_counts: dict[str, dict[str, int]] = {s: {} for s in SPLITS}
        for split, sid, img_path, mask_path in _progress(samples, "isic2018", progress):
            mask = _binary_mask_source(mask_path)
            mask_hw = mask.shape if isinstance(mask, np.ndarray) else _header_hw(mask_path)
            _check_same_size(img_path, _header_hw(img_path), mask_path, mask_hw)
            written += isinstance(mask, np.ndarray)
            attrs: dict[str, Any] = {}
            if styles is not None:
                if sid in styles.index:
                    attrs = styles.loc[sid].to_dict()
                    attrs["n_masks"] = int(attrs["n_masks"])
                else:
                    attrs = {"n_masks": 0, "ima_tool": "unknown", "annotation_style": "unknown",
                             "annotator": "unknown", "skill_level": "unknown"}
                style = attrs["annotation_style"]
                style_counts[split][style] = style_counts[split].get(style, 0) + 1
            writer.add(sid, split, img_path, mask, "isic2018", **attrs)
        extra: dict[str, Any] = {"n_masks_rewritten": written}
        if styles is not None:
            extra["annotation_style_counts"] = style_counts
        return extra

    meta = {**ISIC_META, "raw": str(raw.resolve()), "split_source": "official"}
    return build_dataset(out, config, build, meta=meta)


# -------------------------------------------------------------------------------------------- FIVES
FIVES_DISEASES = {"A": "AMD", "D": "DR", "G": "glaucoma", "N": "normal"}
FIVES_NAME = re.compile(r"^(\d+)_([ADGN])$", re.IGNORECASE)
FIVES_META = {
    "kind": "real", "dataset": "fives", "modality": "fundus",
    "url": "https://doi.org/10.6084/m9.figshare.19688169", "licence": "CC BY 4.0",
    "citation": "Jin K, Huang X, Zhou J, et al. FIVES: A Fundus Image Dataset for Artificial Intelligence based "
                "Vessel Segmentation. Sci Data 9:475, 2022.",
}
_ID_PATTERN = re.compile(r"^\s*(\d+)(?:\.0+)?(?:\s*[_\-\s]\s*([ADGN]))?(?:\.[a-z]+)?\s*$", re.IGNORECASE)
_DISEASE_WORDS = {"a": "A", "amd": "A", "d": "D", "dr": "D", "diabetic retinopathy": "D", "g": "G",
                  "glaucoma": "G", "n": "N", "normal": "N"}
_GOOD_WORDS = {"good", "high", "ok", "adequate", "acceptable", "usable"}
_LOW_WORDS = {"low", "bad", "poor", "reject", "inadequate", "unusable"}
QUALITY_COLUMNS = ("q_ic", "q_blur", "q_lc", "quality")


def _subfolder(parent: Path, *names: str) -> Path | None:
    """The child folder whose name, lower-cased without spaces/underscores, is one of ``names``."""
    for child in sorted(parent.iterdir()):
        if child.is_dir() and re.sub(r"[\s_\-]", "", child.name.lower()) in names:
            return child
    return None


def _fives_pairs(raw: Path, split: str) -> list[tuple[Path, Path]]:
    """(image, ground truth) pairs of one official FIVES split, matched by file stem."""
    split_dir = _require_dir(raw / split, f"the FIVES {split}/ folder",
                             f"Extract the FIVES archive so that {raw} holds train/ and test/, each with Original/ "
                             "and 'Ground truth/' (see data_prep/README.md).")
    originals = _subfolder(split_dir, "original", "originals", "image", "images")
    truths = _subfolder(split_dir, "groundtruth", "groudtruth", "groundtruths", "label", "labels", "mask", "masks")
    if originals is None or truths is None:
        found = sorted(p.name for p in split_dir.iterdir() if p.is_dir())
        raise DatasetError(f"{split_dir}: expected subfolders 'Original' and 'Ground truth', found {found or 'none'}. "
                           "Use the official FIVES layout.")
    images = _image_files(originals)
    if not images:
        raise DatasetError(f"{originals}: no images found. Re-extract the FIVES archive.")
    masks = {p.stem: p for p in _image_files(truths)}
    missing = [p.name for p in images if p.stem not in masks]
    if missing:
        raise DatasetError(f"{truths}: no ground truth for {len(missing)} {split} image(s), e.g. {missing[0]} "
                           "(expected a file of the same name here). Re-extract the archive or remove the image.")
    return [(p, masks[p.stem]) for p in images]


def _carve_val(ids: Sequence[str], groups: Sequence[str], fraction: float, seed: int) -> list[str]:
    """'val' for round(fraction x n) ids of each group (half-up; seeded, order-independent), 'train' for the rest."""
    labels = ["train"] * len(ids)
    rng = np.random.default_rng(seed)
    for group in sorted(set(groups)):  # stratified so the val set keeps the diseases' proportions
        members = sorted((i for i in range(len(ids)) if groups[i] == group), key=lambda i: ids[i])
        n_val = int(math.floor(fraction * len(members) + 0.5))
        for i in rng.permutation(len(members))[:n_val]:
            labels[members[int(i)]] = "val"
    return labels


def _norm(value: Any) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else str(value).strip().lower()


def _tokens(name: str) -> set[str]:
    return set(re.findall(r"[a-z0-9]+", name))


def _column_roles(names: Sequence[str]) -> dict[str, list[int]]:
    """Candidate column positions for each role, by case-insensitive name matching."""
    roles: dict[str, list[int]] = {k: [] for k in ("ic", "blur", "lc", "quality", "id", "disease", "split")}
    for i, name in enumerate(names):
        tok = _tokens(name)
        if "illumination" in name or "colo" in name or "ic" in tok:
            roles["ic"].append(i)
        elif "blur" in name:
            roles["blur"].append(i)
        elif "contrast" in name or "lc" in tok:
            roles["lc"].append(i)
        elif "quality" in name:
            roles["quality"].append(i)
        elif "disease" in name or tok & {"category", "class", "type", "diagnosis", "label"}:
            roles["disease"].append(i)
        elif tok & {"split", "set", "subset", "partition"}:
            roles["split"].append(i)
        elif tok & {"id", "no", "number", "num", "image", "img", "file", "filename", "name", "index", "idx"} \
                or "file" in name or "image" in name or name in ("#", "no."):
            roles["id"].append(i)
    return roles


def _parse_id(value: Any) -> tuple[int, str] | None:
    """(number, disease letter or '') from '12_D.png', '12_D', 12 or '12'; None when it is not an image id."""
    if isinstance(value, (int, np.integer)):
        return int(value), ""
    if isinstance(value, float) and not math.isnan(value) and value.is_integer():  # Excel numbers come as floats
        return int(value), ""
    m = _ID_PATTERN.match(str(value)) if value is not None else None
    return (int(m.group(1)), (m.group(2) or "").upper()) if m else None


def _is_bad(value: Any, bad_value: Any) -> bool:
    """Whether a flag cell equals ``bad_value`` (1 == 1.0 == '1'; text compared case-insensitively)."""
    if _norm(value) == "":
        return False  # an empty flag cell means "not flagged"
    try:
        return float(value) == float(bad_value)
    except (TypeError, ValueError):
        return _norm(value) == _norm(bad_value)


def _split_of(text: str) -> str:
    text = text.lower()
    return "train" if "train" in text else "test" if "test" in text else ""


def _parse_quality_sheet(raw: pd.DataFrame, sheet: str, path: Path, bad_value: Any) -> pd.DataFrame | None:
    """One sheet's rows as (split, number, disease, q_ic, q_blur, q_lc, quality); None if it has no quality table."""
    for header in range(min(10, len(raw))):  # the header may sit below a title row
        names = [_norm(v) for v in raw.iloc[header]]
        roles = _column_roles(names)
        flags = [roles[k] for k in ("ic", "blur", "lc")]
        if roles["id"] and (any(flags) or roles["quality"]):
            break
    else:
        return None
    where = f"{path}" + (f" (sheet {sheet!r})" if sheet else "")
    found = [n for n in names if n]
    if any(len(f) > 1 for f in flags):
        raise DatasetError(f"{where}: several columns match the same quality flag; found columns {found}. Keep one "
                           "column each for illumination/colour (IC), blur and low contrast (LC).")
    if any(flags) and not all(flags) and not roles["quality"]:
        raise DatasetError(f"{where}: found only some of the quality flag columns (IC, blur, LC) and no 'quality' "
                           f"column; found columns {found}. Provide all three flags or a quality column (good/low).")
    body = raw.iloc[header + 1:]
    # the id column: the first candidate whose cells mostly parse as FIVES image ids
    id_col = None
    for i in roles["id"]:
        cells = body.iloc[:, i].dropna()
        if len(cells) and sum(_parse_id(v) is not None for v in cells) >= 0.5 * len(cells):
            id_col = i
            break
    if id_col is None:
        raise DatasetError(f"{where}: no column holds image ids (a file name like 12_D.png or a number); found "
                           f"columns {found}.")
    rows = []
    for _, cells in body.iterrows():
        parsed = _parse_id(cells.iloc[id_col])
        if parsed is None:
            continue  # blank or note rows
        number, disease = parsed
        if not disease and roles["disease"]:
            disease = _DISEASE_WORDS.get(_norm(cells.iloc[roles["disease"][0]]), "")
        split = _split_of(sheet) or (_split_of(_norm(cells.iloc[roles["split"][0]])) if roles["split"] else "")
        row = {"split": split, "number": number, "disease": disease}
        if all(flags):
            bad = {k: _is_bad(cells.iloc[f[0]], bad_value) for k, f in zip(("q_ic", "q_blur", "q_lc"), flags)}
            row.update(bad, quality="low" if any(bad.values()) else "good")
        else:
            word = _norm(cells.iloc[roles["quality"][0]])
            quality = "good" if word in _GOOD_WORDS else "low" if word in _LOW_WORDS else None
            if quality is None:
                raise DatasetError(f"{where}: quality value {word!r} for image {number} is neither good nor low "
                                   f"(accepted: {sorted(_GOOD_WORDS)} / {sorted(_LOW_WORDS)}).")
            row.update(q_ic=None, q_blur=None, q_lc=None, quality=quality)
        rows.append(row)
    if not rows:
        raise DatasetError(f"{where}: the quality table has a header ({found}) but no rows with image ids.")
    return pd.DataFrame(rows)


def read_fives_quality(path: Path, bad_value: Any = 1) -> pd.DataFrame:
    """Read the FIVES quality labels (.xlsx, every sheet, or .csv) into one row per image.

    Columns: ``split`` (train/test from the sheet name or a split column, else ''), ``number``,
    ``disease`` (A/D/G/N or ''), ``q_ic``, ``q_blur``, ``q_lc`` (True where the flag equals
    ``bad_value``; empty cells count as not flagged; None when the table has only a quality column) and
    ``quality`` (``low`` when any flag is set, else ``good``). Columns are found by name, case-insensitively:
    an id column (file name like ``12_D.png`` or a number, called e.g. image/file/name/id/no/number), and
    either the three flags (illumination/colour or ``IC``; ``blur``; contrast or ``LC``) or a ``quality``
    column holding good/low. The header may sit up to ten rows down. The official spreadsheet's exact
    layout (and whether 1 means "has the problem") could not be verified when this was written: check the
    ``quality`` counts after conversion and pass another ``bad_value`` if they look inverted.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: FIVES quality file not found. Pass the 'Quality Assessment.xlsx' from the FIVES "
                           "download (or a CSV export of it), or leave the quality option out.")
    try:
        if path.suffix.lower() in (".xlsx", ".xlsm", ".xls"):
            sheets = pd.read_excel(path, sheet_name=None, header=None, dtype=object)
        else:
            sheets = {"": pd.read_csv(path, header=None, dtype=object, skip_blank_lines=True)}
    except (OSError, ValueError, ImportError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: cannot be read as a spreadsheet or CSV ({exc}).") from exc
    tables, seen = [], {}
    for name, raw in sheets.items():
        seen[name or path.name] = [_norm(v) for v in raw.iloc[0]] if len(raw) else []
        table = _parse_quality_sheet(raw, str(name), path, bad_value)
        if table is not None:
            tables.append(table)
    if not tables:
        shown = "; ".join(f"{k}: {v}" for k, v in seen.items())
        raise DatasetError(f"{path}: cannot find the quality columns. Need an image id column (file name or number) "
                           "and either a 'quality' column (good/low) or the three flags illumination/colour (IC), "
                           f"blur and low contrast (LC). First row of each sheet: {shown}.")
    return pd.concat(tables, ignore_index=True)


def _quality_lookup(table: pd.DataFrame, path: Path) -> dict[tuple[str, int, str], dict[str, Any]]:
    """Key (split or '*', number, disease or '*') -> quality columns; a key seen twice is ambiguous."""
    lookup: dict[tuple[str, int, str], dict[str, Any]] = {}
    for row in table.to_dict("records"):
        key = (row["split"] or "*", int(row["number"]), row["disease"] or "*")
        if key in lookup:
            raise DatasetError(f"{path}: image {key[1]}{'_' + key[2] if key[2] != '*' else ''} appears more than once"
                               f"{' in the ' + key[0] + ' rows' if key[0] != '*' else ''}, so its rows cannot be told "
                               "apart. Give each split its own sheet (named train/test) or add a split column.")
        lookup[key] = {k: row[k] for k in QUALITY_COLUMNS}
    return lookup


def _match_quality(lookup: dict, samples: Sequence[tuple], path: Path) -> list[dict[str, Any] | None]:
    """Each sample's quality row (None when it has none), most specific key first.

    A row without a split that fits images of both official splits (train and test file names may
    repeat) is refused rather than copied to both.
    """
    matches: list[dict[str, Any] | None] = []
    used_by: dict[tuple[str, int, str], dict[str, str]] = {}
    for official, stem, number, letter, *_ in samples:
        for key in ((official, number, letter), (official, number, "*"), ("*", number, letter), ("*", number, "*")):
            if key in lookup:
                used_by.setdefault(key, {})[official] = stem
                matches.append(lookup[key])
                break
        else:
            matches.append(None)
    for key, where in used_by.items():
        if len(where) > 1:
            name = f"{key[1]}_{key[2]}" if key[2] != "*" else str(key[1])
            raise DatasetError(f"{path}: the row for image {name} has no split but fits both train/{where['train']} "
                               f"and test/{where['test']}. Give each split its own sheet (named train/test) or add "
                               "a split column.")
    return matches


def prepare_fives(raw: Path, out: Path, quality: Path | None = None, val_fraction: float = 0.2, seed: int = 0,
                  bad_value: Any = 1, progress: bool = True) -> SampleTable:
    """Convert the FIVES download (``raw/train``, ``raw/test``) into a dataset at ``out``.

    The official test set is the test split; val is carved from the official training set
    (``val_fraction`` of each disease, seeded). Ids are ``<official split>_<file stem>`` (e.g.
    ``train_1_A``) because train and test file names may repeat. Images are referenced in place; ground
    truths are thresholded (>127 on the first channel) and written unless already single-channel binary.
    Attributes: ``official_split``, ``number``, ``disease`` (AMD/DR/glaucoma/normal from the A/D/G/N
    suffix), and with ``quality`` (see :func:`read_fives_quality`; ``bad_value`` marks a flagged image)
    ``q_ic``, ``q_blur``, ``q_lc`` and ``quality`` (good/low; ``unknown`` for images without a row).
    """
    raw, out = Path(raw), Path(out)
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be between 0 and 1 (exclusive), got {val_fraction}")
    _require_dir(raw, "the FIVES download folder", "Pass --raw the folder that holds train/ and test/ "
                 "(see data_prep/README.md).")
    samples = []  # (official split, stem, number, letter, image, mask)
    for official in ("train", "test"):
        for img, mask in _fives_pairs(raw, official):
            m = FIVES_NAME.match(img.stem)
            if m is None:
                _warn(f"{img}: name does not follow <number>_<A|D|G|N>; its disease is recorded as unknown")
            number, letter = (int(m.group(1)), m.group(2).upper()) if m else (-1, "")
            samples.append((official, img.stem, number, letter, img, mask))
    train_rows = [s for s in samples if s[0] == "train"]
    carved = dict(zip((s[1] for s in train_rows),
                      _carve_val([s[1] for s in train_rows], [s[3] for s in train_rows], val_fraction, seed)))
    if "val" not in carved.values():
        _warn(f"{raw}: val_fraction={val_fraction} leaves the val split empty for {len(train_rows)} training images; "
              "pass a larger fraction if you need a val split.")
    matches, quality_meta = None, {}
    if quality is not None:
        lookup = _quality_lookup(read_fives_quality(quality, bad_value), Path(quality))
        matches = _match_quality(lookup, samples, Path(quality))
        quality_meta = _report_quality(Path(quality), samples, matches, bad_value)
    config = {"dataset": "fives", "raw": str(raw.resolve()), "val_fraction": float(val_fraction), "seed": int(seed),
              "quality": str(Path(quality).resolve()) if quality is not None else None, "bad_value": str(bad_value),
              "version": CONVERTER_VERSION}

    def build(writer: DatasetWriter) -> dict[str, Any]:
        written = 0
        rows = enumerate(_progress(samples, "fives", progress))
        for i, (official, stem, number, letter, img_path, mask_path) in rows:
            mask = _binary_mask_source(mask_path)
            mask_hw = mask.shape if isinstance(mask, np.ndarray) else _header_hw(mask_path)
            _check_same_size(img_path, _header_hw(img_path), mask_path, mask_hw)
            written += isinstance(mask, np.ndarray)
            attrs: dict[str, Any] = {"official_split": official, "number": number,
                                     "disease": FIVES_DISEASES.get(letter, "unknown")}
            if matches is not None:
                attrs.update(matches[i] or {"q_ic": None, "q_blur": None, "q_lc": None, "quality": "unknown"})
            split = "test" if official == "test" else carved[stem]
            writer.add(f"{official}_{stem}", split, img_path, mask, "fives", **attrs)
        return {"n_masks_rewritten": written, **quality_meta}

    meta = {**FIVES_META, "raw": str(raw.resolve()), "split_source": "official test; val carved from official train"}
    return build_dataset(out, config, build, meta=meta)


def _report_quality(path: Path, samples: Sequence[tuple], matches: Sequence[dict[str, Any] | None],
                    bad_value: Any) -> dict[str, Any]:
    """Fail when no image matched the quality file; warn about partial matches and implausible counts; meta to keep."""
    unmatched = [f"{s[0]}/{s[1]}" for s, q in zip(samples, matches) if q is None]
    if len(unmatched) == len(samples):
        raise DatasetError(f"{path}: none of the {len(samples)} images matched a row of the quality file (e.g. "
                           f"{unmatched[0]}). Check that its id column holds FIVES file names or numbers.")
    if unmatched:
        _warn(f"{path}: {len(unmatched)} image(s) have no quality row (e.g. {unmatched[0]}); quality='unknown'.")
    counts = pd.Series([q["quality"] if q else "unknown" for q in matches]).value_counts().to_dict()
    rated = counts.get("good", 0) + counts.get("low", 0)
    if rated and counts.get("low", 0) > rated / 2:
        _warn(f"{path}: {counts['low']} of {rated} images come out 'low' quality. If that looks inverted, the flags "
              "may mark good images: pass a different bad_value (--bad-value).")
    return {"quality_counts": {k: int(v) for k, v in counts.items()}, "quality_unmatched": len(unmatched),
            "quality_bad_value": str(bad_value)}
