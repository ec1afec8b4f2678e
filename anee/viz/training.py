"""Training curves: REINFORCE (notebook 04)."""

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
