"""The hierarchical model from the command line: notebook 05's checkpoint on the base model, its
thresholds calibrated on WikiText-2 valid, and a generation loop (the sparse path has no K/V cache:
each step re-runs the sequence, exact because its routing is causal, and slower than ANEE's decoding)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
import torch

from ..core.data import wikitext_tokens
from ..core.loading import load_model
from ..core.timing import Stopwatch
from ..engine.sampling import SamplingConfig, next_token
from ..evaluation.hierarchical import timing_table
from ..evaluation.methods.hierarchical import calibration_windows, checkpoint_path
from ..evaluation.results import repo_root
from ..hierarchical import HierarchicalModel

CALIBRATION_TOKENS = 4096


def load_trained(args: argparse.Namespace):
    """(model, tokenizer, notebook 05's hierarchical model on it, valid calibration windows)."""
    path = checkpoint_path(Path(args.checkpoint_dir) if args.checkpoint_dir
                           else repo_root() / "results" / "checkpoints")
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: the hierarchical model is trained by notebook 05 "
                                "(make reproduce) and not shipped (it is ~47 MB); run it, or pass --checkpoint-dir")
    model, tokenizer = load_model(args.model, device=args.device, dtype=args.dtype)
    hm = HierarchicalModel.load(path, model).eval()
    calib = calibration_windows(wikitext_tokens(tokenizer, "valid", CALIBRATION_TOKENS)
                                .to(next(model.parameters()).device))
    return model, tokenizer, hm, calib


def load(args: argparse.Namespace):
    """(model, tokenizer, hierarchical model, capacity, thresholds) for --capacity / --target-speedup."""
    model, tokenizer, hm, calib = load_trained(args)
    capacity = (args.capacity if args.capacity is not None
                else hm.capacity_for_speedup(calib, args.target_speedup, args.exits))
    return model, tokenizer, hm, capacity, hm.calibrate(calib, capacity, args.exits)


@torch.no_grad()
def bench(args: argparse.Namespace) -> pd.DataFrame:
    """Wall-clock of the sparse path at each of `args.capacities` (and 1.0) against the HF forward on one
    WikiText-2 test window, interleaved rounds (`anee.evaluation.hierarchical.timing_table`), beside the
    counted net compute saved on that window."""
    model, tokenizer, hm, calib = load_trained(args)
    ids = wikitext_tokens(tokenizer, "test", args.tokens).to(next(model.parameters()).device)
    thresholds = {c: hm.calibrate(calib, c, False) for c in args.capacities}
    table = timing_table(model, hm, ids, thresholds, args.repeats)
    saved = {c: hm.cost_report(hm.sparse_forward(ids, thresholds.get(c)), routed=c < 1.0).as_dict()
             for c in table.capacity}
    return table.assign(layer_saved_net=[saved[c]["layer_saved_net"] for c in table.capacity],
                        total_saved_net=[saved[c]["total_saved_net"] for c in table.capacity])


@torch.no_grad()
def generate(args: argparse.Namespace) -> None:
    from .generate import report  # the same lines as ANEE's

    model, tokenizer, hm, capacity, thresholds = load(args)
    routed = capacity < 1.0
    ids = tokenizer(args.prompt, return_tensors="pt").input_ids.to(next(model.parameters()).device)
    warpers = SamplingConfig(args.sample, args.temperature, args.top_k, args.top_p).warpers()
    generator = torch.Generator(device=ids.device).manual_seed(args.seed)
    sequence = ids
    with Stopwatch() as clock:
        for _ in range(args.max_new_tokens):
            logits = hm.sparse_forward(sequence, thresholds if routed else None, args.exits).logits[:, -1]
            token = next_token(logits, warpers, generator, sequence)
            sequence = torch.cat([sequence, token[:, None]], 1)
            if tokenizer.eos_token_id is not None and int(token) == tokenizer.eos_token_id:
                break
    record = hm.sparse_forward(sequence[:, :-1], thresholds if routed else None, args.exits)  # every token that ran
    print(tokenizer.decode(sequence[0], skip_special_tokens=True))
    print()
    print(f"hierarchical        : capacity {capacity:.3f}"
          + (f" (for target speedup {args.target_speedup:g})" if args.target_speedup else "")
          + f", exits {'on' if args.exits else 'off'}; "
            f"FFNs run per token: {' '.join(map(str, record.ffn.sum(-1)[0].tolist()))}")
    report(record.active.sum(-1)[0], ids.shape[1], hm.num_layers, hm.cost_report(record, routed=routed),
           sequence.shape[1] - ids.shape[1], clock.seconds)
