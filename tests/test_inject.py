"""Injections A-F: exact prevalence per split, determinism, each manipulation's effect, source untouched."""
import hashlib

import numpy as np
import pytest

from seg4seg_utils.data.inject import (
    ALL_CASES,
    CASES,
    PAPER_CASES,
    AmelanoticParams,
    CaliperStyle,
    CropParams,
    PolygonParams,
    QualityParams,
    crop_and_resize,
    degrade_quality,
    draw_calipers,
    ellipse_from_mask,
    fade_lesion,
    inject,
    injected_name,
    omit_thin_structures,
    OmissionParams,
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


@pytest.mark.parametrize("case", list(ALL_CASES))
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
    assert np.array_equal(new_img, manipulated if case in "ABDF" else np.zeros_like(fail))
    assert np.array_equal(new_mask, manipulated if case in "BCE" else np.zeros_like(fail))
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
        inject(source, "G", 0.1, 0, tmp_path / "x")


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


def test_the_paper_cases_come_first_and_every_case_is_listed():
    assert PAPER_CASES == "ABCD" and ALL_CASES == "ABCDEF" and set(ALL_CASES) == set(CASES)
    assert CASES["E"].modality == "fundus" and CASES["F"].modality == "dermoscopy"


def vessel_tree(size=256):
    """A thick trunk (9 px) with a thin branch (3 px) and a medium branch (7 px)."""
    m = np.zeros((size, size), bool)
    m[120:129, 20:236] = True     # trunk, 9 px wide
    m[40:120, 60:63] = True       # thin branch, 3 px
    m[129:220, 150:157] = True    # medium branch, 7 px
    return m


def test_omission_drops_thin_structures_and_keeps_thick_ones_exactly():
    m = vessel_tree()
    out = omit_thin_structures(m)  # default: under 5 px at 256 px
    assert not out[40:117, 60:63].any()                      # the thin branch is gone (a 3-px stub at the trunk)
    assert out[120:129, 20:236].all() and out[131:220, 150:157].all()  # thick ones keep every pixel
    assert not (out & ~m).any()                              # omission only: nothing is added
    assert (m & ~out).sum() == pytest.approx(80 * 3, abs=12)
    # a wider threshold drops the 7-px branch too; a tiny image (radius 0) is left unchanged
    assert not omit_thin_structures(m, OmissionParams(thin_width=0.035))[140:220, 150:157].any()
    assert np.array_equal(omit_thin_structures(m[:40, :40]), m[:40, :40])
    assert not omit_thin_structures(np.zeros((64, 64), bool)).any()


def test_fading_lowers_the_lesion_contrast_and_leaves_skin_and_mask_alone():
    m = ellipse_mask(128, 128, 64, 64, 30, 24)
    skin, lesion = np.array([200, 160, 140]), np.array([90, 60, 40])
    img = np.where(m[..., None], lesion, skin).astype(np.uint8)
    out = fade_lesion(img, m)
    assert img[64, 64].tolist() == lesion.tolist()           # not modified in place
    far = ~ellipse_mask(128, 128, 64, 64, 40, 34)
    assert np.array_equal(out[far], img[far])                # the skin away from the lesion is untouched
    before = np.abs(img[m].astype(float) - skin).mean()
    after = np.abs(out[ellipse_mask(128, 128, 64, 64, 24, 18)].astype(float) - skin).mean()
    assert after < 0.5 * before                              # the lesion is much closer to the skin colour
    core = out[64, 64].astype(float)
    assert core[0] > core[1] and core[0] > core[2]           # and reddish (pink), not brown-grey
    full = fade_lesion(img, m, AmelanoticParams(contrast=1.0, tint=(1.0, 1.0, 1.0)))
    assert np.abs(full.astype(int) - img.astype(int)).max() <= 1  # contrast 1, no tint: the image back
    assert np.array_equal(fade_lesion(img, np.zeros_like(m)), img)


def test_case_E_changes_only_the_mask_and_case_F_only_the_image():
    from seg4seg_utils.data.inject import manipulate

    rng = np.random.default_rng(0)
    tree = vessel_tree()
    image = np.where(tree[..., None], [120, 40, 30], [200, 90, 60]).astype(np.uint8)
    new_img, new_mask, _ = manipulate(CASES["E"], CASES["E"].params, image, tree, rng)
    assert new_img is None and np.array_equal(new_mask, omit_thin_structures(tree)) and new_mask.sum() < tree.sum()
    lesion = ellipse_mask(128, 128, 64, 64, 30, 24)
    skin_lesion = np.where(lesion[..., None], [90, 60, 40], [200, 160, 140]).astype(np.uint8)
    new_img, new_mask, _ = manipulate(CASES["F"], CASES["F"].params, skin_lesion, lesion, rng)
    assert new_mask is None and np.array_equal(new_img, fade_lesion(skin_lesion, lesion))
    assert not np.array_equal(new_img, skin_lesion)
