"""Multi-class training for the label-flip study (the twin-cells phantom, :mod:`seg4seg_utils.data.twin_cells`).

:func:`train_multiclass` trains the project's U-Net with cross-entropy, reusing :mod:`seg4seg_utils.model.train`'s
config, data augmentation, device choice and normalisation, and stores softmax probabilities of the test split
(float16, compressed) next to the usual run files, so flip-risk (:mod:`.label_flips`) can be computed afterwards
without the model. (A second training loop beside :func:`seg4seg_utils.model.train.train`: merging the two into one
loop with a task is the next step of the redesign.)
"""
from __future__ import annotations

import json
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
from PIL import Image

from seg4seg_utils.data.records import DatasetError, SampleTable, config_hash, write_png
from seg4seg_utils.kernels import kernel_report, pinned
from seg4seg_utils.model.label_flips import dice_score, flip_risk, image_summary

__all__ = ["train_multiclass", "load_multiclass_model", "load_probabilities", "pixel_flips"]



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

    from seg4seg_utils.model.train import augment_batch

    onehot = F.one_hot(y, n_classes).permute(0, 3, 1, 2).float()
    x, onehot = augment_batch(x, onehot, cfg, gen)
    labels = onehot.argmax(dim=1)
    return x, torch.where(onehot.amax(dim=1) > 0.5, labels, torch.full_like(labels, -100))


def _build(cfg, n_classes: int):
    import segmentation_models_pytorch as smp
    import torch

    from seg4seg_utils.model.pretrained import load_encoder_weights

    torch.manual_seed(cfg.seed)
    model = smp.Unet(cfg.encoder, encoder_weights=None, in_channels=3, classes=n_classes,
                     decoder_channels=tuple(cfg.decoder_channels))
    return model, load_encoder_weights(model, cfg.encoder, cfg.encoder_weights)


def _run_root(table: SampleTable, cfg, runs_dir: Path, n_classes: int, name: str | None) -> tuple[Path, dict[str, Any]]:
    dataset = {"root": str(Path(table.root).resolve()), "config_hash": table.meta.get("config_hash"),
               "name": Path(table.root).name}
    # "task" and "n_classes" keep multi-class runs apart from binary runs of the same TrainConfig
    from seg4seg_utils.model.train import run_hash_payload

    digest = config_hash(run_hash_payload(cfg, dataset, task="multiclass", n_classes=n_classes))
    return Path(runs_dir) / dataset["name"] / f"{name or cfg.encoder}-mc{n_classes}-{digest[:10]}", dataset


def _evaluate(model, x_all, y_all, cfg, device, n_classes: int) -> tuple[float, float]:
    """Mean cross-entropy and mean per-image class Dice of a held-out split."""
    import torch

    from seg4seg_utils.model.train import normalise_images

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


