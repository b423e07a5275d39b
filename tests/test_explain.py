"""Text and metadata explanations: TF-IDF by hand, metadata to text, planted-attribute recovery, the global
baseline, the text embedding and its honest name, the joint features, the CLIP path and the per-case runner.

The CLIP test registers a *tiny* open_clip architecture with *random* weights saved to a file (as in
tests/test_embed.py) only to exercise the real loading and text/image code path offline; its numbers mean
nothing and are never called CLIP results.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from conftest import TINY_CLIP

from seg4seg_utils.discovery import explain as X
from seg4seg_utils.report import explain_plots
from seg4seg_utils.studies import explanation_study

# ------------------------------------------------------------------------------------------------ TF-IDF
DOCS = [["a", "b"], ["a"], ["b", "c"]]


def _hand_tfidf():
    """idf = ln((1 + n) / (1 + df)) + 1 with n = 3; rows l2-normalised (written out by hand)."""
    idf_ab = math.log(4 / 3) + 1   # a and b occur in 2 of 3 documents
    idf_c = math.log(4 / 2) + 1    # c in 1
    norm2 = math.sqrt(idf_ab ** 2 + idf_c ** 2)
    return np.array([[1 / math.sqrt(2), 1 / math.sqrt(2), 0.0],
                     [1.0, 0.0, 0.0],
                     [0.0, idf_ab / norm2, idf_c / norm2]])


def test_tfidf_matches_the_hand_computed_values():
    M, vocab = X.tfidf(DOCS)
    assert vocab == ["a", "b", "c"]
    np.testing.assert_allclose(M, _hand_tfidf(), atol=1e-12)
    np.testing.assert_allclose(M[2], [0, 0.605349, 0.795961], atol=1e-6)  # the same numbers, worked out on paper


def test_distinctiveness_is_mean_in_slice_minus_mean_in_reference():
    M, vocab = X.tfidf(DOCS)
    H = _hand_tfidf()
    d = X.distinctiveness(M, vocab, [0, 1], np.array([False, False, True]))
    assert list(d.index) == ["a", "b", "c"]  # sorted, most distinctive first
    np.testing.assert_allclose(d.to_numpy(), [(H[0, 0] + 1) / 2, H[0, 1] / 2 - H[2, 1], -H[2, 2]], atol=1e-12)
    assert d["a"] == pytest.approx(0.853553, abs=1e-6)
    # symmetric: swapping the groups negates every score
    back = X.distinctiveness(M, vocab, [2], [0, 1])
    np.testing.assert_allclose(back[d.index].to_numpy(), -d.to_numpy())
    # ties are broken by token name
    tie = X.distinctiveness(np.array([[1.0, 1.0], [0.0, 0.0]]), ["z", "y"], [0], [1])
    assert list(tie.index) == ["y", "z"]
    with pytest.raises(ValueError, match="both groups need samples"):
        X.distinctiveness(M, vocab, [0, 1, 2], np.zeros(3, bool))
    with pytest.raises(ValueError, match="len\\(vocab\\)"):
        X.distinctiveness(M, vocab[:2], [0], [1])
    with pytest.raises(ValueError, match="outside"):
        X.distinctiveness(M, vocab, [5], [1])


def test_tfidf_refuses_bad_documents():
    with pytest.raises(TypeError, match="list of str tokens"):
        X.tfidf(["a b", "c"])
    with pytest.raises(ValueError, match="no document has any token"):
        X.tfidf([[], []])


# ------------------------------------------------------------------------------------------ metadata text
@pytest.fixture()
def small_table():
    return pd.DataFrame({
        "id": [f"s{i}" for i in range(6)], "split": ["test"] * 6,
        "image": [f"images/s{i}.png" for i in range(6)], "mask": [f"masks/s{i}.png" for i in range(6)],
        "illumination": [0.1, 0.2, 0.5, 0.6, 0.9, 1.0],      # 6 distinct numbers -> tertiles
        "n_distractors": [0, 1, 1, 2, 2, 2],                  # few integers -> categories
        "hair": [True, False, True, False, False, True],
        "cropped": [False, False, True, False, False, False],
        "quality": ["good", "good", "low", None, "good", "good"],
        "crop_box": [None, None, "44 47 128 128", None, None, None],
        "note": ["Blurry image", None, "dark, small lesion", "ok", "", "ok"],
        "failure": [False, False, True, False, False, False],
        "dice": [0.9, 0.8, 0.2, 0.85, 0.9, 0.95]})


def test_metadata_text_bins_booleans_categories_and_exclusions(small_table):
    m = X.metadata_text(small_table, max_categories=4, free_text=["note"])
    assert list(m.index) == list(small_table.index)
    assert m["text"].iat[0] == ("low illumination, n distractors 0, hair, not cropped, good quality, Blurry image")
    assert m["tokens"].iat[0] == ["low_illumination", "n_distractors_0", "hair", "not_cropped", "good_quality",
                                  "blurry", "image"]
    bins = [next(t for t in toks if t.endswith("illumination")) for toks in m["tokens"]]
    assert bins == ["low_illumination"] * 2 + ["medium_illumination"] * 2 + ["high_illumination"] * 2
    assert "no_hair" in m["tokens"].iat[1] and "cropped" in m["tokens"].iat[2]
    assert "low_quality" in m["tokens"].iat[2] and "dark" in m["tokens"].iat[2] and "lesion" in m["tokens"].iat[2]
    assert not any(t.endswith("quality") for t in m["tokens"].iat[3])  # missing value: no phrase
    every = {t for toks in m["tokens"] for t in toks}
    for leak in ("failure", "no_failure", "s0", "test", "dice", "png"):
        assert not any(leak in t for t in every), leak
    assert not any(ch.isdigit() and "128" in t for t in every for ch in t)  # crop_box coordinates skipped
    assert set(m.attrs["used"]) == {"illumination", "n_distractors", "hair", "cropped", "quality", "note"}
    assert {"id", "split", "image", "mask", "failure", "dice", "crop_box"} <= set(m.attrs["skipped"])
    # exclusion by the caller, and other bin counts
    m2 = X.metadata_text(small_table, exclude=["hair", "note"], n_bins=2, max_categories=4)
    assert not any("hair" in t for toks in m2["tokens"] for t in toks)
    assert m2["tokens"].iat[0][0] == "low_illumination" and m2["tokens"].iat[5][0] == "high_illumination"
    # numbers stored as strings are numbers; a SampleTable-like object with .df works
    as_str = small_table.assign(illumination=small_table["illumination"].astype(str))
    assert X.metadata_text(as_str, max_categories=4)["tokens"].iat[5][0] == "high_illumination"
    # with few distinct values a number is a category, not a bin
    assert X.metadata_text(small_table)["tokens"].iat[0][0] == "illumination_0.1"


def test_metadata_text_errors(small_table):
    with pytest.raises(KeyError, match="nope"):
        X.metadata_text(small_table, exclude=["nope"])
    with pytest.raises(ValueError, match="n_bins"):
        X.metadata_text(small_table, n_bins=7)
    with pytest.raises(TypeError, match="DataFrame"):
        X.metadata_text([{"a": 1}])


@pytest.mark.parametrize("case, column, value, token", [
    ("A", "caliper", False, "no_caliper"), ("B", "cropped", True, "cropped"),
    ("C", "annotation_style", "polygon", "polygon_annotation_style"), ("D", "quality", "low", "low_quality")])
def test_attribute_token_is_the_token_metadata_text_writes(case, column, value, token):
    assert X.attribute_token(case) == token
    other = {"caliper": True, "cropped": False, "annotation_style": "flood_fill", "quality": "good"}[column]
    m = X.metadata_text(pd.DataFrame({column: [value, other, other]}))
    assert token in m["tokens"].iat[0] and token not in m["tokens"].iat[1]


# --------------------------------------------------------------------------------------- slice explanations
def _planted(n=150, seed=0):
    """Random attributes; slice 0 = exactly the samples with the planted 'marker' (and low performance)."""
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({"gain": rng.uniform(size=n), "hair": rng.uniform(size=n) < 0.5,
                       "side": rng.choice(["left", "right"], n), "marker": np.arange(n) < 20})
    labels = np.where(df["marker"], 0, 1 + rng.integers(0, 4, n))
    perf = np.where(df["marker"], 0.3, 0.8) + rng.normal(0, 0.02, n)
    perf[labels == 3] += 0.1  # slice 3 is the best-performing one
    return df, labels, np.clip(perf, 0, 1)


def test_planted_attribute_is_named_first():
    df, labels, perf = _planted()
    ex = X.explain_slices(labels, perf, df, n_top=3)
    assert list(ex["slice"]) == [0, 1, 2, 3, 4] and ex["size"].sum() == len(df)
    assert ex.at[0, "top_tokens"][0] == "marker" and ex.at[0, "reference_slice"] == 3
    assert ex.at[3, "reference_slice"] != 3  # the best slice is compared with the next-best eligible one
    assert "'marker'" in ex.at[0, "sentence"] and "reference slice 3" in ex.at[0, "sentence"]
    assert all(len(t) == 3 for t in ex["top_tokens"]) and np.isfinite(np.concatenate(ex["top_scores"])).all()
    assert all(np.all(np.diff(s) <= 1e-12) for s in ex["top_scores"])  # sorted
    np.testing.assert_allclose(ex["mean_perf"], [perf[labels == s].mean() for s in range(5)])
    assert ex["clip_score_diff"].isna().all()  # no CLIP given
    # against all other samples the planted token still comes first, with the score computed by hand
    meta = X.metadata_text(df)
    rest = X.explain_slices(labels, perf, meta, reference="rest")
    assert rest.at[0, "top_tokens"][0] == "marker" and rest.at[0, "reference_slice"] is pd.NA
    M, vocab = X.tfidf(meta)
    j = vocab.index("marker")
    assert rest.at[0, "top_scores"][0] == pytest.approx(M[labels == 0, j].mean() - M[labels != 0, j].mean())


def test_explain_slices_empty_and_ineligible_slices():
    df, labels, perf = _planted()
    labels = labels.copy()
    labels[labels == 4] = 6        # slice 4 and 5 empty, 6 holds the former slice 4
    labels[:2] = 7                 # two samples: below N_min = ceil(0.02 * 150) = 3, never a reference
    perf = perf.copy()
    perf[:2] = 1.0                 # ... even though it performs best
    ex = X.explain_slices(labels, perf, df, n_slices=9)
    assert len(ex) == 9
    assert ex.at[4, "top_tokens"] == [] and "empty slice" in ex.at[4, "sentence"] and ex.at[8, "size"] == 0
    assert not ex.at[7, "eligible"] and ex.at[7, "top_tokens"]  # explained, but against an eligible reference
    assert 7 not in set(ex["reference_slice"].dropna()) and ex.at[0, "reference_slice"] == 3


def test_explain_slices_errors():
    df, labels, perf = _planted()
    with pytest.raises(ValueError, match="entries but performance"):
        X.explain_slices(labels[:-1], perf, df)
    with pytest.raises(ValueError, match="metadata has 149 rows"):
        X.explain_slices(labels, perf, df.iloc[:-1])
    with pytest.raises(ValueError, match="reference must be"):
        X.explain_slices(labels, perf, df, reference="worst")
    with pytest.raises(ValueError, match="n_top"):
        X.explain_slices(labels, perf, df, n_top=0)
    with pytest.raises(ValueError, match="NaN"):
        X.explain_slices(labels, np.where(labels == 0, np.nan, perf), df)
    with pytest.raises(ValueError, match="n_slices=3"):
        X.explain_slices(labels, perf, df, n_slices=3)
    with pytest.raises(ValueError, match="image_embeddings"):
        X.explain_slices(labels, perf, df, clip=object())
    one = X.explain_slices(np.zeros(len(df), int), perf, df)  # a single slice has no reference
    assert one.at[0, "top_tokens"] == [] and "no reference slice" in one.at[0, "sentence"]


# ---------------------------------------------------------------------------------------- global baseline
def test_global_baseline_ranks_the_token_of_the_worst_images():
    df, _, perf = _planted()
    g = X.global_baseline(df, perf, quantile=0.1)
    assert g.index[0] == "marker" and g.iloc[0] > 0 and g.is_monotonic_decreasing
    # by hand: worst ceil(0.1 * 150) = 15 samples vs the other 135
    M, vocab = X.tfidf(X.metadata_text(df))
    worst = np.zeros(len(df), bool)
    worst[np.argsort(perf, kind="stable")[:15]] = True
    np.testing.assert_allclose(g[vocab].to_numpy(), M[worst].mean(0) - M[~worst].mean(0))
    assert list(X.global_baseline(df, perf, 0.2, n_top=2).index)[:1] == ["marker"]
    assert len(X.global_baseline(df, perf, 0.2, n_top=2)) == 2
    with pytest.raises(ValueError, match="quantile"):
        X.global_baseline(df, perf, 1.0)
    with pytest.raises(ValueError, match="rows but performance"):
        X.global_baseline(df, perf[:-1])


# ------------------------------------------------------------------------------------ embeddings and CLIP
def test_text_embedding_fallback_is_named_and_deterministic(small_table):
    df, _, _ = _planted()
    T, name = X.text_embedding(df, n_components=4)
    assert T.shape == (len(df), 4) and np.isfinite(T).all()
    assert "not CLIP" in name and "TF-IDF" in name and "CLIP text encoder" not in name
    np.testing.assert_allclose(T, X.text_embedding(X.metadata_text(df), n_components=4)[0])
    # the planted marker separates along the embedding: some component differs strongly between the groups
    mk = df["marker"].to_numpy()
    assert (np.abs(T[mk].mean(0) - T[~mk].mean(0)) / T.std(0)).max() > 2  # a random group of 20: ~0.2
    few, _ = X.text_embedding(pd.DataFrame({"hair": [True, False, True]}), n_components=8)
    assert few.shape == (3, 1)  # only two tokens: one SVD component
    with pytest.raises(ValueError, match="n_components"):
        X.text_embedding(df, n_components=0)


def test_joint_features_weigh_blocks_by_column_count():
    rng = np.random.default_rng(0)
    img, txt = rng.normal(size=(50, 4)), rng.normal(size=(50, 4))
    J = X.joint_features(img, txt)
    assert J.shape == (50, 8)
    np.testing.assert_allclose(J.mean(0), 0, atol=1e-12)
    np.testing.assert_allclose(J.std(0), 1, atol=1e-12)
    np.testing.assert_allclose(X.joint_features(1000 * img + 5, txt), J, atol=1e-9)  # raw scale cannot dominate
    with pytest.raises(ValueError, match="same number"):
        X.joint_features(img, txt[:, :3])
    with pytest.raises(ValueError, match="one row per sample"):
        X.joint_features(img, txt[:10])


def test_clip_score_difference_by_hand():
    I = np.array([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    t = np.array([3.0, 0.0])
    # cosines: 1, 0, 1/sqrt(2)
    assert X.clip_score_difference(I, t, [0, 1], [2]) == pytest.approx(0.5 - 1 / math.sqrt(2))
    with pytest.raises(ValueError, match="share the dimension"):
        X.clip_score_difference(I, np.ones(3), [0], [1])
    with pytest.raises(ValueError, match="zero-length"):
        X.clip_score_difference(np.zeros((2, 2)), t, [0], [1])


@pytest.fixture(scope="module")
def tiny_clip(tiny_clip_file):
    """The tiny RANDOM-weight open_clip model of conftest, loaded back through ClipEmbedder (test only)."""
    from seg4seg_utils.discovery.embed import ClipEmbedder

    return ClipEmbedder(TINY_CLIP, pretrained=str(tiny_clip_file[0]), device="cpu")


def test_clip_text_path_mechanics(tiny_clip):
    df, labels, perf = _planted(n=60)
    meta = X.metadata_text(df)
    T, name = X.text_embedding(meta, clip=tiny_clip, n_components=4)
    assert T.shape == (60, 4) and np.isfinite(T).all()
    assert name.startswith("CLIP text encoder of CLIP " + TINY_CLIP) and "tiny_random_weights.pt" in name
    # the text really goes through the encoder: identical texts -> identical rows, different texts differ
    raw = tiny_clip.embed_text(meta["text"].tolist())
    same = [(i, j) for i in range(60) for j in range(i) if meta["text"].iat[i] == meta["text"].iat[j]]
    for i, j in same:
        np.testing.assert_allclose(raw[i], raw[j], atol=1e-6)
    assert np.abs(raw[0] - raw[1]).max() > 1e-4
    imgs = np.random.default_rng(0).integers(0, 255, size=(60, 32, 32, 3), dtype=np.uint8)
    I = tiny_clip.embed(list(imgs))
    ex = X.explain_slices(labels, perf, meta, clip=tiny_clip, image_embeddings=I)
    ok = ex["top_tokens"].map(bool)
    assert ok.all() and np.isfinite(ex.loc[ok, "clip_score_diff"]).all()
    top = ex.at[0, "top_tokens"][0]
    expect = X.clip_score_difference(I, tiny_clip.embed_text([top.replace("_", " ")])[0], labels == 0,
                                     labels == ex.at[0, "reference_slice"])
    assert ex.at[0, "clip_score_diff"] == pytest.approx(expect, abs=1e-6)


# ------------------------------------------------------------------------------------------- per-case runner
class _FakeRun:
    """What explain_case needs of a trained run: its per-image metrics (Dice low on the failure subgroup)."""

    def __init__(self, metrics):
        self._metrics = metrics

    def metrics(self):
        return self._metrics.copy()


class _MeanColourEmbedder:
    """Cheap deterministic image features (per-channel means and stds), for a fast runner test."""

    name = key_name = "mean-colour-test-embedder"
    weights_id, dim = "none", 6

    def key_fields(self):
        return {"embedder": self.key_name, "weights_id": "none", "dim": 6}

    def embed(self, images, batch_size=None):
        return np.array([np.r_[np.asarray(im, np.float32).reshape(-1, 3).mean(0),
                               np.asarray(im, np.float32).reshape(-1, 3).std(0)] for im in images], np.float32)


def _planted_case_d(tmp_path):
    """A fundus phantom dataset with case D's columns planted on the test split (images left untouched)."""
    from seg4seg_utils.data.phantoms import generate_phantom_dataset

    table = generate_phantom_dataset("fundus", tmp_path / "fundus", n=200, size=32, progress=False)
    test = table.df["split"] == "test"
    rng = np.random.default_rng(0)
    low = test & (rng.uniform(size=len(table.df)) < 0.25)
    table.df["quality"] = np.where(low, "low", "good")
    table.df["quality_code"] = np.where(low, 1, 0)        # a recoding of the flag under another name
    table.df["failure"] = low
    t = table.df[test]
    metrics = pd.DataFrame({"id": t["id"], "failure": t["failure"],
                            "dice": np.where(t["failure"], 0.3, 0.9) + rng.normal(0, 0.01, len(t))})
    return table, metrics, low


