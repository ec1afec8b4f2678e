"""The real INT8 path against fp32: quality, and measured decode speed against the cost model.

    python -m anee.evaluation.int8_bench [--model smollm2-135m] [--eval-tokens 2048] [--new-tokens 64]
        [--rounds 2] [--threads 1]

Quality (`results/int8_quality.json`, deterministic): WikiText-2 test perplexity on notebook 06's
full-profile windows (the first `eval_tokens` tokens, non-overlapping windows of 512) of fp32, of INT8
kernels on smoothed blocks (`anee.granularity.int8`, calibrated on the valid split) and of INT8
kernels without smoothing; KL to fp32 and top-1 agreement on the first window.

Speed (`results/int8_timings.json`, a timings file): batch 1, greedy, exactly `new_tokens` tokens with
ANEE's decode loop on `threads` torch threads (quality runs on the process's own count), all contenders
interleaved in one run (minimum over rounds): fp32, every layer at
INT8, and half of six segments at INT8 (the INT8-sensitive half stays fp32). Each is set against the
cost model's prediction, the ratio of weight bytes read per token (LM head fp32 in every variant).
"""

from __future__ import annotations

import argparse
import platform

import torch

from ..core.adapters import adapter_for
from ..core.data import wikitext_tokens
from ..core.divergence import token_kl
from ..core.loading import load_model
from ..core.timing import torch_threads
from ..engine.executor import AdaptiveExecutor
from ..granularity.int8 import calibrate_smoothing
from ..granularity.precision import segment_budget, segment_schedule, segment_sensitivity, segments
from ..granularity.quantize import FP32, WeightBank
from .context import EvalContext
from .frontier import frontier_windows
from .granularity.speed import FP32 as FP32_DECODE
from .granularity.speed import Decode, decode_seconds
from .methods.baselines import full_model
from .perplexity import evaluate
from .results import save_json

EVAL_TOKENS, WINDOW, STRIDE = frontier_windows("full")  # notebook 06's full-profile windows


def run(model_name: str = "smollm2-135m", eval_tokens: int = EVAL_TOKENS, new_tokens: int = 64, rounds: int = 2,
        calib_windows: int = 4, segs: int = 6, write: bool = True, loaded: tuple | None = None,
        threads: int | None = 1) -> tuple[dict, dict]:
    """(quality, timings) of the INT8 path; written to results/ when `write`. `loaded`: an already
    loaded (model, tokenizer) of `model_name`. `threads`: torch threads of the decode timings (1: the
    reference decode setting; None: the process's count); quality does not depend on it beyond float noise."""
    torch.manual_seed(0)
    model, tokenizer = loaded or load_model(model_name)
    adapter = adapter_for(model)
    executor = AdaptiveExecutor(adapter)
    L = adapter.num_layers
    calib = wikitext_tokens(tokenizer, "valid", calib_windows * WINDOW).view(calib_windows, WINDOW)
    test = wikitext_tokens(tokenizer, "test", eval_tokens)
    smoothing = calibrate_smoothing(adapter, calib)
    smoothed_bank = WeightBank(adapter, bits=(8,), kernels=True, smoothing=smoothing)
    plain_bank = WeightBank(adapter, bits=(8,), kernels=True)

    def ppl(weights) -> float:
        ex = AdaptiveExecutor(adapter, weights=weights)
        return evaluate(full_model(EvalContext(model, tokenizer, ex)), test, WINDOW, STRIDE).ppl

    first = test[:, :WINDOW]
    with torch.no_grad():
        ref = executor.forward(first).logits

        def agreement(weights) -> dict:
            logits = AdaptiveExecutor(adapter, weights=weights).forward(first).logits
            return {"kl_first_window": float(token_kl(ref, logits).mean()),
                    "top1_agreement_first_window": float((ref.argmax(-1) == logits.argmax(-1)).double().mean())}

        fp32_ppl = ppl(None)
        quality = {"model": model_name, "eval_tokens": eval_tokens, "window": WINDOW, "stride": STRIDE,
                   "calibration": f"{calib_windows} x {WINDOW} valid tokens", "smoothing_alpha": smoothing.alpha,
                   "fp32_ppl": fp32_ppl}
        for name, bank in (("int8_smoothed", smoothed_bank), ("int8_unsmoothed", plain_bank)):
            p = ppl(bank.at(8))
            quality[name] = {"ppl": p, "ppl_rel_fp32": p / fp32_ppl, **agreement(bank.at(8))}
        # half the segments at INT8: the INT8-sensitive half (valid split) stays fp32
        parts = segments(L, segs)
        sens = segment_sensitivity(adapter, smoothed_bank, calib[:1, :128], parts, bits=8)
        order = sorted(range(segs), key=lambda s: -sens[s])
        budget = segment_budget(smoothed_bank, parts, segs // 2, cheap_bits=8, order=order)
        half = segment_schedule(smoothed_bank, parts, budget, levels=(FP32, 8), order=order)
    contenders = {"fp32": FP32_DECODE, "int8": Decode(weights=smoothed_bank.at(8)),
                  "int8_half_segments": Decode(weights=smoothed_bank.at(half))}
    with torch_threads(threads):
        seconds = dict(zip(contenders, decode_seconds(model, tokenizer, list(contenders.values()), new_tokens, rounds,
                                                      warmup=1)))
        used_threads = torch.get_num_threads()
    predicted = {"fp32": 1.0, "int8": smoothed_bank.full_bytes / smoothed_bank.token_bytes([8] * L),
                 "int8_half_segments": smoothed_bank.full_bytes / smoothed_bank.token_bytes(half)}
    timings = {"model": model_name, "new_tokens": new_tokens, "rounds": rounds, "batch": 1, "reduce": "min",
               "torch_threads": used_threads, "machine": platform.machine(),
               "half_segments_bits": [half[s[0]] for s in parts], "half_segments_budget": budget,
               "tokens_per_s": {k: 1 / s for k, s in seconds.items()},
               "speed_rel_fp32": {k: seconds["fp32"] / s for k, s in seconds.items()},
               "predicted_speed_rel_fp32_by_bytes": predicted,
               "measured_over_predicted": {k: seconds["fp32"] / s / predicted[k] for k, s in seconds.items()}}
    if write:
        save_json(quality, "int8_quality", "full")
        save_json(timings, "int8_timings", "full")
    return quality, timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--eval-tokens", type=int, default=EVAL_TOKENS)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads of the decode timings (1: the reference decode setting)")
    args = parser.parse_args()
    if args.threads < 1:
        parser.error(f"--threads must be at least 1, got {args.threads}")
    quality, timings = run(args.model, args.eval_tokens, args.new_tokens, args.rounds, threads=args.threads)
    print(f"fp32 ppl {quality['fp32_ppl']:.3f}")
    for name in ("int8_smoothed", "int8_unsmoothed"):
        q = quality[name]
        print(f"{name:>16}: ppl {q['ppl']:.3f} ({100 * (q['ppl_rel_fp32'] - 1):+.2f} %), "
              f"KL {q['kl_first_window']:.4f}, "
              f"top-1 {q['top1_agreement_first_window']:.3f}")
    for k in timings["tokens_per_s"]:
        print(f"{k:>20}: {timings['tokens_per_s'][k]:6.1f} tokens/s, {timings['speed_rel_fp32'][k]:.2f}x fp32 "
              f"(bytes predict {timings['predicted_speed_rel_fp32_by_bytes'][k]:.2f}x, measured/predicted "
              f"{timings['measured_over_predicted'][k]:.2f})")


if __name__ == "__main__":
    main()
