"""`ANEEWrapper`: the seed API around the adaptive executor.

    config = ANEEConfig(model_name="smollm2-135m", energy_budget=1.0, min_layers=2)
    model = ANEEWrapper(config)
    text = model.generate(tokenizer=model.tokenizer, prompt="The future of AI is",
                          max_new_tokens=20, energy_budget=0.8)

By default (`ANEEConfig.controller="default"`) the wrapper runs the method its model's defaults
folder names (shipped for the embedded model, `anee.calibrate` for others), with that folder's
layer bypass; `wrapper.method` says which one runs.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from ..core.adapters import adapter_for
from ..core.bypass import BypassBank
from ..core.cost import CostReport
from ..core.devices import model_device
from ..core.loading import load_model
from ..core.outputs import ExecutorOutput, Trace
from ..core.scalars import flag, integer
from .arguments import check_budget, check_prefill, check_prompts, check_seed
from .config import ANEEConfig
from .controllers.base import Controller, FullController
from .controllers.budget import BudgetController
from .controllers.learned import LearnedController
from .defaults import Defaults, load_defaults, missing_defaults
from .executor import AdaptiveExecutor, Weights, check_input_ids
from .sampling import SamplingConfig, next_token


def real_positions(padding_mask: torch.Tensor, trace: Trace) -> torch.Tensor:
    """[B, T] bool over the trace's positions (the last generated token was never fed back): not padding."""
    return padding_mask[:, : trace.decisions.shape[1]]


def generated_positions(real: torch.Tensor, prompt_length: int) -> torch.Tensor:
    """[B, T] bool like `real`: the generated tokens fed back (from the prompt's length on)."""
    mask = torch.zeros_like(real)
    mask[:, prompt_length:] = True
    return mask


@dataclass
class GenerationResult:
    sequences: torch.Tensor  # [B, prompt + new] token ids (prompt left-padded in batches)
    new_tokens: torch.Tensor  # [B, new]
    trace: Trace  # over prompt and generated tokens
    cost: CostReport  # over real (non-padding) tokens, prompt included
    padding_mask: torch.Tensor  # [B, prompt + new]
    # over the generated tokens fed back one at a time; None when a single token was generated
    # (its position is the prompt's last)
    decode_cost: CostReport | None = None
    prefill: str = "adaptive"  # how the prompt ran (`ANEEConfig.prefill`)

    @classmethod
    def from_trace(cls, sequences: torch.Tensor, new_tokens: torch.Tensor, trace: Trace, padding_mask: torch.Tensor,
                   prefill: str, cost_model) -> GenerationResult:
        """The result with its costs counted from `trace`: `cost` over the real tokens, `decode_cost`
        over the generated ones fed back."""
        real = real_positions(padding_mask, trace)
        generated = generated_positions(real, sequences.shape[1] - new_tokens.shape[1])
        cost = trace.cost(cost_model, real)  # MACs are integers in float64: sums are exact in any order
        decode_cost = trace.cost(cost_model, generated) if generated.any() else None
        return cls(sequences, new_tokens, trace, cost, padding_mask, decode_cost, prefill)

    @property
    def prompt_length(self) -> int:
        return self.sequences.shape[1] - self.new_tokens.shape[1]

    def real(self) -> torch.Tensor:
        """`real_positions`: the trace's positions that are not padding."""
        return real_positions(self.padding_mask, self.trace)

    def generated(self) -> torch.Tensor:
        """`generated_positions`: the generated tokens fed back."""
        return generated_positions(self.real(), self.prompt_length)

    def governed(self) -> torch.Tensor:
        """[B, T] bool over the trace's positions: those the controller and the budget governed. Every
        real token under prefill="adaptive"; the generated tokens fed back under "full" (the prompt
        ran every layer)."""
        return self.generated() if self.prefill == "full" else self.real()

    @property
    def budget_cost(self) -> CostReport | None:
        """The cost of the `governed` positions, the one to hold against the budget: `cost` under
        prefill="adaptive", `decode_cost` under "full" (None there when nothing was governed)."""
        return self.decode_cost if self.prefill == "full" else self.cost


