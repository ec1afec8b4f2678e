"""The learned controller's policy network and its checkpoints (safetensors, config in the header)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from ...core.checkpoints import Checkpointable
from ...core.scalars import integer
from ..profiler import FEATURES
from .pacing import PacingConfig
from .plan import PlanConfig


class PolicyNet(Checkpointable, torch.nn.Module):
    """Tiny MLP: normalized profiler features, plus (with `rank` > 0) a learned rank-`rank` read of
    the token's RMS-normalized residual stream -> logits over PROCESS / SKIP / EXIT.

    The scalar features summarise the state; the read lets the policy look at *what* the token
    is, which is what tells tokens that tolerate a skip from tokens that do not."""

    FORMAT = "anee.policy/3"
    FIX = "re-run notebook 03 (warm-start) / 04 (RL) to regenerate it"
    # Sizes are capped so that a damaged checkpoint config cannot ask for gigabytes before its tensors are checked.
    LIMITS = {"num_features": (1, 4096), "hidden": (1, 4096), "hidden_size": (0, 65536), "rank": (0, 256)}

    def __init__(self, num_features: int, hidden: int = 32, hidden_size: int = 0, rank: int = 0):
        super().__init__()
        sizes = {"num_features": num_features, "hidden": hidden, "hidden_size": hidden_size, "rank": rank}
        num_features, hidden, hidden_size, rank = (integer(f"PolicyNet {k}", v, *self.LIMITS[k])
                                                   for k, v in sizes.items())
        if (rank > 0) != (hidden_size > 0):
            raise ValueError(f"a residual-stream read needs both hidden_size and rank > 0, got {hidden_size}, {rank}")
        self.num_features, self.hidden, self.hidden_size, self.rank = num_features, hidden, hidden_size, rank
        self.trained_for: dict = {}  # kind, num_layers, features, plan, pacing: written by `save_policy`
        self.register_buffer("mean", torch.zeros(num_features))
        self.register_buffer("std", torch.ones(num_features))
        self.set_skip_offsets(torch.zeros(0), torch.zeros(0))
        self.set_skip_offsets(torch.zeros(0), torch.zeros(0), after_full_prompt=True)
        if rank:
            self.register_buffer("h_mean", torch.zeros(hidden_size))
            self.register_buffer("h_std", torch.ones(hidden_size))
            self.read = torch.nn.Linear(hidden_size, rank, bias=False)
        self.net = torch.nn.Sequential(
            torch.nn.Linear(num_features + rank, hidden), torch.nn.Tanh(),
            torch.nn.Linear(hidden, hidden), torch.nn.Tanh(),
            torch.nn.Linear(hidden, 3),
        )

    @property
    def macs(self) -> int:
        """Per call per token: the MLP's products, plus the read and its normalization (3 per coordinate)."""
        mlp = sum(m.in_features * m.out_features for m in self.net if isinstance(m, torch.nn.Linear))
        return mlp + (self.hidden_size * self.rank + 3 * self.hidden_size if self.rank else 0)

    def set_skip_offsets(self, budgets: torch.Tensor, offsets: torch.Tensor, after_full_prompt: bool = False) -> None:
        """Calibrated offsets added to the SKIP logit at these (increasing) budgets; see `skip_offset`.
        Two tables: one for tokens whose whole context ran under the controller (teacher-forced
        windows, generation with prefill="adaptive"), and, with `after_full_prompt`, one for tokens
        generated after a prompt that ran every layer (prefill="full"): their margins differ, so one
        offset cannot hold the budget in both."""
        if budgets.shape != offsets.shape or budgets.ndim != 1 or (budgets.diff() <= 0).any():
            raise ValueError("skip offsets need increasing budgets [K] and offsets [K]")
        prefix = FULL_PROMPT if after_full_prompt else ""
        self.register_buffer(prefix + "offset_budgets", budgets.float().clone())
        self.register_buffer(prefix + "skip_offsets", offsets.float().clone())

    def skip_offset(self, budget: torch.Tensor, after_full_prompt: bool = False) -> torch.Tensor:
        """Offset of the SKIP logit at `budget` [...]: linear between calibrated budgets, the nearest
        one's outside them, 0 when uncalibrated. `after_full_prompt` reads the table for generation
        after a full-depth prompt, or the other one when that was never calibrated."""
        xs, ys = self.offset_budgets, self.skip_offsets
        if after_full_prompt and self.full_prompt_skip_offsets.numel():
            xs, ys = self.full_prompt_offset_budgets, self.full_prompt_skip_offsets
        if ys.numel() == 0:
            return torch.zeros_like(budget, dtype=torch.float32)
        b = budget.float().clamp(float(xs[0]), float(xs[-1]))
        i = torch.searchsorted(xs, b.contiguous()).clamp(1, max(len(xs) - 1, 1))
        if len(xs) == 1:
            return ys[0].expand_as(b).clone()
        x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
        return y0 + (y1 - y0) * (b - x0) / (x1 - x0)

    @staticmethod
    def rms_normalize(hidden: torch.Tensor) -> torch.Tensor:
        """hidden / RMS(hidden) over the last axis: the residual stream's direction, at unit scale."""
        h = hidden.float()
        return h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6)

    def forward(self, feats: torch.Tensor, hidden: torch.Tensor | None = None) -> torch.Tensor:
        x = (feats.float() - self.mean) / self.std
        if self.rank:
            if hidden is None:
                raise ValueError("this policy reads the residual stream: pass hidden [..., hidden_size]")
            x = torch.cat([x, self.read((self.rms_normalize(hidden) - self.h_mean) / self.h_std)], -1)
        return self.net(x)

    # -- checkpoints -------------------------------------------------------------------------------
    def checkpoint_config(self) -> dict:
        config = {"num_features": self.num_features, "hidden": self.hidden, "hidden_size": self.hidden_size,
                  "rank": self.rank, "skip_offsets": int(self.skip_offsets.numel()), **self.trained_for}
        # as `checkpoint_tensors`: a policy without the table saves what it always did
        if self.full_prompt_skip_offsets.numel():
            config["full_prompt_skip_offsets"] = int(self.full_prompt_skip_offsets.numel())
        return config

    @classmethod
    def from_config(cls, config: dict) -> PolicyNet:
        policy = cls(config["num_features"], config["hidden"], config["hidden_size"], config["rank"])
        k = integer("skip_offsets", config["skip_offsets"], 0, 4096)
        # shapes; values come from the file
        policy.set_skip_offsets(torch.arange(k, dtype=torch.float32), torch.zeros(k))
        # absent before the table existed
        k = integer("full_prompt_skip_offsets", config.get("full_prompt_skip_offsets", 0), 0, 4096)
        policy.set_skip_offsets(torch.arange(k, dtype=torch.float32), torch.zeros(k), after_full_prompt=True)
        policy.trained_for = {**{key: config[key] for key in TRAINED_FOR},
                              **{key: config.get(key) for key in TRAINED_FOR_OPTIONAL}}
        check_trained_for(policy.trained_for)
        policy.plan_config()  # validates the stored plan and pacing
        policy.pacing_config()
        return policy

    def checkpoint_tensors(self) -> dict[str, torch.Tensor]:
        tensors = dict(self.state_dict())
        if not self.full_prompt_skip_offsets.numel():  # no such table: the file is what it was before the table existed
            for key in FULL_PROMPT_KEYS:
                del tensors[key]
        return tensors

    def load_checkpoint_tensors_(self, tensors: dict[str, torch.Tensor]) -> None:
        empty = {key: torch.zeros(0) for key in FULL_PROMPT_KEYS}
        self.load_state_dict({**empty, **tensors}, strict=True)
        self.set_skip_offsets(self.offset_budgets, self.skip_offsets)  # increasing budgets
        self.set_skip_offsets(self.full_prompt_offset_budgets, self.full_prompt_skip_offsets, after_full_prompt=True)
        if (self.std <= 0).any() or (self.rank and (self.h_std <= 0).any()):
            raise ValueError("feature scales (std) must be positive")
        self.eval()

    def plan_config(self) -> PlanConfig | None:
        """The layer plan this policy was trained under (None: asked at every layer)."""
        plan = self.trained_for.get("plan")
        return None if plan is None else PlanConfig(**plan)

    def pacing_config(self) -> PacingConfig:
        """The per-token pacing band this policy was trained under."""
        return PacingConfig(**self.trained_for.get("pacing", {}))


