"""Converters from official downloads (seg4seg_utils.data.real_data, python -m data_prep) on tiny fixture trees,
plus the real HC18 set and the real IMA++ metadata when ../shared/data has them."""
from __future__ import annotations

import hashlib
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import REPO_ROOT, shared_data_dir
from PIL import Image, ImageDraw

from data_prep.__main__ import main
from seg4seg_utils.data.real_data import (
    DataPrepWarning,
    fill_outline,
    head_circumference_mm,
    isic_annotation_styles,
    prepare_fives,
    prepare_hc18,
    prepare_isic2018,
    read_fives_quality,
)
from seg4seg_utils.data.records import DatasetError, read_dataset, read_mask

RNG = np.random.default_rng(0)


# ------------------------------------------------------------------------------------------ helpers
def snapshot(root: Path) -> dict[str, tuple[str, int]]:
    """Content hash and mtime of every file under ``root``: raw inputs must come out unchanged."""
    return {str(p.relative_to(root)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}


def save(array: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def noise(h: int, w: int, channels: int = 0) -> np.ndarray:
    shape = (h, w, channels) if channels else (h, w)
    return RNG.integers(0, 256, size=shape, dtype=np.uint8)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def ellipse(shape: tuple[int, int], box: tuple[int, int, int, int], *, fill: bool = False,
            arc: tuple[int, int] | None = None) -> np.ndarray:
    """A bool image with an ellipse outline (or a filled ellipse, or an open arc) drawn by PIL."""
    im = Image.new("L", (shape[1], shape[0]), 0)
    draw = ImageDraw.Draw(im)
    if arc:
        draw.arc(box, start=arc[0], end=arc[1], fill=255, width=1)
    else:
        draw.ellipse(box, outline=255, fill=255 if fill else None, width=1)
    return np.asarray(im) > 127


# --------------------------------------------------------------------------------------------- HC18
HC_SHAPE = (48, 64)
HC_IDS = ["000_HC", "001_HC", "002_HC", "003_HC", "004_HC", "005_HC", "006_HC", "007_HC", "010_2HC", "010_3HC"]
HC_OPEN = "003_HC"  # drawn as an open arc: needs the ellipse fallback


def hc_box(i: int) -> tuple[int, int, int, int]:
    return (8 + i % 3, 6 + i % 4, 50 - i % 5, 40 - i % 2)


def make_hc18(root: Path, with_csv: bool = True) -> Path:
    """A tiny HC18 download: training_set/ with 10 image/annotation pairs (one suffixed id, one open outline)."""
    folder = root / "training_set"
    rows = []
    for i, sid in enumerate(HC_IDS):
        save(noise(*HC_SHAPE), folder / f"{sid}.png")
        outline = ellipse(HC_SHAPE, hc_box(i), arc=(30, 320) if sid == HC_OPEN else None)
        save(outline.astype(np.uint8) * 255, folder / f"{sid}_Annotation.png")
        rows.append({"filename": f"{sid}.png", "pixel size(mm)": 0.1 + i / 100, "head circumference (mm)": 10.0 + i})
    if with_csv:
        pd.DataFrame(rows).to_csv(root / "training_set_pixel_size_and_HC.csv", index=False)
    return root


def test_hc18_conversion(tmp_path):
    raw = make_hc18(tmp_path / "raw")
    before = snapshot(raw)
    table = prepare_hc18(raw, tmp_path / "out", progress=False)
    assert snapshot(raw) == before

    table = read_dataset(tmp_path / "out", validate="full")
    assert len(table) == 10 and table.df["split"].value_counts().to_dict() == {"train": 6, "test": 3, "val": 1}
    assert set(table.df["id"]) == set(HC_IDS)
    df = table.df.set_index("id")
    assert df.loc["010_2HC", "pixel_size_mm"] == pytest.approx(0.18)
    assert df.loc["010_2HC", "hc_mm"] == pytest.approx(18.0)
    # images are the raw files themselves; masks are written
    assert all(table.path(v).parent == (raw / "training_set").resolve() for v in table.df["image"])
    assert all(v.startswith("masks/") for v in table.df["mask"])
    assert table.meta["n_ellipse_fallback"] == 1 and table.meta["ellipse_fallback_ids"] == [HC_OPEN]
    assert df.loc[HC_OPEN, "mask_method"] == "ellipse_fit"
    assert (df.drop(index=HC_OPEN)["mask_method"] == "fill").all()
    for i, sid in enumerate(table.df["id"]):
        truth = ellipse(HC_SHAPE, hc_box(HC_IDS.index(sid)), fill=True)
        assert iou(table.mask(i), truth) > (0.9 if sid == HC_OPEN else 0.98), sid


def test_hc18_reuse_and_refusal(tmp_path):
    raw = make_hc18(tmp_path / "raw")
    first = prepare_hc18(raw, tmp_path / "out", progress=False)
    again = prepare_hc18(raw, tmp_path / "out", progress=False)  # same config: reused, not rebuilt
    assert again.meta["config_hash"] == first.meta["config_hash"]
    with pytest.raises(DatasetError, match="already holds a different dataset"):
        prepare_hc18(raw, tmp_path / "out", seed=1, progress=False)


def test_hc18_without_csv_warns(tmp_path):
    raw = make_hc18(tmp_path / "raw", with_csv=False)
    with pytest.warns(DataPrepWarning, match="training_set_pixel_size_and_HC.csv"):
        table = prepare_hc18(raw, tmp_path / "out", progress=False)
    assert table.df["hc_mm"].isna().all() and table.df["pixel_size_mm"].isna().all()


def _no_annotation(raw: Path) -> None:
    (raw / "training_set" / "004_HC_Annotation.png").unlink()


def _garbage_image(raw: Path) -> None:
    (raw / "training_set" / "005_HC.png").write_bytes(b"this is not a png")


def _empty_annotation(raw: Path) -> None:
    save(np.zeros(HC_SHAPE, np.uint8), raw / "training_set" / "006_HC_Annotation.png")


@pytest.mark.parametrize("damage, names", [
    (lambda raw: None, "nowhere"),
    (lambda raw: (raw / "training_set").rename(raw / "elsewhere"), "training_set"),
    (_no_annotation, "004_HC.png"),
    (_garbage_image, "005_HC.png"),
    (_empty_annotation, "006_HC_Annotation.png"),
], ids=["raw-missing", "no-training_set", "no-annotation", "unreadable-image", "empty-annotation"])
def test_hc18_bad_inputs(tmp_path, damage, names):
    raw = make_hc18(tmp_path / "raw")
    damage(raw)
    target = tmp_path / "nowhere" if names == "nowhere" else raw
    with pytest.raises(DatasetError, match=names):
        prepare_hc18(target, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_fill_outline_fallback_matches_closed_fill():
    closed = ellipse((120, 160), (20, 15, 140, 100))
    filled, used = fill_outline(closed)
    assert not used
    cut = closed.copy()
    cut[:, 70:90] = False  # two gaps: the outline no longer encloses anything
    fitted, used = fill_outline(cut)
    assert used and iou(fitted, filled) > 0.97
    with pytest.raises(ValueError):
        fill_outline(np.zeros((10, 10), bool))


def test_head_circumference_of_a_circle():
    yy, xx = np.mgrid[0:200, 0:200]
    disc = (yy - 100) ** 2 + (xx - 100) ** 2 <= 60 ** 2
    assert head_circumference_mm(disc, 0.5) == pytest.approx(2 * np.pi * 60 * 0.5, rel=0.01)


# ----------------------------------------------------------------------------------------- ISIC 2018
ISIC_SPLITS = {"train": ["ISIC_0000000", "ISIC_0000001", "ISIC_0000002", "ISIC_0000003"],
               "val": ["ISIC_0000010", "ISIC_0000011"], "test": ["ISIC_0000020", "ISIC_0000021"]}
ISIC_NAMES = {"train": "Training", "val": "Validation", "test": "Test"}
ISIC_SOFT = "ISIC_0000001"  # its mask has anti-aliased edges (not binary): must be thresholded and written


def make_isic(root: Path) -> Path:
    for split, ids in ISIC_SPLITS.items():
        inputs = root / f"ISIC2018_Task1-2_{ISIC_NAMES[split]}_Input"
        truths = root / f"ISIC2018_Task1_{ISIC_NAMES[split]}_GroundTruth"
        inputs.mkdir(parents=True)
        truths.mkdir(parents=True)
        (inputs / "LICENSE.txt").write_text("licence text, not an image\n")
        for sid in ids:
            Image.fromarray(noise(30, 40, 3)).save(inputs / f"{sid}.jpg", quality=90)
            mask = ellipse((30, 40), (8, 6, 30, 24), fill=True).astype(np.uint8) * 255
            if sid == ISIC_SOFT:
                mask[0, :10] = 100  # a grey, below-threshold edge: not binary
            save(mask, truths / f"{sid}_segmentation.png")
    return root


def make_styles_csv(path: Path) -> Path:
    rows = [("ISIC_0000000", "A01", "T1", "S1"), ("ISIC_0000001", "A02", "T3", "S2"),
            ("ISIC_0000002", "A01", "T1", "S1"), ("ISIC_0000002", "A03", "T3", "S1"),
            ("ISIC_0000002", "ST", "ST", "ST"), ("ISIC_0000002", "MV", "MV", "MV"),
            ("ISIC_0000010", "A00", "T2", "S1"), ("ISIC_9999999", "A04", "T3", "S1")]
    df = pd.DataFrame(rows, columns=["ISIC_id", "annotator", "tool", "skill_level"])
    df.insert(1, "img_filename", df["ISIC_id"] + ".JPG")
    df.insert(2, "seg_filename", df["ISIC_id"] + "_" + df["annotator"] + ".png")
    df["mskObjectID"], df["mask_md5"] = "x", "y"
    df.to_csv(path, index=False)
    return path


def test_isic_annotation_styles(tmp_path):
    styles = isic_annotation_styles(make_styles_csv(tmp_path / "styles.csv"))
    assert styles.loc["ISIC_0000000"].to_dict() == {"n_masks": 1, "ima_tool": "T1", "annotation_style": "polygon",
                                                     "annotator": "A01", "skill_level": "S1"}
    assert styles.loc["ISIC_0000001", "annotation_style"] == "flood_fill"
    # two annotator masks (+ two consensus masks that are not counted): style unknown
    assert styles.loc["ISIC_0000002"].to_dict() == {"n_masks": 2, "ima_tool": "multiple", "annotation_style": "unknown",
                                                     "annotator": "multiple", "skill_level": "S1"}
    assert styles.loc["ISIC_0000010", "annotation_style"] == "unknown"  # T2


def test_isic_conversion(tmp_path):
    raw = make_isic(tmp_path / "raw")
    before = snapshot(raw)
    prepare_isic2018(raw, tmp_path / "out", styles_csv=make_styles_csv(tmp_path / "styles.csv"), progress=False)
    assert snapshot(raw) == before

    table = read_dataset(tmp_path / "out", validate="full")
    df = table.df.set_index("id")
    for split, ids in ISIC_SPLITS.items():
        assert sorted(df.index[df["split"] == split]) == ids
    # binary official masks are referenced in place; the grey-edged one was thresholded and written
    assert df.loc[ISIC_SOFT, "mask"] == f"masks/{ISIC_SOFT}.png"
    for sid in df.index.drop(ISIC_SOFT):
        assert table.path(df.loc[sid, "mask"]).name == f"{sid}_segmentation.png"
    written = read_mask(table.path(df.loc[ISIC_SOFT, "mask"]))
    assert not written[0, :10].any() and written.sum() > 100
    assert df["annotation_style"].to_dict() == {
        "ISIC_0000000": "polygon", "ISIC_0000001": "flood_fill", "ISIC_0000002": "unknown", "ISIC_0000003": "unknown",
        "ISIC_0000010": "unknown", "ISIC_0000011": "unknown", "ISIC_0000020": "unknown", "ISIC_0000021": "unknown"}
    assert df.loc["ISIC_0000003", "n_masks"] == 0 and df.loc["ISIC_0000003", "ima_tool"] == "unknown"
    assert table.meta["annotation_style_counts"]["train"] == {"polygon": 1, "flood_fill": 1, "unknown": 2}
    assert table.meta["n_masks_rewritten"] == 1


def test_isic_without_styles_has_no_style_columns(tmp_path):
    table = prepare_isic2018(make_isic(tmp_path / "raw"), tmp_path / "out", progress=False)
    assert table.attribute_columns == []


def test_isic_missing_folders_are_listed(tmp_path):
    raw = make_isic(tmp_path / "raw")
    for name in ("ISIC2018_Task1_Test_GroundTruth", "ISIC2018_Task1-2_Validation_Input"):
        for f in (raw / name).iterdir():
            f.unlink()
        (raw / name).rmdir()
    with pytest.raises(DatasetError) as err:
        prepare_isic2018(raw, tmp_path / "out", progress=False)
    message = str(err.value)
    found, missing = message.split("; missing")
    assert "ISIC2018_Task1-2_Training_Input" in found and "ISIC2018_Task1_Test_GroundTruth" not in found
    assert "ISIC2018_Task1_Test_GroundTruth" in missing and "ISIC2018_Task1-2_Validation_Input" in missing


def test_isic_image_without_mask_is_named(tmp_path):
    raw = make_isic(tmp_path / "raw")
    (raw / "ISIC2018_Task1_Validation_GroundTruth" / "ISIC_0000011_segmentation.png").unlink()
    with pytest.raises(DatasetError, match="ISIC_0000011.jpg"):
        prepare_isic2018(raw, tmp_path / "out", progress=False)


def test_isic_unreadable_mask_is_named(tmp_path):
    raw = make_isic(tmp_path / "raw")
    (raw / "ISIC2018_Task1_Test_GroundTruth" / "ISIC_0000020_segmentation.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(DatasetError, match="ISIC_0000020_segmentation.png"):
        prepare_isic2018(raw, tmp_path / "out", progress=False)


@pytest.mark.shared_data
def test_isic2018_styles_on_real_imapp_metadata(isic_styles_csv):
    styles = isic_annotation_styles(isic_styles_csv)
    single = styles[styles["n_masks"] == 1]
    counts = single["annotation_style"].value_counts()
    # both styles well represented among single-mask images (the case C premise)
    assert counts["polygon"] > 2000 and counts["flood_fill"] > 2000
    assert (styles.loc[styles["n_masks"] > 1, "annotation_style"] == "unknown").all()
    ids = (shared_data_dir() / "isic_styles" / "ISIC2018_train.txt").read_text().split()
    assert len(ids) == 2594
    train = styles.reindex(ids)
    train["annotation_style"] = train["annotation_style"].fillna("unknown")
    train_counts = train["annotation_style"].value_counts().to_dict()
    print(f"\nIMA++ styles of the {len(ids)} ISIC2018 train ids: {train_counts}; "
          f"in metadata {int(train['n_masks'].notna().sum())}, single-mask {int((train['n_masks'] == 1).sum())}")
    assert sum(train_counts.values()) == 2594
    assert train_counts.get("polygon", 0) > 300 and train_counts.get("flood_fill", 0) > 300


# -------------------------------------------------------------------------------------------- FIVES
FIVES_TRAIN = ["1_A", "2_A", "3_D", "4_D", "5_G", "6_G", "7_N", "8_N"]
FIVES_TEST = ["1_A", "2_D", "3_G", "4_N"]  # numbering restarts: ids must still be unique
FIVES_BINARY_GT = ("train", "2_A")  # this ground truth is already a single-channel 0/255 PNG


def vessels(seed: int) -> np.ndarray:
    mask = np.zeros((32, 32), bool)
    mask[4 + seed % 5, :] = True
    mask[:, 6 + seed % 7] = True
    return mask


def make_fives(root: Path) -> Path:
    for split, stems in (("train", FIVES_TRAIN), ("test", FIVES_TEST)):
        for k, stem in enumerate(stems):
            save(noise(32, 32, 3), root / split / "Original" / f"{stem}.png")
            gt = vessels(k).astype(np.uint8) * 255
            if (split, stem) != FIVES_BINARY_GT:
                gt = np.stack([gt, gt // 2, np.zeros_like(gt)], axis=-1)  # RGB, channels differ
            save(gt, root / split / "Ground truth" / f"{stem}.png")
    return root


def quality_rows() -> list[dict]:
    """Flags per image: 1 = problem. train 3_D is blurred, test 4_N has low contrast."""
    rows = []
    for split, stems in (("train", FIVES_TRAIN), ("test", FIVES_TEST)):
        for stem in stems:
            rows.append({"Set": split, "Image name": f"{stem}.png", "Illumination & colour (IC)": 0,
                         "Blur": int((split, stem) == ("train", "3_D")),
                         "Low contrast (LC)": int((split, stem) == ("test", "4_N"))})
    return rows


def test_fives_conversion_with_quality_csv(tmp_path):
    raw = make_fives(tmp_path / "raw")
    quality = tmp_path / "quality.csv"
    pd.DataFrame(quality_rows()).to_csv(quality, index=False)
    before = snapshot(raw)
    prepare_fives(raw, tmp_path / "out", quality=quality, val_fraction=0.5, progress=False)
    assert snapshot(raw) == before

    table = read_dataset(tmp_path / "out", validate="full")
    df = table.df.set_index("id")
    assert sorted(df.index[df["split"] == "test"]) == sorted(f"test_{s}" for s in FIVES_TEST)
    val = df[df["split"] == "val"]
    assert len(val) == 4 and sorted(val["disease"]) == ["AMD", "DR", "glaucoma", "normal"]  # one per disease
    assert (df.loc[df["split"] != "test", "official_split"] == "train").all()
    assert df.loc["test_2_D", "disease"] == "DR" and df.loc["test_2_D", "number"] == 2
    assert df.loc["train_3_D", "quality"] == "low" and bool(df.loc["train_3_D", "q_blur"])
    assert not bool(df.loc["train_3_D", "q_lc"]) and not bool(df.loc["train_3_D", "q_ic"])
    assert df.loc["test_4_N", "quality"] == "low" and bool(df.loc["test_4_N", "q_lc"])
    assert (df["quality"] == "good").sum() == 10
    # RGB ground truths become binary masks from channel 0; a binary one is referenced in place
    assert table.path(df.loc["train_2_A", "mask"]) == (raw / "train" / "Ground truth" / "2_A.png").resolve()
    assert df.loc["train_3_D", "mask"] == "masks/train_3_D.png"
    assert np.array_equal(table.mask(table.df.index[table.df["id"] == "train_3_D"][0]), vessels(2))
    assert table.meta["n_masks_rewritten"] == 11 and table.meta["quality_counts"] == {"good": 10, "low": 2}


def test_fives_val_carving_is_seeded(tmp_path):
    raw = make_fives(tmp_path / "raw")
    a = prepare_fives(raw, tmp_path / "a", val_fraction=0.5, seed=3, progress=False).df
    b = prepare_fives(raw, tmp_path / "b", val_fraction=0.5, seed=3, progress=False).df
    assert a["split"].tolist() == b["split"].tolist()
    assert "quality" not in a.columns


def test_fives_quality_xlsx_one_sheet_per_split(tmp_path):
    """Per-split sheets named train/test, a title row above the header, separate number and disease columns."""
    raw = make_fives(tmp_path / "raw")
    path = tmp_path / "Quality Assessment.xlsx"
    with pd.ExcelWriter(path) as xl:
        for split, stems in (("train", FIVES_TRAIN), ("test", FIVES_TEST)):
            body = [["FIVES image quality", None, None, None, None],
                    ["No.", "Disease", "IC", "Blur", "LC"]]
            for stem in stems:
                number, letter = stem.split("_")
                bad_ic = (split, stem) == ("test", "1_A")
                body.append([int(number), letter, int(bad_ic), 0, 0])
            pd.DataFrame(body).to_excel(xl, sheet_name=f"{split.capitalize()} set", header=False, index=False)
    parsed = read_fives_quality(path)
    assert len(parsed) == 12 and set(parsed["split"]) == {"train", "test"}
    table = prepare_fives(raw, tmp_path / "out", quality=path, val_fraction=0.5, progress=False)
    df = table.df.set_index("id")
    assert df.loc["test_1_A", "quality"] == "low" and bool(df.loc["test_1_A", "q_ic"])
    assert df.loc["train_1_A", "quality"] == "good"  # same number in the train sheet: not confused


def test_fives_quality_column_and_bad_value(tmp_path):
    path = tmp_path / "q.csv"
    pd.DataFrame({"image": ["1_A", "2_A"], "Quality": ["Good", "low"]}).to_csv(path, index=False)
    assert read_fives_quality(path)["quality"].tolist() == ["good", "low"]
    pd.DataFrame({"file": ["1_A.png"], "IC": ["yes"], "blur": ["no"], "LC": [None]}).to_csv(path, index=False)
    row = read_fives_quality(path, bad_value="Yes").iloc[0]
    assert bool(row["q_ic"]) and not bool(row["q_blur"]) and not bool(row["q_lc"]) and row["quality"] == "low"


@pytest.mark.parametrize("columns, expected", [
    ({"Image": ["1_A.png"], "Score": [3], "Comment": ["ok"]}, "score"),
    ({"Image": ["1_A.png"], "Blur": [1], "Comment": ["ok"]}, "only some of the quality flag"),
    ({"Reader": ["x"], "Blur": [1], "IC": [0], "LC": [0]}, "reader"),
], ids=["no-quality-columns", "partial-flags", "no-id-column"])
def test_fives_undecidable_quality_columns(tmp_path, columns, expected):
    path = tmp_path / "quality.csv"
    pd.DataFrame(columns).to_csv(path, index=False)
    with pytest.raises(DatasetError, match=expected) as err:
        prepare_fives(make_fives(tmp_path / "raw"), tmp_path / "out", quality=path, val_fraction=0.5,
                      progress=False)
    assert "quality.csv" in str(err.value)


@pytest.mark.parametrize("columns, expected", [
    ({"Number": [1, 2, 1], "IC": [0, 0, 1], "Blur": [0, 0, 0], "LC": [0, 0, 0]}, "appears more than once"),
    ({"Image": ["1_A.png"], "IC": [0], "Blur": [1], "LC": [0]}, "fits both train/1_A and test/1_A"),
    ({"Image": ["901_A.png"], "IC": [0], "Blur": [1], "LC": [0]}, "none of the 12 images matched"),
], ids=["duplicate-rows", "fits-both-splits", "nothing-matches"])
def test_fives_quality_rows_that_cannot_be_matched(tmp_path, columns, expected):
    """Without a split, train and test (both numbered from 1) cannot be told apart; refuse rather than guess."""
    path = tmp_path / "quality.csv"
    pd.DataFrame(columns).to_csv(path, index=False)
    with pytest.raises(DatasetError, match=expected):
        prepare_fives(make_fives(tmp_path / "raw"), tmp_path / "out", quality=path, val_fraction=0.5,
                      progress=False)
    assert not (tmp_path / "out").exists()


def test_fives_missing_ground_truth_folder(tmp_path):
    raw = make_fives(tmp_path / "raw")
    (raw / "test" / "Ground truth").rename(raw / "test" / "Labelz")
    with pytest.raises(DatasetError, match=r"test.*Ground truth.*Labelz"):
        prepare_fives(raw, tmp_path / "out", progress=False)


def test_fives_missing_ground_truth_file(tmp_path):
    raw = make_fives(tmp_path / "raw")
    (raw / "train" / "Ground truth" / "5_G.png").unlink()
    with pytest.raises(DatasetError, match="5_G.png"):
        prepare_fives(raw, tmp_path / "out", progress=False)


# ---------------------------------------------------------------------------------------------- CLI
def test_cli_bad_path_exits_2(tmp_path, capsys):
    code = main(["hc18", "--raw", str(tmp_path / "no_such_folder"), "--out", str(tmp_path / "out"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and "no_such_folder" in err and "Traceback" not in err


def test_cli_converts(tmp_path, capsys):
    raw = make_isic(tmp_path / "raw")
    assert main(["isic2018", "--raw", str(raw), "--out", str(tmp_path / "out"), "--quiet"]) == 0
    assert "train 4, val 2, test 2" in capsys.readouterr().out


def test_cli_as_module(tmp_path):
    result = subprocess.run([sys.executable, "-m", "data_prep", "fives", "--raw", str(tmp_path / "missing"),
                             "--out", str(tmp_path / "out")], capture_output=True, text=True, cwd=REPO_ROOT)
    assert result.returncode == 2 and "missing" in result.stderr and "Traceback" not in result.stderr


# ------------------------------------------------------------------------------------- real HC18 set
@pytest.fixture(scope="module")
def hc18_real(hc18_raw, tmp_path_factory):
    """The real HC18 training set converted once for this module (about 12 s on 2 cores)."""
    start = time.perf_counter()
    table = prepare_hc18(hc18_raw, tmp_path_factory.mktemp("hc18") / "hc18", progress=False)
    return table, time.perf_counter() - start


@pytest.mark.shared_data
@pytest.mark.slow
def test_real_hc18_converts(hc18_real):
    table, seconds = hc18_real
    n = len(table)
    assert n == 999
    counts = table.df["split"].value_counts().to_dict()
    assert counts == {"train": int(n * 0.64), "val": int(n * 0.16), "test": n - int(n * 0.64) - int(n * 0.16)}
    assert counts == {"train": 639, "val": 159, "test": 201}
    assert table.df["hc_mm"].notna().all() and table.df["pixel_size_mm"].notna().all()
    read_dataset(table.root, validate="full")
    print(f"\nreal HC18: converted in {seconds:.1f} s, ellipse fallback for {table.meta['n_ellipse_fallback']} of {n}")


@pytest.mark.shared_data
@pytest.mark.slow
def test_real_hc18_masks_reproduce_head_circumference(hc18_real):
    table, _ = hc18_real
    hc = np.array([head_circumference_mm(table.mask(i), px) for i, px in enumerate(table.df["pixel_size_mm"])])
    rel = np.abs(hc - table.df["hc_mm"].to_numpy()) / table.df["hc_mm"].to_numpy()
    print(f"\nreal HC18: HC from filled masks vs CSV: median relative error {np.median(rel):.2%}, "
          f"within 5% for {np.mean(rel < 0.05):.1%}, max {rel.max():.2%}")
    assert np.mean(rel < 0.05) >= 0.95
