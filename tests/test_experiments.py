"""The detection-rate benchmark on the smoke preset: one row per fit, tidy table, resumable, parallel."""
import json
import re
import time

import numpy as np
import pandas as pd
import pytest

from seg4seg_utils.config import get_preset
from seg4seg_utils.discovery.embed import EfficientNetLite0Embedder
from seg4seg_utils.discovery.judge import SlicerSettings
from seg4seg_utils.studies.benchmark import benchmark_items, detection_table, load_run, run_benchmark
from seg4seg_utils.studies.pipeline import detection_benchmark, gap_table, train_grid
from seg4seg_utils.studies.workspace import Workspace


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    ws = Workspace("smoke", data_dir=root / "data", runs_dir=root / "runs", results_dir=root / "results",
                   cache_dir=root / "cache", n_jobs=1, progress=False)
    return root, ws, train_grid(ws, cases="AD")


def test_benchmark_rows_resume_and_parallel(trained, tmp_path):
    root, ws, runs = trained
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
    root, ws, runs = trained
    out = root / "results" / "smoke" / "detection"
    table = detection_benchmark(ws, runs, settings=SlicerSettings(reduce="pca"))
    assert set(table["case"]) == {"A", "D"} and len(table) == len(get_preset("smoke").prevalences) * 2
    assert get_preset("smoke").n_images * 0.2 >= 20  # the test split holds at least case B's 20 slices
    for name in ("detection_rates.csv", "detection_rates.md", "detection_heatmap.png", "detection_items.jsonl"):
        assert (out / name).stat().st_size > 0
    md = (out / "detection_rates.md").read_text()
    assert "EfficientNet-Lite0" in md and "Wilson" in md
    assert {"k", "n", "ci_low", "ci_high"} <= set(table.columns) and table["n"].eq(1).all()  # smoke: 1 slicer seed
    labels = re.findall(r"\| (\d\.\d+) \((\d)/1, (0\.\d\d)-(\d\.\d\d)\) \|", md)
    assert len(labels) == len(table) and {(r, k) for r, k, _, _ in labels} <= {("1.0", "1"), ("0.0", "0")}
    pd.testing.assert_frame_equal(pd.read_csv(out / "detection_rates.csv"), table, check_dtype=False)


def test_ablation_covers_variants_likelihoods_and_baselines(trained):
    from seg4seg_utils.studies.pipeline import ablation

    root, ws, runs = trained
    out = root / "results" / "smoke" / "ablation"
    table = ablation(ws, runs, reduce="pca")
    settings = set(table["setting"])
    assert len(settings) == 5 * 3 + 4  # the paper's three image variants and the two mask shapes, x 3 scores
    assert {"SEG4SEG | x0*M_pred + npv", "SEG4SEG | shape(M_GT) + ppv", "SEG4SEG | shape(M_pred) + dice",
            "SEG4SEG soft-categorical | x0 + dice", "GMM (gamma=0) | x0 + dice",
            "k-means | x0 + dice", "error ranking | x0 + dice"} <= settings
    md = (out / "ablation.md").read_text()
    assert "| setting" in md and "SEG4SEG \\| x0 + dice" in md
    rows = [line for line in md.splitlines() if line.startswith("|")]
    assert len({len(re.findall(r"(?<!\\)\|", line)) for line in rows}) == 1  # every row has the header's cells


def test_train_grid_writes_gaps_and_the_workspace_finds_runs_without_training(trained):
    root, ws, runs = trained
    out = root / "results" / "smoke" / "training"
    gaps = pd.read_csv(out / "gaps.csv")
    assert list(gaps["case"]) == [tc.case for tc in runs] and {"gap", "p_value", "run"} <= set(gaps.columns)
    for name in ("gaps.md", "subgroup_gap.png", "learning_curves.png"):
        assert (out / name).stat().st_size > 0
    pd.testing.assert_frame_equal(gap_table(runs), gaps, check_dtype=False)
    # "the run for case A at 20 %": read back, nothing trained, nothing written
    done = {p: p.stat().st_mtime_ns for p in (root / "runs").rglob("done.json")}
    before = (out / "gaps.csv").read_text()
    one = ws.trained_case("A", 0.2)
    assert (one.case, one.prevalence) == ("A", 0.2)
    assert one.run.root == next(tc.run.root for tc in runs if (tc.case, tc.prevalence) == ("A", 0.2))
    assert {p: p.stat().st_mtime_ns for p in (root / "runs").rglob("done.json")} == done
    assert (out / "gaps.csv").read_text() == before
    with pytest.raises(ValueError, match="not in preset 'smoke'"):
        ws.trained_case("A", 0.05)


