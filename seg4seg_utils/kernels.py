"""CPU numerics pinned so that a seed gives the same numbers whatever the thread count or joblib backend.

Why this exists (measured with the cpu preset's U-Net, 12 Adam steps, torch 2.13 CPU, on a 2-core AMD EPYC
with AVX-512; see ``scripts/bench_kernels.py``):

- **Thread count.** oneDNN's convolutions (torch's default CPU path) reduce in an order that depends on the
  number of threads: the weights after 12 steps differ between 1 and 2 threads, and a model trained for
  8 epochs on them ends up with a different best epoch and a different subgroup gap. Embeddings differ
  by ~1e-6 between 1 and 2 threads, which UMAP amplifies into different slices.
- **Instruction set.** oneDNN and MKL choose kernels by the CPU's instruction set: AVX-512 and AVX2
  kernels give different weights. ATen's own kernels gave identical weights at ``avx2`` and ``avx512``.
- **numpy's SIMD level.** numpy dispatches its vectorised loops (transcendental functions, reductions) by
  CPU level, and AVX-512 loops round differently from AVX2 ones. That changes the *generated data*: the
  ultrasound and dermoscopy phantoms at 256 px differ byte for byte between numpy's ``AVX512_ICL`` and
  ``X86_V3`` levels (fundus did not), so an AVX-512 and an AVX2-only machine trained different models from
  the same seed. It also changes UMAP on the same embedding (max |dz| 5.1 for case B at 5 %; all 5 of its
  detection rows moved). With numpy pinned, this AVX-512 machine reproduced two figures reported from an
  AVX2-only machine exactly (see the README). ``tests/test_reproducible.py`` holds reference digests of a
  generated phantom and a UMAP fit, which both change when the pin is removed.
- **OpenBLAS's core type** (numpy's and scipy's BLAS) picks GEMM kernels by CPU; the workplace's machines set
  ``OPENBLAS_CORETYPE=Haswell`` already, other machines would pick their own.
- **numba's target.** UMAP's numba kernels use ``fastmath``, so the vector width LLVM chooses for the host CPU
  may reorder sums. ``NUMBA_CPU_NAME`` alone does not pin it: numba still adds the *host's* feature flags
  (``+avx512f`` on an AVX-512 machine) unless ``NUMBA_CPU_FEATURES`` is set too. Measured: with only the name
  pinned, the reference UMAP of ``tests/test_reproducible.py`` gave ``e98c7ffee4e7c928`` on an AVX-512 AMD
  (Zen 5) and ``f64700af6b8cc1d4`` on an AVX2-only AMD (Zen 3); with the features pinned too, the Zen 3 gives
  the same ``f64700af6b8cc1d4`` (its own features already are AVX2-level), which is now the reference.
- **Not a source:** UMAP and the slicer's EM across thread counts.

What is pinned, therefore:

1. The process environment (:data:`KERNEL_ENV`, set before numpy or torch is imported: by the project's
   virtual environment at interpreter start-up, and by ``python -m seg4seg_utils``, which restarts itself
   with it when it is missing): oneDNN and ATen capped at AVX2, MKL in conditional-numerical-reproducibility
   mode on its AVX2 branch, numpy without its AVX-512 dispatch targets, OpenBLAS on its Haswell kernels and
   numba compiling for Haswell. Every x86-64 CPU since 2013 runs these kernels; AVX-512 machines give up
   some speed (about 1.3x per training step on the machine above).
2. The intra-op thread count inside every torch computation (:func:`pinned`): training uses
   ``TrainConfig.threads`` (2 by default; it is part of the run's config and hash), embedding uses
   :data:`EMBED_THREADS` = 1 (parallelism comes from joblib workers, so n_jobs never changes a number).
3. ``SEG4SEG_KERNELS=portable`` additionally switches oneDNN off, so convolutions run as im2col + MKL
   GEMM. MKL's reproducibility mode guarantees fixed cache sizes, deterministic reductions and static
   scheduling, i.e. the same bits on any CPU with AVX2. It costs about 2.7x per training step.

4. **bf16 training where the CPU has bf16 kernels** (``TrainConfig.precision="auto"``, the cpu preset's): on
   CPUs with AMX-BF16 (Intel Sapphire Rapids and later) or AVX512-BF16 (e.g. AMD Zen 4) a training runs under
   bf16 autocast, in a spawned process whose oneDNN cap is ``AVX512_CORE_AMX`` (:data:`BF16_TRAINING_ENV`: a
   cap, so a CPU without AMX runs its AVX512-BF16 kernels under it; everything else stays pinned, and the
   calling process keeps its AVX2 cap for embeddings). Measured with ``scripts/bench_kernels.py`` (cpu preset's
   U-Net, batch 16 at 96 px, 2 threads): on a 2-core Xeon with AMX 0.21 s per step against 0.38 s in pinned
   fp32; on a 2-core AMD EPYC with AVX512-BF16 and no AMX 0.245 s against 0.376 s (median of three processes;
   a training under an ``AVX512_CORE_BF16`` cap gave the same loss and time as under this one). Elsewhere
   ``auto`` is fp32. The precision a run used is part of its folder's hash and of its config.json (with the
   CPU's name and bf16 instructions), so a bf16 run and an fp32 run are never mixed; a machine reproduces its
   own runs bit for bit (tested), and machines of different kinds train different models (as AVX2 machines of
   different makes already did in fp32, below).

Guaranteed (tested in ``tests/test_reproducible.py``): for a seed, the same trained weights, embeddings and
detection rows whatever ``OMP_NUM_THREADS`` / ``torch.set_num_threads`` and ``n_jobs`` / joblib backend
say. Across x86-64 CPUs with AVX2: the same numbers are expected, because every library above runs its
AVX2 code path on every such CPU; measured with a second cpu main job under one thread and an imitated
AVX2-only MKL on an AVX-512 machine (identical datasets, models and detection rows; see the README). oneDNN may still block its loops by cache size, which
``portable`` rules out. **Measured not to hold** between an AMD EPYC and an Intel Xeon (AVX-512, AMX): same data and
UMAP digests, different trained cpu models from the first one on (README, *Reproducibility*). Not covered: GPUs, ARM CPUs, other torch/oneDNN/MKL/numpy/OpenBLAS versions.
"""
from __future__ import annotations

