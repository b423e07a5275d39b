"""Command line: ``python -m seg4seg_utils run --preset cpu`` (the README's main job), and ``seg4seg audit``
(your own model's folders in, a report out)."""
from __future__ import annotations

import argparse
import sys
import time
from typing import Sequence

from seg4seg_utils.config import PRESETS
from seg4seg_utils.data.records import DatasetError

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m seg4seg_utils", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="generate (or read) the clean datasets, inject cases A-D, write a summary")
    run.add_argument("--preset", choices=sorted(PRESETS), default="cpu",
                     help="smoke: seconds; cpu: the embedded default; paper: real data (needs --real)")
    run.add_argument("--data", default="data", help="folder for generated and injected datasets (default: data)")
    run.add_argument("--results", default="results", help="folder for summaries and figures (default: results)")
    run.add_argument("--real", default=None, metavar="DIR",
                     help="folder with datasets prepared by `python -m data_prep` (hc18/, isic2018/, fives/) "
                          "to use instead of phantoms")
    run.add_argument("--runs", default="runs", help="folder for trained models (default: runs)")
    run.add_argument("--until", choices=("data", "train", "detect"), default="detect",
                     help="stop after the data stage, after training, or run the detection benchmark too (default)")
    run.add_argument("--clip-weights", default=None, metavar="FILE",
                     help="open_clip weights file for the paper's CLIP ViT-B-32 embedder; without it the packaged "
                          "ImageNet EfficientNet-Lite0 is used (and named as such in every output)")
    run.add_argument("--cache", default="cache/embeddings", help="embedding cache folder")
    run.add_argument("--no-progress", action="store_true", help="hide progress bars")
    run.add_argument("--jobs", type=int, default=2, metavar="N",
                     help="parallel embedding/slicer jobs (default 2); never changes a result, see seg4seg_utils.kernels")
    _add_backend_arguments(run)
    nbs = sub.add_parser("notebooks", help="execute (or parameterise) the notebook collection with a preset")
    nbs.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    nbs.add_argument("--out", required=True, help="folder for the executed copies (never the notebooks/ sources)")
    nbs.add_argument("--only", nargs="*", default=None, metavar="NN", help="only notebooks starting with these prefixes")
    nbs.add_argument("--prepare-only", action="store_true", help="write parameterised copies without executing them")
    nbs.add_argument("--jobs", type=int, default=1, metavar="N",
                     help="notebooks executed side by side (default 1; make run uses 2); never changes a result")
    nbs.add_argument("--set", nargs="*", default=[], metavar="NAME=VALUE",
                     help="override parameters, e.g. --set DATA_DIR=/tmp/data SEED=1 (values parsed as YAML)")
    _add_backend_arguments(nbs)
    sub.add_parser("book", help="build the HTML book from the executed notebooks in book/executed/")
    tim = sub.add_parser("timing", help="print where the time of the newest `make run` went and write timing.md "
                                        "beside its timing.csv")
    tim.add_argument("--file", default=None, metavar="CSV",
                     help="the timing CSV (default: $SEG4SEG_TIMING, which make run sets to results/<preset>/timing.csv)")
    _add_audit_parser(sub)
    cmp_ = sub.add_parser("compare", help="diff the results of two job roots (each holding results/ and runs/)")
    cmp_.add_argument("a", help="first job root")
    cmp_.add_argument("b", help="second job root")
    cmp_.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    return parser


def _n_slices(value: str) -> int | str:
    if value == "auto":
        return value
    try:
        k = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 2 or 'auto', got {value!r}") from None
    if k < 2:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 2 or 'auto', got {value!r}")
    return k


