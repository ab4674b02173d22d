"""Meta-training losses and the teacher-forced metrics logged with them."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from mend.models.tasks import IGNORE


def kl_on_scored(pre_logits: Tensor, post_logits: Tensor, labels: Tensor, reduction: str = "mean") -> Tensor:
    """``KL(pre || post)`` summed over the vocabulary, averaged (or summed) over scored
    positions.

    The pre-edit distribution comes first (MEND's locality loss): the edit is penalised
    for moving probability mass away from what the unedited model predicted.
    """
    mask = labels != IGNORE
    if not mask.any():
        return post_logits.sum() * 0.0
    pre = F.log_softmax(pre_logits[mask].float(), -1)
    post = F.log_softmax(post_logits[mask].float(), -1)
    per_position = (pre.exp() * (pre - post)).sum(-1)
    return per_position.sum() if reduction == "sum" else per_position.mean()


@torch.no_grad()
def token_hits(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Per example: fraction of scored tokens whose argmax is the label, and whether all are."""
    mask = labels != IGNORE
    hits = (logits.argmax(-1) == labels) & mask
    counts = mask.sum(1).clamp_min(1)
    return hits.sum(1) / counts, hits.sum(1) == mask.sum(1)


@torch.no_grad()
def argmax_agreement(pre_logits: Tensor, post_logits: Tensor, labels: Tensor) -> Tensor:
    """Per example: fraction of scored positions whose argmax did not change."""
    mask = labels != IGNORE
    same = (pre_logits.argmax(-1) == post_logits.argmax(-1)) & mask
    return same.sum(1) / mask.sum(1).clamp_min(1)
