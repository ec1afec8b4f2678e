"""What a token gets instead of the work it skips: a cheap learned stand-in for a layer's (or an
FFN's) residual update, on a frozen base (in the spirit of FlexiDepth's adapters and
LLM-Streamline's replacement layers).

A bypass reads the RMS-normalised input of the skipped block, x = h / rms(h), and returns an
update u(x) that is added to the residual stream, h <- h + u(x), where the block would have added
its own. Families, from free to dearest:

    identity       u = 0                                   0 MACs (a skipped layer as before)
    diag_lowrank   u = d * x + B (A x) + b                  D + 2 r D MACs
    mlp            u = B silu(A x) + b                      2 r D MACs (a FlexiDepth-style bottleneck)
    linear         u = W x + b                             D^2 MACs

Every family except `mlp` is fitted by least squares from sufficient statistics of (x, u) pairs
collected on the valid split (`BypassStats`): ridge regression for `linear` (closed form); for
`diag_lowrank`, alternating least squares between the per-coordinate part and a reduced-rank
regression of what it leaves (the best rank-r map for these inputs, not a truncated SVD of W), ten
rounds from sufficient statistics (an approximation of the joint least-squares fit). `mlp` starts from the
reduced-rank solution.
Any family can then be tuned end to end with KL to the full model (`anee.engine.training.bypass`).

A `BypassBank` holds one bypass per layer, all of one family and size, so that skipping costs the
same at every layer (MACs counted like `anee.core.cost`: matrix products only).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .checkpoints import Checkpointable

FAMILIES = ("identity", "diag_lowrank", "mlp", "linear")
TARGETS = ("layer", "ffn")


def normalized(h: torch.Tensor) -> torch.Tensor:
    """The bypass input: h / rms(h) over the last axis (no learned scale)."""
    return F.rms_norm(h.float(), h.shape[-1:])


class Bypass(nn.Module):
    """One block's bypass: `forward(h)` is the update [..., D] of the stream h [..., D]."""

    rank: int = 0

    def forward(self, h: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def macs(self) -> int:
        raise NotImplementedError


class IdentityBypass(Bypass):
    def __init__(self, hidden: int, rank: int = 0):
        super().__init__()
        self.hidden = hidden

    def forward(self, h):
        return torch.zeros_like(h)

    @property
    def macs(self) -> int:
        return 0


class LinearBypass(Bypass):
    def __init__(self, hidden: int, rank: int = 0):
        super().__init__()
        self.proj = nn.Linear(hidden, hidden)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, h):
        return self.proj(normalized(h)).to(h.dtype)

    @property
    def macs(self) -> int:
        return self.proj.in_features * self.proj.out_features


class DiagLowRankBypass(Bypass):
    def __init__(self, hidden: int, rank: int):
        super().__init__()
        self.rank = rank
        self.diag = nn.Parameter(torch.zeros(hidden))
        self.bias = nn.Parameter(torch.zeros(hidden))
        self.down = nn.Linear(hidden, rank, bias=False)
        self.up = nn.Linear(rank, hidden, bias=False)
        nn.init.zeros_(self.down.weight)
        nn.init.zeros_(self.up.weight)

    def forward(self, h):
        x = normalized(h)
        return (self.diag * x + self.up(self.down(x)) + self.bias).to(h.dtype)

    @property
    def macs(self) -> int:
        D = self.diag.numel()
        return D + 2 * self.rank * D


class MLPBypass(Bypass):
    def __init__(self, hidden: int, rank: int):
        super().__init__()
        self.rank = rank
        self.down = nn.Linear(hidden, rank, bias=False)
        self.up = nn.Linear(rank, hidden)
        nn.init.zeros_(self.down.weight)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, h):
        return self.up(F.silu(self.down(normalized(h)))).to(h.dtype)

    @property
    def macs(self) -> int:
        return 2 * self.rank * self.up.out_features


CLASSES: dict[str, type[Bypass]] = {"identity": IdentityBypass, "linear": LinearBypass,
                                     "diag_lowrank": DiagLowRankBypass, "mlp": MLPBypass}


