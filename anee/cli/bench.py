"""bench: decode tokens/s of HF generate, ANEE at budget 1.0 and ANEE with a fixed skip pattern (with
and without the layer bypass), interleaved, median of repeats (`anee.evaluation.bench`); or, with
--hierarchical, the hierarchical model's sparse path at given capacities against the HF forward.

    anee bench --new-tokens 128 --repeats 5
    anee bench --hierarchical --capacities 0.9 0.7 0.5
"""

from __future__ import annotations

import argparse

from ..evaluation import bench
from ..hierarchical.routers import check_capacity
from . import hierarchical
from .options import add_model_arguments, checked, positive_int


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument("--new-tokens", type=positive_int, default=64, help="(default %(default)s)")
    parser.add_argument("--repeats", type=positive_int, default=3, help="(default %(default)s)")
    parser.add_argument("--skip-fraction", type=float, default=0.3,
                        help="layer compute the skip pattern saves (default %(default)s)")
    parser.add_argument("--write", action="store_true",
                        help="also write results/bench_decode.json (what `make reproduce` does)")
    group = parser.add_argument_group("hierarchical model (notebook 05's checkpoint)")
    group.add_argument("--hierarchical", action="store_true",
                       help="time the FFN routers' sparse path instead of ANEE's decoding")
    group.add_argument("--capacities", type=checked(float, check_capacity), nargs="+", default=[0.9, 0.7, 0.5])
    group.add_argument("--tokens", type=positive_int, default=256,
                       help="test tokens in the timed window (default %(default)s)")
    group.add_argument("--checkpoint-dir", default=None,
                       help="where notebook 05 wrote its checkpoint (default: results/checkpoints)")


def run(args: argparse.Namespace) -> None:
    if args.hierarchical:
        table = hierarchical.bench(args)
        print(f"{args.model}, hierarchical sparse path on {args.tokens} WikiText-2 test tokens, "
              f"fastest of {args.repeats} interleaved rounds")
        print(table.to_string(index=False, float_format=lambda x: f"{x:.4g}"))
        return
    if not 0.0 < args.skip_fraction < 1.0:
        args.parser.error(f"--skip-fraction must be in (0, 1), got {args.skip_fraction}")
    bench.print_report(bench.run(args.model, args.new_tokens, args.repeats, args.skip_fraction, write=args.write,
                                 device=args.device, dtype=args.dtype))
