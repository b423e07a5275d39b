"""make run's time breakdown: stages record their wall time, `python -m seg4seg_utils timing` writes timing.md."""
import subprocess

import pandas as pd
import pytest

from conftest import REPO_ROOT
from seg4seg_utils import timing
from seg4seg_utils.cli import main


def test_nothing_is_recorded_without_the_variable(tmp_path, monkeypatch):
    monkeypatch.delenv(timing.TIMING_ENV, raising=False)
    monkeypatch.chdir(tmp_path)  # a default location would be relative to here
    with timing.stage("training"):
        pass
    assert list(tmp_path.rglob("*")) == []


def test_stages_steps_set_up_and_total(tmp_path, monkeypatch):
    path = tmp_path / "cpu" / "timing.csv"
    monkeypatch.setenv(timing.TIMING_ENV, str(path))
    monkeypatch.setenv(timing.STARTED_ENV, "900.0")  # an older run: only the newest one is shown
    timing.record("data", "clean datasets", 901.0, 1.0)
    monkeypatch.setenv(timing.STARTED_ENV, "1000.0")
    timing.record("data", "clean datasets", 1010.0, 4.0)
    timing.record("data", "injections", 1014.0, 6.0)
    timing.record("training", "12 models", 1020.0, 60.0)
    with pytest.raises(RuntimeError), timing.stage("notebooks") as timed:
        timed.step = "05_detection_rates"  # a step named inside the block is the one recorded
        raise RuntimeError("a failed stage still counts")
    assert timed.seconds > 0
    rows = timing.read_timing(path)
    assert len(rows) == 4 and set(rows["run"]) == {"1000.0"}
    table = timing.breakdown(rows, now=1100.0)
    by_stage = dict(zip(table["stage"], table["seconds"]))
    assert by_stage["set-up"] == pytest.approx(10.0)  # from make's start to the first stage
    assert by_stage["data"] == pytest.approx(10.0) and by_stage["training"] == pytest.approx(60.0)
    assert by_stage["total"] == pytest.approx(100.0) and table["share"].iloc[-1] == 1.0
    assert list(table.loc[table["stage"] == "", "step"][:2]) == ["clean datasets", "injections"]
    md, text = timing.write_breakdown(path)
    assert md == tmp_path / "cpu" / "timing.md" and md.read_text() == text
    assert "| set-up" in text and "05_detection_rates" in text and "| total" in text


def test_steps_run_side_by_side_count_once_in_their_stage(tmp_path, monkeypatch):
    """Notebooks executed two at a time: the stage shows the wall time they covered, each row its own time."""
    assert timing.covered_seconds([0.0, 10.0], [10.0, 5.0]) == pytest.approx(15.0)  # one after the other
    assert timing.covered_seconds([0.0, 2.0, 3.0], [10.0, 5.0, 20.0]) == pytest.approx(23.0)  # overlapping
    assert timing.covered_seconds([5.0, 0.0], [1.0, 2.0]) == pytest.approx(3.0)  # a gap is not covered
    path = tmp_path / "timing.csv"
    monkeypatch.setenv(timing.TIMING_ENV, str(path))
    monkeypatch.setenv(timing.STARTED_ENV, "0.0")
    timing.record("notebooks", "09_patch_slices", 10.0, 300.0)
    timing.record("notebooks", "07_real_world", 10.0, 200.0)
    timing.record("notebooks", "06_ablations", 210.0, 90.0)
    table = timing.breakdown(timing.read_timing(path), now=320.0)
    row = table[table["stage"] == "notebooks"].iloc[0]
    assert row["seconds"] == pytest.approx(300.0) and "side by side" in row["step"]
    assert list(table.loc[table["stage"] == "", "seconds"]) == [300.0, 200.0, 90.0]
    assert table.loc[table["stage"] == "total", "seconds"].iloc[0] == pytest.approx(320.0)


def test_cli_writes_the_breakdown_and_refuses_without_a_file(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv(timing.TIMING_ENV, raising=False)
    assert main(["timing"]) == 2
    assert timing.TIMING_ENV in capsys.readouterr().err
    path = tmp_path / "timing.csv"
    pd.DataFrame([{"run": "", "stage": "book", "step": "HTML build", "started": 1.0, "seconds": 2.5}]).to_csv(
        path, index=False)
    assert main(["timing", "--file", str(path)]) == 0
    out = capsys.readouterr().out
    assert "HTML build" in out and (tmp_path / "timing.md").is_file()


def test_make_run_times_every_stage_and_prints_the_breakdown_last():
    plan = subprocess.run(["make", "-n", "run", "PRESET=smoke"], cwd=REPO_ROOT, capture_output=True, text=True,
                          check=True).stdout.splitlines()
    commands = [line for line in plan if "-m seg4seg_utils" in line]
    assert [c.split("-m seg4seg_utils ")[1].split()[0] for c in commands] == ["run", "notebooks", "book", "timing"]
    exported = subprocess.run(["make", "-pn", "run", "PRESET=smoke"], cwd=REPO_ROOT, capture_output=True,
                              text=True).stdout
    assert "SEG4SEG_TIMING := results/smoke/timing.csv" in exported


@pytest.mark.slow
def test_the_main_job_records_its_stages(smoke_main_job):
    rows = timing.read_timing(smoke_main_job / "timing.csv")
    assert list(rows["stage"].unique()) == ["data", "training", "detection"]
    assert list(rows.loc[rows["stage"] == "data", "step"]) == ["clean datasets", "injections",
                                                               "summary and galleries"]
    assert (rows["seconds"] > 0).all()
