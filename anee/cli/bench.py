"""bench: decode tokens/s of HF generate, ANEE at budget 1.0 and ANEE with a fixed skip pattern (with
and without the layer bypass), interleaved, median of repeats (`anee.evaluation.bench`).

    anee bench --new-tokens 64 --repeats 3
"""

from __future__ import annotations

import argparse

from ..evaluation import bench
from .options import add_model_arguments, positive_int


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument("--new-tokens", type=positive_int, default=128, help="(default %(default)s)")
    parser.add_argument("--repeats", type=positive_int, default=5, help="(default %(default)s)")
    parser.add_argument("--skip-fraction", type=float, default=0.3, help="layer compute the skip pattern saves (default %(default)s)")
    parser.add_argument("--write", action="store_true", help="also write results/bench_decode.json (what `make reproduce` does)")


def run(args: argparse.Namespace) -> None:
    if not 0.0 < args.skip_fraction < 1.0:
        args.parser.error(f"--skip-fraction must be in (0, 1), got {args.skip_fraction}")
    bench.print_report(bench.run(args.model, args.new_tokens, args.repeats, args.skip_fraction, write=args.write,
                                 device=args.device, dtype=args.dtype))
