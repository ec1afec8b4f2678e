"""generate: text from a prompt under an energy budget (or the hierarchical model at a capacity).

Prints the text, then the layers each token used (prompt | generated), the realized layer fraction,
the compute saved net of every overhead (profiler, controller, bypass) and tokens/s.

    anee generate "The future of AI is" --budget 0.8
    anee generate "The future of AI is" --budget 0.7 --controller budget --sample --temperature 0.8 --seed 1
    anee generate "The future of AI is" --budget 0.8 --prefill adaptive
    anee generate "The future of AI is" --hierarchical --target-speedup 1.6
"""

from __future__ import annotations

import argparse

import torch

from ..core.timing import Stopwatch
from ..hierarchical.routers import check_capacity
from . import hierarchical
from .options import add_generation_arguments, add_model_arguments, checked, load_wrapper


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_generation_arguments(parser, default_budget=1.0)
    parser.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-k", type=int, default=0, help="0: off")
    parser.add_argument("--top-p", type=float, default=1.0, help="1: off")
    parser.add_argument("--seed", type=int, default=0)
    add_hierarchical_arguments(parser)
    add_model_arguments(parser)


def add_hierarchical_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("hierarchical model (notebook 05's checkpoint)")
    group.add_argument("--hierarchical", action="store_true",
                       help="run the FFN routers (and exit gates) instead of ANEE")
    knob = group.add_mutually_exclusive_group()
    knob.add_argument("--capacity", type=checked(float, check_capacity),
                      help="fraction of tokens running each FFN, [0.1, 0.9] or 1.0")
    knob.add_argument("--target-speedup", type=float,
                      help="the capacity whose compute speedup on valid text reaches it")
    group.add_argument("--exits", action="store_true", help="also exit early at the gates")
    group.add_argument("--checkpoint-dir", default=None,
                       help="where notebook 05 wrote its checkpoint (default: results/checkpoints)")


def check_hierarchical(args: argparse.Namespace) -> None:
    """The hierarchical options go together: --capacity or --target-speedup needs --hierarchical, which needs one
    of them."""
    knob = args.capacity is not None or args.target_speedup is not None
    if knob and not args.hierarchical:
        args.parser.error("--capacity and --target-speedup are for --hierarchical (ANEE takes --budget)")
    if args.hierarchical and not knob:
        args.parser.error("--hierarchical needs --capacity or --target-speedup")
    if args.hierarchical and args.prefill is not None:
        args.parser.error("--prefill is for ANEE's controllers (the hierarchical model runs every token, "
                          "prompt included, at its capacity)")
    if args.target_speedup is not None and not args.target_speedup >= 1.0:
        args.parser.error(f"--target-speedup must be at least 1.0, got {args.target_speedup}")


def run(args: argparse.Namespace) -> None:
    check_hierarchical(args)
    if args.hierarchical:
        return hierarchical.generate(args)
    wrapper = load_wrapper(args)
    with Stopwatch() as clock:
        text, result = wrapper.generate(prompt=args.prompt, max_new_tokens=args.max_new_tokens,
                                        energy_budget=args.budget, do_sample=args.sample, temperature=args.temperature,
                                        top_k=args.top_k, top_p=args.top_p, seed=args.seed, return_result=True)
    prompt_len = result.sequences.shape[1] - result.new_tokens.shape[1]
    print(text)
    print()
    print(f"controller          : {wrapper.method}" + (f" ({wrapper.defaults.folder})" if wrapper.defaults else ""))
    report(result.trace.layers_executed[0], prompt_len, wrapper.num_layers, result.cost, result.new_tokens.shape[1],
           clock.seconds, result.budget_cost if result.prefill == "full" else None)


def report(layers: torch.Tensor, prompt_len: int, num_layers: int, cost, new_tokens: int, seconds: float,
           decode_cost=None) -> None:
    """The lines every generation prints under its text (`decode_cost`: the prompt ran at full depth,
    and the budget governed the generated tokens alone)."""
    used = [str(n) for n in layers.tolist()]
    print(f"layers per token    : {' '.join(used[:prompt_len])} | {' '.join(used[prompt_len:])}  "
          f"(of {num_layers}; prompt | generated)")
    if decode_cost is not None:
        print(f"realized fraction   : {decode_cost.layer_fraction:.3f} of full layer compute for the generated tokens "
              f"(the prompt runs every layer; {cost.layer_fraction:.3f} with it)")
    else:
        print(f"realized fraction   : {cost.layer_fraction:.3f} of full layer compute")
    shown = cost if decode_cost is None else decode_cost
    print(f"net compute saved   : {100 * shown.layer_saved:.1f}% of layer compute, "
          f"{100 * shown.total_saved:.1f}% of total "
          "(overheads included" + ("; generated tokens)" if decode_cost is not None else ")"))
    print(f"tokens/s            : {new_tokens / seconds:.1f} "
          f"({new_tokens} new tokens in {seconds:.2f} s, prompt included)")