class BypassStats:
    """Sufficient statistics of (x, u) pairs for one block, in float64: the Gram matrix of the
    inputs with a bias column, and their cross products with the updates."""

    def __init__(self, hidden: int):
        self.gram = torch.zeros(hidden + 1, hidden + 1, dtype=torch.float64)
        self.cross = torch.zeros(hidden + 1, hidden, dtype=torch.float64)
        self.count = 0

    def add_(self, h: torch.Tensor, update: torch.Tensor) -> None:
        """Accumulate the pairs of block inputs h [..., D] and their updates [..., D] (in place)."""
        x = normalized(h).reshape(-1, h.shape[-1]).double()
        x = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1)
        self.gram += x.T @ x
        self.cross += x.T @ update.reshape(-1, update.shape[-1]).double()
        self.count += len(x)

    def ridge(self, ridge: float) -> torch.Tensor:
        """Least squares with a ridge of `ridge` x the mean input energy per coordinate: [D+1, D]
        (rows: weights of x, then the bias), the bias not penalised."""
        D = self.cross.shape[1]
        scale = float(self.gram.diagonal()[:D].mean())
        penalty = torch.eye(D + 1, dtype=torch.float64) * ridge * scale
        penalty[D, D] = 0.0
        return torch.linalg.solve(self.gram + penalty, self.cross)


