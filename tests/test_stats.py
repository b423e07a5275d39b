"""Counts and Wilson intervals beside detection rates: the interval, the table columns, the figure text."""
import math

import numpy as np
import pandas as pd
import pytest

from seg4seg_utils.stats import detection_display, detection_pivot, rate_label, wilson_interval, with_detection_counts


def wilson_by_hand(k, n, z=1.959963984540054):
    """Wilson (1927): (p + z^2/2n +- z sqrt(p(1-p)/n + z^2/4n^2)) / (1 + z^2/n)."""
    p = k / n
    centre, half = p + z * z / (2 * n), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (centre - half) / (1 + z * z / n), (centre + half) / (1 + z * z / n)


@pytest.mark.parametrize("k,n", [(4, 5), (0, 5), (5, 5), (1, 5), (9, 15), (0, 1), (37, 100)])
def test_wilson_interval_matches_the_formula(k, n):
    assert wilson_interval(k, n) == pytest.approx(wilson_by_hand(k, n), abs=1e-9)


def test_wilson_interval_known_values_and_edges():
    assert wilson_interval(4, 5) == pytest.approx((0.3755, 0.9638), abs=1e-4)
    low, high = wilson_interval(0, 5)
    assert low == 0 and high == pytest.approx(0.4345, abs=1e-4)   # not degenerate at k = 0 ...
    low, high = wilson_interval(5, 5)
    assert high == 1 and low == pytest.approx(0.5655, abs=1e-4)   # ... nor at k = n
    assert wilson_interval(15, 15)[0] == pytest.approx(0.7961, abs=1e-4)
    assert all(math.isnan(v) for v in wilson_interval(0, 0))
    narrow, wide = wilson_interval(4, 5, confidence=0.5), wilson_interval(4, 5, confidence=0.99)
    assert wide[0] < narrow[0] < 0.8 < narrow[1] < wide[1]
    for bad in [(6, 5), (-1, 5), (1.5, 5)]:
        with pytest.raises(ValueError, match="0 <= k <= n"):
            wilson_interval(*bad)
    with pytest.raises(ValueError, match="confidence"):
        wilson_interval(1, 5, confidence=1.0)


def test_counts_columns_labels_and_pivot():
    table = pd.DataFrame({"case": ["A", "A", "B"], "prevalence": [0.05, 0.1, 0.05],
                          "detection_rate": [0.8, 1.0, 0.0], "perf_pass": [1.0, 1.0, 0.2], "n_seeds": [5, 5, 5]})
    out = with_detection_counts(table)
    assert list(out.columns) == ["case", "prevalence", "detection_rate", "k", "n", "ci_low", "ci_high", "perf_pass",
                                 "n_seeds"]
    assert out["k"].tolist() == [4, 5, 0] and out["n"].tolist() == [5, 5, 5]
    assert out.loc[0, ["ci_low", "ci_high"]].tolist() == pytest.approx([0.3755, 0.9638], abs=1e-4)
    pd.testing.assert_frame_equal(with_detection_counts(out), out)  # recomputed, never duplicated
    assert rate_label(4, 5) == "0.8 (4/5, 0.38-0.96)" and rate_label(7, 15) == "0.47 (7/15, 0.25-0.70)"
    assert rate_label(0, 0) == "-"
    shown = detection_display(out)
    assert shown["detection_rate"].tolist() == ["0.8 (4/5, 0.38-0.96)", "1.0 (5/5, 0.57-1.00)", "0.0 (0/5, 0.00-0.43)"]
    assert "ci_low" not in shown.columns and "| 0.8 (4/5, 0.38-0.96) |" in shown.to_markdown(index=False)
    pivot = detection_pivot(out, "case", "prevalence", order=["B", "A"])
    assert pivot.index.tolist() == ["B", "A"]
    assert pivot.loc["A", "mean"] == "0.9 (9/10, 0.60-0.98)" and pivot.loc["B", 0.1] == "-"


