"""Embeddings: EfficientNet-Lite0 features, the CLIP loading path and its refusals, variants, the cache, M_pred.

The CLIP tests register a *tiny* open_clip architecture and save *randomly initialised* weights to a temporary
file, only to exercise the real file-loading code path of :class:`ClipEmbedder` offline. Those weights are random:
they are never used as CLIP anywhere, and nothing in the project falls back to them.
"""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from conftest import TINY_CLIP, counting_embedder

from seg4seg_utils.data.phantoms import dermoscopy, fundus, generate_phantom_dataset, ultrasound
from seg4seg_utils.data.records import SampleTable
from seg4seg_utils.discovery import embed as E


# ------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def lite0():
    return E.EfficientNetLite0Embedder(device="cpu")


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    """20 dermoscopy phantoms at 64 px: 12 train, 3 val, 5 test."""
    return generate_phantom_dataset("dermoscopy", tmp_path_factory.mktemp("emb") / "derm", n=20, size=64,
                                    progress=False)


@pytest.fixture(scope="module")
def smoke_run(table, tmp_path_factory):
    from seg4seg_utils.model.train import train, train_preset

    return train(table, train_preset("smoke", max_train_samples=8, epochs=1), runs_dir=tmp_path_factory.mktemp("runs"),
                 progress=False)


CountingEmbedder = counting_embedder()


def _cos(a, b):
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


# --------------------------------------------------------------------------------- EfficientNet-Lite0
def test_lite0_features(lite0):
    derm, _ = dermoscopy(256, np.random.default_rng(1))
    fund, _ = fundus(256, np.random.default_rng(2))
    us, _ = ultrasound((200, 300), np.random.default_rng(3))  # grayscale and non-square
    assert "not CLIP" in lite0.name and lite0.weights_id.startswith("packaged:") and lite0.dim == 1280
    X = lite0.embed([derm, np.ascontiguousarray(derm[:, ::-1]), fund, us, derm[20:200, 10:250]], batch_size=2)
    assert X.shape == (5, 1280) and X.dtype == np.float32 and np.isfinite(X).all()
    np.testing.assert_array_equal(X[:2], lite0.embed([derm, derm[:, ::-1]], batch_size=2))  # deterministic
    np.testing.assert_allclose(X[2:5], lite0.embed([fund, us, derm[20:200, 10:250]]), atol=1e-5)  # other batching
    assert np.abs(X[0] - X[2]).max() > 1e-3 and np.abs(X[0] - X[3]).max() > 1e-3
    # weak sanity check that the weights are real ImageNet features: a flipped copy and a crop stay
    # closer to the image than an unrelated fundus photograph does
    assert _cos(X[0], X[1]) > _cos(X[0], X[2]) + 0.2
    assert _cos(X[0], X[4]) > _cos(X[0], X[2])
    # HxWx1, float [0, 1] and the same image as uint8 give the same features
    g = lite0.embed([us[..., None], us.astype(np.float32) / 255], batch_size=1)
    np.testing.assert_allclose(g, X[[3, 3]], atol=1e-5)
    assert lite0.embed([]).shape == (0, 1280)
    with pytest.raises(TypeError, match="list of images"):
        lite0.embed(derm)


# ------------------------------------------------------------------------------------------------ CLIP
def test_clip_loads_a_weights_file(tiny_clip_file):
    import torch

    path, saved = tiny_clip_file
    clip = E.ClipEmbedder(TINY_CLIP, pretrained=str(path), device="cpu")
    assert str(path.resolve()) in clip.name and clip.name.startswith("CLIP ")
    assert clip.weights_id.startswith("tiny_random_weights.pt:") and clip.dim == 32
    loaded = clip.model.state_dict()
    assert all(torch.equal(loaded[k].cpu(), v) for k, v in saved.items())  # the file's weights, not a fresh init
    imgs = [dermoscopy(64, np.random.default_rng(i))[0] for i in range(3)] + [ultrasound((48, 80), 7)[0]]
    X = clip.embed(imgs, batch_size=3)
    assert X.shape == (4, 32) and X.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(X, axis=1), 1, atol=1e-5)
    T = clip.embed_text(["a dermoscopy image of a lesion", "hair", "dark corners"])
    assert T.shape == (3, 32) and T.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(T, axis=1), 1, atol=1e-5)


