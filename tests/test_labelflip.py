"""Label-flip decomposition, flip-risk, top-decile share, the correlation-shift phantom, multi-class training
and the binary run hashes that must not move."""
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from seg4seg_utils.data import twin_cells
from seg4seg_utils.data.records import DatasetError, SampleTable, read_mask
from seg4seg_utils.model import label_flips, multiclass
from seg4seg_utils.report import labelflip_plots
from seg4seg_utils.studies import labelflip as lf


# ----------------------------------------------------------------------------------------- decomposition
def test_decomposition_on_a_hand_built_mask():
    truth = np.array([[0, 1, 1, 2],
                      [0, 1, 1, 2],
                      [0, 0, 2, 2],
                      [0, 0, 0, 0]])
    pred = np.array([[1, 1, 2, 2],    # (0,0) spurious, (0,1) correct, (0,2) flipped 1->2, (0,3) correct
                     [0, 0, 1, 1],    # (1,1) missed, (1,2) correct, (1,3) flipped 2->1
                     [0, 0, 0, 2],    # (2,2) missed, (2,3) correct
                     [0, 2, 0, 0]])   # (3,1) spurious
    c = label_flips.decompose(truth, pred)
    assert {k: int(v[0]) for k, v in c.items()} == {"gt_foreground": 8, "correct": 4, "flipped": 2, "missed": 2,
                                                   "spurious": 2}
    rates = label_flips.decomposition_rates(c).iloc[0]
    assert rates["flip_rate"] == 0.25 and rates["miss_rate"] == 0.25 and rates["correct_rate"] == 0.5


def test_decomposition_sums_to_the_foreground_on_random_batches():
    rng = np.random.default_rng(0)
    truth, pred = rng.integers(0, 4, (5, 16, 16)), rng.integers(0, 4, (5, 16, 16))
    c = label_flips.decompose(truth, pred)
    assert np.array_equal(c["correct"] + c["flipped"] + c["missed"], (truth > 0).reshape(5, -1).sum(1))
    assert np.array_equal(c["spurious"], ((truth == 0) & (pred > 0)).reshape(5, -1).sum(1))
    # relabelling predictions among foreground classes changes correct/flipped, never missed or the total
    swapped = np.where(pred == 1, 2, np.where(pred == 2, 1, pred))
    c2 = label_flips.decompose(truth, swapped)
    assert np.array_equal(c2["missed"], c["missed"]) and not np.array_equal(c2["flipped"], c["flipped"])


def test_empty_ground_truth_is_finite_and_perfect():
    c = label_flips.decompose(np.zeros((4, 4), int), np.zeros((4, 4), int))
    rates = label_flips.decomposition_rates(c).iloc[0]
    assert (rates["correct_rate"], rates["flip_rate"], rates["miss_rate"]) == (1.0, 0.0, 0.0)


@pytest.mark.parametrize("truth,pred,err,match", [
    (np.zeros((4, 4), int), np.zeros((4, 5), int), ValueError, "must match"),
    (np.zeros((4, 4), bool), np.zeros((4, 4), int), TypeError, "integer class labels"),
    (np.zeros((4, 4)), np.zeros((4, 4), int), TypeError, "argmax"),
    (-np.ones((4, 4), int), np.zeros((4, 4), int), ValueError, "negative"),
    (np.zeros(4, int), np.zeros(4, int), ValueError, r"\(H, W\)"),
])
def test_decomposition_bad_inputs(truth, pred, err, match):
    with pytest.raises(err, match=match):
        label_flips.decompose(truth, pred)


