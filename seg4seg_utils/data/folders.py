"""The input layer of ``seg4seg audit``: a user's three folders (images, ground-truth masks, predictions) and an
optional metadata CSV, paired, read and checked before any metric is computed.

Why a module of its own: these files come from outside the project, from any tool, and an audit is only as good
as its pairing and decoding. A silently mis-paired case, a JPEG mask whose edge noise became extra "classes", or
logits read as probabilities would all yield plausible but wrong Dice scores. So every rule below either reads a
file faithfully or stops with a :class:`~seg4seg_utils.data.records.DatasetError` that names the file, says what
is wrong and what to do.

Pairing (:func:`pair_folders`)
    Files are matched by name without extension; suffixes are case-insensitive; hidden files (``.DS_Store``,
    macOS ``._x.png``) and files of other types are ignored. nnU-Net names an image's channels ``case_0000``,
    ``case_0001``...: when stripping ``_0000`` from image names makes them match the masks or predictions, it is
    stripped, and the other channels of the same case are ignored (only ``_0000`` is shown and embedded).

Ground-truth masks (:func:`read_label_map`)
    Read raw (PIL, or tifffile for TIFF), never rescaled. Binary masks may hold 0/1, 0/255 or (16-bit) 0/65535 and
    come back as {0, 1}; multi-class label maps hold class labels 0..K (K <= 254), kept as they are. A mask with
    three identical channels is read as one channel; a palette PNG gives its gray levels when all its colours
    are gray, else its palette indices (colour-coded label maps). A mask is rejected as *lossy* when it is a
    JPEG that holds anything but {0, 255} or {0, 1}, when it holds more than :data:`MAX_LABELS` (20) distinct
    values, or when it holds 255 together with values other than 0: 255 is never a class label here, so a mask
    at 255 is a 0/255 mask, and values in between come from JPEG compression or resizing with interpolation.

Predictions (:func:`read_prediction`)
    Hard predictions (image files, integer ``.npy``/TIFF) follow the mask rules. Soft predictions are float
    ``.npy``, ``.npz`` or TIFF arrays of probabilities in [0, 1]: an HxW array is the foreground probability;
    a (C, H, W) or nnU-Net's (C, 1, H, W) array (``.npz`` key ``probabilities``, ``softmax`` or ``prob``, else
    its first array) holds softmax probabilities with the background in channel 0, so the foreground probability
    is ``1 - p[0]``. **Probabilities are thresholded at 0.5 (--threshold) for Dice/IoU/PPV/NPV**: foreground is
    ``probability >= threshold``; with more than two classes the hard labels are the argmax over the classes.
    Values outside [0, 1] are logits and rejected (apply a sigmoid/softmax first). A float array holding only
    whole numbers above 1 is read as a label map.

Images (:func:`read_audit_image`)
    Read with :func:`seg4seg_utils.data.records.read_image`: uint8 grayscale or RGB; alpha and palettes are
    dropped; 16-bit and float images are rescaled *per image* (its minimum to 0, its maximum to 255), so the
    embedding sees each image's contrast, not absolute intensities (window CT yourself if that matters).
"""
from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd
import tifffile  # installed with scikit-image; PIL cannot read float or multi-channel 16-bit TIFFs
from PIL import Image

from seg4seg_utils.data.records import DatasetError, read_image

__all__ = [
    "IMAGE_SUFFIXES", "PREDICTION_SUFFIXES", "MAX_LABELS", "PROBABILITY_KEYS", "Prediction",
    "pair_folders", "read_label_map", "read_prediction", "read_audit_image", "check_same_size",
    "read_metadata", "folder_fingerprint",
]

IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
PREDICTION_SUFFIXES: tuple[str, ...] = IMAGE_SUFFIXES + (".npy", ".npz")
MAX_LABELS = 20  # more distinct values than this in a mask is compression noise, not classes
PROBABILITY_KEYS: tuple[str, ...] = ("probabilities", "softmax", "prob")  # nnU-Net v2, v1, common short name
_TIFF = (".tif", ".tiff")
_CHANNEL = re.compile(r"(.+)_(\d{4})")  # nnU-Net's channel suffix: case_012_0000
_SHOWN = 5  # names quoted per problem in an error message: enough to recognise a pattern, short enough to read
_FIX_LOSSY = "Save masks losslessly as PNG with values 0/1, 0/255 or class labels."
_FIX_SIZE = "resize predictions to the image size first"


