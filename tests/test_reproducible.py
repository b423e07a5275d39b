"""The same seed gives the same numbers whatever the thread count and the number of parallel jobs.

The end-to-end test runs the main job (smoke preset: data, 4 trained models, embeddings, the detection
benchmark) twice in fresh processes, once with OMP_NUM_THREADS=1 and sequential jobs, once with
OMP_NUM_THREADS=2 and two loky workers, and requires identical detection rows, gaps, per-image metrics and
weights. With the thread pin removed (seg4seg_utils.kernels.pinned ignoring ``threads``) the same comparison
found 44 differences (every model's weights and metrics): the test can fail.
"""
from __future__ import annotations

import json
import os
import shutil
import sys

import pytest
from conftest import run_smoke_job

from seg4seg_utils import kernels
from seg4seg_utils.model.train import TrainConfig, train_preset
from seg4seg_utils.report.compare import detection_rows, diff_job_outputs


@pytest.fixture(scope="module")
def two_jobs(tmp_path_factory, smoke_data, request):
    """A one-thread, one-job run beside the session's two-thread, two-job main job, on the same data (started as
    soon as the data exist: under `make test` the session's job may still be running)."""
    one_thread = run_smoke_job(tmp_path_factory.mktemp("repro") / "one-thread", smoke_data, 1, 1)
    return one_thread, request.getfixturevalue("smoke_main_job")


@pytest.mark.slow
def test_thread_count_and_jobs_do_not_change_any_result(two_jobs):
    a, b = two_jobs
    rows = detection_rows(a / "results" / "smoke" / "detection" / "detection_items.jsonl")
    assert len(rows) == 6  # one slicer fit per case (A-F) on smoke: the comparison below is not vacuous
    assert sorted((a / "runs" / "smoke").glob("*/*/best.pt")), "no trained runs to compare"
    assert diff_job_outputs(a, b, "smoke") == []


@pytest.mark.slow
def test_runs_record_the_numerics_they_used(two_jobs):
    a, _ = two_jobs
    config = json.loads(next((a / "runs" / "smoke").glob("*/*/config.json")).read_text())
    assert config["kernels"]["threads"] == 2
    assert config["kernels"]["mode"] == "pinned"
    for key, value in kernels.KERNEL_ENV.items():
        assert config["kernels"][key] == value


def test_compare_finds_a_changed_value(two_jobs, tmp_path):
    a, _ = two_jobs
    shutil.copytree(a, tmp_path / "copy")
    assert diff_job_outputs(a, tmp_path / "copy", "smoke") == []
    det = tmp_path / "copy" / "results" / "smoke" / "detection" / "detection_items.jsonl"
    rows = [json.loads(line) for line in det.read_text().splitlines()]
    rows[0]["success"] = not rows[0]["success"]
    rows[1]["seconds_fit"] = 1e9  # provenance: never a difference
    det.write_text("".join(json.dumps(r) + "\n" for r in rows))
    diffs = diff_job_outputs(a, tmp_path / "copy", "smoke")
    assert len(diffs) == 1 and "success" in diffs[0]
    mask = next((tmp_path / "copy" / "data" / "smoke").glob("injected/*/masks/*.png"))
    mask.write_bytes(mask.read_bytes() + b"\0")  # one injected mask changed: the dataset's digest must see it
    diffs = diff_job_outputs(a, tmp_path / "copy", "smoke")
    assert len(diffs) == 2 and any("dataset differs" in d and "injected" in d for d in diffs), diffs


def test_pinned_sets_and_restores_threads_and_onednn(monkeypatch):
    import torch

    before = torch.get_num_threads(), torch.backends.mkldnn.enabled
    monkeypatch.setenv("SEG4SEG_KERNELS", "portable")
    with kernels.pinned(1):
        assert torch.get_num_threads() == 1
        assert torch.backends.mkldnn.enabled is False  # portable: convolutions through MKL, not oneDNN
    assert (torch.get_num_threads(), torch.backends.mkldnn.enabled) == before
    monkeypatch.setenv("SEG4SEG_KERNELS", "pinned")
    with kernels.pinned(2):
        assert torch.get_num_threads() == 2 and torch.backends.mkldnn.enabled == before[1]
    with kernels.pinned(3, device="cuda"):  # accelerators are left alone
        assert torch.get_num_threads() == before[0]


