"""Each distinct image is embedded once across datasets, and every row is the row the plain batch gives."""
import numpy as np
import pytest

from seg4seg_utils.data.inject import inject
from seg4seg_utils.data.phantoms import generate_phantom_dataset
from seg4seg_utils.discovery.embed import EfficientNetLite0Embedder, embed_dataset
from seg4seg_utils.discovery.embedding_memo import EmbeddingMemo, embed_batches
from seg4seg_utils.discovery.patches import embed_patches


@pytest.fixture(scope="module")
def lite():
    return EfficientNetLite0Embedder()


@pytest.fixture(scope="module")
def clean_and_injected(tmp_path_factory):
    # case B crops the injected images, so the injected dataset shares its other test images with the clean one;
    # 40 test images in batches of 20: a batch of only the new ones would be smaller (other last bits, measured)
    root = tmp_path_factory.mktemp("memo")
    clean = generate_phantom_dataset("dermoscopy", root / "clean", n=200, size=64, seed=0, progress=False)
    return clean, inject(clean, "B", 0.1, seed=0, out=root / "B", progress=False)


def counted(embedder, monkeypatch):
    """Count the images ``embedder`` runs through its network."""
    seen = []
    real = type(embedder).embed
    monkeypatch.setattr(embedder, "embed", lambda images, batch_size=None: seen.append(len(images))
                        or real(embedder, images, batch_size), raising=False)
    return seen


def test_a_row_depends_on_the_batch_size_not_on_the_other_images(lite):
    # what the memo relies on (packaged EfficientNet-Lite0, one thread): companions and places do not matter
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (48, 48, 3), dtype=np.uint8) for _ in range(16)]
    plain = lite.embed(images[:8], batch_size=8)
    mixed = lite.embed(images[:4] + images[8:12], batch_size=8)
    swapped = lite.embed(images[4:8] + images[:4], batch_size=8)
    assert np.array_equal(plain[:4], mixed[:4]) and np.array_equal(plain[:4], swapped[4:])


def test_rows_are_the_plain_rows_and_seen_images_are_not_embedded_again(lite, clean_and_injected, tmp_path,
                                                                        monkeypatch):
    clean, injected = clean_and_injected
    plain = {v: embed_dataset(injected, lite, v, cache_dir=None, batch_size=20, progress=False).X
             for v in ("x0", "x0*M_GT")}
    cache = tmp_path / "cache"
    seen = counted(lite, monkeypatch)
    for v in ("x0", "x0*M_GT"):
        embed_dataset(clean, lite, v, cache_dir=cache, batch_size=20, progress=False)
    n_test = len(clean.split("test"))
    assert sum(seen) == 2 * n_test, "nothing seen yet: every image embedded once"
    seen.clear()
    for v in ("x0", "x0*M_GT"):
        again = embed_dataset(injected, lite, v, cache_dir=cache, batch_size=20, progress=False)
        assert np.array_equal(again.X, plain[v]), v
    cropped = int(injected.split("test").df["failure"].astype(bool).sum())
    assert 0 < cropped < n_test and sum(seen) < 2 * n_test, f"{sum(seen)} images embedded for {cropped} new ones x 2"
    assert all(n == 20 for n in seen), "merged batches have the plain batch size"


def test_patches_of_seen_images_are_read_back_with_the_same_numbers(lite, clean_and_injected, tmp_path, monkeypatch):
    clean, injected = clean_and_injected
    plain = embed_patches(injected, lite, grid=2, cache_dir=None, batch_size=8, progress=False)[1]
    embed_patches(clean, lite, grid=2, cache_dir=tmp_path, batch_size=8, progress=False)
    seen = counted(lite, monkeypatch)
    again = embed_patches(injected, lite, grid=2, cache_dir=tmp_path, batch_size=8, progress=False)[1]
    assert np.array_equal(again, plain)
    assert sum(seen) < 4 * len(injected.split("test"))


def test_without_a_memo_every_batch_is_embedded_as_it_comes(lite, monkeypatch):
    rng = np.random.default_rng(1)
    batches = [[rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(n)] for n in (3, 3, 2)]
    seen = counted(lite, monkeypatch)
    rows = embed_batches(lite, batches)
    assert seen == [3, 3, 2] and [len(r) for r in rows] == [3, 3, 2]


def test_a_damaged_row_is_computed_again(lite, tmp_path):
    memo = EmbeddingMemo(tmp_path, lite)
    image = np.zeros((16, 16, 3), np.uint8)
    first = embed_batches(lite, [[image]], memo)[0]
    path = next(memo.folder.rglob("*.npy"))
    path.write_bytes(path.read_bytes()[:40])  # cut short
    assert np.array_equal(embed_batches(lite, [[image]], memo)[0], first)
