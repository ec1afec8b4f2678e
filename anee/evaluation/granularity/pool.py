"""Coarse granularity for notebook 08: a pool of whole-model variants, measured once, selected from.

The pool holds weight-quantised and depth-reduced copies of one model (fake-quant, the counted-bytes
reference; and real INT8 kernels from a kernel bank, `kernel_specs`). Every variant is scored per
window (`Strategies.variant`), so a selector's choice of one variant per window is re-scored from the
stored per-window NLL, MACs and tokens without running the model again.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from ...granularity.quantize import FP32, WeightBank
from ...granularity.selection import EnergyAwareSelector, FuzzySelector, GatingSelector, Variant, pareto
from .strategies import Strategies, WindowScores

Spec = tuple[int, tuple[int, ...]]  # (weight bits, removed layers)
Selector = EnergyAwareSelector | FuzzySelector | GatingSelector
Choices = dict[tuple[str, float], list[str]]  # (selector, budget) -> variant name per test window


def quantisation_check(bank: WeightBank, bits: Sequence[int] = (4, 8), layer: int = 0,
                       module: str = "mlp.down_proj") -> pd.DataFrame:
    """Per bit width: most distinct values in one output channel, largest rounding error in steps,
    rel bytes per token."""
    k = [n for n, _, _ in bank.linears[layer]].index(module)
    _, linear, axis = bank.linears[layer][k]
    orig = bank.original[layer][k].movedim(axis, 0)
    L = bank.adapter.num_layers
    rows = []
    for b in bits:
        with bank.applied(b):
            # read the weight the model really runs with, not the bank's copy
            w = linear.weight.detach().movedim(axis, 0)
            levels = max(int(w[r].unique().numel()) for r in range(w.shape[0]))
        step = orig.abs().amax(1, keepdim=True) / (2 ** (b - 1) - 1)
        err = float(((bank.variants[b][layer][k].movedim(axis, 0) - orig).abs() / step).max())
        rows.append({"bits": b, "max_levels_per_channel": levels, "max_err_in_steps": err,
                     "rel_bytes_per_token": bank.token_bytes([b] * L) / bank.full_bytes})
    return pd.DataFrame(rows)


def pool_specs(order: Sequence[int], d1: int, d2: int) -> dict[str, Spec]:
    """fp32, INT8, INT4, fp32 without the `d1` / `d2` least influential layers, INT8 without `d1`."""
    return {
        "fp32": (FP32, ()),
        "int8": (8, ()),
        "int4": (4, ()),
        f"fp32-drop{d1}": (FP32, tuple(order[:d1])),
        f"fp32-drop{d2}": (FP32, tuple(order[:d2])),
        f"int8-drop{d1}": (8, tuple(order[:d1])),
    }


def kernel_specs(order: Sequence[int], d1: int) -> dict[str, Spec]:
    """The real-INT8 variants (scored with a kernel bank): all layers, and without the `d1` least influential."""
    return {"int8-kernel": (8, ()), f"int8-kernel-drop{d1}": (8, tuple(order[:d1]))}


@dataclass
class Pool:
    """Per-window scores of every variant on the test and the calibration windows."""

    specs: dict[str, Spec]
    test: dict[str, WindowScores]
    cal: dict[str, WindowScores]
    bank: WeightBank
    num_layers: int

    @property
    def names(self) -> list[str]:
        """Variant names in spec order (the selectors' variant indices)."""
        return list(self.specs)

    def variants(self) -> list[Variant]:
        """Selector pool: cost = rel weight bytes on test, quality = mean calibration NLL."""
        return [Variant(n, self.test[n].rel_bytes(self.bank), float(self.cal[n].mean_nll.mean())) for n in self.names]

    def table(self) -> pd.DataFrame:
        """One row per variant: bits, how they run (fp32, fake-quant or INT8 kernels), layers kept,
        test / valid perplexity, rel MACs and bytes."""
        def runs(bits):
            return ("fp32" if bits >= FP32 else "INT8 kernels" if bits in getattr(self.bank, "kernel_bits", ())
                    else "fake-quant")

        return pd.DataFrame([{"variant": n, "bits": bits, "weights": runs(bits),
                              "layers": self.num_layers - len(removed),
                              "ppl_test": self.test[n].ppl, "ppl_valid": self.cal[n].ppl,
                              "rel_macs": self.test[n].rel_macs(), "rel_bytes": self.test[n].rel_bytes(self.bank)}
                             for n, (bits, removed) in self.specs.items()])


def measure_pool(strategies: Strategies, specs: Mapping[str, Spec], test: torch.Tensor, calib: torch.Tensor) -> Pool:
    """Score every variant on the test windows and on the calibration windows."""
    pool_test, pool_cal = {}, {}
    for name, (bits, removed) in specs.items():
        pool_test[name] = strategies.variant(test, bits, removed)
        pool_cal[name] = strategies.variant(calib, bits, removed)
    return Pool(dict(specs), pool_test, pool_cal, strategies.bank, strategies.L)


def selector_budgets(variants: Sequence[Variant]) -> list[float]:
    """Midpoints between consecutive Pareto costs, just above the cheapest, and 1.0 (3 decimals)."""
    front = sorted(variants[i].cost for i in pareto(variants))
    mids = [(a + b) / 2 for a, b in zip(front, front[1:])]
    return sorted({round(float(b), 3) for b in mids + [front[0] + 0.01, 1.0]})


def make_selectors(pool: Pool, f_cal: np.ndarray) -> dict[str, Selector]:
    """Energy-aware, fuzzy and MoE-gate selectors over the pool, calibrated on the calibration windows."""
    variants = pool.variants()
    nll_cal = np.stack([pool.cal[n].mean_nll for n in pool.names], 1)
    return {"energy-aware": EnergyAwareSelector(variants), "fuzzy": FuzzySelector(variants, f_cal),
            "moe-gate": GatingSelector(variants, f_cal, nll_cal, lam=1.0)}


def run_selectors(selectors: Mapping[str, Selector], pool: Pool, f_test: np.ndarray,
                  budgets: Sequence[float]) -> tuple[pd.DataFrame, Choices]:
    """Every selector at every budget on the test windows: a table of scores and the choice per window."""
    names, variants = pool.names, pool.variants()
    ref = pool.test[names[0]]  # every variant scores the same windows: same tokens, same fp32 MACs
    tokens = ref.tokens
    nll = np.stack([pool.test[n].nll for n in names], 1)
    macs = np.stack([pool.test[n].macs for n in names], 1)
    idx = np.arange(len(f_test))
    rows, choices = [], {}
    for sname, sel in selectors.items():
        for budget in budgets:
            chosen = sel.select(f_test, budget)
            costs = np.array([variants[i].cost for i in chosen])
            choices[(sname, budget)] = [names[i] for i in chosen]
            rows.append({"selector": sname, "budget": budget,
                         "ppl": float(np.exp(nll[idx, chosen].sum() / tokens.sum())),
                         "rel_bytes": float((costs * tokens).sum() / tokens.sum()),
                         "max_window_rel_bytes": float(costs.max()),
                         "rel_macs": float(macs[idx, chosen].sum() / ref.full_macs.sum()),
                         "variants_used": ",".join(sorted(set(choices[(sname, budget)])))})
    return pd.DataFrame(rows), choices


def budget_violations(choices: Choices, variants: Sequence[Variant],
                      per_input: Sequence[str] = ("energy-aware",)) -> list[tuple[str, float]]:
    """(selector, budget) pairs whose running mean cost, or any single cost for `per_input` selectors, exceeds
    the budget."""
    cost = {v.name: v.cost for v in variants}
    bad = []
    for (sname, budget), chosen in choices.items():
        costs = np.array([cost[c] for c in chosen])
        running = np.cumsum(costs) / np.arange(1, len(costs) + 1)
        if (running > budget + 1e-9).any() or (sname in per_input and costs.max() > budget + 1e-9):
            bad.append((sname, budget))
    return bad
