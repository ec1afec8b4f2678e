"""heatmap: the execution map of a prompt (tokens x layers: PROCESS, SKIP, EXIT, DROP) as a PNG.

    anee heatmap "The future of AI is" --budget 0.7 --out map.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..evaluation.results import save_png
from ..viz.execution_maps import execution_map
from .options import add_generation_arguments, add_model_arguments, load_wrapper


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_generation_arguments(parser, default_budget=0.8)
    parser.add_argument("--out", type=Path, default=Path("execution_map.png"),
                        help="PNG to write (default %(default)s)")
    add_model_arguments(parser)


def run(args: argparse.Namespace) -> None:
    if args.out.suffix.lower() != ".png":
        args.parser.error(f"--out must name a .png file, got {str(args.out)!r}")
    wrapper = load_wrapper(args)
    _, result = wrapper.generate(prompt=args.prompt, max_new_tokens=args.max_new_tokens, energy_budget=args.budget,
                                 return_result=True)
    decisions = result.trace.decisions[0].cpu()
    tokens = [wrapper.tokenizer.decode([t]) for t in result.sequences[0, : decisions.shape[0]].tolist()]
    governed = result.budget_cost
    fraction = (f"layer fraction {result.cost.layer_fraction:.3f} (prompt at full depth, no token under the budget)"
                if governed is None
                else f"layer fraction {governed.layer_fraction:.3f}" + (" (generated tokens)"
                                                                        if result.prefill == "full" else ""))
    ax = execution_map(decisions, tokens, f"{args.model}, {wrapper.method}, budget {args.budget:g}: {fraction}")
    print(save_png(ax.figure, args.out))