def test_kernel_mode_rejects_unknown_values(monkeypatch):
    monkeypatch.setenv("SEG4SEG_KERNELS", "fastest")
    with pytest.raises(ValueError, match="SEG4SEG_KERNELS"):
        kernels.kernel_mode()


def test_this_environment_runs_pinned_kernels():
    """The project's .venv pins the kernels at start-up (scripts/setup_venv.sh), before torch loads."""
    import torch

    for key, value in kernels.KERNEL_ENV.items():
        assert os.environ.get(key) == value, key
    assert torch.backends.cpu.get_cpu_capability() in ("AVX2", "DEFAULT")
    assert kernels.numpy_simd() in kernels.SIMD_AT_MOST_AVX2  # numpy's AVX-512 loops are off
    import numba

    assert numba.config.CPU_NAME == "haswell"
    # numba adds the host's feature flags unless they are pinned too: the code it emits must not use AVX-512
    from numba.core.registry import cpu_target

    features = cpu_target.target_context.codegen()._tm_features.split(",")
    assert "+avx2" in features and "+avx512f" not in features, features


def test_cache_keys_name_numpys_simd_level():
    assert f"np{kernels.numpy_simd()}" in kernels.kernel_key(1)
    assert "blasHaswell" in kernels.kernel_key(None) and "numbahaswell" in kernels.kernel_key(None)


def test_module_entry_point_restarts_itself_when_the_pins_are_missing(monkeypatch):
    """numpy reads its SIMD setting once, at import: ``python -m seg4seg_utils`` must restart, not set it late."""
    import runpy

    class Restarted(Exception):
        pass

    def fake_execve(path, argv, env):
        raise Restarted(argv, env)

    for key in kernels.KERNEL_ENV:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.delenv("SEG4SEG_PINNED_RESTART", raising=False)
    monkeypatch.setattr(os, "execve", fake_execve)
    monkeypatch.setattr(sys, "argv", ["seg4seg_utils", "compare", "a", "b"])
    with pytest.raises(Restarted) as restarted:
        runpy.run_module("seg4seg_utils", run_name="__main__")
    argv, env = restarted.value.args
    assert argv[1:] == ["-m", "seg4seg_utils", "compare", "a", "b"]
    assert all(env[key] == value for key, value in kernels.KERNEL_ENV.items())
    assert kernels.missing_pins(env) == [] and kernels.missing_pins({}) == list(kernels.KERNEL_ENV)


def test_thread_count_is_part_of_the_training_config():
    assert train_preset("cpu").threads == 2
    assert TrainConfig(threads=None).validate().threads is None
    with pytest.raises(ValueError, match="threads"):
        TrainConfig(threads=0).validate()


# Reference digests, computed with the pinned numerics on a 2-core AVX-512 AMD EPYC. Every x86-64 CPU with AVX2
# should give the same bits (the pins select the AVX2 code paths); without numpy's pin both digests change on an
# AVX-512 machine (measured: the dermoscopy phantom and the UMAP coordinates differ). A failure here on another
# machine means its numbers differ from the book's: report it with `lscpu`.
GOLDEN_DERMOSCOPY = "c4534ef33f594f5b"  # 4 phantom dermoscopy images at 256 px, seed 0
# UMAP to 4-d of 60 points in 3 groups, seed 0: measured on an AVX2-only AMD (Zen 3) with numba's features pinned
# (an AVX-512 Zen 5 gave e98c7ffee4e7c928 while numba still added its host features; see seg4seg_utils.kernels)
GOLDEN_UMAP = "f64700af6b8cc1d4"


def test_generated_data_match_the_reference_machine(tmp_path):
    from seg4seg_utils.data.phantoms import generate_phantom_dataset
    from seg4seg_utils.report.compare import dataset_digest

    generate_phantom_dataset("dermoscopy", tmp_path / "d", 4, 256, seed=0, progress=False)
    assert dataset_digest(tmp_path / "d")[:16] == GOLDEN_DERMOSCOPY, f"numpy SIMD level {kernels.numpy_simd()}"