def train_multiclass(table: SampleTable, cfg, runs_dir: str | os.PathLike = "runs", n_classes: int | None = None,
                     name: str | None = None, progress: bool = True):
    """Train (or reuse) a multi-class U-Net with cross-entropy; predict the test split with probabilities.

    ``cfg`` is a :class:`seg4seg_utils.model.train.TrainConfig` (``threshold`` is unused: the prediction is the
    argmax class). Same augmentation, normalisation, optimiser and model selection on validation (here the
    mean class Dice) as the binary trainer, deterministic for a seed on CPU. The run folder
    (``<runs>/<dataset>/<encoder>-mc<C>-<hash>/``) holds config.json, history.csv, best.pt, predictions/
    (uint8 label PNGs), probabilities/ (one ``<id>.npz`` per test image: float16 (C, H, W) softmax at the
    original size), metrics.csv (one row per image: :func:`image_summary` plus the sample attributes) and
    done.json. A finished run is reused; an interrupted one restarts from scratch (minutes on CPU).
    Returns a :class:`seg4seg_utils.model.train.Run` (load the network with :func:`load_multiclass_model`).
    """
    import torch

    from seg4seg_utils.model.train import Run, normalise_images, save_checkpoint, select_device, train_val_tables

    if table.mask_kind != "multiclass":
        raise DatasetError(f"{table.root}: masks are {table.mask_kind!r}, not 'multiclass'; train binary masks with "
                           "seg4seg_utils.model.train.train")
    n_classes = _n_classes(table, n_classes)
    cfg.validate()
    root, dataset = _run_root(table, cfg, Path(runs_dir), n_classes, name)
    run = Run(root, cfg, dataset)
    if run.done:
        return run
    train_t, val_t = train_val_tables(table, cfg)
    device = select_device(cfg.device)
    torch.manual_seed(cfg.seed)
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True, warn_only=True)
    with pinned(cfg.threads, device):  # thread count and kernels fixed: see seg4seg_utils.kernels
        model, init = _build(cfg, n_classes)
        model.to(device)
        optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
        loss_fn = torch.nn.CrossEntropyLoss(ignore_index=-100)
        if root.exists():
            shutil.rmtree(root)  # an unfinished earlier attempt of this very run (no done.json)
        root.mkdir(parents=True)
        (root / "config.json").write_text(json.dumps({"train": asdict(cfg), "task": "multiclass", "n_classes": n_classes,
                                                      "dataset": dataset, "initialisation": init, "device": str(device),
                                                      "kernels": kernel_report(cfg.threads)},
                                                     indent=2))
        if progress:
            print(f"[seg4seg] training multi-class ({n_classes} classes) {root} on {device}; encoder {cfg.encoder}: {init}")
        x_tr, y_tr = (torch.from_numpy(a) for a in _load_arrays(train_t, cfg.image_size, n_classes, cfg.num_workers))
        x_va, y_va = (torch.from_numpy(a) for a in _load_arrays(val_t, cfg.image_size, n_classes, cfg.num_workers))
        steps = len(x_tr) // cfg.batch_size + (len(x_tr) % cfg.batch_size > 1)
        n_seen = min(len(x_tr), steps * cfg.batch_size)
        history, best = [], -1.0
        for epoch in range(1, cfg.epochs + 1):
            model.train()
            t0 = time.perf_counter()
            gen = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
            order = torch.randperm(len(x_tr), generator=gen)
            total = 0.0
            for b in range(steps):
                idx = order[b * cfg.batch_size:(b + 1) * cfg.batch_size]
                x, y = _augment(normalise_images(x_tr[idx], device, cfg.encoder), y_tr[idx].to(device), cfg, gen, n_classes)
                optimizer.zero_grad(set_to_none=True)
                loss = loss_fn(model(x).float(), y)
                loss.backward()
                optimizer.step()
                total += loss.item() * len(idx)
            val_loss, val_dice = _evaluate(model, x_va, y_va, cfg, device, n_classes)
            history.append({"epoch": epoch, "train_loss": total / n_seen, "val_loss": val_loss,
                            "val_dice_classes": val_dice, "seconds": time.perf_counter() - t0})
            if progress:
                print(f"  epoch {epoch}/{cfg.epochs}: train loss {total / n_seen:.4f}, val loss {val_loss:.4f}, "
                      f"val class Dice {val_dice:.4f} ({history[-1]['seconds']:.1f} s)")
            if val_dice > best:
                best = val_dice
                save_checkpoint(root / "best.pt", {"model": model.state_dict(), "epoch": epoch, "val_dice": val_dice})
            pd.DataFrame(history).to_csv(root / "history.csv", index=False)
        state = torch.load(root / "best.pt", map_location=device, weights_only=False)
        model.load_state_dict(state["model"])
        metrics = _predict(model, table.split("test"), cfg, device, root, n_classes)
        metrics.to_csv(root / "metrics.csv", index=False)
        summary = {"best_epoch": int(state["epoch"]), "best_val_dice_classes": float(state["val_dice"]),
                   "test_dice_fg": float(metrics["dice_fg"].mean()),
                   "test_dice_classes": float(metrics["dice_classes"].mean()),
                   "test_flip_rate": float(metrics["flip_rate"].mean()), "n_classes": n_classes, "initialisation": init,
                   "device": str(device), "train_seconds": float(sum(h["seconds"] for h in history)), "n_train": len(x_tr)}
        (root / "done.json").write_text(json.dumps(summary, indent=2))
        return run


def _predict(model, table: SampleTable, cfg, device, root: Path, n_classes: int) -> pd.DataFrame:
    import torch
    import torch.nn.functional as F

    from seg4seg_utils.model.train import normalise_images

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


def load_multiclass_model(run, which: str = "best"):
    """The trained multi-class network of ``run`` (eval mode, CPU)."""
    import torch

    saved = json.loads((Path(run.root) / "config.json").read_text())
    if saved.get("task") != "multiclass":
        raise ValueError(f"{run.root}: not a multi-class run (use Run.load_model for binary runs)")
    model, _ = _build(replace(run.config, encoder_weights=None), int(saved["n_classes"]))
    state = torch.load(Path(run.root) / f"{which}.pt", map_location="cpu", weights_only=False)
    model.load_state_dict(state["model"])
    return model.eval()


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
