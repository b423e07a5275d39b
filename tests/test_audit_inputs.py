"""The audit's input layer: three folders paired by name, masks and predictions decoded faithfully, and every
problem a user's files can have reported as a DatasetError that names the file (seg4seg_utils.data.folders)."""
from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest
import tifffile
from PIL import Image

from seg4seg_utils.data.folders import (
    Prediction,
    check_same_size,
    folder_fingerprint,
    pair_folders,
    read_audit_image,
    read_label_map,
    read_metadata,
    read_prediction,
)
from seg4seg_utils.data.records import DatasetError

N = 32


def square(value: int = 255) -> np.ndarray:
    """A 32x32 uint8 mask with a square of ``value``."""
    m = np.zeros((N, N), np.uint8)
    m[8:24, 10:26] = value
    return m


def disk(value: int = 255) -> np.ndarray:
    yy, xx = np.mgrid[:N, :N]
    return (((yy - 15.5) ** 2 + (xx - 15.5) ** 2 < 100) * value).astype(np.uint8)


def save(arr: np.ndarray, path, **kw) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, **kw)


def three_folders(root, ids=("a", "b", "c"), image_name="{}.png", mask_ext=".png", pred_ext=".png"):
    rng = np.random.default_rng(0)
    folders = {k: root / k for k in ("images", "masks", "predictions")}
    for f in folders.values():
        f.mkdir(parents=True, exist_ok=True)
    for sid in ids:
        save(rng.integers(0, 255, (N, N, 3), dtype=np.uint8), folders["images"] / image_name.format(sid))
        save(square(), folders["masks"] / f"{sid}{mask_ext}")
        save(square(1), folders["predictions"] / f"{sid}{pred_ext}")
    return folders


def pair(f):
    return pair_folders(f["images"], f["masks"], f["predictions"])


# ----------------------------------------------------------------------------------------------- pairing
def test_pairing_plain(tmp_path):
    f = three_folders(tmp_path, ids=("c", "a", "b"))
    pairs = pair(f)
    assert list(pairs.columns) == ["id", "image", "mask", "prediction"]
    assert list(pairs["id"]) == ["a", "b", "c"]
    assert pairs.loc[0, "mask"] == os.path.abspath(f["masks"] / "a.png")
    assert all(os.path.isabs(p) for p in pairs[["image", "mask", "prediction"]].to_numpy().ravel())


def test_pairing_strips_the_nnunet_channel_suffix_and_uses_channel_0000(tmp_path):
    f = three_folders(tmp_path, ids=("case_012", "case_013"), image_name="{}_0000.png")
    save(np.zeros((N, N), np.uint8), f["images"] / "case_012_0001.png")  # a second channel: ignored
    pairs = pair(f)
    assert list(pairs["id"]) == ["case_012", "case_013"]
    assert pairs.loc[0, "image"].endswith("case_012_0000.png")


def test_names_that_end_in_0000_on_every_side_are_left_alone(tmp_path):
    pairs = pair(three_folders(tmp_path, ids=("frame_0000", "frame_0001")))
    assert list(pairs["id"]) == ["frame_0000", "frame_0001"]


def test_pairing_ignores_suffix_case_hidden_and_junk_files(tmp_path):
    f = three_folders(tmp_path, ids=("a", "b"), mask_ext=".PNG", pred_ext=".Png")
    (f["images"] / ".DS_Store").write_bytes(b"\0\1")
    (f["images"] / "._a.png").write_bytes(b"not an image")  # macOS resource fork
    (f["masks"] / "notes.txt").write_text("hello")
    (f["predictions"] / "summary.csv").write_text("id,dice\n")
    (f["predictions"] / "plans.json").write_text("{}")
    (f["masks"] / "sub").mkdir()
    pairs = pair(f)
    assert list(pairs["id"]) == ["a", "b"] and pairs.loc[0, "mask"].endswith("a.PNG")


