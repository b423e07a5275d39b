"""Multi-class training for the label-flip study (the twin-cells phantom, :mod:`seg4seg_utils.data.twin_cells`).

:func:`train_multiclass` trains the project's U-Net with cross-entropy, reusing :mod:`seg4seg_utils.model.train`'s
config, data augmentation, device choice and normalisation, and stores softmax probabilities of the test split
(float16, compressed) next to the usual run files, so flip-risk (:mod:`.label_flips`) can be computed afterwards
without the model. There is one training loop (:func:`seg4seg_utils.model.train.train`); :class:`MulticlassTask`
fills its hooks.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
from PIL import Image

from seg4seg_utils.data.records import DatasetError, SampleTable, write_png
from seg4seg_utils.model.label_flips import dice_score, flip_risk, image_summary
from seg4seg_utils.model.train import BinaryTask, Run, augment_batch, normalise_images, train

__all__ = ["MulticlassTask", "train_multiclass", "load_multiclass_model", "load_probabilities", "pixel_flips"]



# ---------------------------------------------------------------------------------------- training
def _load_pair(table: SampleTable, i: int, size: int, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    img, labels = table.image(i), table.mask(i)
    where = table.path(table.df["mask"].iat[i])
    if labels.dtype == bool:
        raise DatasetError(f"{where}: a binary mask in a multi-class run; the dataset must say "
                           "'\"mask_kind\": \"multiclass\"' in dataset.json (DatasetWriter(mask_kind='multiclass')).")
    if img.shape[:2] != labels.shape:
        raise DatasetError(f"{where}: mask is {labels.shape[1]}x{labels.shape[0]} but its image is "
                           f"{img.shape[1]}x{img.shape[0]}; they must have the same size.")
    if labels.max() >= n_classes:
        raise DatasetError(f"{where}: holds label {int(labels.max())} but n_classes={n_classes} (labels 0.."
                           f"{n_classes - 1}); pass the right n_classes or fix the mask.")
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    img = np.asarray(Image.fromarray(img).resize((size, size), Image.BILINEAR))
    lab = np.asarray(Image.fromarray(labels).resize((size, size), Image.NEAREST))  # labels never blend
    return img.transpose(2, 0, 1), lab.astype(np.int64)


def _load_arrays(table: SampleTable, size: int, n_classes: int, workers: int = 0) -> tuple[np.ndarray, np.ndarray]:
    workers = workers or os.cpu_count() or 1
    with ThreadPoolExecutor(max_workers=workers) as pool:
        pairs = list(pool.map(lambda i: _load_pair(table, i, size, n_classes), range(len(table))))
    return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


def _augment(x, y, cfg, gen, n_classes: int):
    """train.augment_batch on one-hot labels; pixels no class claims any more (rotated in from outside the
    image, or split evenly at a boundary) are ignored by the loss (-100)."""
    import torch
    import torch.nn.functional as F

    onehot = F.one_hot(y, n_classes).permute(0, 3, 1, 2).float()
    x, onehot = augment_batch(x, onehot, cfg, gen)
    labels = onehot.argmax(dim=1)
    return x, torch.where(onehot.amax(dim=1) > 0.5, labels, torch.full_like(labels, -100))


def _evaluate(model, x_all, y_all, cfg, device, n_classes: int) -> tuple[float, float]:
    """Mean cross-entropy and mean per-image class Dice of a held-out split."""
    import torch

    model.eval()
    losses, dices = [], []
    loss_fn = torch.nn.CrossEntropyLoss(reduction="none")
    with torch.no_grad():
        for s in range(0, len(x_all), cfg.batch_size):
            x = normalise_images(x_all[s:s + cfg.batch_size], device, cfg.encoder)
            y = y_all[s:s + cfg.batch_size].to(device)
            logits = model(x).float()
            losses.append(loss_fn(logits, y).mean(dim=(1, 2)).cpu())
            pred = logits.argmax(dim=1).cpu().numpy()
            truth = y.cpu().numpy()
            for t, p in zip(truth, pred):
                classes = [c for c in range(1, n_classes) if (t == c).any() or (p == c).any()]
                dices.append(np.mean([dice_score(t == c, p == c) for c in classes]) if classes else 1.0)
    return float(torch.cat(losses).mean()), float(np.mean(dices))


def _n_classes(table: SampleTable, n_classes: int | None) -> int:
    if n_classes is None:
        n_classes = table.meta.get("n_classes")
        if n_classes is None:
            raise ValueError(f"{table.root}: dataset.json does not say n_classes; pass n_classes= (background + "
                             "foreground classes, e.g. 3 for two foreground classes)")
    if int(n_classes) < 3:
        raise ValueError(f"n_classes must be >= 3 (background + at least two foreground classes: label flips need "
                         f"two classes to flip between), got {n_classes}; use seg4seg_utils.model.train for binary masks")
    return int(n_classes)


class MulticlassTask(BinaryTask):
    """C classes (background + at least two foreground classes): cross-entropy on C logit channels, labels
    resized with nearest neighbours, pixels that augmentation leaves unclaimed ignored (-100), model selection
    on the mean per-image class Dice, softmax probabilities stored per test image."""

    name = "multiclass"
    score_name = "val_dice_classes"

    def __init__(self, n_classes: int):
        self.n_classes = int(n_classes)
        self.out_channels = self.n_classes
        self.folder_tag = f"-mc{self.n_classes}"

    def hash_extra(self) -> dict[str, Any]:
        # "task" and "n_classes" keep multi-class runs apart from binary runs of the same TrainConfig
        return {"task": "multiclass", "n_classes": self.n_classes}

    def config_extra(self) -> dict[str, Any]:
        return {"task": "multiclass", "n_classes": self.n_classes}

    def describe(self) -> str:
        return f"training multi-class ({self.n_classes} classes)"

    def load(self, table: SampleTable, cfg, desc: str) -> tuple[np.ndarray, np.ndarray]:
        return _load_arrays(table, cfg.image_size, self.n_classes, cfg.num_workers)

    def targets(self, y, device):
        return y.to(device)

    def augment(self, x, y, cfg, generator):
        return _augment(x, y, cfg, generator, self.n_classes)

    def loss(self):
        import torch

        return torch.nn.CrossEntropyLoss(ignore_index=-100)

    def evaluate(self, model, x_all, y_all, cfg, device, amp: bool) -> tuple[float, float]:
        return _evaluate(model, x_all, y_all, cfg, device, self.n_classes)

    def predict(self, model, table: SampleTable, cfg, device, root: Path, progress: bool) -> pd.DataFrame:
        return _predict(model, table, cfg, device, root, self.n_classes)

    def summary(self, metrics: pd.DataFrame) -> dict[str, Any]:
        return {"test_dice_fg": float(metrics["dice_fg"].mean()),
                "test_dice_classes": float(metrics["dice_classes"].mean()),
                "test_flip_rate": float(metrics["flip_rate"].mean()), "n_classes": self.n_classes}


def train_multiclass(table: SampleTable, cfg, runs_dir: str | os.PathLike = "runs", n_classes: int | None = None,
                     name: str | None = None, progress: bool = True) -> Run:
    """Train (or resume, or reuse) a multi-class U-Net with cross-entropy; predict the test split with probabilities.

    The project's one training loop (:func:`seg4seg_utils.model.train.train`) with a :class:`MulticlassTask`:
    ``cfg`` is a :class:`~seg4seg_utils.model.train.TrainConfig` (``threshold`` is unused: the prediction is the
    argmax class); same augmentation, normalisation, optimiser, resume and model selection on validation (here
    the mean class Dice) as binary runs, deterministic for a seed on CPU. The run folder
    (``<runs>/<dataset>/<encoder>-mc<C>-<hash>/``) holds config.json (with ``task`` and ``n_classes``),
    history.csv, best.pt, last.pt, predictions/ (uint8 label PNGs), probabilities/ (one ``<id>.npz`` per test
    image: float16 (C, H, W) softmax at the original size), metrics.csv (one row per image:
    :func:`~seg4seg_utils.model.label_flips.image_summary` plus the sample attributes) and done.json.
    Returns a :class:`~seg4seg_utils.model.train.Run` whose ``load_model`` builds the C-channel network.
    """
    if table.mask_kind != "multiclass":
        raise DatasetError(f"{table.root}: masks are {table.mask_kind!r}, not 'multiclass'; train binary masks with "
                           "seg4seg_utils.model.train.train")
    return train(table, cfg, runs_dir, name, progress=progress, task=MulticlassTask(_n_classes(table, n_classes)))


def _predict(model, table: SampleTable, cfg, device, root: Path, n_classes: int) -> pd.DataFrame:
    import torch
    import torch.nn.functional as F

    model.eval().to(device)
    for sub in ("predictions", "probabilities"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    x_all, _ = _load_arrays(table, cfg.image_size, n_classes, cfg.num_workers)
    rows = []
    with torch.no_grad():
        for s in range(0, len(table), cfg.batch_size):
            logits = model(normalise_images(torch.from_numpy(x_all[s:s + cfg.batch_size]), device, cfg.encoder)).float()
            for k in range(logits.shape[0]):
                i = s + k
                truth = table.mask(i)
                full = F.interpolate(logits[k:k + 1], size=truth.shape, mode="bilinear", align_corners=False)
                proba = torch.softmax(full[0], dim=0).cpu().numpy()
                stored = proba.astype(np.float16)
                sid = str(table.df["id"].iat[i])
                np.savez_compressed(root / "probabilities" / f"{sid}.npz", proba=stored)
                # summaries from what is stored, so a later recomputation from disk gives the same numbers
                summary = image_summary(truth, stored.astype(np.float32))
                write_png(stored.astype(np.float32).argmax(axis=0).astype(np.uint8), root / "predictions" / f"{sid}.png")
                rows.append({"id": sid, **summary, "prediction": f"predictions/{sid}.png",
                             "probabilities": f"probabilities/{sid}.npz"})
    attrs = table.df.drop(columns=["split"])
    return attrs.merge(pd.DataFrame(rows), on="id", how="inner", validate="one_to_one")


def load_multiclass_model(run: Run, which: str = "best"):
    """The trained multi-class network of ``run`` (eval mode, CPU): :meth:`Run.load_model`, refusing binary runs."""
    run = Run.from_folder(run.root)
    if run.task != "multiclass":
        raise ValueError(f"{run.root}: not a multi-class run (use Run.load_model for binary runs)")
    return run.load_model(which)


def load_probabilities(run, sample_id: str) -> np.ndarray:
    """float32 (C, H, W) test-split probabilities of one sample, as stored by :func:`train_multiclass`."""
    path = Path(run.root) / "probabilities" / f"{sample_id}.npz"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no stored probabilities for {sample_id!r}; is it in the test split of the "
                                "dataset this run was trained on, and did the run finish (done.json)?")
    with np.load(path) as z:
        return z["proba"].astype(np.float32)


def pixel_flips(run, table: SampleTable, ids: Sequence[str] | None = None) -> pd.DataFrame:
    """Every predicted-foreground test pixel: its image id, flip-risk and whether it is a flip (0/1).

    Flipped pixels are always predicted foreground, so this table holds every flip of the test split; it is
    what the pixel-level top-decile share ranks.
    """
    test = table.split("test")
    ids = list(test.df["id"].astype(str)) if ids is None else [str(i) for i in ids]
    pos = {sid: k for k, sid in enumerate(test.df["id"].astype(str))}
    parts = []
    for sid in ids:
        proba = load_probabilities(run, sid)
        truth = test.mask(pos[sid])
        pred = proba.argmax(axis=0)
        fg = pred != 0
        flipped = fg & (truth != 0) & (pred != truth)
        parts.append(pd.DataFrame({"id": sid, "risk": flip_risk(proba)[fg], "flipped": flipped[fg].astype(np.uint8)}))
    return pd.concat(parts, ignore_index=True)
