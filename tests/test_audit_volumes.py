"""``seg4seg audit`` on 3-D volumes: an nnU-Net phantom test set in, the scanner-B failure found, the same report
out; bad volumes stop the CLI with the case named; a MONAI datalist pairs the same cases."""
from __future__ import annotations

import json
import shutil
from html.parser import HTMLParser
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from seg4seg_utils.cli import main
from seg4seg_utils.data.phantoms3d import write_nnunet_phantoms
from seg4seg_utils.data.records import read_image, read_mask
from seg4seg_utils.discovery.embed import EfficientNetLite0Embedder
from seg4seg_utils.discovery.volume_features import intensity_window, volume_planes
from seg4seg_utils.studies.audit_volumes import N_PLANES, central_plane_index, is_volume_input


class _Sections(HTMLParser):
    def __init__(self):
        super().__init__()
        self.sections, self.galleries, self.external = [], [], []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "section":
            self.sections.append(a.get("id"))
        if tag == "div" and "s4s-gallery" in (a.get("class") or ""):
            self.galleries.append(a.get("data-slice"))
        for key in ("src", "href"):
            if (a.get(key) or "").startswith(("http:", "https:", "//")):
                self.external.append(a[key])

N, SIZE = 30, 32


@pytest.fixture(scope="module")
def embedder():
    return EfficientNetLite0Embedder()


@pytest.fixture()
def patched(monkeypatch, embedder):
    import seg4seg_utils.discovery.embed as embed_mod

    monkeypatch.setattr(embed_mod, "default_embedder", lambda clip_weights=None: embedder)


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    root = tmp_path_factory.mktemp("vol") / "Dataset900_Phantom"
    write_nnunet_phantoms(root, N, size=SIZE, seed=0, prevalence_b=0.2)
    (root / "metadata.csv").rename(root.parent / "answer.csv")  # read only after the audit, for evaluation
    return root


def _argv(root: Path, out: Path, images: Path | None = None, predictions: Path | None = None) -> list[str]:
    return ["audit", "--images", str(images or root / "imagesTs"), "--masks", str(root / "labelsTs"),
            "--predictions", str(predictions or root / "predictions"), "--out", str(out), "--n-slices", "3",
            "--no-progress", "--jobs", "1"]


@pytest.fixture(scope="module")
def audited(phantoms, embedder, tmp_path_factory):
    import seg4seg_utils.discovery.embed as embed_mod

    mp = pytest.MonkeyPatch()
    mp.setattr(embed_mod, "default_embedder", lambda clip_weights=None: embedder)
    out = tmp_path_factory.mktemp("vol_out") / "audit"
    try:
        code = main(_argv(phantoms, out))
    finally:
        mp.undo()
    return out, code


def test_volume_inputs_are_detected(phantoms, tmp_path):
    assert is_volume_input(phantoms / "imagesTs", None, None)
    assert is_volume_input(phantoms, None, None)  # the raw dataset folder
    (tmp_path / "pngs").mkdir()
    assert not is_volume_input(tmp_path / "pngs", tmp_path / "pngs", tmp_path / "pngs")


def test_cli_audits_volumes_and_finds_scanner_b(audited, phantoms):
    out, code = audited
    assert code == 0
    for name in ("report.html", "per_image.csv", "slices.csv", "slice_probabilities.csv", "descriptor_contrast.csv",
                 "n_slices_bic.csv", "timing.csv", "audit.json"):
        assert (out / name).is_file(), name
    per = pd.read_csv(out / "per_image.csv", dtype={"id": str})
    assert len(per) == N and per["id"].is_unique
    assert {"dice", "iou", "ppv", "npv", "surface_dice", "hd95", "dice_1", "dice_2", "contrast", "noise",
            "volume_ml", "pred_volume_ratio", "slice", "slice_probability"} <= set(per.columns)
    record = json.loads((out / "audit.json").read_text())
    assert record["status"] == "done" and record["inputs"]["kind"] == "volumes" and record["n_slices"] == 3
    # evaluation only: the hidden answer is read after the audit
    answer = pd.read_csv(phantoms.parent / "answer.csv", dtype={"id": str}).set_index("id")
    slices = pd.read_csv(out / "slices.csv")
    bad = slices[slices["problematic"]].sort_values("mean_perf")
    assert len(bad), record["verdicts"]
    members = per.loc[per["slice"] == int(bad["slice"].iat[0]), "id"]
    assert (answer.loc[members, "scanner"] == "B").mean() > 0.5, answer.loc[members, "scanner"].tolist()
    assert any("volumes" in v for v in record["verdicts"])


