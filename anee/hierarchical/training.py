"""Two-phase training on the frozen base: `train(model, ids, phase="routers"|"exit"|"full")`.

Both phases distil the frozen base: the loss is KL(base || student) per token, averaged.

Phase 1, routers. With an FFN bypass, its closed-form fit comes first (`HierarchicalModel.fit_ffn_bypass_`
on `bypass_fit_windows` windows, every FFN running). Then the per-layer FFN sensitivity is measured (KL
when a layer's FFN is skipped, i.e. replaced by its bypass, for every token, on `sensitivity_windows`
validation windows) and stored in the model: it sets how a requested capacity is spread over layers
(`HierarchicalModel.layer_capacities`). The routers are warm-started in closed form
(`HierarchicalModel.init_routers`: regression of how far the bypass leaves the token from the real
FFN on the router input, over `router_init_windows` windows). Then `router_steps` steps each sample a
capacity (schedule: linear ramp from 1.0 down to a uniform draw in `capacity_range` over the first
`ramp` fraction of steps), route the top-k tokens of each sequence at every layer and back-propagate
through the straight-through mask into the routers, plus the router z-loss and the entropy penalty.
Finally `bypass_steps` steps tune the FFN bypasses end to end (routers frozen, top-k routing at a
capacity drawn from `capacity_range`, KL to the base); when they have been tuned and the routers are
the closed-form warm start alone (`router_steps=0`), the warm start is fitted again on the same windows,
so the routers predict the error of the bypass that inference uses, not of its closed-form start.
Exits are off.

Phase 2, exits. With a tuned lens, each exit's affine map is first fitted in closed form (ridge least
squares to the final stream on `lens_fit_windows` windows). Routers are frozen (top-k at
`exit_capacity`); the stream at every exit depth is taken from that routed pass without gradient.
Each gate draws a hard Gumbel-softmax sample with decoupled temperatures (`tau_forward` forward,
`tau_backward` annealed from `tau_backward[0]` to `[1]` for the gradient); tokens halt at the first
sampled exit. The loss is the expected (KL + `exit_cost` x depth fraction) under the halting
distribution, plus, with a tuned lens, `lens_weight` x the mean KL of every exit's decoded
distribution (so each lens learns on all tokens, not only on those that exit).

Known simplification: during training later tokens attend to the K/V of a token as if it had not
exited (its stream keeps flowing); at inference they see K/V from its frozen state. The evaluation
always uses the inference semantics, so the reported numbers include this mismatch.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass

import torch

from ..core.data import sample_windows
from ..core.divergence import kl_log_probs, log_probs
from ..core.freezing import frozen
from .gates import gumbel_decoupled
from .model import HierarchicalModel
from .routers import aux_losses

PHASES = ("full", "routers", "exit")


@dataclass
class TrainConfig:
    seq_len: int = 256
    batch: int = 2
    router_steps: int = 40
    exit_steps: int = 40
    router_lr: float = 3e-3
    gate_lr: float = 1e-2
    lens_lr: float = 1e-3
    capacity_range: tuple[float, float] = (0.4, 0.9)
    ramp: float = 0.25  # capacity schedule: fraction of router steps ramping down from 1.0
    z_loss: float = 1e-3
    entropy: float = 1e-2
    exit_capacity: float = 0.55
    tau_forward: float = 0.0  # 0 = hard one-hot forward
    tau_backward: tuple[float, float] = (1.0, 0.3)
    exit_cost: float = 0.3  # nats per fraction of depth
    lens_weight: float = 1.0
    sensitivity_windows: int = 1  # 0 = keep the model's current sensitivities (uniform by default)
    router_init_windows: int = 0  # >0: closed-form router warm start
    bypass_fit_windows: int = 16  # closed-form fit of the FFN bypass (windows of `seq_len`; with an FFN bypass only)
    bypass_steps: int = 0  # end-to-end KL tuning of the FFN bypass, after the routers
    bypass_lr: float = 3e-4
    lens_fit_windows: int = 4  # 0 = no closed-form tuned-lens initialisation
    seed: int = 0


def _batches(ids: torch.Tensor, cfg: TrainConfig, steps: int, offset: int):
    for step in range(steps):
        yield step, sample_windows(ids, cfg.seq_len, cfg.batch, seed=cfg.seed * 100_003 + offset + step)


@torch.no_grad()
def _teacher(model: HierarchicalModel, x: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(model.base(x).logits.float(), -1)


def train_routers(model: HierarchicalModel, ids: torch.Tensor, cfg: TrainConfig) -> list[dict]:
    """Phase 1 (see the module docstring); returns one log row per step."""
    rng = random.Random(cfg.seed)
    opt = torch.optim.AdamW(model.routers.parameters(), lr=cfg.router_lr, weight_decay=0.0)
    history = []
    ramp_steps = max(1, int(cfg.ramp * cfg.router_steps))
    for step, x in _batches(ids, cfg, cfg.router_steps, 0):
        target = rng.uniform(*cfg.capacity_range)
        capacity = 1.0 - min(1.0, (step + 1) / ramp_steps) * (1.0 - target)
        teacher = _teacher(model, x)
        out = model.dense_forward(x, "topk", capacity, straight_through=True)
        kd = kl_log_probs(teacher, log_probs(out.logits)).mean()
        zs, ents = zip(*(aux_losses(r) for r in out.router_logits))
        z, ent = torch.stack(zs).mean(), torch.stack(ents).mean()
        loss = kd + cfg.z_loss * z + cfg.entropy * ent
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        history.append({"phase": "routers", "step": step, "capacity": capacity, "loss": float(loss.detach()),
                        "kl": float(kd.detach()), "z_loss": float(z.detach()), "entropy": float(ent.detach())})
    return history


def train_exits(model: HierarchicalModel, ids: torch.Tensor, cfg: TrainConfig) -> list[dict]:
    """Phase 2 (see the module docstring); returns one log row per step."""
    L = model.num_layers
    groups = [{"params": model.gates.parameters(), "lr": cfg.gate_lr}]
    if model.tuned_lens:
        groups.append({"params": model.lenses.parameters(), "lr": cfg.lens_lr})
    opt = torch.optim.AdamW(groups, weight_decay=0.0)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    history = []
    for step, x in _batches(ids, cfg, cfg.exit_steps, 10_000):
        frac = step / max(1, cfg.exit_steps - 1)
        tau_b = cfg.tau_backward[0] + frac * (cfg.tau_backward[1] - cfg.tau_backward[0])
        teacher = _teacher(model, x)
        with torch.no_grad():
            out = model.dense_forward(x, "topk", cfg.exit_capacity, collect_exit_hidden=True)
            kl_final = kl_log_probs(teacher, log_probs(out.logits))
        remaining = torch.ones_like(kl_final)
        expected, depth, kls = torch.zeros_like(kl_final), torch.zeros_like(kl_final), []
        exit_rates = []
        for e, d in enumerate(model.exit_layers):
            h = out.exit_hidden[e]
            kl_e = kl_log_probs(teacher, log_probs(model.adapter.logits(model.decode_hidden(e, h))))
            kls.append(kl_e)
            y = gumbel_decoupled(model.gates[e](h).float(), cfg.tau_forward or 0.1, tau_b,
                                 hard=cfg.tau_forward == 0, generator=gen)[..., 1]
            pi = remaining * y
            expected = expected + pi * (kl_e + cfg.exit_cost * d / L)
            depth = depth + pi * d
            exit_rates.append(float(pi.detach().mean()))
            remaining = remaining * (1 - y)
        expected = expected + remaining * (kl_final + cfg.exit_cost)
        depth = depth + remaining * L
        loss = expected.mean()
        lens_kl = torch.stack(kls).mean()
        if model.tuned_lens:
            loss = loss + cfg.lens_weight * lens_kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        row = {"phase": "exit", "step": step, "tau_backward": tau_b, "loss": float(loss.detach()),
               "kl_final": float(kl_final.mean()), "lens_kl": float(lens_kl.detach()),
               "mean_depth": float(depth.detach().mean()), "exited": 1 - float(remaining.detach().mean())}
        row.update({f"kl_exit{d}": float(k.detach().mean()) for d, k in zip(model.exit_layers, kls)})
        history.append(row)
    return history


def tune_ffn_bypass(model: HierarchicalModel, ids: torch.Tensor, cfg: TrainConfig) -> list[dict]:
    """End-to-end KL tuning of the FFN bypasses with the routers frozen: each step routes the top-k
    tokens at a capacity drawn from `capacity_range`; the others get the bypass, which learns to
    stand in for the FFN on the tokens the routers actually leave to it."""
    rng = random.Random(cfg.seed + 3)
    opt = torch.optim.Adam(model.ffn_bypass.parameters(), lr=cfg.bypass_lr)
    history = []
    for step, x in _batches(ids, cfg, cfg.bypass_steps, 20_000):
        capacity = rng.uniform(*cfg.capacity_range)
        teacher = _teacher(model, x)
        kl = kl_log_probs(teacher, log_probs(model.dense_forward(x, "topk", capacity).logits)).mean()
        opt.zero_grad(set_to_none=True)
        kl.backward()
        opt.step()
        history.append({"phase": "bypass", "step": step, "capacity": capacity, "loss": float(kl.detach()),
                        "kl": float(kl.detach())})
    return history


def train(model: HierarchicalModel, ids: torch.Tensor, phase: str = "full",
          config: TrainConfig | None = None) -> list[dict]:
    """Train on validation-split token ids [1, N] with the base frozen: phase "routers", "exit" or
    "full" (routers, then exits). Returns the per-step log (list of dicts)."""
    if phase not in PHASES:
        raise ValueError(f"phase must be one of {PHASES}, got {phase!r}")
    cfg = config or TrainConfig()
    torch.manual_seed(cfg.seed)
    history = []
    model.train()
    with frozen(model.base):
        if phase in ("full", "routers"):
            if not model.ffn_bypass.is_identity and cfg.bypass_fit_windows:
                model.fit_ffn_bypass_(sample_windows(ids, cfg.seq_len, cfg.bypass_fit_windows, seed=cfg.seed + 13))
            if cfg.sensitivity_windows:
                model.measure_sensitivity(sample_windows(ids, cfg.seq_len, cfg.sensitivity_windows, seed=cfg.seed + 7))
            router_windows = (sample_windows(ids, cfg.seq_len, cfg.router_init_windows, seed=cfg.seed + 5)
                              if cfg.router_init_windows else None)
            if router_windows is not None:
                model.init_routers(router_windows)
            history += train_routers(model, ids, cfg)
            if cfg.bypass_steps and not model.ffn_bypass.is_identity:
                with frozen(model.routers):
                    history += tune_ffn_bypass(model, ids, cfg)
                if router_windows is not None and not cfg.router_steps:
                    # the tuned bypass errs elsewhere than its closed-form start. On validation text not
                    # trained on (tokens 40,000-44,096) the re-fit took the perplexity increase at capacity
                    # 0.7 from +44.4 % to +39.2 % (mean of two seeds; issue 14). Trained routers are kept.
                    model.init_routers(router_windows)
        if phase in ("full", "exit"):
            if model.tuned_lens and cfg.lens_fit_windows:
                model.fit_lenses(sample_windows(ids, cfg.seq_len, cfg.lens_fit_windows, seed=cfg.seed + 11),
                                 cfg.exit_capacity)
            with frozen(model.routers):
                history += train_exits(model, ids, cfg)
    model.eval()
    return history


def config_dict(cfg: TrainConfig) -> dict:
    return asdict(cfg)
