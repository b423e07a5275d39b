"""The 3-D phantom and its nnU-Net test set: shapes, labels, determinism, the simulated model's failure on scanner
B, and a round trip through the 3-D readers. Speed is printed, not asserted (it depends on the CPU)."""
from __future__ import annotations

import json
import time

import numpy as np
import pandas as pd
import pytest

from seg4seg_utils.data.phantoms3d import phantom_volume, simulated_prediction, write_nnunet_phantoms
from seg4seg_utils.data.volumes import check_case, pair_nnunet, read_label_volume, read_volume
from seg4seg_utils.model.volume_metrics import volume_metrics, volume_metrics_table


@pytest.mark.parametrize("scanner", ["A", "B"])
@pytest.mark.parametrize("size", [32, 48])
def test_shapes_labels_and_attributes(size, scanner):
    image, labels, attributes = phantom_volume(size, np.random.default_rng(0), scanner)
    assert image.shape == labels.shape == (size,) * 3
    assert image.dtype == np.float32 and labels.dtype == np.uint8
    assert set(np.unique(labels)) <= {0, 1, 2} and (labels == 1).any() and (labels == 0).any()
    assert attributes["scanner"] == scanner and attributes["organ_volume"] == int((labels == 1).sum())
    assert attributes["has_lesion"] == bool((labels == 2).any())
    assert image[labels == 1].mean() > image[labels == 0].mean() + 0.1  # the organ is visible


def test_lesions_appear_about_half_the_time_and_inside_the_organ():
    cases = [phantom_volume(32, np.random.default_rng(s)) for s in range(40)]
    share = np.mean([a["has_lesion"] for _, _, a in cases])
    assert 0.25 < share < 0.75
    from scipy import ndimage
    for _, labels, a in cases:
        if a["has_lesion"]:  # the lesion never touches the background: it lies inside the organ
            assert not (ndimage.binary_dilation(labels == 2) & (labels == 0)).any()


def test_deterministic_by_seed_and_scanners_differ():
    a = phantom_volume(32, np.random.default_rng(5), "A")
    b = phantom_volume(32, np.random.default_rng(5), "A")
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]
    c = phantom_volume(32, np.random.default_rng(6), "A")
    assert not np.array_equal(a[1], c[1])
    noisy = phantom_volume(32, np.random.default_rng(5), "B")
    assert np.array_equal(noisy[1], a[1])  # the scanner changes how the anatomy looks, not the anatomy
    contrast = [img[lab == 1].mean() - img[lab == 0].mean() for img, lab, _ in (a, noisy)]
    assert contrast[1] < contrast[0]
    with pytest.raises(ValueError, match="scanner"):
        phantom_volume(32, np.random.default_rng(0), "C")


def test_simulated_model_fails_on_scanner_b():
    dice = {"A": [], "B": []}
    for seed in range(4):
        for scanner in "AB":
            _, labels, _ = phantom_volume(40, np.random.default_rng(seed), scanner)
            pred = simulated_prediction(labels, scanner, np.random.default_rng(100 + seed))
            dice[scanner].append(volume_metrics(labels, pred, (1.0, 1.0, 1.0), labels=[1, 2])["dice"])
    assert min(dice["A"]) > 0.9 and max(dice["B"]) < 0.7


def test_write_nnunet_phantoms_reads_back(tmp_path):
    root = tmp_path / "Dataset900_Phantom"
    meta = write_nnunet_phantoms(root, n=6, size=32, seed=3, prevalence_b=0.5, spacing=(0.8, 0.8, 2.0))
    assert list(meta.columns) == ["id", "scanner", "has_lesion", "organ_volume_ml"]
    assert (meta["scanner"] == "B").sum() == 3
    assert pd.read_csv(root / "metadata.csv").equals(meta)
    table, dataset = pair_nnunet(root, None, root / "predictions")
    assert list(table["id"]) == list(meta["id"]) and dataset["label_values"] == [0, 1, 2]
    assert json.loads((root / "dataset.json").read_text())["labels"] == {"background": 0, "organ": 1, "lesion": 2}
    case = table.iloc[0]
    image = read_volume(case["images"][0])
    truth = read_label_volume(case["mask"], dataset["label_values"])
    prediction = read_label_volume(case["prediction"], dataset["label_values"])
    check_case(case["id"], image, truth, prediction)
    assert image.array.shape == (32,) * 3 and image.spacing == pytest.approx((0.8, 0.8, 2.0))
    scores = volume_metrics_table(table, labels=[1, 2]).merge(meta, on="id")
    by_scanner = scores.groupby("scanner")["dice"].mean()
    assert by_scanner["B"] < by_scanner["A"] - 0.2
    assert scores.groupby("scanner")["hd95"].mean()["B"] > scores.groupby("scanner")["hd95"].mean()["A"]
    again = tmp_path / "again"
    write_nnunet_phantoms(again, n=6, size=32, seed=3, prevalence_b=0.5, spacing=(0.8, 0.8, 2.0))
    for sub in ("imagesTs/case_004_0000.nii.gz", "labelsTs/case_004.nii.gz", "predictions/case_004.nii.gz"):
        assert np.array_equal(read_volume(root / sub).array, read_volume(again / sub).array)


def test_timing():
    """Printed, not asserted: one phantom volume at 48^3 and 128^3."""
    for size, repeats in ((48, 10), (128, 2)):
        for scanner in "AB":
            start = time.perf_counter()
            for seed in range(repeats):
                phantom_volume(size, np.random.default_rng(seed), scanner)
            took = (time.perf_counter() - start) / repeats
            print(f"\nphantom_volume {size}^3 scanner {scanner}: {took * 1000:.1f} ms")