def test_explain_case_keeps_the_attribute_and_its_recodings_out_by_default(tmp_path):
    table, metrics, low = _planted_case_d(tmp_path)
    rows, extras = explanation_study.explain_case(table, _FakeRun(metrics), _MeanColourEmbedder(), "D", seeds=(0, 1), cache_dir=None,
                                  reduce="pca", n_components=4)
    assert set(rows["variant"]) == set(X.HONEST_VARIANTS) and (rows["status"] == "result").all()
    assert len(rows) == 4 and extras["attribute_token"] == "low_quality" and extras["n_failure"] == int(low.sum())
    assert extras["hidden_columns"] == ["quality", "quality_code", "failure"]
    # nothing the slicer or the naming read comes from the hidden columns
    assert {"quality", "quality_code"} <= set(extras["metadata"].attrs["skipped"])
    tokens = {t for toks in extras["metadata"]["tokens"] for t in toks}
    assert not any("quality" in t for t in tokens)
    assert not any("quality" in t for toks in rows["top_tokens"] for t in toks)
    assert not any("quality" in t for t in extras["global_10"].index)
    for ex in extras["explanations"].values():
        assert len(ex) == 10 and np.isfinite(np.concatenate([s for s in ex["top_scores"] if s])).all()
        assert not any("quality" in t for toks in ex["top_tokens"] for t in toks)
    # the naming measures that read the attribute are labelled oracle; the oracle baseline does see it
    assert extras["global_10_oracle"].index[0] == "low_quality"
    assert "not CLIP" in extras["text_embedding"]
    summary = explanation_study.summary_table(rows)
    assert len(summary) == 2 and (summary["n_seeds"] == 2).all() and (summary["status"] == "result").all()
    assert not any(c.startswith("names_attribute") for c in summary.columns)
    assert {"oracle_names_attribute", "oracle_attribute_rank", "oracle_named_by_a_bottom_slice"} <= set(summary.columns)
    assert np.isnan(summary["clip_score_diff"]).all()
    with pytest.raises(ValueError, match="no rows"):
        explanation_study.summary_table(rows.iloc[:0])