def planted_benchmark(root):
    """Runs whose verdicts are known, on one tiny dataset of 100 flat-coloured test images in four colour groups.

    Group 0 (10 images, 10 % of the set) has the worst Dice; groups 1-3 (30 each) have Dice 0.95, 0.90, 0.85.
    Each fake run carries a different hidden ``failure`` attribute:

    * ``planted``: the failure attribute is group 0: a pure, worst, large-enough slice -> detected;
    * ``spread``: every other image of every group: no slice is purer than 0.5 -> not detected;
    * ``pure_but_fine``: group 1, pure but the *best* slice, outside the bottom 40 % -> not detected.
    """
    from dataclasses import asdict

    import numpy as np

    from seg4seg_utils.data.records import build_dataset
    from seg4seg_utils.model.train import TrainConfig

    rng = np.random.default_rng(0)
    group = np.repeat([0, 1, 2, 3], [10, 30, 30, 30])
    colours = np.array([[200, 40, 40], [40, 200, 40], [40, 40, 200], [128, 128, 128]])
    ids = [f"s{i:03d}" for i in range(len(group))]

    def build(writer):
        for sid, g in zip(ids, group):
            image = np.clip(colours[g] + rng.normal(0, 6, (16, 16, 3)), 0, 255).astype(np.uint8)
            writer.add(sid, "test", image, np.zeros((16, 16), bool), "planted")

    table = build_dataset(root / "data", {"planted": 1}, build)
    dice = np.array([0.3, 0.95, 0.90, 0.85])[group] + rng.normal(0, 0.01, len(group))
    failures = {"planted": group == 0, "spread": np.arange(len(group)) % 2 == 0, "pure_but_fine": group == 1}
    runs = {}
    for name, failure in failures.items():
        run_root = root / "runs" / name
        run_root.mkdir(parents=True)
        (run_root / "config.json").write_text(json.dumps({"train": asdict(TrainConfig())}))
        pd.DataFrame({"id": ids, "dice": dice, "failure": failure}).to_csv(run_root / "metrics.csv", index=False)
        runs[name] = load_run(run_root)
    return table, runs


def test_recorded_success_matches_planted_verdicts(tmp_path):
    from conftest import counting_embedder

    table, runs = planted_benchmark(tmp_path)
    known = {"planted": True, "spread": False, "pure_but_fine": False}
    settings = SlicerSettings(n_slices=4, reduce=None)
    items = benchmark_items([("A", 0.1, k, table, runs[name]) for k, name in enumerate(known)],
                            slicer_seeds=(0, 1), settings=settings)
    rows = run_benchmark(items, counting_embedder()(), tmp_path / "items.jsonl", cache_dir=tmp_path / "cache",
                         progress=False)
    rows["run"] = [list(known)[s] for s in rows["data_seed"]]
    verdicts = rows.groupby("run")["success"].agg(lambda s: sorted(set(s)))
    assert verdicts.to_dict() == {name: [ok] for name, ok in known.items()}
    by_run = rows.set_index(["run", "slicer_seed"]).sort_index()
    assert by_run.loc["planted", "winning_size"].eq(10).all()    # the winner is exactly the planted group
    assert by_run.loc["pure_but_fine", "purity_pass"].all()      # pure, but not among the worst slices
    assert (by_run.loc["spread", "max_purity"] <= 0.6).all()
    table = detection_table(rows, by=("data_seed",))
    assert table["detection_rate"].tolist() == [1.0, 0.0, 0.0]


def test_benchmark_reads_each_run_once_not_once_per_fit(trained, tmp_path, monkeypatch):
    from seg4seg_utils.studies import benchmark

    root, ws, runs = trained
    reads = []
    real_load_run = benchmark.load_run
    monkeypatch.setattr(benchmark, "load_run", lambda root_: reads.append(str(root_)) or real_load_run(root_))
    items = benchmark_items(runs, slicer_seeds=(0, 1, 2), settings=SlicerSettings(reduce="pca"))
    rows = run_benchmark(items, ws.embedder, tmp_path / "items.jsonl", cache_dir=root / "cache", n_jobs=1,
                         progress=False)
    assert len(rows) == len(items) == 3 * len(runs)
    assert sorted(reads) == sorted(str(tc.run.root) for tc in runs), "one read per run, shared by its fits"


def test_workspace_picks_the_cell_asked_for(tmp_path):
    """With two prevalences in the grid, ws.trained_case returns the model trained on the one asked for."""
    from dataclasses import replace

    two = replace(get_preset("smoke"), prevalences=(0.1, 0.2))
    ws = Workspace(two, data_dir=tmp_path / "data", runs_dir=tmp_path / "runs", progress=False)
    for prevalence in (0.1, 0.2):
        tc = ws.trained_case("A", prevalence)
        test = tc.table.split("test").df
        assert tc.prevalence == prevalence and test["failure"].astype(bool).mean() == pytest.approx(prevalence)
        assert tc.run.metrics()["failure"].astype(bool).mean() == pytest.approx(prevalence)
    assert ws.trained_case("A", 0.1).run.root != ws.trained_case("A", 0.2).run.root