# --------------------------------------------------------------------------------------------- flip-risk
def test_flip_risk_hand_computed():
    p = np.zeros((3, 1, 4))
    p[:, 0, 0] = [0.0, 1.0, 0.0]      # one-hot foreground class: 0
    p[:, 0, 1] = [0.2, 0.4, 0.4]      # uniform between the two foreground classes: 1 (background ignored)
    p[:, 0, 2] = [0.5, 0.4, 0.1]      # q = (0.8, 0.2): H = -(0.8 ln 0.8 + 0.2 ln 0.2) / ln 2
    p[:, 0, 3] = [0.9, 0.05, 0.05]    # confident background, still an even split of the foreground: 1
    risk = label_flips.flip_risk(p, axis=0)[0]
    expected = -(0.8 * math.log(0.8) + 0.2 * math.log(0.2)) / math.log(2)
    np.testing.assert_allclose(risk, [0.0, 1.0, expected, 1.0], atol=1e-12)


def test_flip_risk_three_foreground_classes_and_batch_axis():
    p = np.zeros((2, 4, 1, 1))
    p[0, :, 0, 0] = [0.1, 0.3, 0.3, 0.3]  # uniform over K=3: normalised by log 3 -> 1
    p[1, :, 0, 0] = [0.4, 0.3, 0.3, 0.0]  # uniform over two of three: log 2 / log 3
    np.testing.assert_allclose(label_flips.flip_risk(p, axis=1)[:, 0, 0], [1.0, math.log(2) / math.log(3)], atol=1e-12)


@pytest.mark.parametrize("proba,match", [
    (np.full((2, 3, 3), 0.5), "at least 2 foreground"),
    (np.full((3, 2, 2), 0.5), "sum to 1"),
    (np.stack([np.full((2, 2), -0.5), np.full((2, 2), 1.0), np.full((2, 2), 0.5)]), r"\[0, 1\]"),
    (np.full((3, 2, 2), np.nan), "NaN"),
])
def test_flip_risk_bad_inputs(proba, match):
    with pytest.raises(ValueError, match=match):
        label_flips.flip_risk(proba)


def test_image_summary_on_a_flipped_image():
    truth = np.zeros((4, 4), np.uint8)
    truth[:2, :2] = 1
    proba = np.zeros((3, 4, 4))
    proba[0] = 1.0
    proba[:, :2, :2] = np.array([0.1, 0.3, 0.6])[:, None, None]   # right region, wrong class (2)
    s = label_flips.image_summary(truth, proba)
    assert (s["flipped"], s["correct"], s["missed"], s["spurious"]) == (4, 0, 0, 0)
    assert s["flip_rate"] == 1.0 and s["no_flip"] == 0.0
    assert s["dice_fg"] == 1.0 and s["dice_classes"] == 0.0    # foreground Dice is blind to the flip
    q = np.array([1 / 3, 2 / 3])
    assert s["flip_risk"] == pytest.approx(-(q * np.log(q)).sum() / math.log(2))
    with pytest.raises(ValueError, match="only 3 classes"):
        label_flips.image_summary(np.full((4, 4), 3, np.uint8), proba)


# --------------------------------------------------------------------------------------- top-decile share
def test_top_share_constructed_case():
    # 20 pixels; the 2 riskiest (top 10 %) hold 2 of the 4 flips
    score = np.arange(20, dtype=float)[::-1]          # pixel 0 is the riskiest
    flipped = np.zeros(20)
    flipped[[0, 1, 10, 15]] = 1
    assert label_flips.top_share(score, flipped, 0.1) == pytest.approx(0.5)
    assert label_flips.top_share(score, flipped, 0.25) == pytest.approx(0.5)      # top 5 = pixels 0..4
    assert label_flips.top_share(-score, flipped, 0.1) == pytest.approx(0.0)      # the wrong ranking
    assert label_flips.top_share(score, flipped, 1.0) == pytest.approx(1.0)