def test_the_oracle_variant_is_labelled_an_oracle_upper_bound(tmp_path):
    table, metrics, _ = _planted_case_d(tmp_path)
    rows, _ = explanation_study.explain_case(table, _FakeRun(metrics), _MeanColourEmbedder(), "D", seeds=(0, 1), cache_dir=None,
                             reduce="pca", n_components=4, oracle=True)
    assert set(rows["variant"]) == {*X.HONEST_VARIANTS, X.ORACLE_VARIANT}
    assert "oracle" in X.ORACLE_VARIANT and X.ORACLE_LABEL == "oracle upper bound"
    assert (rows.loc[rows["variant"] == X.ORACLE_VARIANT, "status"] == X.ORACLE_LABEL).all()
    assert (rows.loc[rows["variant"] != X.ORACLE_VARIANT, "status"] == "result").all()
    # the oracle is handed the answer: the protocol finds the planted group, the worst slice is pure on it and a
    # bottom slice is named by the attribute. (Not necessarily the worst one: the mixture may split the 10 planted
    # failures over several small pure slices - with the second fundus generator's images it does in seed 0, whose
    # worst slice holds 3 of them - and then each small slice is told apart by other tokens.)
    oracle = rows[rows["variant"] == X.ORACLE_VARIANT]
    assert oracle["success"].all() and (oracle["precision_at_k"] == 1).all() and (oracle["worst_purity"] == 1).all()
    assert oracle["oracle_names_attribute_bottom"].all() and (oracle["oracle_attribute_rank"] <= 3).all()
    row = explanation_study.summary_table(rows).set_index("variant").loc[X.ORACLE_VARIANT]
    assert row["status"] == X.ORACLE_LABEL and row["oracle_named_by_a_bottom_slice"] == 1