def test_false_alarms_slice_each_configuration_as_named(tmp_path, monkeypatch):
    """Each configuration reaches the embedding (its image variant), the slicer (its settings) and the scores
    (its performance column); the table gives every study x configuration a false-alarm rate with k/n."""
    from seg4seg_utils.discovery import embed, judge
    from seg4seg_utils.model.train import train
    from seg4seg_utils.studies import pipeline

    ws = Workspace("smoke", data_dir=tmp_path / "data", runs_dir=tmp_path / "runs", cache_dir=None, progress=False)
    fundus = ws.base_datasets(["fundus"])["fundus"]
    seen: dict[str, list] = {"variant": [], "settings": [], "scores": []}
    real_embed, real_fit = embed.embed_dataset, judge.fit_and_judge

    def embed_spy(table, embedder, variant="x0", **kw):
        seen["variant"].append(variant)
        return real_embed(table, embedder, variant, **kw)

    def fit_spy(Z, scores, attribute=None, **kw):
        seen["settings"].append(kw["settings"])
        seen["scores"].append(np.sort(np.asarray(scores)[:, 0]))
        return real_fit(Z, scores, attribute, **kw)

    monkeypatch.setattr(embed, "embed_dataset", embed_spy)
    monkeypatch.setattr(judge, "fit_and_judge", fit_spy)
    names = ("SEG4SEG | x0 + dice", "SEG4SEG soft-categorical | x0 + dice", "SEG4SEG | x0*M_GT + ppv")
    configs = {name: pipeline.CONFIGURATIONS[name] for name in names}
    dim = lambda m: m["illumination"] <= m["illumination"].quantile(0.25)  # noqa: E731
    table = pipeline.false_alarms(ws, {"dim quarter": (fundus, dim)}, configs, n_slices=3)

    n_seeds = len(ws.preset.slicer_seeds)
    assert list(table["setting"]) == list(names) and (table["study"] == "dim quarter").all()
    assert (table["n"] == n_seeds).all() and (table["k"] == (table["false_alarm_rate"] * n_seeds).round()).all()
    assert ((table["ci_low"] <= table["false_alarm_rate"]) & (table["false_alarm_rate"] <= table["ci_high"])).all()
    assert seen["variant"] == ["x0", "x0", "x0*M_GT"]
    assert [s.performance_model for s in seen["settings"]] == ["gaussian"] * n_seeds + ["soft_categorical"] * n_seeds \
        + ["gaussian"] * n_seeds
    metrics = train(fundus, ws.train_config(), runs_dir=ws.runs, progress=False).metrics()  # read back, not retrained
    assert np.allclose(seen["scores"][0], np.sort(metrics["dice"]))
    assert np.allclose(seen["scores"][-1], np.sort(metrics["ppv"]))


def test_items_that_share_a_reduction_fit_it_once_on_two_workers(trained, tmp_path, monkeypatch):
    # three scores per run, one seed: the three items of a run share a reduction; on two workers, as separate
    # tasks, two of them met at once and both fitted it (the cache is written when a fit ends)
    from joblib import parallel_config

    from seg4seg_utils.discovery import reduce

    root, ws, runs = trained
    fits = []
    real = reduce.reduce_embeddings

    def slow_counted(X, method, *args, **kwargs):
        if method == "pca":  # the slicers call it too, with None, on what is already reduced
            fits.append(method)
            time.sleep(0.3)  # long enough for the other worker to reach an item of the same reduction meanwhile
        return real(X, method, *args, **kwargs)

    monkeypatch.setattr(reduce, "reduce_embeddings", slow_counted)
    items = benchmark_items(runs, slicer_seeds=(0,), performances=(("dice",), ("ppv",), ("npv",)),
                            settings=SlicerSettings(reduce="pca"))
    with parallel_config(backend="threading"):  # workers in this process, so the counter sees every fit
        rows = run_benchmark(items, ws.embedder, tmp_path / "items.jsonl", cache_dir=tmp_path / "cache", n_jobs=2,
                             progress=False)
    assert len(rows) == len(items) == 3 * len(runs)
    assert len(fits) == len(runs), f"{len(fits)} reductions for {len(runs)} runs"


def test_workspace_trains_with_its_preset_objects_recipe(tmp_path):
    from dataclasses import replace

    from seg4seg_utils.model.train import train_preset

    for name in ("smoke", "cpu", "paper"):
        assert Workspace(name, data_dir=tmp_path).train_config() == train_preset(name)
    cpu = get_preset("cpu")
    small = replace(cpu, train=tuple((k, 64 if k == "image_size" else v) for k, v in cpu.train))
    assert Workspace(small, data_dir=tmp_path).train_config().image_size == 64
    assert Workspace(small, data_dir=tmp_path, train_overrides={"epochs": 2}).train_config().epochs == 2