def test_top_share_splits_ties_fractionally_and_is_order_free():
    score = np.array([1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0])
    mass = np.array([3.0, 0, 0, 1, 0, 0, 0, 0, 0, 0])
    # top 20 % = 2 units out of a 4-way tie: half of the tie's mass 4 -> 2 of total 4
    assert label_flips.top_share(score, mass, 0.2) == pytest.approx(0.5)
    perm = np.random.default_rng(1).permutation(10)
    assert label_flips.top_share(score[perm], mass[perm], 0.2) == pytest.approx(0.5)
    assert math.isnan(label_flips.top_share(score, np.zeros(10), 0.1))
    with pytest.raises(ValueError, match="q must lie"):
        label_flips.top_share(score, mass, 0.0)
    with pytest.raises(ValueError, match="one of each"):
        label_flips.top_share(score, mass[:5])
    with pytest.raises(ValueError, match="non-negative"):
        label_flips.top_share(score, -mass)


def test_group_decomposition_pools_pixels():
    m = pd.DataFrame({"gt_foreground": [10, 30], "correct": [10, 0], "flipped": [0, 30], "missed": [0, 0],
                      "flip_rate": [0.0, 1.0], "flip_risk": [0.1, 0.9], "dice_fg": [1.0, 1.0],
                      "dice_classes": [1.0, 0.0]})
    g = label_flips.group_decomposition(m, ["a", "a"])
    assert g["flipped"].iat[0] == pytest.approx(0.75) and g["mean_flip_rate"].iat[0] == pytest.approx(0.5)
    assert g[["correct", "flipped", "missed"]].sum(axis=1).iat[0] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="one label per image"):
        label_flips.group_decomposition(m, ["a"])


def test_flip_rate_as_performance_finds_a_planted_flip_subgroup():
    """A subgroup invisible to foreground Dice (right regions) but flipped: only no_flip finds it."""
    rng = np.random.default_rng(0)
    n = 200
    X = np.vstack([rng.normal(0, 1, (100, 4)), rng.normal(4, 1, (100, 4))])   # two appearance clusters
    shifted = np.zeros(n, bool)
    shifted[rng.choice(n, 30, replace=False)] = True                          # spread over both clusters
    m = pd.DataFrame({"dice_fg": rng.uniform(0.9, 0.98, n),
                      "no_flip": np.where(shifted, rng.uniform(0.0, 0.3, n), rng.uniform(0.95, 1.0, n))})
    table, fitted = lf.compare_performances(X, m, shifted, ("dice_fg", "no_flip"), seeds=(0, 1), n_slices=4,
                                            reduce=None)
    rates = table.groupby("performance")["success"].mean()
    assert rates["no_flip"] == 1.0 and rates["dice_fg"] == 0.0
    sf, report = fitted[("no_flip", 0)]
    assert report.table["purity"].max() > 0.9
    with pytest.raises(ValueError, match="one per image"):
        lf.compare_performances(X[:10], m, shifted, reduce=None)


# ----------------------------------------------------------------------------------------------- phantom
def test_twin_cells_deterministic_and_classes_differ_only_inside_cells():
    a = twin_cells.twin_cells(64, 3, cls=1, tone="dark")
    b = twin_cells.twin_cells(64, 3, cls=1, tone="dark")
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    img1, lab1 = a
    img2, lab2 = twin_cells.twin_cells(64, 3, cls=2, tone="dark")
    assert set(np.unique(lab1)) == {0, 1} and set(np.unique(lab2)) == {0, 2}
    assert np.array_equal(lab1 > 0, lab2 > 0)          # same seed: same cells, only the class differs
    diff = np.abs(img1.astype(int) - img2.astype(int)).max(axis=2) > 0
    assert not diff[lab1 == 0].any() and diff[lab1 > 0].any()   # the cue lives inside the cells only
    light, _ = twin_cells.twin_cells(64, 3, cls=1, tone="light")
    assert light[lab1 == 0].mean() > img1[lab1 == 0].mean() + 60   # the context cue: background tone
    with pytest.raises(ValueError, match="cls"):
        twin_cells.twin_cells(64, 0, cls=3, tone="dark")
    with pytest.raises(ValueError, match="tone"):
        twin_cells.twin_cells(64, 0, cls=1, tone="grey")


