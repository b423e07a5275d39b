"""No label leakage: the hidden failure flag and every attribute column stay out of discovery.

The honesty rule of the benchmark: the hidden failure attribute, and any column that encodes it, never enters
discovery - embedding, reduction, slicing, naming. Each test below runs one discovery entry point twice, on the
injected sample table as written and on a copy whose attribute columns (every column except id, split, image and
mask: ``failure``, the case's attribute, ``source`` and the phantom's own metadata) are shuffled or deleted, and
asserts that the fitted slices (``labels_`` and ``proba_``) are bit-identical.

Evaluation legitimately reads ``failure`` to judge the slices, so only the fit is compared. Where an entry point
also evaluates (``run_item``, ``run_patch_item``, ``explain_case``) the run's metrics keep a ``failure`` column:
shuffled in the "shuffle" copy, replaced by an unrelated random flag in the "delete" copy. The slices are taken
from what discovery hands to ``protocol.evaluate_slices`` (a spy that passes the call on).

The multimodal entry point reads metadata by design, so its image+metadata variant is checked against the
columns the rule names (the failure flag, the case attribute and its recodings); its image variant against all
columns (the other metadata shuffled, since explanations need some); and the oracle variant, which records the
attribute, must change - which shows the check can fail.
"""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import counting_embedder

from seg4seg_utils.data.records import write_png
from seg4seg_utils.discovery import judge, protocol

CASE = "D"
KEEP = ("id", "split", "image", "mask")   # what a sample *is*; everything else is an attribute column


# ------------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def injected(tmp_path_factory):
    """Case D injected into a small fundus phantom set (20 %, so the test split holds a few failures)."""
    from seg4seg_utils.data.inject import inject
    from seg4seg_utils.data.phantoms import generate_phantom_dataset

    root = tmp_path_factory.mktemp("leak")
    source = generate_phantom_dataset("fundus", root / "fundus", n=200, size=32, progress=False)
    return inject(source, CASE, 0.2, 0, root / "D-p20", progress=False)


@pytest.fixture(scope="module")
def run_root(injected, tmp_path_factory):
    """A run folder as train() leaves it (config.json, predictions/, metrics.csv), without training: the
    predictions are the ground truth shifted, more for the failure subgroup, so Dice is low there."""
    from seg4seg_utils.model.metrics import metrics_table
    from seg4seg_utils.model.train import TrainConfig

    root = tmp_path_factory.mktemp("run")
    (root / "predictions").mkdir()
    (root / "config.json").write_text(json.dumps({"train": asdict(TrainConfig()), "dataset": {}}))
    test = injected.split("test")
    scores = []
    for i, (sid, fail) in enumerate(zip(test.df["id"], test.df["failure"].astype(bool))):
        truth = test.mask(i)
        pred = np.roll(truth, 6 if fail else 1 + i % 2, axis=1)
        write_png(pred, root / "predictions" / f"{sid}.png")
        scores.append(metrics_table(pred[None], truth[None], ids=[sid]))
    metrics = test.df.drop(columns=["split"]).merge(pd.concat(scores, ignore_index=True), on="id")
    metrics["prediction"] = [f"predictions/{s}.png" for s in metrics["id"]]
    metrics.to_csv(root / "metrics.csv", index=False)
    return root


def attribute_columns(table) -> list[str]:
    return [c for c in table.df.columns if c not in KEEP]


def perturbed_table(table, how: str, columns=None, seed: int = 1):
    """A copy of the sample table with ``columns`` (default: every attribute column) shuffled independently
    (each its own permutation) or deleted."""
    from seg4seg_utils.data.records import SampleTable

    cols = attribute_columns(table) if columns is None else list(columns)
    df = table.df.copy()
    rng = np.random.default_rng(seed)
    if how == "delete":
        df = df.drop(columns=cols)
    else:
        for c in cols:
            df[c] = df[c].to_numpy()[rng.permutation(len(df))]
    return SampleTable(table.root, df, dict(table.meta))


def perturbed_metrics(metrics: pd.DataFrame, columns, how: str, seed: int = 1) -> pd.DataFrame:
    """The run's metrics with the same attribute columns perturbed. ``failure`` stays a column because the
    evaluation step needs one: shuffled, or (``delete``) an unrelated random flag."""
    m = metrics.copy()
    rng = np.random.default_rng(seed)
    cols = [c for c in columns if c in m.columns]
    if how == "delete":
        m = m.drop(columns=cols)
        m["failure"] = rng.uniform(size=len(m)) < 0.5
    else:
        for c in cols:
            m[c] = m[c].to_numpy()[rng.permutation(len(m))]
    return m


