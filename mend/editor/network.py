"""The editor network: a small residual MLP over the concatenated factors ``[u; delta]``.

One network serves every edited matrix of one shape; per-matrix ("mode") scales and
shifts let it behave differently per layer (MEND paper §3.1, Eq. 3).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# One batch's moments: (row count, per-dimension mean, per-dimension sum of squared
# deviations), all float64.
Moments = tuple[Tensor, Tensor, Tensor]


def batch_moments(x: Tensor) -> Moments:
    """The moments of the rows of ``x`` (``(n, dim)``); zeros for an empty batch."""
    x = x.detach().double()
    n = torch.tensor(float(x.shape[0]), dtype=torch.float64, device=x.device)
    if x.shape[0] == 0:
        zeros = torch.zeros(x.shape[1], dtype=torch.float64, device=x.device)
        return n, zeros, zeros.clone()
    mean = x.mean(0)
    return n, mean, ((x - mean) ** 2).sum(0)


def merge_moments(a: Moments, b: Moments) -> Moments:
    """Chan et al.'s parallel update: the moments of the union of two batches."""
    n_a, mean_a, m2_a = a
    n_b, mean_b, m2_b = b
    if n_b.item() == 0:
        return a
    total = n_a + n_b
    diff = mean_b - mean_a
    mean = mean_a + diff * (n_b / total)
    m2 = m2_a + (m2_b + diff.pow(2) * (n_a * n_b / total))
    return total, mean, m2


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
        # Data-parallel training sets this (mend.distributed.norm_sync): it takes this
        # rank's batch moments and returns every rank's, in rank order, plus this rank's
        # index, so that all ranks keep identical statistics.
        self.sync: Callable[[Moments], tuple[list[Moments], int]] | None = None
        self._normalise_with: tuple[Tensor, Tensor] | None = None

    def _state(self) -> Moments:
        return self.count, self.mean, self.m2

    def _set_state(self, moments: Moments) -> None:
        count, mean, m2 = moments
        self.count.copy_(count)
        self.mean.copy_(mean)
        self.m2.copy_(m2)

    @torch.no_grad()
    def update(self, x: Tensor) -> None:
        """Fold rows of ``x`` (``(n, dim)``) into the statistics.

        With :attr:`sync` set, every rank's batch is merged in rank order, and the next
        forward normalises this rank's rows with the statistics a single process
        would have had for them: the earlier ranks' batches and its own, not the later
        ones (rank ``r`` holds the ``r``-th of the micro-batches run concurrently).
        """
        self._normalise_with = None
        mine = batch_moments(x)
        if self.sync is None:
            if mine[0].item() > 0:
                self._set_state(merge_moments(self._state(), mine))
            return
        every, rank = self.sync(mine)
        state = tuple(t.clone() for t in self._state())
        for index, moments in enumerate(every):
            state = merge_moments(state, moments)
            if index == rank and x.shape[0] > 0:
                count, mean, m2 = state
                self._normalise_with = (mean.clone(), (m2 / (count - 1)).sqrt())
        self._set_state(state)

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
        if self._normalise_with is not None:  # set by a synchronised update, used once
            mean, std = self._normalise_with
            self._normalise_with = None
        else:
            mean, std = self.mean, self.std()
        return (x - mean.to(x.dtype)) / (std.to(x.dtype) + self.eps)


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
        # F.linear rather than ``h @ W.T`` (same product): under ZeRO-3 DeepSpeed swaps
        # in a linear that saves the parameter, not its gathered copy, for backward.
        pre = F.linear(F.linear(h, self.down), self.up) + self.bias
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