def _add_audit_parser(sub) -> None:
    audit = sub.add_parser(
        "audit", help="find where YOUR model fails: images, ground truth and predictions folders in, a report out",
        description="Slice discovery on your own model's test predictions, without labels for the failure. Files "
                    "are matched by name without extension (nnU-Net's _0000 image suffix is understood). 2-D images, "
                    "or 3-D volumes: NIfTI folders, an nnU-Net imagesTs folder (labelsTs and dataset.json beside "
                    "it), or a MONAI/decathlon datalist (--datalist). Writes OUT/report.html (self-contained) and "
                    "CSV tables; re-running reuses what is cached in OUT/work.")
    audit.add_argument("--images", default=None, metavar="DIR",
                       help="test images (.png .jpg .tif .bmp), or volumes (.nii .nii.gz; an nnU-Net imagesTs "
                            "folder or raw dataset folder)")
    audit.add_argument("--masks", default=None, metavar="DIR",
                       help="ground-truth masks: 0/1, 0/255 or class labels, lossless (PNG/TIFF) or NIfTI label "
                            "maps; optional for nnU-Net (labelsTs beside imagesTs)")
    audit.add_argument("--datalist", default=None, metavar="JSON",
                       help="instead of --images/--masks: a MONAI/decathlon datalist of volumes "
                            "({\"test\": [{\"image\": ..., \"label\": ...}]}, paths relative to the JSON)")
    audit.add_argument("--datalist-key", default="test", metavar="KEY",
                       help="the datalist's list to audit (default: test)")
    audit.add_argument("--predictions", required=True, metavar="DIR",
                       help="your model's predictions: masks like the ground truth, or probabilities "
                            "(.npy/.npz/float TIFF, thresholded at --threshold)")
    audit.add_argument("--metadata", default=None, metavar="CSV",
                       help="optional table with an 'id' column (file name without extension); it only names "
                            "slices, it is never used to find them")
    audit.add_argument("--out", default="audit", metavar="DIR", help="output folder (default: audit)")
    audit.add_argument("--n-slices", type=_n_slices, default=10, metavar="N|auto",
                       help="number of slices (default 10, the paper's), or 'auto' for the minimum of the BIC curve "
                            "the report shows (BIC can merge a small failing group: see the report)")
    audit.add_argument("--performance", default="dice", metavar="LIST",
                       help="comma-separated per-image scores the slicer weighs, the first is judged: dice, iou, "
                            "ppv, npv, soft_dice, dice_<label>; for volumes also surface_dice (default: dice)")
    audit.add_argument("--threshold", type=float, default=0.5, help="threshold for probability predictions (0.5)")
    audit.add_argument("--clip-weights", default=None, metavar="FILE",
                       help="open_clip ViT-B-32 weights file; without it the packaged ImageNet EfficientNet-Lite0 "
                            "embeds the images (and is named as such in the report)")
    audit.add_argument("--seed", type=int, default=0, help="seed of the UMAP reduction and the slicer (0)")
    audit.add_argument("--jobs", type=int, default=2, metavar="N",
                       help="processes reading and describing the images (default 2); never changes a result")
    audit.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _run_audit(args: argparse.Namespace) -> int:
    from seg4seg_utils.discovery.embed import EmbedderUnavailable
    from seg4seg_utils.studies.audit import audit

    performance = tuple(p.strip() for p in args.performance.split(",") if p.strip())
    if args.datalist is None and args.images is None:
        print("seg4seg audit: give --images (with --masks) or --datalist", file=sys.stderr)
        return 2
    try:
        result = audit(args.images, args.masks, args.predictions, args.out, metadata=args.metadata,
                       n_slices=args.n_slices, performance=performance, clip_weights=args.clip_weights,
                       threshold=args.threshold, seed=args.seed, n_jobs=args.jobs,
                       progress=not args.no_progress, datalist=args.datalist, datalist_key=args.datalist_key)
    except (DatasetError, ValueError, EmbedderUnavailable, FileNotFoundError) as exc:
        print(f"seg4seg audit: {exc}", file=sys.stderr)
        return 2
    for sentence in result.verdicts:
        print(sentence)
    print(f"Report: {result.paths['report']}  ({result.timings['total']:.0f} s; tables in {result.out})")
    return 0


def _add_backend_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backend", default=None, choices=("loky", "threading", "dask", "ray"),
                        help="joblib backend for embedding extraction and slicer fits (default: local processes); "
                             "dask/ray run them on a cluster, see seg4seg_utils.studies.scaleout")
    parser.add_argument("--scheduler", default=None, metavar="ADDRESS",
                        help="with --backend dask: tcp://host:8786 for an existing cluster, or local:N to start N "
                             "local workers (default local:2); with ray: the cluster address")