def test_missing_folder_is_named(tmp_path):
    f = three_folders(tmp_path)
    with pytest.raises(DatasetError, match=r"nowhere: the ground-truth masks folder does not exist"):
        pair_folders(f["images"], tmp_path / "nowhere", f["predictions"])


def test_empty_folder_is_named(tmp_path):
    f = three_folders(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match=r"empty: no predictions \(.png.* It is empty"):
        pair_folders(f["images"], f["masks"], tmp_path / "empty")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "readme.txt").write_text("x")
    with pytest.raises(DatasetError, match=r"junk: no images \(.png.*holds only readme.txt"):
        pair_folders(tmp_path / "junk", f["masks"], f["predictions"])


def test_missing_and_extra_files_in_one_message(tmp_path):
    f = three_folders(tmp_path, ids=[f"case{i:02d}" for i in range(10)])
    for i in range(7):  # 7 images lack a mask: the message shows 5 and says there are more
        (f["masks"] / f"case{i:02d}.png").unlink()
    (f["predictions"] / "case09.png").unlink()
    save(square(), f["predictions"] / "zz_extra.png")
    with pytest.raises(DatasetError) as err:
        pair(f)
    msg = str(err.value)
    assert "7 image(s) have no ground-truth mask in" in msg and "case00.png, case01.png" in msg
    assert "case04.png, ..." in msg and "case05.png" not in msg
    assert "1 image(s) have no prediction" in msg and "case09.png" in msg
    assert "1 prediction(s) have no image" in msg and "zz_extra.png" in msg
    assert "matched by name without extension" in msg


def test_two_files_of_one_id_in_a_folder(tmp_path):
    f = three_folders(tmp_path)
    save(square(), f["masks"] / "b.bmp")
    with pytest.raises(DatasetError, match=r"masks: 2 files have the name 'b': b\.bmp, b\.png"):
        pair(f)


# ------------------------------------------------------------------------------------------------- masks
def test_masks_0_1_and_0_255_give_the_same_labels(tmp_path):
    save(disk(1), tmp_path / "one.png")
    save(disk(255), tmp_path / "full.png")
    tifffile.imwrite(tmp_path / "deep.tif", disk(1).astype(np.uint16) * 65535)
    one, full, deep = (read_label_map(tmp_path / n) for n in ("one.png", "full.png", "deep.tif"))
    assert one.dtype == np.uint8 and set(np.unique(one)) == {0, 1}
    assert np.array_equal(one, full) and np.array_equal(one, deep)


def test_multiclass_label_map_is_kept(tmp_path):
    labels = np.zeros((N, N), np.uint8)
    labels[:, 8:16], labels[:, 16:24], labels[:, 24:] = 1, 2, 7
    save(labels, tmp_path / "m.png")
    assert np.array_equal(read_label_map(tmp_path / "m.png"), labels)
    Image.fromarray(labels.astype(np.uint16)).save(tmp_path / "m16.png")  # a 16-bit PNG: values, not rescaled
    assert Image.open(tmp_path / "m16.png").mode.startswith("I")
    assert np.array_equal(read_label_map(tmp_path / "m16.png"), labels)


def test_rgb_mask_with_identical_channels_is_one_channel(tmp_path):
    save(np.stack([disk()] * 3, axis=-1), tmp_path / "rgb.png")
    assert np.array_equal(read_label_map(tmp_path / "rgb.png"), disk(1))
    coloured = np.stack([disk(), np.zeros((N, N), np.uint8), disk()], axis=-1)
    save(coloured, tmp_path / "colour.png")
    with pytest.raises(DatasetError, match="colour.png: the mask has colour channels that differ"):
        read_label_map(tmp_path / "colour.png")


def test_gray_palette_mask_reads_gray_levels(tmp_path):
    im = Image.fromarray(disk(1)).convert("P")
    im.putpalette([255, 255, 255, 0, 0, 0] + [0] * 762)  # index 0 is white, index 1 black: values, not indices
    im.save(tmp_path / "p.png")
    assert Image.open(tmp_path / "p.png").mode == "P"
    assert np.array_equal(read_label_map(tmp_path / "p.png"), 1 - disk(1))


