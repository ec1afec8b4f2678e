"""Token selection for generation: greedy, or sampling through transformers' own logits warpers.

Sampling arguments are checked here (types and ranges, then `GenerationConfig.validate`) and applied
with HF's `TemperatureLogitsWarper`, `TopKLogitsWarper` and `TopPLogitsWarper`, in the order and
under the conditions of HF `generate`; the token is drawn with `torch.multinomial` on float32 scores,
as HF draws it. The generator is seeded with `seed`, and a fresh CPU generator seeded with s yields
the stream of the global one after `torch.manual_seed(s)`, which HF uses: at budget 1.0 the tokens
are those of `torch.manual_seed(s); model.generate(..., do_sample=True, temperature=, top_k=, top_p=)`.
Defaults differ in one place: HF's top_k defaults to 50, ours to 0 (off); pass top_k to compare.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import GenerationConfig
from transformers.generation.logits_process import (
    LogitsProcessorList,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from ..core.scalars import flag, integer, real

GREEDY = " (use do_sample=False for greedy decoding)"


@dataclass(frozen=True)
class SamplingConfig:
    """Greedy (`do_sample=False`: temperature, top_k and top_p are ignored, as HF ignores them), or
    sampling with temperature > 0 (finite), top_k >= 0 (0: off) and top_p in (0, 1] (1: off)."""

    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "do_sample", flag("do_sample", self.do_sample))
        if not self.do_sample:
            return
        object.__setattr__(self, "temperature", real("temperature", self.temperature, 0.0, open_low=True, what=GREEDY))
        object.__setattr__(self, "top_k", integer("top_k", self.top_k, what=" (0 turns top-k off)"))
        object.__setattr__(self, "top_p", real("top_p", self.top_p, 0.0, 1.0, open_low=True,
                                               what=" (1 turns top-p off)"))
        self.generation_config().validate(strict=True)

    def generation_config(self) -> GenerationConfig:
        """These arguments as transformers' own description of a generation (what `validate` checks)."""
        return GenerationConfig(do_sample=self.do_sample, temperature=self.temperature, top_k=self.top_k,
                                top_p=self.top_p)

    def warpers(self) -> LogitsProcessorList | None:
        """HF's warpers for these arguments (None when greedy), as `GenerationMixin._get_logits_processor`
        builds them: temperature if != 1, top-k if != 0, top-p if < 1, in this order."""
        if not self.do_sample:
            return None
        warpers = LogitsProcessorList()
        if self.temperature != 1.0:
            warpers.append(TemperatureLogitsWarper(self.temperature))
        if self.top_k != 0:
            warpers.append(TopKLogitsWarper(self.top_k))
        if self.top_p < 1.0:
            warpers.append(TopPLogitsWarper(self.top_p))
        return warpers


def next_token(logits: torch.Tensor, warpers: LogitsProcessorList | None, generator: torch.Generator | None,
               sequences: torch.Tensor) -> torch.Tensor:
    """The next token [B] from last-position logits [B, V]: argmax without `warpers`, else a draw from
    softmax of the warped float32 scores (`sequences` [B, t] are the ids so far, as HF passes them)."""
    if warpers is None:
        return logits.argmax(-1)
    probs = torch.softmax(warpers(sequences, logits.to(torch.float32)), -1)
    if not torch.isfinite(probs).all():  # else multinomial's bare RuntimeError
        raise ValueError("the sampling distribution is not finite: the model gave non-finite logits, or the "
                         "temperature is so small that the scaled scores overflow float32; raise temperature or use "
                         "do_sample=False")
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)

