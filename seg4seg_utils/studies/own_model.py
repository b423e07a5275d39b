"""Slice discovery for *your* segmentation model: three folders in (images, ground-truth masks, predicted masks),
slices and galleries out. No training and no hidden attribute needed."""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pandas as pd

from seg4seg_utils.data.records import DatasetError, SampleTable, build_dataset, read_mask
from seg4seg_utils.model.metrics import metrics_table

__all__ = ["IMAGE_SUFFIXES", "import_folders", "discover_slices", "demo_folders"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


def _by_stem(folder: Path, what: str) -> dict[str, Path]:
    if not folder.is_dir():
        raise DatasetError(f"{folder}: the {what} folder does not exist. Pass the folder holding your {what}.")
    files = {p.stem: p for p in sorted(folder.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}
    if not files:
        raise DatasetError(f"{folder}: no image files ({', '.join(IMAGE_SUFFIXES)}) found for the {what}.")
    return files


def import_folders(images: str | os.PathLike, masks: str | os.PathLike, predictions: str | os.PathLike,
                   out: str | os.PathLike, metadata: pd.DataFrame | None = None) -> tuple[SampleTable, pd.DataFrame]:
    """Match files by name (stem), record them as a test-only dataset at ``out`` (files referenced in place),
    and compute per-image Dice/IoU/PPV/NPV of the predictions; returns (table, metrics).

    ``metadata`` (optional) is a DataFrame with an ``id`` column (the file stem) and any attribute columns.
    """
    imgs, gts, preds = (_by_stem(Path(f), w) for f, w in ((images, "images"), (masks, "ground-truth masks"),
                                                           (predictions, "predicted masks")))
    ids = sorted(imgs)
    for name, group in (("ground-truth mask", gts), ("predicted mask", preds)):
        missing = [i for i in ids if i not in group]
        if missing:
            raise DatasetError(f"{len(missing)} image(s) have no {name} with the same name, e.g. {missing[:3]}; "
                               "files are matched by name without extension.")
    meta = metadata.set_index("id") if metadata is not None else None

    def build(writer) -> dict[str, Any]:
        for sid in ids:
            attrs = meta.loc[sid].to_dict() if meta is not None and sid in meta.index else {}
            writer.add(sid, "test", imgs[sid], gts[sid], "own-model", prediction=str(Path(preds[sid]).resolve()), **attrs)
        return {"kind": "own-model"}

    table = build_dataset(out, {"images": str(Path(images).resolve()), "masks": str(Path(masks).resolve()),
                                "predictions": str(Path(predictions).resolve()), "ids": len(ids)}, build,
                          validate="files")
    truth = [table.mask(i) for i in range(len(table))]
    pred = [read_mask(p) for p in table.df["prediction"]]
    for sid, t, p in zip(table.df["id"], truth, pred):
        if t.shape != p.shape:
            raise DatasetError(f"{preds[sid]}: predicted mask is {p.shape[1]}x{p.shape[0]} but the ground truth is "
                               f"{t.shape[1]}x{t.shape[0]}; resize predictions to the image size first.")
    scores = pd.concat([metrics_table(p[None], t[None], ids=[s]) for s, p, t in zip(table.df["id"], pred, truth)],
                       ignore_index=True)
    metrics = table.df.drop(columns=["split"]).merge(scores, on="id", validate="one_to_one")
    metrics.to_csv(Path(out) / "metrics.csv", index=False)
    return table, metrics


def discover_slices(table: SampleTable, metrics: pd.DataFrame, embedder, n_slices: int = 10, gamma: float = 10.0,
                    performance: tuple[str, ...] = ("dice",), seed: int = 0,
                    cache_dir: str | os.PathLike | None = "cache/embeddings"):
    """Embed, reduce (UMAP-8, cached) and slice without any failure label; returns (fitted SliceFinder,
    embeddings, per-slice table: eligible slices (at least 2 % of the images) first, worst mean performance
    first; ``focus`` marks the label-free slice to open first, :attr:`SliceReport.focus_slice`)."""
    from seg4seg_utils.discovery.embed import embed_dataset, performance_matrix
    from seg4seg_utils.discovery.judge import SlicerSettings, fit_and_judge, reduced

    emb = embed_dataset(table, embedder, "x0", split="test", cache_dir=cache_dir)
    Y = performance_matrix(metrics, performance, ids=emb.ids)
    settings = SlicerSettings(gamma=gamma)
    Z = reduced(emb.X, settings, seed, None if cache_dir is None else Path(cache_dir) / "reduced")
    sf, report = fit_and_judge(Z, Y, None, n_slices=n_slices, settings=settings, seed=seed)
    per = pd.DataFrame({"slice": sf.labels_, performance[0]: Y[:, 0]})
    summary = per.groupby("slice")[performance[0]].agg(size="size", mean="mean", worst="min").reset_index()
    # slices of a sample or two are outliers, not failure modes: the 2 % rule of the evaluation protocol
    summary["eligible"] = summary["slice"].map(report.table.set_index("slice")["eligible"])
    summary["focus"] = summary["slice"] == report.focus_slice
    summary = summary.sort_values(["eligible", "mean"], ascending=[False, True]).reset_index(drop=True)
    return sf, emb, summary


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
        for src, folder in ((test.path(test.df["image"].iat[i]), "images"), (test.path(test.df["mask"].iat[i]), "masks"),
                            (Path(run.root) / preds[str(sid)], "predictions")):
            dst = folders[folder] / f"{sid}.png"
            if not (dst.is_file() and dst.stat().st_size == Path(src).stat().st_size):
                shutil.copyfile(src, dst)
    return folders
