"""`anee.calibrate`: a defaults folder for any model, so that the heuristic (and the layer bypass) run
on models that ship none.

    model, tokenizer = anee.load_model("gpt2")
    anee.calibrate(model, tokenizer, out="anee-gpt2")           # the vendored WikiText-2 valid split
    wrapper = ANEEWrapper(ANEEConfig(model_name="gpt2", defaults_dir="anee-gpt2"), model=model, tokenizer=tokenizer)

It runs notebook 02's calibration in closed form: the profiler (shortlist entropy, layer importance)
and, optionally, a closed-form layer bypass (no end-to-end tuning: that is 02's, on the embedded
model). Layers are ranked by Block Influence, or with `greedy_steps` > 0 by notebook 02's greedy
bypass-aware removal order (`greedy_removal_order`: steps x L removal passes over up to 4 windows
of 512 calibration tokens; notebook 02 compares both orders on the embedded model). The folder is
written atomically (`folder_writer`) with a manifest whose method is "heuristic"; the learned
controllers need notebooks 03-04.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..core.adapters import adapter_for
from ..core.bypass import BypassConfig
from ..core.data import sample_windows, wikitext_tokens
from ..core.scalars import flag, integer
from .controllers.plan import PlanConfig
from .defaults import (
    BYPASS_FILE,
    PROFILER_FILE,
    Defaults,
    folder_writer,
    model_fingerprint,
    read_defaults,
    write_manifest,
)
from .executor import AdaptiveExecutor, check_input_ids
from .importance import block_influence, greedy_removal_order, order_importance, removal_order
from .profiler import calibrate_profiler
from .training.bypass import fit_layer_bypass, layer_bypass_stats

DEFAULT_BYPASS = BypassConfig("diag_lowrank", 64)  # notebook 02's deployed family (untuned here)
PROFILER_WINDOW, BYPASS_WINDOW, BYPASS_WINDOWS = 256, 512, 8
SEARCH_WINDOWS = 4  # of BYPASS_WINDOW tokens, the first of the calibration ids (notebook 02's search)


def calibration_ids(tokenizer, text_or_ids, tokens: int) -> tuple[torch.Tensor, str]:
    """Token ids [1, N] (at most `tokens`) and where they come from: a text (tokenised), token ids
    [N] or [1, N], or None for the vendored WikiText-2 valid split."""
    if text_or_ids is None:
        if tokenizer is None:
            raise ValueError("pass a tokenizer (to read the vendored WikiText-2 valid split) "
                             "or text_or_ids as token ids")
        return wikitext_tokens(tokenizer, "valid", tokens), "wikitext-2 valid (vendored)"
    if isinstance(text_or_ids, str):
        if tokenizer is None:
            raise ValueError("a text needs its tokenizer: calibrate(model, tokenizer, text, out=...)")
        ids = tokenizer(text_or_ids, add_special_tokens=False, return_tensors="pt")["input_ids"]
        return ids[:, :tokens], "text"
    if (not isinstance(text_or_ids, torch.Tensor) or text_or_ids.ndim not in (1, 2)
            or (text_or_ids.ndim == 2 and text_or_ids.shape[0] != 1)):
        got = (f"a tensor of shape {tuple(text_or_ids.shape)}" if isinstance(text_or_ids, torch.Tensor)
               else type(text_or_ids).__name__)
        raise TypeError(f"text_or_ids must be a str, token ids [N] or [1, N], or None (WikiText-2 valid), got {got}")
    return text_or_ids.reshape(1, -1)[:, :tokens], "token ids"


def calibrate(model, tokenizer=None, text_or_ids=None, out: str | Path = "anee-defaults", name: str | None = None,
              bypass: BypassConfig | None = DEFAULT_BYPASS, tokens: int = 4096, plan: PlanConfig | None = None,
              greedy_steps: int = 0, progress: bool = True) -> Defaults:
    """Calibrate the profiler (and a closed-form `bypass`, None for none) of `model` on `text_or_ids`
    (at most `tokens` tokens; None: the vendored WikiText-2 valid split) and write them to the
    defaults folder `out` (replaced atomically), whose method is the heuristic under `plan`.
    `greedy_steps`: layers ranked first by the greedy removal search with that bypass (the rest by
    Block Influence); 0 ranks all by Block Influence. Returns the folder, checked. `name` is recorded
    in the manifest (default: the model's own)."""
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a HF causal LM (e.g. from anee.load_model), got {type(model).__name__}")
    tokens, progress = integer("tokens", tokens, 2), flag("progress", progress)
    greedy_steps = integer("greedy_steps", greedy_steps, 0)
    if bypass is not None and not isinstance(bypass, BypassConfig):
        raise TypeError(f"bypass must be a BypassConfig (anee.core.bypass) or None, got {type(bypass).__name__}")
    plan = plan or PlanConfig()
    adapter = adapter_for(model.eval())
    ids, source = calibration_ids(tokenizer, text_or_ids, tokens)
    check_input_ids(ids, adapter.dims.vocab)
    ids = ids.to(next(model.parameters()).device)
    window = min(PROFILER_WINDOW, adapter.dims.max_positions)
    if ids.shape[1] < window:
        raise ValueError(f"calibration needs at least {window} tokens, got {ids.shape[1]}: pass a longer text")
    if greedy_steps > adapter.num_layers:
        raise ValueError(f"greedy_steps must be at most the model's {adapter.num_layers} layers, got {greedy_steps}")
    name = name or str(getattr(model.config, "name_or_path", "") or model.config.model_type)
    steps = tqdm(total=2 + (bypass is not None) + (greedy_steps > 0), desc="anee.calibrate", disable=not progress)
    length = min(BYPASS_WINDOW, adapter.dims.max_positions, ids.shape[1])  # the bypass's and the search's windows
    with folder_writer(out) as tmp:
        bank = None
        if bypass is not None:
            steps.set_postfix_str(f"layer bypass ({bypass.label}, closed form)")
            windows = sample_windows(ids.cpu(), length, BYPASS_WINDOWS).to(ids.device)
            stats = layer_bypass_stats(AdaptiveExecutor(adapter), tqdm(windows, desc="bypass statistics", leave=False,
                                                                       disable=not progress))
            bank = fit_layer_bypass(AdaptiveExecutor(adapter), windows, bypass, stats)
            bank.save(tmp / BYPASS_FILE)
            steps.update()
        executor = AdaptiveExecutor(adapter, bypass=bank)
        importance = None  # None: calibrate_profiler's Block Influence
        if greedy_steps:
            steps.set_postfix_str(f"greedy removal order ({greedy_steps} steps)")
            count = min(SEARCH_WINDOWS, ids.shape[1] // length)
            search = ids[0, : count * length].view(count, length)
            fallback = removal_order(block_influence(executor, ids, window=window))  # same data as the profiler's
            importance = order_importance(greedy_removal_order(executor, search, greedy_steps, fallback))
            steps.update()
        steps.set_postfix_str("profiler (shortlist entropy, layer importance)")
        profiler = calibrate_profiler(executor, ids, window=window, importance=importance)
        profiler.save(tmp / PROFILER_FILE)
        steps.update()
        steps.set_postfix_str("manifest")
        write_manifest(tmp, {"model": model_fingerprint(adapter, name), "method": "heuristic", "plan": asdict(plan),
                             "source": {"kind": "anee.calibrate", "data": source, "tokens": int(ids.shape[1]),
                                        "bypass": None if bypass is None else bypass.label,
                                        "removal_order": f"greedy ({greedy_steps} steps)" if greedy_steps
                                                         else "block_influence"}})
        steps.update()
    steps.close()
    return read_defaults(out)
