"""The hierarchical adaptive transformer on a frozen base: FFN routers on every layer, exit gates at a
few depths, our own layer loop over the adapter API.

Semantics of one token at layer l (same in the dense and the sparse path):

    not exited:  h = h + attn(norm(h))              # attention always runs
                 h = h + mlp(h)  iff routed          # router score > threshold (or top-k in training)
                 h = h + ffn_bypass(h)  otherwise    # the FFN's learned stand-in (identity: nothing)
    exited:      h frozen; K/V = proj(norm(h)) still computed so later tokens can attend to it

Exits are checked before the layers listed in `exit_layers` (a gate at depth d sees the stream after
d layers). An exited token is decoded from its frozen state through the (optional) tuned lens, the
final norm and the LM head. Its K/V at the layers it no longer runs come from the frozen state, like
ANEE's SKIP, so the cache stays aligned and each later token sees exactly one key per position.

Cost (per token, MACs from `anee.core.cost.CostModel`): a processed layer with its FFN costs
`layer(context)`, without it `layer(context) - mlp` plus the FFN bypass's MACs; a layer after the exit
costs `kv_only`; router (2*D per processed layer), exit gates (2*D per gate reached) and the tuned
lens (D*D at the exit) are overhead. Reported savings are net of all of it.

Two execution paths:
- `dense_forward` runs every token through masked dense arithmetic (batched, differentiable): used
  for training (top-k routing with a straight-through estimator) and for threshold calibration.
- `sparse_forward` gathers the routed tokens and runs the FFN only on them, and runs Q/attention/O
  only for tokens that have not exited: the path whose wall-clock time we measure. Its decisions are
  per-token thresholds on the router score centred by the running mean of the earlier tokens' scores
  at that layer (`routers.causal_center`), hence causal.
Both use `scaled_dot_product_attention` with a causal mask (no padding support: windows of text).
"""

from __future__ import annotations

from dataclasses import asdict

import torch
import torch.nn.functional as F
from torch import nn

from ..core import layer_step as step
from ..core.adapters import adapter_for
from ..core.bisection import bisect
from ..core.bypass import BypassBank, BypassConfig, BypassStats
from ..core.checkpoints import Checkpointable
from ..core.cost import CostModel, CostReport
from ..core.divergence import KLReference, log_probs
from ..core.outputs import HierarchicalOutput
from ..core.resume import resume_layer
from ..core.scalars import integer, real
from .gates import AffineLens, ExitGate, default_exit_layers
from .routers import MIN_CAPACITY, FFNRouter, causal_center, check_capacity, score, threshold_route, topk_route

ROUTINGS = ("all", "topk", "threshold", "calibrate")
# How greedily `layer_capacities` spends a capacity on the least FFN-sensitive layers. Chosen on
# validation text no training or calibration sees (tokens 40,000-44,096), on notebook 05's trained
# models of both seeds: perplexity increase at capacity 0.7, mean of the two seeds, for exponents
# 0.5 / 0.75 / 1 / 1.5 / 2 / 3 / 5 gave +171 / +70 / +39 / +29 / +27 / +28 / +31 % (1 was the
# quadratic proxy used before). The models were trained under exponent 1; 05 now trains under this one.
ALLOCATION_EXPONENT = 2.0