def perturbed_run(run_root: Path, columns, how: str, tmp_path: Path) -> Path:
    """A copy of the run folder whose metrics.csv has the attribute columns perturbed (predictions shared)."""
    from seg4seg_utils.studies.benchmark import load_run

    out = tmp_path / f"run-{how}"
    out.mkdir()
    (out / "config.json").write_text((run_root / "config.json").read_text())
    (out / "predictions").symlink_to(run_root / "predictions")
    perturbed_metrics(load_run(run_root).metrics(), columns, how).to_csv(out / "metrics.csv", index=False)
    return out


class FakeRun:
    """A run for entry points that only need ``metrics()`` and ``root`` (explain_case)."""

    def __init__(self, root: Path, metrics: pd.DataFrame):
        self.root, self._metrics = Path(root), metrics

    def metrics(self) -> pd.DataFrame:
        return self._metrics.copy()


@pytest.fixture()
def spy(monkeypatch):
    """Records (labels, proba) of every call to protocol.evaluate_slices, i.e. what discovery produced."""
    calls = []
    real = protocol.evaluate_slices

    def recording(labels, performance, attribute, proba=None, **kw):
        calls.append((np.array(labels, copy=True), None if proba is None else np.array(proba, copy=True)))
        return real(labels, performance, attribute, proba=proba, **kw)

    monkeypatch.setattr(protocol, "evaluate_slices", recording)
    monkeypatch.setattr(judge, "evaluate_slices", recording)  # fit_and_judge holds its own reference
    return calls


def assert_same_slices(a, b):
    """Bit-identical hard labels and probabilities."""
    (la, pa), (lb, pb) = a, b
    np.testing.assert_array_equal(la, lb)
    assert (pa is None) == (pb is None)
    if pa is not None:
        assert pa.dtype == pb.dtype and pa.shape == pb.shape and pa.tobytes() == pb.tobytes()


HOW = ["shuffle", "delete"]


# ------------------------------------------------------------------------------------------ image level
@pytest.mark.parametrize("how", HOW)
@pytest.mark.parametrize("variant", ["x0", "x0*M_pred"])
def test_image_level_benchmark_item(injected, run_root, tmp_path, spy, how, variant):
    from seg4seg_utils.discovery.embed import embed_dataset
    from seg4seg_utils.discovery.judge import SlicerSettings
    from seg4seg_utils.studies.benchmark import BenchmarkItem, load_run, run_item

    cols = attribute_columns(injected)
    other_table = perturbed_table(injected, how)
    other_run = perturbed_run(run_root, cols, how, tmp_path)
    fits = []
    for table, root in ((injected, run_root), (other_table, other_run)):
        emb = embed_dataset(table, counting_embedder()(), variant, run=load_run(root), cache_dir=None,
                            progress=False)
        item = BenchmarkItem(CASE, 0.2, 0, 3, variant, ("dice",), str(root), str(injected.root),
                             SlicerSettings(reduce="pca"))
        run_item(item, emb.ids, emb.X, load_run(root).metrics(), "counting")
        fits.append((emb, spy[-1]))
    (emb_a, fit_a), (emb_b, fit_b) = fits
    assert emb_a.ids == emb_b.ids and emb_a.X.tobytes() == emb_b.X.tobytes()   # embedding
    assert_same_slices(fit_a, fit_b)                                          # reduction + slicing


@pytest.mark.parametrize("how", HOW)
def test_slice_finder_on_embeddings(injected, run_root, how):
    """The SliceFinder itself, UMAP included: embeddings and Dice in, nothing else."""
    from seg4seg_utils.discovery.embed import embed_dataset, performance_matrix
    from seg4seg_utils.discovery.slicer import SliceFinder
    from seg4seg_utils.studies.benchmark import load_run

    metrics = load_run(run_root).metrics()
    fits = []
    for table, m in ((injected, metrics), (perturbed_table(injected, how),
                                           perturbed_metrics(metrics, attribute_columns(injected), how))):
        emb = embed_dataset(table, counting_embedder()(), "x0", cache_dir=None, progress=False)
        sf = SliceFinder(n_slices=5, reduce="umap", random_state=0).fit(emb.X, performance_matrix(m, ("dice",),
                                                                                                 ids=emb.ids))
        fits.append((sf.labels_, sf.proba_))
    assert_same_slices(*fits)