def test_clip_refuses_a_file_of_another_architecture(tmp_path, tiny_clip_file):
    import torch

    bad = tmp_path / "other.pt"
    torch.save({"visual.conv1.weight": torch.zeros(3)}, bad)
    with pytest.raises(E.EmbedderUnavailable, match="could not be loaded"):
        E.ClipEmbedder(TINY_CLIP, pretrained=str(bad), device="cpu")


@pytest.mark.parametrize("pretrained", [None, "missing", "laion2b_s34b_b79k"])
def test_clip_without_weights_says_how_to_provide_them(pretrained, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    if pretrained == "missing":
        pretrained = str(tmp_path / "open_clip_pytorch_model.bin")
    import socket

    attempts = []
    # fail fast and record instead of waiting on a connection: the check is that none is attempted
    monkeypatch.setattr(socket.socket, "connect", lambda self, address: attempts.append(address) or
                        (_ for _ in ()).throw(OSError("network disabled in this test")))
    with pytest.raises(E.EmbedderUnavailable) as info:
        E.ClipEmbedder("ViT-B-32", pretrained=pretrained, cache_dir=str(tmp_path / "empty-cache"))
    assert attempts == []  # no network attempt
    message = str(info.value)
    assert isinstance(info.value, RuntimeError)
    for needle in ("pretrained=", "clip_weights", "open_clip_pytorch_model.bin", "Hugging Face cache"):
        assert needle in message


def test_default_embedder(monkeypatch, capsys, lite0, tmp_path):
    monkeypatch.setattr(E, "EfficientNetLite0Embedder", lambda device=None: lite0)
    assert E.default_embedder() is lite0
    out = capsys.readouterr().out
    assert "EfficientNet-Lite0" in out and "no clip_weights" in out and len(out.strip().splitlines()) == 1
    with pytest.raises(E.EmbedderUnavailable):  # a bad path is an error, never a silent switch
        E.default_embedder(clip_weights=str(tmp_path / "nope.pt"))


# -------------------------------------------------------------------------------------------- variants
def test_apply_variant():
    rgb = np.full((4, 5, 3), 200, np.uint8)
    gray = np.full((4, 5), 100, np.uint8)
    gt = np.zeros((4, 5), bool)
    gt[1:3, 1:4] = True
    pred = np.zeros((4, 5), np.uint8)
    pred[0, :] = 255
    assert E.apply_variant(rgb, "x0") is rgb
    out = E.apply_variant(rgb, "x0*M_GT", gt_mask=gt, pred_mask=pred)
    assert out.dtype == np.uint8 and (out[gt] == 200).all() and (out[~gt] == 0).all()
    out = E.apply_variant(gray, "x0*M_pred", gt_mask=gt, pred_mask=pred)
    assert (out[0] == 100).all() and (out[1:] == 0).all()
    assert (rgb == 200).all()  # the input is not modified
    with pytest.raises(ValueError, match="pred_mask"):
        E.apply_variant(rgb, "x0*M_pred", gt_mask=gt)
    with pytest.raises(ValueError, match="same size"):
        E.apply_variant(rgb, "x0*M_GT", gt_mask=gt[:3])
    with pytest.raises(ValueError, match="unknown variant"):
        E.apply_variant(rgb, "x0*M")


def test_m_pred_needs_a_run(table, tmp_path):
    with pytest.raises(ValueError, match="needs run="):
        E.embed_dataset(table, CountingEmbedder(), "x0*M_pred", cache_dir=tmp_path, progress=False)


# --------------------------------------------------------------------------------------- embed_dataset
def test_embed_dataset_order_and_real_features(table, lite0, tmp_path):
    emb = E.embed_dataset(table, lite0, "x0", cache_dir=None, batch_size=2, progress=False)
    test = table.split("test")
    assert emb.ids == test.df["id"].tolist() and emb.X.shape == (len(test), 1280)
    assert emb.embedder_name == lite0.name and emb.cache_path is None
    np.testing.assert_array_equal(emb.X[2:4], lite0.embed([test.image(2), test.image(3)]))


def test_embed_dataset_cache(table, tmp_path, monkeypatch, capsys):
    emb = CountingEmbedder()
    first = E.embed_dataset(table, emb, "x0", cache_dir=tmp_path, batch_size=2, progress=False)
    assert emb.calls == 3 and not first.from_cache and first.cache_path.is_file()
    meta = json.loads(first.cache_path.with_suffix(".json").read_text())
    assert meta["ids"] == first.ids and meta["key"]["variant"] == "x0" and "created" in meta and "seconds" in meta
    assert not list(tmp_path.glob("*.tmp"))

    monkeypatch.setattr(emb, "embed", lambda *a, **k: pytest.fail("a matching cache must be reused"))
    again = E.embed_dataset(table, emb, "x0", cache_dir=tmp_path, progress=False)
    assert again.from_cache and again.ids == first.ids and np.array_equal(again.X, first.X)
    monkeypatch.undo()

    gt = E.embed_dataset(table, emb, "x0*M_GT", cache_dir=tmp_path, progress=False)
    assert gt.cache_path != first.cache_path and not np.array_equal(gt.X, first.X)
    assert E.embed_dataset(table, emb, "x0", split="val", cache_dir=tmp_path, progress=False).cache_path \
        not in (first.cache_path, gt.cache_path)

    # a corrupted array is rebuilt
    first.cache_path.write_bytes(b"not an npy file")
    calls = emb.calls
    rebuilt = E.embed_dataset(table, emb, "x0", cache_dir=tmp_path, progress=False)
    assert emb.calls == calls + 1 and not rebuilt.from_cache and np.array_equal(rebuilt.X, first.X)
    assert "rebuilding" in capsys.readouterr().out

    # a table whose test ids differ (same dataset hash, same file) is not served the old cache
    df = table.df.copy()
    df = df.drop(index=df.index[df["split"] == "test"][0])
    fewer = SampleTable(table.root, df.reset_index(drop=True), table.meta)
    sub = E.embed_dataset(fewer, emb, "x0", cache_dir=tmp_path, progress=False)
    assert not sub.from_cache and sub.cache_path == first.cache_path and sub.ids == first.ids[1:]
    assert E.embed_dataset(fewer, emb, "x0", cache_dir=tmp_path, progress=False).from_cache


def test_segmentation_encoder_and_predicted_masks(table, smoke_run, tmp_path):
    from seg4seg_utils.data.records import read_mask

    seg = E.SegmentationEncoderEmbedder(smoke_run, device="cpu")
    assert seg.dim == 512 and smoke_run.root.name in seg.name and seg.key_fields()["embedder_run"] == smoke_run.root.name
    test = table.split("test")
    x0 = E.embed_dataset(table, seg, "x0", cache_dir=tmp_path, progress=False)
    mp = E.embed_dataset(table, seg, "x0*M_pred", run=smoke_run, cache_dir=tmp_path, progress=False)
    assert x0.X.shape == mp.X.shape == (len(test), 512) and np.isfinite(mp.X).all()
    assert mp.key["run"] == smoke_run.root.name and mp.cache_path != x0.cache_path

    # x0*M_pred is the image zeroed outside the mask the run predicted for that very id
    metrics = smoke_run.metrics().set_index("id")
    masked = [E.apply_variant(test.image(i), "x0*M_pred",
                              pred_mask=read_mask(smoke_run.root / metrics.loc[sid, "prediction"]))
              for i, sid in enumerate(test.df["id"])]
    np.testing.assert_allclose(mp.X, seg.embed(masked), atol=1e-5)

    # an id the run never predicted is named in the error
    df = table.df.copy()
    j = df.index[df["split"] == "test"][0]
    df.loc[j, "id"] = "derm_not_predicted"
    stranger = SampleTable(table.root, df, table.meta)
    with pytest.raises(KeyError, match="derm_not_predicted"):
        E.embed_dataset(stranger, seg, "x0*M_pred", run=smoke_run, cache_dir=None, progress=False)


# ------------------------------------------------------------------------------------------ mask shapes
def test_shape_variants_describe_the_masks_not_the_images(table, smoke_run):
    from seg4seg_utils.data.records import read_mask
    from seg4seg_utils.discovery.descriptors import MASK_DESCRIPTOR_NAMES, mask_descriptors

    test = table.split("test")
    gt = E.embed_dataset(table, CountingEmbedder(), "shape(M_GT)", cache_dir=None, progress=False)
    assert gt.ids == test.df["id"].tolist() and gt.X.shape == (len(test), len(MASK_DESCRIPTOR_NAMES))
    assert gt.embedder_name == E.SHAPE_EMBEDDER_NAME and "embedder" not in gt.key  # no image embedder involved
    def standardised(raw):  # each column over the split; a constant one is 0, not NaN
        varies = raw.std(axis=0) > 0
        return np.where(varies, (raw - raw.mean(0)) / np.where(varies, raw.std(0), 1), 0)

    raw = np.array([[mask_descriptors(test.mask(i))[n] for n in MASK_DESCRIPTOR_NAMES] for i in range(len(test))])
    np.testing.assert_allclose(gt.X, standardised(raw), rtol=1e-5, atol=1e-5)
    assert np.isfinite(gt.X).all()
    # the same images with the predicted masks give other rows: the shape, not the pixels, is what is described
    pred = E.embed_dataset(table, CountingEmbedder(), "shape(M_pred)", run=smoke_run, cache_dir=None, progress=False)
    metrics = smoke_run.metrics().set_index("id")
    raw_pred = np.array([[mask_descriptors(read_mask(smoke_run.root / metrics.loc[sid, "prediction"]))[n]
                          for n in MASK_DESCRIPTOR_NAMES] for sid in test.df["id"]])
    assert not np.allclose(raw_pred, raw) and pred.key["run"] == smoke_run.root.name
    np.testing.assert_allclose(pred.X, standardised(raw_pred), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="needs run="):
        E.embed_dataset(table, CountingEmbedder(), "shape(M_pred)", cache_dir=None, progress=False)
    with pytest.raises(ValueError, match="shape\\(M_GT\\)"):
        E.embed_dataset(table, CountingEmbedder(), "shape(M)", cache_dir=None, progress=False)


# ----------------------------------------------------------------------------------- performance_matrix
def test_performance_matrix():
    m = pd.DataFrame({"id": ["a", "b", "c"], "dice": [0.9, 0.5, 0.1], "iou": [0.8, 0.3, 0.05], "site": ["x"] * 3})
    Y = E.performance_matrix(m)
    assert Y.shape == (3, 1) and Y.dtype == np.float64 and Y[:, 0].tolist() == [0.9, 0.5, 0.1]
    Y = E.performance_matrix(m, ("dice", "iou"), ids=["c", "a"])
    assert Y.tolist() == [[0.1, 0.05], [0.9, 0.8]]
    assert E.performance_matrix(m, "iou", ids=np.array(["b"])).tolist() == [[0.3]]
    with pytest.raises(KeyError, match="zz"):
        E.performance_matrix(m, ids=["a", "zz"])
    with pytest.raises(KeyError, match="hd95"):
        E.performance_matrix(m, ("dice", "hd95"))
    with pytest.raises(TypeError, match="site"):
        E.performance_matrix(m, "site")
    m.loc[1, "dice"] = np.nan
    with pytest.raises(ValueError, match="'b'"):
        E.performance_matrix(m)
    with pytest.raises(ValueError, match="more than once"):
        E.performance_matrix(pd.concat([m, m]), ids=["a"])