import os
import platform
import warnings
from contextlib import contextmanager
from typing import Any, Iterator

__all__ = ["KERNEL_ENV", "BF16_TRAINING_ENV", "MODES", "PRECISIONS", "EMBED_THREADS", "cpu_bf16_isa",
           "training_precision", "kernel_env", "pin_process_env", "missing_pins", "kernel_mode", "pinned",
           "kernel_report", "numpy_simd", "kernel_key"]

# LLVM's Haswell features (x86-64-v3), the AVX-512 families switched off explicitly
NUMBA_AVX2_FEATURES = ("+64bit,+avx,+avx2,+bmi,+bmi2,+cmov,+cx16,+cx8,+f16c,+fma,+fxsr,+lzcnt,+mmx,+movbe,+pclmul,"
                       "+popcnt,+sahf,+sse,+sse2,+sse3,+sse4.1,+sse4.2,+ssse3,+xsave,"
                       "-avx512f,-avx512bw,-avx512cd,-avx512dq,-avx512vl,-fma4,-xop")
KERNEL_ENV: dict[str, str] = {
    "ONEDNN_MAX_CPU_ISA": "AVX2",   # oneDNN's JIT kernels: AVX2 at most
    "ATEN_CPU_CAPABILITY": "avx2",  # torch's own vectorised kernels
    "MKL_CBWR": "AVX2",             # MKL conditional numerical reproducibility, AVX2 branch
    # numpy 2.x's dispatch targets above AVX2 (X86_V3); disabling a target the CPU lacks is a silent no-op
    "NPY_DISABLE_CPU_FEATURES": "X86_V4 AVX512_ICL AVX512_SPR",
    "OPENBLAS_CORETYPE": "Haswell",  # numpy's and scipy's BLAS kernels (the workplace sets the same)
    "NUMBA_CPU_NAME": "haswell",     # UMAP's numba kernels compiled for AVX2, not the host CPU ...
    "NUMBA_CPU_FEATURES": NUMBA_AVX2_FEATURES,  # ... with AVX2's features only (numba adds the host's otherwise)
}
MODES = ("pinned", "portable")
# bf16 training (TrainConfig.precision) runs its convolutions on AMX tiles or AVX512-BF16 instructions, which
# oneDNN only uses when its cap allows them: such a training runs in its own process under this cap (every other
# pin unchanged). Under the AVX2 cap oneDNN emulates bf16, measured 25x slower per step than fp32 (13x in one run
# on an AMD EPYC Zen 4: 5.68 s against 0.42 s), so bf16 is only chosen where the CPU has one of those.
BF16_TRAINING_ENV = {**KERNEL_ENV, "ONEDNN_MAX_CPU_ISA": "AVX512_CORE_AMX"}
PRECISIONS = ("fp32", "bf16", "auto")
# numpy's dispatch levels that run the same code as an AVX2-only CPU (``baseline`` on CPUs without AVX2)
SIMD_AT_MOST_AVX2 = ("X86_V3", "baseline", "X86_V2", "unknown")
EMBED_THREADS = 1


def pin_process_env() -> dict[str, str]:
    """Set :data:`KERNEL_ENV` where the environment does not already say otherwise; return what is in force.

    Only effective before torch (and its oneDNN/MKL) initialise, i.e. before the first torch computation.
    """
    for key, value in KERNEL_ENV.items():
        os.environ.setdefault(key, value)
    return {key: os.environ[key] for key in KERNEL_ENV}


