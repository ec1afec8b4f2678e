"""`ANEEWrapper`: the seed API around the adaptive executor.

    config = ANEEConfig(model_name="smollm2-135m", energy_budget=1.0, min_layers=2)
    model = ANEEWrapper(config)
    text = model.generate(tokenizer=model.tokenizer, prompt="The future of AI is",
                          max_new_tokens=20, energy_budget=0.05)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..core.adapters import adapter_for
from ..core.cost import CostReport
from ..core.loading import load_model
from ..core.outputs import ExecutorOutput, Trace
from .config import ANEEConfig, check_budget
from .controllers.base import Controller, FullController
from .controllers.budget import BudgetController
from .executor import AdaptiveExecutor
from .sampling import SamplingConfig, next_token


@dataclass
class GenerationResult:
    sequences: torch.Tensor  # [B, prompt + new] token ids (prompt left-padded in batches)
    new_tokens: torch.Tensor  # [B, new]
    trace: Trace  # over prompt and generated tokens
    cost: CostReport  # over real (non-padding) tokens
    padding_mask: torch.Tensor  # [B, prompt + new]


class ANEEWrapper(nn.Module):
    """Wraps a HF causal LM (weights untouched) and runs it layer by layer under a controller."""

    def __init__(self, config: ANEEConfig, model: nn.Module | None = None, tokenizer=None, controller: Controller | None = None):
        super().__init__()
        self.config = config
        if model is None:
            model, loaded_tokenizer = load_model(config.model_name, device=config.device, dtype=config.dtype)
            tokenizer = tokenizer or loaded_tokenizer
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.adapter = adapter_for(self.model)
        self.executor = AdaptiveExecutor(self.adapter, config.min_layers)
        self.controller = controller or self._default_controller()

    def _default_controller(self) -> Controller:
        if self.config.controller == "full":
            return FullController()
        return BudgetController(exit_threshold=self.config.exit_budget_threshold)

    @property
    def cost_model(self):
        return self.executor.cost

    @property
    def num_layers(self) -> int:
        return self.adapter.num_layers

    def forward(self, input_ids: torch.Tensor, energy_budget: float | None = None, decisions: torch.Tensor | None = None, **kwargs) -> ExecutorOutput:
        """Teacher-forced parallel pass over a whole sequence; returns logits and the trace."""
        budget = self.config.energy_budget if energy_budget is None else check_budget(energy_budget)
        return self.executor.forward(input_ids, controller=self.controller, decisions=decisions, budget=budget, **kwargs)

    @torch.no_grad()
    def generate_ids(
        self,
        input_ids: torch.Tensor,
        max_new_tokens: int = 20,
        energy_budget: float | None = None,
        padding_mask: torch.Tensor | None = None,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        seed: int | None = None,
        eos_token_id: int | None = None,
        controller: Controller | None = None,
    ) -> GenerationResult:
        """Incremental decoding with the KV cache: the prompt in one chunk, then one token at a time."""
        budget = self.config.energy_budget if energy_budget is None else check_budget(energy_budget)
        if max_new_tokens < 0:
            raise ValueError("max_new_tokens must be >= 0")
        sampling = SamplingConfig(do_sample, temperature, top_k, top_p)
        generator = torch.Generator(device=input_ids.device).manual_seed(self.config.seed if seed is None else seed)
        controller = controller or self.controller
        B = input_ids.shape[0]
        mask = torch.ones_like(input_ids, dtype=torch.bool) if padding_mask is None else padding_mask.bool()
        if input_ids.numel() == 0 or not mask.any(-1).all():
            raise ValueError("empty prompt: every row needs at least one token")
        if input_ids.shape[1] + max_new_tokens > self.adapter.dims.max_positions:
            raise ValueError(
                f"prompt ({input_ids.shape[1]} tokens) + max_new_tokens ({max_new_tokens}) exceeds the "
                f"model's context of {self.adapter.dims.max_positions}; shorten the prompt or max_new_tokens"
            )
        out = self.executor.forward(input_ids, controller=controller, budget=budget,
                                    padding_mask=None if padding_mask is None else mask)
        cache, traces, generated = out.cache, [out.trace], []
        finished = torch.zeros(B, dtype=torch.bool, device=input_ids.device)
        logits = out.logits[:, -1]
        for _ in range(max_new_tokens):
            token = next_token(logits, sampling, generator)
            if eos_token_id is not None:
                token = torch.where(finished, eos_token_id, token)
                finished |= token == eos_token_id
            generated.append(token)
            if len(generated) == max_new_tokens or finished.all():
                break
            step = self.executor.forward(token[:, None], cache=cache, controller=controller, budget=budget,
                                         padding_mask=None if padding_mask is None else torch.ones(B, 1, dtype=torch.bool))
            traces.append(step.trace)
            logits = step.logits[:, -1]
        new = torch.stack(generated, 1) if generated else input_ids[:, :0]
        trace = Trace.cat(traces)
        full_mask = torch.cat([mask, torch.ones_like(new, dtype=torch.bool)], 1)
        real = full_mask[:, : trace.decisions.shape[1]] if padding_mask is not None else None
        return GenerationResult(torch.cat([input_ids, new], 1), new, trace, trace.cost(self.cost_model, real), full_mask)

    def generate(self, tokenizer=None, prompt: str | list[str] = "", max_new_tokens: int = 20, energy_budget: float | None = None, return_result: bool = False, **kwargs):
        """Generate text from a prompt (or a list of prompts, left-padded); returns the full text."""
        tokenizer = tokenizer or self.tokenizer
        if tokenizer is None:
            raise ValueError("pass tokenizer=... (anee.load_model returns one)")
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if not prompts or any(not p.strip() for p in prompts):
            raise ValueError("empty prompt: give at least one non-blank prompt")
        input_ids, padding_mask = _left_pad([tokenizer(p)["input_ids"] for p in prompts], tokenizer)
        kwargs.setdefault("eos_token_id", tokenizer.eos_token_id)  # stop where HF generate would
        result = self.generate_ids(input_ids.to(self.config.device), max_new_tokens, energy_budget,
                                   padding_mask=None if padding_mask.all() else padding_mask, **kwargs)
        texts = [tokenizer.decode(row[m], skip_special_tokens=True) for row, m in zip(result.sequences, result.padding_mask)]
        if return_result:
            return texts if isinstance(prompt, list) else texts[0], result
        return texts if isinstance(prompt, list) else texts[0]


def _left_pad(rows: list[list[int]], tokenizer) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token lists into ids [B, T] and a padding mask [B, T]."""
    if any(len(r) == 0 for r in rows):
        raise ValueError("empty prompt: the tokenizer produced no tokens")
    width = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[False] * (width - len(r)) + [True] * len(r) for r in rows])
    return ids, mask