def test_dataset_correlation_as_specified(tmp_path):
    ds = twin_cells.generate_labelflip_dataset(tmp_path / "t", n=100, size=32, train_alignment=0.9, test_shift=0.25,
                                       progress=False)
    df = ds.df
    assert ds.mask_kind == "multiclass" and ds.meta["n_classes"] == 3
    aligned_tone = np.where(df["cls"] == 1, "dark", "light")
    assert np.array_equal(df["aligned"].to_numpy(), df["tone"].to_numpy() == aligned_tone)
    assert np.array_equal(df["shifted"].to_numpy(), ~df["aligned"].to_numpy())
    assert np.array_equal(df["failure"].to_numpy(), df["shifted"].to_numpy())
    counts = df.groupby("split")["shifted"].agg(["sum", "size"])
    assert counts.loc["train", "size"] == 64 and counts.loc["train", "sum"] == round(0.1 * 64)   # 6
    assert counts.loc["val", "sum"] == 2 and counts.loc["test", "sum"] == 5                      # 16*0.1, 20*0.25
    assert set(df["cls"]) == {1, 2}
    m = ds.mask(0)
    assert m.dtype == np.uint8 and set(np.unique(m)) <= {0, int(df["cls"].iat[0])}
    again = twin_cells.generate_labelflip_dataset(tmp_path / "t", n=100, size=32, train_alignment=0.9, test_shift=0.25,
                                          progress=False)
    assert again.df.equals(df)
    with pytest.raises(ValueError, match="test_shift"):
        twin_cells.generate_labelflip_dataset(tmp_path / "u", n=100, size=32, test_shift=1.5)


# --------------------------------------------------------------------------------------------- training
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from seg4seg_utils.model.train import train_preset

    root = tmp_path_factory.mktemp("lf")
    ds = twin_cells.generate_labelflip_dataset(root / "twins", n=40, size=32, progress=False)
    cfg = train_preset("smoke", epochs=1, max_train_samples=16)
    return ds, multiclass.train_multiclass(ds, cfg, root / "runs", progress=False), cfg, root


def test_multiclass_training_smoke(tiny_run):
    ds, run, cfg, root = tiny_run
    assert run.done and "-mc3-" in run.root.name
    m = run.metrics()
    test = ds.split("test")
    assert len(m) == len(test)
    assert np.array_equal(m["correct"] + m["flipped"] + m["missed"], m["gt_foreground"])
    assert m[["flip_rate", "flip_risk", "dice_fg", "dice_classes", "no_flip"]].apply(np.isfinite).all().all()
    sid = str(test.df["id"].iat[0])
    proba = multiclass.load_probabilities(run, sid)
    assert proba.shape == (3, 32, 32)
    np.testing.assert_allclose(proba.sum(axis=0), 1.0, atol=2e-3)      # float16 storage
    pred = read_mask(run.root / m.set_index("id").at[sid, "prediction"], "multiclass")
    assert np.array_equal(pred, proba.argmax(axis=0))
    pix = multiclass.pixel_flips(run, ds)
    assert pix["flipped"].sum() == m["flipped"].sum()
    fig = labelflip_plots.risk_maps(ds, run, list(m["id"][:2]))
    assert len(fig.axes) == 9                                                    # 2 rows x 4 panels + colour bar
    groups = label_flips.group_decomposition(m, m["shifted"].map({True: "shifted", False: "aligned"}))
    assert len(labelflip_plots.decomposition_bars(groups).axes) == 1
    model = multiclass.load_multiclass_model(run)
    assert model.segmentation_head[0].out_channels == 3
    from seg4seg_utils.model.train import Run

    assert Run.from_folder(run.root).load_model().segmentation_head[0].out_channels == 3   # the run knows its task
    from conftest import counting_embedder
    from seg4seg_utils.discovery.embed import embed_dataset

    # x0*M_pred reads the run's predicted label maps (any non-zero class is foreground)
    emb = embed_dataset(ds, counting_embedder()(), "x0*M_pred", run=run, split="test", cache_dir=None, progress=False)
    assert emb.X.shape == (len(test), 6)
    stamp = (run.root / "done.json").stat().st_mtime_ns
    assert multiclass.train_multiclass(ds, cfg, root / "runs", progress=False).root == run.root      # reused, not retrained
    assert (run.root / "done.json").stat().st_mtime_ns == stamp