def test_lossy_masks_are_rejected(tmp_path):
    """Each of the three rules alone (module docstring): a noisy JPEG, > 20 values, 255 beside other values."""
    labels = np.zeros((N, N), np.uint8)
    labels[:, 5:13], labels[:, 13:21], labels[:, 21:] = 3, 6, 9  # edges off the 8x8 grid: JPEG noise
    save(labels, tmp_path / "m.jpg", quality=75)
    decoded = np.asarray(Image.open(tmp_path / "m.jpg"))
    assert decoded.max() < 255 and len(np.unique(decoded)) <= 20  # only the JPEG rule can catch this one
    with pytest.raises(DatasetError, match=r"m\.jpg: looks like a lossy \(JPEG\) mask: \d+ distinct values .*"
                                           r"Save masks losslessly as PNG"):
        read_label_map(tmp_path / "m.jpg")
    save(disk(200), tmp_path / "d.jpg", quality=75)
    noise = np.asarray(Image.open(tmp_path / "d.jpg"))  # JPEG noise saved again as PNG: many values, max < 255
    assert noise.max() < 255 and len(np.unique(noise)) > 20
    save(noise, tmp_path / "resaved.png")
    with pytest.raises(DatasetError, match=r"resaved.png: looks like a lossy .*at most 20 distinct values"):
        read_label_map(tmp_path / "resaved.png")
    few = disk()
    few[15, 3:6] = (1, 128, 254)  # few values, but 255 beside values other than 0: interpolation noise
    save(few, tmp_path / "few.png")
    with pytest.raises(DatasetError, match=r"few.png: looks like a lossy .* 5 distinct values \(e.g. 0, 1, 128"):
        read_label_map(tmp_path / "few.png")
    save(noise, tmp_path / "prediction.png")
    with pytest.raises(DatasetError, match=r"prediction.png: looks like a lossy .*A soft prediction belongs"):
        read_prediction(tmp_path / "prediction.png")


