"""Per-token, per-layer state for ANEE controllers, with a cheap intermediate-entropy estimator.

The exact logit-lens entropy needs the full LM head at every layer (SmolLM2: 28 M MACs against 3.5 M
per layer). `ShortlistEntropy` instead projects the normed hidden state onto the K rows of the LM
head for the K most frequent tokens of the calibration split (K*D MACs) and maps the shortlist
statistics to the full-vocabulary entropy with a least-squares fit on calibration tokens.

`Profiler.features(view)` returns the state vector [B, T, F] named in `FEATURES`; its
`overhead_macs` (shortlist product + element-wise statistics) is charged per call per token.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..core.checkpoints import Checkpointable
from ..core.divergence import entropy
from ..core.scalars import integer
from .controllers.base import LayerView
from .executor import AdaptiveExecutor
from .importance import block_influence, order_by_rank

FEATURES = (
    "entropy_est",  # estimated logit-lens entropy / ln(V)
    "max_prob",  # max softmax probability over the shortlist
    "log_norm",  # log(||h|| / sqrt(D))
    "delta_rel",  # ||h - h_prev|| / ||h_prev||: change made by the previous layer
    "cos_prev",  # cos(h, h_prev)
    "log_var",  # log variance of h's coordinates
    "position",  # layer / (L - 1)
    "budget",  # energy budget
    "spent",  # fraction of full layer compute spent so far
    "remaining",  # budget - spent
    "required_rate",  # layers still to process to land on budget / layers left
    "importance",  # static layer importance (Block Influence or removal-order position, scaled to [0, 1])
    "rank_frac",  # fraction of the remaining asked layers more important than this one
    "log_context",  # log(keys attended to) / log(model context): short contexts tolerate skipping differently
)
ELEMENTWISE_MACS_PER_DIM = 6  # norms, dot product and variance: about six MACs per coordinate


@dataclass
class ShortlistEntropy:
    """Entropy of the logit lens from K shortlisted vocabulary rows, linearly calibrated."""

    token_ids: torch.Tensor  # [K] long
    coef: torch.Tensor  # [4]: entropy ≈ c0*H_short + c1*lse_short + c2*max_logit + c3

    @property
    def k(self) -> int:
        return int(self.token_ids.numel())

    def stats(self, executor: AdaptiveExecutor,
              hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Shortlist entropy, log-sum-exp and max logit [..., 3] plus max prob [...], from hidden [..., D]."""
        adapter = executor.adapter
        head = adapter.lm_head()
        rows = head.weight[self.token_ids]
        z = adapter.final_norm(hidden).float() @ rows.float().T
        if head.bias is not None:
            z = z + head.bias[self.token_ids].float()
        logp = torch.log_softmax(z, -1)
        h_short = -(logp.exp() * logp).sum(-1)
        lse = torch.logsumexp(z, -1)
        zmax = z.max(-1).values
        return torch.stack([h_short, lse, zmax], -1), logp.max(-1).values.exp(), z

    def estimate(self, executor: AdaptiveExecutor, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(estimated full-vocabulary entropy in nats, shortlist max prob), each [...]."""
        s, pmax, _ = self.stats(executor, hidden)
        est = s @ self.coef[:3].float() + self.coef[3].float()
        return est.clamp(min=0.0), pmax


def exact_entropy(executor: AdaptiveExecutor, hidden: torch.Tensor) -> torch.Tensor:
    """Full-vocabulary logit-lens entropy (nats) of hidden [..., D]."""
    return entropy(executor.adapter.logits(hidden))


@torch.no_grad()
def calibration_hidden(executor: AdaptiveExecutor, ids: torch.Tensor, window: int = 256, max_windows: int = 2,
                       tokens_per_layer: int = 64, seed: int = 0) -> torch.Tensor:
    """Hidden states [N, D] sampled from every layer input of the full model on calibration ids."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for begin in range(0, min(ids.shape[1] - window + 1, window * max_windows), window):
        hs = executor.forward(ids[:, begin : begin + window], collect_hidden=True, with_logits=False).hidden_states
        for h in hs[1:]:
            pick = torch.randperm(window, generator=g)[:tokens_per_layer]
            out.append(h[0, pick])
    return torch.cat(out)


@torch.no_grad()
def fit_shortlist(executor: AdaptiveExecutor, ids: torch.Tensor, k: int = 64,
                  hidden: torch.Tensor | None = None) -> ShortlistEntropy:
    """Shortlist = the k most frequent tokens of `ids`; calibration = least squares on `hidden`."""
    vocab = executor.adapter.dims.vocab
    counts = torch.bincount(ids.flatten(), minlength=vocab)
    token_ids = torch.argsort(counts, descending=True, stable=True)[:k]
    est = ShortlistEntropy(token_ids, torch.tensor([1.0, 0.0, 0.0, 0.0]))
    hidden = calibration_hidden(executor, ids) if hidden is None else hidden
    s, _, _ = est.stats(executor, hidden)
    x = torch.cat([s, torch.ones(len(s), 1)], 1).double()
    y = exact_entropy(executor, hidden).double()
    coef = torch.linalg.lstsq(x, y.unsqueeze(1)).solution.squeeze(1)
    return ShortlistEntropy(token_ids, coef.float())


@torch.no_grad()
def estimator_error(executor: AdaptiveExecutor, est: ShortlistEntropy, hidden: torch.Tensor) -> dict[str, float]:
    """Error of the estimate against the exact entropy on `hidden` [N, D] (use held-out states)."""
    exact = exact_entropy(executor, hidden)
    guess, _ = est.estimate(executor, hidden)
    err = guess - exact
    corr = torch.corrcoef(torch.stack([guess, exact]))[0, 1]
    D = executor.adapter.dims.hidden
    return {
        "k": est.k,
        "mae_nats": float(err.abs().mean()),
        "rmse_nats": float(err.pow(2).mean().sqrt()),
        "pearson_r": float(corr),
        "mean_exact_nats": float(exact.mean()),
        "macs_per_call": est.k * D,
        "fraction_of_layer": est.k * D / executor.cost.layer_static,
        "exact_head_fraction_of_layer": executor.cost.lm_head / executor.cost.layer_static,
    }


class Profiler(Checkpointable):
    """Computes the `FEATURES` state of every token at a layer from a `LayerView`."""

    FORMAT = "anee.profiler/3"
    FIX = "re-run notebook 02 to rebuild the profiler"

    budget_index = FEATURES.index("budget")  # where a controller finds the token's budget in the state

    def __init__(self, entropy: ShortlistEntropy, importance: torch.Tensor, executor: AdaptiveExecutor,
                 entropy_median: float = 0.1):
        L = executor.adapter.num_layers
        if importance.shape != (L,):
            raise ValueError(f"importance must have one value per layer ({L}), got shape {tuple(importance.shape)}")
        self.entropy = entropy
        self.executor = executor
        self._raw_importance = importance.float()
        self.entropy_median = float(entropy_median)  # median estimated entropy / ln V on calibration
        imp = importance.double()
        self.importance = ((imp - imp.min()) / (imp.max() - imp.min()).clamp(min=1e-12)).float()
        self.rank = torch.argsort(torch.argsort(-imp, stable=True))  # rank 0 = most important
        self.log_vocab = math.log(executor.adapter.dims.vocab)

    @property
    def removal_order(self) -> list[int]:
        """Layers from least to most important (the order a plan DROPs them in)."""
        return order_by_rank(self.rank).tolist()

    @property
    def overhead_macs(self) -> int:
        """MACs per token per call: shortlist product + element-wise statistics."""
        D = self.executor.adapter.dims.hidden
        return self.entropy.k * D + ELEMENTWISE_MACS_PER_DIM * D

    def layers_to_target(self, view: LayerView, target: torch.Tensor) -> torch.Tensor:
        """[B, T] number of the asked layers left (this one included) that may still be PROCESSED
        for the token to end at fraction `target` [B, 1] of full layer compute (fractional)."""
        skip = view.cost.skip_path
        room = target * view.full - view.spent - view.fixed_after() - (view.asks_after + 1) * skip
        return room / (view.layer_cost - skip)

    def more_important_left(self, layer: int, later: torch.Tensor | None = None) -> int:
        """How many of the `later` layers (default: all after `layer`) are more important than it."""
        later = torch.arange(layer + 1, len(self.rank)) if later is None else later.to(self.rank.device)
        return int((self.rank[later] < self.rank[layer]).sum())

    @torch.no_grad()
    def features(self, view: LayerView) -> torch.Tensor:
        h, prev = view.hidden.float(), view.prev_hidden.float()
        D, L = h.shape[-1], view.num_layers
        ent, pmax = self.entropy.estimate(self.executor, h)
        norm = h.norm(dim=-1)
        pnorm = prev.norm(dim=-1).clamp(min=1e-6)
        delta = (h - prev).norm(dim=-1) / pnorm
        cos = (h * prev).sum(-1) / (norm.clamp(min=1e-6) * pnorm)
        var = h.var(-1, unbiased=False)
        shape = norm.shape
        spent = (view.spent / view.full).float()
        budget = view.budget.float().expand(shape)
        rate = (self.layers_to_target(view, view.budget) / (view.asks_after + 1)).float().clamp(-1, 2)
        const = lambda v: torch.full(shape, float(v), device=h.device)  # noqa: E731
        m = view.asks_after + 1
        cols = [
            ent / self.log_vocab, pmax, torch.log(norm / math.sqrt(D) + 1e-6), delta, cos,
            torch.log(var + 1e-6), const(view.layer / max(L - 1, 1)), budget, spent, budget - spent, rate,
            const(self.importance[view.layer]), const(self.more_important_left(view.layer, view.asked_after()) / m),
            (torch.log(view.cost.context_of(view.layer_cost)) / math.log(view.adapter.dims.max_positions)).float(),
        ]
        return torch.stack(cols, -1)

    # -- checkpoints -------------------------------------------------------------------------------
    @property
    def raw_importance(self) -> torch.Tensor:
        """Importance per layer [L] as calibrated, before scaling to [0, 1]: Block Influence, or
        positions in a searched removal order (`anee.engine.importance.order_importance`)."""
        return self._raw_importance

    def checkpoint_tensors(self) -> dict[str, torch.Tensor]:
        return {"shortlist_ids": self.entropy.token_ids.long().contiguous(),
                "entropy_coef": self.entropy.coef.float().contiguous(),
                "importance_raw": self._raw_importance.contiguous(),
                "entropy_median": torch.tensor([self.entropy_median])}

    def checkpoint_config(self) -> dict:
        d = self.executor.adapter.dims
        return {"features": list(FEATURES), "num_layers": d.num_layers, "hidden": d.hidden, "vocab": d.vocab,
                "k": self.entropy.k}

    @classmethod
    def from_config(cls, config: dict, executor: AdaptiveExecutor) -> Profiler:
        d = executor.adapter.dims
        want = {"features": list(FEATURES), "num_layers": d.num_layers, "hidden": d.hidden, "vocab": d.vocab}
        for key, value in want.items():
            if config[key] != value or type(config[key]) is not type(value):
                raise ValueError(f"{key}={config[key]!r} does not match this model/profiler ({value!r})")
        k = integer("k", config["k"], 1, d.vocab, what=" (the vocabulary)")
        return cls(ShortlistEntropy(torch.zeros(k, dtype=torch.long), torch.zeros(4)),
                   torch.arange(d.num_layers, dtype=torch.float32), executor)

    def load_checkpoint_tensors_(self, tensors: dict[str, torch.Tensor]) -> None:
        ids = tensors["shortlist_ids"]
        if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
            raise ValueError(f"shortlist_ids must be integer token ids, got {ids.dtype}")
        ids = ids.long()
        if int(ids.min()) < 0 or int(ids.max()) >= self.executor.adapter.dims.vocab:
            raise ValueError("shortlist_ids outside the vocabulary")
        self.__init__(ShortlistEntropy(ids, tensors["entropy_coef"].float()), tensors["importance_raw"], self.executor,
                      float(tensors["entropy_median"][0]))


@torch.no_grad()
def calibrate_profiler(executor: AdaptiveExecutor, calibration_ids: torch.Tensor, k: int = 64, window: int = 256,
                       max_windows: int = 2, importance_windows: int = 8,
                       importance: torch.Tensor | None = None) -> Profiler:
    """Shortlist entropy (from `max_windows` windows) + Block-Influence importance (from
    `importance_windows`, the Block-Influence baseline's default, so both rank layers from the same
    data: middle layers differ by ~0.01 in influence and 512 tokens reorder them), valid split only."""
    hidden = calibration_hidden(executor, calibration_ids, window=window, max_windows=max_windows)
    entropy = fit_shortlist(executor, calibration_ids, k=k, hidden=hidden)
    if importance is None:
        importance = block_influence(executor, calibration_ids, window=window, max_windows=importance_windows)
    importance = importance.float()
    median = float(entropy.estimate(executor, hidden)[0].median()) / math.log(executor.adapter.dims.vocab)
    return Profiler(entropy, importance, executor, median)
