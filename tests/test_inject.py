"""Injections A-D: exact prevalence per split, determinism, each manipulation's effect, source untouched."""
import hashlib

import numpy as np
import pytest

from seg4seg_utils.data.inject import (
    CASES,
    CaliperStyle,
    CropParams,
    PolygonParams,
    QualityParams,
    crop_and_resize,
    degrade_quality,
    draw_calipers,
    ellipse_from_mask,
    inject,
    injected_name,
    polygonize_mask,
    select_failure_samples,
)
from seg4seg_utils.data.records import SPLITS, build_dataset, read_dataset
from seg4seg_utils.model.metrics import segmentation_metrics


def ellipse_mask(h, w, cy, cx, a, b, angle=0.0):
    yy, xx = np.mgrid[:h, :w]
    x, y = xx - cx, yy - cy
    c, s = np.cos(angle), np.sin(angle)
    u, v = x * c + y * s, -x * s + y * c
    return (u / a) ** 2 + (v / b) ** 2 <= 1


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """40 RGB samples (26 train / 6 val / 8 test) with elliptical masks of varying size and position."""
    root = tmp_path_factory.mktemp("src") / "clean"
    rng = np.random.default_rng(0)

    def build(w):
        for i in range(40):
            split = "train" if i < 26 else "val" if i < 32 else "test"
            mask = ellipse_mask(48, 48, rng.uniform(18, 30), rng.uniform(18, 30), rng.uniform(6, 14),
                                rng.uniform(5, 10), rng.uniform(0, np.pi))
            img = np.stack([np.where(mask, 60, 200) + rng.integers(0, 30, (48, 48))] * 3, -1).astype(np.uint8)
            w.add(f"s{i:02d}", split, img, mask, "unit", natural=i % 3)
    return build_dataset(root, {"unit": 1}, build, meta={"modality": "unit"})


def folder_digest(root):
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(p.name.encode() + p.read_bytes())
    return h.hexdigest()


@pytest.mark.parametrize("prevalence", [0.05, 0.1, 0.2])
def test_selection_exact_per_split(prevalence):
    splits = np.array(["train"] * 640 + ["val"] * 160 + ["test"] * 200)
    chosen = select_failure_samples(splits, prevalence, seed=1, case="B")
    for s, n in (("train", 640), ("val", 160), ("test", 200)):
        assert chosen[splits == s].sum() == int(np.floor(prevalence * n + 0.5))
    assert np.array_equal(chosen, select_failure_samples(splits, prevalence, 1, "B"))
    assert not np.array_equal(chosen, select_failure_samples(splits, prevalence, 2, "B"))


def test_selection_rounds_half_up_and_validates():
    splits = np.array(["train"] * 30 + ["val"] * 10 + ["test"] * 50)
    chosen = select_failure_samples(splits, 0.05, 0, "A")  # 1.5 -> 2, 0.5 -> 1, 2.5 -> 3
    assert [chosen[splits == s].sum() for s in SPLITS] == [2, 1, 3]
    with pytest.raises(ValueError, match="prevalence"):
        select_failure_samples(splits, 1.5, 0, "A")


@pytest.mark.parametrize("case", ["A", "B", "C", "D"])
def test_inject_dataset(source, tmp_path, case):
    before = folder_digest(source.root)
    out = tmp_path / injected_name(case, 0.2, 0)
    t = inject(source, case, 0.2, seed=0, out=out, progress=False)
    t = read_dataset(out, validate="full")
    assert folder_digest(source.root) == before  # the source is never modified
    assert len(t) == len(source) and t.df["id"].is_unique  # each sample once: never both versions
    assert "natural" in t.df.columns  # source attributes survive
    spec = CASES[case]
    fail = t.df["failure"].astype(bool).to_numpy()
    for split, n in (("train", 26), ("val", 6), ("test", 8)):
        assert fail[t.df["split"] == split].sum() == int(np.floor(0.2 * n + 0.5))
    attr = t.df[spec.attribute].astype(str).to_numpy()
    assert set(attr[fail]) == {str(spec.failure_value)} and str(spec.failure_value) not in set(attr[~fail])
    # which files changed: exactly the manipulated subgroup, and only the files the case touches
    manipulated = fail if spec.manipulate_failure else ~fail
    new_img = t.df["image"].str.startswith("images/").to_numpy()
    new_mask = t.df["mask"].str.startswith("masks/").to_numpy()
    assert np.array_equal(new_img, manipulated if case in "ABD" else np.zeros_like(fail))
    assert np.array_equal(new_mask, manipulated if case in "BC" else np.zeros_like(fail))
    # deterministic: a second run elsewhere gives identical pixels
    t2 = inject(source, case, 0.2, seed=0, out=tmp_path / "again", progress=False)
    for i in np.flatnonzero(manipulated)[:3]:
        assert np.array_equal(t.image(i), t2.image(i)) and np.array_equal(t.mask(i), t2.mask(i))
    assert t.meta["failure_counts"] == {"train": 5, "val": 1, "test": 2}