FULL_PROMPT = "full_prompt_"  # buffer prefix of the SKIP-offset table for generation after a full-depth prompt
FULL_PROMPT_KEYS = (FULL_PROMPT + "offset_budgets", FULL_PROMPT + "skip_offsets")
TRAINED_FOR = ("kind", "num_layers", "features", "plan", "pacing", "extra")  # required in a checkpoint's config
TRAINED_FOR_OPTIONAL = ("bypass", "seed")


def check_trained_for(trained_for: dict) -> None:
    """TypeError unless each entry has its type (a JSON config may hold anything): kind str, num_layers
    int, features a list of str, plan a dict or None, pacing and extra dicts, bypass a label or None,
    seed a non-negative int or None."""
    t = trained_for
    integer("num_layers", t["num_layers"], 1)
    ok = {"kind": isinstance(t["kind"], str),
          "features": isinstance(t["features"], list) and all(isinstance(f, str) for f in t["features"]),
          "plan": t["plan"] is None or isinstance(t["plan"], dict), "pacing": isinstance(t["pacing"], dict),
          "extra": isinstance(t["extra"], dict), "bypass": t.get("bypass") is None or isinstance(t["bypass"], str),
          "seed": t.get("seed") is None or (isinstance(t["seed"], int) and not isinstance(t["seed"], bool)
                                            and t["seed"] >= 0)}
    bad = [key for key, good in ok.items() if not good]
    if bad:
        raise TypeError(f"{', '.join(bad)} of the wrong type ({', '.join(f'{k}={t[k]!r}' for k in bad)})")


def save_policy(path: str | Path, policy: PolicyNet, kind: str, num_layers: int, extra: dict[str, str] | None = None,
                plan: PlanConfig | None = None, pacing: PacingConfig | None = None, bypass: str | None = None,
                seed: int | None = None) -> Path:
    """Write the policy with what it was trained for: `kind` ("warmstart", "rl"), the model depth,
    the profiler features, the layer plan and per-token band (None: asked at every layer / the
    default band), the layer bypass it ran with (its label; None: the identity) and its seed."""
    policy.trained_for = {"kind": kind, "num_layers": num_layers, "features": list(FEATURES),
                          "plan": dataclasses.asdict(plan) if plan is not None else None,
                          "pacing": dataclasses.asdict(pacing or PacingConfig()), "bypass": bypass, "seed": seed,
                          "extra": dict(extra or {})}
    return policy.save(path)


def load_policy(path: str | Path, num_layers: int, kind: str | None = None) -> PolicyNet:
    """A `PolicyNet` from `path`; ValueError if the file is corrupt or made for other features, models or kinds."""
    policy = PolicyNet.from_checkpoint(path)
    want = {"num_layers": num_layers, "features": list(FEATURES), **({"kind": kind} if kind is not None else {})}
    for key, value in want.items():
        if policy.trained_for.get(key) != value:
            raise ValueError(f"checkpoint {path}: {key}={policy.trained_for.get(key)!r}, expected {value!r}; "
                             f"{PolicyNet.FIX}")
    return policy
