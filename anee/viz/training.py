"""Training curves: the layer bypass (notebook 02), REINFORCE (notebook 04)."""

from __future__ import annotations

import matplotlib.pyplot as plt


def rl_curves(history, skip_share: float):
    """Reward, KL and the greedy policy's skip share per step (raw and a 5-step rolling mean; the
    plan's share dashed), and the dual compute price of each training budget."""
    fig, axes = plt.subplots(1, 4, figsize=(15, 3))
    for ax, col in zip(axes, ["reward", "kl", "greedy_skip_share"]):
        ax.plot(history.step, history[col], alpha=0.4)
        ax.plot(history.step, history[col].rolling(5, min_periods=1).mean())
        ax.set_title(col)
        ax.set_xlabel("step")
    axes[2].axhline(skip_share, color="k", lw=0.8, ls="--")
    for b, g in history.groupby("budget"):  # one dual price per training budget
        axes[3].plot(g.step, g.lam, marker=".", label=f"{b:g}")
    axes[3].set(title="lam (per budget)", xlabel="step", yscale="log")
    axes[3].legend(fontsize=6, ncol=2)
    return fig


def bypass_curves(history):
    """Per tuned bypass family: the per-step KL to the full model (a 10-step rolling mean, one line per
    seed) while it stands in for the removed layers; each step removes a random number of layers, so
    the raw KL jumps from step to step."""
    fig, ax = plt.subplots(figsize=(7, 3.2))
    for i, (label, g) in enumerate(history.groupby("bypass", sort=False)):
        for j, (_seed, run) in enumerate(g.groupby("seed")):
            ax.plot(run.step, run.kl.rolling(10, min_periods=1).mean(), color=f"C{i}", alpha=1.0 if j == 0 else 0.5,
                    label=label if j == 0 else None)
    ax.set(xlabel="tuning step", ylabel="KL to the full model (rolling mean)", title="layer bypass: end-to-end tuning")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