def test_multiclass_training_refuses_binary_data(tmp_path, tiny_run):
    from seg4seg_utils.model.train import train_preset

    ds = tiny_run[0]
    binary = SampleTable(ds.root, ds.df, {**ds.meta, "mask_kind": "binary"})
    with pytest.raises(DatasetError, match="multiclass"):
        multiclass.train_multiclass(binary, train_preset("smoke"), tmp_path)
    with pytest.raises(ValueError, match="n_classes must be >= 3"):
        multiclass.train_multiclass(ds, train_preset("smoke"), tmp_path, n_classes=2)


def test_binary_run_hashes_are_pinned():
    """Binary runs keep their folders: the main job's models must still be found (the label-flip work adds
    nothing to TrainConfig). smoke and paper are pinned from the code at TrainConfig.threads' introduction (which
    deliberately moved every hash: the thread count changes the weights); they survived the later fields
    lr_schedule and precision. cpu is pinned from the one-cycle schedule's introduction (which moved its hashes
    on purpose), once per precision its "auto" can mean, including the main job's case B 5 % model."""
    from seg4seg_utils.model.train import run_root, train_preset

    table = SampleTable(Path("/nowhere/pinned"), pd.DataFrame(), {"config_hash": "0123456789abcdef"})
    assert run_root(table, train_preset("cpu", precision="fp32"), Path("runs"), None)[0].name == "resnet18-b6ccf7bb22"
    assert run_root(table, train_preset("cpu", precision="bf16"), Path("runs"), None)[0].name == "resnet18-82684c6e2c"
    assert run_root(table, train_preset("smoke"), Path("runs"), None)[0].name == "resnet18-e3a9c0b120"
    assert run_root(table, train_preset("paper"), Path("runs"), None)[0].name == "resnet34-d8d484fba3"
    case_b = SampleTable(Path("/x/B-p05-seed0"), pd.DataFrame(), {"config_hash": "d8784cd925910ba1"})
    assert run_root(case_b, train_preset("cpu", precision="bf16"), Path("runs"), None)[0].name == "resnet18-62089bc958"
    assert run_root(case_b, train_preset("cpu", precision="fp32"), Path("runs"), None)[0].name == "resnet18-47e9851712"


def test_multiclass_run_folders_survive_the_single_training_loop():
    """The multi-class task hashes as the old multi-class trainer did (pinned from that code), so its runs are
    found again; and a run knows its task from config.json."""
    from seg4seg_utils.model.multiclass import MulticlassTask
    from seg4seg_utils.model.train import BinaryTask, Run, run_root, train_preset

    table = SampleTable(Path("/nowhere/twins"), pd.DataFrame(), {"config_hash": "0123456789abcdef"})
    assert run_root(table, train_preset("smoke"), Path("runs"), None, MulticlassTask(3))[0].name == "resnet18-mc3-5a640f78ad"
    assert run_root(table, train_preset("cpu", precision="fp32"), Path("runs"), None, MulticlassTask(3))[0].name == \
        "resnet18-mc3-aec27a151f"
    assert run_root(table, train_preset("cpu"), Path("runs"), None, BinaryTask())[0].name == \
        run_root(table, train_preset("cpu"), Path("runs"), None)[0].name
    assert Run(Path("x"), train_preset("smoke")).task == "binary"
    assert Run(Path("x"), train_preset("smoke"), n_classes=3).task == "multiclass"


