"""The 3-D input layer: NIfTI reading (orientation, dimensions, label values), geometry checks, and pairing of
the nnU-Net v2 layout, MONAI datalists and plain folders. Every file is a tiny NIfTI written into tmp_path."""
from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from seg4seg_utils.data.records import DatasetError
from seg4seg_utils.data.volumes import (
    Volume,
    case_name,
    check_case,
    embedding_channel,
    pair_datalist,
    pair_nnunet,
    pair_volume_folders,
    read_dataset_json,
    read_image_channels,
    read_label_volume,
    read_volume,
)

SHAPE = (6, 5, 4)


def _write(path: Path, arr: np.ndarray, spacing=(1.0, 1.0, 1.0), affine: np.ndarray | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(arr), np.diag([*spacing, 1.0]) if affine is None else affine), path)
    return path


def _labels(seed: int = 0, shape=SHAPE) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 3, shape).astype(np.uint8)


def _image(seed: int = 0, shape=SHAPE) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def _nnunet(root: Path, cases=("a", "b"), channels=("CT",), labels=None) -> Path:
    """An nnU-Net v2 raw folder with predictions in root/pred."""
    for case in cases:
        for c in range(len(channels)):
            _write(root / "imagesTs" / f"{case}_{c:04d}.nii.gz", _image(c))
        _write(root / "labelsTs" / f"{case}.nii.gz", _labels())
        _write(root / "pred" / f"{case}.nii.gz", _labels(1))
    (root / "dataset.json").write_text(json.dumps({
        "channel_names": {str(i): n for i, n in enumerate(channels)},
        "labels": labels or {"background": 0, "liver": 1, "tumour": 2}, "numTraining": 0,
        "file_ending": ".nii.gz"}))
    return root


# ------------------------------------------------------------------------------------------------ reading
def test_read_volume_gives_float32_spacing_affine_and_path(tmp_path):
    arr = _image()
    p = _write(tmp_path / "x.nii.gz", arr, spacing=(0.8, 1.0, 2.5))
    vol = read_volume(p)
    assert vol.array.dtype == np.float32 and vol.array.shape == SHAPE and vol.shape == SHAPE
    assert np.array_equal(vol.array, arr)
    assert vol.spacing == pytest.approx((0.8, 1.0, 2.5))
    assert np.allclose(vol.affine, np.diag([0.8, 1.0, 2.5, 1.0])) and vol.path == str(p)
    assert case_name("case_1_0000.NII.GZ") == "case_1_0000" and case_name("x.nii") == "x"
    assert case_name("x.png") is None


def test_same_volume_in_two_orientations_reads_back_identically(tmp_path):
    arr, lab = _image(), _labels()
    spacing = (0.8, 1.0, 2.5)
    canonical = _write(tmp_path / "ras.nii.gz", arr, spacing)
    _write(tmp_path / "ras_lab.nii.gz", lab, spacing)
    img = nib.load(canonical)
    # the same voxels stored Posterior/Superior/Left-first, with the affine that maps them to the same world points
    turn = nib.orientations.ornt_transform(nib.io_orientation(img.affine), nib.orientations.axcodes2ornt("PSL"))
    other = img.as_reoriented(turn)
    other_lab = nib.Nifti1Image(lab, img.affine).as_reoriented(turn)
    assert other.shape == (5, 4, 6) and nib.aff2axcodes(other.affine) == ("P", "S", "L")
    nib.save(other, tmp_path / "psl.nii.gz")
    nib.save(nib.Nifti1Image(np.asarray(other_lab.dataobj), other_lab.affine), tmp_path / "psl_lab.nii.gz")
    a, b = read_volume(canonical), read_volume(tmp_path / "psl.nii.gz")
    assert np.array_equal(a.array, b.array) and a.spacing == pytest.approx(b.spacing)
    assert b.spacing == pytest.approx(spacing)  # permuted back with the array
    assert np.allclose(a.affine, b.affine, atol=1e-5)  # float32 header storage: 6e-8 mm apart
    la, lb = read_label_volume(tmp_path / "ras_lab.nii.gz"), read_label_volume(tmp_path / "psl_lab.nii.gz")
    assert np.array_equal(la.array, lb.array) and np.array_equal(la.array, lab)
    check_case("c", b, la, lb)  # stored in different orientations, on one grid after reorientation


