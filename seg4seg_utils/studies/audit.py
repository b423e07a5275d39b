"""``seg4seg audit``: where does *your* segmentation model fail systematically? Folders in, a report out.

The one function :func:`audit` is what the command line (``seg4seg audit``), notebook 08 and the benchmark call.
It needs no training and no label for the failure; each step is the project's own, written once elsewhere:

1. **Read** (:mod:`seg4seg_utils.data.folders`): pair images, ground-truth masks and predictions by file name,
   check every file, and fail early with a message naming the file and what to do.
2. **Score and describe** one image at a time (memory does not grow with the number of images): Dice, IoU, PPV,
   NPV (:mod:`seg4seg_utils.model.metrics`; soft predictions are thresholded at ``threshold`` and add soft Dice and
   boundary uncertainty), and label-free descriptors of the image, the ground-truth mask and the error
   (:mod:`seg4seg_utils.discovery.descriptors`). Ground truth and hard predictions are stored once, normalised,
   in ``OUT/work/dataset`` (images are referenced in place, never copied or modified).
3. **Embed, reduce, slice** (:mod:`seg4seg_utils.discovery`): the image embedding (CLIP with ``clip_weights``, else
   the packaged EfficientNet-Lite0, named as such), UMAP to 8-d, the performance-weighted mixture, the
   protocol's label-free judgement. The number of slices is 10 by default (the paper's); the BIC curve of the
   slicer's joint likelihood is computed beside it and shown, and ``n_slices="auto"`` uses its minimum. Why not
   auto by default: BIC rewards a good density fit, not an isolated failure. On a real-HC18 model (case A at
   10 %, 5 seeds) it chose 2 slices at 2 seeds and nothing was flagged there; with 10 slices 17-20 of the 20 test
   images without calipers fell in problematic slices at every seed.
4. **Name** every slice by the descriptors that set it apart (effect size with a test against the rest), and by
   the metadata when a CSV is given. Descriptors and metadata only *name* slices: they never enter the slicer.
5. **Report** (:mod:`seg4seg_utils.report.audit_report`): one self-contained HTML page and CSV tables in ``OUT``.

**Volumes** (NIfTI, nnU-Net, MONAI datalists): the same stages, one row per volume; what differs (pairing,
spacing-aware metrics, 3-D descriptors, a representative plane for the galleries, planes pooled for the
embedding) is in :mod:`seg4seg_utils.studies.audit_volumes`.

Re-running on the same folders reuses the per-image table, the embeddings and the reductions cached in
``OUT/work``; nothing is written outside ``OUT``. An ``OUT`` that holds something else, or an audit of other
folders, is refused rather than overwritten.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from seg4seg_utils.data.folders import (check_same_size, folder_fingerprint, pair_folders, read_audit_image,
                                        read_label_map, read_metadata, read_prediction)
from seg4seg_utils.data.records import DatasetError, SampleTable, build_dataset, write_png

__all__ = ["AUDIT_FILE", "DEFAULT_N_SLICES", "DEFAULT_CANDIDATES", "MIN_IMAGES", "AuditResult", "audit",
           "score_and_describe", "record_scored", "problematic_slices", "verdict_sentences", "demo_folders"]

AUDIT_FILE = "audit.json"
AUDIT_FORMAT = 1
#: the default number of slices (the paper's for most cases)
DEFAULT_N_SLICES = 10
#: numbers of slices the BIC curve compares (fewer when the test set is small: at most n // 10)
DEFAULT_CANDIDATES: tuple[int, ...] = tuple(range(2, 17))
#: below this, slices of 2 % of the images are single images: no systematic failure can be told from noise
MIN_IMAGES = 20
#: descriptor families that describe the images and masks (what a slice's inputs share); ``error`` says how it fails
INPUT_FAMILIES = ("image", "mask")
#: smallest standardised performance gap (rest mean - slice mean over the pooled sd; Cohen's "medium") that makes a
#: slice problematic, the same bar the descriptors must clear to name one
MIN_EFFECT = 0.5
#: significance level of "this slice performs worse than the rest" (Bonferroni over the slices)
ALPHA = 0.01
_OWN_FILES = ("report.html", "per_image.csv", "slices.csv", "slice_probabilities.csv", "descriptor_contrast.csv",
              "n_slices_bic.csv", "timing.csv", AUDIT_FILE, "work")


@dataclass
class AuditResult:
    """What :func:`audit` found; every table is also written to ``out`` (see :attr:`paths`)."""

    out: Path
    per_image: pd.DataFrame          # id, metrics, descriptors, metadata, slice, slice_probability
    slices: pd.DataFrame             # one row per slice: size, share, mean/worst performance, flags, description
    contrast: pd.DataFrame           # descriptor contrast per slice (long table)
    bic: pd.DataFrame                # the BIC curve over numbers of slices (``chosen``: its minimum; ``used``)
    n_slices: int
    performance: tuple[str, ...]
    embedder_name: str
    verdicts: list[str]
    report: Any                      # protocol SliceReport (label-free)
    slicer: Any
    table: SampleTable
    browser: Any                     # the slice browser over the audit (maps, galleries): report.audit_report
    timings: dict[str, float] = field(default_factory=dict)
    paths: dict[str, Path] = field(default_factory=dict)

    @property
    def problematic(self) -> list[int]:
        """Slices that perform clearly worse than the rest (see :func:`problematic_slices`), worst first."""
        return [int(s) for s in self.slices.loc[self.slices["problematic"], "slice"]]


# ------------------------------------------------------------------------------------------ output folder
def _check_out(out: Path, inputs: dict[str, str]) -> dict[str, Any] | None:
    """The previous audit's record in ``out`` (None for a new or empty folder); refuses a folder holding
    anything else, or an audit of other folders, so that nothing is overwritten."""
    if out.exists() and not out.is_dir():
        raise DatasetError(f"{out}: is a file; --out must be a folder (new, empty, or an earlier audit of the same "
                           "folders).")
    if not out.is_dir() or not any(out.iterdir()):
        return None
    record_path = out / AUDIT_FILE
    if not record_path.is_file():
        raise DatasetError(f"{out}: is not empty and holds no {AUDIT_FILE}, so it is not an audit folder; nothing "
                           "is written there. Choose a new or empty --out folder.")
    try:
        record = json.loads(record_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DatasetError(f"{record_path}: unreadable ({exc}); delete {out} or choose another --out.") from exc
    if record.get("inputs") != inputs:
        theirs = record.get("inputs", {})
        raise DatasetError(f"{out}: holds an audit of other folders (images {theirs.get('images')!r}); it is never "
                           "overwritten. Choose another --out, or delete that folder to replace it.")
    foreign = [p.name for p in out.iterdir() if p.name not in _OWN_FILES and not p.name.startswith(".")]
    if foreign:
        raise DatasetError(f"{out}: holds files an audit does not write ({', '.join(sorted(foreign)[:5])}); nothing "
                           "is overwritten. Choose another --out.")
    return record


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str) + "\n")
    os.replace(tmp, path)


# ------------------------------------------------------------------------------------------ per image
def _metrics(truth: np.ndarray, labels: np.ndarray, probability: np.ndarray | None) -> dict[str, float]:
    """Foreground metrics (any non-zero label is foreground), Dice per class for label maps, soft scores."""
    from seg4seg_utils.model.metrics import segmentation_metrics, soft_scores

    fg_t, fg_p = truth > 0, labels > 0
    row = {k: float(v[0]) for k, v in segmentation_metrics(fg_p[None], fg_t[None]).items()}
    classes = sorted(set(np.unique(truth).tolist()) | set(np.unique(labels).tolist()) - {0})
    if len(classes) > 1 or (classes and classes[0] > 1):
        for c in classes:
            row[f"dice_{c}"] = float(segmentation_metrics((labels == c)[None], (truth == c)[None])["dice"][0])
    if probability is not None:
        row.update(soft_scores(probability, fg_t))
    return row


def _score_chunk(chunk: list[tuple[str, str, str, str]], threshold: float) -> list[tuple]:
    """Read, check, score and describe a few images (one joblib task): (id, image path, ground truth labels,
    predicted labels, no planes, row) each, as :func:`record_scored` takes them. A pure function of the files,
    so the number of workers never changes a value."""
    from seg4seg_utils.discovery.descriptors import describe_image

    out = []
    for sid, img_path, mask_path, pred_path in chunk:
        image = read_audit_image(img_path)
        truth = read_label_map(mask_path)
        pred = read_prediction(pred_path, threshold)
        check_same_size(sid, image, truth, pred.labels, {"image": img_path, "mask": mask_path, "prediction": pred_path})
        row = {"id": sid, **_metrics(truth, pred.labels, pred.probability), **describe_image(image, truth, pred.labels)}
        out.append((sid, img_path, truth, pred.labels, (), row))
    return out


def record_scored(writer, chunks: Iterable[list[tuple]], total: int, unit: str, progress: bool = True) -> None:
    """Write what the per-item workers return into the record dataset being built, in order: per item (id, image
    (a path, referenced in place, or an array), ground-truth labels, predicted labels, planes for the embedder
    (volumes; empty for images), row of metrics and descriptors). Predictions go to ``predictions/``, planes to
    ``planes/{id}_{k}.png``, the rows to ``per_image.csv``; the mask kind follows the labels seen. Images and
    volumes share it (:mod:`.audit_volumes`)."""
    rows: list[dict[str, Any]] = []
    multiclass = False
    (writer.staging / "predictions").mkdir(exist_ok=True)
    bar = tqdm(total=total, desc="score and describe", unit=unit, disable=not progress)
    try:
        for done in chunks:
            for sid, image, truth, labels, planes, row in done:
                multiclass |= bool(truth.max() > 1 or labels.max() > 1)
                write_png(labels, writer.staging / "predictions" / f"{sid}.png")
                if len(planes):
                    (writer.staging / "planes").mkdir(exist_ok=True)
                for k, plane in enumerate(planes):
                    write_png(plane, writer.staging / "planes" / f"{sid}_{k}.png")
                writer.add(sid, "test", image, truth, "audit", prediction=f"predictions/{sid}.png")
                rows.append(row)
            bar.update(len(done))
    finally:
        bar.close()
    writer.mask_kind = "multiclass" if multiclass else "binary"
    pd.DataFrame(rows).to_csv(writer.staging / "per_image.csv", index=False)


def score_and_describe(pairs: pd.DataFrame, dataset: Path, config: dict[str, Any], threshold: float = 0.5,
                       progress: bool = True, n_jobs: int = 2, chunk: int = 32) -> tuple[SampleTable, pd.DataFrame]:
    """One pass over the paired files: check them, score the prediction, describe the image; returns the
    dataset (images referenced in place, normalised masks and hard predictions written once) and the per-image
    table (id, metrics, descriptors). Reused when ``dataset`` already holds the same ``config``.

    ``n_jobs`` processes read and describe chunks of ``chunk`` images (a generator keeps only a few chunks in
    flight, so memory does not grow with the number of images); this process writes the files in id order."""
    from joblib import Parallel, delayed

    per_image = dataset / "per_image.csv"
    items = list(pairs[["id", "image", "mask", "prediction"]].itertuples(index=False, name=None))
    chunks = [items[i:i + chunk] for i in range(0, len(items), chunk)]

    def build(writer) -> dict[str, Any]:
        runner = Parallel(n_jobs=min(n_jobs, len(chunks)), return_as="generator")
        record_scored(writer, runner(delayed(_score_chunk)(c, threshold) for c in chunks), len(pairs), "img", progress)
        return {"kind": "audit"}

    table = build_dataset(dataset, config, build, validate="none")
    return table, pd.read_csv(per_image, dtype={"id": str})


# ------------------------------------------------------------------------------------------ judgement
def problematic_slices(labels: np.ndarray, scores: np.ndarray, slice_table: pd.DataFrame,
                       alpha: float = ALPHA) -> pd.DataFrame:
    """Add ``worst``, ``gap`` (rest mean - slice mean), ``effect`` (the gap over the pooled standard deviation),
    ``p_value`` (one-sided Mann-Whitney, slice lower than the rest, Bonferroni over the eligible slices) and
    ``problematic`` to the protocol's slice table.

    A slice is *problematic* when it is eligible (at least 2 % of the images), in the bottom 40 % of the slices by
    mean performance, and performs worse than the other images: significantly by ranks (adjusted p < ``alpha``),
    lower on average (``gap`` > 0) and by at least a medium standardised effect (``effect`` >= ``MIN_EFFECT``).
    No hidden attribute is read: this is what a user without failure labels can be told."""
    from scipy.stats import mannwhitneyu

    t = slice_table.copy()
    n_eligible = max(int(t["eligible"].sum()), 1)
    worst, gap, pval, effect = [], [], [], []
    for s, eligible in zip(t["slice"], t["eligible"]):
        inside = labels == s
        a, b = scores[inside], scores[~inside]
        worst.append(float(a.min()) if len(a) else np.nan)
        gap.append(float(b.mean() - a.mean()) if len(a) and len(b) else np.nan)
        pooled = np.sqrt(((len(a) - 1) * a.var(ddof=1) + (len(b) - 1) * b.var(ddof=1)) / (len(a) + len(b) - 2)) \
            if len(a) > 1 and len(b) > 1 else 0.0
        effect.append(float(gap[-1] / pooled) if pooled > 0 else (np.inf if gap[-1] > 0 else 0.0))
        if eligible and len(a) > 1 and len(b) > 1 and np.ptp(scores) > 0:
            pval.append(min(1.0, float(mannwhitneyu(a, b, alternative="less").pvalue) * n_eligible))
        else:
            pval.append(np.nan)
    t["worst"], t["gap"], t["p_value"] = worst, gap, pval
    t["effect"] = effect
    # the ranks (the test), the mean and the size of the difference must all say "worse": a slice of typical,
    # slightly-below-median images can rank lower than a rest that holds the real failures while its mean is
    # higher; and with thousands of images a gap of 0.001 Dice is significant but names no failure
    t["problematic"] = t["eligible"] & t["bottom"] & (t["p_value"] < alpha) & (t["gap"] > 0) & \
        (t["effect"] >= MIN_EFFECT)
    return t


def verdict_sentences(slices: pd.DataFrame, n_images: int, performance: str, unit: str = "images") -> list[str]:
    """One sentence per problematic slice, worst first (or one sentence saying there is none); ``unit``: what
    the audit counts ("images" or "volumes")."""
    from seg4seg_utils.report.browser.model import metric_label

    name = metric_label(performance)
    bad = slices[slices["problematic"]].sort_values("mean_perf")
    if bad.empty:
        return [f"No slice of at least 2 % of the {n_images} {unit} performs clearly worse than the rest (a lower "
                f"mean {name} by a standardised gap of {MIN_EFFECT} or more, and significantly by ranks: one-sided "
                f"Mann-Whitney, Bonferroni, alpha = {ALPHA}): no systematic failure found."]
    out = []
    for _, r in bad.iterrows():
        rest = r["mean_perf"] + r["gap"]
        out.append(f"Slice {int(r['slice'])} ({int(r['size'])} {unit}, {r['size'] / n_images:.1%}): mean {name} "
                   f"{r['mean_perf']:.2f} against {rest:.2f} for the other {unit} (p = {r['p_value']:.1g}); "
                   f"{r['description']}.")
    return out


# ------------------------------------------------------------------------------------------ the audit
def _stage(timings: dict[str, float], name: str, t0: float) -> float:
    now = time.perf_counter()
    timings[name] = round(now - t0, 3)
    return now


def audit(images: str | os.PathLike | None, masks: str | os.PathLike | None, predictions: str | os.PathLike,
          out: str | os.PathLike = "audit", *, metadata: str | os.PathLike | pd.DataFrame | None = None,
          n_slices: int | str = DEFAULT_N_SLICES, performance: Sequence[str] = ("dice",),
          clip_weights: str | None = None, threshold: float = 0.5, gamma: float = 10.0, seed: int = 0,
          candidates: Sequence[int] = DEFAULT_CANDIDATES, embedder: Any = None, n_gallery: int = 8,
          max_galleries: int = 4, n_jobs: int = 2, progress: bool = True, datalist: str | os.PathLike | None = None,
          datalist_key: str = "test", volume_planes: str = "axial3-mean") -> AuditResult:
    """Audit a segmentation model from three folders; writes ``out/report.html`` and CSVs, returns the result.

    Volumes: when the folders hold NIfTI files (``.nii``/``.nii.gz``), or ``images`` is an nnU-Net raw dataset
    or its ``imagesTs`` folder (``masks`` may then be None: ``labelsTs`` beside it), or a MONAI/decathlon
    ``datalist`` JSON is given (``images`` and ``masks`` None; its ``datalist_key`` list), the audit runs on
    volumes: :mod:`seg4seg_utils.studies.audit_volumes` pairs, scores, describes and embeds the cases, and the
    stages below are the same. ``per_image.csv`` then has one row per volume.

    ``n_slices``: a number (default 10), or ``"auto"`` (the BIC minimum over ``candidates``; the curve is computed
    and reported either way). ``performance``: the per-image
    scores the slicer weighs (lower = worse; the first one is judged and shown), any of dice, iou, ppv, npv,
    soft_dice (soft predictions only) or a per-class ``dice_<label>``. ``metadata``: an optional CSV (or DataFrame)
    with an ``id`` column; it only names slices. ``embedder``: an :class:`~seg4seg_utils.discovery.embed.Embedder`
    to use instead of the default (tests, notebooks that already built one). ``n_jobs``: processes that read and
    describe the images (never changes a result); ``n_slices``, ``performance`` (also ``surface_dice`` for
    volumes) and the rest mean the same for volumes. ``volume_planes`` (volumes only): which planes of a case the
    embedder sees and how they are pooled, one of :data:`~seg4seg_utils.studies.audit_volumes.VOLUME_PLANES`
    (default ``"axial3-mean"``: 3 axial planes through the ground truth, mean-pooled; the alternatives are for
    comparing them, :mod:`seg4seg_utils.studies.volume_study`); cached separately per alternative.
    """
    from seg4seg_utils.discovery.descriptors import (DESCRIPTORS, SOFT_DESCRIPTORS, contrast_slices, describe_slice,
                                                     top_descriptor)
    from seg4seg_utils.discovery.embed import default_embedder, embed_dataset, performance_matrix
    from seg4seg_utils.discovery.judge import SlicerSettings, choose_n_slices, fit_and_judge, reduced
    from seg4seg_utils.report.audit_report import audit_browser, write_report
    from seg4seg_utils.studies.audit_volumes import (embed_volumes, is_volume_input, pair_volume_inputs,
                                                     performance_names, score_and_describe_volumes, volume_words)

    timings: dict[str, float] = {}
    t0 = t_start = time.perf_counter()
    out = Path(out)
    performance = tuple([performance] if isinstance(performance, str) else performance)
    if not performance:
        raise ValueError("performance needs at least one score, e.g. dice")
    if not 0 < threshold < 1:
        raise ValueError(f"threshold must lie strictly between 0 and 1, got {threshold}")
    if n_slices != "auto" and (isinstance(n_slices, str) or int(n_slices) < 2):
        raise ValueError(f"n_slices must be 'auto' or an integer >= 2, got {n_slices!r}")

    # 1. read and check the folders, before anything is written
    volumes = datalist is not None or is_volume_input(images, masks, predictions)
    unit = "volumes" if volumes else "images"
    if volumes:
        vin = pair_volume_inputs(images, masks, predictions, datalist, datalist_key, volume_planes)
        pairs, inputs = vin.pairs, vin.inputs
    else:
        if images is None or masks is None:
            raise DatasetError("the images and ground-truth folders are needed (--images, --masks).")
        pairs = pair_folders(images, masks, predictions)
        inputs = {k: str(Path(v).resolve()) for k, v in (("images", images), ("masks", masks),
                                                          ("predictions", predictions))}
    n = len(pairs)
    if n < MIN_IMAGES:
        raise DatasetError(f"only {n} {unit[:-1]}(s) with a mask and a prediction; an audit needs at least "
                           f"{MIN_IMAGES} (slices of 2 % of the test set would be single {unit}).")
    if n_slices != "auto" and 2 * int(n_slices) > n:
        raise DatasetError(f"{n} {unit} but --n-slices {n_slices}: need at least two {unit} per slice "
                           f"(use at most {n // 2}, or 'auto').")
    meta = None
    if metadata is not None:
        meta = metadata if isinstance(metadata, pd.DataFrame) else read_metadata(metadata, pairs["id"].tolist())
    _check_out(out, inputs)
    out.mkdir(parents=True, exist_ok=True)
    fingerprint = vin.fingerprint() if volumes else folder_fingerprint(pairs)
    _write_json(out / AUDIT_FILE, {"format": AUDIT_FORMAT, "inputs": inputs, "fingerprint": fingerprint,
                                   "status": "running"})
    t0 = _stage(timings, "read and pair files", t0)

    # 2. one pass over the images: metrics and descriptors (cached for the same files and threshold)
    dataset = out / "work" / "dataset"
    config = {"audit_format": AUDIT_FORMAT, **inputs, "fingerprint": fingerprint, "threshold": threshold,
              **(vin.config() if volumes else {})}
    if (dataset / "dataset.json").is_file() and \
            json.loads((dataset / "dataset.json").read_text()).get("config", {}) != config:
        shutil.rmtree(dataset)  # our own cache of an earlier run on files that changed since: recompute
    if volumes:
        table, per_image = score_and_describe_volumes(vin, dataset, config, progress, n_jobs)
        numeric = performance_names(per_image.columns)
        missing = [p for p in performance if p not in numeric]
    else:
        table, per_image = score_and_describe(pairs, dataset, config, threshold, progress, n_jobs)
        numeric = [c for c in per_image.columns if c.startswith(("dice", "iou", "ppv", "npv", "soft_dice"))]
        missing = [p for p in performance if p not in per_image.columns]
    if missing:
        raise ValueError(f"unknown performance score(s) {missing}; available here: {numeric}"
                         + (" (hd95 is a distance, higher = worse: not a score the slicer weighs)"
                            if any(str(m).startswith("hd95") for m in missing) else ""))
    t0 = _stage(timings, "metrics and descriptors", t0)

    # 3. embed, reduce, slice: never reads the descriptors or the metadata
    if embedder is None:
        embedder = default_embedder(clip_weights)
    cache = out / "work" / "cache"
    if volumes:  # one vector per volume: its planes through the ground truth, embedded and pooled
        emb = embed_volumes(table, embedder, cache / "embeddings", progress)
    else:
        emb = embed_dataset(table, embedder, "x0", split="test", cache_dir=cache / "embeddings", progress=progress)
    t0 = _stage(timings, "embedding", t0)
    settings = SlicerSettings(gamma=gamma)
    Z = reduced(emb.X, settings, seed, cache / "reduced")
    t0 = _stage(timings, "UMAP to 8-d", t0)
    per_image = per_image.set_index("id").loc[emb.ids].reset_index()
    Y = performance_matrix(per_image, performance)
    usable = [c for c in candidates if 2 <= c <= max(2, n // 10)]
    k_bic, bic = choose_n_slices(Z, Y, usable, settings=settings, seed=seed)
    k = k_bic if n_slices == "auto" else int(n_slices)
    bic["used"] = bic["n_slices"] == k
    t0 = _stage(timings, "BIC curve over n_slices", t0)
    slicer, report = fit_and_judge(Z, Y, None, n_slices=k, settings=settings, seed=seed)
    labels = slicer.labels_
    t0 = _stage(timings, "slice", t0)

    # 4. name the slices: descriptors (and metadata) against the rest
    # descriptors name slices; with probability outputs the model's uncertainty joins them (in the error family)
    words = volume_words() if volumes else pd.concat([DESCRIPTORS, SOFT_DESCRIPTORS])
    contrast = contrast_slices(per_image[[c for c in words.index if c in per_image.columns]], labels, words=words)
    slices = problematic_slices(labels, Y[:, 0], report.table)
    slices["share"] = slices["size"] / n
    slices["description"] = [describe_slice(contrast, int(s)) for s in slices["slice"]]
    slices["top_descriptor"] = [top_descriptor(contrast, int(s), INPUT_FAMILIES) for s in slices["slice"]]
    slices["focus"] = slices["slice"] == report.focus_slice
    slices = slices.sort_values(["eligible", "mean_perf"], ascending=[False, True], kind="stable")
    slices = slices.reset_index(drop=True)
    per_image.insert(1, "slice", labels)
    per_image.insert(2, "slice_probability", slicer.proba_[np.arange(n), labels])
    if meta is not None:
        per_image = per_image.merge(meta, on="id", how="left", validate="one_to_one")
    verdicts = verdict_sentences(slices, n, performance[0], unit)
    t0 = _stage(timings, "describe slices", t0)

    # 5. tables and the report
    paths = {"per_image": out / "per_image.csv", "slices": out / "slices.csv",
             "slice_probabilities": out / "slice_probabilities.csv", "contrast": out / "descriptor_contrast.csv",
             "report": out / "report.html", "timing": out / "timing.csv", "record": out / AUDIT_FILE}
    per_image.to_csv(paths["per_image"], index=False)
    slices.to_csv(paths["slices"], index=False)
    pd.DataFrame(slicer.proba_, columns=[f"slice_{s}" for s in range(k)]).assign(id=emb.ids)[
        ["id", *[f"slice_{s}" for s in range(k)]]].to_csv(paths["slice_probabilities"], index=False)
    contrast.to_csv(paths["contrast"], index=False)
    paths["bic"] = out / "n_slices_bic.csv"
    bic.to_csv(paths["bic"], index=False)
    meta_cols = [] if meta is None else [c for c in meta.columns if c != "id"]
    xy = _map_coordinates(Z, seed, cache / "reduced")
    t0 = _stage(timings, "2-d map (UMAP)", t0)
    browser = audit_browser(table, per_image, slices, xy, labels, slicer.proba_, performance[0], meta_cols)
    result = AuditResult(out=out, per_image=per_image, slices=slices, contrast=contrast, bic=bic, n_slices=k,
                         performance=performance, embedder_name=emb.embedder_name, verdicts=verdicts, report=report,
                         slicer=slicer, table=table, browser=browser, timings=timings, paths=paths)
    rule = "chosen by BIC" if n_slices == "auto" else ("the default" if k == DEFAULT_N_SLICES else "given")
    write_report(paths["report"], browser, slices=slices, verdicts=verdicts, metadata_columns=meta_cols, bic=bic,
                 n_slices_rule=rule, embedder_name=emb.embedder_name, inputs=inputs, threshold=threshold,
                 n_gallery=n_gallery, max_galleries=max_galleries, unit=unit)
    t0 = _stage(timings, "tables and report", t0)
    timings["total"] = round(time.perf_counter() - t_start, 3)
    pd.DataFrame({"stage": list(timings), "seconds": list(timings.values())}).to_csv(paths["timing"], index=False)
    _write_json(paths["record"], {
        "format": AUDIT_FORMAT, "inputs": inputs, "fingerprint": fingerprint, "status": "done", "n_images": n,
        "n_slices": k, "n_slices_rule": rule, "n_slices_bic": k_bic, "performance": list(performance),
        "threshold": threshold, "gamma": gamma, "seed": seed, "embedder": emb.embedder_name,
        "problematic_slices": result.problematic, "verdicts": verdicts, "timings_s": timings,
        "metadata_columns": meta_cols})
    return result


# ------------------------------------------------------------------------------------------ demo
def demo_folders(run_root: str | os.PathLike, table: SampleTable, out: str | os.PathLike) -> dict[str, Path]:
    """Copy a trained run's test images, masks and predictions into three plain folders, as a user would have them.
    Files already there with the same size are left alone, so a second call changes nothing (an audit of the
    folders then stays cached: it fingerprints file names, sizes and times)."""
    from seg4seg_utils.model.train import Run

    run = Run.from_folder(run_root)
    metrics = run.metrics()
    out = Path(out)
    folders = {k: out / k for k in ("images", "masks", "predictions")}
    for f in folders.values():
        f.mkdir(parents=True, exist_ok=True)
    test = table.split("test")
    preds = dict(zip(metrics["id"].astype(str), metrics["prediction"]))
    for i, sid in enumerate(test.df["id"]):
        sources = ((test.path(test.df["image"].iat[i]), "images"), (test.path(test.df["mask"].iat[i]), "masks"),
                   (Path(run.root) / preds[str(sid)], "predictions"))
        for src, folder in sources:
            dst = folders[folder] / f"{sid}.png"
            if not (dst.is_file() and dst.stat().st_size == Path(src).stat().st_size):
                shutil.copyfile(src, dst)
    return folders


def _map_coordinates(Z: np.ndarray, seed: int, cache: Path) -> np.ndarray:
    """The report's 2-d map: a 2-d UMAP of the 8-d UMAP embedding the slicer saw (cached like it). Fitted on 8
    dimensions rather than on the embedding itself, it costs a fraction of the first reduction; a linear view of
    the 8-d space (its principal axes) squeezed well-separated groups onto one line."""
    from seg4seg_utils.discovery.reduce import cached_reduction

    return cached_reduction(np.ascontiguousarray(Z), "umap", 2, seed, cache)
