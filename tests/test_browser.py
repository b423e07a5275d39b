"""Slice browser: ids aligned across map/metrics/predictions, state and gallery follow the selection, colour-by
options, static HTML (one section per slice, decodable PNGs), explanations in both forms, empty slices."""
import base64
import io
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from seg4seg_utils.data.records import SampleTable, write_png
from seg4seg_utils.report.browser import NO_EXPLANATION, SliceBrowser, normalise_explanations

N = 12
# slice 0: members 0-3 (good), slice 1: members 4-7 (bad, all carry the attribute), slice 2: members 8-11, slice 3: empty
LABELS = np.repeat([0, 1, 2], 4)
DICE = np.array([0.9, 0.95, 0.92, 0.97, 0.2, 0.4, 0.1, 0.3, 0.8, 0.85, 0.7, 0.9])
FLAG = np.array([False] * 4 + [True] * 4 + [False, False, False, True])


@pytest.fixture()
def data(tmp_path):
    """A 12-image dataset on disk (ids s00..s11), shuffled metrics with attributes, predicted masks on disk."""
    root = tmp_path / "ds"
    rng = np.random.default_rng(0)
    rows = []
    for folder in (root / "images", root / "masks", tmp_path / "run" / "predictions"):
        folder.mkdir(parents=True)
    for i in range(N):
        sid = f"s{i:02d}"
        img = rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)
        mask = np.zeros((24, 24), bool)
        mask[6:18, 6:18] = True
        write_png(img, root / "images" / f"{sid}.png")
        write_png(mask, root / "masks" / f"{sid}.png")
        write_png(np.roll(mask, i % 5, axis=1), tmp_path / "run" / "predictions" / f"{sid}.png")
        rows.append({"id": sid, "split": "test", "image": f"images/{sid}.png", "mask": f"masks/{sid}.png",
                     "source": "unit"})
    table = SampleTable(root, pd.DataFrame(rows), {"mask_kind": "binary"})
    ids = [f"s{i:02d}" for i in range(N)]
    metrics = pd.DataFrame({"id": ids, "dice": DICE, "ppv": DICE ** 0.5, "npv": np.ones(N), "flag": FLAG,
                            "style": ["flood", "polygon"] * 6, "gain": np.linspace(0.5, 1.5, N),
                            "tp": np.arange(N), "prediction": [f"predictions/{s}.png" for s in ids]})
    metrics = metrics.sample(frac=1.0, random_state=1).reset_index(drop=True)  # a different order than the map
    xy = np.c_[LABELS * 5.0 + np.arange(N) % 4, np.arange(N) * 0.1]
    preds = {s: tmp_path / "run" / "predictions" / f"{s}.png" for s in ids}
    return table, ids, xy, metrics, preds, tmp_path / "run"


def make(data, **kw):
    table, ids, xy, metrics, preds, _ = data
    kw.setdefault("predictions", preds)
    kw.setdefault("n_slices", 4)
    return SliceBrowser(table, ids, xy, LABELS, metrics, **kw)


def gallery_ids(fig):
    """Sample ids shown in a gallery: the first line of every panel title."""
    return [ax.get_title().split("\n")[0] for ax in fig.axes if ax.get_title()]


# ------------------------------------------------------------------------------------------------ alignment
def test_metrics_are_aligned_to_the_map_order(data):
    b = make(data)
    assert b.ids == [f"s{i:02d}" for i in range(N)]
    np.testing.assert_allclose(b.scores, DICE)  # metrics were shuffled; the browser follows ids
    assert b.metrics["flag"].tolist() == FLAG.tolist()
    np.testing.assert_allclose(b.slices["mean_dice"].to_numpy()[:3], [DICE[:4].mean(), DICE[4:8].mean(), DICE[8:].mean()])


