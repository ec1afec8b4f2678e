"""Figures shared by the notebooks; each returns a matplotlib Figure for `anee.evaluation.results.save_figure`."""

from __future__ import annotations

import matplotlib.pyplot as plt  # noqa: E402
import seaborn as sns  # noqa: E402

sns.set_theme(style="whitegrid", context="notebook")


def by_budget(table, columns: dict[str, str], hue: str = "controller", reference: str | None = None):
    """One panel per column (`{column: y label}`): its value against the energy budget, one line per
    `hue`; `reference` names a column drawn as the budget itself (y = x) for comparison."""
    fig, axes = plt.subplots(1, len(columns), figsize=(4.6 * len(columns), 3.4), squeeze=False)
    for ax, (column, label) in zip(axes[0], columns.items()):
        for name, group in table.groupby(hue, sort=False):
            group = group.sort_values("budget")
            ax.plot(group.budget, group[column], marker="o", label=name)
        if column == reference:
            ax.plot(table.budget.sort_values(), table.budget.sort_values(), "k--", lw=0.8, label="budget")
        ax.set(xlabel="energy budget", ylabel=label)
    axes[0][-1].legend(fontsize=8)
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
