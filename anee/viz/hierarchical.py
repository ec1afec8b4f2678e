"""Figures for notebook 05 (training curves, routing analysis)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def training_curves(history):
    """Phase 1 (router training and / or FFN-bypass tuning, one line per seed, with the capacity each
    step sampled) and phase 2 (exit gates: loss and depth fraction per lens variant)."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.6))
    ax = axes[0]
    phase1 = history[history.phase.isin(["routers", "bypass"])]
    for i, ((phase, seed), g) in enumerate(phase1.groupby(["phase", "seed"], sort=False)):
        ax.plot(g.step, g.kl.rolling(5, min_periods=1).mean(), color=f"C{i}", label=f"{phase}, seed {seed}")
    ax.set(xlabel="step", ylabel="KL(base || routed) [nats], rolling mean", title="phase 1: routers / FFN bypass")
    if len(phase1):
        first = phase1[phase1.seed == phase1.seed.iloc[0]]
        twin = ax.twinx()
        twin.plot(first.step, first.capacity, color="grey", ls=":", lw=0.8)
        twin.set_ylabel("sampled capacity (first seed)")
    ax.legend(loc="upper left", fontsize=7)
    ax = axes[1]
    for lens, part in history[history.phase == "exit"].groupby("lens"):
        ax.plot(part.step, part.loss, label=f"{lens} lens: loss")
        ax.plot(part.step, part.mean_depth / part.num_layers, ls="--", label=f"{lens} lens: depth fraction")
    ax.set_xlabel("exit step")
    ax.set_title("phase 2: exit gates (Gumbel, decoupled tau)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def routing_analysis(usage: dict, allocated: dict, exit_depths: dict, num_layers: int, exit_layers):
    """Left: realized FFN usage per layer on test (solid) vs allocation (dotted) per capacity.
    Right: distribution of layers run per token for each exit variant."""
    fig, axes = plt.subplots(1, 2, figsize=(13, 3.8))
    ax = axes[0]
    layers = np.arange(num_layers)
    for i, (cap, u) in enumerate(usage.items()):
        color = f"C{i}"
        ax.plot(layers, np.asarray(u), marker="o", ms=3, color=color, label=f"capacity {cap}")
        ax.plot(layers, np.asarray(allocated[cap]), ls=":", color=color)
    ax.set_xlabel("layer")
    ax.set_ylabel("fraction of tokens running the FFN")
    ax.set_ylim(0, 1.05)
    ax.set_title("FFN usage per layer on test (dotted: calibrated allocation)")
    ax.legend(fontsize=8)
    ax = axes[1]
    depths = list(exit_layers) + [num_layers]
    width = 0.8 / max(1, len(exit_depths))
    for i, (name, d) in enumerate(exit_depths.items()):
        d = np.asarray(d)
        frac = [(d == k).mean() for k in depths]
        ax.bar(np.arange(len(depths)) + i * width, frac, width=width, label=name)
    ax.set_xticks(np.arange(len(depths)) + width * (len(exit_depths) - 1) / 2)
    ax.set_xticklabels([str(k) if k < num_layers else f"{k} (no exit)" for k in depths])
    ax.set_xlabel("layers run before exiting")
    ax.set_ylabel("fraction of test tokens")
    ax.set_title("exit-depth distribution")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
