"""Convert an official dataset download into seg4seg's record format.

    python -m data_prep hc18     --raw PATH --out PATH [--seed 0] [--fractions 0.64 0.16 0.20]
    python -m data_prep isic2018 --raw PATH --out PATH [--styles-csv IMAplusplus_seg_metadata.csv]
    python -m data_prep fives    --raw PATH --out PATH [--quality "Quality Assessment.xlsx"] [--val-fraction 0.2]

See data_prep/README.md for where to download each dataset and the layout expected under --raw.
Exit codes: 0 done, 2 a problem with the inputs (the message says which file and what to do).
"""
from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path
from typing import Any, Sequence

from seg4seg_utils.data.real_data import prepare_fives, prepare_hc18, prepare_isic2018
from seg4seg_utils.data.records import SPLITS, DatasetError, SampleTable

FIVES_QUALITY_NAME = "Quality Assessment.xlsx"


def _number(text: str) -> Any:
    """An int when the text is one, else a float when it is one, else the text (for --bad-value)."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def build_parser() -> argparse.ArgumentParser:
    """The argument parser: one sub-command per dataset."""
    parser = argparse.ArgumentParser(prog="python -m data_prep", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="dataset", required=True, metavar="{hc18,isic2018,fives}")

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--raw", type=Path, required=True, help="the unpacked official download")
        p.add_argument("--out", type=Path, required=True, help="the dataset folder to create (never overwritten)")
        p.add_argument("--quiet", action="store_true", help="no progress bar")

    hc = sub.add_parser("hc18", help="HC18 fetal head ultrasound (training set, split 64/16/20)")
    common(hc)
    hc.add_argument("--seed", type=int, default=0, help="split seed (default 0)")
    hc.add_argument("--fractions", type=float, nargs=3, default=(0.64, 0.16, 0.20), metavar=("TRAIN", "VAL", "TEST"),
                    help="split fractions (default 0.64 0.16 0.20)")

    isic = sub.add_parser("isic2018", help="ISIC 2018 Task 1 lesion segmentation (official splits)")
    common(isic)
    isic.add_argument("--styles-csv", type=Path, default=None,
                      help="IMA++ per-mask metadata CSV, to add annotation_style (optional)")

    fives = sub.add_parser("fives", help="FIVES fundus vessels (official test; val carved from train)")
    common(fives)
    fives.add_argument("--quality", type=Path, default=None,
                       help=f"quality labels (.xlsx or .csv); default: RAW/{FIVES_QUALITY_NAME} when present")
    fives.add_argument("--no-quality", action="store_true", help="ignore the quality labels even when present")
    fives.add_argument("--val-fraction", type=float, default=0.2, help="share of the official train set for val")
    fives.add_argument("--seed", type=int, default=0, help="seed for carving val (default 0)")
    fives.add_argument("--bad-value", type=_number, default=1,
                       help="the flag value that marks a quality problem (default 1)")
    return parser


def _check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.dataset == "hc18" and (any(f < 0 for f in args.fractions) or abs(sum(args.fractions) - 1) > 1e-6):
        parser.error(f"--fractions must be three non-negative numbers summing to 1, got {args.fractions}")
    if args.dataset == "fives" and not 0 < args.val_fraction < 1:
        parser.error(f"--val-fraction must be between 0 and 1, got {args.val_fraction}")


def _run(args: argparse.Namespace) -> SampleTable:
    progress = not args.quiet
    if args.dataset == "hc18":
        return prepare_hc18(args.raw, args.out, seed=args.seed, fractions=tuple(args.fractions), progress=progress)
    if args.dataset == "isic2018":
        return prepare_isic2018(args.raw, args.out, styles_csv=args.styles_csv, progress=progress)
    quality = args.quality
    if quality is None and not args.no_quality and (args.raw / FIVES_QUALITY_NAME).is_file():
        quality = args.raw / FIVES_QUALITY_NAME
        print(f"using quality labels from {quality}", file=sys.stderr)
    if args.no_quality:
        quality = None
    return prepare_fives(args.raw, args.out, quality=quality, val_fraction=args.val_fraction, seed=args.seed,
                         bad_value=args.bad_value, progress=progress)


def _summary(table: SampleTable) -> str:
    counts = table.df["split"].value_counts()
    lines = [f"wrote {table.root} ({len(table)} samples: "
             + ", ".join(f"{s} {int(counts.get(s, 0))}" for s in SPLITS) + ")"]
    for key in ("n_ellipse_fallback", "n_masks_rewritten", "annotation_style_counts", "quality_counts"):
        if key in table.meta:
            lines.append(f"  {key}: {table.meta[key]}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the converter named on the command line; 0 on success, 2 on a problem with the inputs."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _check_args(parser, args)
    plain = warnings.formatwarning
    warnings.formatwarning = lambda message, *_args, **_kw: f"warning: {message}\n"  # no source lines for users
    try:
        table = _run(args)
    except (DatasetError, OSError) as exc:
        text = str(exc) if isinstance(exc, DatasetError) else f"{exc}. Check the paths given to --raw and --out."
        print(f"error: {text}", file=sys.stderr)
        return 2
    finally:
        warnings.formatwarning = plain
    print(_summary(table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
