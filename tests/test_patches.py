"""Patch-level slice discovery: the patch grid, per-patch metrics, the aggregation rule, the cache, the benchmark."""
from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from conftest import counting_embedder

from seg4seg_utils.data.phantoms import generate_phantom_dataset
from seg4seg_utils.data.records import write_png
from seg4seg_utils.discovery import patches as P
from seg4seg_utils.discovery.protocol import evaluate_slices
from seg4seg_utils.report import patch_plots
from seg4seg_utils.studies import patch_study


# ------------------------------------------------------------------------------------------ patching
@pytest.mark.parametrize("shape,grid", [((256, 256, 3), 4), ((64, 64), 3), ((37, 50, 3), 4), ((5, 7), 5)])
def test_split_and_assemble_are_inverse_and_tile_the_image(shape, grid):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, size=shape, dtype=np.uint8)
    parts = P.split_patches(img, grid)
    assert len(parts) == grid * grid
    assert sum(p.shape[0] * p.shape[1] for p in parts) == shape[0] * shape[1]  # coverage, no overlap
    widths = {p.shape[1] for p in parts}
    assert max(widths) - min(widths) <= 1  # near-equal patches also for sizes not divisible by the grid
    np.testing.assert_array_equal(P.assemble_patches(parts, grid), img)
    # row-major: patch 1 is the top row, second column
    b_r, b_c = P.patch_bounds(shape[0], grid), P.patch_bounds(shape[1], grid)
    np.testing.assert_array_equal(parts[1], img[b_r[0]:b_r[1], b_c[1]:b_c[2]])


def test_patch_bounds_and_input_errors():
    np.testing.assert_array_equal(P.patch_bounds(256, 4), [0, 64, 128, 192, 256])
    np.testing.assert_array_equal(P.patch_bounds(10, 3), [0, 3, 7, 10])
    with pytest.raises(ValueError, match="positive integer"):
        P.patch_bounds(64, 0)
    with pytest.raises(ValueError, match="cannot be cut"):
        P.patch_bounds(3, 4)
    with pytest.raises(ValueError, match="H x W"):
        P.split_patches(np.zeros((2, 4, 4, 3)), 2)
    with pytest.raises(ValueError, match="cannot fill"):
        P.assemble_patches([np.zeros((2, 2))] * 3, 2)


def test_patch_metrics_against_hand_counts():
    gt = np.zeros((4, 4), bool)
    gt[0:2, 0:2] = True                 # top-left patch fully foreground
    gt[2, 2] = True                     # one foreground pixel in the bottom-right patch
    pred = np.zeros((4, 4), bool)
    pred[0, 0:2] = True                 # top-left: 2 tp, 2 fn
    pred[0, 3] = True                   # top-right: 1 fp on an empty patch
    m = P.patch_metrics(gt, pred, grid=2).set_index("patch")
    assert m.loc[0, ["tp", "fp", "fn", "tn"]].tolist() == [2, 0, 2, 0]
    assert m.loc[0, "accuracy"] == 0.5 and m.loc[0, "dice"] == pytest.approx(4 / 6) and m.loc[0, "sensitivity"] == 0.5
    assert m.loc[1, ["tp", "fp", "fn", "tn"]].tolist() == [0, 1, 0, 3]
    assert m.loc[1, "accuracy"] == 0.75 and m.loc[1, "dice"] == 0.0 and m.loc[1, "sensitivity"] == 1.0
    assert m.loc[2, "accuracy"] == 1.0 and m.loc[2, "dice"] == 1.0 and m.loc[2, "sensitivity"] == 1.0  # empty, empty
    assert m.loc[3, ["tp", "fn", "fg"]].tolist() == [0, 1, 1]
    assert m.loc[3, "accuracy"] == 0.75 and m.loc[3, "dice"] == 0.0 and m.loc[3, "sensitivity"] == 0.0
    assert m[["row", "col"]].values.tolist() == [[0, 0], [0, 1], [1, 0], [1, 1]]
    with pytest.raises(ValueError, match="same size"):
        P.patch_metrics(gt, pred[:3], 2)


