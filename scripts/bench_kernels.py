"""Which CPU numerics make results reproducible, and what each costs: a digest of the result and the time.

    .venv/bin/python scripts/bench_kernels.py [--stage train|umap] [--steps 12] [--repeats 3] [--configs pinned bf16]

``--stage train`` (default) times U-Net training steps; ``--stage umap`` times one UMAP fit to 8-d (the
slicer's reduction) on a fixed 200 x 1280 embedding with four planted groups, after a warm-up fit in the
same process (numba compiles on the first), and digests its coordinates.

Each configuration runs in a fresh process (kernel choices are fixed when torch loads): the cpu preset's
U-Net, Adam, ``--steps`` steps of batch 16 at 96 px on seeded random data (the same for every run), after
two warm-up steps. Configurations:

- ``native``: the libraries' defaults (oneDNN and numpy at the CPU's best instruction set, numba compiling
  for the host CPU, threads = OMP_NUM_THREADS; OpenBLAS's core type as the machine's environment says);
- ``pinned``: the project's default (:data:`seg4seg_utils.kernels.KERNEL_ENV`: oneDNN and ATen capped at
  AVX2, MKL reproducibility mode, numpy without AVX-512, OpenBLAS Haswell, numba haswell);
- ``portable``: pinned and without oneDNN (convolutions as im2col + MKL GEMM);
- ``imitate-avx2``: pinned plus ``MKL_ENABLE_INSTRUCTIONS=AVX2``, what an AVX2-only CPU would run;
- ``bf16``: what ``precision="auto"`` trains with on CPUs with AMX-BF16 or AVX512-BF16
  (:data:`seg4seg_utils.kernels.BF16_TRAINING_ENV`, bf16 autocast); skipped on other CPUs, where oneDNN
  would only emulate bf16;
- ``bf16-channels-last`` and ``bf16-compile``: two speed levers on top of ``bf16`` that training does not use
  (model and batches in channels-last memory; the model through ``torch.compile``, whose compilation falls
  in the warm-up steps, reported apart). Both change the weights (another digest), so they would change
  every trained model; the README says what they bought on the machines measured.

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

from seg4seg_utils.kernels import BF16_TRAINING_ENV, KERNEL_ENV  # noqa: E402  (children get their environment first)

# empty = the library's own choice; OpenBLAS's core type stays as the machine's environment has it
NATIVE = {key: os.environ.get(key, "") if key == "OPENBLAS_CORETYPE" else "" for key in KERNEL_ENV}
PINNED = dict(KERNEL_ENV)
IMITATE_AVX2 = {"MKL_ENABLE_INSTRUCTIONS": "AVX2"}
CONFIGS = {"native": (NATIVE, "pinned"), "pinned": (PINNED, "pinned"), "portable": (PINNED, "portable"),
           "imitate-avx2": ({**PINNED, **IMITATE_AVX2}, "pinned"), "bf16": (dict(BF16_TRAINING_ENV), "pinned")}
CONFIGS.update({"bf16-channels-last": CONFIGS["bf16"], "bf16-compile": CONFIGS["bf16"]})
BF16_CHILD = "SEG4SEG_BENCH_BF16"  # tells a child to train under bf16 autocast
LEVER_CHILD = "SEG4SEG_BENCH_LEVER"  # tells a child which lever to add: channels-last or compile


def lever_of(config: str) -> str:
    """The lever a configuration adds on top of bf16 ("" for none): ``bf16-compile`` -> ``compile``."""
    return config.removeprefix("bf16-") if config.startswith("bf16-") else ""


def child(steps: int, threads: int) -> dict:
    import hashlib
    import time

    import numpy as np
    import torch

    from seg4seg_utils.kernels import pinned
    from seg4seg_utils.model.train import augment_batch, build_model, train_preset

    cfg = train_preset("cpu")
    lever = os.environ.get(LEVER_CHILD, "")
    with pinned(threads):
        model, _ = build_model(cfg)
        if lever == "channels-last":
            model = model.to(memory_format=torch.channels_last)
        forward = torch.compile(model) if lever == "compile" else model
        opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
        rng = np.random.default_rng(0)
        X = torch.from_numpy(rng.random((64, 3, cfg.image_size, cfg.image_size), dtype=np.float32))
        Y = torch.from_numpy((rng.random((64, 1, cfg.image_size, cfg.image_size)) > 0.7).astype(np.float32))
        gen = torch.Generator().manual_seed(1)
        loss_fn = torch.nn.BCEWithLogitsLoss()
        model.train()
        times = []
        started = time.perf_counter()
        for step in range(steps + 2):
            if step == 2:
                warm_up = time.perf_counter() - started
            t0 = time.perf_counter()
            idx = torch.randperm(64, generator=gen)[:16]
            x, y = augment_batch(X[idx], Y[idx], cfg, gen)
            if lever == "channels-last":
                x = x.contiguous(memory_format=torch.channels_last)
            opt.zero_grad()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=os.environ.get(BF16_CHILD) == "1"):
                loss = loss_fn(forward(x).float(), y)
            loss.backward()
            opt.step()
            if step >= 2:  # warm-up steps excluded
                times.append(time.perf_counter() - t0)
        # contiguous: channels-last weights would otherwise be digested in another byte order
        digest = hashlib.sha256(b"".join(p.detach().contiguous().numpy().tobytes()
                                         for p in model.state_dict().values()))
        return {"digest": digest.hexdigest()[:12], "ms_per_step": 1000 * statistics.median(times),
                "warm_up_s": warm_up, "capability": torch.backends.cpu.get_cpu_capability()}


def umap_child() -> dict:
    import hashlib
    import time

    import numpy as np

    from seg4seg_utils.discovery.reduce import reduce_embeddings
    from seg4seg_utils.kernels import numpy_simd

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 1280))
    X = (np.repeat(centres, 50, axis=0) + rng.normal(size=(200, 1280))).astype(np.float32)
    reduce_embeddings(X, "umap", 8, 1)  # warm-up: numba compiles (or loads its cache) here
    t0 = time.perf_counter()
    Z = reduce_embeddings(X, "umap", 8, 0)[1]
    seconds = time.perf_counter() - t0
    return {"digest": hashlib.sha256(np.ascontiguousarray(Z).tobytes()).hexdigest()[:12],
            "ms_per_step": 1000 * seconds, "warm_up_s": float("nan"), "capability": f"numpy {numpy_simd()}"}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stage", choices=("train", "umap"), default="train")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--repeats", type=int, default=3, help="processes per configuration (times: median of them)")
    ap.add_argument("--configs", nargs="*", choices=sorted(CONFIGS), default=None,
                    help="only these configurations (default: all; the ratio column needs native)")
    ap.add_argument("--child", nargs=2, type=str, metavar=("STEPS", "THREADS"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        result = umap_child() if args.stage == "umap" else child(int(args.child[0]), int(args.child[1]))
        print(json.dumps(result))
        return
    from seg4seg_utils.kernels import cpu_bf16_isa, kernel_report

    print(f"CPU: {kernel_report()['cpu']} (bf16 instructions: {cpu_bf16_isa() or 'none'})")
    rows = []
    for name, (env_over, mode) in CONFIGS.items():
        if args.configs is not None and name not in args.configs:
            continue
        bf16 = name.startswith("bf16")
        if args.stage == "umap" and (name == "portable" or bf16):
            continue  # these change torch's training only
        if bf16 and cpu_bf16_isa() is None:
            print(f"{name}: skipped, this CPU has neither AMX-BF16 nor AVX512-BF16")
            continue
        for threads in (1, 2):
            env = {**os.environ, **env_over, "SEG4SEG_KERNELS": mode, "OMP_NUM_THREADS": str(threads),
                   BF16_CHILD: "1" if bf16 else "0", LEVER_CHILD: lever_of(name)}
            runs = []
            for _ in range(args.repeats):
                out = subprocess.run([sys.executable, __file__, "--stage", args.stage, "--child", str(args.steps),
                                      str(threads)], env=env, capture_output=True, text=True, check=True).stdout
                runs.append(json.loads(out.strip().splitlines()[-1]))
            digests = {r["digest"] for r in runs}
            rows.append({"config": name, "threads": threads, "digest": "/".join(sorted(digests)),
                         "ms_per_step": statistics.median(r["ms_per_step"] for r in runs),
                         "warm_up_s": statistics.median(r["warm_up_s"] for r in runs),
                         "capability": runs[0]["capability"]})
    reference = "native" if any(r["config"] == "native" for r in rows) else rows[0]["config"]
    base = next(r["ms_per_step"] for r in rows if r["config"] == reference and r["threads"] == 2)
    unit = "ms/fit" if args.stage == "umap" else "ms/step"
    print(f"{'config':<20}{'threads':>8}  {'kernels':<18}{'result digest':<16}{unit:>9}{'x ' + reference + '-2':>11}"
          f"{'warm-up s':>11}")
    for r in rows:
        print(f"{r['config']:<20}{r['threads']:>8}  {r['capability']:<18}{r['digest']:<16}{r['ms_per_step']:>9.0f}"
              f"{r['ms_per_step'] / base:>11.2f}{r['warm_up_s']:>11.1f}")


if __name__ == "__main__":
    main()
