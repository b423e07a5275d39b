"""The record format: writing, reading, reuse, atomicity, splits, and every bad input named in issue #2."""
import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from seg4seg_utils.data.records import (
    DatasetError,
    assign_splits,
    build_dataset,
    config_hash,
    read_dataset,
    read_mask,
    validate_dataset,
)


def tiny_dataset(root, n=6, size=(12, 10), config=None):
    """A valid dataset of n samples (two per split) with 0/255 masks."""
    rng = np.random.default_rng(0)

    def build(w):
        for i in range(n):
            img = rng.integers(0, 255, size=size, dtype=np.uint8)
            mask = np.zeros(size, bool)
            mask[2:6, 3:7] = True
            w.add(f"s{i}", ("train", "val", "test")[i % 3], img, mask, "unit", flag=i % 2 == 0)
    return build_dataset(root, config or {"n": n}, build, meta={"kind": "test"})


def test_roundtrip(tmp_path):
    tiny_dataset(tmp_path / "ds")
    t2 = read_dataset(tmp_path / "ds", validate="full")
    assert len(t2) == 6 and t2.meta["split_counts"] == {"train": 2, "val": 2, "test": 2}
    assert t2.attribute_columns == ["flag"]
    assert t2.mask(0).dtype == bool and t2.mask(0).sum() == 16
    assert len(t2.split("test")) == 2
    rows = list(t2)
    assert rows[0][0]["id"] == "s0" and rows[0][1].shape == (12, 10)


def test_reuse_and_no_overwrite(tmp_path):
    t = tiny_dataset(tmp_path / "ds")
    mtime = (tmp_path / "ds" / "samples.csv").stat().st_mtime_ns
    tiny_dataset(tmp_path / "ds")  # same config -> reused, nothing rewritten
    assert (tmp_path / "ds" / "samples.csv").stat().st_mtime_ns == mtime
    with pytest.raises(DatasetError, match="different dataset.*never overwritten"):
        tiny_dataset(tmp_path / "ds", config={"n": 7})
    assert len(read_dataset(tmp_path / "ds")) == len(t)


def test_failed_build_leaves_nothing(tmp_path):
    def build(w):
        w.add("a", "train", np.zeros((4, 4), np.uint8), np.zeros((4, 4), bool), "unit")
        raise RuntimeError("boom")
    with pytest.raises(RuntimeError):
        build_dataset(tmp_path / "ds", {"x": 1}, build)
    assert list(tmp_path.iterdir()) == []


def test_referenced_files_are_not_copied(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    Image.fromarray(np.full((5, 5), 7, np.uint8)).save(raw / "img.png")
    Image.fromarray(np.full((5, 5), 255, np.uint8)).save(raw / "mask.png")
    before = (raw / "img.png").read_bytes()

    def build(w):
        w.add("a", "test", raw / "img.png", raw / "mask.png", "raw")
    t = build_dataset(tmp_path / "out" / "ds", {"ref": 1}, build)
    assert t.df["image"].iat[0] == "../../raw/img.png"
    assert (raw / "img.png").read_bytes() == before
    assert not list((tmp_path / "out" / "ds" / "images").iterdir())
    assert t.image(0)[0, 0] == 7


def corrupt(tmp_path, how):
    tiny_dataset(tmp_path / "ds")
    root = tmp_path / "ds"
    df = pd.read_csv(root / "samples.csv", dtype=str)
    if how == "missing file":
        (root / "images" / "s1.png").unlink()
    elif how == "unreadable image":
        (root / "images" / "s1.png").write_bytes(b"not a png at all")
    elif how == "size mismatch":
        Image.fromarray(np.zeros((12, 11), np.uint8)).save(root / "masks" / "s1.png")
    elif how == "non-binary mask":
        Image.fromarray(np.arange(120, dtype=np.uint8).reshape(12, 10)).save(root / "masks" / "s1.png")
    elif how == "empty split":
        df.loc[df["split"] == "val", "split"] = "train"
        df.to_csv(root / "samples.csv", index=False)
    elif how == "duplicate id":
        df.loc[1, "id"] = "s0"
        df.to_csv(root / "samples.csv", index=False)
    elif how == "missing column":
        df.drop(columns="mask").to_csv(root / "samples.csv", index=False)
    elif how == "unknown split":
        df.loc[0, "split"] = "holdout"
        df.to_csv(root / "samples.csv", index=False)
    return root


@pytest.mark.parametrize("how,pattern", [
    ("missing file", r"s1\.png: image of sample 's1' is missing"),
    ("unreadable image", r"s1\.png: cannot be read as an image"),
    ("size mismatch", r"s1\.png: mask of sample 's1' is 11x12 .* image s1\.png is 10x12"),
    ("non-binary mask", r"s1\.png: mask is not binary \(120 distinct values"),
    ("empty split", r"samples\.csv: split 'val' is empty"),
    ("duplicate id", r"samples\.csv: duplicate sample id\(s\) \['s0'\]"),
    ("missing column", r"samples\.csv: missing column\(s\) \['mask'\]"),
    ("unknown split", r"samples\.csv: unknown split value\(s\) \['holdout'\]"),
])
def test_bad_inputs_name_file_and_problem(tmp_path, how, pattern):
    root = corrupt(tmp_path, how)
    with pytest.raises(DatasetError, match=pattern):
        read_dataset(root, validate="full")


def test_missing_dataset_folder_says_what_to_do(tmp_path):
    with pytest.raises(DatasetError, match="folder does not exist.*seg4seg_utils run"):
        read_dataset(tmp_path / "nope")


def test_files_level_catches_size_mismatch_without_decoding(tmp_path):
    root = corrupt(tmp_path, "size mismatch")
    t = read_dataset(root, validate="none")
    with pytest.raises(DatasetError, match="same size"):
        validate_dataset(t, level="files")


def test_read_mask_accepts_0_1_and_rejects_colour(tmp_path):
    Image.fromarray(np.eye(4, dtype=np.uint8)).save(tmp_path / "m01.png")
    assert read_mask(tmp_path / "m01.png").sum() == 4
    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[0, 0] = (255, 0, 0)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    with pytest.raises(DatasetError, match="single-channel"):
        read_mask(tmp_path / "rgb.png")


def test_assign_splits_fractions_and_determinism():
    ids = [f"x{i:03d}" for i in range(999)]
    s = assign_splits(ids, seed=3)
    assert (s.count("train"), s.count("val"), s.count("test")) == (639, 159, 201)
    assert s == assign_splits(ids, seed=3)
    assert s != assign_splits(ids, seed=4)
    # independent of listing order
    mapping = dict(zip(ids, s))
    rev = assign_splits(ids[::-1], seed=3)
    assert all(mapping[i] == r for i, r in zip(ids[::-1], rev))
    with pytest.raises(ValueError, match="sum"):
        assign_splits(ids, fractions=(0.5, 0.5, 0.5))


def test_config_hash_is_order_independent():
    assert config_hash({"a": 1, "b": [1, 2]}) == config_hash({"b": [1, 2], "a": 1})
    assert config_hash({"a": 1}) != config_hash({"a": 2})


def test_meta_written(tmp_path):
    tiny_dataset(tmp_path / "ds")
    meta = json.loads((tmp_path / "ds" / "dataset.json").read_text())
    assert meta["kind"] == "test" and meta["n_samples"] == 6 and meta["config"] == {"n": 6}