def _export_backend(args: argparse.Namespace) -> None:
    """Set the scale-out variables, so this process and every notebook kernel it starts use the backend."""
    import os

    from seg4seg_utils.studies.scaleout import BACKEND_ENV, SCHEDULER_ENV

    if args.backend:
        os.environ[BACKEND_ENV] = args.backend
    if args.scheduler:
        if not (args.backend or os.environ.get(BACKEND_ENV)):
            raise ValueError("--scheduler needs --backend dask or ray")
        os.environ[SCHEDULER_ENV] = args.scheduler


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns a process exit code (2 for a user error, with the reason on stderr)."""
    args = _parser().parse_args(argv)
    if args.command == "audit":
        return _run_audit(args)
    if args.command in ("run", "notebooks"):
        try:
            _export_backend(args)
        except ValueError as exc:
            print(f"seg4seg: {exc}", file=sys.stderr)
            return 2
    if args.command == "run":
        from seg4seg_utils.discovery.embed import EmbedderUnavailable
        from seg4seg_utils.model.train import TrainingSetupError
        from seg4seg_utils.studies.pipeline import run_job
        from seg4seg_utils.studies.workspace import Workspace

        t0 = time.perf_counter()
        try:
            ws = Workspace(args.preset, data_dir=args.data, results_dir=args.results, runs_dir=args.runs,
                           cache_dir=args.cache, real_root=args.real, clip_weights=args.clip_weights,
                           n_jobs=args.jobs, progress=not args.no_progress)
            paths = run_job(ws, until=args.until)
        except (DatasetError, ValueError, TrainingSetupError, EmbedderUnavailable, FileNotFoundError) as exc:
            print(f"seg4seg: {exc}", file=sys.stderr)
            return 2
        print(f"Done in {time.perf_counter() - t0:.0f} s. Summary: {paths['summary']}")
        for key in ("phantom_gallery", "injection_gallery", "datasets", "gaps", "subgroup_gap", "learning_curves",
                    "detection", "detection_heatmap"):
            if key in paths:
                print(f"  {key}: {paths[key]}")
    if args.command == "notebooks":
        import yaml

        from seg4seg_utils.report.book import NotebookFailures, run_notebooks

        overrides = {}
        for item in args.set:
            if "=" not in item:
                print(f"seg4seg: --set expects NAME=VALUE, got {item!r}", file=sys.stderr)
                return 2
            key, value = item.split("=", 1)
            overrides[key] = yaml.safe_load(value)
        try:
            written = run_notebooks(args.preset, args.out, only=args.only, prepare_only=args.prepare_only,
                                    jobs=args.jobs, **overrides)
        except ValueError as exc:
            print(f"seg4seg: {exc}", file=sys.stderr)
            return 2
        except NotebookFailures as exc:
            print(f"seg4seg: {exc}", file=sys.stderr)
            return 1
        print(f"{len(written)} notebook(s) written to {args.out}")
    if args.command == "compare":
        from seg4seg_utils.report.compare import diff_job_outputs

        diffs = diff_job_outputs(args.a, args.b, args.preset)
        for line in diffs:
            print(line)
        print(f"{len(diffs)} difference(s) between {args.a} and {args.b} (preset {args.preset})"
              + ("" if diffs else ": identical results"))
        return 1 if diffs else 0
    if args.command == "timing":
        import os

        from seg4seg_utils.timing import TIMING_ENV, write_breakdown

        path = args.file or os.environ.get(TIMING_ENV)
        if not path:
            print(f"seg4seg: give --file CSV or set {TIMING_ENV} (make run does)", file=sys.stderr)
            return 2
        md, text = write_breakdown(path)
        print(text + f"\n(written to {md})")
    if args.command == "book":
        from seg4seg_utils.report.book import build_book

        try:
            print(f"Book: {build_book()}")
        except FileNotFoundError as exc:
            print(f"seg4seg: {exc}", file=sys.stderr)
            return 2
    return 0
