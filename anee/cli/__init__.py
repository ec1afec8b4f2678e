"""The command line, `python -m anee` or `anee`: everyday use of the package without writing Python.

    anee generate "The future of AI is" --budget 0.8          text, layers per token, saving, tokens/s
    anee generate "The future of AI is" --hierarchical --capacity 0.5
    anee eval --budgets 1.0 0.9 0.8                           perplexity and net saving on WikiText-2 test
    anee bench                                                decode tokens/s (anee.evaluation.bench)
    anee heatmap "The future of AI is" --out map.png          the execution map of a prompt
    anee calibrate --model gpt2 --out anee-gpt2               a defaults folder for another model

`anee <command> --help` lists each command's options. Wrong arguments (and arguments the package
refuses) give a one-line error on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
import warnings

from ..core.loading import ModelNotAvailableError
from . import bench, calibrate, evaluate, generate, heatmap
from .options import Parser

COMMANDS = {"generate": generate, "eval": evaluate, "bench": bench, "heatmap": heatmap, "calibrate": calibrate}


def build_parser() -> Parser:
    parser = Parser(prog="anee", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", metavar="command", parser_class=Parser)
    commands.required = True
    for name, module in COMMANDS.items():
        sub = commands.add_parser(name, help=module.__doc__.splitlines()[0].split(": ", 1)[1],
                                  description=module.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(sub)
        sub.set_defaults(run=module.run, parser=sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns its exit status (argparse exits with 2 on wrong arguments)."""
    args = build_parser().parse_args(argv)
    with warnings.catch_warnings():
        warnings.showwarning = lambda message, *_, **__: print(f"anee {args.command}: warning: {message}",
                                                               file=sys.stderr)
        try:
            args.run(args)
        except (ValueError, TypeError, ModelNotAvailableError, FileNotFoundError) as e:
            args.parser.error(str(e))  # the package refused an argument
    return 0


if __name__ == "__main__":
    sys.exit(main())