def test_inject_seed_changes_selection(source, tmp_path):
    a = inject(source, "D", 0.2, seed=0, out=tmp_path / "a", progress=False)
    b = inject(source, "D", 0.2, seed=1, out=tmp_path / "b", progress=False)
    assert not np.array_equal(a.df["failure"].to_numpy(), b.df["failure"].to_numpy())


def test_inject_rejects_wrong_params(source, tmp_path):
    with pytest.raises(TypeError, match="CropParams"):
        inject(source, "B", 0.1, 0, tmp_path / "x", params=QualityParams())
    with pytest.raises(ValueError, match="unknown case"):
        inject(source, "E", 0.1, 0, tmp_path / "x")


def test_ellipse_from_mask_recovers_axes():
    m = ellipse_mask(200, 200, 90, 110, 60, 30, angle=0.5)
    cy, cx, a, b, ang = ellipse_from_mask(m)
    assert (cy, cx) == pytest.approx((90, 110), abs=0.5)
    assert (a, b) == pytest.approx((60, 30), rel=0.02)
    assert np.cos(2 * (ang - 0.5)) > 0.999  # same axis direction (mod pi)


def test_calipers_follow_the_outline():
    m = ellipse_mask(128, 128, 64, 64, 40, 28, angle=0.3)
    img = np.zeros((128, 128), np.uint8)
    out = draw_calipers(img, m)
    assert img.max() == 0  # not modified in place
    marked = out > 0
    ring = ellipse_mask(128, 128, 64, 64, 46, 34, 0.3) & ~ellipse_mask(128, 128, 64, 64, 34, 22, 0.3)
    assert marked.sum() > 60 and (marked & ring).sum() / marked.sum() > 0.95
    crosses_only = draw_calipers(img, m, CaliperStyle(dotted_trace=False)) > 0
    trace_only = draw_calipers(img, m, CaliperStyle(crosses=False)) > 0
    assert 0 < crosses_only.sum() < marked.sum() and 0 < trace_only.sum() < marked.sum()
    rgb = draw_calipers(np.zeros((128, 128, 3), np.uint8), m)
    assert rgb.shape == (128, 128, 3) and (rgb[..., 0] == rgb[..., 2]).all()


def test_crop_keeps_lesion_and_matches_window():
    rng = np.random.default_rng(0)
    m = ellipse_mask(64, 64, 50, 50, 5, 4)  # small lesion in a corner: many windows miss it
    img = (np.arange(64 * 64) % 251).astype(np.uint8).reshape(64, 64)
    for _ in range(20):
        ci, cm, (y0, x0, h, w) = crop_and_resize(img, m, rng, CropParams())
        assert (h, w) == (32, 32) and cm.shape == (64, 64) and cm.any()
        assert m[y0:y0 + h, x0:x0 + w].any()
    # a lesion too small for random windows still ends up in the crop (fallback centred on a lesion pixel)
    tiny = np.zeros((64, 64), bool)
    tiny[63, 63] = True
    _, cm, _ = crop_and_resize(img, tiny, rng, CropParams(max_tries=1))
    assert cm.any()


def test_polygon_is_coarse_but_close():
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:128, :128]
    theta = np.arctan2(yy - 64, xx - 64)
    r = 35 * (1 + 0.25 * np.cos(5 * theta))  # wavy, star-shaped lesion
    m = np.hypot(yy - 64, xx - 64) <= r
    p = polygonize_mask(m, rng, PolygonParams(n_vertices=(6, 6)))
    dice = segmentation_metrics(p, m)["dice"][0]
    assert 0.75 < dice < 0.97  # clearly a different boundary, still the same lesion
    assert polygonize_mask(np.zeros((8, 8), bool), rng).sum() == 0


def test_degrade_quality_darkens_and_blurs():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (64, 64, 3)).astype(np.uint8)
    out = degrade_quality(img, QualityParams(beta=0.5, sigma=2.0))
    assert out.mean() == pytest.approx(img.mean() * 0.5, rel=0.02)
    assert np.abs(np.diff(out.astype(float), axis=0)).mean() < 0.2 * np.abs(np.diff(img.astype(float), axis=0)).mean()
    flat = np.full((16, 16), 200, np.uint8)
    assert (degrade_quality(flat) == 100).all()
