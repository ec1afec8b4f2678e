"""Medium granularity: confidence-based early exit (BranchyNet, Teerapittayanon et al. 2016).

`BranchyNet` is a small CNN with two side classifiers; an input leaves at the first exit whose
prediction entropy is below a threshold (the last exit always answers). Compute is counted as exact
MACs of the convolutions and linear maps actually run, *including every side classifier evaluated*,
so an input that exits at branch 2 pays for branch 1 too.

The same rule on a language model is `anee.engine.controllers.entropy_exit.EntropyExitController`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..core.divergence import entropy


# ---------------------------------------------------------------------------------------------- data
def load_digits_split(test_size: float = 0.3, seed: int = 0):
    """scikit-learn's bundled 8x8 digits (offline), scaled to [0, 1], as tensors [N, 1, 8, 8]."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None]
    xtr, xte, ytr, yte = train_test_split(x, d.target, test_size=test_size, random_state=seed, stratify=d.target)
    return torch.from_numpy(xtr), torch.from_numpy(ytr).long(), torch.from_numpy(xte), torch.from_numpy(yte).long()


def load_mnist_split(max_train: int = 20000, max_test: int = 5000):
    """MNIST via `datasets` (needs the HF Hub: online use only), as tensors [N, 1, 28, 28]."""
    from datasets import load_dataset

    ds = load_dataset("mnist")

    def conv(split, n):
        part = ds[split].select(range(min(n, len(ds[split]))))
        x = np.stack([np.asarray(im, dtype=np.float32) / 255.0 for im in part["image"]])[:, None]
        return torch.from_numpy(x), torch.tensor(part["label"]).long()

    xtr, ytr = conv("train", max_train)
    xte, yte = conv("test", max_test)
    return xtr, ytr, xte, yte


# --------------------------------------------------------------------------------------------- model
class BranchyNet(nn.Module):
    """Three conv stages; side exits after stages 1 and 2, the main classifier after stage 3."""

    def __init__(self, num_classes: int = 10, width: int = 8, seed: int = 0):
        super().__init__()
        with torch.random.fork_rng():  # the initial weights come from `seed`, not from global state
            torch.manual_seed(seed)
            self._build(num_classes, width)

    def _build(self, num_classes: int, width: int) -> None:
        w = width
        self.stages = nn.ModuleList([
            nn.Sequential(nn.Conv2d(1, w, 3, padding=1), nn.ReLU()),
            nn.Sequential(nn.Conv2d(w, 2 * w, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)),
            nn.Sequential(nn.Conv2d(2 * w, 4 * w, 3, padding=1), nn.ReLU(), nn.AdaptiveMaxPool2d(2), nn.Flatten(),
                          nn.Linear(16 * w, 64), nn.ReLU()),
        ])
        self.exits = nn.ModuleList([
            nn.Sequential(nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(4 * w, num_classes)),
            nn.Sequential(nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(8 * w, num_classes)),
            nn.Linear(64, num_classes),
        ])

    @property
    def num_exits(self) -> int:
        return len(self.exits)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Logits of every exit (training and analysis: runs the whole network)."""
        outs = []
        for stage, head in zip(self.stages, self.exits):
            x = stage(x)
            outs.append(head(x))
        return outs

    def stage_macs(self, image_shape: Sequence[int] = (1, 8, 8)) -> tuple[list[int], list[int]]:
        """Exact MACs per stage and per exit head for one input (convolutions and linear maps)."""
        macs: dict[nn.Module, int] = {}

        def hook(module, inp, out):
            if isinstance(module, nn.Conv2d):
                k = module.kernel_size[0] * module.kernel_size[1] * module.in_channels // module.groups
                macs[module] = int(out[0].numel() * k)
            elif isinstance(module, nn.Linear):
                macs[module] = module.in_features * module.out_features

        handles = [m.register_forward_hook(hook) for m in self.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
        try:
            with torch.no_grad():
                self.forward(torch.zeros(1, *image_shape))
        finally:
            for h in handles:
                h.remove()

        def total(block):
            return sum(macs.get(m, 0) for m in block.modules())

        return [total(s) for s in self.stages], [total(e) for e in self.exits]


def train_branchynet(model: BranchyNet, x: torch.Tensor, y: torch.Tensor, epochs: int = 40, lr: float = 3e-3,
                     batch: int = 64, weights: Sequence[float] = (1.0, 1.0, 1.0), seed: int = 0) -> list[float]:
    """Joint training: weighted sum of every exit's cross-entropy (BranchyNet's recipe). Returns epoch losses."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    history = []
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=g)
        total = 0.0
        for i in range(0, len(x), batch):
            idx = perm[i : i + batch]
            outs = model(x[idx])
            loss = sum(w * F.cross_entropy(o, y[idx]) for w, o in zip(weights, outs))
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        history.append(total / len(x))
    model.eval()
    return history


@torch.no_grad()
def early_exit(model: BranchyNet, x: torch.Tensor, threshold: float) -> dict:
    """Predictions with entropy-threshold exits; per-input exit index and MACs actually spent.

    Runs stage by stage on the inputs still in the network (no compute for those that left).
    """
    stage_macs, exit_macs = model.stage_macs(tuple(x.shape[1:]))
    n = len(x)
    pred = torch.empty(n, dtype=torch.long)
    exit_at = torch.empty(n, dtype=torch.long)
    macs = torch.zeros(n, dtype=torch.float64)
    alive = torch.arange(n)
    h = x
    for i, (stage, head) in enumerate(zip(model.stages, model.exits)):
        h = stage(h)
        logits = head(h)
        macs[alive] += stage_macs[i] + exit_macs[i]
        last = i == model.num_exits - 1
        leave = torch.ones(len(alive), dtype=torch.bool) if last else entropy(logits) < threshold
        pred[alive[leave]] = logits[leave].argmax(-1)
        exit_at[alive[leave]] = i
        alive, h = alive[~leave], h[~leave]
        if len(alive) == 0:
            break
    return {"pred": pred, "exit": exit_at, "macs": macs}


def threshold_sweep(model: BranchyNet, x: torch.Tensor, y: torch.Tensor, thresholds: Sequence[float]) -> list[dict]:
    """Accuracy and average MACs (absolute and relative to running every stage) per threshold."""
    stage_macs, exit_macs = model.stage_macs(tuple(x.shape[1:]))
    no_exit = sum(stage_macs) + exit_macs[-1]  # the plain CNN without side branches
    rows = []
    for thr in thresholds:
        r = early_exit(model, x, thr)
        row = {"threshold": float(thr), "accuracy": float((r["pred"] == y).float().mean()),
               "avg_macs": float(r["macs"].mean()), "rel_macs": float(r["macs"].mean() / no_exit)}
        for i in range(model.num_exits):
            row[f"exit{i + 1}_frac"] = float((r["exit"] == i).float().mean())
        rows.append(row)
    return rows
