"""CPU numerics pinned so that a seed gives the same numbers whatever the thread count or joblib backend.

Why this exists (measured with the cpu preset's U-Net, 12 Adam steps, torch 2.13 CPU, on a 2-core AMD EPYC
with AVX-512; see ``scripts/bench_kernels.py``):

- **Thread count.** oneDNN's convolutions (torch's default CPU path) reduce in an order that depends on the
  number of threads: the weights after 12 steps differ between 1 and 2 threads, and a model trained for
  8 epochs on them ends up with a different best epoch and a different subgroup gap. Embeddings differ
  by ~1e-6 between 1 and 2 threads, which UMAP amplifies into different slices.
- **Instruction set.** oneDNN and MKL choose kernels by the CPU's instruction set: AVX-512 and AVX2
  kernels give different weights. ATen's own kernels gave identical weights at ``avx2`` and ``avx512``.
- **numpy's SIMD level (not pinned yet).** UMAP on the same embedding gives different coordinates when numpy
  may not use its AVX-512 kernels (``NPY_DISABLE_CPU_FEATURES="X86_V4 AVX512_ICL AVX512_SPR"``, i.e. what an
  AVX2-only CPU runs): max |dz| 5.1 for case B at 5 %, and all 5 of its detection rows changed (their verdict
  did not). A model retrained under that imitation and one thread had bit-identical weights and metrics.
- **Not a source:** UMAP and the slicer's EM across thread counts and numba targets (host, haswell, generic).

What is pinned, therefore:

1. The process environment (:data:`KERNEL_ENV`, set before torch is imported: by ``make``, by the
   project's virtual environment at interpreter start-up, and by ``python -m seg4seg_utils``): oneDNN and
   ATen capped at AVX2, MKL in conditional-numerical-reproducibility mode on its AVX2 branch. Every x86-64
   CPU since 2013 runs these kernels; AVX-512 machines give up some speed (about 1.3x per training step
   on the machine above).
2. The intra-op thread count inside every torch computation (:func:`pinned`): training uses
   ``TrainConfig.threads`` (2 by default; it is part of the run's config and hash), embedding uses
   :data:`EMBED_THREADS` = 1 (parallelism comes from joblib workers, so n_jobs never changes a number).
3. ``SEG4SEG_KERNELS=portable`` additionally switches oneDNN off, so convolutions run as im2col + MKL
   GEMM. MKL's reproducibility mode guarantees fixed cache sizes, deterministic reductions and static
   scheduling, i.e. the same bits on any CPU with AVX2. It costs about 2.7x per training step.

Guaranteed (tested in ``tests/test_reproducible.py``): for a seed, the same trained weights, embeddings and
detection rows whatever ``OMP_NUM_THREADS`` / ``torch.set_num_threads`` and ``n_jobs`` / joblib backend
say. Across x86-64 CPUs: trained weights and embeddings are expected to match (measured under an imitated
AVX2-only CPU on an AVX-512 machine; oneDNN may still block its loops by cache size, which ``portable``
rules out), but detection rows do **not** yet match between AVX-512 and AVX2 machines, because numpy's
SIMD level changes UMAP (see above). Not covered: GPUs, ARM CPUs, other torch/oneDNN/MKL/numpy versions.
"""
from __future__ import annotations

import os
import platform
import warnings
from contextlib import contextmanager
from typing import Any, Iterator

__all__ = ["KERNEL_ENV", "MODES", "EMBED_THREADS", "pin_process_env", "kernel_mode", "pinned", "kernel_report",
           "kernel_key"]

KERNEL_ENV: dict[str, str] = {
    "ONEDNN_MAX_CPU_ISA": "AVX2",   # oneDNN's JIT kernels: AVX2 at most
    "ATEN_CPU_CAPABILITY": "avx2",  # torch's own vectorised kernels
    "MKL_CBWR": "AVX2",             # MKL conditional numerical reproducibility, AVX2 branch
}
MODES = ("pinned", "portable")
EMBED_THREADS = 1


def pin_process_env() -> dict[str, str]:
    """Set :data:`KERNEL_ENV` where the environment does not already say otherwise; return what is in force.

    Only effective before torch (and its oneDNN/MKL) initialise, i.e. before the first torch computation.
    """
    for key, value in KERNEL_ENV.items():
        os.environ.setdefault(key, value)
    return {key: os.environ[key] for key in KERNEL_ENV}


def kernel_mode() -> str:
    """``pinned`` (default) or ``portable``, from ``SEG4SEG_KERNELS``."""
    mode = os.environ.get("SEG4SEG_KERNELS", "pinned").strip().lower() or "pinned"
    if mode not in MODES:
        raise ValueError(f"SEG4SEG_KERNELS={mode!r} is not one of {MODES}: 'pinned' (default) fixes threads and "
                         "caps the instruction set at AVX2; 'portable' also runs convolutions without oneDNN")
    return mode


@contextmanager
def pinned(threads: int | None, device: Any = "cpu") -> Iterator[None]:
    """Inside: exactly ``threads`` intra-op threads and, in portable mode, no oneDNN (CPU only; restored after).

    ``threads=None`` leaves torch's thread count alone (results then depend on it). On CUDA/MPS nothing changes.
    """
    import torch

    if getattr(device, "type", str(device)) != "cpu":
        yield
        return
    old_threads, old_mkldnn = torch.get_num_threads(), torch.backends.mkldnn.enabled
    try:
        if threads is not None:
            torch.set_num_threads(int(threads))
        torch.backends.mkldnn.enabled = kernel_mode() != "portable"
        yield
    finally:
        torch.set_num_threads(old_threads)
        torch.backends.mkldnn.enabled = old_mkldnn


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def kernel_report(threads: int | None = None) -> dict[str, Any]:
    """What numerics a computation ran with (for config.json and summaries); warns when the pin did not take."""
    import torch

    capability = torch.backends.cpu.get_cpu_capability()
    env = {key: os.environ.get(key) for key in KERNEL_ENV}
    if capability.lower() not in ("avx2", "default") or env != KERNEL_ENV:
        warnings.warn(f"CPU kernels are not pinned (torch capability {capability}, environment {env}): results may "
                      "differ from another machine's. Run through `make`, the project's .venv or "
                      "`python -m seg4seg_utils`, or set " + " ".join(f"{k}={v}" for k, v in KERNEL_ENV.items())
                      + " before importing torch.", RuntimeWarning, stacklevel=2)
    return {"mode": kernel_mode(), "threads": threads, "torch_cpu_capability": capability, **env,
            "torch": torch.__version__, "cpu": _cpu_name()}


def kernel_key(threads: int | None) -> str:
    """A short tag of the numerics for cache keys: results computed under another tag are never reused."""
    return f"{kernel_mode()}-t{threads if threads is not None else 'any'}-{os.environ.get('ONEDNN_MAX_CPU_ISA', 'native')}"
