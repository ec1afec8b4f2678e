"""The adaptive layer loop: one code path for every family, every chunk size and every policy.

A chunk of T new tokens (T = 1 in sequential decode, T = sequence length in teacher-forced parallel
mode) runs through the unrolled stack, one `anee.core.layer_step.layer_step` per layer. At each
layer each token is

    PROCESS  h <- h + attn(norm(h)) ; h <- h + mlp(norm(h))
    SKIP     h <- h + bypass(h), and K/V = proj(norm(h)) still go into the cache
    EXIT     h frozen (K/V still written) for this and every remaining layer
    DROP     h <- h + bypass(h), no K/V: the layer is removed for every token of the sequence

`bypass` is the executor's `BypassBank` (`anee.core.bypass`): a learned stand-in for the skipped
layer's update, charged in every cost; without one (or with the identity family) it adds nothing.

`weights` (e.g. `WeightBank.at(8)` from `anee.granularity.quantize`: real INT8 kernels) are put in
place for each forward and the model's own restored after, so depth adaptivity and precision combine
(the cost in MACs does not change with precision; weight bytes do, see `Weights.bits`).

Because a token's decision depends only on its own state and the cache holds every position at
every layer, running a sequence in one chunk or token by token gives the same logits and trace.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Protocol

import torch

from ..core.actions import ASK, DROP, EXIT, PROCESS, SKIP
from ..core.adapters import ModelAdapter
from ..core.bypass import BypassBank
from ..core.cost import CostModel, bypassed
from ..core.kv_cache import KVCache
from ..core.layer_step import layer_step
from ..core.outputs import ExecutorOutput, Trace
from ..core.resume import resume_layer
from ..core.scalars import flag, integer
from .arguments import check_budget
from .controllers.base import Controller, FullController, LayerView, layer_overhead
from .prefix_memo import Prefix, PrefixMemo


class Weights(Protocol):
    """Weights an executor runs with instead of the model's own: `applied()` puts them in place and
    restores the model's own on exit (re-entrant); `bits` is the precision each layer reads."""

    adapter: ModelAdapter
    bits: tuple[int, ...]

    def applied(self) -> AbstractContextManager: ...


