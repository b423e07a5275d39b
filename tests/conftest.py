"""Shared fixtures. Real data lives beside the checkout in ../shared/data (override: SEG4SEG_SHARED_DATA)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


# The longest groups are handed out first, so that no long group starts last and runs alone (measured: the
# shared smoke job's group, about 70 s with both workers busy, used to start midway and end the run on its own).
LONG_GROUPS_FIRST = ("smoke-main-job", "file-test_scaleout.py", "file-test_train_gap.py", "notebook-06_ablations.ipynb",
                     "file-test_experiments.py", "notebook-13_scale_out.ipynb", "notebook-07_real_world.ipynb",
                     "notebook-14_volumes.ipynb", "file-test_real_data.py")


# inside its group, the one-thread rerun of the smoke main job (tests/test_reproducible.py) starts first: it needs
# only the job's data, so under `make test` it runs beside the job instead of after it, alone on one core
FIRST_IN_GROUP = ("test_reproducible.py",)


def xdist_group_of(item) -> str:
    """A notebook's cells share one kernel (a group per notebook); the tests that read the session's smoke main job
    share one worker, so it runs once; every other test file is a group, so its module fixtures run once."""
    if item.path.suffix == ".ipynb":
        return f"notebook-{item.path.name}"
    if "smoke_main_job" in getattr(item, "fixturenames", ()):
        return "smoke-main-job"
    return f"file-{item.path.name}"


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups to name the items
def pytest_collection_modifyitems(config, items):
    """Groups for ``pytest -n 2 --dist loadgroup`` (``make test``): each group runs on one worker, in order;
    the long ones are queued first (a stable sort: the order inside a group is kept)."""
    for item in items:
        item.add_marker(pytest.mark.xdist_group(xdist_group_of(item)))
    rank = {group: k for k, group in enumerate(LONG_GROUPS_FIRST)}
    items.sort(key=lambda item: (rank.get(xdist_group_of(item), len(rank)), item.path.name not in FIRST_IN_GROUP))


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


def run_smoke_job(root: Path, data: Path, omp_threads: int, jobs: int) -> Path:
    """The README's main job (``python -m seg4seg_utils run``, what ``make run`` calls) on the smoke preset, in a
    fresh process with ``omp_threads`` OpenMP threads and ``jobs`` parallel jobs, on a copy of ``data``."""
    root.mkdir(parents=True)
    shutil.copytree(data, root / "data")
    env = {**os.environ, "OMP_NUM_THREADS": str(omp_threads), "MKL_NUM_THREADS": str(omp_threads),
           "SEG4SEG_TIMING": str(root / "timing.csv"), "SEG4SEG_RUN_STARTED": ""}  # stages record their time
    env.pop("SEG4SEG_BACKEND", None)
    result = subprocess.run([sys.executable, "-m", "seg4seg_utils", "run", "--preset", "smoke",
                             "--data", str(root / "data"), "--results", str(root / "results"),
                             "--runs", str(root / "runs"), "--cache", str(root / "cache"), "--no-progress",
                             "--jobs", str(jobs)], cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    return root


# `make test` runs the smoke main job once, beside pytest, for the notebooks and for these tests, and names its
# folder here; the tests only read it (the notebooks run on a copy). Without it (pytest alone) the fixtures run
# the job themselves. The job runs in two steps, each writing its exit status to a file once complete: its data
# stage (SMOKE_DATA_DONE_ENV), then the rest and the notebooks' copy (SMOKE_JOB_DONE_ENV). Whatever needs one
# waits for its file; every other test runs meanwhile.
SMOKE_JOB_ENV = "SEG4SEG_SMOKE_JOB"
SMOKE_DATA_DONE_ENV = "SEG4SEG_SMOKE_DATA_DONE"
SMOKE_JOB_DONE_ENV = "SEG4SEG_SMOKE_JOB_DONE"
SMOKE_JOB_WAIT_S = 1800


def wait_for_smoke_job(step: str = SMOKE_JOB_DONE_ENV) -> None:
    """Block until the step of the smoke main job that ``step`` (an environment variable) names has finished
    (nothing to wait for when it is unset); raise if it failed."""
    done = os.environ.get(step)
    if not done:
        return
    done, waited = Path(done), 0.0
    while not (done.is_file() and done.read_text().strip()):
        if waited > SMOKE_JOB_WAIT_S:
            raise RuntimeError(f"the smoke main job did not finish within {SMOKE_JOB_WAIT_S} s ({done} not written)")
        time.sleep(0.5)
        waited += 0.5
    status = done.read_text().strip()
    if status != "0":
        log = done.with_suffix(".log")
        raise RuntimeError(f"the smoke main job `make test` started failed (exit status {status}); its output is in "
                           f"{log}:\n{log.read_text()[-3000:] if log.is_file() else '(no log)'}")


class SmokeJobGate:
    """A plugin (so that it sees the notebooks outside tests/ too): a notebook waits for the smoke job's copy."""

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_setup(self, item):
        if item.path.suffix == ".ipynb":
            wait_for_smoke_job()