# ------------------------------------------------------------------------------------------ patch level
@pytest.mark.parametrize("how", HOW)
def test_patch_level(injected, run_root, tmp_path, spy, how):
    from seg4seg_utils.discovery.patches import PatchSliceFinder, patch_dataset
    from seg4seg_utils.discovery.reduce import reduce_embeddings
    from seg4seg_utils.studies.benchmark import load_run
    from seg4seg_utils.studies.patch_study import PatchBenchmarkItem, run_patch_item

    other_run = perturbed_run(run_root, attribute_columns(injected), how, tmp_path)
    results = []
    for table, root in ((injected, run_root), (perturbed_table(injected, how), other_run)):
        data = patch_dataset(table, load_run(root), counting_embedder()(), grid=2, cache_dir=None, progress=False)
        item = PatchBenchmarkItem(CASE, 0.2, 0, 1, str(root), str(injected.root), grid=2, n_slices=6)
        _, fitted = run_patch_item(item, data)
        flat = data.X.reshape(-1, data.X.shape[-1])
        direct = PatchSliceFinder(n_slices=6, random_state=0).fit(
            data.X, data.patch_perf["accuracy"], reduced=reduce_embeddings(flat, "pca", 4, 0)[1])
        results.append((data, fitted, direct, spy[-1]))
    (da, fa, xa, sa), (db, fb, xb, sb) = results
    assert da.ids == db.ids and da.X.tobytes() == db.X.tobytes()
    for m in da.patch_perf:
        assert da.patch_perf[m].tobytes() == db.patch_perf[m].tobytes()
    for a, b in ((fa, fb), (xa, xb)):
        assert_same_slices((a.patch_labels_, a.patch_proba_), (b.patch_labels_, b.patch_proba_))
        assert_same_slices((a.image_labels_, a.image_proba_), (b.image_labels_, b.image_proba_))
    assert_same_slices(sa, sb)


# ------------------------------------------------------------------------------------------ multimodal
def _explain(table, metrics, root, oracle=False):
    from seg4seg_utils.studies.explanation_study import explain_case

    return explain_case(table, FakeRun(root, metrics), counting_embedder()(), CASE, seeds=(0, 1), cache_dir=None,
                        reduce="pca", n_components=4, oracle=oracle)


def _fits_by_variant(rows, calls):
    assert len(calls) == len(rows)
    return {(v, s): c for v, s, c in zip(rows["variant"], rows["slicer_seed"], calls)}


@pytest.mark.parametrize("how", HOW)
def test_multimodal_honest_variants(injected, run_root, spy, how):
    from seg4seg_utils.discovery.explain import HONEST_VARIANTS, ORACLE_VARIANT, hidden_columns
    from seg4seg_utils.studies.benchmark import load_run

    metrics = load_run(run_root).metrics()
    hidden = hidden_columns(injected, CASE)
    assert hidden == ["quality", "failure"]
    rows_a, _ = _explain(injected, metrics, run_root, oracle=True)
    fits_a = _fits_by_variant(rows_a, spy[:])
    # the columns the rule names: no honest variant may change, slices or names
    spy.clear()
    rows_b, extras_b = _explain(perturbed_table(injected, how, hidden), perturbed_metrics(metrics, hidden, how),
                                run_root, oracle=True)
    fits_b = _fits_by_variant(rows_b, spy[:])
    for variant in HONEST_VARIANTS:
        for seed in (0, 1):
            assert_same_slices(fits_a[(variant, seed)], fits_b[(variant, seed)])
        a, b = rows_a[rows_a["variant"] == variant], rows_b[rows_b["variant"] == variant]
        assert a["worst_slice"].tolist() == b["worst_slice"].tolist()
        assert a["top_tokens"].tolist() == b["top_tokens"].tolist()             # naming
    # the oracle records the attribute: shuffling or deleting it must change its slices (the check has teeth)
    changed = [not np.array_equal(fits_a[(ORACLE_VARIANT, s)][0], fits_b[(ORACLE_VARIANT, s)][0]) or
               fits_a[(ORACLE_VARIANT, s)][1].tobytes() != fits_b[(ORACLE_VARIANT, s)][1].tobytes() for s in (0, 1)]
    assert all(changed)
    # image only: every attribute column at once (the hidden ones deleted or shuffled, the rest shuffled: the
    # explanations need some metadata to exist)
    spy.clear()
    rest = [c for c in attribute_columns(injected) if c not in hidden]
    table_c = perturbed_table(perturbed_table(injected, how, hidden), "shuffle", rest, seed=2)
    metrics_c = perturbed_metrics(perturbed_metrics(metrics, hidden, how), rest, "shuffle", seed=2)
    rows_c, _ = _explain(table_c, metrics_c, run_root)
    fits_c = _fits_by_variant(rows_c, spy[:])
    for seed in (0, 1):
        assert_same_slices(fits_a[("image", seed)], fits_c[("image", seed)])


# own model: `seg4seg audit` reads folders, not the sample table; its metadata only names slices, tested in
# tests/test_audit.py::test_metadata_names_but_never_finds_slices
