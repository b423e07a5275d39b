"""Scale-out: embedders travel as recipes, and the detection sweep runs unchanged on a two-worker Dask cluster."""
import os
import pickle

import numpy as np
import pytest

from seg4seg_utils.discovery.embed import EfficientNetLite0Embedder, Embedder, SegmentationEncoderEmbedder
from seg4seg_utils.discovery.judge import SlicerSettings
from seg4seg_utils.studies import scaleout
from seg4seg_utils.studies.benchmark import benchmark_items, run_benchmark
from seg4seg_utils.studies.pipeline import detection_benchmark
from seg4seg_utils.studies.workspace import Workspace

PROVENANCE = ("seconds_reduce", "seconds_fit", "worker", "started")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("scale")
    ws = Workspace("smoke", data_dir=root / "data", runs_dir=root / "runs", results_dir=root / "results",
                   progress=False)
    return root, ws, ws.trained_cases("AD")


def test_builtin_embedders_pickle_as_recipes_not_weights(trained):
    root, ws, runs = trained
    lite = EfficientNetLite0Embedder()
    blob = pickle.dumps(lite)
    assert len(blob) < 2_000, "a recipe, not 13 MB of tensors"
    again = pickle.loads(blob)
    assert pickle.loads(blob) is again, "rebuilt once per process, then reused"
    images = [np.full((40, 50, 3), v, np.uint8) for v in (0, 90, 200)]
    np.testing.assert_array_equal(again.embed(images), lite.embed(images))
    enc = SegmentationEncoderEmbedder(runs[0][4])
    enc2 = pickle.loads(pickle.dumps(enc))
    assert enc2.key_fields() == enc.key_fields() and enc2.name == enc.name
    np.testing.assert_allclose(enc2.embed(images), enc.embed(images), rtol=1e-5, atol=1e-6)


class TinyEmbedder(Embedder):
    name = key_name = "tiny"
    dim = 2

    def __init__(self, scale: float):
        super().__init__("cpu")
        self.scale = scale


def test_other_embedders_pickle_as_usual():
    tiny = pickle.loads(pickle.dumps(TinyEmbedder(3.0)))
    assert isinstance(tiny, TinyEmbedder) and tiny.scale == 3.0


def test_backend_selection(monkeypatch):
    monkeypatch.delenv(scaleout.BACKEND_ENV, raising=False)
    monkeypatch.delenv(scaleout.SCHEDULER_ENV, raising=False)
    with scaleout.joblib_backend() as info:  # nothing configured: nothing changes
        assert not info.distributed and scaleout.effective_n_jobs(2) == 2
    monkeypatch.setenv(scaleout.BACKEND_ENV, "threading")
    with scaleout.joblib_backend() as info:
        assert info.name == "threading" and scaleout.active_backend().name == "threading"
    with pytest.raises(ValueError, match="local:N"):
        with scaleout.joblib_backend("dask", scheduler="local:zero"):
            pass
    try:
        import ray  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="ray"):
            with scaleout.joblib_backend("ray"):
                pass


def _result(rows):
    return rows.drop(columns=list(PROVENANCE)).sort_values("key").reset_index(drop=True)


@pytest.mark.slow
def test_sweep_on_a_local_two_worker_dask_cluster_matches_loky(trained, tmp_path, monkeypatch):
    """The environment switch alone moves embedding extraction and every fit onto the cluster; same rows."""
    root, ws, runs = trained
    items = benchmark_items(runs, slicer_seeds=(0, 1, 2, 3), image_variants=("x0", "x0*M_GT"),
                            settings=SlicerSettings(reduce="pca"))
    embedder = EfficientNetLite0Embedder()
    local = run_benchmark(items, embedder, tmp_path / "loky.jsonl", cache_dir=tmp_path / "cache-loky", n_jobs=2,
                          progress=False)

    monkeypatch.setenv(scaleout.BACKEND_ENV, "dask")
    monkeypatch.setenv(scaleout.SCHEDULER_ENV, "local:2")
    dask_rows = run_benchmark(items, embedder, tmp_path / "dask.jsonl", cache_dir=tmp_path / "cache-dask", n_jobs=1,
                              progress=False)
    assert len(dask_rows) == len(items) == 16
    pids = {w.rsplit(":", 1)[1] for w in dask_rows["worker"]}
    assert str(os.getpid()) not in pids, "fits ran on the cluster's workers, not in this process"
    assert len(pids) == 2, f"both workers took part: {pids}"
    assert (tmp_path / "cache-dask").is_dir() and any((tmp_path / "cache-dask").glob("*.npy")), \
        "embeddings were extracted (and cached) by the workers"
    # same embeddings, same fits, same verdicts, whichever backend ran them
    a, b = _result(local), _result(dask_rows)
    assert a.drop(columns=["omega2"]).equals(b.drop(columns=["omega2"]))
    np.testing.assert_allclose(a["omega2"], b["omega2"], rtol=1e-9)

    # the pipeline entry points (what notebooks and `make run` call) need no change either
    table = detection_benchmark(ws.replace(results_dir=tmp_path, cache_dir=tmp_path / "cache-dask"), runs,
                                settings=SlicerSettings(reduce="pca"))
    assert set(table["case"]) == {"A", "D"}


def test_command_line_exports_the_backend_for_notebook_kernels(tmp_path, capsys):
    from seg4seg_utils.cli import main

    saved = {k: os.environ.pop(k, None) for k in (scaleout.BACKEND_ENV, scaleout.SCHEDULER_ENV)}
    try:
        assert main(["notebooks", "--preset", "smoke", "--prepare-only", "--only", "00", "--out", str(tmp_path),
                     "--scheduler", "local:2"]) == 2
        assert "--scheduler needs --backend" in capsys.readouterr().err
        # an address that is only written to the environment, never connected to
        assert main(["notebooks", "--preset", "smoke", "--prepare-only", "--only", "00", "--out", str(tmp_path),
                     "--backend", "dask", "--scheduler", "tcp://127.0.0.1:8786"]) == 0
        assert os.environ[scaleout.BACKEND_ENV] == "dask"
        assert os.environ[scaleout.SCHEDULER_ENV] == "tcp://127.0.0.1:8786"
    finally:  # main() sets real environment variables: remove them, or later tests would all use Dask
        for key, value in saved.items():
            os.environ.pop(key, None)
            if value is not None:
                os.environ[key] = value


def test_worker_timeline_puts_each_run_on_its_own_clock():
    import pandas as pd

    from seg4seg_utils.report.plots import worker_timeline

    def rows(start):
        return pd.DataFrame({"worker": ["h:1", "h:2", "h:1"], "started": [start, start + 0.5, start + 2.0],
                             "seconds_reduce": [1.0, 1.0, 0.5], "seconds_fit": [0.5, 0.5, 0.5]})

    fig = worker_timeline({"first": rows(100.0), "second": rows(130.0)})
    for ax in fig.axes:
        lefts = sorted(p.get_x() for p in ax.patches)
        assert lefts[0] == 0.0 and len(ax.get_yticks()) == 2, "starts at 0, one lane per worker"