def _few(names: Sequence[str], n: int = _SHOWN) -> str:
    return ", ".join(str(x) for x in names[:n]) + (", ..." if len(names) > n else "")


# ------------------------------------------------------------------------------------------------ pairing
def _scan(folder: str | os.PathLike, what: str, suffixes: tuple[str, ...]) -> dict[str, list[Path]]:
    """name without extension -> files of one folder (a list, so that duplicates can be reported)."""
    folder = Path(folder)
    if not folder.exists():
        raise DatasetError(f"{folder}: the {what} folder does not exist. Pass the folder holding your {what}.")
    if not folder.is_dir():
        raise DatasetError(f"{folder}: is a file, not a folder. Pass the folder holding your {what}.")
    stems: dict[str, list[Path]] = {}
    others: list[str] = []
    for p in sorted(folder.iterdir()):
        if p.name.startswith(".") or not p.is_file():  # .DS_Store, macOS ._resource forks, sub-folders
            continue
        if p.suffix.lower() not in suffixes:
            others.append(p.name)
            continue
        stems.setdefault(p.name[: -len(p.suffix)], []).append(p)
    if not stems:
        found = f" It holds only {_few(others)}." if others else " It is empty."
        hint = (" 3-D volumes (.nii.gz, .nrrd, .mha) are not supported: export 2-D slices." if
                any(o.lower().endswith((".nii", ".nii.gz", ".nrrd", ".mha", ".mhd")) for o in others) else "")
        raise DatasetError(f"{folder}: no {what} ({', '.join(suffixes)}) in this folder.{found}{hint}")
    return stems


def _image_ids(stems: dict[str, list[Path]], others: set[str]) -> dict[str, list[Path]]:
    """Image stems -> ids, stripping nnU-Net's ``_0000`` when that is what makes images match ``others``."""
    # decided per folder, and only on evidence: a dataset whose own names end in _0000 (frame_0000.png with a
    # mask frame_0000.png) keeps them
    nnunet = any((m := _CHANNEL.fullmatch(s)) and m[2] == "0000" and m[1] in others and s not in others
                 for s in stems)
    if not nnunet:
        return stems
    ids: dict[str, list[Path]] = {}
    for s, files in stems.items():
        m = _CHANNEL.fullmatch(s)
        if m and m[2] == "0000":
            s = m[1]
        elif m and f"{m[1]}_0000" in stems:
            continue  # another channel (_0001...) of a case: the audit shows and embeds channel _0000 only
        ids.setdefault(s, []).extend(files)
    return ids


def pair_folders(images: str | os.PathLike, masks: str | os.PathLike,
                 predictions: str | os.PathLike) -> pd.DataFrame:
    """Pair the three folders' files by name without extension.

    Returns columns ``id, image, mask, prediction`` (absolute path strings), sorted by id. Suffixes are
    case-insensitive; hidden and non-image files are ignored. An image name's nnU-Net channel suffix ``_0000``
    is stripped when that makes it match (``case_012_0000.png`` pairs with ``case_012.png``); the case's other
    channels (``_0001``...) are then ignored, only channel ``_0000`` is used. Two files of one id in a folder,
    and any image without a mask or prediction or file without an image, are errors (all unmatched files in
    one message).
    """
    folders = {"image": Path(images), "mask": Path(masks), "prediction": Path(predictions)}
    image_stems = _scan(images, "images", IMAGE_SUFFIXES)
    found = {"mask": _scan(masks, "ground-truth masks", IMAGE_SUFFIXES),
             "prediction": _scan(predictions, "predictions", PREDICTION_SUFFIXES)}
    found["image"] = _image_ids(image_stems, set(found["mask"]) | set(found["prediction"]))
    for role, ids in found.items():
        for sid, files in ids.items():
            if len(files) > 1:
                raise DatasetError(f"{folders[role]}: {len(files)} files have the name {sid!r}: "
                                   f"{', '.join(f.name for f in files)}. Keep one and move the others away.")
    problems = []
    for role, what in (("mask", "ground-truth mask"), ("prediction", "prediction")):
        lacking = sorted(set(found["image"]) - set(found[role]))
        if lacking:
            problems.append(f"{len(lacking)} image(s) have no {what} in {folders[role]}/ "
                            f"(e.g. {_few([found['image'][i][0].name for i in lacking])})")
    for role in ("mask", "prediction"):
        extra = sorted(set(found[role]) - set(found["image"]))
        if extra:
            problems.append(f"{len(extra)} {role}(s) have no image in {folders['image']}/ "
                            f"(e.g. {_few([found[role][i][0].name for i in extra])})")
    if problems:
        raise DatasetError("The folders do not match: " + "; ".join(problems) + ". Files are matched by name "
                           "without extension (an nnU-Net channel suffix _0000 on image names is ignored); add the "
                           "missing files or move the extra ones away.")
    ids = sorted(found["image"])
    return pd.DataFrame({"id": ids, **{role: [os.path.abspath(found[role][i][0]) for i in ids]
                                       for role in ("image", "mask", "prediction")}})


