"""The 3-D input layer: NIfTI volumes (CT/MR) and the three layouts they come in, paired, read and checked
before any metric is computed.

Why a module of its own: as with the 2-D folders (:mod:`seg4seg_utils.data.folders`), these files come from
outside the project, and a 3-D audit is only as good as its pairing and its geometry. A volume adds two ways
to be silently wrong that a PNG does not have: a prediction can hold the right voxels in another orientation
(same world position, different array order), and a prediction saved from a resampled array can have the
image's shape but another spacing or origin. Both would yield plausible but wrong Dice scores, so every rule
below either reads a file faithfully or stops with a :class:`~seg4seg_utils.data.records.DatasetError` that
names the case or file, says what is wrong and what to do.

Reading (:func:`read_volume`, :func:`read_label_volume`, :func:`read_image_channels`)
    Only NIfTI (``.nii``, ``.nii.gz``, suffix case-insensitive) is read, through nibabel; convert ``.nrrd``,
    ``.mha`` or DICOM first (e.g. with SimpleITK). Every volume is **reoriented to the closest canonical (RAS+)
    orientation** with ``nib.as_closest_canonical``: array axes are flipped/permuted so that they run
    left->Right, posterior->Anterior, inferior->Superior. Image, ground truth and prediction of a case then line
    up voxel for voxel whatever orientation each was stored in, and the affine and spacing are permuted with
    the array. ``spacing`` is the voxel size in mm in (canonical) array axis order, from
    ``header.get_zooms()[:3]``; a zero, negative or non-finite voxel size is an error.

    Dimensions: a 3-D volume is expected. Trailing axes of length 1 (a 4-D ``X x Y x Z x 1`` file, or NIfTI's
    5-D vector layout with single components) are dropped. A 2-D file is an error (use the 2-D audit). A
    genuine 4-D file (``X x Y x Z x C``, the Medical Segmentation Decathlon's multi-modal images) is accepted
    only where channels are allowed (``read_volume(..., channels=True)``, :func:`read_image_channels` given one
    file) and comes back channels-first ``(C, X, Y, Z)``; anywhere else it is an error.

    Images come back float32 (``get_fdata``: NIfTI's scale slope and intercept applied). Label maps are read
    as stored (``np.asanyarray(img.dataobj)``), never interpolated: their values must be whole numbers in
    0..65535 (float files holding whole numbers are fine, fractions are not: probabilities must be thresholded
    first) and come back uint8 (max <= 255) or uint16. With ``labels`` given (e.g. dataset.json's), any other
    value is an error listing the values found and the allowed set.

Geometry (:func:`check_case`)
    A case's ground truth and prediction must have the image's (spatial) shape, spacing and affine, compared
    after canonical reorientation with an absolute tolerance ``atol`` (1e-3 mm by default: NIfTI stores
    geometry as float32, so values written by different tools differ in the last digits). Checked in that
    order, so the message names the first, most specific difference. A mismatch means the file was saved from
    a resampled or cropped array or with another header: save it with the image's affine or resample it onto
    the image grid.

Layouts, each returning one row per case with columns ``id``, ``images`` (list of channel files, in channel
order), ``mask``, ``prediction`` (absolute path strings), sorted by id. Only ``.nii``/``.nii.gz`` files are
considered in a folder; hidden files and other files (nnU-Net's ``plans.json``, ``.npz`` probabilities,
``.pkl``) are ignored. Two files of one case in one folder (``a.nii`` and ``a.nii.gz``) are an error.

* nnU-Net v2 (:func:`pair_nnunet`): ``imagesTs/{case}_{channel:04d}.nii.gz``, ``labelsTs/{case}.nii.gz``,
  predictions ``{case}.nii.gz`` and ``dataset.json`` (next to ``imagesTs``, or in the given folder).
  Every case must have every channel of ``channel_names``; every case needs a label and a prediction; a label,
  prediction or image file of no case (or with no channel suffix, or a channel number beyond the channels) is
  an extra file. All such problems are reported together in one error. ``dataset.json`` parsing is
  documented in :func:`read_dataset_json` (nnU-Net v1's ``modality`` and inverted ``labels`` are accepted).
* MONAI / decathlon datalists (:func:`pair_datalist`): ``{"test": [{"image": ..., "label": ...}, ...]}``;
  ``image`` may be a list of channel files; paths are relative to ``base_dir`` or, by default, the JSON's
  folder. The case name is the (first) image file's name without ``.nii(.gz)`` and without a trailing
  ``_0000``; its prediction is ``{case}.nii(.gz)`` in the predictions folder. The datalist defines the cases,
  so prediction files of other cases are ignored (a run over the whole dataset can be audited per split).
* Plain folders (:func:`pair_volume_folders`): files matched by name; nnU-Net's ``_0000`` is stripped from
  image names when that is what makes them match (as in the 2-D reader), and the case's other channel files
  (``_0001``...) become its further channels; unmatched files in any folder are an error.

Multi-channel images (:func:`embedding_channel`)
    The 2-D embedder sees one channel. The rule: the first channel in the order of preference
    :data:`PREFERRED_CHANNELS` (CT, post-contrast T1, T1, T2, FLAIR) whose name matches, else channel 0.
    Names are compared lowercased with everything but letters and digits removed, against a few synonyms each
    (``T1Gd``, ``t1ce`` and BraTS-2023's ``t1c`` are post-contrast T1; ``T2w``, ``t2w`` are T2...). Why this
    order: the embedding should see the channel that shows anatomy and the target best and that is most
    comparable across datasets - CT itself, else the contrast-enhanced T1 that defines most tumour targets,
    then the anatomical T1/T2 before FLAIR; functional maps (ADC, DWI, perfusion) are never preferred.
"""
from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import nibabel as nib
import numpy as np
import pandas as pd