class AdaptiveExecutor:
    """Runs a HF causal LM's layers one by one under a controller; leaves the model's weights as it
    found them (with `weights`, each forward runs on those and restores the model's own after)."""

    def __init__(self, adapter: ModelAdapter, min_layers: int = 0, bypass: BypassBank | None = None,
                 weights: Weights | None = None):
        if bypass is not None and not isinstance(bypass, BypassBank):
            raise TypeError(f"bypass must be a BypassBank (anee.core.bypass) or None, got {type(bypass).__name__}")
        if bypass is not None and (bypass.num_layers, bypass.hidden) != (adapter.num_layers, adapter.dims.hidden):
            raise ValueError(f"the bypass is for {bypass.num_layers} layers of width {bypass.hidden}, the model has "
                             f"{adapter.num_layers} of width {adapter.dims.hidden}")
        if bypass is not None and bypass.config.target != "layer":
            raise ValueError(f"the executor needs a layer bypass, got target={bypass.config.target!r}")
        if weights is not None and weights.adapter.model is not adapter.model:
            raise ValueError("weights belong to another model's adapter: "
                             "build the WeightBank from this executor's adapter")
        self.adapter = adapter
        self.weights = weights
        self.bypass = None if bypass is None or bypass.is_identity else bypass
        self.cost = CostModel(adapter.dims, self.bypass.macs if self.bypass is not None else 0)
        self.min_layers = integer("min_layers", min_layers, 0, adapter.num_layers,
                                  what=" (the model's number of layers)")
        self.prefix_memo: PrefixMemo | None = None  # set by `anee.engine.prefix_memo.shared_prefixes`

    @torch.no_grad()
    def forward(
        self,
        input_ids: torch.Tensor,
        cache: KVCache | None = None,
        controller: Controller | None = None,
        decisions: torch.Tensor | None = None,
        budget: float | torch.Tensor = 1.0,
        padding_mask: torch.Tensor | None = None,
        collect_hidden: bool = False,
        resume: tuple[int, torch.Tensor] | None = None,
        with_logits: bool = True,
    ) -> ExecutorOutput:
        """Run a chunk [B, T] of new tokens, append to `cache`, return logits and the trace.

        Either `decisions` [B, T, L] (teacher forcing: the pattern is applied as masks) or a
        `controller` (default: process everything). A DROP column must be DROP for the whole chunk,
        and a layer dropped once stays dropped for the sequence's later chunks (a layer kept so far,
        e.g. for a full-depth prompt, may be dropped from a later chunk on). `padding_mask` [B, T] marks real tokens for
        left-padded batches; it is remembered in the cache for later chunks.

        `resume=(layer, h)` continues a teacher-forced pass (fresh cache) at `layer` from `h` [B, T, D],
        the `hidden_states[layer]` of an earlier pass whose decisions agree before `layer`: the result
        is the one the whole pass would give, bit for bit, without recomputing the shared layers
        (`hidden_states` then starts at `layer`; the trace's K/V-only and DROP layers before it are
        not written to the cache).

        `with_logits=False` leaves out the LM head (`logits` is None) for callers that read only the
        trace or the hidden states: on this model the head is about a quarter of a pass's MACs.
        """
        return self.forward_grad(input_ids, cache, controller, decisions, budget, padding_mask, collect_hidden, resume,
                                 with_logits)

    def weights_applied(self) -> AbstractContextManager:
        """The executor's `weights` in place (nothing without them): a generation loop enters it once
        so that its per-token forwards swap nothing."""
        return nullcontext() if self.weights is None else self.weights.applied()

    def forward_grad(self, input_ids, cache=None, controller=None, decisions=None, budget=1.0, padding_mask=None,
                     collect_hidden=False, resume=None, with_logits=True) -> ExecutorOutput:
        """`forward` without the no-grad guard, for training controllers or gates through it (not
        through INT8 kernel `weights`: they have no gradient)."""
        with self.weights_applied():
            return self._run(input_ids, cache, controller, decisions, budget, padding_mask, collect_hidden, resume,
                             with_logits)

    def _run(self, input_ids, cache, controller, decisions, budget, padding_mask, collect_hidden, resume,
             with_logits) -> ExecutorOutput:
        adapter, L = self.adapter, self.adapter.num_layers
        check_input_ids(input_ids, adapter.dims.vocab)
        with_logits = flag("with_logits", with_logits)
        cache = cache if cache is not None else KVCache(L)
        B, T = input_ids.shape
        past = cache.length
        if past + T > adapter.dims.max_positions:
            raise ValueError(
                f"sequence of {past + T} tokens exceeds the model's context of {adapter.dims.max_positions}; "
                "shorten the prompt or max_new_tokens"
            )
        budget_t = _budget_tensor(budget, B, input_ids.device)
        if decisions is not None and decisions.shape != (B, T, L):
            raise ValueError(f"decisions must have shape {(B, T, L)}, got {tuple(decisions.shape)}")
        controller = controller or FullController()
        start = _check_resume(resume, decisions, past, (B, T, adapter.dims.hidden), L)

        position_ids, attn_mask = self._positions_and_mask(cache, B, T, past, padding_mask, input_ids.device)
        dev = input_ids.device
        context = attn_mask.sum(-1).squeeze(1) if attn_mask is not None else torch.full((B, T), past + 1, device=dev)
        context = context.to(torch.float64)

        h = adapter.embed(input_ids, position_ids) if resume is None else resume[1]
        pos = adapter.position_state(h, position_ids)
        hidden_states = [] if collect_hidden else None
        # a fresh, unpadded chunk inside `shared_prefixes`: fully processed leading layers come from the memo
        prefix = None
        if self.prefix_memo is not None and resume is None and past == 0 and attn_mask is not None \
                and padding_mask is None and cache.padding_mask is None and all(k is None for k in cache.keys):
            prefix = self.prefix_memo.prefix(adapter.model, self.weights, input_ids, h)
        if decisions is None and hasattr(controller, "static_decisions"):
            decisions = controller.static_decisions(B, T, L)
            decisions[..., : self.min_layers] = PROCESS
        if decisions is not None:
            # Known in advance (teacher forcing or a static policy): no per-layer bookkeeping at all.
            record = _absorb_exits(decisions.to(dev))
            process_counts = (record == PROCESS).sum((0, 1)).tolist()
            dropped = _dropped_layers(record)
            by = bypassed(record) if self.bypass is not None else None
            overhead = torch.zeros(B, T, dtype=torch.float64, device=dev)
            shared = _leading(torch.tensor([c == B * T for c in process_counts]))  # layers every token processes
            if prefix is not None:
                start = prefix.restore(shared, cache, hidden_states)
                h = prefix.states[start]
            for layer in range(start, L):
                if hidden_states is not None:
                    hidden_states.append(h)
                process = record[:, :, layer] == PROCESS if 0 < process_counts[layer] < B * T else None
                h = layer_step(adapter, layer, h, pos, cache, attn_mask, process, process_counts[layer],
                               layer in dropped, self.bypass, None if by is None else by[:, :, layer])
                if prefix is not None and layer < shared:
                    prefix.extend(layer, h, cache)
        else:
            h, record, overhead = self._decide_and_run(h, pos, cache, attn_mask, controller, budget_t, context,
                                                       hidden_states, prefix)
        if hidden_states is not None:
            hidden_states.append(h)
        cache.advance(T)
        logits = adapter.logits(h) if with_logits else None
        return ExecutorOutput(logits, Trace(record, context, overhead), cache, h, hidden_states)

    def _decide_and_run(self, h, pos, cache, attn_mask, controller, budget, context, hidden_states,
                        prefix: Prefix | None = None):
        """The dynamic loop: before each layer the controller sees every token's state and budget.
        A controller with a `plan(budget, num_layers)` fixes some layers in advance (PROCESS, SKIP
        or DROP for every token) and is asked, and charged, only at the layers its plan marks ASK.
        With a `prefix` (see `shared_prefixes`) the plan's leading PROCESS layers are restored from
        it where an earlier pass on the same chunk ran them."""
        adapter, L = self.adapter, self.adapter.num_layers
        B, T = h.shape[:2]
        plan = _plan(controller, budget, L, self.min_layers, h.device)
        layer_cost = self.cost.layer(context)
        full = L * layer_cost
        spent = torch.zeros(B, T, dtype=torch.float64, device=h.device)
        overhead = torch.zeros_like(spent)
        exited = torch.zeros(B, T, dtype=torch.bool, device=h.device)
        record = torch.empty(B, T, L, dtype=torch.int8, device=h.device)
        prev, start, shared = h, 0, _leading(plan == PROCESS)
        anchor_layer, anchor = getattr(controller, "anchor_layer", None), None
        if prefix is not None:  # as the loop below would run them: every token PROCESSES, none has exited
            start = prefix.restore(shared, cache, hidden_states)
            prev, h = prefix.states[max(start - 1, 0)], prefix.states[start]
            record[:, :, :start] = PROCESS
            for _ in range(start):
                spent += layer_cost
            if anchor_layer is not None and anchor_layer < start:
                anchor = prefix.states[anchor_layer]
        for layer in range(start, L):
            if hidden_states is not None:
                hidden_states.append(h)
            if layer == anchor_layer:
                anchor = h
            fixed = int(plan[layer])
            if fixed == DROP:
                action = torch.full((B, T), DROP, dtype=torch.long, device=h.device)
            elif fixed != ASK:
                action = torch.where(exited, EXIT, fixed)
            else:
                view = LayerView(layer, L, h, prev, spent, full, layer_cost, budget, adapter, self.cost, plan, exited,
                                 anchor)
                action = torch.where(exited, EXIT, controller.decide(view).long())
                overhead += layer_overhead(controller, view) * (~exited)
            process = action == PROCESS
            n_process = int(process.sum())
            record[:, :, layer] = action.to(torch.int8)
            # who runs the bypass: a SKIP, and a DROP reached before any EXIT (an exited token stays frozen)
            by = ~exited if fixed == DROP else action == SKIP
            if fixed == DROP:
                spent += by * float(self.cost.drop_path)
            else:
                spent += torch.where(process, layer_cost,
                                     torch.where(by, float(self.cost.skip_path), float(self.cost.kv_only)))
            exited = exited | (action == EXIT)
            prev, h = h, layer_step(adapter, layer, h, pos, cache, attn_mask,
                                    process if 0 < n_process < B * T else None, n_process, fixed == DROP,
                                    self.bypass, by)
            if prefix is not None and layer < shared:
                prefix.extend(layer, h, cache)
        return h, record, overhead

    def _positions_and_mask(self, cache, B, T, past, padding_mask, device):
        """Position ids [B, T] and the boolean attention mask [B, 1, T, past+T] (None when every
        query may see every key, i.e. a single unpadded token)."""
        if padding_mask is not None:
            padding_mask = padding_mask.to(device).bool()
            if padding_mask.shape != (B, T):
                raise ValueError(f"padding_mask must have shape {(B, T)}")
        if padding_mask is None and cache.padding_mask is None:
            position_ids = torch.arange(past, past + T, device=device).expand(B, T)
            if T == 1:
                return position_ids, None
            causal = torch.ones(T, past + T, dtype=torch.bool, device=device).tril(past)
            return position_ids, causal.expand(B, 1, T, past + T)
        old = (cache.padding_mask if cache.padding_mask is not None
               else torch.ones(B, past, dtype=torch.bool, device=device))
        new = padding_mask if padding_mask is not None else torch.ones(B, T, dtype=torch.bool, device=device)
        full_mask = torch.cat([old, new], dim=1)
        cache.padding_mask = full_mask
        # Left padding: positions count real tokens only, as HF generate does.
        position_ids = (full_mask.long().cumsum(-1) - 1).clamp(min=0)[:, past:]
        causal = torch.ones(T, past + T, dtype=torch.bool, device=device).tril(past)
        mask = causal.unsqueeze(0) & full_mask.unsqueeze(1)
        # A padded query row would see no key at all; let it see itself to keep softmax finite.
        eye = torch.zeros(T, past + T, dtype=torch.bool, device=device)
        rows = torch.arange(T, device=device)
        eye[rows, past + rows] = True
        mask = mask | (eye.unsqueeze(0) & ~new.unsqueeze(-1))
        return position_ids, mask.unsqueeze(1)


