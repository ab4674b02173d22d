"""Gradient decomposition: the per-token factors ``(u, delta)`` of an edit's weight gradient.

For an edited layer ``y = W x``, the gradient of the edit loss is
``dL/dW = sum_i delta_i u_i^T`` over token positions ``i``, with ``u_i = x_i`` and
``delta_i = dL/dy_i``. We record both from activations with module hooks, never
from ``W.grad``, so the same code runs when ``W`` itself is sharded (ZeRO-3), and no
weight gradient is ever computed.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from mend.models.targets import EditTarget
from mend.models.tasks import Task, TokenBatch

TokenMode = Literal["all", "target"]


@dataclass
class Factors:
    """Rank-1 factors of one layer's gradient: ``dL/dW = delta.T @ u``."""

    u: Tensor  # (n, d_in): layer inputs of the kept tokens
    delta: Tensor  # (n, d_out): gradients at the layer output, same tokens
    example: Tensor  # (n,): index of the batch example each row belongs to

    @property
    def rows(self) -> int:
        return self.u.shape[0]


@dataclass
class Capture:
    factors: dict[str, Factors]
    loss: Tensor  # detached edit loss of the batch
    per_example_loss: Tensor

    @staticmethod
    def cat(parts: Sequence[Capture], examples: Sequence[Sequence[int]] | None = None) -> Capture:
        """One capture of several batches, examples renumbered across them: consecutive,
        or ``examples[i][j]`` is the number of part ``i``'s example ``j`` (its rows then
        come in the order of one batch: by example, each example's in its own order).

        Exact because the loss is a sum of per-example losses: each example's factors
        do not depend on the others in its batch.
        """
        if len(parts) == 1 and (examples is None or list(examples[0]) == list(range(len(examples[0])))):
            return parts[0]  # already one batch in order (a single edit, say)
        if examples is None:
            offsets = torch.cumsum(torch.tensor([0] + [p.per_example_loss.shape[0] for p in parts]), 0)
            examples = [range(int(offsets[i]), int(offsets[i + 1])) for i in range(len(parts))]
        numbers = [torch.as_tensor(list(e), dtype=torch.long) for e in examples]
        per_example = torch.cat([p.per_example_loss for p in parts])
        per_example = per_example.new_empty(per_example.shape).index_copy_(0, torch.cat(numbers).to(per_example.device),
                                                                             per_example)
        factors: dict[str, Factors] = {}
        for name in parts[0].factors:
            fs = [p.factors[name] for p in parts]
            example = torch.cat([n.to(f.example.device)[f.example] for n, f in zip(numbers, fs, strict=True)])
            order = torch.argsort(example, stable=True)
            factors[name] = Factors(torch.cat([f.u for f in fs])[order], torch.cat([f.delta for f in fs])[order],
                                    example[order])
        return Capture(factors, sum(p.loss for p in parts), per_example)


@contextmanager
def record_layer_io(
    model: nn.Module, module_names: Sequence[str]
) -> Iterator[dict[str, tuple[Tensor, Tensor]]]:
    """Record ``(input, output)`` of the named modules during the enclosed forward pass.

    When nothing upstream of a module requires grad (a frozen base model), its input is
    turned into a fresh leaf that does, so that the output is part of the autograd graph
    while no weight of the model needs a gradient.
    """
    records: dict[str, tuple[Tensor, Tensor]] = {}
    handles = []

    def pre_hook(module, args):
        x = args[0]
        if torch.is_grad_enabled() and not x.requires_grad:
            return (x.detach().requires_grad_(True), *args[1:])
        return None

    def make_hook(name: str):
        def hook(module, args, output):
            if name in records:
                raise RuntimeError(
                    f"module {name} ran twice in one pass; shared modules cannot be edited"
                )
            records[name] = (args[0], output)

        return hook

    try:
        for name in module_names:
            module = model.get_submodule(name)
            handles.append(module.register_forward_pre_hook(pre_hook))
            handles.append(module.register_forward_hook(make_hook(name)))
        yield records
    finally:
        for handle in handles:
            handle.remove()


def capture_factors(
    model: nn.Module,
    task: Task,
    targets: Sequence[EditTarget],
    batch: TokenBatch,
    token_mode: TokenMode = "all",
) -> Capture:
    """Run the edit loss forward and backward once and return each target's factors.

    ``token_mode="all"`` keeps every token whose output reaches the loss (MEND's
    default: rows where ``u`` or ``delta`` is zero are dropped, as in the original);
    ``"target"`` keeps only the positions whose predictions are scored (MALMEN's
    ``ans``). Encoder modules of seq2seq models always use every input token.
    """
    names = [t.module_name for t in targets]
    with torch.enable_grad(), record_layer_io(model, names) as records:
        per_example = task.scored(model, batch).nll()
        loss = per_example.sum()
    missing = [n for n in names if n not in records]
    if missing:
        raise RuntimeError(f"edited modules did not run in the forward pass: {missing}")
    outputs = [records[n][1] for n in names]
    # Summing per-example mean NLLs (not MEND's batch mean) keeps each edit's factors the
    # same whether it is made alone or among k simultaneous edits.
    grads = torch.autograd.grad(loss, outputs, allow_unused=True)

    factors = {}
    for target, grad in zip(targets, grads, strict=True):
        x, y = records[target.module_name]
        if grad is None:
            grad = torch.zeros_like(y)
        sequence = task.sequence_of(target.module_name)
        if token_mode == "target" and sequence == task.scored_sequence:
            keep = batch.scored_masks[sequence]
        else:
            keep = batch.sequence_masks[sequence]
        u, delta = x.detach(), grad.detach()
        keep = keep & (delta != 0).any(-1) & (u != 0).any(-1)
        example = torch.arange(keep.shape[0], device=keep.device)[:, None].expand_as(keep)
        factors[target.module_name] = Factors(u[keep], delta[keep], example[keep])
    return Capture(factors, loss.detach(), per_example.detach())