def reduced_rank(stats: BypassStats, coef: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Best rank-`rank` restriction of the fitted map `coef` [D+1, D] for these inputs (reduced-rank
    regression): the top principal directions V [D, r] of the fitted updates; returns (down
    [D+1, r] = coef V, up [r, D] = V^T)."""
    fitted_cov = coef.T @ stats.gram @ coef  # covariance of x_a @ coef over the samples
    _, vecs = torch.linalg.eigh(fitted_cov)
    v = vecs[:, -rank:].flip(-1)
    return coef @ v, v.T


def _diag_lowrank_fit(s: BypassStats, rank: int, ridge: float, rounds: int = 10):
    """Alternating least squares for u ~ d * x + b + (x_a down) up: the per-coordinate slopes and
    intercepts given the low-rank part, then the reduced-rank regression of what they leave, from
    the sufficient statistics alone. Each round lowers the squared error; convergence is linear and
    slow (an exactly diagonal plus rank-r map needs ~200 rounds to be recovered to 1e-7), so a few
    rounds give an approximation that end-to-end tuning then refines.
    Returns (d [D], b [D], down [D+1, r], up [r, D])."""
    D, n = s.cross.shape[1], s.count
    sx, sxx = s.gram[D, :D], s.gram.diagonal()[:D]
    var = sxx - sx * sx / n
    low = torch.zeros(D + 1, D, dtype=torch.float64)  # the low-rank map, bias row last
    for _ in range(rounds):
        cross = s.cross - s.gram @ low  # statistics of x_a against what the low-rank part leaves
        sy, sxy = cross[D], cross[:D].diagonal()
        d = (sxy - sx * sy / n) / (var + ridge * float(var.mean()))
        b = (sy - d * sx) / n
        diag_map = torch.zeros(D + 1, D, dtype=torch.float64)
        diag_map[:D] = torch.diag(d)
        diag_map[D] = b
        residual = BypassStats(D)
        residual.gram, residual.count = s.gram, s.count
        residual.cross = s.cross - s.gram @ diag_map
        down, up = reduced_rank(residual, residual.ridge(ridge), rank)
        low = down @ up
    return d, b, down, up


@dataclass
class BypassConfig:
    family: str = "linear"
    rank: int = 0  # diag_lowrank, mlp
    target: str = "layer"  # "layer": h -> h_out - h; "ffn": post-attention stream -> mlp update
    ridge: float = 1e-2

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise ValueError(f"bypass family must be one of {FAMILIES}, got {self.family!r}")
        if self.target not in TARGETS:
            raise ValueError(f"bypass target must be one of {TARGETS}, got {self.target!r}")
        if (not isinstance(self.rank, int) or isinstance(self.rank, bool) or self.rank < 0
                or (self.family in ("diag_lowrank", "mlp")) != (self.rank > 0)):
            raise ValueError(f"rank must be a positive integer for diag_lowrank / mlp and 0 otherwise, "
                             f"got {self.rank!r}")
        if not self.ridge >= 0:
            raise ValueError(f"ridge must be >= 0, got {self.ridge!r}")

    @property
    def label(self) -> str:
        return self.family if not self.rank else f"{self.family}-{self.rank}"


def bypass_label(bank: BypassBank | None) -> str | None:
    """The label a checkpoint records for the layer bypass it ran with (None: none, skipped layers add nothing)."""
    return None if bank is None else bank.config.label


def check_same_bypass(trained: str | None, bank: BypassBank | None, source: str, fix: str) -> None:
    """ValueError unless `bank` has the family and rank of the bypass a checkpoint (`source`) was trained or
    fitted with; `trained` is the label it recorded (notebook 02 appends " tuned" to a tuned bank's; None: none)."""
    running = bypass_label(bank)
    if (trained.split()[0] if trained else None) != running:
        raise ValueError(f"{source} was trained with the layer bypass {trained!r}, "
                         f"the executor runs {running!r}: {fix}")


class BypassBank(Checkpointable, nn.Module):
    """One bypass per block of a model, all of one family and size."""

    FORMAT = "anee.bypass/1"
    FIX = "re-run notebook 02 to refit the bypass (or delete the file to rebuild it)"

    def __init__(self, config: BypassConfig, hidden: int, num_layers: int):
        super().__init__()
        # a low-rank factor wider than the stream it maps is no longer low rank (and cannot be fitted)
        if config.rank > hidden:
            raise ValueError(f"a {config.label} bypass needs rank <= the hidden size {hidden}: pass a smaller rank")
        self.config, self.hidden, self.num_layers = config, hidden, num_layers
        self.blocks = nn.ModuleList(CLASSES[config.family](hidden, config.rank) for _ in range(num_layers))
        self.info: dict = {}  # how it was fitted / tuned (tokens, steps): saved with it

    @property
    def family(self) -> str:
        return self.config.family

    @property
    def is_identity(self) -> bool:
        return self.config.family == "identity"

    @property
    def macs(self) -> int:
        """MACs per bypassed block per token (the same at every layer)."""
        return self.blocks[0].macs

    def update(self, layer: int, h: torch.Tensor) -> torch.Tensor:
        """The bypass update of block `layer` for the stream h [..., D]."""
        return self.blocks[layer](h)

    @torch.no_grad()
    def fit_(self, stats: list[BypassStats]) -> None:
        """Closed-form fit of every block from its statistics (in place); `mlp` gets the
        reduced-rank linear solution as its starting point (then needs tuning)."""
        if len(stats) != self.num_layers:
            raise ValueError(f"need statistics for {self.num_layers} blocks, got {len(stats)}")
        D = self.hidden
        for block, s in zip(self.blocks, stats):
            if self.family == "identity":
                continue
            if s.count <= D:
                raise ValueError(f"{s.count} samples cannot fit a {D}-dimensional bypass: collect more valid tokens")
            if self.family == "linear":
                coef = s.ridge(self.config.ridge)
                block.proj.weight.copy_(coef[:D].T.float())
                block.proj.bias.copy_(coef[D].float())
                continue
            if self.family == "diag_lowrank":
                d, b, down, up = _diag_lowrank_fit(s, self.config.rank, self.config.ridge)
                block.diag.copy_(d.float())
                block.bias.copy_((b + down[D] @ up).float())
                block.down.weight.copy_(down[:D].T.float())
                block.up.weight.copy_(up.T.float())
                continue
            # mlp: silu(z) ~ z/2 + z^2/4 near 0; start from the reduced-rank linear map at half slope x2
            down, up = reduced_rank(s, s.ridge(self.config.ridge), self.config.rank)
            block.down.weight.copy_(down[:D].T.float() * 0.1)
            block.up.weight.copy_(up.T.float() * 20.0)
            block.up.bias.copy_((down[D] @ up).float())

    # -- checkpoints -------------------------------------------------------------------------------
    def checkpoint_config(self) -> dict:
        return {**asdict(self.config), "hidden": self.hidden, "num_layers": self.num_layers, "info": self.info}

    @classmethod
    def from_config(cls, config: dict, hidden: int | None = None, num_layers: int | None = None) -> BypassBank:
        for key, want in (("hidden", hidden), ("num_layers", num_layers)):
            if want is not None and config[key] != want:
                raise ValueError(f"{key}={config[key]!r} does not match the model's {want}")
            if not isinstance(config[key], int) or config[key] < 1:
                raise ValueError(f"{key} must be a positive integer, got {config[key]!r}")
        bank = cls(BypassConfig(config["family"], config["rank"], config["target"], config["ridge"]), config["hidden"],
                   config["num_layers"])
        bank.info = dict(config.get("info", {}))
        return bank