from seg4seg_utils.data.records import DatasetError

__all__ = [
    "NIFTI_SUFFIXES", "PREFERRED_CHANNELS", "Volume", "read_volume", "read_label_volume", "read_image_channels",
    "read_dataset_json", "pair_nnunet", "pair_datalist", "pair_volume_folders", "check_case", "embedding_channel",
    "case_name",
]

NIFTI_SUFFIXES: tuple[str, ...] = (".nii.gz", ".nii")  # longest first: ".nii.gz" must not be read as ".gz"
# modality -> normalised names that denote it (lowercase, letters and digits only); order = preference
PREFERRED_CHANNELS: tuple[tuple[str, frozenset[str]], ...] = (
    ("CT", frozenset({"ct"})),
    ("T1c", frozenset({"t1c", "t1ce", "t1gd", "t1post", "t1wce", "t1contrast", "t1cwi"})),
    ("T1", frozenset({"t1", "t1w", "t1n", "t1native", "t1wi"})),
    ("T2", frozenset({"t2", "t2w", "t2wi"})),
    ("FLAIR", frozenset({"flair", "t2flair", "t2f"})),
)
_CHANNEL = re.compile(r"(.+)_(\d{4})")  # nnU-Net's channel suffix: case_012_0000
_SHOWN = 5  # names quoted per problem in a message: enough to recognise a pattern, short enough to read
_MAX_LABEL = 65535  # uint16: label maps beyond this are not label maps
_OTHER_VOLUMES = (".nrrd", ".mha", ".mhd", ".dcm", ".nhdr")
_FIX_GEOMETRY = ("Save it with its image's affine (nnU-Net and MONAI's SaveImage do; with nibabel: "
                 "nib.Nifti1Image(array, image_affine)) or resample it onto the image's grid.")


def _few(names: Sequence[Any], n: int = _SHOWN) -> str:
    return ", ".join(str(x) for x in list(names)[:n]) + (", ..." if len(names) > n else "")


def _fmt(values: Sequence[float]) -> str:
    return "(" + ", ".join(f"{float(v):.4g}" for v in values) + ")"


@dataclass
class Volume:
    """One NIfTI volume after canonical reorientation.

    ``array``: 3-D ``(X, Y, Z)``, or 4-D channels-first ``(C, X, Y, Z)`` for a multi-channel image; ``spacing``:
    voxel size in mm per spatial array axis; ``affine``: 4x4 voxel -> world (mm) matrix of the canonical array;
    ``path``: the file read (a multi-channel image: its first channel's file).
    """

    array: np.ndarray
    spacing: tuple[float, float, float]
    affine: np.ndarray
    path: str

    @property
    def shape(self) -> tuple[int, int, int]:
        """The spatial shape (the last three axes)."""
        return tuple(int(s) for s in self.array.shape[-3:])  # type: ignore[return-value]


# ------------------------------------------------------------------------------------------------ reading
def case_name(path: str | os.PathLike) -> str | None:
    """A NIfTI file's name without ``.nii.gz``/``.nii`` (suffix case-insensitive); None for any other file."""
    name = Path(path).name
    low = name.lower()
    for suffix in NIFTI_SUFFIXES:
        if low.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return None