def test_4d_where_3d_expected_is_an_error_naming_the_file(tmp_path):
    p = _write(tmp_path / "four.nii.gz", np.zeros((*SHAPE, 2), np.float32))
    with pytest.raises(DatasetError, match=r"four\.nii\.gz.*4-D.*3-D volume is expected"):
        read_volume(p)
    with pytest.raises(DatasetError, match=r"four\.nii\.gz.*4-D"):
        read_label_volume(p)
    vol = read_volume(p, channels=True)  # decathlon multi-modal images: channels-first
    assert vol.array.shape == (2, *SHAPE) and vol.shape == SHAPE


def test_trailing_length_one_axis_is_dropped_and_2d_is_rejected(tmp_path):
    arr = _image()
    vol = read_volume(_write(tmp_path / "one.nii.gz", arr[..., None]))
    assert vol.array.shape == SHAPE and np.array_equal(vol.array, arr)
    lab = read_label_volume(_write(tmp_path / "lab.nii.gz", _labels()[..., None]))
    assert lab.array.shape == SHAPE
    with pytest.raises(DatasetError, match=r"flat\.nii\.gz.*2-D"):
        read_volume(_write(tmp_path / "flat.nii.gz", np.zeros((6, 5), np.float32)))


def test_label_values_outside_dataset_json_are_listed(tmp_path):
    lab = _labels()
    lab[0, 0, 0], lab[1, 0, 0] = 7, 9
    p = _write(tmp_path / "bad.nii.gz", lab)
    with pytest.raises(DatasetError, match=r"bad\.nii\.gz.*7, 9.*\[0, 1, 2\]"):
        read_label_volume(p, labels={0, 1, 2})
    assert read_label_volume(p).array.max() == 9  # no label set: any whole number is fine


def test_label_maps_must_hold_whole_numbers(tmp_path):
    ok = read_label_volume(_write(tmp_path / "f.nii.gz", _labels().astype(np.float32)))
    assert ok.array.dtype == np.uint8 and np.array_equal(ok.array, _labels())
    big = _labels().astype(np.uint16) * 300
    assert read_label_volume(_write(tmp_path / "u16.nii.gz", big)).array.dtype == np.uint16
    with pytest.raises(DatasetError, match=r"soft\.nii\.gz.*non-integer.*Threshold"):
        read_label_volume(_write(tmp_path / "soft.nii.gz", np.full(SHAPE, 0.5, np.float32)))
    with pytest.raises(DatasetError, match=r"neg\.nii\.gz.*from -1"):
        read_label_volume(_write(tmp_path / "neg.nii.gz", -np.ones(SHAPE, np.int16)))


def test_missing_and_non_nifti_files_are_named(tmp_path):
    with pytest.raises(DatasetError, match=r"nope\.nii\.gz.*missing"):
        read_volume(tmp_path / "nope.nii.gz")
    (tmp_path / "x.nrrd").write_bytes(b"NRRD0004")
    with pytest.raises(DatasetError, match=r"x\.nrrd.*not a NIfTI.*SimpleITK"):
        read_volume(tmp_path / "x.nrrd")
    (tmp_path / "broken.nii.gz").write_bytes(b"not gzip")
    with pytest.raises(DatasetError, match=r"broken\.nii\.gz"):
        read_volume(tmp_path / "broken.nii.gz")


def test_read_image_channels_stacks_and_checks_the_grid(tmp_path):
    a = _write(tmp_path / "c_0000.nii.gz", _image(0))
    b = _write(tmp_path / "c_0001.nii.gz", _image(1))
    vol = read_image_channels([a, b])
    assert vol.array.shape == (2, *SHAPE) and np.array_equal(vol.array[1], _image(1)) and vol.path == str(a)
    assert read_image_channels(a).array.shape == SHAPE
    c = _write(tmp_path / "c_0002.nii.gz", _image(2), spacing=(1, 1, 2))
    with pytest.raises(DatasetError, match=r"c_0002\.nii\.gz.*spacing.*c_0000\.nii\.gz"):
        read_image_channels([a, c])