def test_multiclass_runs_resume_like_binary_ones(tmp_path):
    """One loop, so a multi-class run interrupted after an epoch resumes to the same weights as an
    uninterrupted one (the old multi-class trainer restarted from scratch)."""
    import torch

    from seg4seg_utils.model.multiclass import MulticlassTask
    from seg4seg_utils.model.train import train, train_preset

    ds = twin_cells.generate_labelflip_dataset(tmp_path / "twins", n=40, size=32, progress=False)
    cfg = train_preset("smoke", epochs=2, max_train_samples=16)
    whole = train(ds, cfg, tmp_path / "a", progress=False, task=MulticlassTask(3))
    cut = train(ds, cfg, tmp_path / "b", progress=False, task=MulticlassTask(3), stop_after_epoch=1)
    assert not cut.done
    resumed = train(ds, cfg, tmp_path / "b", progress=False, task=MulticlassTask(3))
    a = torch.load(whole.root / "last.pt", weights_only=False)["model"]
    b = torch.load(resumed.root / "last.pt", weights_only=False)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


# ----------------------------------------------------------------------------- the study's written tables
def _flip_metrics(n=80, seed=0):
    """Per-image label-flip metrics with a planted shifted group whose cell A flips (what run.metrics() returns)."""
    rng = np.random.default_rng(seed)
    shifted = np.isin(np.arange(n) % 8, (0, 1))  # a quarter, both classes
    cls = np.where(np.arange(n) % 2 == 0, 1, 2)
    gt = rng.integers(200, 400, n)
    flipped = np.where(shifted & (cls == 1), (gt * 0.6).astype(int), rng.integers(0, 3, n))
    missed = rng.integers(0, 10, n)
    correct = gt - flipped - missed
    return pd.DataFrame({"id": [f"t{i:03d}" for i in range(n)], "shifted": shifted, "cls": cls, "gt_foreground": gt,
                         "correct": correct, "flipped": flipped, "missed": missed, "flip_rate": flipped / gt,
                         "flip_risk": np.clip(flipped / gt + rng.uniform(0, 0.2, n), 0, 1),
                         "dice_fg": rng.uniform(0.9, 1.0, n), "dice_classes": 1 - flipped / gt - rng.uniform(0, 0.05, n)})


def test_the_study_writes_its_tables_and_rewrites_them_unchanged(tmp_path):
    """decomposition_by_group, flip_concentration, detection_by_performance and flip_rate_per_slice: written by
    the study into the results folder (the notebook only shows them); a rerun leaves every file byte for byte."""
    from scipy.stats import spearmanr
    from sklearn.metrics import roc_auc_score

    m = _flip_metrics()
    rng = np.random.default_rng(1)
    pixels = pd.DataFrame({"risk": rng.uniform(0, 1, 500)})
    pixels["flipped"] = pixels["risk"] + rng.normal(0, 0.2, 500) > 0.8
    X = np.vstack([rng.normal(0, 1, (40, 4)), rng.normal(4, 1, (40, 4))])
    m["no_flip"] = 1 - m["flip_rate"]
    out = tmp_path / "results" / "smoke" / "labelflip"

    def run_all():
        by_shift, by_group = lf.decomposition_by_group(m, out)
        conc = lf.flip_risk_quality(pixels, m, out, q=0.1)
        detection, rates, fitted = lf.detection_by_performance(X, m, m["shifted"], out, ("dice_fg", "no_flip"),
                                                               seeds=(0, 1), n_slices=4, reduce=None)
        sf, report = fitted[("no_flip", 0)]
        per_slice = lf.flip_rate_per_slice(m, sf.labels_, report, out)
        return by_shift, by_group, conc, detection, rates, per_slice

    by_shift, by_group, conc, detection, rates, per_slice = run_all()
    expected = {f for files in lf.RESULT_FILES.values() for f in files}
    assert {p.name for p in out.iterdir()} == expected == {
        "decomposition_by_group.csv", "flip_concentration.csv", "detection_by_performance.csv",
        "detection_by_performance.md", "flip_rate_per_slice.csv", "flip_rate_per_slice.md"}
    # the tables are the ones the building blocks give
    assert list(by_shift["group"]) == ["aligned", "shifted"] and set(by_group["group"]) == {
        "aligned, A", "aligned, B", "shifted, A", "shifted, B"}
    pd.testing.assert_frame_equal(by_shift, label_flips.group_decomposition(
        m, np.where(m["shifted"], "shifted", "aligned"), name="group"))
    pd.testing.assert_frame_equal(pd.read_csv(out / "decomposition_by_group.csv"), by_shift, check_dtype=False)
    assert by_group.set_index("group").loc["shifted, A", "flipped"] > 0.5
    assert list(conc) == ["q", "pixel_share", "pixel_lift", "image_share", "image_lift", "n_pixels",
                          "n_flipped_pixels", "n_images", "spearman_image", "pixel_auroc"]
    assert conc["spearman_image"] == pytest.approx(spearmanr(m["flip_risk"], m["flip_rate"]).statistic)
    assert conc["pixel_auroc"] == pytest.approx(roc_auc_score(pixels["flipped"], pixels["risk"]))
    written = pd.read_csv(out / "flip_concentration.csv", index_col=0)["value"]
    assert written.to_dict() == pytest.approx({k: float(v) for k, v in conc.items()})
    assert len(detection) == 4 and list(rates.index) == ["dice_fg", "no_flip"] and (rates["n_seeds"] == 2).all()
    assert rates["detection_rate"].to_dict() == detection.groupby("performance")["success"].mean().to_dict()
    assert (out / "detection_by_performance.md").read_text() == rates.to_markdown(floatfmt=".2f") + "\n"
    assert per_slice["n_images"].sum() == len(m) and per_slice["mean_flip_rate"].is_monotonic_decreasing
    assert per_slice["purity_shifted"].notna().all()
    assert (out / "flip_rate_per_slice.md").read_text() == per_slice.round(3).to_markdown(index=False) + "\n"
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    run_all()
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    # no folder: the tables only
    lf.decomposition_by_group(m, None)
    assert lf.flip_risk_quality(pixels.assign(flipped=False), m, None)["pixel_auroc"] != \
        lf.flip_risk_quality(pixels.assign(flipped=False), m, None)["pixel_auroc"]  # NaN: nothing flipped