# -------------------------------------------------------------------------------------------------- pixels
def _raw(path: Path, what: str) -> tuple[np.ndarray, bool]:
    """A file's pixel values as stored (no rescaling) and whether it is a JPEG; alpha is dropped."""
    if not path.is_file():
        raise DatasetError(f"{path}: the {what} file is missing. Restore it, or re-run after fixing the folder.")
    try:
        if path.suffix.lower() in _TIFF:
            return np.asarray(tifffile.imread(path)), False
        with Image.open(path) as im:
            im.load()
            jpeg = im.format == "JPEG"  # by content, not suffix: a .png may be a renamed JPEG
            if im.mode in ("LA", "PA", "RGBA"):
                arr = np.asarray(im)[..., :-1]
            elif im.mode == "P":
                arr = _palette_values(im)
            elif im.mode in ("1", "L", "RGB") or im.mode.startswith(("I", "F")):
                arr = np.asarray(im)
            else:  # CMYK, YCbCr...: pixel values only make sense as RGB
                arr = np.asarray(im.convert("RGB"))
    except (OSError, SyntaxError, ValueError, tifffile.TiffFileError) as exc:
        raise DatasetError(f"{path}: cannot be read as a {what} ({exc}). Replace the file or move it away.") from exc
    return arr, jpeg


def _palette_values(im: Image.Image) -> np.ndarray:
    """A palette image's values: its gray levels when every used colour is gray (a gray mask saved with a
    palette, where index 0 need not be black), else the palette indices (colour-coded VOC-style label maps)."""
    index = np.asarray(im)
    palette = np.asarray(im.getpalette() or [], dtype=np.uint8).reshape(-1, 3)
    used = np.unique(index)
    if len(palette) > used.max() and (palette[used] == palette[used][:, :1]).all():
        return palette[:, 0][index]
    return index


def _squeeze(arr: np.ndarray) -> np.ndarray:
    """Drop axes of length 1 ((1, H, W), (H, W, 1), nnU-Net's (C, 1, H, W)) but never below two axes."""
    while arr.ndim > 2 and 1 in arr.shape:
        arr = np.squeeze(arr, axis=arr.shape.index(1))
    return arr


def _lossy(path: Path, values: np.ndarray, why: str, what: str) -> DatasetError:
    shown = _few([str(v) for v in values], 8)
    soft = (" A soft prediction belongs in a float .npy/.npz/.tif file holding probabilities in [0, 1]."
            if what == "prediction" else "")
    return DatasetError(f"{path}: looks like a lossy (JPEG) mask: {len(values)} distinct values (e.g. {shown}); "
                        f"{why}. {_FIX_LOSSY}{soft}")