# ----------------------------------------------------------------------------------------------- geometry
def _vol(tmp_path: Path, name: str, spacing=(1.0, 1.0, 1.0), shape=SHAPE, affine=None, label=True) -> Volume:
    p = _write(tmp_path / f"{name}.nii.gz", _labels(shape=shape) if label else _image(shape=shape), spacing, affine)
    return read_label_volume(p) if label else read_volume(p)


def test_check_case_passes_on_one_grid(tmp_path):
    check_case("c1", _vol(tmp_path, "img", label=False), _vol(tmp_path, "gt"), _vol(tmp_path, "pr"))


def test_check_case_shape_mismatch(tmp_path):
    image, truth = _vol(tmp_path, "img", label=False), _vol(tmp_path, "gt")
    with pytest.raises(DatasetError, match=r"c1: the prediction .*pr\.nii\.gz has shape \(6, 5, 3\) but the image "
                                           r".*img\.nii\.gz has \(6, 5, 4\)"):
        check_case("c1", image, truth, _vol(tmp_path, "pr", shape=(6, 5, 3)))


def test_check_case_spacing_mismatch(tmp_path):
    image, truth = _vol(tmp_path, "img", label=False), _vol(tmp_path, "gt")
    with pytest.raises(DatasetError, match=r"c1: the prediction .*pr\.nii\.gz has spacing \(1, 1, 2\) mm but the "
                                           r"image .*img\.nii\.gz has \(1, 1, 1\) mm.*resample"):
        check_case("c1", image, truth, _vol(tmp_path, "pr", spacing=(1.0, 1.0, 2.0)))
    check_case("c1", image, truth, _vol(tmp_path, "pr2", spacing=(1.0, 1.0, 1.0004)))  # within atol


def test_check_case_affine_mismatch(tmp_path):
    image, prediction = _vol(tmp_path, "img", label=False), _vol(tmp_path, "pr")
    shifted = np.diag([1.0, 1.0, 1.0, 1.0])
    shifted[:3, 3] = (10.0, 0.0, 0.0)
    with pytest.raises(DatasetError, match=r"c1: the ground truth .*gt\.nii\.gz has origin \(10, 0, 0\) mm but the "
                                           r"image .*img\.nii\.gz has \(0, 0, 0\) mm"):
        check_case("c1", image, _vol(tmp_path, "gt", affine=shifted), prediction)


# ------------------------------------------------------------------------------------------------ nnU-Net
def test_pair_nnunet_pairs_channels_and_parses_dataset_json(tmp_path):
    root = _nnunet(tmp_path / "Dataset001", channels=("T2", "ADC"))
    (root / "pred" / "plans.json").write_text("{}")  # nnU-Net's own files beside the predictions are ignored
    (root / "pred" / "a.npz").write_bytes(b"")
    table, dataset = pair_nnunet(root, None, root / "pred")
    assert list(table.columns) == ["id", "images", "mask", "prediction"] and list(table["id"]) == ["a", "b"]
    assert [Path(p).name for p in table.loc[0, "images"]] == ["a_0000.nii.gz", "a_0001.nii.gz"]
    assert Path(table.loc[1, "mask"]).parent.name == "labelsTs" and Path(table.loc[1, "prediction"]).name == "b.nii.gz"
    assert dataset["channel_names"] == ["T2", "ADC"] and dataset["file_ending"] == ".nii.gz"
    assert dataset["labels"] == {"background": 0, "liver": 1, "tumour": 2} and dataset["label_values"] == [0, 1, 2]
    # the imagesTs folder itself works too (dataset.json found in its parent), labels given explicitly
    again, _ = pair_nnunet(root / "imagesTs", root / "labelsTs", root / "pred")
    assert again.equals(table)