def test_leaky_columns_finds_recodings_of_the_failure_flag():
    rng = np.random.default_rng(0)
    n = 100
    f = rng.uniform(size=n) < 0.2
    df = pd.DataFrame({
        "id": [f"s{i}" for i in range(n)], "split": "test",
        "caliper": ~f,                                              # case A: the flag negated
        "quality": np.where(f, "low", "good"),                      # case D
        "site": np.where(f, rng.choice(["a", "b"], n), rng.choice(["c", "d"], n)),  # a coarser-grained recoding
        "crop_box": [f"{i} 3 4 5" if x else None for i, x in enumerate(f)],  # recorded only for failures
        "gain": rng.uniform(size=n), "hair": rng.uniform(size=n) < 0.5,      # ordinary metadata
        "proxy": np.where(rng.uniform(size=n) < 0.9, f, ~f),                 # correlated, not a recoding
        "note": [f"note {i}" for i in range(n)],                             # every row distinct: not a recoding
        "dice": np.where(f, 0.3, 0.9), "failure": f})                        # performance is never metadata
    expect = ["caliper", "quality", "site", "crop_box", "failure"]
    assert X.leaky_columns(df) == expect
    assert X.leaky_columns(df, f) == expect                                  # the flag as an array
    assert X.leaky_columns(df.assign(failure=f.astype(str))) == expect       # 'True'/'False' strings
    assert X.leaky_columns(df.assign(failure=False)) == ["failure"]          # a constant flag encodes nothing
    # numeric columns are judged as metadata_text bins them: a threshold on a binned value is a recoding
    g = np.sort(rng.uniform(size=n))
    top_bin = X.metadata_text(pd.DataFrame({"g": g}))["tokens"].map(lambda t: t == ["high_g"]).to_numpy()
    binned = pd.DataFrame({"g": g, "failure": top_bin})  # exactly the images in the top tertile
    assert "g" in X.leaky_columns(binned) and "g" not in X.leaky_columns(binned, np.arange(n) % 2 == 0)
    assert X.hidden_columns(df, "A") == expect and X.hidden_columns(df.drop(columns="failure"), "A") == ["caliper"]
    assert X.hidden_columns(df[["id", "gain"]], "D") == []
    with pytest.raises(KeyError, match="nope"):
        X.leaky_columns(df, "nope")
    with pytest.raises(ValueError, match="entries"):
        X.leaky_columns(df, f[:-1])


