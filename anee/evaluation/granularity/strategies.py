"""Notebook 08's harness: every LM strategy as a per-window evaluation with two cost units.

Every strategy is scored with `anee.evaluation.perplexity.evaluate` on the same non-overlapping windows of the
WikiText-2 test split (one call per window, so per-window NLL is available to the selectors), and
every row carries both cost units, each relative to the unmodified fp32 model:

- `rel_macs`: multiply-accumulates per scored token (layers at their context, K/V-only paths of
  skipped layers, LM head, controller overhead such as logit-lens checks). Weight quantisation does
  not change it (fake-quant: the same multiplies on de-quantised weights).
- `rel_bytes`: weight bytes read per token by a batch-1, memory-bound decoder: each processed block
  at its stored precision, only K/V projections for a skipped/exited block, nothing for a removed
  block, the fp32 LM head once per token plus once per extra logit-lens check or re-execution.
  Real INT8 kernels (a `WeightBank(..., kernels=True)`) read what fake INT8 is charged for.

Every score also says how the strategy decodes (`decode`), so its speed can be measured
(`anee.evaluation.granularity.speed`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ...core.actions import DROP, EXIT, PROCESS, SKIP, pattern_decisions
from ...core.cost import CostReport, bypassed, static_cost
from ...core.outputs import MethodOutput, Trace
from ...engine.controllers.base import FixedController
from ...engine.controllers.budget import BudgetController
from ...engine.controllers.entropy_exit import EntropyExitController
from ...engine.executor import AdaptiveExecutor
from ...granularity.precision import mixed_precision_forward, progressive_refinement
from ...granularity.quantize import FP32, WeightBank
from ..context import EvalContext
from ..perplexity import evaluate
from .speed import Decode, Mix


@dataclass
class WindowScores:
    """Per-window results of one strategy over the evaluation windows."""

    nll: np.ndarray  # [N] summed NLL over the scored tokens of each window
    tokens: np.ndarray  # [N] scored tokens per window
    macs: np.ndarray  # [N] summed MACs (total: layers + head + overhead) of the scored tokens
    full_macs: np.ndarray  # [N] same for the fp32 full model
    bytes: np.ndarray  # [N] summed weight bytes of the scored tokens
    decode: Decode | Mix | None = None  # how the strategy decodes (for its measured speed)

    @property
    def ppl(self) -> float:
        return float(np.exp(self.nll.sum() / self.tokens.sum()))

    @property
    def mean_nll(self) -> np.ndarray:
        return self.nll / self.tokens

    def rel_macs(self) -> float:
        return float(self.macs.sum() / self.full_macs.sum())

    def rel_bytes(self, bank: WeightBank) -> float:
        return float(self.bytes.sum() / (bank.full_bytes * self.tokens.sum()))


def trace_bytes(trace: Trace, bank: WeightBank, executor: AdaptiveExecutor,
                bits: Sequence[int] | None = None) -> torch.Tensor:
    """Weight bytes per token [B, T] of an executor trace: processed blocks at `bits` (default fp32),
    K/V projections only for skipped/exited ones, nothing for dropped ones, the bypass's fp32 weights
    where it runs, the fp32 head once plus 4 bytes per overhead MAC (at batch 1 every MAC of a
    controller or logit-lens check reads one weight)."""
    L = trace.decisions.shape[-1]
    bits = [FP32] * L if bits is None else list(bits)
    kv = 4.0 * executor.cost.kv_proj
    processed = torch.tensor([bank.layer_bytes(i, b) for i, b in enumerate(bits)], dtype=torch.float64)
    proc = (trace.decisions == PROCESS).double()
    kv_only = ((trace.decisions == SKIP) | (trace.decisions == EXIT)).double()
    by = bypassed(trace.decisions).double() * 4.0 * executor.cost.bypass
    return (bank.head_bytes + (proc * processed).sum(-1) + (kv_only * kv).sum(-1) + by.sum(-1)
            + 4.0 * trace.overhead_macs)


def _score(method: Callable[[torch.Tensor], tuple[MethodOutput, torch.Tensor]], windows: torch.Tensor,
           full_cost: Callable, decode: Decode | Mix | None = None) -> WindowScores:
    nll, tok, macs, full, byts = [], [], [], [], []
    for w in windows:
        ids = w.unsqueeze(0)
        holder: dict = {}

        def run(chunk, holder=holder):
            out, b = method(chunk)
            holder["bytes"] = b
            holder["cost"] = out.cost
            return out

        r = evaluate(run, ids, window=ids.shape[1], stride=ids.shape[1])
        cost: CostReport = holder["cost"]
        sl = slice(0, ids.shape[1] - 1)  # positions whose predictions are scored
        nll.append(r.nll_sum)
        tok.append(r.tokens)
        macs.append(float((cost.layer_macs.reshape(-1)[sl] + cost.overhead_macs.reshape(-1)[sl]).sum()
                          + cost.head_macs * r.tokens))
        full.append(float(full_cost(ids)))
        byts.append(float(holder["bytes"].reshape(-1)[sl].sum()))
    return WindowScores(*(np.array(x, dtype=np.float64) for x in (nll, tok, macs, full, byts)), decode=decode)


def removal_pattern(num_layers: int, removed: Sequence[int]) -> list[int]:
    """One action per layer: SKIP the `removed` layers, PROCESS the rest (statically removed layers
    cost nothing in `static_cost`: no token reads their K/V)."""
    drop = set(removed)
    return [SKIP if i in drop else PROCESS for i in range(num_layers)]


def weights_at(bank: WeightBank, bits: int | Sequence[int]):
    """A bank's weights at `bits` for an executor, or None when every layer runs the model's own fp32."""
    pattern = bank.pattern(bits)
    return None if set(pattern) == {FP32} and bank.smoothing is None else bank.at(pattern)


def variant_decode(bank: WeightBank, bits: int, removed: Sequence[int]) -> Decode:
    """How a whole-model variant decodes: the bank's weights, and its removed layers DROPPED (no K/V,
    as `static_cost` charges them)."""
    drop = set(removed)
    controller = FixedController([DROP if i in drop else PROCESS
                                  for i in range(bank.adapter.num_layers)]) if drop else None
    return Decode(weights=weights_at(bank, bits), controller=controller)


class Strategies:
    """The LM strategies of notebook 08 on one model, sharing an executor and a weight bank."""

    def __init__(self, ctx: EvalContext, bank: WeightBank):
        self.ctx, self.bank = ctx, bank
        self.ex = ctx.executor
        self.L = ctx.adapter.num_layers

    def full_macs(self, ids: torch.Tensor) -> float:
        T = ids.shape[1]
        context = torch.arange(1, T, dtype=torch.float64)  # scored positions 0..T-2 attend to 1..T-1 keys
        return float(self.ex.cost.full_token(context).sum())

    # ---- coarse: a whole variant ------------------------------------------------------------
    def variant(self, windows: torch.Tensor, bits: int = FP32, removed: Sequence[int] = ()) -> WindowScores:
        pattern = removal_pattern(self.L, removed)
        per_token = self.bank.token_bytes([bits] * self.L, removed)

        def method(ids):
            T = ids.shape[1]
            with self.bank.applied(bits):
                out = self.ex.forward(ids, decisions=pattern_decisions(pattern, T))
            cost = static_cost(self.ex.cost, out.trace.context, self.L - len(set(removed)))
            return MethodOutput(out.logits, cost), torch.full((1, T), per_token, dtype=torch.float64)

        return _score(method, windows, self.full_macs, variant_decode(self.bank, bits, removed))

    # ---- ANEE: a controller (default the simple budget policy) in an executor (default identity) ------
    def anee(self, windows: torch.Tensor, budget: float, controller=None,
             executor: AdaptiveExecutor | None = None) -> WindowScores:
        controller, ex = controller or BudgetController(), executor or self.ex
        bits = None if ex.weights is None else ex.weights.bits

        def method(ids):
            res = ex.forward(ids, controller=controller, budget=budget)
            return MethodOutput(res.logits, res.trace.cost(ex.cost)), trace_bytes(res.trace, self.bank, ex, bits)

        decode = Decode(weights=ex.weights, controller=controller, bypass=ex.bypass, budget=budget,
                        min_layers=ex.min_layers)
        return _score(method, windows, self.full_macs, decode)

    # ---- medium: entropy exit on the LM ---------------------------------------------------------
    def entropy_exit(self, windows: torch.Tensor, check_layers: Sequence[int], threshold: float) -> WindowScores:
        controller = EntropyExitController(check_layers, threshold)

        def method(ids):
            res = self.ex.forward(ids, controller=controller)
            return MethodOutput(res.logits, res.trace.cost(self.ex.cost)), trace_bytes(res.trace, self.bank, self.ex)

        return _score(method, windows, self.full_macs, Decode(controller=controller))

    # ---- fine: per-layer precision schedule, progressive refinement ----------------------------
    def schedule(self, windows: torch.Tensor, pattern: Sequence[int]) -> WindowScores:
        per_token = self.bank.token_bytes(pattern)

        def method(ids):
            T = ids.shape[1]
            logits = mixed_precision_forward(self.ctx.adapter, self.bank, ids, list(pattern))
            context = torch.arange(1, T + 1, dtype=torch.float64).unsqueeze(0)
            return (MethodOutput(logits, static_cost(self.ex.cost, context, self.L)),
                    torch.full((1, T), per_token, dtype=torch.float64))

        return _score(method, windows, self.full_macs, Decode(weights=weights_at(self.bank, pattern)))

    def progressive(self, windows: torch.Tensor, budget: float, threshold: float, cheap_bits: int = 4,
                    fine_bits: int = 8) -> tuple[WindowScores, float]:
        """Returns the scores and the fraction of tokens re-executed; the byte budget is accounted
        over the whole evaluation set (running mean never above `budget`)."""
        account = {"spent": 0.0, "tokens": 0, "refined": 0}

        def method(ids):
            T = ids.shape[1]
            r = progressive_refinement(self.ctx.adapter, self.bank, ids, budget, threshold, cheap_bits=cheap_bits,
                                       fine_bits=fine_bits, spent_before=account["spent"],
                                       tokens_before=account["tokens"], count_last=False)
            account.update(spent=r["spent"], tokens=r["tokens"], refined=account["refined"] + int(r["refined"].sum()))
            context = torch.arange(1, T + 1, dtype=torch.float64).unsqueeze(0)
            base = static_cost(self.ex.cost, context, self.L)
            # a refined token runs every layer and the head a second time
            extra = r["refined"].double() * (base.layer_macs + base.head_macs)
            cost = CostReport(base.layer_macs, base.full_layer_macs, base.head_macs, extra)
            return MethodOutput(r["logits"], cost), r["bytes"]

        scores = _score(method, windows, self.full_macs)
        frac = account["refined"] / max(account["tokens"], 1)
        # decoding: a cheap pass per token, and a fine pass for the fraction re-executed
        scores.decode = Mix(((1.0, Decode(weights=weights_at(self.bank, cheap_bits))),
                             (frac, Decode(weights=weights_at(self.bank, fine_bits)))))
        return scores, frac
