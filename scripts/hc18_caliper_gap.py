"""Measure the caliper shortcut (case A) on the real HC18 training set.

    .venv/bin/python scripts/hc18_caliper_gap.py --raw ../shared/data/hc18 [--style full|crosses] [--epochs 8]

Converts HC18 (once), injects case A (calipers on all but ``--prevalence`` of the images, per split),
trains a U-Net from scratch (ResNet-18, 128 px by default), prints the test Dice of images without
marks vs with marks with a Mann-Whitney p-value, then runs SEG4SEG on the test split (EfficientNet-Lite0
``x0`` embeddings, Dice, gamma=10, 10 slices) for ``--slicer-seeds`` seeds and prints the detection rate.
Everything is cached under ``--work``.

``--audit DIR`` also audits the trained model as a user would: its test images, masks and predictions are copied
into three plain folders and ``seg4seg audit`` runs on them without metadata (report in DIR); the hidden
attribute is read afterwards, for evaluation only.
"""
from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

from seg4seg_utils.data.inject import CaliperStyle, inject, injected_name
from seg4seg_utils.data.real_data import prepare_hc18
from seg4seg_utils.discovery.embed import EfficientNetLite0Embedder
from seg4seg_utils.discovery.judge import SlicerSettings
from seg4seg_utils.model.metrics import subgroup_gap
from seg4seg_utils.model.train import train, train_preset
from seg4seg_utils.studies.audit import audit, demo_folders
from seg4seg_utils.studies.benchmark import benchmark_items, detection_table, run_benchmark

STYLES = {"full": CaliperStyle(), "crosses": CaliperStyle(dotted_trace=False)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--raw", required=True, type=Path, help="HC18 folder holding training_set/")
    parser.add_argument("--work", default=Path("data/real-hc18"), type=Path, help="cache folder")
    parser.add_argument("--style", choices=sorted(STYLES), default="full")
    parser.add_argument("--prevalence", type=float, default=0.10)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--encoder", default="resnet18")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--slicer-seeds", type=int, default=5)
    parser.add_argument("--performance-model", choices=("gaussian", "soft_categorical"), default="gaussian")
    parser.add_argument("--audit", type=Path, default=None, metavar="DIR",
                        help="also run seg4seg audit on the model's test folders (metadata withheld), report in DIR")
    args = parser.parse_args()

    clean = prepare_hc18(args.raw, args.work / "hc18")
    style = STYLES[args.style]
    data = inject(clean, "A", args.prevalence, args.seed,
                  args.work / f"{injected_name('A', args.prevalence, args.seed)}-{args.style}", params=style)
    cfg = train_preset("cpu", encoder=args.encoder, decoder_channels=(256, 128, 64, 32, 16), image_size=args.size,
                       epochs=args.epochs, batch_size=8, lr=1e-3, seed=args.seed)
    run = train(data, cfg, runs_dir=args.work / "runs")
    gap = subgroup_gap(run.metrics(), "failure", "dice")
    result = {"style": asdict(style), "config": asdict(cfg), **gap, **run.summary()}
    print(json.dumps(result, indent=2))
    print(f"Dice without marks {gap['dice_group']:.3f} (n={gap['n_group']}) vs with marks {gap['dice_rest']:.3f} "
          f"(n={gap['n_rest']}), gap {gap['gap']:.3f}, Mann-Whitney p={gap['p_value']:.2g}")
    items = benchmark_items([("A", args.prevalence, args.seed, data, run)], range(args.slicer_seeds),
                            settings=SlicerSettings(performance_model=args.performance_model))
    rows = run_benchmark(items, EfficientNetLite0Embedder(), args.work / "detection_items.jsonl",
                         cache_dir=args.work / "cache", n_jobs=2)
    print(rows[["slicer_seed", "success", "omega2", "max_purity", "winning_size", "winning_perf"]].to_string())
    print(detection_table(rows, by=("case", "prevalence", "performance_model")).to_markdown(index=False))
    if args.audit:
        folders = demo_folders(run.root, data, args.work / "audit-folders")
        res = audit(folders["images"], folders["masks"], folders["predictions"], args.audit)
        hidden = data.df.set_index("id")["failure"].astype(bool)
        for s in [*res.problematic, res.report.focus_slice][:4]:
            members = res.per_image.loc[res.per_image["slice"] == s, "id"]
            row = res.slices.set_index("slice").loc[s]
            print(f"slice {s}: {len(members)} images, mean Dice {row['mean_perf']:.3f}, problematic "
                  f"{bool(row['problematic'])}, without marks (evaluation only) {hidden.loc[members].mean():.2f}; "
                  f"{row['description']}")
        print("\n".join(res.verdicts), f"\nreport: {res.paths['report']}", sep="\n")


if __name__ == "__main__":
    main()