def test_distinctiveness_plot_highlights_the_attribute_token():
    import matplotlib

    matplotlib.use("Agg")
    scores = {"A": pd.Series([0.5, 0.1, -0.2], index=["no_caliper", "low_gain", "caliper"]),
              "B": pd.Series([0.3, 0.2], index=["low_lesion_fraction", "hair"])}
    fig = explain_plots.distinctiveness_plot(scores, {"A": "no_caliper", "B": "cropped"}, n_top=2)
    ax_a, ax_b = fig.axes
    red = matplotlib.colors.to_rgba("tab:red")
    bars_a = {t.get_text(): p.get_facecolor() for t, p in zip(ax_a.get_yticklabels(), ax_a.patches)}
    assert bars_a == {"low gain": bars_a["low gain"], "no caliper": red} and bars_a["low gain"] != red
    assert len(ax_a.patches) == 2  # n_top
    assert "'cropped' not in the top 2" in ax_b.get_title() and all(p.get_facecolor() != red for p in ax_b.patches)
    with pytest.raises(ValueError, match="at least one"):
        explain_plots.distinctiveness_plot({})


def test_the_study_writes_the_notebooks_tables_and_figures(tmp_path):
    """explanations.csv/.md, distinctiveness(_oracle).png and global_baseline.csv come from the study, not the
    notebook; the same rows give the same files."""
    import matplotlib

    matplotlib.use("Agg")
    table, metrics, _ = _planted_case_d(tmp_path)
    rows, ex = explanation_study.explain_case(table, _FakeRun(metrics), _MeanColourEmbedder(), "D", seeds=(0, 1),
                                              cache_dir=None, reduce="pca", n_components=4, oracle=True)
    rows = rows.assign(prevalence=0.25)
    extras = {("D", 0.25): ex}
    out = tmp_path / "results" / "smoke" / "explain"

    def write():
        summary = explanation_study.write_summary(rows, out, "smoke", "mean colour", ex["text_embedding"])
        figs = explanation_study.distinctiveness_figures(rows, extras, "D", 0.25, out, n_top=3)
        base = explanation_study.global_baseline_table(extras, out)
        return summary, figs, base

    summary, (fig, fig_oracle), base = write()
    expected = {f for files in explanation_study.RESULT_FILES.values() for f in files}
    assert {p.name for p in out.iterdir()} == expected == {"explanations.csv", "explanations.md", "distinctiveness.png",
                                                           "distinctiveness_oracle.png", "global_baseline.csv"}
    assert summary.equals(explanation_study.summary_table(rows))
    assert len(pd.read_csv(out / "explanations.csv")) == len(summary) == 3
    md = (out / "explanations.md").read_text()
    assert md.startswith("# Slice explanations (preset `smoke`, image embedder: mean colour; text: ")
    assert X.ORACLE_LABEL in md and summary.to_markdown(index=False, floatfmt=".2f") in md
    assert "ORACLE UPPER BOUND" in fig_oracle._suptitle.get_text() and "ORACLE" not in fig._suptitle.get_text()
    assert len(fig.axes) == len(fig_oracle.axes) == 1 and fig.axes[0].get_title().startswith("case D (25%), slice ")
    assert base.to_dict("records")[0]["attribute token"] == "low_quality" and len(base) == 1
    assert bool(base["10 % names it (oracle)"].iat[0])  # the oracle baseline sees the planted attribute
    assert len(pd.read_csv(out / "global_baseline.csv")) == 1
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    matplotlib.pyplot.close("all")
    write()
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    matplotlib.pyplot.close("all")
    nowhere = tmp_path / "none"
    explanation_study.write_summary(rows, None, "smoke", "x", "y")
    explanation_study.global_baseline_table(extras, None)
    assert not nowhere.exists()