def test_clean_binary_jpeg_is_accepted(tmp_path):
    blocks = np.zeros((N, N), np.uint8)
    blocks[8:24, 8:24] = 255  # edges on the 8x8 JPEG grid decode exactly at quality 100
    save(blocks, tmp_path / "clean.jpg", quality=100, subsampling=0)
    if not set(np.unique(np.asarray(Image.open(tmp_path / "clean.jpg")))) <= {0, 255}:
        pytest.skip("this libjpeg does not decode the block pattern exactly")
    assert np.array_equal(read_label_map(tmp_path / "clean.jpg"), blocks // 255)


def test_unreadable_files_are_named(tmp_path):
    for name in ("bad.png", "bad.tif", "bad.npy", "bad.npz"):
        (tmp_path / name).write_bytes(b"definitely not pixels")
    with pytest.raises(DatasetError, match="bad.png: cannot be read as a mask"):
        read_label_map(tmp_path / "bad.png")
    with pytest.raises(DatasetError, match="bad.tif: cannot be read as a mask"):
        read_label_map(tmp_path / "bad.tif")
    for name in ("bad.png", "bad.npy", "bad.npz"):
        with pytest.raises(DatasetError, match=f"{name}: cannot be read"):
            read_prediction(tmp_path / name)
    with pytest.raises(DatasetError, match="bad.png: cannot be read as an image"):
        read_audit_image(tmp_path / "bad.png")
    with pytest.raises(DatasetError, match="gone.png: the mask file is missing"):
        read_label_map(tmp_path / "gone.png")


# ------------------------------------------------------------------------------------------- predictions
def probability() -> np.ndarray:
    """A 32x32 foreground probability ramp from 0 (left) to 1 (right)."""
    return np.tile(np.linspace(0, 1, N, dtype=np.float32), (N, 1))


def test_soft_npy_is_thresholded(tmp_path):
    np.save(tmp_path / "p.npy", probability())
    pred = read_prediction(tmp_path / "p.npy")
    assert isinstance(pred, Prediction) and pred.probability.dtype == np.float32
    assert np.array_equal(pred.labels, (probability() >= 0.5).astype(np.uint8))
    assert pred.labels.sum() == N * N // 2
    assert read_prediction(tmp_path / "p.npy", threshold=0.8).labels.sum() < pred.labels.sum()


def test_nnunet_npz_probabilities(tmp_path):
    fg = probability()
    np.savez_compressed(tmp_path / "two.npz", probabilities=np.stack([1 - fg, fg]))
    np.savez_compressed(tmp_path / "twoz.npz", other=np.zeros(3), probabilities=np.stack([1 - fg, fg])[:, None])
    for name in ("two.npz", "twoz.npz"):  # (2, H, W) and nnU-Net's (2, 1, H, W); the named array wins
        pred = read_prediction(tmp_path / name)
        assert np.allclose(pred.probability, fg, atol=1e-6)
        assert np.array_equal(pred.labels, (fg >= 0.5).astype(np.uint8))
    three = np.zeros((3, N, N), np.float32)  # three classes: hard labels are the argmax
    three[0, :, :10], three[1, :, 10:20], three[2, :, 20:] = 1, 1, 1
    np.savez(tmp_path / "three.npz", three)
    pred = read_prediction(tmp_path / "three.npz")
    assert set(np.unique(pred.labels)) == {0, 1, 2} and pred.labels[0, 25] == 2
    assert np.array_equal(pred.probability, (pred.labels > 0).astype(np.float32))


def test_float_tiff_is_a_probability(tmp_path):
    tifffile.imwrite(tmp_path / "p.tif", probability())
    pred = read_prediction(tmp_path / "p.tif")
    assert np.allclose(pred.probability, probability())
    assert np.array_equal(pred.labels, (probability() >= 0.5).astype(np.uint8))


def test_logits_are_rejected(tmp_path):
    np.save(tmp_path / "logits.npy", (probability() - 0.5) * 8)
    with pytest.raises(DatasetError, match=r"logits.npy: values range from -4 to 4, outside \[0, 1\].*sigmoid"):
        read_prediction(tmp_path / "logits.npy")


def test_integer_npy_is_a_label_map(tmp_path):
    np.save(tmp_path / "l.npy", disk(1).astype(np.int64))
    pred = read_prediction(tmp_path / "l.npy")
    assert pred.probability is None and pred.labels.dtype == np.uint8
    assert np.array_equal(pred.labels, disk(1))
    save(disk(), tmp_path / "hard.png")
    assert np.array_equal(read_prediction(tmp_path / "hard.png").labels, disk(1))


def test_size_mismatch_names_the_id_and_both_sizes():
    image, mask = np.zeros((N, N, 3), np.uint8), np.zeros((N, N), np.uint8)
    paths = {"image": "images/a.png", "mask": "masks/a.png", "prediction": "predictions/a.png"}
    check_same_size("a", image, mask, mask, paths)
    with pytest.raises(DatasetError, match=r"a: the prediction predictions/a.png is 32 x 16 \(W x H\) but the image "
                                           r"images/a.png is 32 x 32.*resize predictions to the image size first"):
        check_same_size("a", image, mask, np.zeros((16, N), np.uint8), paths)
    with pytest.raises(DatasetError, match=r"a: the mask masks/a.png is 20 x 32"):
        check_same_size("a", image, np.zeros((N, 20), np.uint8), mask, paths)


# ------------------------------------------------------------------------------------------------ images
def test_rgba_and_16_bit_images_are_accepted(tmp_path):
    rgba = np.zeros((N, N, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 128
    save(rgba, tmp_path / "rgba.png")
    out = read_audit_image(tmp_path / "rgba.png")
    assert out.shape == (N, N, 3) and out.dtype == np.uint8 and (out[..., 0] == 200).all()
    deep = np.tile(np.linspace(1000, 3000, N).astype(np.uint16), (N, 1))
    Image.fromarray(deep).save(tmp_path / "deep.png")
    out = read_audit_image(tmp_path / "deep.png")  # rescaled per image: its min -> 0, its max -> 255
    assert out.dtype == np.uint8 and out.shape == (N, N) and (out.min(), out.max()) == (0, 255)
    tifffile.imwrite(tmp_path / "rgb16.tif", np.stack([deep] * 3, axis=-1))
    assert read_audit_image(tmp_path / "rgb16.tif").shape == (N, N, 3)


# ---------------------------------------------------------------------------------------------- metadata
IDS = ["a", "b", "c", "d"]


def test_metadata_without_id_column(tmp_path):
    (tmp_path / "m.csv").write_text("name,scanner\na,x\n")
    with pytest.raises(DatasetError, match=r"m.csv: no column named 'id' \(columns: name, scanner\)\. The first "
                                           r"column must be named id"):
        read_metadata(tmp_path / "m.csv", IDS)


def test_metadata_unknown_ids(tmp_path):
    (tmp_path / "m.csv").write_text("id,scanner\na,x\nb,y\nc,x\nd,y\nzz,x\nqq,y\n")
    with pytest.raises(DatasetError, match=r"2 id\(s\) are not images of the audit \(unknown ids, e.g. zz, qq\)"):
        read_metadata(tmp_path / "m.csv", IDS)


def test_metadata_missing_more_than_half(tmp_path):
    (tmp_path / "ok.csv").write_text("id,scanner\na,x\nb,y\n")  # half missing: allowed, NaN attributes
    meta = read_metadata(tmp_path / "ok.csv", IDS)
    assert list(meta["id"]) == IDS and meta["scanner"].isna().tolist() == [False, False, True, True]
    (tmp_path / "few.csv").write_text("id,scanner\na,x\n")
    with pytest.raises(DatasetError, match=r"few.csv: 3 of 4 images have no line in this CSV"):
        read_metadata(tmp_path / "few.csv", IDS)


def test_metadata_duplicated_ids(tmp_path):
    (tmp_path / "m.csv").write_text("id,scanner\na,x\nb,y\nc,x\nd,y\na.png,z\n")
    with pytest.raises(DatasetError, match=r"1 id\(s\) appear more than once \(e.g. a\)"):
        read_metadata(tmp_path / "m.csv", IDS)


def test_metadata_extension_stripped_and_order_kept(tmp_path):
    (tmp_path / "m.csv").write_text("\ufeffscanner,id,age\nx,d.PNG,40\ny,a.png,NA\nx,b.jpg,31\nz,c,55\n")
    meta = read_metadata(tmp_path / "m.csv", IDS)  # with Excel's byte-order mark
    assert list(meta.columns) == ["id", "scanner", "age"]
    assert list(meta["id"]) == IDS and list(meta["scanner"]) == ["y", "x", "z", "x"]
    assert meta["age"].tolist() == ["NA", "31", "55", "40"]  # "NA" is a value, not a missing cell
    (tmp_path / "n.csv").write_text("id,size\n007,1\n010,2\n")
    assert read_metadata(tmp_path / "n.csv", ["007", "010"])["size"].tolist() == [1, 2]  # ids stay text


# ------------------------------------------------------------------------------------------- fingerprint
def test_fingerprint_changes_when_a_file_changes(tmp_path):
    f = three_folders(tmp_path)
    pairs = pair(f)
    first = folder_fingerprint(pairs)
    assert len(first) == 16 and int(first, 16) >= 0 and folder_fingerprint(pair(f)) == first
    save(disk(1), f["predictions"] / "b.png")  # another prediction of the same name
    st = os.stat(f["predictions"] / "b.png")
    os.utime(f["predictions"] / "b.png", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert folder_fingerprint(pair(f)) != first
