"""The learned ANEE controller: a `PolicyNet` inside the pacing band, greedy or sampled."""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from ...core.actions import EXIT, SKIP
from ...core.scalars import flag, real
from ..profiler import Profiler
from .base import LayerView
from .pacing import PacedController, PacingConfig
from .plan import PlanConfig
from .policy import PolicyNet, load_policy


class LearnedController(PacedController):
    """A `PolicyNet` choosing PROCESS / SKIP / EXIT from the profiler state (and, if the policy reads
    it, the residual stream), inside the pacing band (PROCESS / SKIP only with a `PlanConfig`).
    `sample=True` draws actions from softmax(logits / `temperature`) with `generator` (REINFORCE
    rollouts; like `record=True`, a training-time mode that is not for concurrent use, as threads
    would share the generator's stream); otherwise argmax. `after_full_prompt=True` reads the policy's
    SKIP offsets for tokens generated after a full-depth prompt (see `for_full_prompt`)."""

    def __init__(self, policy: PolicyNet, profiler, pacing: PacingConfig | None = None, sample: bool = False,
                 generator: torch.Generator | None = None, record: bool = False, plan: PlanConfig | None = None,
                 temperature: float = 1.0, after_full_prompt: bool = False):
        super().__init__(profiler, pacing, record, plan, record_hidden=policy.rank > 0)
        self.policy = policy
        self.sample = flag("sample", sample)
        self.generator = generator
        self.temperature = real("temperature", temperature, 0.0, open_low=True)
        self.after_full_prompt = flag("after_full_prompt", after_full_prompt)

    @classmethod
    def as_trained(cls, policy: PolicyNet, profiler, **kwargs) -> LearnedController:
        """`policy` under the pacing band and layer plan it was trained with (stored beside its weights)."""
        return cls(policy, profiler, pacing=policy.pacing_config(), plan=policy.plan_config(), **kwargs)

    def for_full_prompt(self) -> LearnedController:
        """This controller for the tokens generated after a prompt that ran every layer
        (prefill="full"): same policy, plan and band, the SKIP offsets calibrated for that context."""
        twin = copy.copy(self)
        twin.after_full_prompt = True
        twin.records = []
        return twin

    @property
    def overhead_macs(self) -> int:
        return self.profiler.overhead_macs + self.policy.macs

    def logits(self, feats: torch.Tensor, hidden: torch.Tensor | None = None) -> torch.Tensor:
        """Policy logits plus its calibrated SKIP offset at the token's budget, EXIT masked out for a
        planned controller, divided by the temperature."""
        logits = self.policy(feats, hidden)
        offset = self.policy.skip_offset(feats[..., self.profiler.budget_index], self.after_full_prompt)
        logits = torch.cat([logits[..., :SKIP], logits[..., SKIP : SKIP + 1] + offset.unsqueeze(-1),
                            logits[..., SKIP + 1 :]], -1)
        if self.plan_config is not None:
            logits = logits.masked_fill(_exit_mask(logits), float("-inf"))
        return logits / self.temperature

    def raw_actions(self, view: LayerView, feats: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            logits = self.logits(feats, view.hidden if self.policy.rank else None)
        if not self.sample:
            return logits.argmax(-1)
        probs = torch.softmax(logits, -1).reshape(-1, 3)
        return torch.multinomial(probs, 1, generator=self.generator).reshape(logits.shape[:-1])


def _exit_mask(logits: torch.Tensor) -> torch.Tensor:
    """True at the EXIT logit, for masking it out."""
    mask = torch.zeros_like(logits, dtype=torch.bool)
    mask[..., EXIT] = True
    return mask


def load_controller(path: str | Path, profiler, **kwargs) -> LearnedController:
    """The saved policy as a `LearnedController` under the plan and band it was trained with."""
    if not isinstance(profiler, Profiler):
        raise TypeError(f"profiler must be a Profiler (e.g. Profiler.from_checkpoint(path, executor)), "
                        f"got {type(profiler).__name__}")
    return LearnedController.as_trained(load_policy(path, profiler.executor.adapter.num_layers), profiler, **kwargs)
