"""calibrate: a defaults folder (profiler and closed-form layer bypass) for a model that ships none,
so that `--controller default` runs the heuristic on it (`anee.calibrate`).

    anee calibrate --model gpt2 --out anee-gpt2
    anee generate "Hello" --model gpt2 --defaults-dir anee-gpt2 --budget 0.8
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..core.loading import load_model
from ..engine.calibrate import calibrate
from .options import add_model_arguments, positive_int


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, required=True, help="the folder to write (replaced as a whole)")
    parser.add_argument("--text-file", type=Path, default=None,
                        help="calibration text (default: the vendored WikiText-2 valid split)")
    parser.add_argument("--tokens", type=positive_int, default=4096,
                        help="at most this many tokens (default %(default)s)")
    parser.add_argument("--no-bypass", action="store_true", help="no layer bypass (skipped layers then add nothing)")
    parser.add_argument("--greedy-steps", type=int, default=0,
                        help="rank this many layers by the greedy bypass-aware removal search "
                             "(default 0: Block Influence)")
    add_model_arguments(parser)


def run(args: argparse.Namespace) -> None:
    text = args.text_file.read_text() if args.text_file is not None else None
    model, tokenizer = load_model(args.model, device=args.device, dtype=args.dtype)
    kwargs = {"bypass": None} if args.no_bypass else {}
    defaults = calibrate(model, tokenizer, text, out=args.out, name=args.model, tokens=args.tokens,
                         greedy_steps=args.greedy_steps, **kwargs)
    print(f"wrote {defaults.folder} ({defaults.manifest['total_bytes'] / 1e6:.2f} MB, "
          f"method {defaults.method}); use it with "
          f"--defaults-dir {defaults.folder}, or ANEEConfig(defaults_dir={str(defaults.folder)!r})")
