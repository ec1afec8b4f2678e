"""Coarse granularity: pick one model variant per input (a window of tokens) under an energy budget.

A *pool* is a list of variants of the same base model with a known cost per token (in one unit:
relative weight bytes or relative MACs) and a calibration quality (mean NLL on valid windows).
Three selectors, all behind the same `BudgetGuard`:

- `EnergyAwareSelector`: the most accurate variant whose cost fits the budget (input-independent).
- `FuzzySelector`: fuzzy memberships (scikit-fuzzy triangular sets) over cheap input-complexity
  features -> rules -> a complexity score in [0, 1] -> LOW/MEDIUM/HIGH tier of the cost-ordered
  Pareto pool.
- `GatingSelector`: the same choice phrased as a mixture-of-experts gate: a softmax-linear router over
  the variants (trained on calibration windows to prefer cheap variants that lose little NLL),
  top-1 routing with a cost bias tuned so the average cost meets the budget.

`BudgetGuard` makes the budget a hard guarantee: in "per_input" mode no input may exceed it; in
"average" mode the running mean cost over the inputs seen so far never exceeds it (so neither does
the mean over the evaluation set). A request that would break it is downgraded to the most accurate
variant that still fits.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..core.bisection import bisect, grow_upper


@dataclass(frozen=True)
class Variant:
    name: str
    cost: float  # per token, in the pool's unit (e.g. relative weight bytes)
    quality: float  # calibration mean NLL per token (lower is better)


def pareto(pool: Sequence[Variant]) -> list[int]:
    """Indices of variants not dominated in (cost, quality), ordered by cost ascending."""
    order = sorted(range(len(pool)), key=lambda i: (pool[i].cost, pool[i].quality))
    keep, best = [], float("inf")
    for i in order:
        if pool[i].quality < best - 1e-12:
            keep.append(i)
            best = pool[i].quality
    return keep


class BudgetGuard:
    """Running account that never lets the measured cost exceed the budget."""

    def __init__(self, budget: float, mode: str = "average"):
        if mode not in ("average", "per_input"):
            raise ValueError("mode must be 'average' or 'per_input'")
        self.budget, self.mode = float(budget), mode
        self.spent, self.count = 0.0, 0

    def fits(self, cost: float) -> bool:
        if self.mode == "per_input":
            return cost <= self.budget * (1 + 1e-12)
        return self.spent + cost <= self.budget * (self.count + 1) * (1 + 1e-12)

    def charge(self, cost: float) -> None:
        self.spent += cost
        self.count += 1

    @property
    def mean(self) -> float:
        return self.spent / max(self.count, 1)


class _Selector:
    mode = "average"

    def __init__(self, pool: Sequence[Variant]):
        self.pool = list(pool)
        self.front = pareto(self.pool)

    def _check(self, budget: float) -> None:
        cheapest = min(v.cost for v in self.pool)
        if budget < cheapest:
            raise ValueError(f"budget {budget:.4g} is below the cheapest variant ({cheapest:.4g})")

    def preferred(self, features: np.ndarray, budget: float) -> list[int]:
        """Index of the variant each input asks for, before the guard [N]."""
        raise NotImplementedError

    def select(self, features: np.ndarray, budget: float) -> list[int]:
        """Variant index per input, in order, guaranteed within budget (see `BudgetGuard`)."""
        self._check(budget)
        guard = BudgetGuard(budget, self.mode)
        wanted = self.preferred(np.asarray(features, dtype=np.float64), budget)
        chosen = []
        for i in wanted:
            if not guard.fits(self.pool[i].cost):
                # downgrade: the most accurate Pareto variant that still fits (the cheapest always does)
                fitting = [j for j in self.front if guard.fits(self.pool[j].cost)]
                i = fitting[-1] if fitting else self.front[0]
            guard.charge(self.pool[i].cost)
            chosen.append(i)
        return chosen


class EnergyAwareSelector(_Selector):
    """The most accurate variant the budget affords, for every input (strict per-input budget)."""

    mode = "per_input"

    def preferred(self, features, budget):
        fitting = [i for i in self.front if self.pool[i].cost <= budget * (1 + 1e-12)]
        return [fitting[-1]] * len(features)


# ----------------------------------------------------------------------------------- input features
FEATURES = ("unigram_surprisal", "type_token_ratio", "rare_fraction")


class ComplexityFeatures:
    """Cheap, model-free complexity features of a token window (computed before any model runs):
    mean unigram surprisal under add-one counts from reference text, type-token ratio, and the
    fraction of tokens seen fewer than `rare_count` times in the reference text. Use reference text
    disjoint from the windows the selectors are calibrated on, or rare tokens never look rare there."""

    def __init__(self, reference_ids: torch.Tensor, vocab_size: int, rare_count: int = 2):
        raw = torch.bincount(reference_ids.flatten(), minlength=vocab_size).double()
        counts = raw + 1
        self.logp = (counts / counts.sum()).log()
        self.raw, self.rare_count = raw, rare_count

    def __call__(self, windows: torch.Tensor) -> np.ndarray:
        rows = []
        for w in windows:
            rows.append([float(-self.logp[w].mean()), float(w.unique().numel() / w.numel()),
                         float((self.raw[w] < self.rare_count).double().mean())])
        return np.array(rows)


# ---------------------------------------------------------------------------------------- fuzzy
class FuzzySelector(_Selector):
    """Fuzzy complexity -> tier of the Pareto pool; average budget enforced by the guard.

    Each feature is normalised to [0, 1] by the calibration 5th/95th percentiles and fuzzified into
    LOW/MEDIUM/HIGH triangles. Rules (Mamdani, min/max): HIGH complexity if surprisal is HIGH or
    rare-token fraction is HIGH; LOW if surprisal is LOW and type-token ratio is LOW; MEDIUM if
    surprisal is MEDIUM. The centroid of the aggregated output set is the complexity score; the
    variants the budget affords on average (cost <= budget * `stretch`) are split into three
    cost tiers (LOW -> cheapest, HIGH -> most accurate).
    """

    def __init__(self, pool, calibration_features: np.ndarray, stretch: float = 1.5):
        super().__init__(pool)
        f = np.asarray(calibration_features, dtype=np.float64)
        self.lo = np.percentile(f, 5, axis=0)
        self.hi = np.percentile(f, 95, axis=0)
        self.stretch = stretch

    def complexity(self, features: np.ndarray) -> np.ndarray:
        import skfuzzy as fuzz

        u = np.linspace(0, 1, 101)
        low, med, high = fuzz.trimf(u, [0, 0, 0.5]), fuzz.trimf(u, [0, 0.5, 1]), fuzz.trimf(u, [0.5, 1, 1])
        x = np.clip((features - self.lo) / np.maximum(self.hi - self.lo, 1e-12), 0, 1)
        scores = []
        for s, ttr, rare in x:
            m = {name: {k: fuzz.interp_membership(u, mf, v) for k, mf in (("low", low), ("med", med), ("high", high))}
                 for name, v in (("s", s), ("t", ttr), ("r", rare))}
            r_high = max(m["s"]["high"], m["r"]["high"])
            r_low = min(m["s"]["low"], m["t"]["low"])
            r_med = m["s"]["med"]
            agg = np.fmax(np.fmax(np.fmin(r_low, low), np.fmin(r_med, med)), np.fmin(r_high, high))
            scores.append(0.5 if agg.sum() == 0 else fuzz.defuzz(u, agg, "centroid"))
        return np.array(scores)

    def preferred(self, features, budget):
        tiers = [i for i in self.front if self.pool[i].cost <= budget * self.stretch] or self.front[:1]
        score = self.complexity(features)
        level = np.digitize(score, [1 / 3, 2 / 3])  # 0 LOW, 1 MEDIUM, 2 HIGH
        picks = [tiers[0], tiers[len(tiers) // 2], tiers[-1]]
        return [picks[k] for k in level]


# ------------------------------------------------------------------------------------------ gating
class GatingSelector(_Selector):
    """MoE-style top-1 router over the variants: softmax(W f + b - mu * cost).

    Trained on calibration windows with soft targets softmax(-(NLL_v + lam * cost_v) / tau) (the
    expert that best trades quality for cost on that window); `mu` is found by bisection so the
    routed average cost on the calibration features meets the budget; the guard enforces it.
    """

    def __init__(self, pool, calibration_features: np.ndarray, calibration_nll: np.ndarray, lam: float = 1.0,
                 tau: float = 0.05, steps: int = 300, weight_decay: float = 1e-2, seed: int = 0):
        super().__init__(pool)
        f = torch.tensor(np.asarray(calibration_features), dtype=torch.float32)
        self.mean = f.mean(0)
        self.std = torch.maximum(f.std(0), 0.01 * self.mean.abs() + 1e-3)  # a constant feature stays harmless
        cost = torch.tensor([v.cost for v in pool], dtype=torch.float32)
        nll = torch.tensor(np.asarray(calibration_nll), dtype=torch.float32)  # [N, V] per-token mean NLL
        target = torch.softmax(-(nll + lam * cost) / tau, dim=-1)
        g = torch.Generator().manual_seed(seed)
        self.gate = torch.nn.Linear(f.shape[1], len(pool))
        with torch.no_grad():
            self.gate.weight.normal_(0, 0.01, generator=g)
            self.gate.bias.zero_()
        opt = torch.optim.Adam(self.gate.parameters(), lr=0.05, weight_decay=weight_decay)
        x = self._standardize(f)
        for _ in range(steps):
            loss = -(target * torch.log_softmax(self.gate(x), -1)).sum(-1).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        self.cost = cost.double()
        self.calibration_features = np.asarray(calibration_features)

    def _standardize(self, f: torch.Tensor) -> torch.Tensor:
        """z-scores clipped to +-3: a window unlike any calibration window cannot extrapolate the gate."""
        return ((f - self.mean) / self.std).clamp(-3, 3)

    def _route(self, features: np.ndarray, mu: float) -> np.ndarray:
        with torch.no_grad():
            x = self._standardize(torch.tensor(features, dtype=torch.float32))
            logits = self.gate(x).double() - mu * self.cost
        return logits.argmax(-1).numpy()

    def mu_for(self, budget: float) -> float:
        """Smallest cost bias whose routed mean cost on the calibration windows is within budget."""
        def mean_cost(mu):
            return float(self.cost[self._route(self.calibration_features, mu)].mean())

        if mean_cost(0.0) <= budget:
            return 0.0
        def over(mu: float) -> bool:
            return mean_cost(mu) > budget

        return bisect(over, 0.0, grow_upper(over, 1.0), 40)[1]

    def preferred(self, features, budget):
        return self._route(features, self.mu_for(budget)).tolist()