class HierarchicalModel(Checkpointable, nn.Module):
    """Routers and exit gates around a frozen HF decoder (the base is not a submodule: its weights
    never enter this module's state dict or checkpoints)."""

    FORMAT = "anee.hierarchical/4"
    FIX = "re-run notebook 05 to retrain and rewrite it"

    def __init__(self, base: nn.Module, exit_layers: tuple[int, ...] | None = None, tuned_lens: bool = True,
                 model_name: str = "", ffn_bypass: BypassConfig | None = None,
                 allocation_exponent: float = ALLOCATION_EXPONENT):
        super().__init__()
        self.__dict__["base"] = base  # not registered as a submodule on purpose
        self.adapter = adapter_for(base)
        self.cost = CostModel(self.adapter.dims)
        L, D = self.adapter.num_layers, self.adapter.dims.hidden
        exits = tuple(int(d) for d in (exit_layers if exit_layers is not None else default_exit_layers(L)))
        if list(exits) != sorted(set(exits)) or any(not 1 <= d <= L - 1 for d in exits):
            raise ValueError(f"exit_layers must be increasing depths in [1, {L - 1}], got {exits}")
        self.exit_layers = exits
        self.tuned_lens = bool(tuned_lens)
        self.model_name = model_name
        self.routers = nn.ModuleList(FFNRouter(D) for _ in range(L))
        self.gates = nn.ModuleList(ExitGate(D) for _ in exits)
        self.lenses = nn.ModuleList(AffineLens(D) for _ in exits) if tuned_lens else nn.ModuleList()
        # Per-layer FFN sensitivity (KL when the layer's FFN is skipped for every token); ones = uniform
        # allocation. Saved with the checkpoint so inference allocates capacity as training did.
        self.register_buffer("sensitivity", torch.ones(L, dtype=torch.float64))
        self.allocation_exponent = real("allocation_exponent", allocation_exponent, 0.0, 10.0, open_low=True)
        # What a token not routed to a layer's FFN gets instead (identity: nothing); fit with `fit_ffn_bypass_`.
        bypass = ffn_bypass or BypassConfig("identity", target="ffn")
        if bypass.target != "ffn":
            raise ValueError(f"the hierarchical model needs an FFN bypass (target='ffn'), got {bypass.target!r}")
        self.ffn_bypass = BypassBank(bypass, D, L)

    # -- capacity allocation -----------------------------------------------------------------------
    def layer_capacities(self, capacity: float | torch.Tensor) -> torch.Tensor:
        """Per-layer capacities [L] with mean `capacity`: skip fractions f_l = min(1 - c_min, mu * s_l^-a),
        a = `allocation_exponent`, mu found by bisection; uniform when every sensitivity is equal.
        This minimises sum_l s_l f_l^p with p = 1 + 1/a, a convex proxy for the loss of skipping the
        f_l least useful tokens of layer l: a = 1 is the quadratic proxy, a larger a spends the
        skipping on the least sensitive layers more greedily (see ALLOCATION_EXPONENT)."""
        if torch.is_tensor(capacity) and capacity.numel() == self.num_layers:
            return capacity.double()
        c = float(capacity)
        L = self.num_layers
        if c >= 1.0:
            return torch.ones(L, dtype=torch.float64)
        w = self.sensitivity.double().clamp_min(1e-6) ** -self.allocation_exponent
        f_max, need = 1.0 - MIN_CAPACITY, (1.0 - c) * L
        _, mu = bisect(lambda m: float((m * w).clamp(max=f_max).sum()) < need, 0.0, f_max / float(w.min()), 100)
        return 1.0 - (mu * w).clamp(max=f_max)

    @torch.no_grad()
    def measure_sensitivity(self, ids: torch.Tensor) -> torch.Tensor:
        """KL(full || FFN of layer l skipped for every token), per layer, on ids [B, T] (validation
        split); stored in `self.sensitivity`. Costs the reference pass, one all-FFN pass and, per layer,
        a pass from that layer on."""
        L = self.num_layers
        full = KLReference(self.base(ids).logits)
        # every layer before `layer` runs its FFN for every token in pass `layer`, so each pass resumes
        # from the all-FFN pass's stream at its layer: the same arithmetic, about a third less of it
        inputs: list[torch.Tensor] = []
        self.dense_forward(ids, "all", compute_logits=False, layer_inputs=inputs)
        sens = torch.empty(L, dtype=torch.float64)
        for layer in range(L):
            thr = torch.full((L,), float("-inf"), dtype=torch.float64)
            thr[layer] = float("inf")
            logits = self.dense_forward(ids, "threshold", thresholds=thr, resume=(layer, inputs[layer])).logits
            sens[layer] = float(full.kl(log_probs(logits)).mean())
        self.sensitivity.copy_(sens)
        return sens

    @torch.no_grad()
    def fit_ffn_bypass_(self, ids: torch.Tensor) -> None:
        """Closed-form fit of every layer's FFN bypass (in place) from the post-attention streams and
        FFN updates of the full model (every FFN running) on ids [B, T] (validation split)."""
        if self.ffn_bypass.is_identity:
            return
        stats = [BypassStats(self.adapter.dims.hidden) for _ in range(self.num_layers)]
        data: list = []
        self.dense_forward(ids, "all", ffn_data=data, compute_logits=False)
        for s, (mid, update, active) in zip(stats, data):
            s.add_(mid[active], update[active])
        self.ffn_bypass.fit_(stats)
        self.ffn_bypass.info.update(fit_tokens=stats[0].count)

    @torch.no_grad()
    def init_routers(self, ids: torch.Tensor, ridge: float = 0.1) -> None:
        """Closed-form router warm start: per layer, ridge regression of log(|mlp(h) - bypass(h)| / |h|)
        (how far the FFN bypass would leave the token from the real FFN; with the identity, how much
        the FFN moves the stream) on the router input, over ids [B, T] (validation split), all FFNs
        running. The score is then the standardised prediction; top-k training refines it."""
        data: list = []
        self.dense_forward(ids, "all", ffn_data=data, compute_logits=False)
        for layer, (router, (mid, update, active)) in enumerate(zip(self.routers, data)):
            miss = update - self.ffn_bypass.update(layer, mid)
            rel = miss.norm(dim=-1) / mid.norm(dim=-1).clamp_min(1e-6)
            x, y = F.rms_norm(mid, mid.shape[-1:])[active].double(), rel.clamp_min(1e-6).log()[active].double()
            y = (y - y.mean()) / y.std().clamp_min(1e-6)
            xm = x.mean(0)
            xc = x - xm
            D = x.shape[1]
            w = torch.linalg.solve(xc.T @ xc + ridge * x.shape[0] * torch.eye(D, dtype=x.dtype), xc.T @ y)
            b = -(xm @ w)
            router.proj.weight.copy_(torch.stack([-w / 2, w / 2]).to(router.proj.weight.dtype))
            router.proj.bias.copy_(torch.stack([-b / 2, b / 2]).to(router.proj.bias.dtype))

    @torch.no_grad()
    def fit_lenses(self, ids: torch.Tensor, capacity: float = 1.0) -> None:
        """Closed-form tuned-lens initialisation: least squares from each exit's stream to the final
        stream on ids [B, T] (validation split), under routing at `capacity` (top-k)."""
        if not self.tuned_lens:
            return
        out = self.dense_forward(ids, "all" if capacity >= 1.0 else "topk", capacity, collect_exit_hidden=True,
                                 collect_final=True)
        for lens, h in zip(self.lenses, out.exit_hidden):
            lens.fit(h, out.final_hidden)

    # -- helpers -------------------------------------------------------------------------------
    @property
    def num_layers(self) -> int:
        return self.adapter.num_layers

    def decode_hidden(self, exit_index: int, hidden: torch.Tensor) -> torch.Tensor:
        """The stream an exit at `exit_index` decodes (tuned lens applied when enabled)."""
        return self.lenses[exit_index](hidden) if self.tuned_lens else hidden

    def exit_probability(self, exit_index: int, hidden: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.gates[exit_index](hidden).float(), -1)[..., 1]

    # -- dense (masked, batched, differentiable) --------------------------------------------------
    def dense_forward(self, ids: torch.Tensor, routing: str = "all", capacity: float = 1.0,
                      thresholds: torch.Tensor | None = None, exits: bool = False, exit_threshold: float = 0.5,
                      collect_exit_hidden: bool = False, straight_through: bool = False,
                      compute_logits: bool = True, collect_final: bool = False,
                      ffn_data: list | None = None, layer_inputs: list | None = None,
                      resume: tuple[int, torch.Tensor] | None = None) -> HierarchicalOutput:
        """Teacher-forced pass over ids [B, T] with masked dense arithmetic.

        routing: "all" (every FFN), "topk" (training: top ceil(c_l*T) per sequence), "threshold"
        (given per-layer `thresholds`), "calibrate" (threshold at each layer set on the fly so that a
        c_l fraction of the processed tokens of this batch runs the FFN; returned in the output), where
        c_l = `layer_capacities(capacity)`.
        `straight_through` makes the routing mask carry the router's gradient (training);
        `compute_logits=False` skips the LM head (calibration and cost only); `ffn_data` collects
        (post-attention stream, FFN update, processed mask) per layer, detached; `layer_inputs` collects
        each layer's input stream h [B, T, D]. `resume=(l, h)` starts at layer l (0..L; L: only the head)
        from its input h (taken from a pass that ran every FFN of layers < l, with no exit before l): the
        layers before l are not run, so their records keep their defaults (active, no FFN, router logits
        absent)."""
        if routing not in ROUTINGS:
            raise ValueError(f"routing must be one of {ROUTINGS}, got {routing!r}")
        if routing == "threshold" and thresholds is None:
            raise ValueError("routing='threshold' needs thresholds (see calibrate())")
        a, L = self.adapter, self.num_layers
        B, T = ids.shape
        dev = ids.device
        position_ids = torch.arange(T, device=dev).expand(B, T)
        start = resume_layer(resume, (B, T, a.dims.hidden), L)
        h = a.embed(ids, position_ids) if resume is None else resume[1]
        pos = a.position_state(h, position_ids)
        active = torch.ones(B, T, dtype=torch.bool, device=dev)
        act_rec = torch.zeros(B, T, L, dtype=torch.bool, device=dev)
        ffn_rec = torch.zeros(B, T, L, dtype=torch.bool, device=dev)
        exit_depth = torch.full((B, T), L, dtype=torch.long, device=dev)
        decode = None
        used = torch.full((L,), float("-inf"), dtype=torch.float64)
        router_logits, exit_hidden = [], []
        exit_at = {d: i for i, d in enumerate(self.exit_layers)}
        caps = self.layer_capacities(capacity).tolist() if routing in ("topk", "calibrate") else None
        for layer in range(start, L):
            if layer_inputs is not None:
                layer_inputs.append(h)
            if layer in exit_at:
                e = exit_at[layer]
                if collect_exit_hidden:
                    exit_hidden.append(h)
                if exits:
                    leave = active & (self.exit_probability(e, h) > exit_threshold)
                    if leave.any():
                        dec = self.decode_hidden(e, h)
                        decode = torch.where(leave.unsqueeze(-1), dec, h if decode is None else decode)
                        exit_depth = torch.where(leave, layer, exit_depth)
                        active = active & ~leave
            act_rec[:, :, layer] = active
            # an exited token's K/V come from its frozen h
            mid = step.attention_residual(a, layer, h, pos, None, step.CAUSAL)
            logits_r = self.routers[layer](mid)
            router_logits.append(logits_r)
            s = score(logits_r).detach()
            if routing == "all":
                run = active.clone()
            elif routing == "topk":
                run = topk_route(s, caps[layer], valid=active)
            else:
                sc = causal_center(s, active)
                if routing == "calibrate":
                    used[layer] = calibrated_threshold(sc[active], caps[layer])
                else:
                    used[layer] = float(thresholds[layer])
                run = threshold_route(sc, used[layer]) & active
            ffn_rec[:, :, layer] = run
            ffn_out = step.mlp_update(a, layer, mid)
            if ffn_data is not None:
                ffn_data.append((mid.detach(), ffn_out.detach(), active))
            gate = None
            if straight_through:
                p = torch.softmax(logits_r, -1)[..., 1]
                gate = run.to(p.dtype) + p - p.detach()
            skip = None if self.ffn_bypass.is_identity or bool(run.all()) else self.ffn_bypass.update(layer, mid)
            h = torch.where(active.unsqueeze(-1), step.mix(mid, ffn_out, run, gate, skip), h)
        final = h if decode is None else torch.where(active.unsqueeze(-1), h, decode)
        logits = a.logits(final) if compute_logits else final.new_empty(B, T, 0)
        context = torch.arange(1, T + 1, device=dev, dtype=torch.float64).expand(B, T)
        if routing in ("all", "topk"):
            used = torch.full((L,), float("nan"), dtype=torch.float64)
        return HierarchicalOutput(logits, ffn_rec, act_rec, exit_depth, used, context, exits, router_logits,
                                  exit_hidden, final if collect_final else None)

    # -- sparse (gathered, the timed inference path) -----------------------------------------------
    @torch.no_grad()
    def sparse_forward(self, ids: torch.Tensor, thresholds: torch.Tensor | None, exits: bool = False,
                       exit_threshold: float = 0.5) -> HierarchicalOutput:
        """Inference over ids [B, T]: per-token threshold routing (None = every FFN) and hard exits.
        FFN, Q, attention and O run only for the tokens that need them (gathered rows); rows of the
        batch are processed one by one."""
        a, L = self.adapter, self.num_layers
        B, T = ids.shape
        dev = ids.device
        thr = torch.full((L,), float("-inf"), dtype=torch.float64) if thresholds is None else thresholds.double().cpu()
        thr_list = thr.tolist()
        exit_at = {d: i for i, d in enumerate(self.exit_layers)}
        logits_rows, act_rec, ffn_rec = ([], torch.zeros(B, T, L, dtype=torch.bool),
                                         torch.zeros(B, T, L, dtype=torch.bool))
        exit_depth = torch.full((B, T), L, dtype=torch.long)
        for b in range(B):
            row = ids[b : b + 1]
            position_ids = torch.arange(T, device=dev)[None]
            h = a.embed(row, position_ids)  # [1, T, D]
            pos = a.position_state(h, position_ids)
            live = torch.ones(1, T, dtype=torch.bool, device=dev)  # tokens not exited
            decode = torch.empty_like(h)
            for layer in range(L):
                if exits and layer in exit_at and live.any():
                    e = exit_at[layer]
                    leave = live.clone()
                    leave[live] = self.exit_probability(e, h[live]) > exit_threshold
                    if leave.any():
                        decode[leave] = self.decode_hidden(e, h[leave])
                        exit_depth[b, leave[0].cpu()] = layer
                        live = live & ~leave
                if not live.any():
                    break  # nobody left to attend: the remaining K/V would never be read in this window
                act_rec[b, live[0].cpu(), layer] = True
                every = bool(live.all())
                mid = step.attention_residual(a, layer, h, pos, None, step.CAUSAL, queries=None if every else live)
                if thr_list[layer] == float("-inf"):
                    run = None
                    ffn_rec[b, live[0].cpu(), layer] = True
                else:
                    # live tokens in position order
                    run = causal_center(score(self.routers[layer](mid))) > thr_list[layer]
                    ffn_rec[b, live[0].nonzero().squeeze(1)[run[0]].cpu(), layer] = True
                mid = step.mlp_rows(a, layer, mid, run, self.ffn_bypass)
                if every:
                    h = mid
                else:
                    h = h.clone()
                    h[live] = mid[0]
            decode[live] = h[live]
            logits_rows.append(a.logits(decode))
        context = torch.arange(1, T + 1, dtype=torch.float64).expand(B, T)
        return HierarchicalOutput(torch.cat(logits_rows), ffn_rec, act_rec, exit_depth, thr, context, exits)

    # -- cost ------------------------------------------------------------------------------------
    def cost_report(self, out: HierarchicalOutput, routed: bool = True) -> CostReport:
        """Per-token MACs of an execution record (see the module docstring). `routed=False` charges no
        router overhead (capacity 1.0 runs every FFN without asking the routers)."""
        c, L = self.cost, self.num_layers
        per_layer = c.layer(out.context.double())
        n_active = out.active.sum(-1).double()
        n_ffn = out.ffn.sum(-1).double()
        # a processed token not routed to the FFN runs the FFN bypass instead
        layer_macs = (n_active * per_layer - (n_active - n_ffn) * (c.mlp - self.ffn_bypass.macs)
                      + (L - n_active) * c.kv_only)
        overhead = n_active * self.routers[0].macs if routed else torch.zeros_like(layer_macs)
        if out.exits_enabled:
            gates_seen = torch.zeros_like(layer_macs)
            for d in self.exit_layers:
                gates_seen += (out.exit_depth >= d).double()
            overhead = overhead + gates_seen * self.gates[0].macs
            if self.tuned_lens:
                overhead = overhead + (out.exit_depth < L).double() * self.lenses[0].macs
        return CostReport(layer_macs, L * per_layer, c.lm_head, overhead)

    # -- calibration and the speed knob ------------------------------------------------------------
    @torch.no_grad()
    def calibrate(self, ids: torch.Tensor, capacity: float, exits: bool = False, exit_threshold: float = 0.5,
                  ) -> torch.Tensor:
        """Per-layer thresholds [L] such that a fraction c_l = `layer_capacities(capacity)`[l] of the
        processed tokens of the calibration windows ids [N, T] (validation split) runs layer l's FFN
        (mean c_l = capacity). Layers are calibrated in order, each
        under the routing of the layers before it, with the given exit setting."""
        capacity = check_capacity(capacity)
        if capacity >= 1.0:
            return torch.full((self.num_layers,), float("-inf"), dtype=torch.float64)
        return self.dense_forward(ids, "calibrate", capacity, exits=exits, exit_threshold=exit_threshold,
                                  compute_logits=False).thresholds

    @torch.no_grad()
    def speedup_at(self, ids: torch.Tensor, capacity: float, exits: bool = False, exit_threshold: float = 0.5) -> float:
        """Compute speedup (full MACs / spent MACs incl. LM head and overheads) on calibration windows."""
        capacity = check_capacity(capacity)
        # the calibration pass itself routes exactly as the calibrated thresholds would on these windows
        out = self.dense_forward(ids, "calibrate" if capacity < 1.0 else "all", capacity, exits=exits,
                                 exit_threshold=exit_threshold, compute_logits=False)
        return 1.0 / (1.0 - self.cost_report(out, routed=capacity < 1.0).total_saved)

    @torch.no_grad()
    def capacity_for_speedup(self, ids: torch.Tensor, target_speedup: float, exits: bool = False,
                             exit_threshold: float = 0.5, iters: int = 7, lo: float = 0.1, hi: float = 0.9) -> float:
        """Binary search for the largest capacity whose compute speedup on the calibration windows
        reaches `target_speedup` (speedup decreases with capacity); lo if even that falls short."""
        if target_speedup <= 1.0:
            return 1.0
        if self.speedup_at(ids, hi, exits, exit_threshold) >= target_speedup:
            return hi
        return bisect(lambda c: self.speedup_at(ids, c, exits, exit_threshold) >= target_speedup, lo, hi, iters)[0]

    # -- checkpoints ---------------------------------------------------------------------------
    def checkpoint_config(self) -> dict:
        d = self.adapter.dims
        return {"model_name": self.model_name, "model_type": self.base.config.model_type, "num_layers": d.num_layers,
                "hidden": d.hidden, "vocab": d.vocab, "exit_layers": list(self.exit_layers),
                "tuned_lens": self.tuned_lens, "ffn_bypass": asdict(self.ffn_bypass.config),
                "ffn_bypass_info": self.ffn_bypass.info, "allocation_exponent": self.allocation_exponent,
                "extra": getattr(self, "checkpoint_extra", {})}

    @classmethod
    def from_config(cls, config: dict, base: nn.Module) -> HierarchicalModel:
        d = adapter_for(base).dims
        for key, want in (("num_layers", d.num_layers), ("hidden", d.hidden), ("vocab", d.vocab),
                          ("model_type", base.config.model_type)):
            if config[key] != want or type(config[key]) is not type(want):
                raise ValueError(f"checkpoint {key}={config[key]!r} does not match the model's {want!r}")
        exits = config["exit_layers"]
        if not isinstance(exits, list):
            raise TypeError(f"exit_layers must be a list of layer indices, got {exits!r}")
        exits = tuple(integer("exit layer", e, 1, d.num_layers - 1) for e in exits)
        if not isinstance(config["tuned_lens"], bool):
            raise ValueError(f"tuned_lens must be true or false, got {config['tuned_lens']!r}")
        for key in ("model_name", "extra"):
            if not isinstance(config[key], str if key == "model_name" else dict):
                raise TypeError(f"{key} has the wrong type: {config[key]!r}")
        for key in ("ffn_bypass", "ffn_bypass_info"):
            if not isinstance(config[key], dict):
                raise TypeError(f"{key} must be a JSON object, got {config[key]!r}")
        model = cls(base, exits, config["tuned_lens"], config["model_name"], BypassConfig(**config["ffn_bypass"]),
                    config["allocation_exponent"])
        model.ffn_bypass.info = dict(config["ffn_bypass_info"])
        model.checkpoint_extra = dict(config["extra"])
        return model

    def save(self, path, extra: dict | None = None):
        """Write routers, gates, lenses and the FFN sensitivities (safetensors, atomic), config in the header."""
        if extra is not None:
            self.checkpoint_extra = extra
        return super().save(path)

    @classmethod
    def load(cls, path, base: nn.Module) -> HierarchicalModel:
        """Load a checkpoint onto `base`, refusing mismatched models, formats, shapes or values."""
        return cls.from_checkpoint(path, base)


def calibrated_threshold(scores: torch.Tensor, capacity: float) -> float:
    """Threshold t such that a `capacity` fraction of `scores` lies strictly above it."""
    n = scores.numel()
    if n == 0 or capacity >= 1.0:
        return float("-inf")
    k = int(round((1.0 - capacity) * n))  # tokens below or at the threshold
    if k <= 0:
        return float("-inf")
    s = scores.double().sort().values
    if k >= n:
        return float(s[-1])
    return float(0.5 * (s[k - 1] + s[k]))  # midpoint: robust to nearby test scores
