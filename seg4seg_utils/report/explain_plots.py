"""Figures of the explanation study: the most distinctive tokens of a slice."""
from __future__ import annotations

import pandas as pd

__all__ = ["distinctiveness_plot"]


def distinctiveness_plot(scores: dict[str, pd.Series], highlight: dict[str, str] | None = None, n_top: int = 6,
                         title: str = "Most distinctive tokens of the worst slice"):
    """One horizontal bar chart per entry (e.g. per case): the ``n_top`` tokens by distinctiveness; the token
    in ``highlight[key]`` (the injected attribute, for an oracle figure that recorded it) is drawn in red, the
    others in grey. Without ``highlight`` nothing is marked."""
    import matplotlib.pyplot as plt

    if not scores:
        raise ValueError("distinctiveness_plot needs at least one series of scores")
    highlight = highlight or {}
    fig, axes = plt.subplots(1, len(scores), figsize=(3.6 * len(scores), 0.45 * n_top + 1.4), squeeze=False)
    for ax, (key, s) in zip(axes[0], scores.items()):
        s = s.iloc[:n_top][::-1]
        colours = ["tab:red" if t == highlight.get(key) else "0.6" for t in s.index]
        ax.barh([t.replace("_", " ") for t in s.index], s.to_numpy(), color=colours)
        ax.axvline(0, color="k", lw=0.6)
        target = highlight.get(key)
        missing = f"\n({target.replace('_', ' ')!r} not in the top {n_top})" if target and target not in s.index else ""
        ax.set_title(f"{key}{missing}", fontsize=9)
        ax.set_xlabel("mean TF-IDF, slice - reference", fontsize=8)
        ax.tick_params(labelsize=8)
    fig.suptitle(title + (" (red: the injected attribute's token)" if highlight else ""), fontsize=10)
    fig.tight_layout()
    return fig
