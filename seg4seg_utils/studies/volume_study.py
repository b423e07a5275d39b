"""Does ``seg4seg audit`` find a planted failure in 3-D volumes, and which planes should the embedder see?

The question: the volume audit (:mod:`seg4seg_utils.studies.audit_volumes`) embeds a case by a few 2-D planes
through its ground truth, pooled to one vector. Does the slice it shows first (the worst eligible slice,
``result.report.focus_slice``, chosen without any hidden attribute) hold the cases the model fails on, and does
that depend on the planes and the pooling?

The data: :func:`phantom_folder` writes (once; cached) an nnU-Net v2 test set of 3-D phantoms
(:func:`seg4seg_utils.data.phantoms3d.write_nnunet_phantoms`): ``prevalence_b`` of the cases come from scanner B
(lower contrast, more noise, blur along one axis) and the simulated model under-segments exactly those. The
hidden answer (``id, scanner, ...``) is moved out of the dataset folder to ``answer.csv`` beside it: the audit
never sees it.

The runs: :func:`planted_detection` runs :func:`~seg4seg_utils.studies.audit.audit` (the command line's function)
once per slicer seed and per embedding alternative (``audit(volume_planes=...)``,
:data:`~seg4seg_utils.studies.audit_volumes.VOLUME_PLANES`): the default ``axial3-mean`` (3 axial planes
through the truth, mean-pooled), ``axial1`` (the central axial plane), ``axial3-max`` (the same 3 planes,
max-pooled) and ``axes3-mean`` (one central plane per axis, mean-pooled). Each alternative has its own audit
folder, so the metrics and descriptors are computed once per alternative and the seeds reuse them.

The judgement, afterwards and for evaluation only: a run *detects* the failure when the focus slice has more than
80 % scanner-B members (its purity; the paper's criterion); per alternative the table gives k detections of n
seeds with a 95 % Wilson interval (:func:`seg4seg_utils.stats.wilson_interval`).

Sizes per preset (:data:`VOLUME_STUDY_SIZES`, :func:`study_size`): smoke is seconds (24 cases of 32^3, 2 seeds,
2 alternatives), cpu 60 cases of 48^3, 5 seeds, every alternative.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

__all__ = ["PURITY_BAR", "VolumeStudySize", "VOLUME_STUDY_SIZES", "study_size", "phantom_folder",
           "default_n_slices", "audit_dir", "planted_detection", "summarise_detection"]

#: a focus slice "is" the planted failure when more than this share of its members come from scanner B
PURITY_BAR = 0.8
_DONE = "done.txt"


@dataclass(frozen=True)
class VolumeStudySize:
    """The phantom test set and the runs of the study at one preset."""

    n_cases: int
    size: int                        # phantom edge length in voxels
    seeds: tuple[int, ...]           # slicer seeds
    variants: tuple[str, ...]        # embedding alternatives (audit_volumes.VOLUME_PLANES)
    prevalence_b: float = 0.2


_ALL = ("axial3-mean", "axial1", "axial3-max", "axes3-mean")
VOLUME_STUDY_SIZES: dict[str, VolumeStudySize] = {
    "smoke": VolumeStudySize(24, 32, (0, 1), ("axial3-mean", "axial1")),
    "cpu": VolumeStudySize(60, 48, (0, 1, 2, 3, 4), _ALL),
    "paper": VolumeStudySize(200, 96, (0, 1, 2, 3, 4), _ALL),
}


def study_size(preset: str, n_cases: int | None = None, size: int | None = None) -> VolumeStudySize:
    """The preset's sizes, with ``n_cases`` / ``size`` replaced when given (None: the preset's)."""
    name = getattr(preset, "name", preset)
    if name not in VOLUME_STUDY_SIZES:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(VOLUME_STUDY_SIZES)}")
    s = VOLUME_STUDY_SIZES[name]
    return replace(s, n_cases=int(n_cases) if n_cases is not None else s.n_cases,
                   size=int(size) if size is not None else s.size)


def default_n_slices(n_cases: int) -> int:
    """A tenth of the cases, between 3 and the audit's default 10 (10 slices of 24 volumes would be too small)."""
    return max(3, min(10, n_cases // 10))


def phantom_folder(root: str | os.PathLike, n_cases: int, size: int, prevalence_b: float = 0.2,
                   seed: int = 0) -> dict[str, Path]:
    """The nnU-Net phantom test set under ``root`` (written once; a complete earlier one is reused).

    Returns ``dataset`` (the nnU-Net folder), ``images`` (its imagesTs), ``masks`` (labelsTs), ``predictions``
    and ``answer``: the hidden ``id, scanner, ...`` table, kept outside the dataset folder."""
    from seg4seg_utils.data.phantoms3d import write_nnunet_phantoms

    base = Path(root) / f"phantoms-n{n_cases}-s{size}-b{prevalence_b:g}-seed{seed}"
    dataset = base / "Dataset900_Phantom"
    paths = {"dataset": dataset, "images": dataset / "imagesTs", "masks": dataset / "labelsTs",
             "predictions": dataset / "predictions", "answer": base / "answer.csv"}
    if (base / _DONE).is_file():
        return paths
    if base.exists():  # an interrupted earlier write: start over
        shutil.rmtree(base)
    write_nnunet_phantoms(dataset, n_cases, size=size, seed=seed, prevalence_b=prevalence_b)
    (dataset / "metadata.csv").rename(paths["answer"])  # the answer is read only after the audits
    (base / _DONE).write_text(f"{n_cases} cases of {size}^3\n")
    return paths


def audit_dir(paths: dict[str, Path], variant: str = "axial3-mean") -> Path:
    """The audit folder of one embedding alternative beside a :func:`phantom_folder` dataset (a notebook's audit
    with the default planes there is the study's, cached once)."""
    return paths["dataset"].parent / "audits" / variant


def _purity(result: Any, answer: pd.DataFrame) -> tuple[int, int, float]:
    """The focus slice's size, its scanner-B members and their share."""
    focus = int(result.report.focus_slice)
    ids = result.per_image.loc[result.per_image["slice"] == focus, "id"].astype(str)
    scanners = answer.set_index("id").loc[ids, "scanner"]
    n_b = int((scanners == "B").sum())
    return len(ids), n_b, n_b / len(ids) if len(ids) else float("nan")


def planted_detection(root: str | os.PathLike, n_cases: int = 60, size: int = 48, prevalence_b: float = 0.2,
                      seeds: Sequence[int] = range(5), variants: Sequence[str] = _ALL, embedder: Any = None,
                      n_slices: int | None = None, data_seed: int = 0, n_jobs: int = 2, progress: bool = False,
                      per_run: bool = False) -> pd.DataFrame:
    """Audit the phantom test set once per slicer seed and alternative; judge with the hidden scanner afterwards.

    ``variants``: names of :data:`~seg4seg_utils.studies.audit_volumes.VOLUME_PLANES`; ``embedder``: built once
    (default: the audit's default, EfficientNet-Lite0 without CLIP weights); ``n_slices``: None for
    :func:`default_n_slices`. Audits go to ``root/audits-.../{variant}`` (cached: re-running costs the slicing only).

    Returns one row per alternative (:func:`summarise_detection`): ``variant, detected, runs, rate, low, high,
    mean_purity``; with ``per_run`` the rows per run instead (``variant, seed, n_slices, focus_slice,
    focus_size, focus_b, purity, detected, focus_mean_dice, problematic``).
    """
    from seg4seg_utils.discovery.embed import default_embedder
    from seg4seg_utils.studies.audit import audit
    from seg4seg_utils.studies.audit_volumes import VOLUME_PLANES

    unknown = [v for v in variants if v not in VOLUME_PLANES]
    if unknown:
        raise ValueError(f"unknown embedding alternative(s) {unknown}; choose from {list(VOLUME_PLANES)}")
    paths = phantom_folder(root, n_cases, size, prevalence_b, data_seed)
    answer = pd.read_csv(paths["answer"], dtype={"id": str})
    k = default_n_slices(n_cases) if n_slices is None else int(n_slices)
    if embedder is None:
        embedder = default_embedder(None)
    rows = []
    for variant in variants:
        out = audit_dir(paths, variant)
        for seed in seeds:
            result = audit(paths["images"], paths["masks"], paths["predictions"], out, n_slices=k, seed=int(seed),
                           embedder=embedder, n_jobs=n_jobs, progress=progress, volume_planes=variant)
            n_focus, n_b, purity = _purity(result, answer)
            focus = int(result.report.focus_slice)
            mean_dice = result.slices.loc[result.slices["slice"] == focus, "mean_perf"]
            rows.append({"variant": variant, "seed": int(seed), "n_slices": k, "focus_slice": focus,
                         "focus_size": n_focus, "focus_b": n_b, "purity": purity,
                         "detected": bool(purity > PURITY_BAR),
                         "focus_mean_dice": float(mean_dice.iat[0]) if len(mean_dice) else float("nan"),
                         "problematic": len(result.problematic)})
    runs = pd.DataFrame(rows)
    return runs if per_run else summarise_detection(runs)


def summarise_detection(runs: pd.DataFrame) -> pd.DataFrame:
    """Per alternative (in the runs' order): k detections of n runs, the rate and its 95 % Wilson interval."""
    from seg4seg_utils.stats import wilson_interval

    out = []
    for variant, group in runs.groupby("variant", sort=False):
        k, n = int(group["detected"].sum()), len(group)
        low, high = wilson_interval(k, n)
        out.append({"variant": variant, "detected": k, "runs": n, "rate": k / n, "low": low, "high": high,
                    "mean_purity": float(group["purity"].mean())})
    return pd.DataFrame(out)
