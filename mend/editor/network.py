"""The editor network: a small residual MLP over the concatenated factors ``[u; delta]``.

One network serves every edited matrix of one shape; per-matrix ("mode") scales and
shifts let it behave differently per layer (MEND paper §3.1, Eq. 3).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn


class RunningNorm(nn.Module):
    """Per-dimension running mean and variance, saved with the editor.

    Statistics merge a whole batch at once (Chan et al.'s parallel update) instead of
    MEND's per-row Python loop. They live in buffers, so they are part of the state dict
    and survive save/load and resume; the original kept its "initialised" flag outside
    the state and restarted the statistics on resume.
    """

    def __init__(self, dim: int, eps: float = 1e-7):
        super().__init__()
        self.eps = eps
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))
        self.register_buffer("mean", torch.zeros(dim, dtype=torch.float64))
        self.register_buffer("m2", torch.zeros(dim, dtype=torch.float64))

    @torch.no_grad()
    def update(self, x: Tensor) -> None:
        """Fold rows of ``x`` (``(n, dim)``) into the statistics."""
        if x.shape[0] == 0:
            return
        x = x.detach().double()
        n_b = x.shape[0]
        mean_b = x.mean(0)
        m2_b = ((x - mean_b) ** 2).sum(0)
        n_a = self.count.item()
        total = n_a + n_b
        diff = mean_b - self.mean
        self.mean += diff * (n_b / total)
        self.m2 += m2_b + diff.pow(2) * (n_a * n_b / total)
        self.count.fill_(total)

    @property
    def ready(self) -> bool:
        return self.count.item() >= 2

    def std(self) -> Tensor:
        return (self.m2 / (self.count - 1)).sqrt()

    def forward(self, x: Tensor) -> Tensor:
        if not self.ready:
            raise RuntimeError(
                "editor normalisation statistics are empty: meta-train the editor or call "
                "Editor.fit_normalization() on a few edit examples first"
            )
        mean = self.mean.to(x.dtype)
        std = self.std().to(x.dtype)
        return (x - mean) / (std + self.eps)


class ResidualLowRankBlock(nn.Module):
    """``h + relu(scale_m * (U V h + b) + shift_m)`` with ``U`` zero at init (identity)."""

    def __init__(
        self, dim: int, rank: int, n_modes: int, down_init: Literal["normal", "xavier"]
    ):
        super().__init__()
        down = torch.empty(rank, dim)
        if down_init == "normal":
            # MEND's code draws V from N(0, 1) (its paper says Xavier).
            nn.init.normal_(down)
        else:
            nn.init.xavier_uniform_(down)
        self.down = nn.Parameter(down)
        self.up = nn.Parameter(torch.zeros(dim, rank))
        self.bias = nn.Parameter(torch.zeros(dim))
        self.mode_scale = nn.Parameter(torch.ones(n_modes, dim))
        self.mode_shift = nn.Parameter(torch.zeros(n_modes, dim))

    def forward(self, h: Tensor, mode: Tensor) -> Tensor:
        pre = (h @ self.down.T) @ self.up.T + self.bias
        pre = pre * self.mode_scale[mode] + self.mode_shift[mode]
        # clamp, not relu: at identity init the pre-activation is exactly 0, where relu's
        # gradient is 0 and U would never leave zero; clamp passes the gradient at 0.
        return h + pre.clamp(min=0)


class FactorEditor(nn.Module):
    """Transforms ``(u, delta)`` rows of every matrix of one shape into ``(u~, delta~)``."""

    def __init__(
        self,
        d_in: int,
        d_out: int,
        n_modes: int,
        rank: int,
        n_blocks: int,
        down_init: Literal["normal", "xavier"] = "normal",
        norm_eps: float = 1e-7,
    ):
        super().__init__()
        self.d_in, self.d_out = d_in, d_out
        dim = d_in + d_out
        self.norm = RunningNorm(dim, norm_eps)
        rank = min(rank, dim)
        self.blocks = nn.ModuleList(
            ResidualLowRankBlock(dim, rank, n_modes, down_init) for _ in range(n_blocks)
        )

    def forward(
        self, u: Tensor, delta: Tensor, mode: Tensor, update_stats: bool = False
    ) -> tuple[Tensor, Tensor]:
        z = torch.cat([u, delta], dim=-1).float()
        if update_stats:
            self.norm.update(z)
        h = self.norm(z)
        for block in self.blocks:
            h = block(h, mode)
        return h[:, : self.d_in], h[:, self.d_in :]