def test_missing_ids_are_named(data):
    table, ids, xy, metrics, preds, _ = data
    with pytest.raises(KeyError, match=r"metrics has no row for 2 of the 12 ids.*'s03'.*'s07'"):
        SliceBrowser(table, ids, xy, LABELS, metrics[~metrics["id"].isin(["s03", "s07"])])
    with pytest.raises(KeyError, match=r"predictions are missing for 1 of the 12 ids.*'s05'"):
        SliceBrowser(table, ids, xy, LABELS, metrics, predictions={k: v for k, v in preds.items() if k != "s05"})
    with pytest.raises(KeyError, match=r"has no sample for 1 of the 13 ids.*'ghost'"):
        SliceBrowser(table, ids + ["ghost"], np.r_[xy, [[0, 0]]], np.r_[LABELS, 0],
                     pd.concat([metrics, metrics.iloc[:1].assign(id="ghost")]))
    with pytest.raises(ValueError, match=r"xy must have shape \(12, 2\)"):
        SliceBrowser(table, ids, xy[:, :1], LABELS, metrics)
    with pytest.raises(ValueError, match="labels must have shape"):
        SliceBrowser(table, ids, xy, LABELS[:-1], metrics)
    with pytest.raises(ValueError, match="ids must be unique.*'s01'"):
        SliceBrowser(table, ["s01"] + ids[1:], xy, LABELS, metrics)


def fake_run(data, X):
    """Stand-ins for a train.Run (root and metrics(): all from_run reads) and an Embeddings (ids and X)."""
    _, ids, _, metrics, _, run_root = data

    class FakeRun:
        root = run_root

        def metrics(self):
            return metrics

    return FakeRun(), SimpleNamespace(ids=ids, X=X)


def test_from_run_reads_metrics_and_prediction_files(data):
    table, xy = data[0], data[2]
    run, emb = fake_run(data, np.zeros((N, 3)))
    b = SliceBrowser.from_run(table, run, emb, LABELS, xy=xy, attribute="flag", n_slices=4)
    pred = b.prediction("s03")
    assert pred.dtype == bool and pred.sum() == 144 and pred[6, 9 + 0] and not pred[6, 6]  # rolled by 3
    assert b.title.startswith("run ")


# ------------------------------------------------------------------------------------------------ state
def test_failing_slice_is_the_protocol_winner_and_is_selected_first(data):
    b = make(data, attribute="flag")
    assert b.report.success and b.report.winning_slice == 1
    assert b.failing_slice == 1 and b.selected == 1
    assert b.slice_options()[0][1] == 1 and "failing" in b.slice_options()[0][0]
    # without an attribute: the protocol's label-free report (no winner), and its worst eligible slice
    plain = make(data)
    assert plain.report.winning_slice is None and not plain.report.success
    assert plain.failing_slice == plain.report.worst_slice == 1
    assert "purity" not in plain.slices.columns  # all NaN without an attribute: no column


def test_failing_slice_is_the_protocols_choice_not_the_lowest_mean(data):
    """Slice 2 is pure for the attribute and in the bottom 40 % (ranks 1-2 of 3), slice 1 has the lowest mean:
    the protocol's winner (SliceReport.focus_slice) is the one shown first, never a second rule of the browser."""
    in_slice_2 = LABELS == 2
    b = make(data, attribute=in_slice_2)
    assert b.report.winning_slice == 2 and b.report.worst_slice == 1
    assert b.failing_slice == b.selected == 2 and b.slice_options()[0][1] == 2
    assert "failing slice (protocol winner)" in b.metrics_html(2) and b.slice_flags(1) == ["bottom"]
    assert "<details class='s4s-details' data-slice='2' open" in b.to_html(n=1)


def test_selecting_a_slice_updates_state_and_the_gallery_shows_only_members(data):
    b = make(data, attribute="flag", order="performance")
    b.select(2)
    assert b.state == {"selected": 2, "colour_by": "slice", "n_show": 8}
    shown = gallery_ids(b.gallery())
    assert shown == ["s10", "s08", "s09", "s11"]  # all members of slice 2, worst Dice first
    assert all(LABELS[int(s[1:])] == 2 for s in shown)
    assert gallery_ids(b.gallery(1, n=2)) == ["s06", "s04"]
    assert gallery_ids(b.show(3).gallery()) == ["s10", "s08", "s09"] and len(b.members()) == 4
    with pytest.raises(ValueError, match=r"no slice 7: slices are 0..3"):
        b.select(7)
    with pytest.raises(ValueError, match="positive integer"):
        b.show(0)


