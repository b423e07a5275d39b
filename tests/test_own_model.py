"""Your own model: three folders in, metrics and slices out; clear errors on unmatched or mis-sized files."""
import numpy as np
import pytest
from PIL import Image

from seg4seg_utils.data.records import DatasetError
from seg4seg_utils.discovery.embed import EfficientNetLite0Embedder
from seg4seg_utils.studies.own_model import discover_slices, import_folders


def folders(tmp_path, n=24, bad_size=False):
    rng = np.random.default_rng(0)
    paths = {k: tmp_path / k for k in ("images", "masks", "predictions")}
    for p in paths.values():
        p.mkdir(parents=True)
    for i in range(n):
        img = rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)
        mask = np.zeros((48, 48), np.uint8)
        mask[10:30, 10:30] = 255
        pred = np.roll(mask, i % 6, axis=1)  # worse and worse predictions
        Image.fromarray(img).save(paths["images"] / f"case{i:02d}.png")
        Image.fromarray(mask).save(paths["masks"] / f"case{i:02d}.png")
        Image.fromarray(pred if not (bad_size and i == 3) else pred[:40]).save(paths["predictions"] / f"case{i:02d}.png")
    return paths


def test_import_and_slice(tmp_path):
    p = folders(tmp_path)
    table, metrics = import_folders(p["images"], p["masks"], p["predictions"], tmp_path / "ds")
    assert len(table) == 24 and set(table.df["split"]) == {"test"}
    assert metrics.set_index("id").loc["case00", "dice"] == 1.0
    assert metrics.set_index("id").loc["case05", "dice"] == pytest.approx(2 * 15 * 20 / 800)
    assert (tmp_path / "ds" / "metrics.csv").is_file()
    sf, emb, summary = discover_slices(table, metrics, EfficientNetLite0Embedder(), n_slices=3,
                                       cache_dir=tmp_path / "cache")
    assert summary["size"].sum() == 24
    eligible = summary[summary["eligible"]]
    assert eligible["mean"].is_monotonic_increasing and summary["eligible"].iat[0]


def test_unmatched_and_missized_files_are_clear_errors(tmp_path):
    p = folders(tmp_path / "a")
    (p["masks"] / "case07.png").unlink()
    with pytest.raises(DatasetError, match=r"1 image\(s\) have no ground-truth mask .*case07"):
        import_folders(p["images"], p["masks"], p["predictions"], tmp_path / "a" / "ds")
    q = folders(tmp_path / "b", bad_size=True)
    with pytest.raises(DatasetError, match="case03.png: predicted mask is 48x40"):
        import_folders(q["images"], q["masks"], q["predictions"], tmp_path / "b" / "ds")
    with pytest.raises(DatasetError, match="images folder does not exist"):
        import_folders(tmp_path / "none", q["masks"], q["predictions"], tmp_path / "c")