def _leading(flags: torch.Tensor) -> int:
    """How many leading entries of the bool vector `flags` are True."""
    return int(flags.long().cumprod(0).sum())


def _check_resume(resume, decisions, past: int, shape: tuple[int, int, int], L: int) -> int:
    """The layer a `resume=(layer, h)` pass starts at (0 without one); `past`: tokens already cached."""
    if resume is None:
        return 0
    if decisions is None or past > 0:
        raise ValueError("resume continues a teacher-forced pass: pass decisions, and no cache (or an empty one)")
    return resume_layer(resume, shape, L)


def check_input_ids(input_ids, vocab: int) -> None:
    """TypeError / ValueError unless `input_ids` is a non-empty integer tensor [batch, tokens] of ids in [0, vocab)."""
    if not isinstance(input_ids, torch.Tensor) or input_ids.ndim != 2 or input_ids.dtype.is_floating_point \
            or input_ids.dtype.is_complex or input_ids.dtype == torch.bool:
        got = (f"a {input_ids.dtype} tensor of shape {tuple(input_ids.shape)}" if isinstance(input_ids, torch.Tensor)
               else type(input_ids).__name__)
        raise TypeError("input_ids must be an integer tensor [batch, tokens] "
                        "(e.g. tokenizer(text, return_tensors='pt').input_ids; "
                        f"for text use ANEEWrapper.generate(prompt=...)), got {got}")
    if input_ids.numel() == 0:
        raise ValueError(f"empty prompt: input_ids of shape {tuple(input_ids.shape)} holds no token")
    low, high = int(input_ids.min()), int(input_ids.max())
    if low < 0 or high >= vocab:
        raise ValueError(f"input_ids must be token ids in [0, {vocab}) for this model, got values in [{low}, {high}]; "
                         "tokenize with the model's own tokenizer")