def test_members_follow_slice_probability_when_given(data):
    proba = np.full((N, 4), 0.01)
    proba[np.arange(N), LABELS] = np.linspace(0.5, 0.9, N)  # later members are more typical
    b = make(data, proba=proba)
    assert b.order == "proba" and b.members(0) == ["s03", "s02", "s01", "s00"]


def test_predictions_are_loaded_lazily_and_cached(data):
    calls = []
    mask = np.zeros((24, 24), np.uint8)
    mask[2:8, 2:8] = 1

    def load(sid):
        calls.append(sid)
        return mask

    b = make(data, predictions=load)
    assert calls == []  # nothing read while building
    b.gallery(0)
    b.gallery(0)
    assert sorted(calls) == ["s00", "s01", "s02", "s03"]
    assert b.prediction("s00").dtype == bool and b.prediction("s00").sum() == 36


def test_widget_controls_drive_the_state(data):
    pytest.importorskip("ipywidgets")
    b = make(data, attribute="flag", explanations={2: "mostly polygon masks"})
    w = b.widget()
    assert sorted(v for _, v in w.slice.options) == [0, 1, 2, 3]
    assert w.slice.value == 1 and "data-slice" not in w.details.value
    w.slice.value = 2
    assert b.selected == 2
    assert "mostly polygon masks" in w.details.value and "4 (33.3% of the test set)" in w.details.value
    before = w.gallery.value
    w.n_show.value = 2
    assert b.n_show == 2 and w.gallery.value != before
    w.colour.value = "gain"
    assert b.colour_by == "gain"
    w.slice.value = 3  # the empty slice
    assert "no members" in w.gallery.value
    w.failing_button.click()
    assert b.selected == 1


# ------------------------------------------------------------------------------------------------ colour by
def test_colour_options_and_unknown_attribute(data):
    b = make(data, attribute="flag")
    opts = b.colour_options
    assert opts[:4] == ["slice", "dice", "ppv", "npv"]
    assert {"flag", "style", "gain"} <= set(opts) and not {"id", "prediction", "tp"} & set(opts)
    for o in ("slice", "dice", "flag", "style", "gain"):
        fig = b.colour(o).scatter()
        assert fig.axes[0].get_title() == f"coloured by {o}"
    # boolean columns: the rarer value is pink (what a reader looks for), the purity attribute's True is pink
    table, ids, xy, metrics, preds, _ = data
    c = SliceBrowser(table, ids, xy, LABELS, metrics.assign(present=~metrics["flag"].astype(bool)), n_slices=4)
    colours = {h.get_label(): h.get_color() for h in c.scatter("present", highlight=None).axes[0].get_legend().legend_handles}
    assert colours == {"False": "#ff4081", "True": "#b0bec5"}
    with pytest.raises(ValueError, match=r"cannot colour by 'size_mm'; choose one of \['slice', 'dice'"):
        b.colour("size_mm")
    with pytest.raises(ValueError, match="attribute 'nope' is not a column.*'flag'"):
        make(data, attribute="nope")
    with pytest.raises(ValueError, match="attribute 'style' must be boolean"):
        make(data, attribute="style")


# ------------------------------------------------------------------------------------------------ static view
def test_static_html_has_one_section_per_slice_with_valid_images(data):
    b = make(data, attribute="flag", explanations={1: "dark images"})
    page = b.to_html(n=3)
    sections = re.findall(r"<details class='s4s-details' data-slice='(\d+)'( open)?", page)
    assert sorted(int(s) for s, _ in sections) == [0, 1, 2, 3]
    assert [int(s) for s, o in sections if o] == [1]  # the failing slice is expanded
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) == 1 + 3  # overview + one gallery per non-empty slice
    for b64 in images:
        raw = base64.b64decode(b64, validate=True)
        assert raw[:8] == b"\x89PNG\r\n\x1a\n"
        with Image.open(io.BytesIO(raw)) as im:
            assert im.size[0] > 50 and im.size[1] > 20
    assert "dark images" in page and page.count(NO_EXPLANATION) >= 3
    assert "No test image was assigned to this slice" in page
    table_html = page[page.index("s4s-table"):]
    table_html = table_html[:table_html.index("</table>")]
    assert "failing, bottom" in table_html and "<th>explanation</th>" in table_html
    assert "<th>explanation</th>" not in make(data).to_html(n=1)  # no explanations: no column
    out = b.save_html(Path(data[5]) / "browser.html")
    assert out.read_text().startswith("<!doctype html>")


