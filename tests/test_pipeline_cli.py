"""The README's main job on the smoke preset, through the same CLI entry point `make run` uses."""
import json

import pandas as pd
import pytest

from seg4seg_utils.cli import main
from seg4seg_utils.data.inject import ALL_CASES
from seg4seg_utils.data.records import read_dataset


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("job")
    code = main(["run", "--preset", "smoke", "--data", str(root / "data"), "--results", str(root / "results"),
                 "--until", "data", "--no-progress"])
    return code, root


def test_main_job_writes_datasets_and_figures(smoke_run):
    code, root = smoke_run
    assert code == 0
    out = root / "results" / "smoke" / "data"
    for name in ("summary.md", "phantom_gallery.png", "injection_gallery.png", "datasets.csv", "environment.json"):
        assert (out / name).stat().st_size > 0, name
    counts = pd.read_csv(out / "datasets.csv")
    assert sorted(counts["case"]) == list(ALL_CASES)
    for row in counts.itertuples():
        table = read_dataset(row.path, validate="full")
        assert table.meta["case"] == row.case
        assert (row.failure_train, row.failure_val, row.failure_test) == tuple(
            int(table.df.loc[table.df["split"] == s, "failure"].sum()) for s in ("train", "val", "test"))
    assert json.loads((out / "environment.json").read_text())["preset"]["name"] == "smoke"


def test_rerun_reuses_everything(smoke_run):
    code, root = smoke_run
    csv = root / "data" / "smoke" / "injected" / "A-p20-seed0" / "samples.csv"
    before = csv.stat().st_mtime_ns
    assert main(["run", "--preset", "smoke", "--data", str(root / "data"), "--results", str(root / "results"),
                 "--until", "data", "--no-progress"]) == 0
    assert csv.stat().st_mtime_ns == before


def test_paper_preset_without_real_data_is_a_clear_user_error(tmp_path, capsys):
    assert main(["run", "--preset", "paper", "--data", str(tmp_path)]) == 2
    assert "python -m data_prep" in capsys.readouterr().err


def test_missing_real_folder_is_a_clear_user_error(tmp_path, capsys):
    assert main(["run", "--preset", "paper", "--data", str(tmp_path), "--real", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err
    assert "data_prep" in err and "not found" in err


@pytest.mark.slow
def test_whole_main_job_on_the_smoke_preset(smoke_main_job):
    """data -> training -> detection benchmark, exactly as `make run PRESET=smoke` runs it (``python -m
    seg4seg_utils run`` in its own process: the session's shared smoke job, see conftest)."""
    res = smoke_main_job / "results" / "smoke"
    gaps = pd.read_csv(res / "training" / "gaps.csv")
    assert sorted(gaps["case"]) == list(ALL_CASES) and gaps["dice_rest"].between(0, 1).all()
    rates = pd.read_csv(res / "detection" / "detection_rates.csv")
    assert sorted(rates["case"]) == list(ALL_CASES) and rates["detection_rate"].between(0, 1).all()
    for name in ("training/subgroup_gap.png", "training/learning_curves.png", "detection/detection_heatmap.png"):
        assert (res / name).stat().st_size > 0
