"""The paper's U-Net: configuration, presets, the one resumable deterministic training loop, test-set prediction.

:func:`train` is written once; a *task* fills its hooks (data, targets, augmentation, loss, validation score,
prediction, summary): :class:`BinaryTask` here, :class:`seg4seg_utils.model.multiclass.MulticlassTask` for
multi-class masks. Both get resume, AMP and channels-last on CUDA.

A run lives in its own folder (``<runs>/<dataset>/<name><task tag>-<config hash>/``)::

    config.json      the TrainConfig, the task (multi-class runs: "task" and "n_classes"), the dataset it used,
                     and how the encoder was initialised; :meth:`Run.from_folder` reads the task back
    history.csv      one row per epoch: train loss, validation loss and score, seconds
    last.pt best.pt  checkpoints (best by the validation score); last.pt resumes an interrupted run
    predictions/     predicted masks (binary) or label maps (multi-class) of the test split, at the original size
    metrics.csv      per-image metrics joined with the sample table's attributes
    done.json        written last: the run is complete and will be reused, never retrained
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import pandas as pd
from PIL import Image
from tqdm.auto import tqdm

from seg4seg_utils.config import PRESETS
from seg4seg_utils.data.records import DatasetError, SampleTable, config_hash, write_png
from seg4seg_utils.kernels import BF16_TRAINING_ENV, PRECISIONS, training_precision, kernel_report, pinned
from seg4seg_utils.model.metrics import metrics_table

__all__ = ["TrainingSetupError", "TrainConfig", "BinaryTask", "run_root", "run_hash_payload", "input_stats",
           "TRAIN_PRESETS", "train_preset", "select_device", "load_arrays", "augment_batch", "build_model", "Run",
           "resolved", "lr_scheduler", "LR_SCHEDULES", "train", "TrainJob", "train_all", "predict_split", "resize_mask",
           "resolution_ceiling"]

LR_SCHEDULES = ("constant", "onecycle")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class TrainingSetupError(RuntimeError):
    """The environment cannot run the requested configuration (absent device, unavailable weights)."""


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a trained model. Defaults are the paper's settings."""

    encoder: str = "resnet34"
    encoder_weights: str | None = None     # None | "packaged" | "imagenet" | path to a state dict
    decoder_channels: tuple[int, ...] = (256, 128, 64, 32, 16)
    image_size: int = 512
    epochs: int = 50
    batch_size: int = 32
    lr: float = 1e-4                       # Adam's learning rate; with lr_schedule "onecycle" its peak
    lr_schedule: str = "constant"          # constant | onecycle (warm-up then cosine decay to ~0, per step)
    precision: str = "fp32"                # CPU training: fp32 | bf16 (autocast on AMX) | auto (bf16 where the CPU
                                           # has AMX-BF16); a run records the one it used (kernels.training_precision)
    rotation_deg: float = 15.0             # random rotation in [-deg, deg]; the paper does not give the range
    hflip: bool = True
    vflip: bool = True
    seed: int = 0
    device: str = "auto"                   # auto | cpu | cuda | mps
    num_workers: int = 0                   # image decoding threads; 0 = one per CPU core
    threads: int | None = 2                # torch intra-op threads on CPU: fixed, because the weights depend on it
                                           # (None = torch's default, then results follow OMP_NUM_THREADS)
    threshold: float = 0.5
    max_train_samples: int | None = None   # subsample the training split (tests, quick looks)

    def validate(self) -> "TrainConfig":
        """Raise ValueError naming the first out-of-range field; return self when all is well."""
        checks = [
            (self.image_size >= 32 and self.image_size % 32 == 0, "image_size must be a multiple of 32 and >= 32"),
            (self.epochs >= 1, "epochs must be >= 1"),
            (self.batch_size >= 1, "batch_size must be >= 1"),
            (0 < self.lr < 1, "lr must lie in (0, 1)"),
            (self.lr_schedule in LR_SCHEDULES, f"lr_schedule must be one of {LR_SCHEDULES}"),
            (self.precision in PRECISIONS, f"precision must be one of {PRECISIONS}"),
            (0 <= self.rotation_deg <= 180, "rotation_deg must lie in [0, 180]"),
            (0 < self.threshold < 1, "threshold must lie in (0, 1)"),
            (self.device in ("auto", "cpu", "cuda", "mps"), "device must be auto, cpu, cuda or mps"),
            (self.num_workers >= 0, "num_workers must be >= 0"),
            (self.threads is None or self.threads >= 1, "threads must be None or >= 1"),
            (len(self.decoder_channels) == 5 and min(self.decoder_channels) >= 1,
             "decoder_channels must be five positive integers"),
            (self.max_train_samples is None or self.max_train_samples >= 1, "max_train_samples must be >= 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"TrainConfig: {message} (got {self})")
        return self


# the training half of every preset: the paper's ResNet-34 U-Net, 512 px, 50 epochs, Adam 1e-4, batch 32, BCE
# (the TrainConfig defaults) with each preset's changes, kept with the rest of the preset in config.PRESETS
TRAIN_PRESETS: dict[str, TrainConfig] = {name: TrainConfig(**dict(p.train)) for name, p in PRESETS.items()}


def train_preset(name: str, **overrides: Any) -> TrainConfig:
    """The named preset with optional field overrides, validated."""
    if name not in TRAIN_PRESETS:
        raise ValueError(f"unknown training preset {name!r}; choose one of {sorted(TRAIN_PRESETS)}")
    return replace(TRAIN_PRESETS[name], **overrides).validate()


def select_device(requested: str = "auto"):
    """CUDA, then MPS, then CPU for ``auto``; asking for an absent accelerator is an error, not a silent fallback."""
    import torch

    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise TrainingSetupError("device 'cuda' was requested but CUDA is not available (CPU-only torch or no GPU); "
                           "use device='auto' or 'cpu'")
    if requested == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise TrainingSetupError("device 'mps' was requested but Apple MPS is not available; use 'auto' or 'cpu'")
    return torch.device(requested)


# --------------------------------------------------------------------------------------------- data
def _load_pair(table: SampleTable, i: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    img, mask = table.image(i), table.mask(i)
    if img.shape[:2] != mask.shape:
        raise DatasetError(f"{table.path(table.df['mask'].iat[i])}: mask of sample {table.df['id'].iat[i]!r} is "
                           f"{mask.shape[1]}x{mask.shape[0]} but its image is {img.shape[1]}x{img.shape[0]}; "
                           "they must have the same size.")
    if img.ndim == 2:  # grayscale ultrasound -> the 3-channel input the paper's U-Net takes
        img = np.repeat(img[..., None], 3, axis=2)
    img = np.asarray(Image.fromarray(img).resize((size, size), Image.BILINEAR))
    return img.transpose(2, 0, 1), resize_mask(mask, size)[None]


def resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """A boolean mask resized to ``size`` x ``size`` as training sees it (bilinear, then half-way threshold)."""
    soft = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((size, size), Image.BILINEAR))
    return soft >= 128


def resolution_ceiling(masks: Iterable[np.ndarray], size: int, threshold: float = 0.5) -> np.ndarray:
    """Per mask, the test Dice a *perfect* model trained at ``size`` px could reach: its training target (the
    mask resized as :func:`resize_mask` does) upsampled back as :func:`predict_split` upsamples a prediction,
    against the mask itself. Structures thinner than a pixel at ``size`` cap every model's Dice here."""
    import torch
    import torch.nn.functional as F

    dice = []
    for mask in masks:
        small = torch.from_numpy(resize_mask(mask, size).astype(np.float32))[None, None]
        full = F.interpolate(small, size=mask.shape, mode="bilinear", align_corners=False)[0, 0].numpy() > threshold
        dice.append(metrics_table(full[None], np.asarray(mask, bool)[None])["dice"].iat[0])
    return np.asarray(dice)


def load_arrays(table: SampleTable, size: int, workers: int = 0, desc: str = "loading") -> tuple[np.ndarray, np.ndarray]:
    """All samples of ``table`` resized to ``size``: uint8 images (N, 3, S, S) and bool masks (N, 1, S, S)."""
    if len(table) == 0:
        raise ValueError(f"{table.root}: nothing to load (empty table)")
    workers = workers or os.cpu_count() or 1
    with ThreadPoolExecutor(max_workers=workers) as pool:  # PIL decodes and resizes without holding the GIL
        pairs = list(tqdm(pool.map(lambda i: _load_pair(table, i, size), range(len(table))), total=len(table),
                          desc=desc, leave=False, disable=len(table) < 200))
    return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


def input_stats(encoder: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel (mean, std) the encoder's weights expect: [-1, 1] scaling for TF-ported EfficientNets, else ImageNet."""
    if encoder.startswith("tu-tf_efficientnet"):
        return (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
    return IMAGENET_MEAN, IMAGENET_STD


def normalise_images(x_uint8, device, encoder: str = "resnet34"):
    import torch

    mean_v, std_v = input_stats(encoder)
    x = x_uint8.to(device, non_blocking=True).float().div_(255)
    mean = torch.tensor(mean_v, device=device).view(1, 3, 1, 1)
    std = torch.tensor(std_v, device=device).view(1, 3, 1, 1)
    return (x - mean) / std


def augment_batch(x, y, cfg: TrainConfig, generator):
    """Random rotation and flips, per sample, on a batch (images bilinear, masks re-thresholded at 0.5)."""
    import torch
    import torch.nn.functional as F

    n = x.shape[0]
    dev = x.device
    angle = (torch.rand(n, generator=generator) * 2 - 1) * math.radians(cfg.rotation_deg)
    sx = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0) if cfg.hflip else torch.ones(n)
    sy = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0) if cfg.vflip else torch.ones(n)
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.stack([torch.stack([cos * sx, -sin * sy, torch.zeros(n)], 1),
                         torch.stack([sin * sx, cos * sy, torch.zeros(n)], 1)], 1).to(dev, x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    y = (F.grid_sample(y, grid, mode="bilinear", padding_mode="zeros", align_corners=False) >= 0.5).to(y.dtype)
    return x, y


# -------------------------------------------------------------------------------------------- model
def build_model(cfg: TrainConfig, classes: int = 1) -> tuple[Any, str]:
    """The smp U-Net for ``cfg`` with ``classes`` output channels (1: binary logits, C: one per class) and a
    sentence saying how its encoder was initialised."""
    import segmentation_models_pytorch as smp
    import torch

    from seg4seg_utils.model.pretrained import load_encoder_weights

    torch.manual_seed(cfg.seed)
    smp_weights = "imagenet" if cfg.encoder_weights == "imagenet" else None
    try:
        model = smp.Unet(cfg.encoder, encoder_weights=smp_weights, in_channels=3, classes=classes,
                         decoder_channels=tuple(cfg.decoder_channels))
    except Exception as exc:
        if smp_weights:
            raise TrainingSetupError(f"could not load ImageNet weights for {cfg.encoder!r} ({type(exc).__name__}: {exc}). "
                               "Nothing can be downloaded here: pass encoder_weights='/path/to/weights.pth' (e.g. "
                               "torchvision's resnet34-b627a593.pth), use encoder 'tu-tf_efficientnet_lite0' with "
                               "encoder_weights='packaged', or None to train from scratch.") from exc
        raise
    return model, load_encoder_weights(model, cfg.encoder, cfg.encoder_weights)


# ---------------------------------------------------------------------------------------------- run
@dataclass
class Run:
    """A training run on disk (see the module docstring for its files)."""

    root: Path
    config: TrainConfig
    dataset: dict[str, Any] = field(default_factory=dict)
    n_classes: int | None = None    # None: a binary run; C: a multi-class run (background + C - 1 classes)

    @classmethod
    def from_folder(cls, root: str | os.PathLike) -> "Run":
        """A run read back from its folder (its config.json says which TrainConfig and task made it)."""
        saved = json.loads((Path(root) / "config.json").read_text())
        cfg = {**saved["train"], "decoder_channels": tuple(saved["train"]["decoder_channels"])}
        n_classes = int(saved["n_classes"]) if saved.get("task") == "multiclass" else None
        return cls(Path(root), TrainConfig(**cfg), saved.get("dataset", {}), n_classes)

    @property
    def task(self) -> str:
        """``"binary"`` or ``"multiclass"``."""
        return "binary" if self.n_classes is None else "multiclass"

    @property
    def done(self) -> bool:
        return (self.root / "done.json").is_file()

    def history(self) -> pd.DataFrame:
        return pd.read_csv(self.root / "history.csv")

    def metrics(self) -> pd.DataFrame:
        """Per-image test metrics joined with the sample attributes."""
        return pd.read_csv(self.root / "metrics.csv", keep_default_na=False, na_values=[""])

    def summary(self) -> dict[str, Any]:
        return json.loads((self.root / "done.json").read_text())

    def load_model(self, which: str = "best"):
        """The trained network (eval mode, CPU) from ``best.pt`` or ``last.pt``, with as many output channels
        as the run's task has (1 for binary, ``n_classes`` for multi-class)."""
        import torch

        model, _ = build_model(replace(self.config, encoder_weights=None), self.n_classes or 1)
        state = torch.load(self.root / f"{which}.pt", map_location="cpu", weights_only=False)
        model.load_state_dict(state["model"])
        return model.eval()


def resolved(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` with ``precision="auto"`` replaced by the precision it trains in on this machine."""
    return replace(cfg, precision=training_precision(cfg.precision, select_device(cfg.device)))


def run_root(table: SampleTable, cfg: TrainConfig, runs_dir: Path, name: str | None,
             task: "BinaryTask | None" = None) -> tuple[Path, dict[str, Any]]:
    """The run folder of ``table`` x ``cfg`` x ``task`` (``<runs>/<dataset>/<name><task tag>-<hash>``) and the
    dataset record stored in its config.json. ``precision="auto"`` is named by what it means on this machine."""
    task = task or BinaryTask()
    cfg = resolved(cfg)
    dataset = {"root": str(Path(table.root).resolve()), "config_hash": table.meta.get("config_hash"),
               "name": Path(table.root).name}
    digest = config_hash(run_hash_payload(cfg, dataset, **task.hash_extra()))
    return Path(runs_dir) / dataset["name"] / f"{name or cfg.encoder}{task.folder_tag}-{digest[:10]}", dataset


def run_hash_payload(cfg: TrainConfig, dataset: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """What a run's folder hash is computed from: the config, the dataset and (when not the default) the
    kernel mode, since portable kernels train different weights (see :mod:`seg4seg_utils.kernels`)."""
    from seg4seg_utils.kernels import kernel_mode

    train_fields = asdict(cfg)
    for name, old_default in (("lr_schedule", "constant"), ("precision", "fp32")):
        if train_fields[name] == old_default:  # fields added later: runs made before them keep their folders
            del train_fields[name]
    payload = {"train": train_fields, **extra, "dataset_hash": dataset["config_hash"] or dataset["root"]}
    if kernel_mode() != "pinned":
        payload["kernels"] = kernel_mode()
    return payload


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    import torch

    tmp = path.with_suffix(".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)  # an interrupted save never leaves a truncated checkpoint


def _evaluate(model, x_all, y_all, cfg: TrainConfig, device, amp: bool) -> tuple[float, float, np.ndarray]:
    """Mean BCE loss, mean per-image Dice and the per-image Dice of a held-out split."""
    import torch

    model.eval()
    losses, dices = [], []
    loss_fn = torch.nn.BCEWithLogitsLoss(reduction="none")
    with torch.no_grad(), torch.autocast(device.type, enabled=amp):
        for s in range(0, len(x_all), cfg.batch_size):
            x = normalise_images(x_all[s:s + cfg.batch_size], device, cfg.encoder)
            y = y_all[s:s + cfg.batch_size].to(device).float()
            logits = model(x).float()
            losses.append(loss_fn(logits, y).mean(dim=(1, 2, 3)).cpu())
            pred = (logits > math.log(cfg.threshold / (1 - cfg.threshold))).cpu().numpy()[:, 0]
            dices.append(metrics_table(pred, y.cpu().numpy()[:, 0] > 0.5)["dice"].to_numpy())
    per_image = np.concatenate(dices)
    return float(torch.cat(losses).mean()), float(per_image.mean()), per_image


def train_val_tables(table: SampleTable, cfg: TrainConfig) -> tuple[SampleTable, SampleTable]:
    """The train and val splits, the train split subsampled (seeded) to ``cfg.max_train_samples`` if set."""
    train_t, val_t = table.split("train"), table.split("val")
    if cfg.max_train_samples and len(train_t) > cfg.max_train_samples:
        keep = np.sort(np.random.default_rng(cfg.seed).choice(len(train_t), cfg.max_train_samples, replace=False))
        train_t = SampleTable(train_t.root, train_t.df.iloc[keep].reset_index(drop=True), train_t.meta)
    return train_t, val_t


class BinaryTask:
    """What the one training loop (:func:`train`) asks of a segmentation task, here binary foreground vs
    background: BCE on one logit channel, model selection on mean per-image Dice, binary predicted masks.

    A subclass overrides the hooks (scikit-learn's ``BaseMixture`` writes its EM loop once the same way):
    :class:`seg4seg_utils.model.multiclass.MulticlassTask` trains C classes with cross-entropy.
    """

    name = "binary"
    out_channels = 1
    score_name = "val_dice"     # the validation score the best checkpoint is chosen by (history column)
    folder_tag = ""             # added to the run folder's name

    def hash_extra(self) -> dict[str, Any]:
        """Extra fields of the run hash (none: binary runs keep their folders)."""
        return {}

    def config_extra(self) -> dict[str, Any]:
        """Extra fields of config.json, by which :meth:`Run.from_folder` knows the task."""
        return {}

    def describe(self) -> str:
        return "training"

    def load(self, table: SampleTable, cfg: TrainConfig, desc: str) -> tuple[np.ndarray, np.ndarray]:
        """Images (N, 3, S, S) uint8 and targets, resized to ``cfg.image_size``."""
        return load_arrays(table, cfg.image_size, cfg.num_workers, desc)

    def targets(self, y, device):
        """A batch of stored targets as the loss wants them."""
        return y.to(device).float()

    def augment(self, x, y, cfg: TrainConfig, generator):
        return augment_batch(x, y, cfg, generator)

    def loss(self):
        import torch

        return torch.nn.BCEWithLogitsLoss()

    def evaluate(self, model, x_all, y_all, cfg: TrainConfig, device, amp: bool) -> tuple[float, float]:
        """Mean validation loss and the selection score."""
        return _evaluate(model, x_all, y_all, cfg, device, amp)[:2]

    def predict(self, model, table: SampleTable, cfg: TrainConfig, device, root: Path, progress: bool) -> pd.DataFrame:
        """Predict the test split into ``root``; per-image metrics joined with the sample attributes."""
        return predict_split(model, table, cfg, device, root / "predictions", progress=progress)

    def summary(self, metrics: pd.DataFrame) -> dict[str, Any]:
        """The test-set figures of done.json."""
        return {"test_dice": float(metrics["dice"].mean())}


def lr_scheduler(optimizer, cfg: TrainConfig, steps_per_epoch: int):
    """The per-step learning-rate schedule of ``cfg`` (None for a constant rate). ``onecycle``: Smith's
    one-cycle policy (torch's ``OneCycleLR``: 30 % warm-up from lr/25 to ``cfg.lr``, cosine decay to lr/25e4),
    which reaches a given Dice in fewer epochs than a constant rate and ends on a settled model."""
    import torch

    if cfg.lr_schedule == "constant":
        return None
    return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg.lr, total_steps=cfg.epochs * steps_per_epoch,
                                               cycle_momentum=False)


@contextlib.contextmanager
def uninitialised_memory_unfilled() -> Iterator[None]:
    """Inside: torch's deterministic mode does not fill every freshly allocated tensor with NaN (restored after).

    Why: ``use_deterministic_algorithms(True)`` also turns on ``fill_uninitialized_memory``, a guard that fills
    each new tensor so that a kernel reading memory it never wrote gives NaN instead of garbage. Every kernel of
    a training step writes its output before anyone reads it, so the fills change no number
    (``tests/test_train.py`` trains with and without them and compares the weights bit for bit), but a
    cpu-preset step allocates about 1,200 tensors and the fills cost about 5 % of an epoch (median 10.8 s
    against 11.3 s, two epochs of three trainings each, bf16 on a 2-core AMD EPYC Zen 4). The deterministic
    algorithms themselves stay on.
    """
    import torch

    before = torch.utils.deterministic.fill_uninitialized_memory
    torch.utils.deterministic.fill_uninitialized_memory = False
    try:
        yield
    finally:
        torch.utils.deterministic.fill_uninitialized_memory = before


def train(table: SampleTable, cfg: TrainConfig, runs_dir: str | Path = "runs", name: str | None = None,
          progress: bool = True, stop_after_epoch: int | None = None, task: BinaryTask | None = None) -> Run:
    """Train (or resume, or reuse) a U-Net on ``table``'s train split, select on the task's validation score,
    predict the test split. ``task``: :class:`BinaryTask` (default) or a multi-class task
    (:class:`seg4seg_utils.model.multiclass.MulticlassTask`); both get resume, AMP and channels-last on CUDA.

    ``stop_after_epoch`` ends the process's work after that epoch as an interruption would (for testing
    resume); a later call with the same arguments continues from ``last.pt``.
    """
    import torch

    task = task or BinaryTask()
    device = select_device(cfg.validate().device)
    cfg = resolved(cfg)  # a bf16 run and an fp32 run of the same data never share a folder
    root, dataset = run_root(table, cfg, Path(runs_dir), name, task)
    run = Run(root, cfg, dataset, task.out_channels if task.out_channels > 1 else None)
    if run.done:
        return run
    if cfg.precision == "bf16" and os.environ.get("ONEDNN_MAX_CPU_ISA") != BF16_TRAINING_ENV["ONEDNN_MAX_CPU_ISA"]:
        # oneDNN reads its cap once per process: this process keeps the AVX2 cap (embeddings, UMAP inputs) and a
        # fresh one trains under the AMX cap, then the run is read back from its folder
        _train_in_fresh_process([TrainJob(table, cfg, runs_dir, name, task)], progress, stop_after_epoch)
        return run
    train_t, val_t = train_val_tables(table, cfg)
    amp = device.type == "cuda"
    cpu_bf16 = device.type == "cpu" and cfg.precision == "bf16"
    torch.manual_seed(cfg.seed)
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True, warn_only=True)

    # thread count and kernels fixed (see seg4seg_utils.kernels); no NaN fills of fresh tensors while training
    with pinned(cfg.threads, device), uninitialised_memory_unfilled():
        model, init = build_model(cfg, task.out_channels)
        model.to(device)
        if device.type == "cuda":
            model = model.to(memory_format=torch.channels_last)
        optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
        scaler = torch.amp.GradScaler(enabled=amp)
        loss_fn = task.loss()

        root.mkdir(parents=True, exist_ok=True)
        (root / "config.json").write_text(json.dumps({"train": asdict(cfg), **task.config_extra(), "dataset": dataset,
                                                      "initialisation": init, "device": str(device),
                                                      "kernels": kernel_report(cfg.threads, cfg.precision)}, indent=2))
        history: list[dict[str, Any]] = []
        start_epoch, best, schedule_state = 1, -1.0, None
        if (root / "last.pt").is_file():  # resume an interrupted run exactly where it stopped
            state = torch.load(root / "last.pt", map_location=device, weights_only=False)
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scaler.load_state_dict(state["scaler"])
            history, best, start_epoch = state["history"], state["best"], state["epoch"] + 1
            schedule_state = state.get("scheduler")
            print(f"[seg4seg] resuming {root.name} from epoch {state['epoch']}")
        elif progress or task.name == "binary":
            print(f"[seg4seg] {task.describe()} {root} on {device}; encoder {cfg.encoder}: {init}")

        x_tr, y_tr = (torch.from_numpy(a) for a in task.load(train_t, cfg, "train"))
        x_va, y_va = (torch.from_numpy(a) for a in task.load(val_t, cfg, "val"))
        # a trailing batch of one sample would break BatchNorm (and carries little signal): drop it
        steps = len(x_tr) // cfg.batch_size + (len(x_tr) % cfg.batch_size > 1)
        n_seen = min(len(x_tr), steps * cfg.batch_size)
        scheduler = lr_scheduler(optimizer, cfg, steps)
        if scheduler is not None and schedule_state is not None:
            scheduler.load_state_dict(schedule_state)
            # the schedule's constructor set the optimizer's rate to its starting value: restore the saved one
            optimizer.load_state_dict(state["optimizer"])
        for epoch in range(start_epoch, cfg.epochs + 1):
            model.train()
            t0 = time.perf_counter()
            # every epoch's shuffling and augmentation depend only on (seed, epoch): resuming reproduces them
            gen = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
            order = torch.randperm(len(x_tr), generator=gen)
            bar = tqdm(range(steps), desc=f"epoch {epoch}/{cfg.epochs}", disable=not progress, leave=False)
            total = 0.0
            for b in bar:
                idx = order[b * cfg.batch_size:(b + 1) * cfg.batch_size]
                x = normalise_images(x_tr[idx], device, cfg.encoder)
                x, y = task.augment(x, task.targets(y_tr[idx], device), cfg, gen)
                if device.type == "cuda":
                    x = x.contiguous(memory_format=torch.channels_last)
                optimizer.zero_grad(set_to_none=True)
                with torch.autocast(device.type, dtype=torch.bfloat16 if cpu_bf16 else None, enabled=amp or cpu_bf16):
                    loss = loss_fn(model(x).float(), y)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                if scheduler is not None:
                    scheduler.step()
                step_loss = loss.item()
                total += step_loss * len(idx)
                bar.set_postfix(loss=f"{step_loss:.4f}")
            val_loss, val_score = task.evaluate(model, x_va, y_va, cfg, device, amp)
            history.append({"epoch": epoch, "train_loss": total / n_seen, "val_loss": val_loss,
                            task.score_name: val_score, "seconds": time.perf_counter() - t0})
            if progress:
                print(f"  epoch {epoch}/{cfg.epochs}: train loss {total / n_seen:.4f}, val loss {val_loss:.4f}, "
                      f"{task.score_name.replace('_', ' ')} {val_score:.4f} ({history[-1]['seconds']:.1f} s)")
            if val_score > best:
                best = val_score
                save_checkpoint(root / "best.pt", {"model": model.state_dict(), "epoch": epoch, "val_dice": val_score})
            save_checkpoint(root / "last.pt", {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                                "scaler": scaler.state_dict(), "epoch": epoch, "history": history,
                                                "best": best,
                                                "scheduler": scheduler.state_dict() if scheduler else None})
            pd.DataFrame(history).to_csv(root / "history.csv", index=False)
            if stop_after_epoch is not None and epoch >= stop_after_epoch and epoch < cfg.epochs:
                return run

        best_state = torch.load(root / "best.pt", map_location=device, weights_only=False)
        model.load_state_dict(best_state["model"])
        metrics = task.predict(model, table.split("test"), cfg, device, root, progress)
        metrics.to_csv(root / "metrics.csv", index=False)
        summary = {"best_epoch": int(best_state["epoch"]), f"best_{task.score_name}": float(best_state["val_dice"]),
                   **task.summary(metrics), "initialisation": init, "device": str(device),
                   "train_seconds": float(sum(h["seconds"] for h in history)), "n_train": len(x_tr)}
        (root / "done.json").write_text(json.dumps(summary, indent=2))
        return run


@dataclass(frozen=True)
class TrainJob:
    """One :func:`train` call, for :func:`train_all`: the dataset, configuration, runs folder, run name, task
    (``None``: binary) and a label printed before it trains (``None``: nothing printed)."""

    table: SampleTable
    cfg: TrainConfig
    runs_dir: str | Path = "runs"
    name: str | None = None
    task: Any = None
    label: str | None = None


def _needs_bf16_process(job: TrainJob) -> bool:
    """Whether ``job`` still has to train, in bf16, in a process under the AMX cap other than this one."""
    cfg = resolved(job.cfg)
    if cfg.precision != "bf16" or os.environ.get("ONEDNN_MAX_CPU_ISA") == BF16_TRAINING_ENV["ONEDNN_MAX_CPU_ISA"]:
        return False
    root, _ = run_root(job.table, cfg, Path(job.runs_dir), job.name, job.task)
    return not (root / "done.json").is_file()


def train_all(jobs: Iterable[TrainJob], progress: bool = True) -> list[Run]:
    """:func:`train` for every job, in order, with the same runs as one call each: finished runs are read back,
    the others trained. The bf16 ones that still need training share **one** fresh process under the AMX cap
    (each :func:`train` call seeds itself, so a model does not depend on what trained before it in the same
    process); a process per model would pay Python's and torch's start-up once per model."""
    jobs = list(jobs)
    in_child = [job for job in jobs if _needs_bf16_process(job)]
    if in_child:
        _train_in_fresh_process(in_child, progress)
    trained_there = {id(job) for job in in_child}
    runs = []
    for job in jobs:
        if job.label and progress and id(job) not in trained_there:
            print(job.label)
        runs.append(train(job.table, job.cfg, job.runs_dir, job.name, progress=progress, task=job.task))
    return runs


def _train_in_fresh_process(jobs: list[TrainJob], progress: bool, stop_after_epoch: int | None = None) -> None:
    """:func:`train` of each job, in one new interpreter whose environment is
    :data:`~seg4seg_utils.kernels.BF16_TRAINING_ENV`; an error there is raised here. (A plain ``python -c``
    child rather than multiprocessing's spawn, which would re-run the caller's script when it lacks an
    ``if __name__ == "__main__"`` guard.)"""
    import fcntl
    import pickle
    import subprocess
    import sys
    import tempfile

    # one bf16 training at a time on this machine: two side by side on 2 cores (notebooks 07 and 11, run in
    # parallel by `make run`) took about 7 times as long each as one alone, not 2 times
    lock_path = Path(tempfile.gettempdir()) / "seg4seg-bf16-training.lock"
    with open(lock_path, "a") as lock, tempfile.TemporaryDirectory(prefix="seg4seg-train-") as tmp:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        job_file, outcome = Path(tmp) / "jobs.pkl", Path(tmp) / "outcome.pkl"
        job_file.write_bytes(pickle.dumps((jobs, progress, stop_after_epoch)))
        code = "import sys; from seg4seg_utils.model.train import _train_job; _train_job(sys.argv[1], sys.argv[2])"
        # without progress the child's output is kept (a notebook would show its loading bars), and only its
        # "[seg4seg]" lines are passed on - all of it when it fails
        quiet = {} if progress else {"stdout": subprocess.PIPE, "stderr": subprocess.STDOUT, "text": True}
        done = subprocess.run([sys.executable, "-c", code, str(job_file), str(outcome)],
                              env={**os.environ, **BF16_TRAINING_ENV}, **quiet)
        error = pickle.loads(outcome.read_bytes()) if outcome.is_file() else None
    if not progress:
        output = done.stdout or ""
        failed = error is not None or done.returncode != 0
        print("".join(line for line in output.splitlines(keepends=True) if failed or line.startswith("[seg4seg]")),
              end="")
    if error is not None:
        raise error
    if done.returncode != 0:
        raise RuntimeError(f"the bf16 training process of {', '.join(str(j.table.root) for j in jobs)} ended with "
                           f"exit code {done.returncode}; its output is above. precision='fp32' trains in this "
                           "process instead.")


def _train_job(job_file: str, outcome: str) -> None:
    """The child's side of :func:`_train_in_fresh_process`: train each job, or write the exception for the
    parent."""
    import pickle

    try:
        jobs, progress, stop_after_epoch = pickle.loads(Path(job_file).read_bytes())
        for job in jobs:
            if job.label and progress:
                print(job.label, flush=True)
            train(job.table, job.cfg, job.runs_dir, job.name, progress, stop_after_epoch, job.task)
    except BaseException as exc:  # handed to the parent, which raises it
        Path(outcome).write_bytes(pickle.dumps(exc))
        raise


def predict_split(model, table: SampleTable, cfg: TrainConfig, device, out_dir: Path | None = None,
                  progress: bool = True) -> pd.DataFrame:
    """Predict every sample, upsample to its original size, save masks, return metrics joined with attributes."""
    import torch
    import torch.nn.functional as F

    model.eval().to(device)
    amp = device.type == "cuda"
    if out_dir is not None:
        if out_dir.exists():
            shutil.rmtree(out_dir)  # only ever our own partial predictions of this same run
        out_dir.mkdir(parents=True)
    x_all, _ = load_arrays(table, cfg.image_size, cfg.num_workers, "test")
    rows = []
    with torch.no_grad(), torch.autocast(device.type, enabled=amp):
        for s in tqdm(range(0, len(table), cfg.batch_size), desc="predict", disable=not progress, leave=False):
            x = normalise_images(torch.from_numpy(x_all[s:s + cfg.batch_size]), device, cfg.encoder)
            prob = torch.sigmoid(model(x).float())
            for k in range(prob.shape[0]):
                i = s + k
                truth = table.mask(i)
                # metrics at the original resolution, against the untouched ground truth
                full = F.interpolate(prob[k:k + 1], size=truth.shape, mode="bilinear", align_corners=False)
                pred = (full[0, 0] > cfg.threshold).cpu().numpy()
                sid = table.df["id"].iat[i]
                if out_dir is not None:
                    write_png(pred, out_dir / f"{sid}.png")
                row = metrics_table(pred[None], truth[None], ids=[sid]).iloc[0].to_dict()
                row["prediction"] = f"predictions/{sid}.png" if out_dir is not None else ""
                rows.append(row)
    metrics = pd.DataFrame(rows)
    attrs = table.df.drop(columns=["split"])
    return attrs.merge(metrics, on="id", how="inner", validate="one_to_one")