class ANEEWrapper(nn.Module):
    """Wraps a HF causal LM (weights untouched) and runs it layer by layer under a controller."""

    def __init__(self, config: ANEEConfig, model: nn.Module | None = None, tokenizer=None,
                 controller: Controller | None = None, bypass: BypassBank | None = None,
                 weights: Weights | None = None):
        super().__init__()
        if not isinstance(config, ANEEConfig):
            raise TypeError(f"config must be an ANEEConfig, got {type(config).__name__}")
        if model is not None and not isinstance(model, nn.Module):
            raise TypeError("model must be a HF causal LM (a torch.nn.Module, e.g. from anee.load_model), "
                            f"got {type(model).__name__}; "
                            "to load one by name, set ANEEConfig(model_name=...) and pass no model")
        self.config = config
        if model is None:
            model, loaded_tokenizer = load_model(config.model_name, device=config.device, dtype=config.dtype)
            tokenizer = tokenizer or loaded_tokenizer
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.adapter = adapter_for(self.model)
        self.defaults: Defaults | None = None
        self.method = "custom" if controller is not None else self._resolve_method()
        if bypass is None and self.defaults is not None:
            bypass = self.defaults.bypass(self.adapter)  # the defaults' methods were calibrated / trained with it
        self.executor = AdaptiveExecutor(self.adapter, config.min_layers, bypass=bypass, weights=weights)
        self.controller = controller or self._method_controller()

    def _resolve_method(self) -> str:
        """The controller name the config asks for, resolved against the model's defaults folder
        (kept in `self.defaults`): "default" falls back to "budget", with a warning, without one."""
        name, model_name = self.config.controller, self.config.model_name
        if name in ("budget", "full"):
            return name
        self.defaults = load_defaults(model_name, self.config.defaults_dir)
        if self.defaults is None:
            if name != "default":
                raise ValueError(missing_defaults(model_name, name))
            warnings.warn(missing_defaults(model_name, name) + " Falling back to the seed's budget policy, "
                          "which degrades text quickly below budget 1.0.", UserWarning, stacklevel=3)
            return "budget"
        self.defaults.check_model(self.adapter)
        return self.defaults.resolve(name)

    def _method_controller(self) -> Controller:
        if self.method == "full":
            return FullController()
        if self.method == "budget":
            return BudgetController(exit_threshold=self.config.exit_budget_threshold)
        return self.defaults.controller(self.method, self.executor)

    @property
    def cost_model(self):
        return self.executor.cost

    @property
    def num_layers(self) -> int:
        return self.adapter.num_layers

    def forward(self, input_ids: torch.Tensor, energy_budget: float | None = None,
                decisions: torch.Tensor | None = None, **kwargs) -> ExecutorOutput:
        """Teacher-forced parallel pass over a whole sequence; returns logits and the trace."""
        budget = self.config.energy_budget if energy_budget is None else check_budget(energy_budget)
        return self.executor.forward(input_ids, controller=self.controller, decisions=decisions, budget=budget,
                                     **kwargs)

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
        prefill: str | None = None,
    ) -> GenerationResult:
        """Incremental decoding with the KV cache: the prompt in one chunk, then one token at a time.

        Every argument is checked before any model work (`anee.engine.arguments`); sampling draws what
        HF `generate` draws for the same seed at budget 1.0 (`anee.engine.sampling`). `prefill`
        (default `ANEEConfig.prefill`): "adaptive" runs the prompt under the controller too, "full"
        runs it through every layer and leaves the controller to the generated tokens. Shared by
        threads, one wrapper and one controller give each call the result it gets alone: per-call
        state lives in the call. A budget below `min_layers / num_layers` warns (see `ANEEConfig`)."""
        budget = self.config.energy_budget if energy_budget is None else check_budget(energy_budget)
        max_new_tokens = integer("max_new_tokens", max_new_tokens)
        warpers = SamplingConfig(do_sample, temperature, top_k, top_p).warpers()
        seed = self.config.seed if seed is None else check_seed(seed)
        eos_token_id = None if eos_token_id is None else integer("eos_token_id", eos_token_id)
        controller = controller or self.controller
        prefill = check_prefill(self.config.prefill if prefill is None else prefill)
        if not callable(getattr(controller, "decide", None)):
            raise TypeError("controller must have a decide(view) method (see anee.engine.controllers.base), "
                            f"got {type(controller).__name__}")
        if prefill == "full" and isinstance(controller, LearnedController):
            controller = controller.for_full_prompt()  # its SKIP offsets for tokens after a full-depth prompt
        mask = self._check_ids(input_ids, padding_mask, max_new_tokens)
        generator = torch.Generator(device=input_ids.device).manual_seed(seed)
        B = input_ids.shape[0]
        with self.executor.weights_applied():  # once per generation, not per token
            out = self.executor.forward(input_ids, controller=FullController() if prefill == "full" else controller,
                                        budget=budget, padding_mask=None if padding_mask is None else mask)
            cache, traces, sequences = out.cache, [out.trace], input_ids
            finished = torch.zeros(B, dtype=torch.bool, device=input_ids.device)
            logits = out.logits[:, -1]
            for _ in range(max_new_tokens):
                token = next_token(logits, warpers, generator, sequences)
                if eos_token_id is not None:
                    token = torch.where(finished, eos_token_id, token)
                    finished |= token == eos_token_id
                sequences = torch.cat([sequences, token[:, None]], 1)
                if sequences.shape[1] - input_ids.shape[1] == max_new_tokens or finished.all():
                    break
                step = self.executor.forward(token[:, None], cache=cache, controller=controller, budget=budget,
                                             padding_mask=None if padding_mask is None
                                             else torch.ones(B, 1, dtype=torch.bool, device=input_ids.device))
                traces.append(step.trace)
                logits = step.logits[:, -1]
        new = sequences[:, input_ids.shape[1] :]
        result = GenerationResult.from_trace(sequences, new, Trace.cat(traces),
                                             torch.cat([mask, torch.ones_like(new, dtype=torch.bool)], 1),
                                             prefill, self.cost_model)
        # nothing governed (a full-depth prompt, one new token): nothing to warn about
        if result.budget_cost is not None:
            self._warn_if_min_layers_override(budget, result.budget_cost)
        return result

    def _check_ids(self, input_ids, padding_mask, max_new_tokens: int) -> torch.Tensor:
        """The padding mask [B, T] (all True without one), after checking ids, mask (left padding) and length."""
        if isinstance(input_ids, torch.Tensor) and input_ids.numel() == 0:
            raise ValueError("empty prompt: every row needs at least one token")
        check_input_ids(input_ids, self.adapter.dims.vocab)
        if padding_mask is not None and (not isinstance(padding_mask, torch.Tensor)
                                         or padding_mask.shape != input_ids.shape):
            got = (f"shape {tuple(padding_mask.shape)}" if isinstance(padding_mask, torch.Tensor)
                   else type(padding_mask).__name__)
            raise TypeError(f"padding_mask must be a tensor of the shape of input_ids {tuple(input_ids.shape)}, "
                            f"got {got}")
        mask = torch.ones_like(input_ids, dtype=torch.bool) if padding_mask is None else padding_mask.bool()
        if not mask.any(-1).all():
            raise ValueError("empty prompt: every row needs at least one token")
        if (mask[:, 1:] < mask[:, :-1]).any():
            raise ValueError("padding_mask must pad on the left (pads first, then the prompt), as generate() does: "
                             "generation continues from each row's last position")
        if input_ids.shape[1] + max_new_tokens > self.adapter.dims.max_positions:
            raise ValueError(
                f"prompt ({input_ids.shape[1]} tokens) + max_new_tokens ({max_new_tokens}) exceeds the "
                f"model's context of {self.adapter.dims.max_positions}; shorten the prompt or max_new_tokens"
            )
        return mask

    def _warn_if_min_layers_override(self, budget: float, cost: CostReport) -> None:
        """`min_layers` always run: say so when that alone exceeds the budget, with the realized fraction."""
        floor = self.executor.min_layers / self.num_layers
        if floor > budget + 1e-9:
            warnings.warn(
                f"energy_budget={budget:g} is below min_layers={self.executor.min_layers} of {self.num_layers} layers "
                f"({floor:.3f} of full layer compute), and those layers always run: realized layer fraction "
                f"{cost.layer_fraction:.3f}. Lower ANEEConfig.min_layers to honour budgets below {floor:.3f}.",
                UserWarning, stacklevel=3)

    def generate(self, tokenizer=None, prompt: str | Iterable[str] = "", max_new_tokens: int = 20,
                 energy_budget: float | None = None, return_result: bool = False, **kwargs):
        """Generate text from a prompt: a str gives a str; any sequence of str (list, tuple,
        generator; left-padded into one batch) gives a list. Returns the full texts (prompt included)
        and, with `return_result`, the `GenerationResult`. `kwargs` go to `generate_ids`."""
        tokenizer = tokenizer or self.tokenizer
        if tokenizer is None:
            raise ValueError("pass tokenizer=... (anee.load_model returns one)")
        if not callable(tokenizer) or not callable(getattr(tokenizer, "decode", None)):
            raise TypeError("tokenizer must be a HF tokenizer (anee.load_model returns one), "
                            f"got {type(tokenizer).__name__}")
        prompts, single = check_prompts(prompt)
        return_result = flag("return_result", return_result)
        input_ids, padding_mask = _left_pad([tokenizer(p)["input_ids"] for p in prompts], tokenizer)
        kwargs.setdefault("eos_token_id", tokenizer.eos_token_id)  # stop where HF generate would
        device = model_device(self.model)
        result = self.generate_ids(input_ids.to(device), max_new_tokens, energy_budget,
                                   padding_mask=None if padding_mask.all() else padding_mask.to(device), **kwargs)
        texts = [tokenizer.decode(row[m], skip_special_tokens=True)
                 for row, m in zip(result.sequences, result.padding_mask)]
        text = texts[0] if single else texts
        return (text, result) if return_result else text


def _left_pad(rows: list[list[int]], tokenizer) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token lists into ids [B, T] and a padding mask [B, T]."""
    if any(len(r) == 0 for r in rows):
        raise ValueError("empty prompt: the tokenizer produced no tokens")
    width = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[False] * (width - len(r)) + [True] * len(r) for r in rows])
    return ids, mask