def test_empty_slice_is_handled_everywhere(data):
    b = make(data)
    assert b.members(3) == [] and b.slice_metrics(3)["size"] == 0
    assert b.slice_options()[-1] == ("slice 3: empty", 3)
    fig = b.gallery(3)
    assert "no members" in fig.axes[0].texts[0].get_text()
    assert "<table" in b.metrics_html(3)


# ------------------------------------------------------------------------------------------------ explanations
def test_explanations_in_both_forms(data):
    mapping = {1: "images without calipers", "2": "polygon annotations"}
    frame = pd.DataFrame({"slice": [1, 2], "sentence": ["images without calipers", "polygon annotations"],
                          "score": [0.9, 0.5]})
    for given in (mapping, frame, frame.rename(columns={"sentence": "text"})):
        b = make(data, explanations=given)
        assert b.explanation(1) == "images without calipers" and b.explanation(2) == "polygon annotations"
        assert b.explanation(0) == NO_EXPLANATION
        assert b.summary_table()["explanation"].tolist()[1] == "images without calipers"
    assert make(data).explanation(1) == NO_EXPLANATION
    with pytest.raises(ValueError, match="needs one of the columns"):
        normalise_explanations(pd.DataFrame({"slice": [0], "tokens": ["x"]}))
    with pytest.raises(ValueError, match="slice 9 does not exist"):
        make(data, explanations={9: "?"})
    with pytest.raises(TypeError):
        normalise_explanations(["a", "b"])


# ------------------------------------------------------------------------------------------------ contrast
def test_contrast_names_the_planted_attribute(data):
    b = make(data)  # no purity attribute, so 'flag' is a candidate
    c = b.contrast(1)
    assert c["column"].iat[0] == "flag" and c["value"].iat[0] == "True"
    assert c["effect"].iat[0] == pytest.approx(abs(2 * np.arcsin(1.0) - 2 * np.arcsin(np.sqrt(1 / 8))))
    assert c["text"].iat[0] == "flag = True: 100% here vs 12% elsewhere"
    assert "style" not in set(c["column"])  # 50/50 inside and outside: no effect
    assert "flag" not in set(make(data, attribute="flag").contrast(1)["column"])  # purity covers it
    assert b.contrast(3).empty  # empty slice
    assert "Stands out in the metadata:</b> flag = True" in b.explanation_html(1)


def test_contrast_keeps_the_hidden_attribute_and_its_recodings_out_unless_oracle(data):
    table, ids, xy, metrics, preds, _ = data
    # 'caliper' recodes the purity attribute 'failure' (as in case A); 'flag' is unrelated to it here
    failure = np.array([False] * 4 + [True] * 4 + [False] * 4)
    by_id = dict(zip(ids, failure))
    m = metrics.assign(failure=metrics["id"].map(by_id), caliper=~metrics["id"].map(by_id),
                       crop_box=[("1 2 3 4" if by_id[i] else None) for i in metrics["id"]])
    b = SliceBrowser(table, ids, xy, LABELS, m, attribute="failure", predictions=preds, n_slices=4)
    assert b.hidden_columns == ["failure", "caliper", "crop_box"]
    honest = b.contrast(1, top=10)
    assert not {"failure", "caliper", "crop_box"} & set(honest["column"]) and "flag" in set(honest["column"])
    assert "caliper" not in b.explanation_html(1)
    oracle = b.contrast(1, top=10, oracle=True)
    assert {"caliper", "crop_box"} <= set(oracle["column"]) and "failure" not in set(oracle["column"])
    marked = oracle[oracle["column"].isin(["caliper", "crop_box"])]["text"]
    assert marked.str.endswith("(oracle: hidden attribute)").all()
    assert not oracle[oracle["column"] == "flag"]["text"].str.contains("oracle").any()
    # without a purity attribute a 'failure' column is still hidden, and so are its recodings
    assert make((table, ids, xy, m, preds, None)).hidden_columns == ["failure", "caliper", "crop_box"]


