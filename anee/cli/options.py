"""What the commands share: a parser whose errors are one line, argument types that check values the
way the package does, and the options that load a model and choose its controller."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from ..core.devices import DTYPES
from ..core.loading import DEFAULT_MODEL, load_model
from ..engine.arguments import PREFILLS, check_budget
from ..engine.config import CONTROLLERS, ANEEConfig
from ..engine.wrapper import ANEEWrapper


class Parser(argparse.ArgumentParser):
    def error(self, message: str):
        """One line on stderr, exit status 2 (argparse's own prints the usage first)."""
        self.exit(2, f"{self.prog}: error: {' '.join(str(message).split())} (see {self.prog} --help)\n")


def checked(convert: Callable, check: Callable) -> Callable:
    """An argparse type: `convert` the string, then `check` it as the package would."""
    def parse(text: str):
        try:
            return check(convert(text))
        except (ValueError, TypeError) as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    parse.__name__ = getattr(check, "__name__", "value")
    return parse


def prompt(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("the prompt is empty: give some text, e.g. \"The future of AI is\"")
    return text


budget = checked(float, check_budget)


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help="embedded name, local folder or Hub name (default %(default)s)")
    parser.add_argument("--device", default="auto",
                        help="auto (CUDA when available), cpu, cuda, cuda:<i> (default %(default)s)")
    parser.add_argument("--dtype", default="float32", choices=sorted(DTYPES), help="(default %(default)s)")


def add_generation_arguments(parser: argparse.ArgumentParser, default_budget: float) -> None:
    """What every command that generates from a prompt under ANEE takes: the prompt, the budget, the
    number of new tokens, the controller and how the prompt runs."""
    parser.add_argument("prompt", type=prompt)
    parser.add_argument("--budget", type=budget, default=default_budget,
                        help="fraction of full layer compute per token, in [0, 1] (default %(default)s)")
    parser.add_argument("--max-new-tokens", type=positive_int, default=20, help="(default %(default)s)")
    add_controller_arguments(parser)
    parser.add_argument("--prefill", default=None, choices=PREFILLS,
                        help="full: the prompt runs every layer and the budget governs the generated tokens; adaptive: "
                             "the budget governs the prompt too (default: ANEEConfig's, full)")


def add_controller_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--controller", default="default", choices=CONTROLLERS,
                        help="default: the model's shipped or calibrated method; budget: the seed's policy "
                             "(default %(default)s)")
    parser.add_argument("--defaults-dir", default=None,
                        help="a defaults folder from `anee calibrate` (default: the shipped one)")
    parser.add_argument("--min-layers", type=int, default=2,
                        help="layers every token processes first (default %(default)s)")


def load_wrapper(args: argparse.Namespace) -> ANEEWrapper:
    """The model of `--model` on `--device` in `--dtype`, wrapped with the controller of `--controller`."""
    model, tokenizer = load_model(args.model, device=args.device, dtype=args.dtype)
    config = ANEEConfig(model_name=args.model, min_layers=args.min_layers, controller=args.controller,
                        defaults_dir=args.defaults_dir, device=args.device, dtype=model.dtype,
                        # evaluate is teacher-forced (no --prefill); generate's None means the config's default
                        prefill=getattr(args, "prefill", None) or ANEEConfig.prefill)
    return ANEEWrapper(config, model=model, tokenizer=tokenizer)
