"""scripts/bench_model_seeds.py on the smoke preset: one case, one prevalence, two model seeds, two configurations
and the patch level; resumable."""
import importlib.util
from pathlib import Path

import pandas as pd
import pytest
from conftest import REPO_ROOT


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_model_seeds", REPO_ROOT / "scripts" / "bench_model_seeds.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_model_seed_benchmark_on_smoke(bench, tmp_path, capsys):
    from seg4seg_utils.studies.workspace import Workspace

    args = ["--preset", "smoke", "--cases", "A", "--prevalences", "0.2", "--model-seeds", "0", "1",
            "--data", str(tmp_path / "data"), "--runs", str(tmp_path / "runs"), "--results", str(tmp_path / "results"),
            "--cache", str(tmp_path / "cache"), "--reduce", "pca", "--jobs", "1", "--no-progress",
            "--configurations", "SEG4SEG | shape(M_GT) + ppv", "--patch-cases", "A"]
    table = bench.main(args)
    out = tmp_path / "results" / "smoke" / "model_seeds"
    assert "[bench] model seed 1 (2/2)" in capsys.readouterr().out
    assert len(table) == 1 and table[["case", "prevalence"]].iloc[0].tolist() == ["A", 0.2]
    row = table.iloc[0]
    assert row["n"] == 2 and row["n_seed0"] == row["n_seed1"] == 1  # smoke: one slicer seed per model
    assert row["k"] == row["k_seed0"] + row["k_seed1"] and row["ci_low"] <= row["detection_rate"] <= row["ci_high"]
    assert pd.notna(row["gap_seed0"]) and pd.notna(row["gap_seed1"]) and row["gap_seed0"] != row["gap_seed1"]
    pd.testing.assert_frame_equal(pd.read_csv(out / "detection_by_model_seed.csv"), table, check_dtype=False)
    md = (out / "detection_by_model_seed.md").read_text()
    assert f"({int(row['k'])}/2, " in md and "model seed 1" in md and "Wilson" in md
    # per configuration: the default first, the one asked for, and the patch level; each over both models
    configs = pd.read_csv(out / "detection_by_configuration.csv")
    assert list(configs["configuration"]) == ["SEG4SEG | x0 + dice", "SEG4SEG | shape(M_GT) + ppv",
                                              bench.PATCH_CONFIGURATION]
    assert (configs["n"] == 2).all() and (configs["n_seed0"] == 1).all() and (configs["n_seed1"] == 1).all()
    default = configs.iloc[0]
    assert (default["k"], default["n"]) == (row["k"], row["n"])  # the same fits as the model-seed table
    assert "shape(M_GT) + ppv" in (out / "detection_by_configuration.md").read_text()
    # model seed 0 is the main job's run: a workspace without overrides finds it and trains nothing
    done = {p: p.stat().st_mtime_ns for p in (tmp_path / "runs").rglob("done.json")}
    assert len(done) == 2
    main_job = Workspace("smoke", data_dir=tmp_path / "data", runs_dir=tmp_path / "runs", progress=False)
    assert Path(main_job.trained_case("A", 0.2).run.root) / "done.json" in done
    # resumable: a rerun trains nothing and fits nothing
    items = (out / "detection_items.jsonl").read_text(), (out / "patch_items.jsonl").read_text()
    again = bench.main(args)
    assert {p: p.stat().st_mtime_ns for p in done} == done
    assert ((out / "detection_items.jsonl").read_text(), (out / "patch_items.jsonl").read_text()) == items
    pd.testing.assert_frame_equal(again, table)


def test_prevalence_outside_the_preset_is_a_clear_error(bench, capsys):
    with pytest.raises(SystemExit):
        bench.parse_args(["--preset", "smoke", "--prevalences", "0.05"])
    assert "not in preset 'smoke'" in capsys.readouterr().err


def test_unknown_configuration_is_a_clear_error_and_the_default_always_runs_first(bench, capsys):
    with pytest.raises(SystemExit):
        bench.parse_args(["--configurations", "SEG4SEG | x9 + dice"])
    assert "unknown configuration(s) ['SEG4SEG | x9 + dice']" in capsys.readouterr().err
    args = bench.parse_args(["--configurations", "SEG4SEG | x0*M_GT + ppv", "SEG4SEG | x0 + dice"])
    assert args.configurations == ["SEG4SEG | x0 + dice", "SEG4SEG | x0*M_GT + ppv"]
    assert bench.parse_args([]).configurations[0] == "SEG4SEG | x0 + dice"