def test_the_main_job_trains_the_twin_cells_model_chapter_11_reads():
    """make run trains chapter 11's model ahead (pipeline.book_models): only with the chapter's own parameters
    does the chapter find it instead of training a second one beside other chapters."""
    import ast

    import papermill as pm

    from seg4seg_utils.report.book import NOTEBOOK_DIR
    from seg4seg_utils.studies.labelflip import BOOK_PHANTOM

    declared = pm.inspect_notebook(str(NOTEBOOK_DIR / "11_label_flips.ipynb"))
    chapter = {name: ast.literal_eval(declared[name.upper()]["default"]) for name in BOOK_PHANTOM}
    assert chapter == BOOK_PHANTOM


def test_the_twins_model_trains_with_its_preset_objects_recipe(tmp_path):
    """The study's recipe is the workspace's (its preset object's), at the study's size: for the named presets
    that is the recipe the named preset always gave (so the book's twin-cells model keeps its run folder); a
    preset built with another recipe trains with that one, not with its name's."""
    from dataclasses import replace

    from seg4seg_utils.config import get_preset
    from seg4seg_utils.model.train import train_preset
    from seg4seg_utils.studies.workspace import Workspace

    for name in ("smoke", "cpu", "paper"):
        ws = Workspace(name, data_dir=tmp_path)
        assert lf.twins_config(ws, 3) == train_preset(name, seed=3, **ws.preset.labelflip.train_overrides())
    cpu = get_preset("cpu")
    wider = replace(cpu, train=tuple((k, (32, 32, 32, 32, 32) if k == "decoder_channels" else v) for k, v in cpu.train))
    cfg = lf.twins_config(Workspace(wider, data_dir=tmp_path), 0)
    assert cfg.decoder_channels == (32, 32, 32, 32, 32) != train_preset("cpu").decoder_channels
    assert cfg.seed == 0 and cfg.image_size == train_preset("cpu").image_size