# --------------------------------------------------------------------------------------- aggregation
def test_aggregation_rules_by_hand():
    # 3 images x 2 patches x 2 slices, hard responsibilities
    r = np.zeros((3, 2, 2))
    r[0, :, 0] = 1                     # image 0: both patches in slice 0
    r[1, 0, 0] = r[1, 1, 1] = 1        # image 1: one patch each
    r[2, 0, 0] = r[2, 1, 1] = 1        # image 2: one patch each
    lab, proba = P.aggregate_patches(r, "share")
    np.testing.assert_allclose(proba, [[1, 0], [0.5, 0.5], [0.5, 0.5]])
    np.testing.assert_array_equal(lab, [0, 0, 0])  # ties go to the lower slice id
    # lift: dataset-mean shares (2/3, 1/3) + 1/2 -> denominators 7/6 and 5/6
    lab, proba = P.aggregate_patches(r, "lift")
    s1 = np.array([0.5 / (7 / 6), 0.5 / (5 / 6)])
    np.testing.assert_allclose(proba[1], s1 / s1.sum())
    np.testing.assert_array_equal(lab, [0, 1, 1])  # the rarer slice claims the images that populate it
    with pytest.raises(ValueError, match="unknown aggregation"):
        P.aggregate_patches(r, "max")
    with pytest.raises(ValueError, match="n_images, n_patches, n_slices"):
        P.aggregate_patches(r[0], "lift")


def test_lift_ignores_a_single_stray_patch():
    # 20 images of 16 patches in a common slice 0; a rare slice 1 holds ONE patch of image 0 and 8 of image 1
    r = np.zeros((20, 16, 2))
    r[:, :, 0] = 1
    r[0, 0] = [0, 1]
    r[1, :8] = [0, 1]
    lab, _ = P.aggregate_patches(r, "lift")
    assert lab[1] == 1 and lab[0] == 0 and (lab[2:] == 0).all()


