"""Notebook 08's figure: energy against quality for every granularity, in both cost units."""

from __future__ import annotations

import matplotlib.pyplot as plt


def granularity_figure(table, bn_table, cap: float = 20.0):
    """Energy vs quality: LM perplexity relative to the fp32 model on the same windows
    (`quality_rel_fp32`) against three energy proxies, one marker shape per granularity: counted
    weight bytes, counted MACs, and (when the table has `speed_rel_fp32`, see
    `anee.evaluation.granularity.speed.with_speed`) measured decode time per token; and BranchyNet
    accuracy against relative MACs. Ratios above `cap` are drawn on the top edge (open triangles);
    the table has their values."""
    markers = {"coarse": "s", "medium": "^", "fine": "o", "anee": "D", "06": "P"}
    lm = table[table.quality_metric == "ppl"].copy()
    lm["rel_time"] = 1 / lm.speed_rel_fp32 if "speed_rel_fp32" in lm else float("nan")
    colors = plt.get_cmap("tab20")
    fig, grid = plt.subplots(2, 2, figsize=(15, 10.5))
    axes = [grid[0, 0], grid[0, 1], grid[1, 0]]
    units = {"rel_bytes": ("counted: weight bytes read per token",
                           "weight bytes per token (fraction of fp32, counted)"),
             "rel_macs": ("counted: multiply-accumulates per token", "MACs per token (fraction of fp32, counted)"),
             "rel_time": ("measured: decode time per token (batch 1, this CPU)",
                          "decode time per token (fraction of fp32, measured)")}
    for ax, unit in zip(axes, units):
        for k, (strategy, g) in enumerate(lm.groupby("strategy", sort=False)):
            label = f"{strategy} [{g.energy_unit.iloc[0]}]"
            g = g.dropna(subset=[unit]).sort_values(unit)
            m = markers.get(lm[lm.strategy == strategy].granularity.iloc[0], "o")
            if g.empty:
                ax.plot([], [], marker=m, color=colors(k % 20), label=label)
                continue
            y = g.quality_rel_fp32.clip(upper=cap)
            ax.plot(g[unit], y, marker=m, color=colors(k % 20), label=label, lw=1)
            over = g.quality_rel_fp32 > cap
            if over.any():
                ax.plot(g[unit][over], y[over], ls="none", marker="^", mfc="white", color=colors(k % 20), ms=9)
        ax.axhline(1.0, color="k", lw=0.8, ls="--")
        ax.axvline(1.0, color="grey", lw=0.6, ls=":")
        title, xlabel = units[unit]
        ax.set(yscale="log", ylim=(0.8, cap * 1.3), xlabel=xlabel,
               ylabel="perplexity / fp32 perplexity (same windows, log)", title=title)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=7.5, bbox_to_anchor=(0.5, -0.1))
    ax = grid[1, 1]
    ax.plot(bn_table.rel_macs, bn_table.accuracy, marker="o")
    for _, r in bn_table.iterrows():
        ax.annotate(f"{r.threshold:g}", (r.rel_macs, r.accuracy), fontsize=7)
    ax.set(xlabel="MACs (fraction of the CNN without side exits, counted)", ylabel="accuracy (digits test)",
           title="BranchyNet: entropy threshold sweep (labels)")
    fig.tight_layout()
    return fig
