"""Shared fixtures. Real data lives beside the checkout in ../shared/data (override: SEG4SEG_SHARED_DATA)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    """Where the optional real data is: $SEG4SEG_SHARED_DATA, else ../shared/data next to the repository."""
    return Path(os.environ.get("SEG4SEG_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def hc18_raw() -> Path:
    """The real HC18 training set in its official layout; skips the test when it is not present."""
    path = shared_data_dir() / "hc18"
    if not (path / "training_set").is_dir():
        pytest.skip(f"real HC18 data not found at {path} (set SEG4SEG_SHARED_DATA to the folder holding hc18/)")
    return path


@pytest.fixture(scope="session")
def isic_styles_csv() -> Path:
    """The IMA++ per-mask metadata CSV; skips when absent."""
    path = shared_data_dir() / "isic_styles" / "IMAplusplus_seg_metadata.csv"
    if not path.is_file():
        pytest.skip(f"IMA++ metadata not found at {path} (set SEG4SEG_SHARED_DATA)")
    return path