def test_pair_nnunet_missing_channel(tmp_path):
    root = _nnunet(tmp_path / "d", channels=("T2", "ADC"))
    (root / "imagesTs" / "b_0001.nii.gz").unlink()
    with pytest.raises(DatasetError, match=r"1 channel file\(s\) are missing .*b_0001.*T2, ADC"):
        pair_nnunet(root, None, root / "pred")


def test_pair_nnunet_missing_prediction_and_extra_file(tmp_path):
    root = _nnunet(tmp_path / "d")
    (root / "pred" / "b.nii.gz").unlink()
    _write(root / "labelsTs" / "zzz.nii.gz", _labels())
    with pytest.raises(DatasetError) as err:
        pair_nnunet(root, None, root / "pred")
    assert "1 case(s) have no prediction" in str(err.value) and "b_0000.nii.gz" in str(err.value)
    assert "1 mask file(s)" in str(err.value) and "zzz.nii.gz" in str(err.value)


def test_pair_nnunet_names_without_channel_suffix_and_no_dataset_json(tmp_path):
    root = _nnunet(tmp_path / "d")
    _write(root / "imagesTs" / "c.nii.gz", _image())
    with pytest.raises(DatasetError, match=r"lack the channel suffix _0000 \(e\.g\. c\.nii\.gz\)"):
        pair_nnunet(root, None, root / "pred")
    (root / "dataset.json").unlink()
    with pytest.raises(DatasetError, match="no dataset.json"):
        pair_nnunet(root, None, root / "pred")


def test_read_dataset_json_v1_regions_and_file_ending(tmp_path):
    p = tmp_path / "dataset.json"
    p.write_text(json.dumps({"modality": {"0": "FLAIR", "1": "T1w"}, "labels": {"0": "background", "1": "edema"}}))
    parsed = read_dataset_json(p)
    assert parsed["channel_names"] == ["FLAIR", "T1w"] and parsed["labels"] == {"background": 0, "edema": 1}
    p.write_text(json.dumps({"channel_names": {"0": "T1"}, "labels": {"background": 0, "whole": [1, 2, 3],
                                                                     "core": [2, 3]}}))
    assert read_dataset_json(p)["label_values"] == [0, 1, 2, 3]
    p.write_text(json.dumps({"channel_names": {"0": "T1"}, "labels": {"background": 0}, "file_ending": ".mha"}))
    with pytest.raises(DatasetError, match=r"dataset\.json.*'\.mha'.*NIfTI"):
        read_dataset_json(p)
    p.write_text("{not json")
    with pytest.raises(DatasetError, match=r"dataset\.json.*JSON"):
        read_dataset_json(p)


# ----------------------------------------------------------------------------------------------- datalists
def test_pair_datalist_relative_paths_and_0000_stripping(tmp_path):
    data = tmp_path / "data"
    _write(data / "img" / "a_0000.nii.gz", _image())
    _write(data / "img" / "b.nii.gz", _image())
    _write(data / "img" / "b_t2.nii.gz", _image())
    for case in ("a", "b"):
        _write(data / "lab" / f"{case}.nii.gz", _labels())
        _write(tmp_path / "pred" / f"{case}.nii.gz", _labels())
    _write(tmp_path / "pred" / "other.nii.gz", _labels())  # a case of another split: ignored
    lists = tmp_path / "lists"
    lists.mkdir()
    entries = [{"image": "../data/img/a_0000.nii.gz", "label": "../data/lab/a.nii.gz"},
               {"image": ["../data/img/b.nii.gz", "../data/img/b_t2.nii.gz"], "label": "../data/lab/b.nii.gz"}]
    (lists / "datalist.json").write_text(json.dumps({"training": [], "validation": entries}))
    table = pair_datalist(lists / "datalist.json", tmp_path / "pred", key="validation")
    assert list(table["id"]) == ["a", "b"] and list(table.columns) == ["id", "images", "mask", "prediction"]
    assert [Path(p).name for p in table.loc[1, "images"]] == ["b.nii.gz", "b_t2.nii.gz"]
    assert Path(table.loc[0, "prediction"]).name == "a.nii.gz"
    # the same entries relative to base_dir
    (lists / "flat.json").write_text(json.dumps({"test": [{k: v.replace("../data/", "") if isinstance(v, str) else
                                                           [x.replace("../data/", "") for x in v]
                                                           for k, v in e.items()} for e in entries]}))
    assert pair_datalist(lists / "flat.json", tmp_path / "pred", base_dir=data).equals(table)
    with pytest.raises(DatasetError, match=r"no list 'test' \(its keys: training, validation\)"):
        pair_datalist(lists / "datalist.json", tmp_path / "pred")


