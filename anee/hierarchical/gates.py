"""Exit gates: where tokens may stop, how the stop decision is sampled in training, how they decode.

- `default_exit_layers(L)` places gates at the depths the seed used on TinyLlama (4, 8, 12, 16, 19 of
  22 layers), scaled to the model's depth: 6, 12, 18, 23, 27 of SmolLM2's 30. A gate at depth `d`
  sees the residual stream after `d` layers; an exiting token runs no further layer.
- `gumbel_decoupled` is the straight-through Gumbel-softmax with *decoupled* temperatures: the
  forward value uses `tau_forward` (or the hard one-hot when `hard`), the gradient is that of the
  soft sample at `tau_backward`, both drawn with the same Gumbel noise.
- `AffineLens` is the optional per-exit "tuned lens" (identity-initialised affine map applied before
  the final norm and LM head); without it exits are decoded by the plain logit lens.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

SEED_EXIT_FRACTIONS = (4 / 22, 8 / 22, 12 / 22, 16 / 22, 19 / 22)


def default_exit_layers(num_layers: int,
                        fractions: tuple[float, ...] = (0.2, 0.4, 0.6, 23 / 30, 0.9)) -> tuple[int, ...]:
    """Exit depths scaled to `num_layers` (6, 12, 18, 23, 27 for 30 layers), unique, in [1, L-1]."""
    depths = sorted({min(max(round(f * num_layers), 1), num_layers - 1) for f in fractions})
    if num_layers < 2 or not depths:
        raise ValueError(f"need at least 2 layers for an exit gate, got {num_layers}")
    return tuple(depths)


class ExitGate(nn.Module):
    """Two logits per token, (continue, exit), from the RMS-normalised residual stream."""

    def __init__(self, hidden: int, init_bias: float = -2.0):
        super().__init__()
        self.proj = nn.Linear(hidden, 2)
        nn.init.zeros_(self.proj.weight)
        with torch.no_grad():
            self.proj.bias.copy_(torch.tensor([0.0, init_bias]))  # start by continuing

    @property
    def macs(self) -> int:
        return self.proj.in_features * 2

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.proj(F.rms_norm(hidden, hidden.shape[-1:]))


class AffineLens(nn.Module):
    """Per-exit affine map on the RMS-normalised stream: x = h / rms(h);  x -> x + W x + b.

    W, b start at zero (the identity: with the final RMSNorm after it, exactly the logit lens);
    `fit` initialises them by least squares towards the normalised final stream (a closed-form tuned
    lens), then training refines them on the KL to the full model. Normalising first keeps the map
    well-conditioned despite the base's massive activations (|h| up to ~2e4 in SmolLM2)."""

    def __init__(self, hidden: int):
        super().__init__()
        self.proj = nn.Linear(hidden, hidden)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    @property
    def macs(self) -> int:
        return self.proj.in_features * self.proj.out_features

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        x = F.rms_norm(hidden, hidden.shape[-1:])
        return x + self.proj(x)

    @torch.no_grad()
    def fit(self, hidden: torch.Tensor, target: torch.Tensor, ridge: float = 1e-2) -> None:
        """Ridge least squares: x W' + b ~ rms_norm(target) - x over the tokens of hidden/target [..., D]."""
        D = hidden.shape[-1]
        x = F.rms_norm(hidden.reshape(-1, D).double(), (D,))
        y = F.rms_norm(target.reshape(-1, D).double(), (D,)) - x
        xa = torch.cat([x, torch.ones(x.shape[0], 1, dtype=x.dtype)], 1)
        gram = xa.T @ xa + ridge * x.shape[0] * torch.eye(D + 1, dtype=x.dtype)
        sol = torch.linalg.solve(gram, xa.T @ y)  # [D+1, D]
        self.proj.weight.copy_(sol[:D].T.to(self.proj.weight.dtype))
        self.proj.bias.copy_(sol[D].to(self.proj.bias.dtype))


def gumbel_decoupled(logits: torch.Tensor, tau_forward: float = 0.1, tau_backward: float = 1.0, hard: bool = True,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """Gumbel-softmax sample over the last axis: forward value at `tau_forward` (one-hot if `hard`),
    gradient of the soft sample at `tau_backward` (same noise)."""
    u = torch.rand(logits.shape, generator=generator, dtype=logits.dtype, device=logits.device)
    g = -torch.log((-torch.log(u.clamp_min(1e-10))).clamp_min(1e-10))
    noisy = logits + g
    soft_bwd = torch.softmax(noisy / tau_backward, dim=-1)
    if hard:
        fwd = F.one_hot(noisy.argmax(-1), logits.shape[-1]).to(logits.dtype)
    else:
        fwd = torch.softmax(noisy / tau_forward, dim=-1)
    return fwd.detach() + soft_bwd - soft_bwd.detach()
