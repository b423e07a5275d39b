"""The 3-D side of ``seg4seg audit``: NIfTI volumes in, the same stages and report as for 2-D images.

:func:`seg4seg_utils.studies.audit.audit` runs in *volume mode* when its inputs are volumes
(:func:`is_volume_input`: a folder holding ``.nii``/``.nii.gz`` files, an nnU-Net raw dataset or its
``imagesTs`` folder, or a MONAI/decathlon datalist). This module supplies only what differs from 2-D; the
reduce / BIC / slice / judge / name / report stages are audit()'s own, written once.

1. **Pair** (:func:`pair_volume_inputs`): an nnU-Net ``imagesTs`` (with ``dataset.json`` beside it, whose labels
   bound the label values and whose channel names pick the embedding channel), a datalist (``pair_datalist``;
   a ``labels`` + ``modality``/``channel_names`` entry in the same JSON is read like a dataset.json), or three
   plain folders (``pair_volume_folders``). Every reader and check is :mod:`seg4seg_utils.data.volumes`'s, so bad
   inputs stop with its DatasetError naming the case or file.
2. **Score and describe** (:func:`score_and_describe_volumes`), one case at a time on joblib workers (a worker
   holds one case's image, truth and prediction; what comes back are a few 2-D planes and a row, so memory is
   bounded by a few volumes whatever the number of cases): read, ``check_case``, ``volume_metrics``
   (spacing-aware Dice, IoU, PPV, NPV, surface Dice at 1 mm, HD95, per class with several classes) and
   ``describe_volume``. Written into the record dataset per case:

   * ``images/{case}.png``: the **central ground-truth plane** perpendicular to the last (canonical: axial)
     axis, the plane holding the median ground-truth voxel along that axis (``volume_planes`` with one plane,
     the volume's 1st-99th percentile window, native pixels), and ``masks/{case}.png`` /
     ``predictions/{case}.png``: the ground truth and the prediction on that plane. Galleries and the slice
     browser therefore work unchanged and show that plane with its overlays.
   * ``planes/{case}_{k}.png``, k < :data:`N_PLANES` (3): the planes the embedder sees, at the ground truth's
     voxel quantiles 1/6, 1/2, 5/6 along the same axis (``volume_planes``: every plane cuts the target, an
     empty truth gives the volume's centre planes), resampled to square pixels.

3. **Embed** (:func:`embed_volumes`): one vector per case, the 2-D embedder on its planes pooled by their
   mean (``embed_volume``; CLIP's unit vectors stay unit length), cached in ``OUT/work/cache/embeddings`` with
   the 2-D cache's format (``stack_and_cache`` / ``load_cache``), keyed by the embedder, the dataset's config
   hash, the number of planes and the pooling.

Why these planes and this pooling: the 2-D embedders see pictures, and the target is what a failure is about,
so the planes go through the ground truth (as the ``x0*M_GT`` variant looks at the target), spread over it so a
lesion at one end is seen; three planes along one axis cost three 2-D embeddings per case. The mean keeps what
the planes have in common (scanner, contrast, anatomy) rather than one plane's outlier. The alternatives
(:data:`VOLUME_PLANES`: one central plane, max pooling, one plane per axis; ``audit(volume_planes=...)``) are
compared on a planted failure by :mod:`seg4seg_utils.studies.volume_study` (notebook 14); a 3-D encoder is not
among them.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from seg4seg_utils.data.folders import folder_fingerprint
from seg4seg_utils.data.records import DatasetError, SampleTable, build_dataset, config_hash, read_image
from seg4seg_utils.data.volumes import (case_name, check_case, embedding_channel, pair_datalist, pair_nnunet,
                                        pair_volume_folders, read_dataset_json, read_image_channels,
                                        read_label_volume)
from seg4seg_utils.discovery.volume_features import central_plane_index  # re-exported: the plane rule's home
from seg4seg_utils.studies.audit import record_scored

__all__ = ["N_PLANES", "PLANE_AXIS", "POOL", "DEFAULT_VOLUME_PLANES", "VOLUME_PLANES", "VolumeInputs",
           "is_volume_input", "pair_volume_inputs", "score_and_describe_volumes", "embed_volumes",
           "central_plane_index", "volume_words", "performance_names"]

#: planes per case the embedder sees (at the ground truth's voxel quantiles (k + 0.5) / N_PLANES)
N_PLANES = 3
#: the axis the planes are perpendicular to: the last canonical (RAS+) axis, i.e. axial planes
PLANE_AXIS = 2
#: how the planes' embeddings become the case's vector
POOL = "mean"
_CACHE_FORMAT = 1
#: the embedding alternatives (``audit(volume_planes=...)``): name -> (planes per axis, axes, pooling). The default
#: is the rule above (3 axial planes through the truth, mean-pooled); the others exist to be compared with it
#: (:mod:`seg4seg_utils.studies.volume_study`): ``axial1`` the central axial plane only, ``axial3-max`` the same 3
#: planes max-pooled, ``axes3-mean`` one central plane per axis (``planes_from_axes``: axial, coronal, sagittal)
#: mean-pooled. Every plane goes through the ground truth (its voxel quantiles), resampled to square pixels.
VOLUME_PLANES: dict[str, tuple[int, tuple[int, ...], str]] = {
    "axial3-mean": (N_PLANES, (PLANE_AXIS,), POOL),
    "axial1": (1, (PLANE_AXIS,), "mean"),
    "axial3-max": (N_PLANES, (PLANE_AXIS,), "max"),
    "axes3-mean": (1, (2, 1, 0), "mean"),
}
DEFAULT_VOLUME_PLANES = "axial3-mean"


def _check_planes(name: str) -> tuple[int, tuple[int, ...], str]:
    if name not in VOLUME_PLANES:
        raise ValueError(f"volume_planes must be one of {sorted(VOLUME_PLANES)}, got {name!r}")
    return VOLUME_PLANES[name]


@dataclass
class VolumeInputs:
    """Paired volume cases and what the audit records of them.

    ``pairs``: ``id, images, mask, prediction`` (``images``: channel files in order); ``inputs``: the folders
    (or datalist) as the audit record and report name them; ``label_values``: allowed label values (0 included)
    from dataset.json, None when unknown; ``channel``: the image channel the embedder sees."""

    pairs: pd.DataFrame
    inputs: dict[str, str]
    label_values: list[int] | None
    channel: int
    channel_names: list[str] | None = None
    planes: str = DEFAULT_VOLUME_PLANES  # the embedding alternative (VOLUME_PLANES)

    def fingerprint(self) -> str:
        """folder_fingerprint over every channel file, the truth and the prediction of every case."""
        flat = self.pairs.explode("images").rename(columns={"images": "image"})
        extra = [self.inputs["dataset_json"]] if self.inputs.get("dataset_json") else []
        digest = folder_fingerprint(flat)
        for path in extra:  # the label set and channel names come from here: a change must recompute
            st = os.stat(path)
            digest += f"-{st.st_size}-{st.st_mtime_ns}"
        return digest

    def config(self) -> dict[str, Any]:
        config = {"kind": "volumes", "label_values": self.label_values, "channel": self.channel,
                  "n_planes": N_PLANES, "plane_axis": PLANE_AXIS}
        if self.planes != DEFAULT_VOLUME_PLANES:  # the default's key stays what it was
            per_axis, axes, _ = _check_planes(self.planes)
            config.update(volume_planes=self.planes, n_planes=per_axis * len(axes))
        return config


# ------------------------------------------------------------------------------------------ pairing
def _holds_nifti(folder: str | os.PathLike | None) -> bool:
    if folder is None or not Path(folder).is_dir():
        return False
    return any(case_name(p) is not None for p in Path(folder).iterdir() if not p.name.startswith("."))


def _nnunet_layout(images: Path) -> bool:
    """An nnU-Net raw dataset folder (imagesTs + dataset.json) or its imagesTs/imagesTr folder."""
    if (images / "imagesTs").is_dir() and (images / "dataset.json").is_file():
        return True
    return images.name.startswith("images") and (images.parent / "dataset.json").is_file()


def is_volume_input(images: str | os.PathLike | None, masks: str | os.PathLike | None,
                    predictions: str | os.PathLike | None) -> bool:
    """True when the audit's inputs are volumes: any of the folders holds NIfTI files, or ``images`` is an
    nnU-Net raw dataset (or its imagesTs folder)."""
    if images is not None and _nnunet_layout(Path(images)):
        return True
    return any(_holds_nifti(f) for f in (images, masks, predictions))


def _label_info(dataset: dict[str, Any] | None) -> tuple[list[int] | None, int, list[str] | None]:
    if dataset is None:
        return None, 0, None
    return list(dataset["label_values"]), embedding_channel(dataset["channel_names"]), dataset["channel_names"]


def pair_volume_inputs(images: str | os.PathLike | None, masks: str | os.PathLike | None,
                       predictions: str | os.PathLike, datalist: str | os.PathLike | None = None,
                       datalist_key: str = "test", planes: str = DEFAULT_VOLUME_PLANES) -> VolumeInputs:
    """Pair the cases (module docstring, step 1); raises the readers' DatasetError on any mismatch. ``planes``:
    the embedding alternative (:data:`VOLUME_PLANES`), recorded for the later steps."""
    _check_planes(planes)
    if predictions is None:
        raise DatasetError("the predictions folder is needed (--predictions).")
    dataset_json = None
    if datalist is not None:
        if images is not None or masks is not None:
            raise DatasetError("give either --datalist or --images/--masks, not both: the datalist names the "
                               "images and the ground truth.")
        pairs = pair_datalist(datalist, predictions, key=datalist_key)
        raw: Any = None
        try:
            raw = json.loads(Path(datalist).read_text())
        except (OSError, ValueError):
            pass
        dataset = None
        if isinstance(raw, dict) and "labels" in raw and ("channel_names" in raw or "modality" in raw):
            dataset, dataset_json = read_dataset_json(datalist), str(Path(datalist).resolve())
        src = str(Path(datalist).resolve())
        inputs = {"images": f"{src} [{datalist_key}]", "masks": f"{src} [{datalist_key}]"}
    else:
        if images is None:
            raise DatasetError("the images folder is needed (--images), or a datalist (--datalist).")
        if _nnunet_layout(Path(images)):
            pairs, dataset = pair_nnunet(images, masks, predictions)
            dataset_json = str(Path(dataset["path"]).resolve())
        else:
            if masks is None:
                raise DatasetError(f"{images}: not an nnU-Net imagesTs folder with a dataset.json beside it, so the "
                                   "ground-truth folder is needed (--masks).")
            pairs, dataset = pair_volume_folders(images, masks, predictions), None
        inputs = {"images": str(Path(images).resolve()),
                  "masks": str(Path(masks).resolve()) if masks is not None else str(Path(pairs["mask"].iat[0]).parent)}
    inputs["predictions"] = str(Path(predictions).resolve())
    inputs["kind"] = "volumes"
    if dataset_json:
        inputs["dataset_json"] = dataset_json
    label_values, channel, names = _label_info(dataset)
    return VolumeInputs(pairs, inputs, label_values, channel, names, planes)


# ------------------------------------------------------------------------------------------ per case
def _score_volume_chunk(chunk: list[tuple[str, list[str], str, str]], label_values: list[int] | None,
                        channel: int, planes_name: str = DEFAULT_VOLUME_PLANES) -> list[tuple]:
    """Read, check, score, describe and cut planes of a few cases (one joblib task), one case in memory at a
    time: (id, gallery plane, truth plane, predicted plane, embedding planes, row) each."""
    from seg4seg_utils.discovery.volume_features import describe_volume, planes_from_axes, volume_planes
    from seg4seg_utils.model.volume_metrics import volume_metrics

    foreground = None if label_values is None else [v for v in label_values if v > 0] or None
    out = []
    for sid, image_paths, mask_path, pred_path in chunk:
        image = read_image_channels(image_paths)
        truth = read_label_volume(mask_path, label_values, what="ground truth")
        pred = read_label_volume(pred_path, label_values, what="prediction")
        check_case(sid, image, truth, pred)
        arr = image.array if image.array.ndim == 3 else image.array[channel if channel < len(image.array) else 0]
        t, p = truth.array, pred.array
        row = {"id": sid, **volume_metrics(t, p, image.spacing, labels=foreground),
               **describe_volume(arr, image.spacing, t, p)}
        i = central_plane_index(t)
        shown = volume_planes(arr, t, 1, axis=PLANE_AXIS)[0]  # native pixels: the label planes overlay it 1:1
        per_axis, axes, _ = _check_planes(planes_name)
        if len(axes) == 1:
            planes = volume_planes(arr, t, per_axis, axis=axes[0], spacing=image.spacing)
        else:  # planes_from_axes: axial, coronal, sagittal
            planes = planes_from_axes(arr, t, per_axis, spacing=image.spacing)
        out.append((sid, shown, np.take(t, i, axis=PLANE_AXIS), np.take(p, i, axis=PLANE_AXIS), planes, row))
        del image, truth, pred, arr, t, p
    return out


def score_and_describe_volumes(vin: VolumeInputs, dataset: Path, config: dict[str, Any], progress: bool = True,
                               n_jobs: int = 2, chunk: int = 2) -> tuple[SampleTable, pd.DataFrame]:
    """One pass over the cases (module docstring, step 2); returns the record dataset and the per-case table.
    Reused when ``dataset`` already holds the same ``config``. ``n_jobs`` never changes a value."""
    from joblib import Parallel, delayed

    items = [(str(r.id), list(r.images), str(r.mask), str(r.prediction)) for r in vin.pairs.itertuples(index=False)]
    chunks = [items[i:i + chunk] for i in range(0, len(items), chunk)]

    def build(writer) -> dict[str, Any]:
        runner = Parallel(n_jobs=min(n_jobs, len(chunks)), return_as="generator")
        tasks = (delayed(_score_volume_chunk)(c, vin.label_values, vin.channel, vin.planes) for c in chunks)
        record_scored(writer, runner(tasks), len(items), "volume", progress)
        meta = {"kind": "audit-volumes", "n_planes": N_PLANES, "plane_axis": PLANE_AXIS}
        if vin.planes != DEFAULT_VOLUME_PLANES:
            meta.update(volume_planes=vin.planes, n_planes=int(config["n_planes"]))
        return meta

    table = build_dataset(dataset, config, build, validate="none")
    return table, pd.read_csv(dataset / "per_image.csv", dtype={"id": str})


# ------------------------------------------------------------------------------------------ embedding
def embed_volumes(table: SampleTable, embedder: Any, cache_dir: str | os.PathLike | None,
                  progress: bool = True) -> Any:
    """One vector per case: the embedder on its ``planes/{case}_{k}.png``, pooled (``embed_volume``), cached
    like the 2-D embeddings; returns :class:`~seg4seg_utils.discovery.embed.Embeddings` in table order."""
    from seg4seg_utils.discovery.embed import Embeddings, load_cache, slug, stack_and_cache
    from seg4seg_utils.discovery.volume_features import embed_volume

    sub = table.split("test")
    ids = sub.df["id"].astype(str).tolist()
    n_planes = int(table.meta.get("n_planes", N_PLANES))
    planes_name = str(table.meta.get("volume_planes", DEFAULT_VOLUME_PLANES))
    pool = _check_planes(planes_name)[2]
    variant = f"volume-planes{n_planes}-{pool}" if planes_name == DEFAULT_VOLUME_PLANES else \
        f"volume-planes-{planes_name}"  # the default's key is unchanged; an alternative's names it
    key = {"format": _CACHE_FORMAT, **embedder.key_fields(), "variant": variant,
           "plane_axis": int(table.meta.get("plane_axis", PLANE_AXIS)),
           "dataset": table.meta.get("config_hash") or str(Path(table.root).resolve()), "split": "test"}
    npy = sidecar = None
    if cache_dir is not None:
        cache = Path(cache_dir)
        cache.mkdir(parents=True, exist_ok=True)
        tag = f"planes{n_planes}" if planes_name == DEFAULT_VOLUME_PLANES else slug(planes_name)
        stem = (f"{slug(Path(table.root).name)}_test_volume-{tag}_{slug(embedder.key_name)}_"
                f"{config_hash(key)}")
        npy, sidecar = cache / f"{stem}.npy", cache / f"{stem}.json"
        X, why = load_cache(npy, sidecar, key, ids, embedder.dim)
        if X is not None:
            seconds = float(json.loads(sidecar.read_text()).get("seconds", 0.0))
            return Embeddings(ids, X, key, embedder.name, npy, True, seconds)
        if why != "absent":
            print(f"[seg4seg] embedding cache {npy.name} not reused ({why}); rebuilding it")
    t0 = time.perf_counter()
    vectors = []
    for sid in tqdm(ids, desc="embed volumes", unit="volume", disable=not progress, leave=False):
        planes = [read_image(table.path(f"planes/{sid}_{k}.png")) for k in range(n_planes)]
        vectors.append(embed_volume(embedder, planes, pool=pool))
    X, seconds = stack_and_cache([np.stack(vectors)], ids, embedder, t0, npy, sidecar, key)
    return Embeddings(ids, X, key, embedder.name, npy, False, seconds)


def volume_words() -> pd.DataFrame:
    """The descriptor table that names volume slices."""
    from seg4seg_utils.discovery.volume_features import VOLUME_DESCRIPTORS

    return VOLUME_DESCRIPTORS


def performance_names(columns: Sequence[str]) -> list[str]:
    """Columns usable as a volume performance score (higher = better): HD95 is a distance, not a score."""
    return [c for c in columns if c.startswith(("dice", "iou", "ppv", "npv", "surface_dice"))]