def _load(path: str | os.PathLike, what: str) -> tuple[Path, Any]:
    """Open a NIfTI file lazily (no voxels read yet); errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: the {what} file is missing. Restore it, or fix the folder or datalist.")
    if case_name(path) is None:
        hint = " Convert it to NIfTI first (e.g. with SimpleITK)." if path.name.lower().endswith(_OTHER_VOLUMES) else ""
        raise DatasetError(f"{path}: the {what} is not a NIfTI file (.nii or .nii.gz); only NIfTI is read.{hint}")
    try:
        img = nib.load(path)
    except Exception as exc:  # nibabel raises ImageFileError, OSError, EOFError, ValueError... for bad files
        raise DatasetError(f"{path}: cannot be read as a NIfTI {what} ({exc}). Replace the file.") from exc
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise DatasetError(f"{path}: is a {type(img).__name__}, not a NIfTI image. Save the {what} as NIfTI.")
    return path, img


def _canonical(path: Path, img: Any, what: str, channels: bool) -> tuple[Any, tuple[int, ...]]:
    """Reorient to RAS+; returns the canonical image and the output shape (rules in the module docstring)."""
    shape = tuple(int(s) for s in img.shape)
    if len(shape) < 3:
        raise DatasetError(f"{path}: the {what} is {len(shape)}-D (shape {shape}); a 3-D volume is expected. "
                           "Audit 2-D images with `seg4seg audit` on PNG/TIFF folders.")
    while len(shape) > 3 and shape[-1] == 1:  # X x Y x Z x 1 (and NIfTI's 5-D single-component vectors)
        shape = shape[:-1]
    if len(shape) > 4 or (len(shape) == 4 and not channels):
        raise DatasetError(f"{path}: the {what} is {len(shape)}-D (shape {shape}) where a 3-D volume is expected. "
                           + ("A multi-channel image belongs in one file per channel (nnU-Net: case_0000, "
                              "case_0001...) or in an image entry of a datalist; split it." if len(shape) == 4
                              else "Save one 3-D volume per file."))
    try:
        canon = nib.as_closest_canonical(img)
    except Exception as exc:  # a singular or non-finite affine cannot be reoriented
        raise DatasetError(f"{path}: the {what}'s affine cannot be reoriented ({exc}). Fix the file's header "
                           "(qform/sform).") from exc
    # the reoriented shape (spatial axes permuted), less the dropped trailing axes (never reoriented)
    return canon, tuple(int(s) for s in canon.shape[: len(shape)])


def _spacing(path: Path, canon: Any, what: str) -> tuple[float, float, float]:
    zooms = tuple(float(z) for z in canon.header.get_zooms()[:3])
    if len(zooms) < 3 or not all(np.isfinite(z) and z > 0 for z in zooms):
        raise DatasetError(f"{path}: the {what} has voxel size {zooms}; every voxel size must be a positive "
                           "number of mm. Fix the file's header (pixdim).")
    return zooms  # type: ignore[return-value]


def _finish(path: Path, canon: Any, arr: np.ndarray, shape: tuple[int, ...], what: str) -> Volume:
    arr = arr.reshape(shape)  # drops the trailing length-1 axes
    if arr.ndim == 4:  # NIfTI stores channels last; the package works channels-first
        arr = np.moveaxis(arr, -1, 0)
    return Volume(np.ascontiguousarray(arr), _spacing(path, canon, what), np.asarray(canon.affine, dtype=np.float64),
                  str(path))


def read_volume(path: str | os.PathLike, *, channels: bool = False) -> Volume:
    """An image volume as float32 in canonical (RAS+) orientation; rules in the module docstring.

    ``channels=True`` also accepts a 4-D ``X x Y x Z x C`` file (decathlon multi-modal images), returned
    channels-first ``(C, X, Y, Z)``; otherwise a 4-D file is an error (a trailing axis of length 1 is dropped).
    """
    path, img = _load(path, "image")
    canon, shape = _canonical(path, img, "image", channels)
    try:
        arr = canon.get_fdata(dtype=np.float32)
    except Exception as exc:  # truncated gzip, wrong size on disk...
        raise DatasetError(f"{path}: the image's voxels cannot be read ({exc}). Replace the file.") from exc
    if not np.isfinite(arr).all():
        raise DatasetError(f"{path}: the image holds NaN or infinite values. Replace them (e.g. with the "
                           "background value) before the audit.")
    return _finish(path, canon, arr, shape, "image")


def read_label_volume(path: str | os.PathLike, labels: set[int] | Sequence[int] | None = None,
                      what: str = "label map") -> Volume:
    """A ground-truth or predicted label map as uint8 (or uint16) in canonical orientation, read as stored.

    Values must be whole numbers in 0..65535; with ``labels`` (e.g. dataset.json's values, background 0
    included) any other value is an error that lists them and the allowed set. ``what`` names the file's role
    in messages ("ground truth", "prediction").
    """
    path, img = _load(path, what)
    canon, shape = _canonical(path, img, what, channels=False)
    try:
        arr = np.asanyarray(canon.dataobj)  # as stored (scaled only if the header says so), never interpolated
    except Exception as exc:
        raise DatasetError(f"{path}: the {what}'s voxels cannot be read ({exc}). Replace the file.") from exc
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    elif arr.dtype.kind == "f":
        if not np.isfinite(arr).all():
            raise DatasetError(f"{path}: the {what} holds NaN or infinite values; a label map holds whole-number "
                               "class labels.")
        fractional = arr != np.round(arr)
        if fractional.any():
            shown = _few([f"{v:.3g}" for v in np.unique(arr[fractional])[:_SHOWN + 1]])
            raise DatasetError(f"{path}: the {what} holds non-integer values (e.g. {shown}); a label map holds "
                               "whole-number class labels. Threshold (binary) or argmax (multi-class) "
                               "probabilities before saving.")
    elif arr.dtype.kind not in "iu":
        raise DatasetError(f"{path}: the {what} has unsupported data type {arr.dtype}; save integer labels.")
    lo, hi = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 0.0)
    if lo < 0 or hi > _MAX_LABEL:
        raise DatasetError(f"{path}: the {what} holds values from {lo:g} to {hi:g}; labels must be whole numbers "
                           f"from 0 to {_MAX_LABEL}. Is this an image rather than a label map?")
    arr = arr.astype(np.uint8 if hi <= 255 else np.uint16, copy=False)
    if labels is not None:
        allowed = {int(v) for v in labels}
        counts = np.bincount(arr.ravel(), minlength=1)  # far cheaper than np.unique on millions of voxels
        unknown = sorted(int(v) for v in np.flatnonzero(counts) if int(v) not in allowed)
        if unknown:
            raise DatasetError(f"{path}: the {what} holds label value(s) {_few(unknown)}, which are not among the "
                               f"allowed labels {sorted(allowed)} (dataset.json). Relabel the file or add the "
                               "classes to dataset.json's labels.")
    return _finish(path, canon, arr, shape, what)


def _geometry_problem(a: Volume, b: Volume, atol: float) -> str | None:
    """How volume ``b`` differs from ``a`` in grid geometry (shape, spacing, affine), or None."""
    if a.shape != b.shape:
        return f"shape {b.shape} but {a.shape}"
    if not np.allclose(a.spacing, b.spacing, rtol=0, atol=atol):
        return f"spacing {_fmt(b.spacing)} mm but {_fmt(a.spacing)} mm"
    if not np.allclose(a.affine, b.affine, rtol=0, atol=atol):
        if not np.allclose(a.affine[:3, 3], b.affine[:3, 3], rtol=0, atol=atol):
            return f"origin {_fmt(b.affine[:3, 3])} mm but {_fmt(a.affine[:3, 3])} mm (affine translation)"
        return (f"direction matrix {np.round(b.affine[:3, :3], 4).tolist()} but "
                f"{np.round(a.affine[:3, :3], 4).tolist()} (affine rotation/scaling)")
    return None


def read_image_channels(paths: str | os.PathLike | Sequence[str | os.PathLike], atol: float = 1e-3) -> Volume:
    """A case's image from its channel files: 3-D for one channel, channels-first ``(C, X, Y, Z)`` for several.

    One file may itself be 4-D (``X x Y x Z x C``, decathlon style). Several files must share one grid
    (shape, spacing, affine within ``atol``), else a DatasetError names both files.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    paths = list(paths)
    if not paths:
        raise ValueError("no image files given")
    if len(paths) == 1:
        return read_volume(paths[0], channels=True)
    vols = [read_volume(p) for p in paths]
    for v in vols[1:]:
        problem = _geometry_problem(vols[0], v, atol)
        if problem:
            raise DatasetError(f"{v.path}: this channel has {problem} of channel {vols[0].path}. All channels of a "
                               "case must share one voxel grid; resample the channel onto the first one.")
    first = vols[0]
    return Volume(np.stack([v.array for v in vols]), first.spacing, first.affine, first.path)