def _labels(arr: np.ndarray, path: Path, jpeg: bool, what: str) -> np.ndarray:
    """Validate raw pixel values as a label map (rules in the module docstring) -> uint8 HxW."""
    arr = _squeeze(np.asarray(arr))
    if arr.ndim == 3 and arr.shape[-1] in (2, 3):  # RGB (alpha already dropped) or a stray 2-channel array
        if any(not np.array_equal(arr[..., 0], arr[..., c]) for c in range(1, arr.shape[-1])):
            if jpeg:  # JPEG chroma noise makes a gray mask's channels differ: report the cause, not the symptom
                raise _lossy(path, np.unique(arr), "JPEG compression changes pixel values at every edge", what)
            raise DatasetError(f"{path}: the {what} has colour channels that differ (a colour-coded mask?). Save one "
                               "channel of labels: 0/1, 0/255 or class labels 0..K.")
        arr = arr[..., 0]
    if arr.ndim != 2:
        raise DatasetError(f"{path}: the {what} has shape {arr.shape}; expected a 2-D label map (H x W).")
    if arr.dtype == bool:
        return arr.astype(np.uint8)
    if arr.dtype.kind == "f":
        if not np.isfinite(arr).all() or not np.array_equal(arr, np.round(arr)):
            raise DatasetError(f"{path}: the {what} holds non-integer values; a mask holds integer class labels "
                               "(0/1, 0/255 or 0..K). Probabilities are accepted as predictions only.")
    elif arr.dtype.kind not in "iu":
        raise DatasetError(f"{path}: the {what} has unsupported data type {arr.dtype}; save integer labels.")
    values = np.unique(arr)
    lo, hi = values[0], values[-1]
    if set(values.tolist()) <= {0, 1}:
        return arr.astype(np.uint8)
    if set(values.tolist()) <= {0, 255} or set(values.tolist()) <= {0, 65535}:
        return (arr > 0).astype(np.uint8)
    if jpeg:
        raise _lossy(path, values, "JPEG compression changes pixel values at every edge", what)
    if len(values) > MAX_LABELS:
        raise _lossy(path, values, f"a label map holds at most {MAX_LABELS} distinct values", what)
    if lo < 0 or hi > 255:
        raise DatasetError(f"{path}: the {what} holds values from {lo} to {hi}; labels must be 0..254 "
                           "(or 0/255, 0/65535 for binary masks).")
    if hi == 255:
        raise _lossy(path, values, "255 is used only by 0/255 binary masks, so the values in between come from "
                     "compression or resizing with interpolation (if 255 marks ignored pixels, relabel them)", what)
    return arr.astype(np.uint8)


def read_label_map(path: str | os.PathLike) -> np.ndarray:
    """A ground-truth mask as uint8 HxW labels; binary masks come back as {0, 1}.

    Accepted: 0/1, 0/255 and 0/65535 binary masks; class labels 0..254 with at most :data:`MAX_LABELS` distinct
    values (kept); one channel or three identical ones; 8/16-bit PNG, TIFF, BMP. Rejected as lossy: a JPEG
    holding anything but {0, 255}/{0, 1}, more than :data:`MAX_LABELS` distinct values, or 255 next to values
    other than 0 (255 is never a class label, so those values are compression or interpolation noise).
    """
    path = Path(path)
    arr, jpeg = _raw(path, "mask")
    return _labels(arr, path, jpeg, "mask")


@dataclass
class Prediction:
    """A model's output for one image: hard labels and, for soft outputs, the foreground probability."""

    labels: np.ndarray  # uint8 HxW hard labels ({0, 1} for binary)
    probability: np.ndarray | None  # float32 HxW foreground probability in [0, 1] for soft outputs, else None


def _load_array(path: Path) -> np.ndarray:
    if not path.is_file():
        raise DatasetError(f"{path}: the prediction file is missing. Restore it, or re-run after fixing the folder.")
    try:
        if path.suffix.lower() == ".npy":
            return np.load(path, allow_pickle=False)  # never unpickle a file from outside: it could run code
        with np.load(path, allow_pickle=False) as npz:
            if not npz.files:
                raise DatasetError(f"{path}: the .npz file holds no array. Save the probabilities under "
                                   f"'{PROBABILITY_KEYS[0]}'.")
            key = next((k for k in PROBABILITY_KEYS if k in npz.files), npz.files[0])
            return npz[key]
    except DatasetError:
        raise
    except (OSError, ValueError, EOFError) as exc:  # also a pickled object array, refused above
        raise DatasetError(f"{path}: cannot be read as a NumPy array ({exc}). Replace the file or move it "
                           "away.") from exc


