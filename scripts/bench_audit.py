"""Wall time, where it goes, and peak memory of ``seg4seg audit`` on generated folders of 256 px images.

    .venv/bin/python scripts/bench_audit.py --n 1000 10000 --work /tmp/bench-audit --out results/bench/audit.md

For each size it writes (once; reused on the next call) folders of images, ground-truth masks and predictions:
lesion-like images, a tenth of them darker and blurred with predictions that miss part of the lesion (a planted
failure, so the audit has something to find). Then it runs the command as a user would, in a fresh process,
samples the process tree's resident memory every 0.1 s, and reads the audit's own stage timings (``timing.csv``).

A figure, not a test: machines of this kind differ about 2.6x in CPU speed, so the CPU is printed with the result.
"""
from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def make_folders(root: Path, n: int, size: int = 256, seed: int = 0) -> dict[str, Path]:
    """``n`` generated image/mask/prediction triples under ``root`` (skipped when ``root/done`` exists)."""
    from PIL import Image
    from scipy.ndimage import gaussian_filter
    from skimage.draw import ellipse

    paths = {k: root / k for k in ("images", "masks", "predictions")}
    if (root / "done").is_file():
        return paths
    for p in paths.values():
        p.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] / size
    for i in range(n):
        dark = rng.random() < 0.1
        mask = np.zeros((size, size), np.uint8)
        rr, cc = ellipse(size * rng.uniform(0.35, 0.65), size * rng.uniform(0.35, 0.65), size * rng.uniform(0.12, 0.3),
                         size * rng.uniform(0.12, 0.3), (size, size), rotation=rng.uniform(0, np.pi))
        mask[rr, cc] = 1
        skin = np.array([205, 165, 140]) * (1 + 0.1 * np.sin(6 * xx + rng.uniform(0, 6)))[..., None]
        img = skin + rng.normal(0, 7, (size, size, 3))
        img[mask > 0] *= rng.uniform(0.35, 0.6)
        pred = mask.copy()
        if dark:
            img = gaussian_filter(img * 0.45, sigma=(2.5, 2.5, 0))
            cut = int(size * rng.uniform(0.4, 0.6))
            pred[:cut] = 0
        else:
            pred = np.roll(pred, int(rng.integers(-2, 3)), axis=int(rng.integers(0, 2)))
        name = f"case{i:05d}"
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(paths["images"] / f"{name}.png")
        Image.fromarray(mask * 255).save(paths["masks"] / f"{name}.png")
        Image.fromarray(pred * 255).save(paths["predictions"] / f"{name}.png")
    (root / "done").write_text(f"{n}\n")
    return paths


def run_audit(paths: dict[str, Path], out: Path, extra: list[str]) -> tuple[float, float]:
    """Run ``python -m seg4seg_utils audit`` in a fresh process; (wall seconds, peak RSS of its tree in MiB)."""
    import psutil

    cmd = [sys.executable, "-m", "seg4seg_utils", "audit", "--images", str(paths["images"]), "--masks",
           str(paths["masks"]), "--predictions", str(paths["predictions"]), "--out", str(out), "--no-progress",
           *extra]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    parent = psutil.Process(proc.pid)
    peak = 0
    while proc.poll() is None:
        try:
            rss = sum(p.memory_info().rss for p in [parent, *parent.children(recursive=True)])
            peak = max(peak, rss)
        except psutil.Error:
            pass
        time.sleep(0.1)
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise SystemExit(f"audit failed with exit code {proc.returncode}: {' '.join(cmd)}")
    return wall, peak / 2 ** 20


def timed_audit(make_paths, out: Path, fresh: bool, extra: list[str]) -> tuple[float, float, float, pd.Series]:
    """Make the input folders (timed), delete OUT first when ``fresh`` (cold caches), audit them in a fresh process:
    (seconds to make the inputs, audit wall seconds, peak MiB, the audit's own seconds per stage)."""
    import shutil

    t0 = time.perf_counter()
    paths = make_paths()
    made = time.perf_counter() - t0
    if fresh and out.exists():
        shutil.rmtree(out)
    wall, peak = run_audit(paths, out, extra)
    return made, wall, peak, pd.read_csv(out / "timing.csv").set_index("stage")["seconds"]


def report(rows: list[dict], out: Path | None) -> str:
    """The rows as a markdown table headed by the CPU, printed and written to ``out`` when given."""
    text = (f"CPU: {cpu_name()}, {os.cpu_count()} cores; python {platform.python_version()}\n\n"
            + pd.DataFrame(rows).to_markdown(index=False) + "\n")
    print(text)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
    return text


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, nargs="+", default=[1000, 10000], help="numbers of images")
    ap.add_argument("--work", type=Path, default=Path("bench-audit"), help="folder for generated data and outputs")
    ap.add_argument("--out", type=Path, default=None, help="markdown file for the table (default: print only)")
    ap.add_argument("--fresh", action="store_true", help="delete earlier audit outputs first (cold caches)")
    ap.add_argument("audit_args", nargs="*", help="extra arguments for seg4seg audit (after --)")
    args = ap.parse_args(argv)
    rows = []
    for n in args.n:
        made, wall, peak, stages = timed_audit(lambda: make_folders(args.work / f"data-{n}", n),
                                               args.work / f"audit-{n}", args.fresh, args.audit_args)
        row = {"images": n, "wall_s": round(wall, 1), "peak_mib": round(peak), **stages.round(1).to_dict()}
        emb = stages.get("embedding", float("nan"))
        row["beyond_embedding_s"] = round(stages["total"] - emb, 1)
        row["beyond_over_embedding"] = round((stages["total"] - emb) / emb, 2) if emb else float("nan")
        rows.append(row)
        print(f"{n} images: generated in {made:.0f} s; audit {wall:.1f} s wall, peak {peak:.0f} MiB", flush=True)
    report(rows, args.out)


if __name__ == "__main__":
    main()