def _absorb_exits(decisions: torch.Tensor) -> torch.Tensor:
    """int8 decisions where every entry after a token's first EXIT is EXIT too (DROP stays DROP)."""
    exited = (decisions == EXIT).to(torch.int8).cummax(-1).values.bool()
    return torch.where(exited & (decisions != DROP), EXIT, decisions).to(torch.int8)


def _dropped_layers(decisions: torch.Tensor) -> set[int]:
    """Layers DROPPED in `decisions` [B, T, L]; ValueError if a layer is dropped for some tokens only."""
    drop = decisions == DROP
    partial = drop.any((0, 1)) & ~drop.all((0, 1))
    if partial.any():
        raise ValueError(f"layers {partial.nonzero().flatten().tolist()} are DROP for some tokens only; DROP removes a "
                         "layer for every token (use SKIP for a per-token skip)")
    return set(drop.all((0, 1)).nonzero().flatten().tolist())


def _plan(controller, budget: torch.Tensor, L: int, min_layers: int, device) -> torch.Tensor:
    """The controller's per-layer plan [L] (ASK = decide per token), PROCESS for the first `min_layers`."""
    if hasattr(controller, "plan"):
        plan = torch.as_tensor(controller.plan(budget, L), dtype=torch.long, device=device).clone()
        if plan.shape != (L,):
            raise ValueError(f"plan must have one entry per layer ({L}), got shape {tuple(plan.shape)}")
    else:
        plan = torch.full((L,), ASK, dtype=torch.long, device=device)
    plan[:min_layers] = PROCESS
    return plan


def _budget_tensor(budget: float | torch.Tensor, batch: int, device) -> torch.Tensor:
    """Validate an energy budget (any real scalar, or a tensor of one value per row) and return it as [B, 1] float64."""
    if not isinstance(budget, torch.Tensor):
        budget = check_budget(budget)
    b = torch.as_tensor(budget, dtype=torch.float64).flatten()
    if b.numel() not in (1, batch):
        raise ValueError(f"energy_budget must be a scalar or one value per row ({batch}), got {b.numel()}")
    if torch.isnan(b).any() or (b < 0).any() or (b > 1).any():
        raise ValueError(f"energy_budget must be in [0, 1] (fraction of full layer compute), got {budget!r}")
    return b.expand(batch).reshape(batch, 1).to(device)