def test_detection_table_carries_counts():
    from seg4seg_utils.studies.benchmark import detection_table

    rows = pd.DataFrame({"case": ["A"] * 5 + ["B"] * 5, "prevalence": 0.1, "success": [1, 1, 1, 1, 0] + [0] * 5,
                         "perf_pass": True, "purity_pass": True, "omega2": 0.2, "max_purity": 0.9})
    rows["success"] = rows["success"].astype(bool)
    table = detection_table(rows).set_index("case")
    assert table.loc["A", ["k", "n"]].tolist() == [4, 5] and table.loc["B", "k"] == 0
    assert table.loc["A", "ci_low"] == pytest.approx(0.3755, abs=1e-4)
    assert table.loc["B", "ci_high"] == pytest.approx(0.4345, abs=1e-4)


def texts(fig):
    return [t.get_text() for ax in fig.axes for t in ax.texts]


def test_heatmap_and_bars_show_counts_and_intervals():
    from seg4seg_utils.report.patch_plots import detection_bars_figure
    from seg4seg_utils.report.plots import detection_heatmap

    table = with_detection_counts(pd.DataFrame({
        "case": ["A", "A", "B", "B"], "prevalence": [0.05, 0.1, 0.05, 0.1], "detection_rate": [0.8, 1.0, 0.0, 0.4],
        "perf_pass": [1.0, 1.0, 0.4, 0.6], "purity_pass": [1.0, 1.0, 0.2, 0.6], "n_seeds": 5}))
    cells = texts(detection_heatmap(table))
    assert len(cells) == 3 * 4
    assert "0.8\n4/5\n0.38-0.96" in cells and "0.0\n0/5\n0.00-0.43" in cells  # detection rate panel
    assert "0.4\n2/5\n0.12-0.77" in cells                                     # perf-pass (B, 5 %)
    # two rows in one cell are pooled: 4/5 and 5/5 -> 9/10
    pooled = texts(detection_heatmap(table.assign(prevalence=0.05).iloc[:2], values=("detection_rate",)))
    assert pooled == ["0.9\n9/10\n0.60-0.98"]
    # without counts the cells show the plain rate, as before
    assert "0.8" in texts(detection_heatmap(table.drop(columns=["n_seeds"])))
    summary = table.rename(columns={"case": "level"}).assign(case="B")
    bars = texts(detection_bars_figure(summary, "B"))
    assert "0.8\n4/5" in bars and "0.0\n0/5" in bars
    from matplotlib.container import ErrorbarContainer

    errorbars = [c for c in detection_bars_figure(summary, "B").axes[0].containers if isinstance(c, ErrorbarContainer)]
    assert len(errorbars) == 2  # one per level: the Wilson intervals
    (segment, *_), = [seg.get_segments() for seg in errorbars[0].lines[2]]
    assert np.allclose(segment[:, 1], [0.3755, 0.9638], atol=1e-4)  # level "A" at 5 %: 4/5


def test_configuration_heatmap_shows_every_cell_with_its_count_and_frames_the_ones_at_target():
    from matplotlib.patches import Rectangle

    from seg4seg_utils.report.plots import configuration_heatmap

    table = pd.DataFrame({"configuration": ["x0 + dice"] * 3 + ["shape + ppv"] * 3,
                          "case": ["A", "A", "C"] * 2, "prevalence": [0.05, 0.1, 0.05] * 2,
                          "k": [15, 12, 0, 9, 11, 14], "n": [15] * 6})
    fig = configuration_heatmap(table)
    ax = fig.axes[0]
    assert sorted(texts(fig)) == sorted(["15/15", "12/15", "0/15", "9/15", "11/15", "14/15"])
    assert [t.get_text() for t in ax.get_yticklabels()] == ["x0 + dice", "shape + ppv"]  # in the table's order
    assert [t.get_text() for t in ax.get_xticklabels()] == ["A 5%", "A 10%", "C 5%"]
    framed = sorted((round(p.get_x() + 0.5), round(p.get_y() + 0.5)) for p in ax.patches if isinstance(p, Rectangle))
    assert framed == [(0, 0), (1, 0), (2, 1)]  # 15/15 and 12/15 (0.8) of the default, 14/15 of the shape
