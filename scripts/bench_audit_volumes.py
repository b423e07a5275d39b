"""Wall time, where it goes, and peak memory of ``seg4seg audit`` on generated nnU-Net folders of 3-D volumes.

    .venv/bin/python scripts/bench_audit_volumes.py --n 100 1000 --size 128 --work /tmp/bench-vol \\
        --out results/bench/audit_volumes.md

For each number of cases it writes (once; reused on the next call) an nnU-Net v2 test set of 3-D phantoms with a
simulated model's predictions (:func:`seg4seg_utils.studies.volume_study.phantom_folder`: 20 % of the cases from
scanner B, where the model fails; the answer is kept outside the folder). Then it runs the command as a user
would, in a fresh process, samples the process tree's resident memory every 0.1 s, and reads the audit's own
stage timings (``timing.csv``). The process runner and the table are :mod:`bench_audit`'s (the 2-D benchmark).

The audit needs at least 20 cases. A figure, not a test: machines of this kind differ about 2.6x in CPU speed,
so the CPU is printed with the result.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_audit import report, timed_audit  # noqa: E402  (the 2-D benchmark's runner and table: one way to time a run)


def main(argv: list[str] | None = None) -> None:
    from seg4seg_utils.studies.volume_study import phantom_folder

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, nargs="+", default=[100, 1000], help="numbers of cases (at least 20)")
    ap.add_argument("--size", type=int, default=128, help="phantom edge length in voxels")
    ap.add_argument("--work", type=Path, default=Path("bench-audit-volumes"), help="folder for data and outputs")
    ap.add_argument("--out", type=Path, default=None, help="markdown file for the table (default: print only)")
    ap.add_argument("--fresh", action="store_true", help="delete earlier audit outputs first (cold caches)")
    ap.add_argument("audit_args", nargs="*", help="extra arguments for seg4seg audit (after --)")
    args = ap.parse_args(argv)
    if min(args.n) < 20:
        ap.error("the audit needs at least 20 cases (--n)")

    rows = []
    for n in args.n:
        made, wall, peak, stages = timed_audit(lambda: phantom_folder(args.work / "data", n, args.size),
                                               args.work / f"audit-{n}-s{args.size}", args.fresh, args.audit_args)
        row = {"volumes": n, "size": f"{args.size}^3", "wall_s": round(wall, 1), "peak_mib": round(peak),
               **stages.round(1).to_dict()}
        row["per_volume_s"] = round(stages["total"] / n, 3)
        rows.append(row)
        print(f"{n} volumes of {args.size}^3: generated in {made:.0f} s; audit {wall:.1f} s wall, peak {peak:.0f} MiB",
              flush=True)
    report(rows, args.out)


if __name__ == "__main__":
    main()