def test_volume_report_has_the_same_sections(audited):
    out, _ = audited
    html = (out / "report.html").read_text()
    s = _Sections()
    s.feed(html)
    assert s.sections == ["verdict", "slices", "map", "galleries", "n-slices", "method"]
    assert s.galleries and not s.external
    assert "central ground-truth plane" in html and f"{N} volumes" in html


def test_dataset_holds_the_central_plane_and_the_embedding_planes(audited, phantoms):
    out, _ = audited
    ds = out / "work" / "dataset"
    case = "case_000"
    truth = np.asarray(nib.load(phantoms / "labelsTs" / f"{case}.nii.gz").dataobj)
    pred = np.asarray(nib.load(phantoms / "predictions" / f"{case}.nii.gz").dataobj)
    image = nib.load(phantoms / "imagesTs" / f"{case}_0000.nii.gz").get_fdata(dtype=np.float32)
    i = central_plane_index(truth)
    assert truth[..., i].any()
    assert np.array_equal(read_image(ds / "images" / f"{case}.png"), volume_planes(image, truth, 1)[0])
    assert np.array_equal(read_mask(ds / "masks" / f"{case}.png", "multiclass"), truth[..., i])
    assert np.array_equal(read_mask(ds / "predictions" / f"{case}.png", "multiclass"), pred[..., i])
    lo, hi = intensity_window(image)
    expected = np.round(np.clip((image[..., i] - lo) / (hi - lo), 0, 1) * 255).astype(np.uint8)
    assert np.array_equal(read_image(ds / "images" / f"{case}.png"), expected)  # the same plane as the masks
    assert len(list((ds / "planes").glob(f"{case}_*.png"))) == N_PLANES
    assert len(list((out / "work" / "cache" / "embeddings").glob("*.npy"))) == 1


def test_prediction_with_another_spacing_exits_2_naming_the_case(phantoms, tmp_path, patched, capsys):
    preds = tmp_path / "predictions"
    shutil.copytree(phantoms / "predictions", preds)
    bad = preds / "case_004.nii.gz"
    img = nib.load(bad)
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj), np.diag([1.5, 1.0, 1.0, 1.0])), bad)
    assert main(_argv(phantoms, tmp_path / "out", predictions=preds)) == 2
    err = capsys.readouterr().err
    assert "case_004" in err and "spacing" in err


def test_label_outside_dataset_json_exits_2(phantoms, tmp_path, patched, capsys):
    preds = tmp_path / "predictions"
    shutil.copytree(phantoms / "predictions", preds)
    bad = preds / "case_007.nii.gz"
    img = nib.load(bad)
    arr = np.asarray(img.dataobj).copy()
    arr[0, 0, 0] = 5
    nib.save(nib.Nifti1Image(arr, img.affine), bad)
    assert main(_argv(phantoms, tmp_path / "out", predictions=preds)) == 2
    err = capsys.readouterr().err
    assert "case_007" in err and "5" in err and "dataset.json" in err