def test_umap_matches_the_reference_machine():
    import hashlib

    import numpy as np

    from seg4seg_utils.discovery.reduce import reduce_embeddings

    rng = np.random.default_rng(0)
    X = (np.repeat(rng.normal(size=(3, 32)), 20, axis=0) + rng.normal(size=(60, 32))).astype(np.float32)
    Z = reduce_embeddings(X, "umap", 4, 0)[1]
    digest = hashlib.sha256(np.ascontiguousarray(Z).tobytes()).hexdigest()[:16]
    assert digest == GOLDEN_UMAP, f"numpy SIMD level {kernels.numpy_simd()}"


UMAP_IN_A_FRESH_PROCESS = """
import hashlib, json
import numpy as np
from seg4seg_utils.discovery.reduce import reduce_embeddings
rng = np.random.default_rng(0)
X = (np.repeat(rng.normal(size=(3, 32)), 20, axis=0) + rng.normal(size=(60, 32))).astype(np.float32)
Z = reduce_embeddings(X, "umap", 4, 0)[1]
import umap.umap_ as U
kernels = {"smooth_knn_dist": U.smooth_knn_dist, "compute_membership_strengths": U.compute_membership_strengths,
           "fast_knn_indices": U.fast_knn_indices}  # compiled lazily, on the first fit (umap compiles a few tiny
                                                   # helpers with explicit signatures at import: not these)
print(json.dumps({"digest": hashlib.sha256(np.ascontiguousarray(Z).tobytes()).hexdigest()[:16],
                  "hits": {k: sum(d.stats.cache_hits.values()) for k, d in kernels.items()},
                  "misses": {k: sum(d.stats.cache_misses.values()) for k, d in kernels.items()}}))
"""


@pytest.mark.slow
def test_umap_kernels_are_compiled_once_per_machine_and_give_the_same_numbers():
    """import_umap keeps umap's numba kernels on disk: a new process loads them (no compile) and the loaded code
    gives the reference fit. Without ``enable_caching`` the new process compiles these kernels again (no hits)."""
    import subprocess

    test_umap_matches_the_reference_machine()  # this process compiles or loads them, and writes what is missing
    result = subprocess.run([sys.executable, "-c", UMAP_IN_A_FRESH_PROCESS], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    fresh = json.loads(result.stdout.strip().splitlines()[-1])
    assert fresh["digest"] == GOLDEN_UMAP
    assert all(fresh["hits"].values()) and not any(fresh["misses"].values()), fresh


def test_this_environment_loads_its_packages_compiled():
    """scripts/setup_venv.sh compiles the installed packages to bytecode (uv does not by itself, and where
    PYTHONDONTWRITEBYTECODE is set nothing would ever write it): every notebook kernel, worker and training
    process would otherwise compile torch, timm, scikit-learn and umap from source again (20 s, not 8)."""
    import importlib.util

    import sklearn
    import timm
    import torch
    import umap

    for module in (torch, timm, sklearn, umap):
        cached = importlib.util.cache_from_source(module.__file__)
        assert os.path.isfile(cached), f"{module.__name__} has no bytecode at {cached}: re-run scripts/setup_venv.sh"


@pytest.mark.slow
def test_umap_kernels_are_compiled_in_a_child_beside_the_training(monkeypatch):
    """The main job starts :func:`compile_umap_in_background` before it trains: nothing once umap's kernels are on
    disk, else a child that compiles and caches them with one small fit (here it finds them cached and loads them;
    a child that fails to fit exits non-zero)."""
    from seg4seg_utils.discovery import reduce as R

    test_umap_matches_the_reference_machine()  # this process compiles or loads the kernels and caches them
    assert R.compile_umap_in_background() is None, "the kernels are cached: no child needed"
    monkeypatch.setattr(R, "_umap_kernels_cached", lambda: False)
    child = R.compile_umap_in_background()
    assert child is not None and child.wait(timeout=300) == 0
