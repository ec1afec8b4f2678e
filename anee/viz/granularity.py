"""Notebook 08's figure: energy against quality for every granularity, in both cost units."""

from __future__ import annotations

import matplotlib.pyplot as plt


def granularity_figure(table, bn_table, cap: float = 20.0):
    """Energy vs quality: LM perplexity relative to the fp32 model on the same windows
    (`quality_rel_fp32`) against relative weight bytes and relative MACs (one marker shape per
    granularity), and BranchyNet accuracy against relative MACs. Ratios above `cap` are drawn on the
    top edge (open triangles); the table has their values."""
    markers = {"coarse": "s", "medium": "^", "fine": "o", "anee": "D", "06": "P"}
    lm = table[table.quality_metric == "ppl"]
    colors = plt.get_cmap("tab20")
    fig, axes = plt.subplots(1, 3, figsize=(17, 5.2), gridspec_kw={"width_ratios": [1.25, 1.25, 1]})
    for ax, unit in zip(axes[:2], ["rel_bytes", "rel_macs"]):
        for k, (strategy, g) in enumerate(lm.groupby("strategy", sort=False)):
            g = g.dropna(subset=[unit]).sort_values(unit)
            if g.empty:
                ax.plot([], [], marker=markers.get(lm[lm.strategy == strategy].granularity.iloc[0], "o"),
                        color=colors(k % 20), label=f"{strategy} [{lm[lm.strategy == strategy].energy_unit.iloc[0]}]")
                continue
            y = g.quality_rel_fp32.clip(upper=cap)
            m = markers.get(g.granularity.iloc[0], "o")
            ax.plot(g[unit], y, marker=m, color=colors(k % 20), label=f"{strategy} [{g.energy_unit.iloc[0]}]", lw=1)
            over = g.quality_rel_fp32 > cap
            if over.any():
                ax.plot(g[unit][over], y[over], ls="none", marker="^", mfc="white", color=colors(k % 20), ms=9)
        ax.axhline(1.0, color="k", lw=0.8, ls="--")
        ax.set(yscale="log", ylim=(0.8, cap * 1.3), xlabel=f"{unit} (fraction of the fp32 model, per token)",
               ylabel="perplexity / fp32 perplexity (same windows, log)")
    axes[0].set_title("LM: weight bytes read per token")
    axes[1].set_title("LM: multiply-accumulates per token")
    handles, labels = axes[1].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=7.5, bbox_to_anchor=(0.4, -0.16))
    axes[2].plot(bn_table.rel_macs, bn_table.accuracy, marker="o")
    for _, r in bn_table.iterrows():
        axes[2].annotate(f"{r.threshold:g}", (r.rel_macs, r.accuracy), fontsize=7)
    axes[2].set(xlabel="MACs (fraction of the CNN without side exits)", ylabel="accuracy (digits test)",
                title="BranchyNet: entropy threshold sweep (labels)")
    fig.tight_layout()
    return fig
