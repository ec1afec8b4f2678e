"""Figures for notebook 07: token x layer execution maps, layer-usage profiles, savings vs budget."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402

from ..core.actions import ACTION_NAMES  # noqa: E402

ACTION_COLORS = ListedColormap(["#2b6cb0", "#f6ad55", "#e2e8f0", "#ffffff"])  # PROCESS, SKIP, EXIT, DROP


def execution_map(decisions: torch.Tensor, tokens: list[str], title: str = "", ax=None):
    """Heatmap of decisions [T, L] (rows = tokens, columns = layers)."""
    d = decisions.detach().cpu().numpy() if isinstance(decisions, torch.Tensor) else np.asarray(decisions)
    if ax is None:
        _, ax = plt.subplots(figsize=(8, 0.22 * len(tokens) + 1))
    ax.imshow(d, cmap=ACTION_COLORS, vmin=0, vmax=len(ACTION_NAMES) - 1, aspect="auto", interpolation="nearest")
    ax.set_yticks(range(len(tokens)), [t.replace("\n", "\\n")[:14] for t in tokens], fontsize=7)
    ax.set_xlabel("layer")
    ax.set_title(title, fontsize=9)
    handles = [matplotlib.patches.Patch(color=ACTION_COLORS(i), label=n) for i, n in enumerate(ACTION_NAMES)]
    ax.legend(handles=handles, loc="upper right", fontsize=7, bbox_to_anchor=(1.0, 1.12), ncol=len(ACTION_NAMES))
    return ax


def layer_usage_plot(usage: dict[str, np.ndarray], ax=None):
    """One line per label: fraction of tokens processing each layer."""
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 3))
    for label, u in usage.items():
        ax.plot(np.arange(len(u)), u, marker="o", ms=3, label=label)
    ax.set_xlabel("layer")
    ax.set_ylabel("fraction of tokens processing")
    ax.set_ylim(-0.02, 1.02)
    ax.legend(fontsize=8)
    return ax


def savings_plot(df, ax=None):
    """Realized layer fraction and net saving against the budget (one line per controller)."""
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 4))
    for name, g in df.groupby("controller"):
        ax.plot(g.budget, g.layer_fraction, marker="o", label=f"{name}: layer fraction")
        ax.plot(g.budget, 1 - g.layer_saved_net, ls="--", marker="x", label=f"{name}: layers + overhead")
    lim = [df.budget.min() - 0.05, 1.02]
    ax.plot(lim, lim, color="grey", lw=0.8)
    ax.fill_between(lim, [v - 0.05 for v in lim], [v + 0.05 for v in lim], color="grey", alpha=0.15, label="±0.05")
    ax.set_xlabel("energy budget")
    ax.set_ylabel("fraction of full layer compute")
    ax.legend(fontsize=7)
    return ax