def check_case(case_id: str, image: Volume, truth: Volume, prediction: Volume, atol: float = 1e-3) -> None:
    """Raise a DatasetError naming the case and files when truth or prediction is not on the image's grid.

    Compared in order: spatial shape, spacing (mm, within ``atol``), affine (within ``atol``), all after
    canonical reorientation, so a file stored in another orientation but covering the same voxels passes.
    """
    for role, vol in (("ground truth", truth), ("prediction", prediction)):
        if vol.array.ndim != 3:
            raise DatasetError(f"{case_id}: the {role} {vol.path} has shape {vol.array.shape}; a label map is 3-D.")
        problem = _geometry_problem(image, vol, atol)
        if problem:
            what, _, theirs = problem.partition(" but ")
            raise DatasetError(f"{case_id}: the {role} {vol.path} has {what} but the image {image.path} has "
                               f"{theirs}. A {role} must lie on its image's voxel grid. {_FIX_GEOMETRY}")


# ----------------------------------------------------------------------------------------- dataset.json
def _int_label(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def read_dataset_json(path: str | os.PathLike) -> dict[str, Any]:
    """Parse an nnU-Net ``dataset.json`` into ``labels``, ``label_values``, ``channel_names``, ``file_ending``.

    * ``labels``: name -> value as in the file (v2: ``{"background": 0, "liver": 1}``; region-based datasets
      map a name to a list of values, kept as a tuple). nnU-Net v1's inverted form ``{"0": "background"}``
      is turned round.
    * ``label_values``: the sorted label values that may occur in label files (0 always included).
    * ``channel_names``: the names in channel order (v2 ``channel_names`` or v1 ``modality``,
      ``{"0": "CT"}``); the keys must be 0..N-1.
    * ``file_ending``: default ``.nii.gz``; anything but ``.nii.gz``/``.nii`` is an error (NIfTI only).
    """
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(f"{path}: cannot be read as JSON ({exc}). Fix or replace dataset.json.") from exc
    if not isinstance(raw, dict):
        raise DatasetError(f"{path}: dataset.json must hold a JSON object with channel_names and labels.")
    channels = raw.get("channel_names", raw.get("modality"))
    labels = raw.get("labels")
    if not isinstance(channels, dict) or not channels or not isinstance(labels, dict) or not labels:
        raise DatasetError(f"{path}: dataset.json needs 'channel_names' (e.g. {{\"0\": \"CT\"}}) and 'labels' "
                           "(e.g. {\"background\": 0, \"liver\": 1}), as nnU-Net v2 writes them.")
    if {str(k) for k in channels} != {str(i) for i in range(len(channels))}:  # JSON keys are strings
        raise DatasetError(f"{path}: channel_names has keys {sorted(channels)}; they must be 0..{len(channels) - 1}.")
    channel_names = [str(channels[str(i)]) for i in range(len(channels))]
    if all(str(k).isdigit() for k in labels) and all(isinstance(v, str) for v in labels.values()):
        labels = {name: int(k) for k, name in labels.items()}  # nnU-Net v1: {"0": "background", "1": "liver"}
    parsed: dict[str, int | tuple[int, ...]] = {}
    values = {0}
    for name, value in labels.items():
        if _int_label(value):
            parsed[str(name)] = value
            values.add(value)
        elif isinstance(value, list) and value and all(_int_label(v) for v in value):  # an nnU-Net region
            parsed[str(name)] = tuple(value)
            values.update(value)
        else:
            raise DatasetError(f"{path}: label {name!r} has value {value!r}; a label is a whole number >= 0 (or, "
                               "for nnU-Net regions, a list of them).")
    ending = str(raw.get("file_ending", ".nii.gz"))
    if ending.lower() not in NIFTI_SUFFIXES:
        raise DatasetError(f"{path}: file_ending is {ending!r}; only NIfTI (.nii.gz, .nii) is read. Convert the "
                           "images, labels and predictions to NIfTI.")
    return {"labels": parsed, "label_values": sorted(values), "channel_names": channel_names,
            "file_ending": ending, "path": str(path)}


# ------------------------------------------------------------------------------------------------ pairing
def _scan(folder: str | os.PathLike, what: str) -> dict[str, Path]:
    """case name -> NIfTI file of one folder; hidden and non-NIfTI files are ignored."""
    folder = Path(folder)
    if not folder.is_dir():
        state = "is a file, not a folder" if folder.exists() else "does not exist"
        raise DatasetError(f"{folder}: the {what} folder {state}. Pass the folder holding the {what}.")
    found: dict[str, list[Path]] = {}
    others: list[str] = []
    for p in sorted(folder.iterdir()):
        if p.name.startswith(".") or not p.is_file():  # .DS_Store, macOS ._resource forks, sub-folders
            continue
        stem = case_name(p)
        if stem is None:
            others.append(p.name)
        else:
            found.setdefault(stem, []).append(p)
    if not found:
        held = f" It holds only {_few(others)}." if others else " It is empty."
        hint = (" Convert other volume formats to NIfTI first (e.g. with SimpleITK)."
                if any(o.lower().endswith(_OTHER_VOLUMES) for o in others) else "")
        raise DatasetError(f"{folder}: no NIfTI {what} (.nii, .nii.gz) in this folder.{held}{hint}")
    for stem, files in found.items():
        if len(files) > 1:
            raise DatasetError(f"{folder}: {len(files)} files have the case name {stem!r}: "
                               f"{_few([f.name for f in files])}. Keep one and move the others away.")
    return {stem: files[0] for stem, files in found.items()}


def _channels_of(stems: dict[str, Path]) -> tuple[dict[str, dict[int, Path]], list[str]]:
    """Image stems -> case -> channel -> file for ``{case}_{dddd}`` names; the names without a channel suffix."""
    cases: dict[str, dict[int, Path]] = {}
    plain: list[str] = []
    for stem, p in stems.items():
        m = _CHANNEL.fullmatch(stem)
        if m:
            cases.setdefault(m[1], {})[int(m[2])] = p
        else:
            plain.append(p.name)
    return cases, plain


def _table(rows: dict[str, tuple[list[Path], Path, Path]]) -> pd.DataFrame:
    ids = sorted(rows)
    return pd.DataFrame({"id": ids,
                         "images": [[os.path.abspath(p) for p in rows[i][0]] for i in ids],
                         "mask": [os.path.abspath(rows[i][1]) for i in ids],
                         "prediction": [os.path.abspath(rows[i][2]) for i in ids]},
                        columns=["id", "images", "mask", "prediction"])


def _match_problems(cases: dict[str, Any], found: dict[str, dict[str, Path]], folders: dict[str, Path],
                    example: dict[str, str]) -> list[str]:
    """Cases without a mask/prediction, and masks/predictions of no case (``example``: case -> image file)."""
    problems = []
    for role, what in (("mask", "ground truth"), ("prediction", "prediction")):
        lacking = sorted(set(cases) - set(found[role]))
        if lacking:
            problems.append(f"{len(lacking)} case(s) have no {what} in {folders[role]}/ "
                            f"(e.g. {_few([example[c] for c in lacking])})")
    for role in ("mask", "prediction"):
        extra = sorted(set(found[role]) - set(cases))
        if extra:
            problems.append(f"{len(extra)} {role} file(s) in {folders[role]}/ have no image "
                            f"(e.g. {_few([found[role][c].name for c in extra])})")
    return problems


def _nnunet_paths(images: Path, labels: str | os.PathLike | None,
                  dataset_json: str | os.PathLike | None) -> tuple[Path, Path, Path]:
    """(images folder, labels folder, dataset.json) from a raw dataset folder or its imagesTs folder."""
    images_dir = images / "imagesTs" if (images / "imagesTs").is_dir() else images
    if labels is not None:
        labels_dir = Path(labels)
    elif images_dir.name.startswith("images"):  # imagesTs -> labelsTs, imagesTr -> labelsTr
        labels_dir = images_dir.parent / ("labels" + images_dir.name[len("images"):])
    else:
        raise DatasetError(f"{images_dir}: not an nnU-Net imagesTs/imagesTr folder, so its labels folder is unknown. "
                           "Pass the labels folder.")
    if dataset_json is not None:
        json_path = Path(dataset_json)
        if not json_path.is_file():
            raise DatasetError(f"{json_path}: dataset.json does not exist. Pass the dataset's dataset.json.")
    else:
        candidates = list(dict.fromkeys([images / "dataset.json", images_dir.parent / "dataset.json"]))
        json_path = next((c for c in candidates if c.is_file()), candidates[0])
        if not json_path.is_file():
            raise DatasetError(f"no dataset.json in {_few([str(c.parent) for c in candidates])}: nnU-Net keeps it next "
                               "to imagesTs. Pass dataset_json=, or pair plain folders with pair_volume_folders.")
    return images_dir, labels_dir, json_path


def pair_nnunet(images: str | os.PathLike, labels: str | os.PathLike | None,
                predictions: str | os.PathLike, dataset_json: str | os.PathLike | None = None,
                ) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Pair an nnU-Net v2 test set with its predictions: ``(table, dataset)``.

    ``images``: the raw dataset folder (holding ``imagesTs`` and ``dataset.json``) or the ``imagesTs`` folder
    itself; ``labels``: the ground-truth folder, None for the ``labelsTs`` beside ``imagesTs``;
    ``predictions``: nnU-Net's output folder (``{case}.nii.gz``; its json/npz/pkl files are ignored);
    ``dataset_json``: None to look in ``images`` and in the parent of ``imagesTs``. The table has columns
    ``id, images, mask, prediction`` (``images``: every channel file in channel order); ``dataset`` is
    :func:`read_dataset_json`'s result. All pairing problems are reported in one DatasetError.
    """
    images_dir, labels_dir, json_path = _nnunet_paths(Path(images), labels, dataset_json)
    dataset = read_dataset_json(json_path)
    n_channels = len(dataset["channel_names"])
    folders = {"image": images_dir, "mask": labels_dir, "prediction": Path(predictions)}
    image_stems = _scan(images_dir, "images")
    found = {"mask": _scan(labels_dir, "ground-truth label maps"), "prediction": _scan(predictions, "predictions")}
    cases, plain = _channels_of(image_stems)
    problems = []
    if plain:
        problems.append(f"{len(plain)} image file(s) in {images_dir}/ lack the channel suffix _0000 "
                        f"(e.g. {_few(plain)})")
    beyond = sorted(p.name for ch in cases.values() for c, p in ch.items() if c >= n_channels)
    if beyond:
        problems.append(f"{len(beyond)} image file(s) have a channel number beyond the {n_channels} channel(s) of "
                        f"dataset.json (e.g. {_few(beyond)})")
    incomplete = sorted(f"{case}_{c:04d}" for case, ch in cases.items() for c in range(n_channels) if c not in ch)
    if incomplete:
        problems.append(f"{len(incomplete)} channel file(s) are missing in {images_dir}/ "
                        f"(e.g. {_few(incomplete)}; dataset.json lists {n_channels} channel(s): "
                        f"{', '.join(dataset['channel_names'])})")
    example = {case: min(ch.values()).name for case, ch in cases.items()}
    problems += _match_problems(cases, found, folders, example)
    if problems:
        raise DatasetError("The nnU-Net folders do not match: " + "; ".join(problems) + ". Images are named "
                           "{case}_{channel:04d}.nii.gz, labels and predictions {case}.nii.gz; add the missing "
                           "files or move the extra ones away.")
    rows = {case: ([ch[c] for c in range(n_channels)], found["mask"][case], found["prediction"][case])
            for case, ch in cases.items()}
    return _table(rows), dataset


def pair_datalist(json_path: str | os.PathLike, predictions: str | os.PathLike, key: str = "test",
                  base_dir: str | os.PathLike | None = None) -> pd.DataFrame:
    """Pair a MONAI/decathlon datalist's ``key`` entries with a predictions folder.

    Entries are ``{"image": path or [channel paths], "label": path}``; relative paths are resolved against
    ``base_dir`` (default: the JSON's folder). Case name: the (first) image's file name without
    ``.nii(.gz)`` and a trailing ``_0000``; its prediction is ``{case}.nii(.gz)`` in ``predictions``
    (other prediction files are ignored). Entries without a label, missing files, duplicate case names and
    missing predictions are reported together in one DatasetError.
    """
    json_path = Path(json_path)
    try:
        raw = json.loads(json_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(f"{json_path}: cannot be read as a JSON datalist ({exc}). Fix or replace it.") from exc
    if not isinstance(raw, dict) or key not in raw:
        keys = sorted(raw) if isinstance(raw, dict) else []
        raise DatasetError(f"{json_path}: the datalist has no list {key!r} (its keys: {_few(keys) or 'none'}). "
                           "Pass key= one of them, e.g. 'test', 'validation' or 'training'.")
    entries = raw[key]
    if not isinstance(entries, list) or not entries:
        raise DatasetError(f"{json_path}: {key!r} must be a non-empty list of {{\"image\": ..., \"label\": ...}}.")
    base = Path(base_dir) if base_dir is not None else json_path.parent
    found = _scan(predictions, "predictions")
    rows: dict[str, tuple[list[Path], Path, Path]] = {}
    unlabelled, bad, missing, duplicate, no_prediction = [], [], [], [], []
    for i, entry in enumerate(entries):
        image = entry.get("image") if isinstance(entry, dict) else entry
        channels = image if isinstance(image, list) else [image]
        if not channels or not all(isinstance(c, str) and c for c in channels):
            bad.append(f"entry {i}")
            continue
        label = entry.get("label") if isinstance(entry, dict) else None
        if not isinstance(label, str) or not label:
            unlabelled.append(Path(channels[0]).name)
            continue
        files = [base / c for c in channels]  # an absolute path stays absolute
        label_file = base / label
        missing += [str(f) for f in [*files, label_file] if not f.is_file()]
        stem = case_name(files[0])
        if stem is None:
            bad.append(files[0].name)
            continue
        m = _CHANNEL.fullmatch(stem)
        case = m[1] if m and m[2] == "0000" else stem
        if case in rows:
            duplicate.append(case)
        elif case not in found:
            no_prediction.append(case)
        else:
            rows[case] = (files, label_file, found[case])
    problems = []
    for items, what in ((bad, "entries have no NIfTI image path"), (unlabelled, "entries have no label"),
                        (missing, "listed files do not exist"), (duplicate, "case names occur twice"),
                        (no_prediction, f"cases have no prediction {{case}}.nii.gz in {predictions}/")):
        if items:
            problems.append(f"{len(items)} {what} (e.g. {_few(items)})")
    if problems:
        raise DatasetError(f"{json_path}: the datalist {key!r} does not match: " + "; ".join(problems) + ". Paths "
                           f"are relative to {base}; the audit needs a label for every case; a prediction is named "
                           "after its image file without .nii.gz and _0000.")
    return _table(rows)


def pair_volume_folders(images: str | os.PathLike, masks: str | os.PathLike,
                        predictions: str | os.PathLike) -> pd.DataFrame:
    """Pair three plain folders of NIfTI files by case name: columns ``id, images, mask, prediction``.

    An image name's nnU-Net channel suffix is stripped when stripping ``_0000`` makes names match the masks or
    predictions (decided per folder, only on that evidence, so data whose own names end in ``_0000`` keep them);
    the case's ``_0001``... files are then its further channels and must be numbered without gaps. Images
    without a mask or prediction, and masks or predictions without an image, are reported in one DatasetError.
    """
    folders = {"image": Path(images), "mask": Path(masks), "prediction": Path(predictions)}
    stems = _scan(images, "images")
    found = {"mask": _scan(masks, "ground-truth label maps"), "prediction": _scan(predictions, "predictions")}
    others = set(found["mask"]) | set(found["prediction"])
    nnunet = any((m := _CHANNEL.fullmatch(s)) and m[2] == "0000" and m[1] in others and s not in others
                 for s in stems)
    cases: dict[str, dict[int, Path]] = {}
    if nnunet:
        channel_cases, _ = _channels_of(stems)
        for s, p in stems.items():
            m = _CHANNEL.fullmatch(s)
            if m and 0 in channel_cases[m[1]]:
                continue  # gathered below with its case
            cases[s] = {0: p}  # a name without a channel suffix, or a _0001 file of no _0000 case
        for case, ch in channel_cases.items():
            if 0 in ch:
                if case in cases:
                    raise DatasetError(f"{folders['image']}: both {cases[case][0].name} and {ch[0].name} are the "
                                       f"image of case {case!r}. Keep one and move the other away.")
                cases[case] = ch
    else:
        cases = {s: {0: p} for s, p in stems.items()}
    gaps = sorted(f"{case}_{c:04d}" for case, ch in cases.items() for c in range(max(ch)) if c not in ch)
    problems = ([f"{len(gaps)} channel file(s) are missing in {folders['image']}/ (e.g. {_few(gaps)})"]
                if gaps else [])
    problems += _match_problems(cases, found, folders, {c: ch[min(ch)].name for c, ch in cases.items()})
    if problems:
        raise DatasetError("The folders do not match: " + "; ".join(problems) + ". Files are matched by name "
                           "without .nii(.gz) (an nnU-Net channel suffix _0000 on image names is ignored); add the "
                           "missing files or move the extra ones away.")
    return _table({c: ([ch[i] for i in sorted(ch)], found["mask"][c], found["prediction"][c])
                   for c, ch in cases.items()})


# --------------------------------------------------------------------------------------------- channels
def _normalise(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", str(name).lower())


def embedding_channel(channel_names: Sequence[str] | Mapping[Any, str]) -> int:
    """The channel the 2-D embedder uses: the first match in :data:`PREFERRED_CHANNELS` order, else 0.

    ``channel_names``: names in channel order, or dataset.json's ``{"0": "T2", "1": "ADC"}`` mapping.
    """
    if isinstance(channel_names, Mapping):
        names = [channel_names[k] for k in sorted(channel_names, key=int)]
    else:
        names = list(channel_names)
    if not names:
        raise ValueError("no channel names given")
    normalised = [_normalise(n) for n in names]
    for _, synonyms in PREFERRED_CHANNELS:
        for i, n in enumerate(normalised):
            if n in synonyms:
                return i
    return 0
