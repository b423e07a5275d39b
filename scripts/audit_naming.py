"""Do the audit's descriptors name the injected mechanism? Cases A-D, every prevalence, 5 slicer seeds.

    .venv/bin/python scripts/audit_naming.py --preset cpu [--n-slices N|auto] [--out results/cpu/audit]

For each trained case of the preset (the main job's models, read back; missing ones are trained), the test
images, ground truth and predictions are copied into three plain folders, as a user would have them, and
``seg4seg audit`` runs on them **without metadata**, once per slicer seed. Afterwards, for evaluation only, the
hidden attribute is read: the worst eligible slice is *detected* when more than 80 % of its members carry it
(the paper's purity threshold), and *named* when its top descriptor - the largest significant difference among
the image and mask descriptors (the error-type descriptors say how the model fails, not what the images share) -
is one of the case's mechanisms below. The slicer and the descriptors never see the attribute.

``in_top3`` (added after the first run showed case D's top term to be "less noisy", the low-pass signature of its
blur) says whether a mechanism is among the slice's three best-ranked significant terms, errors included; it is
reported beside the rule fixed beforehand, never instead of it.

Writes ``naming-k<N>.csv`` (one row per case, prevalence and seed) and ``naming-k<N>.md`` (shares with k/n and a
Wilson 95 % interval) under ``--out``, N the ``--n-slices`` value (``kauto`` for BIC).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from seg4seg_utils.stats import wilson_interval
from seg4seg_utils.studies.audit import audit, demo_folders
from seg4seg_utils.studies.workspace import Workspace

#: (descriptor, direction) pairs that name each case's injected mechanism
MECHANISM: dict[str, set[tuple[str, str]]] = {
    # no caliper marks: the marks are bright, sharp crosses and dotted traces, so their absence reads as a less
    # bright, less sharp, lower-contrast image
    "A": {("brightness", "lower"), ("sharpness", "lower"), ("contrast", "lower")},
    # a central crop at half size, resized back: the lesion is twice as large, off-centre, often cut by the border
    "B": {("touches_border", "higher"), ("centroid_offset", "higher"), ("mask_area", "higher")},
    # coarse polygon annotations: straight edges, smoother than a traced boundary
    "C": {("polygonality", "higher"), ("boundary_roughness", "lower")},
    # low quality: darkened and blurred
    "D": {("brightness", "lower"), ("sharpness", "lower"), ("contrast", "lower")},
}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="cpu")
    ap.add_argument("--data", default="data")
    ap.add_argument("--results", default="results")
    ap.add_argument("--runs", default="runs")
    ap.add_argument("--cases", default="ABCD")
    ap.add_argument("--n-slices", default="10", help="a number (default 10, the audit's default) or 'auto' (BIC)")
    ap.add_argument("--out", type=Path, default=None, help="default: RESULTS/PRESET/audit")
    args = ap.parse_args(argv)
    ws = Workspace(args.preset, data_dir=args.data, results_dir=args.results, runs_dir=args.runs, progress=False)
    out = args.out or ws.results("audit")
    n_slices = args.n_slices if args.n_slices == "auto" else int(args.n_slices)
    rows = []
    for tc in ws.trained_cases(args.cases):
        cell = f"{tc.case}-p{round(tc.prevalence * 100):02d}-seed{tc.seed}"
        folders = demo_folders(tc.run.root, tc.table, out / "folders" / cell)
        hidden = tc.table.df.set_index("id")["failure"].astype(bool)
        for seed in reversed(ws.preset.slicer_seeds):  # seed 0 last, so its report is the one left in the folder
            res = audit(folders["images"], folders["masks"], folders["predictions"], out / "audits" / cell,
                        n_slices=n_slices, seed=seed, embedder=ws.embedder, progress=False)
            focus = int(res.report.focus_slice)
            members = res.per_image.loc[res.per_image["slice"] == focus, "id"]
            purity = float(hidden.loc[members].mean())
            row = res.slices.set_index("slice").loc[focus]
            top = row["top_descriptor"]  # the largest significant image or mask difference (not the error type)
            direction = res.contrast.set_index(["slice", "descriptor"])["direction"].get((focus, top))
            top_name = None if top is None or pd.isna(top) else (top, direction)
            sig = res.contrast[(res.contrast["slice"] == focus) & res.contrast["significant"].astype(bool)]
            top3 = set(zip(*sig.sort_values("rank").head(3)[["descriptor", "direction"]].to_numpy().T)) if len(sig) \
                else set()
            rows.append({"case": tc.case, "prevalence": tc.prevalence, "slicer_seed": seed, "n_slices": res.n_slices,
                         "focus_slice": focus, "size": int(row["size"]), "problematic": bool(row["problematic"]),
                         "purity": purity, "detected": purity > 0.8,
                         "top_descriptor": None if top_name is None else f"{top_name[0]} {top_name[1]}",
                         "named": top_name in MECHANISM[tc.case], "in_top3": bool(top3 & MECHANISM[tc.case]),
                         "description": row["description"]})
            print(f"{cell} seed {seed}: K={res.n_slices} slice {focus} ({int(row['size'])}) purity {purity:.2f}; "
                  f"{row['description']}", flush=True)
    table = pd.DataFrame(rows)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / f"naming-k{args.n_slices}.csv", index=False)
    lines = ["| case | prevalence | detected (k/n) | named when detected (k/n) | 95 % interval | "
             "in the top 3 terms (k/n, post hoc) | top descriptors |", "|---|---|---|---|---|---|---|"]
    for (case, prev), g in table.groupby(["case", "prevalence"]):
        det = g[g["detected"]]
        lo, hi = wilson_interval(int(det["named"].sum()), len(det)) if len(det) else (float("nan"),) * 2
        tops = ", ".join(f"{k} ({v})" for k, v in g["top_descriptor"].fillna("none").value_counts().items())
        lines.append(f"| {case} | {prev:.0%} | {int(g['detected'].sum())}/{len(g)} | "
                     f"{int(det['named'].sum())}/{len(det)} | {lo:.2f}-{hi:.2f} | "
                     f"{int(det['in_top3'].sum())}/{len(det)} | {tops} |")
    text = "\n".join(lines) + "\n"
    (out / f"naming-k{args.n_slices}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
