"""The 3-D planted-failure study: the phantom folder is written once with the answer outside it, every seed and
embedding alternative is audited through audit(), the judgement reads the hidden scanner only afterwards, and
the alternatives are cached apart (the default's cache keys unchanged)."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from seg4seg_utils.discovery.embed import EfficientNetLite0Embedder
from seg4seg_utils.discovery.volume_features import central_plane_index, volume_planes
from seg4seg_utils.studies.audit_volumes import VOLUME_PLANES
from seg4seg_utils.studies.volume_study import (PURITY_BAR, default_n_slices, phantom_folder, planted_detection,
                                                study_size, summarise_detection)

N, SIZE, SEEDS, VARIANTS = 24, 32, (0, 1), ("axial3-mean", "axes3-mean")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("volstudy")
    table = planted_detection(root, n_cases=N, size=SIZE, seeds=SEEDS, variants=VARIANTS,
                              embedder=EfficientNetLite0Embedder(), n_jobs=1, per_run=True)
    return root, table


def test_every_seed_and_alternative_is_judged_with_the_hidden_scanner(runs):
    root, table = runs
    assert list(zip(table["variant"], table["seed"])) == [(v, s) for v in VARIANTS for s in SEEDS]
    assert (table["n_slices"] == default_n_slices(N)).all()
    np.testing.assert_allclose(table["purity"], table["focus_b"] / table["focus_size"])
    assert (table["detected"] == (table["purity"] > PURITY_BAR)).all()
    # the planted failure (scanner B, 20 %) is what the default embedding's worst slice holds
    assert table.loc[table["variant"] == "axial3-mean", "detected"].all()


def test_the_answer_stays_outside_the_audited_folder(runs):
    root, _ = runs
    paths = phantom_folder(root, N, SIZE)
    assert paths["answer"].is_file() and not (paths["dataset"] / "metadata.csv").exists()
    assert paths["answer"].parent != paths["dataset"]
    answer = pd.read_csv(paths["answer"])
    assert set(answer["scanner"]) == {"A", "B"}
    before = paths["answer"].stat().st_mtime_ns
    phantom_folder(root, N, SIZE)  # cached: not written again
    assert paths["answer"].stat().st_mtime_ns == before


def test_alternatives_have_their_own_planes_and_cache_keys(runs):
    root, _ = runs
    audits = phantom_folder(root, N, SIZE)["dataset"].parent / "audits"
    default, axes = (json.loads((audits / v / "work" / "dataset" / "dataset.json").read_text())["config"]
                     for v in VARIANTS)
    assert "volume_planes" not in default and default["n_planes"] == 3  # the default's key is unchanged
    assert axes["volume_planes"] == "axes3-mean" and axes["n_planes"] == 3
    names = {v: sorted(p.name for p in (audits / v / "work" / "cache" / "embeddings").glob("*.npy"))
             for v in VARIANTS}
    assert names["axial3-mean"][0].startswith("dataset_test_volume-planes3_")
    assert names["axes3-mean"][0].startswith("dataset_test_volume-axes3-mean_")


def test_summary_counts_detections_with_a_wilson_interval(runs):
    _, table = runs
    summary = summarise_detection(table)
    assert list(summary["variant"]) == list(VARIANTS)
    assert (summary["runs"] == len(SEEDS)).all()
    assert ((summary["low"] <= summary["rate"]) & (summary["rate"] <= summary["high"])).all()
    # a second call reuses every cached audit and returns the same table
    again = planted_detection(runs[0], n_cases=N, size=SIZE, seeds=SEEDS, variants=VARIANTS,
                              embedder=EfficientNetLite0Embedder(), n_jobs=1)
    pd.testing.assert_frame_equal(again, summary)


def test_sizes_per_preset_and_bad_names():
    assert study_size("smoke").n_cases == 24 and len(study_size("smoke").variants) == 2
    assert set(study_size("cpu").variants) == set(VOLUME_PLANES) and len(study_size("cpu").seeds) == 5
    assert study_size("cpu", n_cases=30, size=40).n_cases == 30
    with pytest.raises(ValueError, match="unknown preset"):
        study_size("huge")
    with pytest.raises(ValueError, match="unknown embedding alternative"):
        planted_detection("/nonexistent", variants=("sideways",))


def test_central_plane_index_is_volume_planes_one_plane():
    rng = np.random.default_rng(0)
    roi = np.zeros((12, 10, 14), bool)
    roi[3:8, 2:9, 5:12] = True
    image = rng.normal(size=roi.shape).astype(np.float32)
    for axis in (0, 1, 2):
        i = central_plane_index(roi, axis)
        only_i = np.zeros_like(roi)
        np.moveaxis(only_i, axis, 0)[i] = True  # a ROI on plane i alone: its one plane must be plane i
        assert roi.take(i, axis=axis).any()
        np.testing.assert_array_equal(volume_planes(image, roi, 1, axis=axis)[0],
                                      volume_planes(image, only_i, 1, axis=axis)[0])
    assert central_plane_index(np.zeros((4, 4, 9)), 2) == 4  # empty: the central plane