def _soft(arr: np.ndarray, path: Path, threshold: float) -> Prediction:
    """Float arrays: probabilities (HxW, or classes first/last), or whole-number label maps."""
    arr = _squeeze(arr)
    if not np.isfinite(arr).all():
        raise DatasetError(f"{path}: the prediction holds NaN or infinite values. Save finite probabilities.")
    lo, hi = float(arr.min()), float(arr.max())
    if lo < -1e-3 or hi > 1 + 1e-3:  # a little slack for float16 rounding; clipped below
        if lo >= 0 and np.array_equal(arr, np.round(arr)):
            return Prediction(_labels(arr, path, False, "prediction"), None)
        raise DatasetError(f"{path}: values range from {lo:.3g} to {hi:.3g}, outside [0, 1]: these look like logits, "
                           "not probabilities. Apply a sigmoid (one foreground map) or a softmax over the classes "
                           "before saving, or save hard labels.")
    arr = np.clip(arr.astype(np.float32), 0, 1)
    if arr.ndim == 3:
        small = int(np.argmin(arr.shape))
        if small == 1 or sorted(arr.shape)[0] == sorted(arr.shape)[1]:
            raise DatasetError(f"{path}: cannot tell the class axis of shape {arr.shape}; save (C, H, W) "
                               "probabilities (classes first, background in channel 0) or one HxW foreground map.")
        arr = np.moveaxis(arr, small, 0)
        if np.abs(arr.sum(axis=0) - 1).max() > 1e-2:
            raise DatasetError(f"{path}: the {arr.shape[0]} channels do not sum to 1, so they are not softmax "
                               "probabilities; save (C, H, W) softmax outputs (background in channel 0) or one HxW "
                               "foreground probability map.")
        fg = np.clip(1 - arr[0], 0, 1)
        labels = (fg >= threshold) if arr.shape[0] == 2 else np.argmax(arr, axis=0)
        return Prediction(labels.astype(np.uint8), fg.astype(np.float32))
    if arr.ndim != 2:
        raise DatasetError(f"{path}: the prediction has shape {arr.shape}; expected H x W, (C, H, W) or (C, 1, H, W).")
    return Prediction((arr >= threshold).astype(np.uint8), arr)


def read_prediction(path: str | os.PathLike, threshold: float = 0.5) -> Prediction:
    """A prediction file as hard labels plus, for probabilities, the foreground probability.

    Image files and integer arrays follow :func:`read_label_map`'s rules. Float ``.npy``/``.npz``/TIFF arrays are
    probabilities in [0, 1]: HxW is the foreground probability; (C, H, W) or (C, 1, H, W) is softmax with the
    background in channel 0 (foreground = ``1 - p[0]``). Hard labels: ``probability >= threshold``, or the argmax
    for more than two classes. Values outside [0, 1] (logits) are an error.
    """
    if not 0 < threshold < 1:
        raise ValueError(f"threshold must be between 0 and 1, got {threshold}")
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in (".npy", ".npz"):
        arr, jpeg = _load_array(path), False
    else:
        arr, jpeg = _raw(path, "prediction")
    if arr.dtype.kind == "f":
        return _soft(arr, path, threshold)
    if arr.dtype.kind not in "biu":
        raise DatasetError(f"{path}: the prediction has unsupported data type {arr.dtype}; save integer labels or "
                           "float probabilities.")
    return Prediction(_labels(arr, path, jpeg, "prediction"), None)


