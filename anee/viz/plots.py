"""Figures shared by the notebooks; each returns a matplotlib Figure for `anee.evaluation.results.save_figure`."""

from __future__ import annotations

import matplotlib.pyplot as plt  # noqa: E402
import seaborn as sns  # noqa: E402

sns.set_theme(style="whitegrid", context="notebook")


def budget_bars(table):
    """Layers per token and realized layer fraction against the requested budget."""
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    labels = [f"{b:g}" for b in table.budget]
    axes[0].bar(labels, table.layers_per_token, color="tab:blue")
    axes[0].set(xlabel="energy budget", ylabel="layers executed / token")
    axes[1].bar(labels, table.layer_fraction, color="tab:green", label="realized")
    axes[1].plot(labels, table.budget, "k_", markersize=30, label="budget")
    axes[1].set(xlabel="energy budget", ylabel="fraction of layer compute")
    axes[1].legend()
    fig.tight_layout()
    return fig


def frontier(df, x="total_saved_net", y="ppl", hue="method", ref_ppl=None):
    """Perplexity (log scale) against net compute saved, one line per method."""
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    for name, group in df.groupby(hue, sort=False):
        group = group.sort_values(x)
        ax.plot(100 * group[x], group[y], marker="o", label=name)
    if ref_ppl is not None:
        ax.axhline(ref_ppl, color="k", lw=0.8, ls="--", label="full model")
    ax.set_yscale("log")
    ax.set(xlabel=f"net compute saved, % ({x})", ylabel="perplexity (WikiText-2 test, log scale)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
