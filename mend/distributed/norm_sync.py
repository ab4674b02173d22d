"""Identical editor normalisation statistics on every rank.

Each rank folds its own micro-batch's factors into the editor's running statistics
(:class:`~mend.editor.network.RunningNorm`). Left alone, ranks would drift apart and
the trained editor would depend on the number of ranks. Instead, every update gathers
the batch moments ``(n, mean, m2)`` of all ranks and merges them in rank order; rank
``r`` normalises its rows with the merge of ranks ``0..r`` (what one process running
the same micro-batches one after another would have used) and all ranks keep the merge
of all of them. Only ``2 * dim + 1`` numbers per network and rank travel.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from mend.editor.network import Moments, RunningNorm


class AllGatherMoments:
    """``RunningNorm.sync`` over a process group."""

    def __init__(self, group=None):
        self.group = group

    def __call__(self, moments: Moments) -> tuple[list[Moments], int]:
        n, mean, m2 = moments
        packed = torch.cat([n.reshape(1), mean, m2]).to(torch.float64)
        world = dist.get_world_size(self.group)
        parts = [torch.empty_like(packed) for _ in range(world)]
        dist.all_gather(parts, packed.contiguous(), group=self.group)
        dim = mean.numel()
        every = [(p[0], p[1 : 1 + dim], p[1 + dim :]) for p in parts]
        return every, dist.get_rank(self.group)


def sync_norms(module: nn.Module, group=None) -> int:
    """Make every :class:`RunningNorm` in ``module`` merge statistics across ranks.

    Returns how many were set. A no-op outside a multi-rank process group.
    """
    if not dist.is_initialized() or dist.get_world_size(group) == 1:
        return 0
    norms = [m for m in module.modules() if isinstance(m, RunningNorm)]
    for norm in norms:
        norm.sync = AllGatherMoments(group)
    return len(norms)
