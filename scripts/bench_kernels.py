"""Which CPU numerics make training reproducible, and what each costs: weights digest and time per step.

    .venv/bin/python scripts/bench_kernels.py [--steps 12] [--repeats 3]

Each configuration runs in a fresh process (kernel choices are fixed when torch loads): the cpu preset's
U-Net, Adam, ``--steps`` steps of batch 16 at 96 px on seeded random data (the same for every run), after
two warm-up steps. Configurations:

- ``native``: torch's defaults (oneDNN at the CPU's best instruction set, threads = OMP_NUM_THREADS);
- ``pinned``: the project's default (oneDNN and ATen capped at AVX2, MKL reproducibility mode; see
  ``seg4seg_utils/kernels.py``);
- ``portable``: pinned and without oneDNN (convolutions as im2col + MKL GEMM);
- ``imitate-avx2``: pinned plus the variables that make the unpinned libraries behave as on an AVX2-only
  CPU (MKL_ENABLE_INSTRUCTIONS, numpy's NPY_DISABLE_CPU_FEATURES, numba's NUMBA_CPU_NAME).

each at 1 and 2 threads. Same digest = same weights to the last bit. Quote times as ratios against
``native`` on the same machine: machines of the same kind differ about 2.6x in speed.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

NATIVE = {"ONEDNN_MAX_CPU_ISA": "", "ATEN_CPU_CAPABILITY": "", "MKL_CBWR": ""}  # empty = the library's own choice
PINNED = {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2"}
IMITATE_AVX2 = {"MKL_ENABLE_INSTRUCTIONS": "AVX2", "NUMBA_CPU_NAME": "haswell",
                "NPY_DISABLE_CPU_FEATURES": "X86_V4 AVX512_ICL AVX512_SPR"}
CONFIGS = {"native": (NATIVE, "pinned"), "pinned": (PINNED, "pinned"), "portable": (PINNED, "portable"),
           "imitate-avx2": ({**PINNED, **IMITATE_AVX2}, "pinned")}


def child(steps: int, threads: int) -> dict:
    import hashlib
    import time

    import numpy as np
    import torch

    from seg4seg_utils.kernels import pinned
    from seg4seg_utils.train import augment_batch, build_model, train_preset

    cfg = train_preset("cpu")
    with pinned(threads):
        model, _ = build_model(cfg)
        opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
        rng = np.random.default_rng(0)
        X = torch.from_numpy(rng.random((64, 3, cfg.image_size, cfg.image_size), dtype=np.float32))
        Y = torch.from_numpy((rng.random((64, 1, cfg.image_size, cfg.image_size)) > 0.7).astype(np.float32))
        gen = torch.Generator().manual_seed(1)
        loss_fn = torch.nn.BCEWithLogitsLoss()
        model.train()
        times = []
        for step in range(steps + 2):
            t0 = time.perf_counter()
            idx = torch.randperm(64, generator=gen)[:16]
            x, y = augment_batch(X[idx], Y[idx], cfg, gen)
            opt.zero_grad()
            loss_fn(model(x), y).backward()
            opt.step()
            if step >= 2:  # warm-up steps excluded
                times.append(time.perf_counter() - t0)
        digest = hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in model.state_dict().values()))
        return {"digest": digest.hexdigest()[:12], "ms_per_step": 1000 * statistics.median(times),
                "capability": torch.backends.cpu.get_cpu_capability()}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--repeats", type=int, default=3, help="processes per configuration (times: median of them)")
    ap.add_argument("--child", nargs=2, type=str, metavar=("STEPS", "THREADS"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(int(args.child[0]), int(args.child[1]))))
        return
    from seg4seg_utils.kernels import kernel_report

    print(f"CPU: {kernel_report()['cpu']}")
    rows = []
    for name, (env_over, mode) in CONFIGS.items():
        for threads in (1, 2):
            env = {**os.environ, **env_over, "SEG4SEG_KERNELS": mode, "OMP_NUM_THREADS": str(threads)}
            runs = []
            for _ in range(args.repeats):
                out = subprocess.run([sys.executable, __file__, "--child", str(args.steps), str(threads)], env=env,
                                     capture_output=True, text=True, check=True).stdout
                runs.append(json.loads(out.strip().splitlines()[-1]))
            digests = {r["digest"] for r in runs}
            rows.append({"config": name, "threads": threads, "digest": "/".join(sorted(digests)),
                         "ms_per_step": statistics.median(r["ms_per_step"] for r in runs),
                         "capability": runs[0]["capability"]})
    base = next(r["ms_per_step"] for r in rows if r["config"] == "native" and r["threads"] == 2)
    print(f"{'config':<14}{'threads':>8}  {'torch kernels':<14}{'weights digest':<16}{'ms/step':>9}{'x native-2':>11}")
    for r in rows:
        print(f"{r['config']:<14}{r['threads']:>8}  {r['capability']:<14}{r['digest']:<16}{r['ms_per_step']:>9.0f}"
              f"{r['ms_per_step'] / base:>11.2f}")


if __name__ == "__main__":
    main()
