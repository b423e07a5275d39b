"""``seg4seg audit`` end to end: folders in, report and tables out, a planted failure found and named, the output
folder guarded, the inputs untouched, and the report's HTML structure."""
from __future__ import annotations

import hashlib
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from skimage.draw import ellipse

from seg4seg_utils.cli import main
from seg4seg_utils.data.records import DatasetError
from seg4seg_utils.discovery.embed import EfficientNetLite0Embedder
from seg4seg_utils.studies.audit import audit

N, N_DARK, SIZE = 60, 12, 64


def make_folders(root: Path, n: int = N, n_dark: int = N_DARK, seed: int = 0) -> dict[str, Path]:
    """Lesion-like images; the last ``n_dark`` are dark and blurred and their predictions miss half the lesion."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    paths = {k: root / k for k in ("images", "masks", "predictions")}
    for p in paths.values():
        p.mkdir(parents=True)
    for i in range(n):
        dark = i >= n - n_dark
        mask = np.zeros((SIZE, SIZE), np.uint8)
        rr, cc = ellipse(SIZE / 2 + rng.uniform(-6, 6), SIZE / 2 + rng.uniform(-6, 6), rng.uniform(12, 20),
                         rng.uniform(12, 20), (SIZE, SIZE), rotation=rng.uniform(0, np.pi))
        mask[rr, cc] = 1
        skin = np.array([200, 160, 140]) + rng.normal(0, 8, 3)
        img = np.ones((SIZE, SIZE, 3)) * skin + rng.normal(0, 6, (SIZE, SIZE, 3))
        img[mask > 0] *= 0.45
        pred = mask.copy()
        if dark:
            img = gaussian_filter(img * 0.4, sigma=(2, 2, 0))
            pred[: int(SIZE / 2 + rng.uniform(-3, 3))] = 0  # the model misses the upper half of the lesion
        else:
            pred = np.roll(pred, rng.integers(-1, 2), axis=1)
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(paths["images"] / f"img{i:03d}.png")
        Image.fromarray(mask * 255).save(paths["masks"] / f"img{i:03d}.png")
        Image.fromarray(pred * 255).save(paths["predictions"] / f"img{i:03d}.png")
    return paths


def tree_digest(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        h.update(str(p.relative_to(folder)).encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def embedder():
    return EfficientNetLite0Embedder()


@pytest.fixture(scope="module")
def audited(tmp_path_factory, embedder):
    root = tmp_path_factory.mktemp("audit")
    p = make_folders(root / "data")
    before = tree_digest(root / "data")
    result = audit(p["images"], p["masks"], p["predictions"], root / "out", n_slices="auto", embedder=embedder,
                   progress=False)
    return root, p, before, result


def test_tables_and_report_are_written(audited):
    root, _, _, result = audited
    out = root / "out"
    for name in ("report.html", "per_image.csv", "slices.csv", "slice_probabilities.csv", "descriptor_contrast.csv",
                 "n_slices_bic.csv", "timing.csv", "audit.json"):
        assert (out / name).is_file(), name
    per = pd.read_csv(out / "per_image.csv")
    assert len(per) == N and per["id"].is_unique
    assert {"dice", "iou", "ppv", "npv", "brightness", "sharpness", "slice", "slice_probability"} <= set(per.columns)
    assert pd.read_csv(out / "slices.csv")["size"].sum() == N
    probs = pd.read_csv(out / "slice_probabilities.csv").drop(columns="id").to_numpy()
    assert np.allclose(probs.sum(axis=1), 1)
    bic = pd.read_csv(out / "n_slices_bic.csv")
    assert bic["chosen"].sum() == 1 and int(bic.loc[bic["chosen"], "n_slices"].iat[0]) == result.n_slices
    assert bic["used"].sum() == 1 and (bic["used"] == bic["chosen"]).all()  # auto: the BIC minimum is used
    # slices: eligible first, worst mean first among them (the order the report and the verdict follow)
    slices = pd.read_csv(out / "slices.csv")
    eligible = slices[slices["eligible"]]
    assert slices["eligible"].iat[0] and eligible["mean_perf"].is_monotonic_increasing
    # the per-image scores are the metrics module's own, on the files as the user gave them
    from seg4seg_utils.model.metrics import segmentation_metrics

    data = root / "data"
    for sid in ("img000", f"img{N - 1:03d}"):
        truth = np.asarray(Image.open(data / "masks" / f"{sid}.png")) > 0
        pred = np.asarray(Image.open(data / "predictions" / f"{sid}.png")) > 0
        expected = segmentation_metrics(pred[None], truth[None])
        row = per.set_index("id").loc[sid]
        assert [row[m] for m in ("dice", "iou", "ppv", "npv")] == [float(expected[m][0]) for m in
                                                                  ("dice", "iou", "ppv", "npv")]


def test_planted_failure_is_found_and_named(audited):
    """The dark, blurred images with half-missed lesions form a problematic slice described as darker/blurrier."""
    _, _, _, result = audited
    assert result.problematic, result.verdicts
    worst = result.problematic[0]
    members = result.per_image.loc[result.per_image["slice"] == worst, "id"]
    dark = {f"img{i:03d}" for i in range(N - N_DARK, N)}
    assert members.isin(dark).mean() > 0.8
    text = result.slices.set_index("slice").loc[worst, "description"]
    assert "darker" in text or "blurrier" in text, text
    assert any(f"Slice {worst} " in v for v in result.verdicts)


def test_inputs_untouched_and_nothing_written_outside_out(audited):
    root, _, before, _ = audited
    assert tree_digest(root / "data") == before
    assert sorted(p.name for p in root.iterdir()) == ["data", "out"]


class _Structure(HTMLParser):
    def __init__(self):
        super().__init__()
        self.sections, self.imgs, self.galleries, self.tables, self.external = [], [], [], [], []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "section":
            self.sections.append(a.get("id"))
        if tag == "img":
            self.imgs.append(a.get("src", ""))
        if tag == "div" and "s4s-gallery" in (a.get("class") or ""):
            self.galleries.append(a.get("data-slice"))
        if tag == "table":
            self.tables.append(a.get("class"))
        for key in ("src", "href"):
            if re.match(r"(https?:)?//", a.get(key) or ""):
                self.external.append(a[key])


def test_report_structure(audited):
    root, _, _, result = audited
    html = (root / "out" / "report.html").read_text()
    s = _Structure()
    s.feed(html)
    assert s.sections == ["verdict", "slices", "map", "galleries", "n-slices", "method"]
    assert s.imgs and all(src.startswith("data:image/png;base64,") for src in s.imgs)
    assert not s.external, "the report must open offline"
    assert "s4s-audit-slices" in s.tables
    assert [int(g) for g in s.galleries] == result.problematic[:4]
    assert result.embedder_name in html and "EfficientNet-Lite0" in html


def test_rerun_reuses_the_cache(audited, embedder):
    root, p, _, result = audited
    dataset_json = root / "out" / "work" / "dataset" / "dataset.json"
    stamp = dataset_json.stat().st_mtime_ns
    again = audit(p["images"], p["masks"], p["predictions"], root / "out", n_slices=result.n_slices,
                  embedder=embedder, progress=False)
    assert dataset_json.stat().st_mtime_ns == stamp
    assert again.timings["embedding"] < result.timings["embedding"]
    assert (again.per_image["dice"].to_numpy() == result.per_image["dice"].to_numpy()).all()


def test_cli_audit_with_metadata(tmp_path, monkeypatch, embedder):
    p = make_folders(tmp_path / "data", n=40, n_dark=8)
    ids = [f"img{i:03d}" for i in range(40)]
    pd.DataFrame({"id": ids, "site": ["north" if i < 32 else "south" for i in range(40)]}).to_csv(
        tmp_path / "meta.csv", index=False)
    import seg4seg_utils.discovery.embed as embed_mod

    monkeypatch.setattr(embed_mod, "default_embedder", lambda clip_weights=None: embedder)
    code = main(["audit", "--images", str(p["images"]), "--masks", str(p["masks"]), "--predictions",
                 str(p["predictions"]), "--metadata", str(tmp_path / "meta.csv"), "--out", str(tmp_path / "out"),
                 "--n-slices", "4", "--no-progress"])
    assert code == 0
    per = pd.read_csv(tmp_path / "out" / "per_image.csv")
    assert "site" in per.columns
    assert "<th>metadata</th>" in (tmp_path / "out" / "report.html").read_text()


def test_out_folder_is_guarded(tmp_path, embedder, capsys):
    p = make_folders(tmp_path / "data", n=24, n_dark=4)
    foreign = tmp_path / "busy"
    foreign.mkdir()
    (foreign / "thesis.docx").write_text("precious")
    code = main(["audit", "--images", str(p["images"]), "--masks", str(p["masks"]), "--predictions",
                 str(p["predictions"]), "--out", str(foreign), "--no-progress"])
    assert code == 2 and "not an audit folder" in capsys.readouterr().err
    assert (foreign / "thesis.docx").read_text() == "precious"
    audit(p["images"], p["masks"], p["predictions"], tmp_path / "out", n_slices=3, embedder=embedder, progress=False)
    q = make_folders(tmp_path / "other", n=24, n_dark=4)
    with pytest.raises(DatasetError, match="audit of other folders"):
        audit(q["images"], q["masks"], q["predictions"], tmp_path / "out", n_slices=3, embedder=embedder,
              progress=False)


def test_too_few_images_and_too_many_slices(tmp_path, embedder):
    p = make_folders(tmp_path / "small", n=10, n_dark=2)
    with pytest.raises(DatasetError, match="at least 20"):
        audit(p["images"], p["masks"], p["predictions"], tmp_path / "o1", embedder=embedder, progress=False)
    q = make_folders(tmp_path / "some", n=24, n_dark=4)
    with pytest.raises(DatasetError, match="two images per slice"):
        audit(q["images"], q["masks"], q["predictions"], tmp_path / "o2", n_slices=13, embedder=embedder,
              progress=False)
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()


def test_unknown_performance_score(tmp_path, embedder):
    p = make_folders(tmp_path / "d", n=24, n_dark=4)
    with pytest.raises(ValueError, match="soft_dice"):
        audit(p["images"], p["masks"], p["predictions"], tmp_path / "o", n_slices=3, performance=("soft_dice",),
              embedder=embedder, progress=False)


def test_metadata_names_but_never_finds_slices(tmp_path, embedder):
    """The honesty rule for the audit: metadata (here the hidden answer itself) only names slices. Shuffling it
    leaves slices, probabilities and descriptor names identical; only the metadata contrast follows it."""
    p = make_folders(tmp_path / "d", n=40, n_dark=8)
    ids = [f"img{i:03d}" for i in range(40)]
    dark = np.array([i >= 32 for i in range(40)])
    results = []
    for name, flags in (("true", dark), ("shuffled", np.random.default_rng(1).permutation(dark))):
        meta = pd.DataFrame({"id": ids, "dark": flags})
        results.append(audit(p["images"], p["masks"], p["predictions"], tmp_path / name, metadata=meta, n_slices=4,
                             embedder=embedder, progress=False))
    a, b = results
    assert (a.per_image["slice"] == b.per_image["slice"]).all()
    assert np.array_equal(a.slicer.proba_, b.slicer.proba_)
    pd.testing.assert_frame_equal(a.slices, b.slices)
    assert not a.per_image["dark"].equals(b.per_image["dark"])  # the metadata did differ


def test_workers_never_change_the_per_image_table(tmp_path):
    from seg4seg_utils.data.folders import pair_folders
    from seg4seg_utils.studies.audit import score_and_describe

    p = make_folders(tmp_path / "d", n=24, n_dark=4)
    pairs = pair_folders(p["images"], p["masks"], p["predictions"])
    tables = [score_and_describe(pairs, tmp_path / f"ds{j}", {"jobs": j}, n_jobs=j, chunk=5, progress=False)[1]
              for j in (1, 2)]
    pd.testing.assert_frame_equal(tables[0], tables[1])


def test_bad_file_deep_in_the_folder_is_named(tmp_path, embedder):
    """A size mismatch found by a worker reaches the user as the same clear error (id, files, both sizes)."""
    p = make_folders(tmp_path / "d", n=24, n_dark=4)
    Image.fromarray(np.zeros((40, SIZE), np.uint8)).save(p["predictions"] / "img017.png")
    with pytest.raises(DatasetError, match=r"img017.*40"):
        audit(p["images"], p["masks"], p["predictions"], tmp_path / "o", n_slices=3, embedder=embedder, progress=False)
    assert not (tmp_path / "o" / "work" / "dataset").exists()


def test_problematic_needs_a_lower_mean_not_only_lower_ranks():
    """Typical images a little below the median rank lower than a rest that holds the real failures, yet their
    mean is higher: only the real failures are problematic."""
    from seg4seg_utils.discovery.protocol import slice_table
    from seg4seg_utils.studies.audit import problematic_slices

    labels = np.repeat([0, 1, 2], [30, 60, 10])
    scores = np.concatenate([np.full(30, 0.95), np.full(60, 0.99), np.full(10, 0.10)])
    scores = scores + np.random.default_rng(0).normal(0, 0.001, 100)
    t = problematic_slices(labels, scores, slice_table(labels, scores, np.zeros(100, bool)))
    assert t.loc[0, "p_value"] < 0.01 and t.loc[0, "gap"] < 0 and not t.loc[0, "problematic"]
    assert t.loc[2, "problematic"] and not t.loc[1, "problematic"]


def test_probability_predictions(tmp_path, embedder):
    """Soft outputs (.npy probabilities) are thresholded for the overlap metrics, add soft Dice (usable as the
    performance score) and the model's uncertainty, which names slices in words."""
    from scipy.ndimage import gaussian_filter

    p = make_folders(tmp_path / "d", n=30, n_dark=6)
    for f in sorted(p["predictions"].glob("*.png")):
        hard = np.asarray(Image.open(f)) > 0
        dark = int(f.stem[3:]) >= 24
        prob = gaussian_filter(hard.astype(float), 4 if dark else 1)  # the failing images: blurred, unsure edges
        np.save(p["predictions"] / f"{f.stem}.npy", prob.astype(np.float32))
        f.unlink()
    r = audit(p["images"], p["masks"], p["predictions"], tmp_path / "o", n_slices=3, performance=("soft_dice",),
              embedder=embedder, progress=False)
    assert {"soft_dice", "boundary_uncertainty", "mean_uncertainty", "dice"} <= set(r.per_image.columns)
    assert r.performance == ("soft_dice",)
    assert r.per_image["dice"].between(0, 1).all() and (r.per_image["soft_dice"] <= r.per_image["dice"] + 0.05).all()
    assert "boundary_uncertainty" in set(r.contrast["descriptor"])
    unsure = r.per_image.groupby(r.per_image["id"].str[3:].astype(int) >= 24)["boundary_uncertainty"].mean()
    assert unsure[True] > unsure[False]


def test_a_tiny_gap_is_not_problematic_however_significant():
    """With thousands of images a 0.002 Dice gap is significant by ranks, but it names no failure."""
    from seg4seg_utils.discovery.protocol import slice_table
    from seg4seg_utils.studies.audit import problematic_slices

    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], [3000, 3000])
    scores = np.concatenate([rng.normal(0.978, 0.01, 3000), rng.normal(0.980, 0.01, 3000)]).clip(0, 1)
    t = problematic_slices(labels, scores, slice_table(labels, scores, np.zeros(len(scores), bool)))
    assert t.loc[0, "bottom"] and t.loc[0, "p_value"] < 0.01 and t.loc[0, "gap"] > 0
    assert 0 < t.loc[0, "effect"] < 0.5 and not t.loc[0, "problematic"]
