"""scripts/bench_boundary_scores.py on the smoke preset: boundary scores from saved predictions, their gaps and
the detection table with counts; a prediction equal to the ground truth scores a surface Dice of 1."""
import importlib.util

import pandas as pd
import pytest
from conftest import REPO_ROOT


@pytest.fixture(scope="module")
def bench():
    path = REPO_ROOT / "scripts" / "bench_boundary_scores.py"
    spec = importlib.util.spec_from_file_location("bench_boundary_scores", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_boundary_benchmark_on_smoke(bench, tmp_path, capsys):
    from seg4seg_utils.data.records import write_png
    from seg4seg_utils.studies import boundary
    from seg4seg_utils.studies.workspace import Workspace

    args = ["--preset", "smoke", "--cases", "C", "--data", str(tmp_path / "data"), "--runs", str(tmp_path / "runs"),
            "--results", str(tmp_path / "results"), "--cache", str(tmp_path / "cache"), "--reduce", "pca"]
    table = bench.main(args)
    out = tmp_path / "results" / "smoke" / "boundary"
    assert "[bench] C at 20%" in capsys.readouterr().out
    assert len(table) == len(boundary.VARIANTS) * len(boundary.SCORES)
    assert set(table["performance"]) == {"dice", "surface_dice", "dice+surface_dice"}
    assert (table["k"] == (table["detection_rate"] * table["n"]).round()).all()
    scores = pd.read_csv(out / "boundary_scores.csv")
    assert scores["surface_dice"].between(0, 1).all() and (scores["hd95"] >= 0).all()
    assert (scores["surface_dice"] < 1).any()  # a smoke model is not perfect
    gaps = pd.read_csv(out / "boundary_gaps.csv")
    assert set(gaps["score"]) == {"dice", "surface_dice", "hd95"} and gaps["p_value"].between(0, 1).all()
    assert "Wilson" in (out / "boundary_detection.md").read_text()
    # the scores are read from the saved predictions: one replaced by its ground truth scores 1 and 0 px
    ws = Workspace("smoke", data_dir=tmp_path / "data", runs_dir=tmp_path / "runs", progress=False)
    tc = ws.trained_case("C", 0.2)
    test = tc.table.split("test")
    sid = test.df["id"].iat[0]
    write_png(test.mask(0), tc.run.root / "predictions" / f"{sid}.png")
    row = boundary.boundary_scores(tc, 2.0).set_index("id").loc[sid]
    assert row["surface_dice"] == 1.0 and row["hd95"] == 0.0


def test_tolerance_must_be_positive(bench, capsys):
    with pytest.raises(SystemExit):
        bench.parse_args(["--tolerance", "0"])
    assert "must be > 0" in capsys.readouterr().err
