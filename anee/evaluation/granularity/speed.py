"""Measured decode speed of notebook 08's strategies: tokens/s at batch 1, as ratios to fp32 taken in
one interleaved run (so drift in machine load hits every contender alike).

Every strategy that runs one way for a whole sequence is a `Decode`: ANEE's executor with some
weights (a `WeightBank` pattern: fake-quant or real INT8 kernels), a controller, a bypass and a
budget; each decodes the same prompt greedily with the same loop (`ANEEWrapper.generate_ids`).
A strategy that picks per window or per token what to run (the coarse selectors, progressive
refinement) is a `Mix`: its time per token is the weighted sum of the measured times of its parts
(`source` = "composed"). Rows without an LM decoder (BranchyNet, notebook 06's imports) get none.
The cost model's prediction for a row is 1 / its relative energy (bytes or MACs, its `energy_unit`),
the speed-up a decoder bound by that unit would reach.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from ...core.bypass import BypassBank
from ...core.timing import interleaved_seconds
from ...engine.config import ANEEConfig
from ...engine.controllers.base import Controller
from ...engine.executor import Weights
from ...engine.wrapper import ANEEWrapper

PROMPT = "The history of the printing press begins in"
Key = tuple[str, str]  # (strategy, setting) of a table row


@dataclass(frozen=True)
class Decode:
    """One measured way to decode: executor weights (None: the model's own), controller (None: every
    layer), layer bypass, budget and the executor's minimum depth."""

    weights: Weights | None = None
    controller: Controller | None = None
    bypass: BypassBank | None = None
    budget: float = 1.0
    min_layers: int = 0


@dataclass(frozen=True)
class Mix:
    """A per-token mix of decodes: time per token = sum of weight x measured time per token."""

    parts: tuple[tuple[float, Decode], ...]


Plan = Mapping[Key, Decode | Mix | None]
FP32 = Decode()


def _runner(model, tokenizer, decode: Decode, ids: torch.Tensor, new_tokens: int):
    # prefill="adaptive": the decode's controller and budget on every position, prompt included, as the
    # predictions count
    config = ANEEConfig(model_name="decode-speed", min_layers=decode.min_layers, controller="full", prefill="adaptive")
    wrapper = ANEEWrapper(config, model=model,
                          tokenizer=tokenizer, controller=decode.controller, bypass=decode.bypass,
                          weights=decode.weights)
    return lambda: wrapper.generate_ids(ids, new_tokens, energy_budget=decode.budget)


def decode_seconds(model, tokenizer, decodes: list[Decode], new_tokens: int = 128, rounds: int = 3, warmup: int = 1,
                   prompt: str = PROMPT) -> list[float]:
    """Seconds per decoded token of each decode (batch 1, greedy, exactly `new_tokens` tokens), the
    decodes interleaved within each round, minimum over rounds."""
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    runs = {i: _runner(model, tokenizer, d, ids, new_tokens) for i, d in enumerate(decodes)}
    with torch.inference_mode():
        seconds = interleaved_seconds(runs, rounds=rounds, warmup=warmup, reduce="min")
    return [seconds[i] / new_tokens for i in range(len(decodes))]


def decode_speeds(model, tokenizer, plan: Plan, new_tokens: int = 128, rounds: int = 3,
                  warmup: int = 1) -> pd.DataFrame:
    """Decode speed of every row of a plan, relative to the fp32 model (always measured, in the same
    run): seconds per token, tokens/s, `speed_rel_fp32` and `source` (measured / composed / none)."""
    decodes = [FP32]
    for entry in plan.values():
        for d in ([entry] if isinstance(entry, Decode) else [p for _, p in entry.parts] if isinstance(entry, Mix)
                  else []):
            if d not in decodes:
                decodes.append(d)
    seconds = decode_seconds(model, tokenizer, decodes, new_tokens, rounds, warmup)

    def measured(d: Decode) -> float:  # decodes compare by value; controllers need not hash
        return seconds[decodes.index(d)]

    ref = measured(FP32)
    rows = []
    for (strategy, setting), entry in plan.items():
        if isinstance(entry, Decode):
            sec, source = measured(entry), "measured"
        elif isinstance(entry, Mix):
            sec, source = sum(w * measured(d) for w, d in entry.parts), "composed"
        else:
            sec, source = np.nan, "none"
        rows.append({"strategy": strategy, "setting": setting, "seconds_per_token": sec, "tokens_per_s": 1 / sec,
                     "speed_rel_fp32": ref / sec, "source": source})
    out = pd.DataFrame(rows)
    out["new_tokens"], out["rounds"], out["threads"] = new_tokens, rounds, torch.get_num_threads()
    return out


def with_predictions(speeds: pd.DataFrame, table: pd.DataFrame) -> pd.DataFrame:
    """`speeds` with the cost model's predicted speed-up (1 / the row's `rel_energy`) and the ratio of
    measured to predicted, matched on (strategy, setting). A trained method has one table row per seed
    under the same key: its unit is the same in each, but a timed row must match exactly one."""
    rows = table.set_index(["strategy", "setting"])
    keys = list(zip(speeds.strategy, speeds.setting))
    out = speeds.copy()
    units = table.groupby(["strategy", "setting"], sort=False).energy_unit.agg(lambda u: "; ".join(dict.fromkeys(u)))
    out["energy_unit"] = [units.get(k, "") for k in keys]
    timed = [k in rows.index and src != "none" for k, src in zip(keys, out.source)]
    shared = rows.index[rows.index.duplicated()]
    if bad := [k for k, ok in zip(keys, timed) if ok and k in shared]:
        raise ValueError(f"timed rows {bad} match several rows of the table (one per seed?): time one seed's "
                         "setting under a key of its own")
    out["predicted_speed_rel_fp32"] = [1 / rows.rel_energy[k] if ok else np.nan for k, ok in zip(keys, timed)]
    out["measured_over_predicted"] = out.speed_rel_fp32 / out.predicted_speed_rel_fp32
    return out


def with_speed(table: pd.DataFrame, speeds: pd.DataFrame) -> pd.DataFrame:
    """The quality table with the measured `speed_rel_fp32` and its `speed_source` beside the cost
    columns, for display and the figure (the saved quality table stays free of timings)."""
    cols = speeds[["strategy", "setting", "speed_rel_fp32", "source"]].rename(columns={"source": "speed_source"})
    out = table.merge(cols, on=["strategy", "setting"], how="left")
    out["speed_source"] = out.speed_source.fillna("none")
    at = list(out.columns).index("rel_bytes") + 1
    order = (list(out.columns[:at]) + ["speed_rel_fp32", "speed_source"]
             + [c for c in out.columns[at:] if c not in ("speed_rel_fp32", "speed_source")])
    return out[order]