# ------------------------------------------------------------------------------------------------ the split
BROWSER = Path(__file__).resolve().parents[1] / "seg4seg_utils" / "report" / "browser"


def test_the_model_needs_no_view(data, monkeypatch):
    """model.py imports no drawing, HTML or widget library, and a BrowserModel answers every data question
    with ipywidgets unavailable; only building a widget then fails, with a message naming the static view."""
    import ast

    imported = {(n.module if isinstance(n, ast.ImportFrom) else a.name).split(".")[0]
                for n in ast.walk(ast.parse((BROWSER / "model.py").read_text()))
                if isinstance(n, (ast.Import, ast.ImportFrom)) for a in n.names}
    assert not imported & {"matplotlib", "ipywidgets", "IPython", "html"}
    from seg4seg_utils.report.browser import BrowserModel

    monkeypatch.setitem(__import__("sys").modules, "ipywidgets", None)  # import ipywidgets -> ImportError
    table, ids, xy, metrics, preds, _ = data
    m = BrowserModel(table, ids, xy, LABELS, metrics, predictions=preds, attribute="flag", n_slices=4)
    assert not any(hasattr(m, v) for v in ("scatter", "gallery", "to_html", "widget"))
    assert m.failing_slice == 1 and m.select(2).state["selected"] == 2 and m.size() == 4
    assert m.slice_flags(1) == ["failing", "bottom"] and m.slice_flags(3) == ["empty"]
    image, truth = m.image("s04")
    assert image.shape[:2] == truth.shape == (24, 24) and truth.dtype == bool
    assert "purity 1.00 for flag" in m.verdict()
    with pytest.raises(ImportError, match="static_view"):
        make(data).widget()
    assert "<details" in make(data).to_html(n=1)  # the static view does not need ipywidgets either


def test_saved_page_is_self_contained(data, tmp_path):
    """Every image is embedded: the page can be mailed or put in the book without any file beside it."""
    page = make(data, attribute="flag").save_html(tmp_path / "elsewhere" / "b.html", n=2).read_text()
    sources = re.findall(r"""\b(?:src|href)\s*=\s*["']([^"']*)""", page)
    assert len(sources) == 4 and all(s.startswith("data:image/png;base64,") for s in sources)
    assert not re.search(r"<(script|link|iframe)\b", page) and "url(" not in page
    assert page.rstrip().endswith("</html>") and list(tmp_path.joinpath("elsewhere").iterdir()) == [
        tmp_path / "elsewhere" / "b.html"]


def test_from_slicer_takes_labels_proba_and_k_from_the_fit(data):
    from sklearn.exceptions import NotFittedError

    from seg4seg_utils.discovery.slicer import KMeansSlicer

    table, xy = data[0], data[2]
    run, emb = fake_run(data, np.c_[LABELS * 10.0, np.arange(N) % 2])
    slicer = KMeansSlicer(n_slices=4, reduce=None, random_state=0).fit(emb.X, DICE)
    b = SliceBrowser.from_slicer(table, run, emb, slicer, xy=xy, attribute="flag")
    ref = SliceBrowser.from_run(table, run, emb, slicer.labels_, xy=xy, attribute="flag", proba=slicer.proba_,
                                n_slices=4)
    assert b.n_slices == 4 and b.order == "proba" and b.labels.tolist() == slicer.labels_.tolist()
    pd.testing.assert_frame_equal(b.slices, ref.slices)
    assert b.failing_slice == ref.failing_slice == int(slicer.labels_[4])  # the bad, flagged images' slice
    with pytest.raises(TypeError, match="takes \\['labels'\\] from the slicer"):
        SliceBrowser.from_slicer(table, run, emb, slicer, xy=xy, labels=LABELS)
    with pytest.raises(NotFittedError):
        SliceBrowser.from_slicer(table, run, emb, KMeansSlicer(n_slices=4), xy=xy)