def test_pair_datalist_reports_missing_label_file_and_prediction(tmp_path):
    _write(tmp_path / "a.nii.gz", _image())
    _write(tmp_path / "b.nii.gz", _image())
    _write(tmp_path / "pred" / "a.nii.gz", _labels())
    (tmp_path / "dl.json").write_text(json.dumps({"test": [
        {"image": "a.nii.gz", "label": "gone.nii.gz"}, {"image": "b.nii.gz", "label": "a.nii.gz"},
        "c.nii.gz"]}))
    with pytest.raises(DatasetError) as err:
        pair_datalist(tmp_path / "dl.json", tmp_path / "pred")
    msg = str(err.value)
    assert "1 entries have no label (e.g. c.nii.gz)" in msg and "gone.nii.gz" in msg
    assert "1 cases have no prediction" in msg and "(e.g. b)" in msg


# ----------------------------------------------------------------------------------------------- folders
def test_pair_volume_folders_plain_and_with_channels(tmp_path):
    for case in ("p1", "p2"):
        _write(tmp_path / "img" / f"{case}.nii", _image())
        _write(tmp_path / "gt" / f"{case}.nii.gz", _labels())
        _write(tmp_path / "pr" / f"{case}.nii.gz", _labels())
    table = pair_volume_folders(tmp_path / "img", tmp_path / "gt", tmp_path / "pr")
    assert list(table["id"]) == ["p1", "p2"] and [len(x) for x in table["images"]] == [1, 1]
    for case in ("q1", "q2"):
        for c in range(2):
            _write(tmp_path / "img2" / f"{case}_{c:04d}.nii.gz", _image(c))
        _write(tmp_path / "gt2" / f"{case}.nii.gz", _labels())
        _write(tmp_path / "pr2" / f"{case}.nii.gz", _labels())
    table = pair_volume_folders(tmp_path / "img2", tmp_path / "gt2", tmp_path / "pr2")
    assert list(table["id"]) == ["q1", "q2"]
    assert [Path(p).name for p in table.loc[0, "images"]] == ["q1_0000.nii.gz", "q1_0001.nii.gz"]


def test_pair_volume_folders_unmatched_files(tmp_path):
    for case in ("p1", "p2"):
        _write(tmp_path / "img" / f"{case}_0000.nii.gz", _image())
        _write(tmp_path / "pr" / f"{case}.nii.gz", _labels())
    _write(tmp_path / "gt" / "p1.nii.gz", _labels())
    _write(tmp_path / "pr" / "extra.nii.gz", _labels())
    with pytest.raises(DatasetError) as err:
        pair_volume_folders(tmp_path / "img", tmp_path / "gt", tmp_path / "pr")
    msg = str(err.value)
    assert "1 case(s) have no ground truth" in msg and "p2_0000.nii.gz" in msg
    assert "1 prediction file(s)" in msg and "extra.nii.gz" in msg
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "x.mha").write_bytes(b"")
    with pytest.raises(DatasetError, match=r"no NIfTI .*x\.mha.*SimpleITK"):
        pair_volume_folders(tmp_path / "empty", tmp_path / "gt", tmp_path / "pr")


# ---------------------------------------------------------------------------------------------- channels
@pytest.mark.parametrize("names, expected", [
    (["CT"], 0), (["T2", "ADC"], 0), (["ADC", "T2w"], 1), (["FLAIR", "T1w", "t1gd", "T2w"], 2),
    (["t2f", "t1n", "t2w"], 1), (["DWI", "ADC"], 0), ({"0": "PET", "1": "CT"}, 1), (["T2", "FLAIR"], 0),
])
def test_embedding_channel(names, expected):
    assert embedding_channel(names) == expected