def pytest_configure(config):
    config.pluginmanager.register(SmokeJobGate(), "seg4seg-smoke-job-gate")


def reused_smoke_job() -> Path | None:
    """The smoke main job `make test` runs beside pytest (``$SEG4SEG_SMOKE_JOB``), waited for and checked
    complete; else None."""
    folder = os.environ.get(SMOKE_JOB_ENV)
    if not folder:
        return None
    wait_for_smoke_job()
    root = Path(folder)
    needed = [root / "timing.csv", root / "results" / "smoke" / "detection" / "detection_rates.csv", root / "data"]
    missing = [str(p) for p in needed if not p.exists()]
    if missing:
        raise RuntimeError(f"${SMOKE_JOB_ENV}={folder} is not a finished smoke main job (missing {missing}); "
                           f"run `make test`, or unset {SMOKE_JOB_ENV} to let the tests run the job themselves")
    return root


@pytest.fixture(scope="session")
def smoke_data(tmp_path_factory) -> Path:
    """The smoke preset's clean and injected datasets, generated once by the main job's data stage (or those of
    the job `make test` ran; the tests copy them before writing anything)."""
    folder = os.environ.get(SMOKE_JOB_ENV)
    if folder:
        wait_for_smoke_job(SMOKE_DATA_DONE_ENV)
        if not (Path(folder) / "data").is_dir():
            raise RuntimeError(f"${SMOKE_JOB_ENV}={folder} holds no data/: run `make test`, or unset {SMOKE_JOB_ENV}")
        return Path(folder) / "data"
    base = tmp_path_factory.mktemp("smoke-data")
    result = subprocess.run([sys.executable, "-m", "seg4seg_utils", "run", "--preset", "smoke", "--data",
                             str(base / "data"), "--results", str(base / "results"), "--until", "data",
                             "--no-progress"], cwd=REPO_ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    return base / "data"


@pytest.fixture(scope="session")
def smoke_main_job(tmp_path_factory, smoke_data) -> Path:
    """The whole main job on the smoke preset (data, 4 models, detection benchmark), run once per session as
    ``make run PRESET=smoke`` runs it (two threads, two jobs): the pipeline tests read its outputs and the
    reproducibility test compares a one-thread run against it. Under `make test`, the job it ran first."""
    reused = reused_smoke_job()
    if reused is not None:
        return reused
    return run_smoke_job(tmp_path_factory.mktemp("smoke-job") / "two-threads", smoke_data, 2, 2)


TINY_CLIP = "seg4seg-test-tiny-vit"


@pytest.fixture(scope="session")
def tiny_clip_file(tmp_path_factory):
    """A tiny open_clip ViT registered as TINY_CLIP and its RANDOM weights saved to a file.

    Only for testing the CLIP code paths (loading, image and text towers); never presented as CLIP.
    Returns (weights path, state dict).
    """
    import json

    import open_clip
    import torch

    folder = tmp_path_factory.mktemp("clipcfg")
    cfg = {"embed_dim": 32,
           "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "patch_size": 16, "head_width": 32},
           "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2}}
    (folder / f"{TINY_CLIP}.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(folder)
    torch.manual_seed(0)
    model = open_clip.create_model(TINY_CLIP)  # random weights, deliberately: this only tests loading
    path = folder / "tiny_random_weights.pt"
    torch.save(model.state_dict(), path)
    return path, model.state_dict()


def counting_embedder():
    """A cheap deterministic embedder (per-channel means and stds) that counts its calls and the images it saw."""
    import numpy as np

    from seg4seg_utils.discovery import embed as E

    class CountingEmbedder(E.Embedder):
        name = key_name = "counting-test-embedder"
        weights_id = "none"
        dim = 6

        def __init__(self):
            super().__init__("cpu", 32)
            self.calls = 0
            self.seen = 0

        def embed(self, images, batch_size=None):
            self.calls += 1
            self.seen += len(images)
            rgb = [E._as_rgb_uint8(im).astype(np.float32) for im in images]
            return np.array([np.r_[im.mean((0, 1)), im.std((0, 1))] for im in rgb], dtype=np.float32)

    return CountingEmbedder
