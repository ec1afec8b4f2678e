"""Calibrate a learned controller's SKIP threshold so that it skips the plan's share at every budget.

A planned controller lands on a budget on average only if it skips the plan's `skip_share` of the
marginal decisions. A policy trained at a few budgets may skip more or less at others (and RL moves
it), so its average compute would drift from the budget even though every token stays inside the
pacing band. `calibrate_skip_offsets` runs the greedy controller on valid windows at each budget and
sets the offset added to the SKIP logit to the quantile of the SKIP-minus-PROCESS margins that makes
`skip_share` of the free decisions SKIPs. Later marginal layers see states that earlier decisions
changed, so it repeats for a few damped rounds. Between calibrated budgets the offset is interpolated.

Tokens generated after a prompt that ran every layer (`ANEEWrapper.generate(prefill="full")`) see
full-depth context and give other margins, so a policy carries a second table for them, calibrated
with `full_prompt` > 0: each window's first tokens run every layer, the rest is governed.
"""

from __future__ import annotations

import pandas as pd
import torch

from ...core.actions import ASK, PROCESS, SKIP
from ...core.kv_cache import KVCache
from ..controllers.base import FullController
from ..controllers.learned import LearnedController
from ..controllers.plan import skip_share
from ..executor import AdaptiveExecutor
from ..prefix_memo import shared_prefixes


@torch.no_grad()
def _margins_and_share(executor: AdaptiveExecutor, controller: LearnedController, windows: torch.Tensor, budget: float,
                       prompt: KVCache | None = None):
    """Raw SKIP - PROCESS margins at the free decisions, and the share of SKIPs among all asked decisions.
    With `prompt` (the cache of a full-depth prompt per window) `windows` are the governed tokens after
    it, run as one chunk on a copy of that cache."""
    controller.record = True
    controller.reset_records()
    if prompt is not None:
        decisions = executor.forward(windows, cache=prompt.copy(), controller=controller, budget=budget,
                                     with_logits=False).trace.decisions
    else:
        decisions = torch.cat([executor.forward(ids.unsqueeze(0), controller=controller, budget=budget,
                                                with_logits=False).trace.decisions
                               for ids in windows])
    margins = []
    for r in controller.records:
        logits = controller.policy(r["features"], r.get("hidden"))
        margins.append((logits[..., SKIP] - logits[..., PROCESS])[r["free"]])
    controller.record = False
    controller.reset_records()
    return torch.cat(margins), skip_share(decisions, controller.plan(budget, executor.adapter.num_layers))


def calibrate_skip_offsets(executor: AdaptiveExecutor, controller: LearnedController, windows: torch.Tensor,
                           budgets: list[float], rounds: int = 3, full_prompt: int = 0,
                           verify: bool = True) -> pd.DataFrame:
    """Set `controller.policy`'s SKIP offsets at `budgets` from runs on `windows` [N, T] (valid split);
    returns the share of SKIPs at each budget and round, measured with that round's offsets. With
    `verify` a last round measures the final offsets; without it (a quarter of the passes saved, the
    offsets bit for bit the same) the final offsets are set but not measured here: a budget-adherence
    run on held-out text measures them.
    With `full_prompt` > 0 the first `full_prompt` tokens of every window run every layer and the
    offsets go to the policy's table for tokens after a full-depth prompt (a teacher-forced chunk on
    the prompt's cache decides what decoding its tokens one by one decides)."""
    if controller.plan_config is None:
        raise ValueError("skip calibration is for planned controllers (the share is the plan's skip_share)")
    if not isinstance(full_prompt, int) or not 0 <= full_prompt < windows.shape[1]:
        raise ValueError(f"full_prompt must be an int in [0, {windows.shape[1]}) (tokens per window), "
                         f"got {full_prompt!r}")
    L = executor.adapter.num_layers
    # a budget that asks nothing needs none
    budgets = sorted(b for b in budgets if (controller.plan(b, L) == ASK).any())
    if not budgets:
        raise ValueError("none of the budgets asks the controller anything: nothing to calibrate")
    after, prompt = full_prompt > 0, None
    if after:  # the prompts through every layer once, as one batch; every pass continues a copy of their cache
        prompt = executor.forward(windows[:, :full_prompt], controller=FullController(), with_logits=False).cache
        windows = windows[:, full_prompt:]
    runner = controller.for_full_prompt() if after else controller
    share, policy = controller.plan_config.skip_share, controller.policy
    offsets, rows = torch.zeros(len(budgets)), []
    with shared_prefixes(executor):  # the layers each budget's plan processes in full run once per window
        for r in range(rounds + int(verify)):
            policy.set_skip_offsets(torch.tensor(budgets), offsets, after_full_prompt=after)
            for i, b in enumerate(budgets):
                margins, realized = _margins_and_share(executor, runner, windows, b, prompt)
                rows.append({"round": r, "budget": b, "skip_share": realized, "offset": float(offsets[i])})
                if r < rounds and margins.numel():
                    target = -torch.quantile(margins.float(), 1.0 - share)
                    # damped: the margins move with the offset
                    offsets[i] = target if r == 0 else (offsets[i] + target) / 2
    # the final offsets, measured or not
    policy.set_skip_offsets(torch.tensor(budgets), offsets, after_full_prompt=after)
    return pd.DataFrame(rows)