def read_audit_image(path: str | os.PathLike) -> np.ndarray:
    """An image as uint8 HxW or HxWx3 via :func:`~seg4seg_utils.data.records.read_image`: alpha and palettes
    dropped, 16-bit/float rescaled per image (min -> 0, max -> 255); TIFFs PIL cannot read go through tifffile."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: the image file is missing. Restore it, or re-run after fixing the folder.")
    try:
        return read_image(path)
    except DatasetError as exc:
        if path.suffix.lower() not in _TIFF:
            raise DatasetError(f"{path}: cannot be read as an image ({exc.__cause__ or exc}). Replace the file or "
                               "move it out of the images folder.") from exc
        failure = exc
    arr, _ = _raw(path, "image")  # e.g. 16-bit RGB or float multi-channel TIFF
    arr = _squeeze(arr)
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):
        arr = arr[..., :3]
    elif arr.ndim != 2:
        raise DatasetError(f"{path}: image of shape {arr.shape} is neither grayscale nor RGB ({failure}).")
    arr = arr.astype(np.float64)
    lo, hi = float(arr.min()), float(arr.max())
    # the same per-image rescale as read_image, so a TIFF looks like its PNG twin
    return ((arr - lo) / (hi - lo if hi > lo else 1.0) * 255).round().astype(np.uint8)


def check_same_size(sid: str, image: np.ndarray, mask: np.ndarray, prediction_labels: np.ndarray,
                    paths: dict[str, str | os.PathLike]) -> None:
    """Raise when the mask or prediction of case ``sid`` is not the size of its image (``paths``: role -> file)."""
    h, w = image.shape[:2]
    for role, arr in (("mask", mask), ("prediction", prediction_labels)):
        ah, aw = arr.shape[:2]
        if (ah, aw) != (h, w):
            raise DatasetError(f"{sid}: the {role} {paths.get(role, '?')} is {aw} x {ah} (W x H) but the image "
                               f"{paths.get('image', '?')} is {w} x {h}. Masks and predictions must have their "
                               f"image's size: {_FIX_SIZE}.")


# ------------------------------------------------------------------------------------------------ metadata
def _strip_id(value: str, known: set[str]) -> str:
    """``a.png`` -> ``a``; an nnU-Net image name ``a_0000`` -> ``a`` when only ``a`` is a known id."""
    value = value.strip()
    stem, suffix = os.path.splitext(value)
    if suffix.lower() in PREDICTION_SUFFIXES:
        value = stem
    m = _CHANNEL.fullmatch(value)
    if value not in known and m and m[2] == "0000" and m[1] in known:
        value = m[1]
    return value


def read_metadata(csv_path: str | os.PathLike, ids: Iterable[str]) -> pd.DataFrame:
    """The metadata CSV as one row per id, in ``ids`` order: column ``id``, then the CSV's attribute columns.

    The CSV needs a column ``id`` holding file names without extension (a known image extension is stripped,
    ``a.png`` -> ``a``). Ids that are no image, duplicated ids, or more than half of the images missing from the
    CSV (probably the wrong file) are errors; a few missing images get empty (NaN) attributes.
    """
    path = Path(csv_path)
    ids = [str(i) for i in ids]
    known = set(ids)
    if not path.is_file():
        raise DatasetError(f"{path}: the metadata CSV does not exist. Pass the CSV file, or leave it out.")
    try:
        # utf-8-sig: Excel writes a byte-order mark that would otherwise become part of the first column's name;
        # only empty cells are missing, so attribute values such as "NA" or "None" stay strings
        header = pd.read_csv(path, nrows=0, encoding="utf-8-sig").columns
        # ids stay text ("007" is not 7), whatever spaces surround the column's name
        as_text = {c: str for c in header if str(c).strip() == "id"}
        df = pd.read_csv(path, dtype=as_text, keep_default_na=False, na_values=[""], encoding="utf-8-sig")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: cannot be parsed as CSV ({exc}). Save it as comma-separated UTF-8 text.") from exc
    df.columns = [str(c).strip() for c in df.columns]
    if "id" not in df.columns:
        raise DatasetError(f"{path}: no column named 'id' (columns: {_few(list(df.columns), 10)}). The first column "
                           "must be named id and hold the file names without extension.")
    # a saved DataFrame index ("Unnamed: 0") or trailing commas are not attributes
    df = df.drop(columns=[c for c in df.columns if c.startswith("Unnamed:") and c != "id"])
    if df["id"].isna().any():
        rows = (df.index[df["id"].isna()] + 2).tolist()  # +2: the header is line 1
        raise DatasetError(f"{path}: the id is empty on line(s) {_few(rows)}. Fill it in or delete those lines.")
    df["id"] = [_strip_id(v, known) for v in df["id"]]
    dup = df["id"][df["id"].duplicated()].unique().tolist()
    if dup:
        raise DatasetError(f"{path}: {len(dup)} id(s) appear more than once (e.g. {_few(dup)}); keep one line per "
                           "image (after removing extensions).")
    unknown = [i for i in df["id"] if i not in known]
    if unknown:
        raise DatasetError(f"{path}: {len(unknown)} id(s) are not images of the audit (unknown ids, e.g. "
                           f"{_few(unknown)}). Ids are image file names without extension; remove the extra lines "
                           "or fix the names.")
    listed = set(df["id"])
    missing = [i for i in ids if i not in listed]
    if len(missing) * 2 > len(ids):
        raise DatasetError(f"{path}: {len(missing)} of {len(ids)} images have no line in this CSV (e.g. "
                           f"{_few(missing)}); is it the metadata of another dataset? Ids must be the image file "
                           "names without extension.")
    table = df.set_index("id").reindex(ids)
    table.index.name = "id"
    return table.reset_index()


# --------------------------------------------------------------------------------------------- fingerprint
def folder_fingerprint(pairs: pd.DataFrame) -> str:
    """A 16-hex-digit sha256 of every paired file's name, size and modification time (ns).

    Cheap (no file is read) and changes when any file is replaced, edited, added or removed; an audit output
    folder stores it to tell whether it holds an audit of the same inputs.
    """
    digest = hashlib.sha256()
    for row in pairs[["id", "image", "mask", "prediction"]].itertuples(index=False):
        for role, file in zip(("image", "mask", "prediction"), row[1:]):
            try:
                st = os.stat(file)
            except OSError as exc:
                raise DatasetError(f"{file}: the {role} of {row[0]!r} cannot be read ({exc}).") from exc
            digest.update(f"{row[0]}\t{role}\t{Path(file).name}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]
