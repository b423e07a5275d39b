"""Presets (smoke / cpu / paper), default paths and an environment report."""
from __future__ import annotations

import importlib
import os
import platform
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

__all__ = ["LabelFlipSize", "Preset", "PRESETS", "get_preset", "environment_report"]


@dataclass(frozen=True)
class LabelFlipSize:
    """The label-flip study's twin-cells phantom and slicer at one preset (notebook 11)."""

    n_images: int
    image_size: int                      # phantom size in pixels
    n_slices: int
    train_image_size: int | None = None  # the training preset's image size unless given

    def train_overrides(self) -> dict[str, Any]:
        """What the study changes in the preset's TrainConfig."""
        return {} if self.train_image_size is None else {"image_size": self.train_image_size}


@dataclass(frozen=True)
class Preset:
    """Everything that changes between a seconds-long smoke run, the CPU default and the paper's settings."""

    name: str
    description: str
    n_images: int                 # per phantom modality (ignored when real data is used)
    image_size: int               # phantom generation size in pixels
    prevalences: tuple[float, ...]
    seeds: tuple[int, ...]        # data/training seeds (one model each)
    slicer_seeds: tuple[int, ...] = (0, 1, 2, 3, 4)  # slicer seeds per model (UMAP + EM initialisation)
    real_data: bool = False       # the paper preset reads prepared real datasets instead of phantoms
    # the training preset: TrainConfig fields (seg4seg_utils.model.train) that differ from the paper's defaults
    train: tuple[tuple[str, Any], ...] = ()
    # the label-flip study (smoke: seconds; cpu: about two minutes of training on 2 cores)
    labelflip: LabelFlipSize = LabelFlipSize(600, 128, 10)


PRESETS: dict[str, Preset] = {
    # 100 images leave 20 in the test split: enough for case B's 20 slices
    "smoke": Preset("smoke", "seconds, for tests and nbval: tiny phantoms, one prevalence",
                    n_images=100, image_size=64, prevalences=(0.2,), seeds=(0,), slicer_seeds=(0,),
                    # seconds, for tests
                    train=(("encoder", "resnet18"), ("decoder_channels", (16, 16, 16, 16, 16)), ("image_size", 32),
                           ("epochs", 2), ("batch_size", 8), ("lr", 1e-3), ("rotation_deg", 10.0)),
                    labelflip=LabelFlipSize(100, 64, 4)),
    "cpu": Preset("cpu", "the embedded default: phantoms, all prevalences, minutes on 2 CPU cores",
                  n_images=1000, image_size=256, prevalences=(0.05, 0.10, 0.20), seeds=(0,),
                  # small enough to train one model per case and prevalence in about a minute on 2 cores: a
                  # one-cycle schedule peaking at 2e-3 reaches in 6 epochs the Dice a constant 1e-3 reached in 8,
                  # in bf16 on CPUs with AMX (fp32 elsewhere; see seg4seg_utils.kernels)
                  train=(("encoder", "resnet18"), ("decoder_channels", (128, 64, 32, 16, 8)), ("image_size", 96),
                         ("epochs", 6), ("batch_size", 16), ("lr", 2e-3), ("lr_schedule", "onecycle"),
                         ("precision", "auto")),
                  labelflip=LabelFlipSize(600, 128, 10)),
    "paper": Preset("paper", "the paper's settings: real HC18 / ISIC2018 / FIVES prepared with data_prep, GPU",
                    n_images=0, image_size=512, prevalences=(0.05, 0.10, 0.20), seeds=(0, 1, 2, 3, 4),
                    slicer_seeds=(0,), real_data=True, labelflip=LabelFlipSize(2000, 256, 10, train_image_size=256)),
}


def get_preset(name: str | Preset) -> Preset:
    """The preset called ``name`` (a Preset passes through)."""
    if isinstance(name, Preset):
        return name
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}") from None


def _version(module: str) -> str | None:
    try:
        return getattr(importlib.import_module(module), "__version__", "installed")
    except Exception:  # a missing or broken optional package is reported, not raised
        return None


def environment_report(with_torch: bool = True) -> dict[str, Any]:
    """Versions, hardware and offline settings, for the top of every notebook and results folder."""
    report: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "(unset)"),
    }
    for mod in ("numpy", "pandas", "scipy", "skimage", "sklearn", "matplotlib", "PIL"):
        report[mod] = _version(mod)
    if with_torch:
        report["torch"] = _version("torch")
        if report["torch"]:
            import torch

            report["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
            report["mps"] = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
    return report


def preset_dict(preset: str | Preset) -> dict[str, Any]:
    """A preset as a plain dict (for JSON provenance files)."""
    return asdict(get_preset(preset))


def default_paths(data: str | os.PathLike = "data", results: str | os.PathLike = "results") -> dict[str, Path]:
    """Where generated data and results go unless the user says otherwise."""
    return {"data": Path(data), "results": Path(results)}
