"""The taxonomy as data and the presets."""
import pytest

from seg4seg_utils.config import PRESETS, environment_report, get_preset
from seg4seg_utils.data.inject import CASES
from seg4seg_utils.data.taxonomy import TAXONOMY, failure_type, taxonomy_table


def test_taxonomy_covers_the_papers_families():
    families = {ft.family for ft in TAXONOMY}
    assert families == {"shortcut", "label noise", "underrepresentation", "difficult cases"}
    keys = {ft.key for ft in TAXONOMY}
    assert {"shortcut_sample", "shortcut_pixel", "label_noise_style", "label_noise_error"} <= keys
    for ft in TAXONOMY:
        assert ft.description and ft.mechanism and ft.example


def test_every_case_is_in_the_taxonomy_and_back():
    for name, case in CASES.items():
        assert failure_type(name).key == case.taxonomy_key
        assert failure_type(case.taxonomy_key).case == name
    assert CASES["B"].n_slices == 20 and all(CASES[c].n_slices == 10 for c in "ACD")


def test_taxonomy_table_and_lookup_errors():
    df = taxonomy_table()
    assert len(df) == len(TAXONOMY) and {"key", "family", "case"} <= set(df.columns)
    with pytest.raises(KeyError, match="known keys"):
        failure_type("nope")


def test_presets():
    assert set(PRESETS) == {"smoke", "cpu", "paper"}
    assert get_preset("cpu").prevalences == (0.05, 0.10, 0.20)
    assert get_preset("paper").seeds == (0, 1, 2, 3, 4) and get_preset("paper").real_data
    with pytest.raises(ValueError, match="unknown preset"):
        get_preset("fast")


def test_environment_report_is_offline_by_default():
    rep = environment_report(with_torch=False)
    assert rep["HF_HUB_OFFLINE"] == "1"  # set by the project's environment (Makefile and .venv)
    assert rep["numpy"]


def test_import_has_no_side_effects():
    import os
    import subprocess
    import sys

    code = ("import os, sys; before = dict(os.environ); import seg4seg_utils as su; "
            "assert dict(os.environ) == before; assert 'torch' not in sys.modules; print(su.__version__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ})
    assert out.returncode == 0, out.stderr