def missing_pins(environ: dict[str, str] | None = None) -> list[str]:
    """The :data:`KERNEL_ENV` variables absent from ``environ`` (default: this process's environment).

    numpy, OpenBLAS and numba read theirs once, when they load, so a process that lacks one must set it
    and restart (``python -m seg4seg_utils`` does) rather than set it late.
    """
    environ = os.environ if environ is None else environ
    return [key for key in KERNEL_ENV if key not in environ]


def numpy_simd() -> str:
    """numpy's highest active dispatch target, e.g. ``X86_V3`` when pinned (``X86_V4`` on AVX-512 unpinned)."""
    try:
        from numpy._core._multiarray_umath import __cpu_dispatch__, __cpu_features__
    except ImportError:  # numpy < 2 or a layout change: report that it is unknown rather than guess
        return "unknown"
    active = [name for name in __cpu_dispatch__ if __cpu_features__.get(name)]
    return active[-1] if active else "baseline"


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


BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")  # Linux's /proc/cpuinfo names, the faster first


def cpu_bf16_isa(cpuinfo: str = "/proc/cpuinfo") -> str | None:
    """The CPU's bf16 matrix instructions oneDNN trains with: ``"amx_bf16"`` (Intel Sapphire Rapids and later),
    ``"avx512_bf16"`` (e.g. AMD Zen 4, Intel Cooper Lake), or ``None`` (Linux's /proc/cpuinfo flags)."""
    try:
        with open(cpuinfo) as fh:
            flags = next((set(line.split(":", 1)[1].split()) for line in fh if line.startswith("flags")), set())
    except OSError:
        return None
    return next((flag for flag in BF16_CPU_FLAGS if flag in flags), None)


def training_precision(requested: str, device: Any = "cpu") -> str:
    """The precision a CPU training runs in: ``auto`` is ``bf16`` on CPUs with AMX-BF16 or AVX512-BF16 (pinned
    kernels; :func:`cpu_bf16_isa`) and ``fp32`` elsewhere, so a machine always trains the same way, and machines
    of different kinds may differ (they already do in fp32: see the module's docstring). Accelerators keep their
    own mixed precision: fp32."""
    if requested not in PRECISIONS:
        raise ValueError(f"precision {requested!r} is not one of {PRECISIONS}")
    if getattr(device, "type", str(device)) != "cpu":
        return "fp32"
    if requested == "auto":
        return "bf16" if kernel_mode() == "pinned" and cpu_bf16_isa() is not None else "fp32"
    return requested


def kernel_env(precision: str = "fp32") -> dict[str, str]:
    """The pinned environment a computation in ``precision`` expects (bf16 training: oneDNN may use AMX or
    AVX512-BF16)."""
    return BF16_TRAINING_ENV if precision == "bf16" else KERNEL_ENV


def kernel_report(threads: int | None = None, precision: str = "fp32") -> dict[str, Any]:
    """What numerics a computation ran with (for config.json and summaries); warns when the pin did not take."""
    import torch

    capability = torch.backends.cpu.get_cpu_capability()
    env = {key: os.environ.get(key) for key in KERNEL_ENV}
    expected = kernel_env(precision)
    if capability.lower() not in ("avx2", "default") or env != expected or numpy_simd() not in SIMD_AT_MOST_AVX2:
        warnings.warn(f"CPU kernels are not pinned (torch capability {capability}, environment {env}): results may "
                      "differ from another machine's. Run through `make`, the project's .venv or "
                      "`python -m seg4seg_utils`, or set " + " ".join(f"{k}={v}" for k, v in expected.items())
                      + " before importing torch.", RuntimeWarning, stacklevel=2)
    return {"mode": kernel_mode(), "threads": threads, "precision": precision, "torch_cpu_capability": capability,
            **env,
            "numpy_simd": numpy_simd(), "torch": torch.__version__, "cpu": _cpu_name(),
            "bf16_isa": cpu_bf16_isa() if precision == "bf16" else None}


def kernel_key(threads: int | None) -> str:
    """A short tag of the numerics for cache keys: results computed under another tag are never reused.

    It names the torch kernel cap, numpy's SIMD level, OpenBLAS's core type and numba's target, so an
    embedding or a UMAP fit cached by an unpinned process is never read by a pinned one (or vice versa).
    """
    torch_isa = os.environ.get("ONEDNN_MAX_CPU_ISA", "native")
    blas = os.environ.get("OPENBLAS_CORETYPE", "native")
    numba_cpu = os.environ.get("NUMBA_CPU_NAME", "host")
    if os.environ.get("NUMBA_CPU_FEATURES") != NUMBA_AVX2_FEATURES:
        numba_cpu += "+hostfeatures"
    return (f"{kernel_mode()}-t{threads if threads is not None else 'any'}-{torch_isa}-np{numpy_simd()}"
            f"-blas{blas}-numba{numba_cpu}")