def _planted(n=80, n_planted=8, grid=2, dim=6, seed=0, n_bad=3):
    """Images of grid^2 patches from 3 common appearance clusters (good patches); the planted images have their
    first ``n_bad`` patches in a distinctive cluster with low patch accuracy, and a lower image Dice."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 6, size=(4, dim))
    p = grid * grid
    X = np.empty((n, p, dim))
    Y = rng.uniform(0.97, 0.995, size=(n, p))
    planted = np.zeros(n, bool)
    planted[rng.choice(n, n_planted, replace=False)] = True
    for i in range(n):
        kinds = rng.integers(0, 3, size=p)
        if planted[i]:
            kinds[:n_bad] = 3
            Y[i, :n_bad] = rng.uniform(0.6, 0.8, size=n_bad)
        X[i] = centres[kinds] + rng.normal(0, 0.5, size=(p, dim))
    dice = np.where(planted, rng.uniform(0.7, 0.8, n), rng.uniform(0.93, 0.99, n))
    return X, Y, planted, dice


@pytest.mark.parametrize("aggregate", P.AGGREGATIONS)
def test_planted_subgroup_is_recovered_with_purity_one(aggregate):
    X, Y, planted, dice = _planted()
    psf = P.PatchSliceFinder(n_slices=5, gamma=10, aggregate=aggregate, reduce=None, random_state=0).fit(X, Y)
    assert psf.patch_labels_.shape == Y.shape and psf.image_proba_.shape == (len(X), 5)
    np.testing.assert_allclose(psf.image_proba_.sum(1), 1)
    report = evaluate_slices(psf.image_labels_, dice, planted, proba=psf.image_proba_, n_slices=5)
    win = report.winning_slice
    assert report.success and report.table.loc[win, "purity"] == 1.0
    assert report.table.loc[win, "size"] == planted.sum()
    # the region map of the planted patch slice: the planted patches are the first three of the 2x2 grid
    k = np.bincount(psf.patch_labels_[planted, 0]).argmax()
    rm = psf.slice_region_map(k, members=planted)
    np.testing.assert_allclose(rm, [[1, 1], [1, 0]])
    err = P.region_map(1 - Y, 2, members=psf.image_labels_ == win, reference=psf.image_labels_ != win)
    assert err[1, 1] < 0.05 < err.ravel()[:3].min()  # excess error sits where the planted patches are


def test_share_rule_misses_a_minority_region_that_lift_finds():
    # the planted images have only 1 of 4 patches distinctive: majority vote keeps them with their common slice
    Xs, Ys, planted, dice = _planted(seed=1, n_bad=1)
    lift = P.PatchSliceFinder(n_slices=5, aggregate="lift", reduce=None, random_state=0).fit(Xs, Ys)
    share = P.PatchSliceFinder(n_slices=5, aggregate="share", reduce=None, random_state=0).fit(Xs, Ys)
    assert evaluate_slices(lift.image_labels_, dice, planted, n_slices=5).max_purity == 1.0
    assert not evaluate_slices(share.image_labels_, dice, planted, n_slices=5).success


def test_region_map_and_estimator_errors():
    v = np.array([[1.0, 0, 0, 0], [0, 0, 0, 1.0], [0, 0, 0, 0]])
    np.testing.assert_allclose(P.region_map(v, 2), [[1 / 3, 0], [0, 1 / 3]])
    np.testing.assert_allclose(P.region_map(v, 2, members=np.array([1, 1, 0], bool),
                                            reference=np.array([0, 0, 1], bool)), [[0.5, 0], [0, 0.5]])
    with pytest.raises(ValueError, match="n_images, 4"):
        P.region_map(v[:, :3], 2)
    with pytest.raises(ValueError, match="non-empty"):
        P.region_map(v, 2, members=np.zeros(3, bool))
    psf = P.PatchSliceFinder(reduce=None)
    with pytest.raises(ValueError, match="n_images, n_patches, dim"):
        psf.fit(np.zeros((4, 3)), np.zeros((4, 3)))
    with pytest.raises(ValueError, match="performance must be"):
        psf.fit(np.zeros((4, 4, 2)), np.zeros((4, 3)))
    with pytest.raises(ValueError, match="square grid"):
        psf.fit(np.zeros((4, 3, 2)), np.zeros((4, 3)))
    with pytest.raises(ValueError, match="unknown aggregation"):
        P.PatchSliceFinder(aggregate="mean").fit(np.zeros((4, 4, 2)), np.zeros((4, 4)))
    with pytest.raises(RuntimeError, match="not fitted"):
        psf.slice_region_map(0)
    with pytest.raises(ValueError, match="Invalid parameter"):  # scikit-learn's BaseEstimator.set_params
        psf.set_params(grid=3)


def test_position_feature_separates_identical_patches_by_place():
    # every patch looks the same; only the bottom-right patches are bad: with position they get their own slice
    rng = np.random.default_rng(0)
    X = rng.normal(0, 0.01, size=(40, 4, 3))
    Y = np.full((40, 4), 0.99)
    Y[:, 3] = 0.6
    psf = P.PatchSliceFinder(n_slices=4, position=True, reduce=None, random_state=0).fit(X, Y)
    bad = psf.patch_labels_[:, 3]
    assert len(set(bad)) == 1 and bad[0] not in set(psf.patch_labels_[:, :3].ravel())


# ----------------------------------------------------------------------------------- cache and data
CountingEmbedder = counting_embedder()


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    """20 dermoscopy phantoms at 32 px: 5 in the test split."""
    return generate_phantom_dataset("dermoscopy", tmp_path_factory.mktemp("patch") / "derm", n=20, size=32,
                                    progress=False)


@pytest.fixture(scope="module")
def fake_run(table, tmp_path_factory):
    """A run folder with metrics.csv and saved predictions: the ground truth with its left half erased."""
    root = tmp_path_factory.mktemp("run")
    (root / "predictions").mkdir()
    test = table.split("test")
    rows = []
    for i, sid in enumerate(test.df["id"]):
        pred = test.mask(i).copy()
        pred[:, :16] = False
        write_png(pred, root / "predictions" / f"{sid}.png")
        rows.append({"id": sid, "dice": 0.5 + 0.1 * i, "failure": i == 0, "prediction": f"predictions/{sid}.png"})
    pd.DataFrame(rows).to_csv(root / "metrics.csv", index=False)
    return SimpleNamespace(root=root, metrics=lambda: pd.read_csv(root / "metrics.csv"))


def test_patch_dataset_embeds_every_patch_and_reuses_the_cache(table, fake_run, tmp_path):
    emb = CountingEmbedder()
    d = P.patch_dataset(table, fake_run, emb, grid=2, cache_dir=tmp_path, progress=False)
    test = table.split("test")
    assert d.X.shape == (len(test), 4, 6) and not d.from_cache and emb.seen == 4 * len(test)
    # row i, patch p is the embedding of that patch of that image
    expect = emb.embed(P.split_patches(test.image(2), 2))
    np.testing.assert_allclose(d.X[2], expect, rtol=1e-6)
    # per-patch metrics: the left column of patches predicts nothing
    for i in range(len(test)):
        fg = np.array([m.sum() for m in P.split_patches(test.mask(i), 2)])
        np.testing.assert_allclose(d.patch_perf["sensitivity"][i, [0, 2]], np.where(fg[[0, 2]] > 0, 0.0, 1.0))
        np.testing.assert_allclose(d.patch_perf["sensitivity"][i, [1, 3]], 1.0)
    assert d.metrics["id"].tolist() == d.ids and d.metrics["failure"].tolist()[0]
    # second call: read back from disk, no embedding
    calls = emb.calls
    d2 = P.patch_dataset(table, fake_run, emb, grid=2, cache_dir=tmp_path, progress=False)
    assert d2.from_cache and emb.calls == calls
    np.testing.assert_array_equal(d2.X, d.X)
    # another grid is another cache entry; a corrupted file is rebuilt, not trusted
    d3 = P.patch_dataset(table, fake_run, emb, grid=4, cache_dir=tmp_path, progress=False)
    assert d3.X.shape == (len(test), 16, 6) and not d3.from_cache and d3.cache_path != d.cache_path
    arr = np.load(d.cache_path)
    arr[0, 0] += 1
    np.save(d.cache_path, arr)
    d4 = P.patch_dataset(table, fake_run, emb, grid=2, cache_dir=tmp_path, progress=False)
    assert not d4.from_cache and emb.calls > calls
    np.testing.assert_array_equal(d4.X, d.X)
    meta = json.loads(d.cache_path.with_suffix(".json").read_text())
    assert meta["key"]["grid"] == 2 and meta["ids"][:2] == [f"{d.ids[0]}#r0c0", f"{d.ids[0]}#r0c1"]


def test_patch_dataset_refuses_predictions_of_another_size(table, fake_run, tmp_path):
    import shutil

    root = tmp_path / "run"
    shutil.copytree(fake_run.root, root)
    sid = table.split("test").df["id"].iat[0]
    write_png(np.zeros((16, 16), bool), root / "predictions" / f"{sid}.png")
    bad = SimpleNamespace(root=root, metrics=lambda: pd.read_csv(root / "metrics.csv"))
    with pytest.raises(ValueError, match="image size"):
        P.patch_dataset(table, bad, CountingEmbedder(), grid=2, cache_dir=None, progress=False)


def test_benchmark_is_resumable(table, fake_run, tmp_path, monkeypatch):
    # 5 test images x 4 patches: UMAP is replaced by the identity here (its own tests live elsewhere)
    from seg4seg_utils.discovery import reduce

    monkeypatch.setattr(reduce, "reduce_embeddings", lambda X, method, n, seed, *a: (None, np.asarray(X, np.float64)))
    runs = [("B", 0.2, 0, table, fake_run)]
    out = tmp_path / "items.jsonl"
    settings = ({"n_slices": 2}, {"n_slices": 2, "gamma": 0.0}, {"n_slices": 2, "aggregate": "pooled"})
    rows = patch_study.patch_benchmark(runs, CountingEmbedder(), out, cache_dir=tmp_path / "cache", slicer_seeds=(0, 1),
                             grid=2, settings=settings, progress=False)
    assert len(rows) == 6 and set(rows["level"]) == {"patch"} and (rows["n_test"] == 5).all()
    assert rows["success"].dtype == bool and len(set(rows["key"])) == 6
    before = out.read_text()
    again = patch_study.patch_benchmark(runs, CountingEmbedder(), out, cache_dir=tmp_path / "cache", slicer_seeds=(0, 1),
                              grid=2, settings=settings, progress=False)
    assert out.read_text() == before and len(again) == 6  # nothing refitted
    # an interrupted write (half a line) is ignored and that item simply reruns
    lines = before.splitlines()
    out.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:20])
    third = patch_study.patch_benchmark(runs, CountingEmbedder(), out, cache_dir=tmp_path / "cache", slicer_seeds=(0, 1),
                              grid=2, settings=settings, progress=False)
    assert len(third) == 6 and sorted(third["key"]) == sorted(again["key"])
    image = pd.DataFrame({"case": ["B"], "prevalence": [0.2], "success": [True], "purity_pass": [True],
                          "max_purity": [1.0]})
    summary = patch_study.detection_summary(again, image)
    assert summary["level"].tolist() == ["image", "image, pooled patch features", "patch, lift",
                                         "patch, lift, gamma=0.0"]
    assert summary["n_seeds"].tolist() == [1, 2, 2, 2]


def test_figures_draw_without_error():
    from matplotlib.figure import Figure

    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    gt = np.zeros((32, 32), bool)
    gt[8:20, 8:20] = True
    fig = patch_plots.patch_grid_figure(img, gt, np.roll(gt, 3, axis=1), grid=4)
    assert isinstance(fig, Figure) and len(fig.axes) == 3  # image, heatmap, colour bar
    labels = rng.integers(0, 3, (5, 4))
    assert isinstance(patch_plots.patch_scatter_figure(rng.normal(size=(20, 2)), labels, np.arange(5) < 2, highlight=1), Figure)
    with pytest.raises(ValueError, match="20 patches"):
        patch_plots.patch_scatter_figure(rng.normal(size=(19, 2)), labels, np.arange(5) < 2)
    assert isinstance(patch_plots.region_heatmap_figure({"a": np.eye(2), "b": -np.eye(2)}), Figure)
    summary = pd.DataFrame({"level": ["image", "patch, lift"] * 2, "case": "B", "prevalence": [0.05, 0.05, 0.1, 0.1],
                            "detection_rate": [0.0, 1.0, 1.0, 1.0]})
    assert isinstance(patch_plots.detection_bars_figure(summary, "B"), Figure)


def test_level_comparison_writes_the_table_and_rewrites_it_unchanged(tmp_path):
    """The notebook shows what the study wrote: detection_patch_vs_image.csv, the same bytes on a rerun."""
    patch = pd.DataFrame({"case": "B", "prevalence": [0.05, 0.05, 0.05, 0.05], "slicer_seed": [0, 1, 0, 1],
                          "aggregate": ["lift", "lift", "pooled", "pooled"], "gamma": 10.0, "position": False,
                          "patch_metric": "accuracy", "grid": 2, "n_slices": 2, "success": [True, False, True, True],
                          "purity_pass": [True, True, True, True], "max_purity": [1.0, 0.9, 1.0, 1.0]})
    image = pd.DataFrame({"case": ["B", "B"], "prevalence": [0.05, 0.05], "success": [False, False],
                          "purity_pass": [False, True], "max_purity": [0.5, 0.85]})
    out = tmp_path / "results" / "smoke" / "patches"
    summary = patch_study.level_comparison(patch, image, out)
    path = out / patch_study.LEVEL_COMPARISON_FILE
    assert path.name == "detection_patch_vs_image.csv" and sorted(p.name for p in out.iterdir()) == [path.name]
    pd.testing.assert_frame_equal(pd.read_csv(path), summary, check_dtype=False)
    assert summary.equals(patch_study.detection_summary(patch, image))  # the table, unchanged by writing it
    assert summary.set_index("level")["detection_rate"].to_dict() == {"image": 0.0, "image, pooled patch features": 1.0,
                                                                      "patch, lift": 0.5}
    before = path.read_bytes()
    patch_study.level_comparison(patch, image, out)
    assert path.read_bytes() == before
    patch_study.level_comparison(patch, image, None)  # nowhere to write: only the table
    assert sorted(p.name for p in out.iterdir()) == [path.name]
