"""The detection-rate benchmark on the smoke preset: one row per fit, tidy table, resumable, parallel."""
import json

import pandas as pd
import pytest

from seg4seg_utils.config import get_preset
from seg4seg_utils.embed import EfficientNetLite0Embedder
from seg4seg_utils.experiments import SlicerSettings, load_run, benchmark_items, detection_table, run_benchmark
from seg4seg_utils.pipeline import case_datasets, detection_benchmark, train_grid


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    grid = case_datasets("smoke", root / "data", cases="AD", progress=False)
    gaps = train_grid(grid, "smoke", root / "runs", root / "results" / "training", progress=False)
    return root, grid, gaps


def test_benchmark_rows_resume_and_parallel(trained, tmp_path):
    root, grid, gaps = trained
    runs = [(cd.case, cd.prevalence, cd.seed, cd.table, load_run(gaps["run"].iat[i])) for i, cd in enumerate(grid)]
    settings = SlicerSettings(reduce="pca")
    items = benchmark_items(runs, slicer_seeds=(0, 1), image_variants=("x0", "x0*M_GT"),
                            performances=(("dice",), ("dice", "ppv")), settings=settings)
    assert len(items) == 2 * 2 * 2 * 2 and len({it.key for it in items}) == len(items)
    embedder = EfficientNetLite0Embedder()
    out = tmp_path / "items.jsonl"
    rows = run_benchmark(items[:6], embedder, out, cache_dir=root / "cache", n_jobs=2, progress=False)
    assert len(rows) == 6
    # resume: the first six are read back, only the rest are fitted
    rows = run_benchmark(items, embedder, out, cache_dir=root / "cache", n_jobs=1, progress=False)
    lines = out.read_text().splitlines()
    assert len(rows) == len(items) == len(lines)
    row = json.loads(lines[0])
    for col in ("case", "prevalence", "slicer_seed", "image_variant", "performance", "success", "omega2",
                "max_purity", "perf_pass", "purity_pass", "winning_size", "seconds_fit", "embedder"):
        assert col in row, col
    assert row["embedder"].startswith("EfficientNet-Lite0") and "not CLIP" in row["embedder"]
    table = detection_table(rows, by=("case", "prevalence", "image_variant", "performance"))
    assert len(table) == 2 * 2 * 2 and table["n_seeds"].eq(2).all()
    assert table["detection_rate"].between(0, 1).all()
    # a cut-off last line (interrupted write) is ignored and that item reruns
    out.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][: len(lines[-1]) // 2])
    assert len(run_benchmark(items, embedder, out, cache_dir=root / "cache", progress=False)) == len(items)


def test_detection_benchmark_writes_tables_and_figure(trained):
    root, grid, gaps = trained
    out = root / "results" / "detection"
    table = detection_benchmark(grid, gaps, "smoke", out, embedder=EfficientNetLite0Embedder(),
                                cache_dir=root / "cache", n_jobs=1, settings=SlicerSettings(reduce="pca"),
                                progress=False)
    assert set(table["case"]) == {"A", "D"} and len(table) == len(get_preset("smoke").prevalences) * 2
    assert get_preset("smoke").n_images * 0.2 >= 20  # the test split holds at least case B's 20 slices
    for name in ("detection_rates.csv", "detection_rates.md", "detection_heatmap.png", "detection_items.jsonl"):
        assert (out / name).stat().st_size > 0
    assert "EfficientNet-Lite0" in (out / "detection_rates.md").read_text()
    pd.testing.assert_frame_equal(pd.read_csv(out / "detection_rates.csv"), table, check_dtype=False)


def test_ablation_covers_variants_likelihoods_and_baselines(trained):
    from seg4seg_utils.pipeline import ablation

    root, grid, gaps = trained
    out = root / "results" / "ablation"
    table = ablation(grid, gaps, "smoke", out, embedder=EfficientNetLite0Embedder(), cache_dir=root / "cache",
                     n_jobs=1, reduce="pca", progress=False)
    settings = set(table["setting"])
    assert len(settings) == 3 * 3 + 4
    assert {"SEG4SEG | x0*M_pred + npv", "SEG4SEG soft-categorical | x0 + dice", "GMM (gamma=0) | x0 + dice",
            "k-means | x0 + dice", "error ranking | x0 + dice"} <= settings
    assert "| setting" in (out / "ablation.md").read_text()


def test_train_grid_subset_without_results_dir_writes_nothing(trained):
    root, grid, gaps = trained
    before = (root / "results" / "training" / "gaps.csv").read_text()
    sub = train_grid(grid[:1], "smoke", root / "runs", None, progress=False)  # cached run, looked up only
    assert len(sub) == 1 and sub["run"].iat[0] == gaps["run"].iat[0]
    assert (root / "results" / "training" / "gaps.csv").read_text() == before
