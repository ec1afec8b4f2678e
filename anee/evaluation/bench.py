"""Decode benchmark: tokens/s of HF `generate`, ANEE at budget 1.0, and ANEE with a fixed skip pattern.

    python -m anee.evaluation.bench [--model smollm2-135m] [--new-tokens 64] [--repeats 3] [--skip-fraction 0.3]

Batch 1, greedy, exactly `new_tokens` tokens per run. The three methods are interleaved within each
repeat (so drift in machine load hits them alike) and the median is reported. The skip pattern's
*predicted* speedup is the ratio of per-token MACs (layers + LM head, attention at the actual context
lengths) of the full model to the pattern; the *measured* one is the ratio of tokens/s. Writes
`results/bench_decode.json` (a timings file: its numbers change from machine to machine).
"""

from __future__ import annotations

import argparse
import platform

import torch

from ..core.bypass import BypassBank
from ..core.devices import model_device
from ..core.loading import load_model
from ..core.timing import interleaved_seconds
from ..engine.config import ANEEConfig
from ..engine.controllers.base import FixedController, skip_pattern
from ..engine.wrapper import ANEEWrapper
from .frontier import load_bypass
from .results import output_dir, save_json

PROMPT = "The history of the printing press begins in"


def layers_to_skip(wrapper: ANEEWrapper, fraction: float) -> int:
    """Fewest skipped layers whose net saving of layer compute reaches `fraction`."""
    cost, L = wrapper.cost_model, wrapper.num_layers
    per_skip = 1.0 - cost.skip_fraction()
    return min(L - 3, max(1, round(fraction * L / per_skip)))


def predicted_speedup(wrapper: ANEEWrapper, pattern: list[int], prompt_len: int,
                      new_tokens: int) -> tuple[float, float]:
    """(layer compute saved, predicted tokens/s ratio) for decoding with a static pattern."""
    cost = wrapper.cost_model
    contexts = torch.arange(prompt_len + 1, prompt_len + new_tokens, dtype=torch.float64)
    n_skip = sum(1 for a in pattern if a != 0)
    full = wrapper.num_layers * cost.layer(contexts) + cost.lm_head
    skipped = (wrapper.num_layers - n_skip) * cost.layer(contexts) + n_skip * cost.skip_path + cost.lm_head
    layer_saved = float(1 - (skipped - cost.lm_head).sum() / (full - cost.lm_head).sum())
    return layer_saved, float(full.sum() / skipped.sum())


def run(model_name: str = "smollm2-135m", new_tokens: int = 64, repeats: int = 3, skip_fraction: float = 0.3,
        write: bool = True, bypass: BypassBank | None = None, device: str = "auto", dtype: str = "float32") -> dict:
    torch.manual_seed(0)
    model, tokenizer = load_model(model_name, device=device, dtype=dtype)
    # prefill="adaptive": the pattern on every position, prompt included, as `predicted_speedup` counts it
    config = ANEEConfig(model_name=model_name, min_layers=0, controller="full", prefill="adaptive")
    wrapper = ANEEWrapper(config, model=model, tokenizer=tokenizer)
    ids = tokenizer(PROMPT, return_tensors="pt").input_ids.to(model_device(model))
    pattern = skip_pattern(wrapper.num_layers, layers_to_skip(wrapper, skip_fraction))
    skipper = FixedController(pattern)
    if bypass is None:
        bypass = load_bypass(output_dir("results", "full") / "checkpoints", wrapper.adapter)

    def hf():
        return model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                              min_new_tokens=new_tokens, do_sample=False, pad_token_id=tokenizer.eos_token_id)

    methods = {
        "hf_generate": hf,
        "anee_budget_1.0": lambda: wrapper.generate_ids(ids, new_tokens, energy_budget=1.0),
        "anee_skip_pattern": lambda: wrapper.generate_ids(ids, new_tokens, controller=skipper),
    }
    # the same kind of pattern with the layer bypass, skipping enough layers for the same net saving
    if bypass is not None:
        by_wrapper = ANEEWrapper(config, model=model, tokenizer=tokenizer, bypass=bypass)
        by_pattern = skip_pattern(by_wrapper.num_layers, layers_to_skip(by_wrapper, skip_fraction))
        by_skipper = FixedController(by_pattern)
        methods["anee_bypass_pattern"] = lambda: by_wrapper.generate_ids(ids, new_tokens, controller=by_skipper)
    with torch.inference_mode():
        times = interleaved_seconds(methods, rounds=repeats, warmup=1, reduce="median")
    tps = {name: new_tokens / t for name, t in times.items()}
    layer_saved, predicted = predicted_speedup(wrapper, pattern, ids.shape[1], new_tokens)
    measured = tps["anee_skip_pattern"] / tps["anee_budget_1.0"]
    result = {
        "model": model_name, "new_tokens": new_tokens, "repeats": repeats, "batch": 1,
        "torch_threads": torch.get_num_threads(), "machine": platform.machine(),
        "tokens_per_s": tps,
        "anee_full_vs_hf": tps["anee_budget_1.0"] / tps["hf_generate"],
        "skip_pattern": pattern, "skip_layers": [i for i, a in enumerate(pattern) if a],
        "skip_layer_compute_saved": layer_saved,
        "skip_predicted_speedup": predicted,
        "skip_measured_speedup": measured,
        "skip_measured_over_predicted": measured / predicted,
        "skip_vs_hf": tps["anee_skip_pattern"] / tps["hf_generate"],
    }
    if bypass is not None:
        by_saved, by_predicted = predicted_speedup(by_wrapper, by_pattern, ids.shape[1], new_tokens)
        by_measured = tps["anee_bypass_pattern"] / tps["anee_budget_1.0"]
        result.update({"bypass": bypass.config.label, "bypass_skip_layers": [i for i, a in enumerate(by_pattern) if a],
                       "bypass_layer_compute_saved": by_saved, "bypass_predicted_speedup": by_predicted,
                       "bypass_measured_speedup": by_measured,
                       "bypass_measured_over_predicted": by_measured / by_predicted})
    if write:
        save_json(result, "bench_decode", "full")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-fraction", type=float, default=0.3)
    args = parser.parse_args()
    print_report(run(args.model, args.new_tokens, args.repeats, args.skip_fraction))


def print_report(r: dict) -> None:
    """The benchmark's result as the lines `python -m anee bench` prints."""
    for name, v in r["tokens_per_s"].items():
        print(f"{name:>20}: {v:7.1f} tokens/s")
    print(f"ANEE budget 1.0 / HF generate       : {r['anee_full_vs_hf']:.3f}x")
    print(f"skip pattern ({len(r['skip_layers'])} layers, "
          f"{100 * r['skip_layer_compute_saved']:.1f}% layer compute saved)")
    print(f"  predicted speedup (MAC counts)     : {r['skip_predicted_speedup']:.3f}x")
    print(f"  measured speedup (tokens/s)        : {r['skip_measured_speedup']:.3f}x")
    print(f"  measured / predicted               : {r['skip_measured_over_predicted']:.3f}")
    if "bypass" in r:
        print(f"the same with the {r['bypass']} bypass ({len(r['bypass_skip_layers'])} layers, "
              f"{100 * r['bypass_layer_compute_saved']:.1f}% layer compute saved net)")
        print(f"  predicted speedup (MAC counts)     : {r['bypass_predicted_speedup']:.3f}x")
        print(f"  measured speedup (tokens/s)        : {r['bypass_measured_speedup']:.3f}x")
        print(f"  measured / predicted               : {r['bypass_measured_over_predicted']:.3f}")


if __name__ == "__main__":
    main()
