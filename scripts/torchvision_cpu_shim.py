"""Let the CUDA-built torchvision 0.28.0 wheel import on the CPU-only torch 2.13.0 wheel.

Why this exists
---------------
No CPU build of torchvision is published for this torch, so the CPU environment pins the CUDA-built
``torchvision==0.28.0``. Its compiled extension cannot load against CPU torch, and at import time
``torchvision/_meta_registrations.py`` registers fake kernels for ``torchvision::nms`` and
``torchvision::qnms``; with the extension missing those operators do not exist and ``import
torchvision`` dies with "operator torchvision::nms does not exist". Declaring the two operator schemas
first (no kernels) lets the import finish; everything pure-Python (transforms, models, datasets) then
works, and only the compiled detection ops (nms, roi_align, ...) remain unavailable - seg4seg uses none.

How it is wired
---------------
``scripts/setup_venv.sh`` copies this file into the virtual environment's site-packages and adds a
``.pth`` line that imports it, *only* when a plain ``import torchvision`` fails with that error. On
import it installs a tiny meta-path finder; the schemas are declared lazily, the first time anything
imports ``torchvision``, so interpreters that never touch torchvision do not pay for importing torch.
A GPU environment (matching CUDA torch + torchvision) never gets this file.
"""
from __future__ import annotations

import importlib.abc
import sys

_SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)
_LIBRARY = None  # keep a reference: the definitions vanish when the Library object is collected


def declare_torchvision_schemas() -> None:
    """Declare torchvision's nms/qnms operator schemas if the compiled extension did not."""
    global _LIBRARY
    import torch

    if _LIBRARY is not None:
        return
    try:
        torch.ops.torchvision.nms  # present when torchvision's C++ extension is loadable
        return
    except (AttributeError, RuntimeError):
        pass
    _LIBRARY = torch.library.Library("torchvision", "DEF")
    for schema in _SCHEMAS:
        _LIBRARY.define(schema)


class _DeclareBeforeTorchvision(importlib.abc.MetaPathFinder):
    """Runs :func:`declare_torchvision_schemas` once, just before ``torchvision`` is first imported."""

    def find_spec(self, fullname, path=None, target=None):  # noqa: D102 - importlib protocol
        if fullname == "torchvision":
            sys.meta_path.remove(self)
            declare_torchvision_schemas()
        return None  # let the normal finders import torchvision


if not any(isinstance(f, _DeclareBeforeTorchvision) for f in sys.meta_path):
    sys.meta_path.insert(0, _DeclareBeforeTorchvision())
