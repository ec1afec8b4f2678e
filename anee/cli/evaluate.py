"""eval: perplexity and net compute saved on the vendored WikiText-2 test split, at given budgets
(or, with --hierarchical, capacities), as a small table.

The defaults are small so that it runs in about a minute on a laptop CPU; notebook 06 evaluates the
full frontier (2,048+ tokens, every method).

    anee eval --budgets 1.0 0.9 0.8
    anee eval --controller budget --budgets 0.9 0.8 --tokens 1024
    anee eval --hierarchical --capacities 0.9 0.7
"""

from __future__ import annotations

import argparse

import pandas as pd

from ..core.data import wikitext_tokens
from ..evaluation.context import EvalContext
from ..evaluation.methods.hierarchical import hierarchical
from ..evaluation.perplexity import evaluate
from ..evaluation.quickstart import api_perplexity
from ..evaluation.results import repo_root
from ..hierarchical.routers import check_capacity
from .hierarchical import CALIBRATION_TOKENS
from .options import add_controller_arguments, add_model_arguments, budget, checked, load_wrapper, positive_int


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--budgets", type=budget, nargs="+", default=[1.0, 0.9, 0.8], help="(default %(default)s)")
    parser.add_argument("--tokens", type=positive_int, default=512, help="test tokens scored (default %(default)s)")
    parser.add_argument("--window", type=positive_int, default=256, help="(default %(default)s)")
    parser.add_argument("--stride", type=positive_int, default=128, help="(default %(default)s)")
    add_controller_arguments(parser)
    group = parser.add_argument_group("hierarchical model (notebook 05's checkpoint)")
    group.add_argument("--hierarchical", action="store_true", help="evaluate the FFN routers at --capacities instead")
    group.add_argument("--capacities", type=checked(float, check_capacity), nargs="+", default=[0.9, 0.7])
    group.add_argument("--checkpoint-dir", default=None,
                       help="where notebook 05 wrote its checkpoint (default: results/checkpoints)")
    add_model_arguments(parser)


def run(args: argparse.Namespace) -> None:
    if args.stride > args.window:
        args.parser.error(f"--stride ({args.stride}) must not exceed --window ({args.window})")
    wrapper = load_wrapper(args)
    test = wikitext_tokens(wrapper.tokenizer, "test", args.tokens).to(next(wrapper.model.parameters()).device)
    if not args.hierarchical:
        table = api_perplexity(wrapper, test, args.budgets, args.window, args.stride)
        tokens = int(table.tokens.iloc[0])
        table = table.drop(columns="tokens")
    else:
        ctx = EvalContext(wrapper.model, wrapper.tokenizer, wrapper.executor,
                          wikitext_tokens(wrapper.tokenizer, "valid", CALIBRATION_TOKENS),
                          extras={"checkpoint_dir": args.checkpoint_dir or repo_root() / "results" / "checkpoints"})
        rows = []
        for c in args.capacities:
            r = evaluate(hierarchical(ctx, capacity=c), test, args.window, args.stride, name="hierarchical")
            rows.append({"method": "hierarchical", "capacity": c, "ppl": r.ppl, "layer_fraction": r.layer_fraction,
                         "layer_saved_net": r.layer_saved_net, "total_saved_net": r.total_saved_net})
        table, tokens = pd.DataFrame(rows), r.tokens
    print(f"{args.model}, WikiText-2 test: {tokens} tokens scored, window {args.window}, stride {args.stride}")
    print(table.to_string(index=False, float_format=lambda x: f"{x:.4g}"))