def test_datalist_pairs_the_same_cases(phantoms, tmp_path, patched, audited):
    entries = [{"image": f"imagesTs/case_{i:03d}_0000.nii.gz", "label": f"labelsTs/case_{i:03d}.nii.gz"}
               for i in range(N)]
    datalist = phantoms / "datalist.json"
    datalist.write_text(json.dumps({"validation": entries}))
    try:
        out = tmp_path / "out"
        code = main(["audit", "--datalist", str(datalist), "--datalist-key", "validation", "--predictions",
                     str(phantoms / "predictions"), "--out", str(out), "--n-slices", "3", "--no-progress",
                     "--jobs", "2"])  # worker processes: the same values as the one-process audit
    finally:
        datalist.unlink()
    assert code == 0
    first = pd.read_csv(audited[0] / "per_image.csv", dtype={"id": str}).set_index("id").sort_index()
    again = pd.read_csv(out / "per_image.csv", dtype={"id": str}).set_index("id").sort_index()
    assert list(again.index) == list(first.index)
    assert np.allclose(again["dice"], first["dice"]) and np.allclose(again["hd95"], first["hd95"])


def test_rerun_reuses_the_cached_volumes(audited, phantoms, patched):
    out, _ = audited
    before = (out / "per_image.csv").read_text()
    assert main(_argv(phantoms, out)) == 0
    assert (out / "per_image.csv").read_text() == before
    assert len(list((out / "work" / "cache" / "embeddings").glob("*.npy"))) == 1
    timings = json.loads((out / "audit.json").read_text())["timings_s"]
    assert timings["metrics and descriptors"] < 1.0 and timings["embedding"] < 1.0


def test_plain_nifti_folders_and_nnunet_pair_alike(phantoms, tmp_path):
    from seg4seg_utils.studies.audit_volumes import pair_volume_inputs

    plain = tmp_path / "scans"  # no dataset.json beside it: plain folders, labels not bounded
    shutil.copytree(phantoms / "imagesTs", plain)
    a = pair_volume_inputs(plain, phantoms / "labelsTs", phantoms / "predictions")
    b = pair_volume_inputs(phantoms / "imagesTs", None, phantoms / "predictions")
    assert list(a.pairs["id"]) == list(b.pairs["id"]) and len(a.pairs) == N
    assert a.label_values is None and b.label_values == [0, 1, 2] and a.channel == b.channel == 0


def test_cli_needs_images_or_a_datalist(tmp_path, capsys):
    assert main(["audit", "--predictions", str(tmp_path), "--out", str(tmp_path / "out")]) == 2
    assert "--datalist" in capsys.readouterr().err


def test_multichannel_cases_show_and_embed_the_preferred_channel(phantoms, tmp_path):
    """dataset.json names channels ADC, T2: the T2 channel (1) is the one pictured and embedded."""
    from seg4seg_utils.studies.audit_volumes import VolumeInputs, score_and_describe_volumes

    rows = []
    for case in ("case_000", "case_001"):
        img = nib.load(phantoms / "imagesTs" / f"{case}_0000.nii.gz")
        noise = np.random.default_rng(0).normal(size=img.shape).astype(np.float32)
        files = [tmp_path / f"{case}_0000.nii.gz", tmp_path / f"{case}_0001.nii.gz"]
        nib.save(nib.Nifti1Image(noise, img.affine), files[0])
        nib.save(nib.Nifti1Image(img.get_fdata(dtype=np.float32), img.affine), files[1])
        rows.append({"id": case, "images": [str(f) for f in files],
                     "mask": str(phantoms / "labelsTs" / f"{case}.nii.gz"),
                     "prediction": str(phantoms / "predictions" / f"{case}.nii.gz")})
    vin = VolumeInputs(pd.DataFrame(rows), {}, [0, 1, 2], channel=1, channel_names=["ADC", "T2"])
    table, per = score_and_describe_volumes(vin, tmp_path / "ds", {"test": 1}, progress=False, n_jobs=1)
    assert list(per["id"]) == ["case_000", "case_001"] and len(table) == 2
    image = nib.load(phantoms / "imagesTs" / "case_000_0000.nii.gz").get_fdata(dtype=np.float32)
    truth = np.asarray(nib.load(phantoms / "labelsTs" / "case_000.nii.gz").dataobj)
    assert np.array_equal(read_image(tmp_path / "ds" / "images" / "case_000.png"), volume_planes(image, truth, 1)[0])
