"""Forwards of inputs seen before reuse the blocks no edit touches.

Judging a batch of corrections runs the same inputs through the model again and again:
a correction's prompt when its gradient is captured, at each strength tried and when the
policy judges it; each locality probe before and after the batch is applied. Edits only
ever change the editor's target matrices, so every decoder block below the lowest of
them computes the base model's states whatever is applied. Inside
:func:`reusing_unedited_blocks` each sequence's states below that block are kept the
first time they are computed, and a later forward whose sequences were all seen runs
only the edited blocks and those above; the blocks below hand back the kept states. A
sequence seen only as the beginning of a longer one (a prompt after its prompt + target
ran) is seen too: in a causal model a position's state depends on the positions up to
it alone.

Kept are the states leaving the last unedited block and those leaving any unedited block
that has a forward hook or is named in ``keep`` (routing reads the scope block's), one
tensor per sequence and block, so a sequence is found again in any batch it comes back
in. A forward replays up to the highest block the whole batch kept (a forward stopped at
the scope block kept only that one) and runs the rest from there. It replays only when
that is exact: a decoder-only model, no key/value cache (``use_cache=False``, as scoring
calls it), right padding (every real position precedes the padding, as the scoring tasks
pad), no hook inside a replayed block, and no gradient wanted from an unedited block.
Anything else runs as usual; an in-place write to an unedited block's weights discards
what was kept.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from mend.models.blocks import decoder_blocks
from mend.models.editable import EditableModel
from mend.models.targets import layer_template

_ATTR = "_mend_unedited_blocks"


@contextmanager
def reusing_unedited_blocks(model: EditableModel, keep: Sequence[int] = ()) -> Iterator[None]:
    """Within the block, forwards of ``model`` reuse the states below its edited blocks
    for every sequence seen before (nested uses share the outer one's states).

    ``keep``: blocks whose states are kept even while nothing hooks them yet, for forwards
    that will hook them later (routing reads the scope block once a scoped edit is in)."""
    net = model.model
    if net.__dict__.get(_ATTR) is not None:
        yield
        return
    reuse = _Reuse.for_model(model, keep)
    if reuse is None:
        yield
        return
    net.__dict__[_ATTR] = reuse
    reuse.attach()
    try:
        yield
    finally:
        reuse.detach()
        del net.__dict__[_ATTR]


class _Reuse:
    """The kept states of one model, and the patches that record and replay them."""

    def __init__(self, net: nn.Module, blocks: nn.ModuleList, first_edited: int, keep: Sequence[int] = ()):
        self.net, self.blocks, self.first = net, blocks, first_edited
        self.keep = {first_edited - 1, *(k for k in keep if 0 <= k < first_edited)}
        self.kept: dict[tuple[int, ...], dict[int, Tensor]] = {}  # sequence -> block -> (T, d)
        self.longer: dict[tuple[int, ...], tuple[int, ...]] = {}  # a kept sequence's beginning -> it
        self._weights = [p for i in range(first_edited) for p in blocks[i].parameters()]
        self._versions = self._weight_versions()
        self._handles: list = []
        self._forward: _Plan | None = None  # the forward pass under way

    @classmethod
    def for_model(cls, model: EditableModel, keep: Sequence[int] = ()) -> _Reuse | None:
        net = model.model
        if model.kind != "causal":
            return None
        try:
            blocks = decoder_blocks(net)
        except ValueError:
            return None
        prefix = next(name for name, module in net.named_modules() if module is blocks)
        names = [t.module_name for t in model.targets]
        if not names or not all(name.startswith(prefix + ".") for name in names):
            return None  # a target outside the blocks (embeddings, head): nothing is safe to reuse
        first = min(layer_template(name)[1] for name in names)
        return cls(net, blocks, first, keep) if first > 0 else None

    def attach(self) -> None:
        self._handles = [
            self.net.register_forward_pre_hook(self._begin, with_kwargs=True),
            self.net.register_forward_hook(self._end, always_call=True),
        ]
        for i in range(self.first):
            block = self.blocks[i]
            block.forward = self._patched(i, block.forward)

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        for i in range(self.first):
            del self.blocks[i].forward  # back to the class's own forward
        self.kept.clear()
        self.longer.clear()

    # -- one forward pass ------------------------------------------------------------
    def _begin(self, module, args, kwargs):
        versions = self._weight_versions()
        if versions != self._versions:  # an unedited block's weights changed in place: start over
            self.kept.clear()
            self.longer.clear()
            self._versions = versions
        self._forward = self._plan(kwargs.get("input_ids", args[0] if args else None), kwargs)
        return None

    def _weight_versions(self) -> list[int]:
        # In-place writes bump a tensor's version counter: a method that edits these
        # blocks (MEMIT's layers, say) makes everything kept stale.
        return [p._version for p in self._weights]

    def _end(self, module, args, output):
        self._forward = None

    def _plan(self, input_ids: Tensor | None, kwargs: dict) -> _Plan | None:
        if input_ids is None or kwargs.get("inputs_embeds") is not None or kwargs.get("position_ids") is not None:
            return None
        if kwargs.get("past_key_values", kwargs.get("cache")) is not None or kwargs.get("use_cache") is not False:
            return None  # a key/value cache would miss the replayed blocks' entries
        attention = kwargs.get("attention_mask")
        mask = torch.ones_like(input_ids, dtype=torch.bool) if attention is None else attention.bool()
        if mask.dim() != 2 or mask.shape != input_ids.shape:
            return None
        lengths = mask.sum(1)
        if not torch.equal(mask, torch.arange(mask.shape[1], device=mask.device) < lengths.unsqueeze(1)):
            return None  # not right-padded
        sequences = [tuple(row[:n].tolist()) for row, n in zip(input_ids, lengths.tolist(), strict=True)]
        found = [self._found(s) for s in sequences]
        common = set.intersection(*(set(f) for f in found)) if found else set()
        return _Plan(sequences, lengths.tolist(), mask.shape[1], self._replayable_upto(common), common, found)

    def _found(self, sequence: tuple[int, ...]) -> dict[int, Tensor]:
        """Block -> kept states of ``sequence``, kept for itself or as a longer one's beginning."""
        longer = self.longer.get(sequence)
        found = {} if longer is None else {block: rows[: len(sequence)] for block, rows in self.kept[longer].items()}
        found.update(self.kept.get(sequence, {}))
        return found

    def _keep(self, sequence: tuple[int, ...], block: int, rows: Tensor) -> None:
        if sequence not in self.kept:
            for end in range(1, len(sequence)):
                self.longer.setdefault(sequence[:end], sequence)
        self.kept.setdefault(sequence, {})[block] = rows

    def _replayable_upto(self, common: set[int]) -> int:
        """The highest unedited block whose states can be handed back for the whole batch
        (-1: none): every sequence kept it, and every hooked block below it; blocks above
        it run as usual from its states (a forward stopped at the scope block kept that
        block only)."""
        if not common or self._gradient_wanted():
            return -1
        hooked = []
        below = self.first  # replay stops under a block with hooks inside (they would not run)
        for i in range(self.first):
            block = self.blocks[i]
            if any(m._forward_hooks or m._forward_pre_hooks for m in block.modules() if m is not block):
                below = i
                break
            if block._forward_hooks:
                hooked.append(i)
        for j in sorted(common, reverse=True):
            if j < below and all(h in common for h in hooked if h <= j):
                return j
        return -1

    def _gradient_wanted(self) -> bool:
        return torch.is_grad_enabled() and any(
            p.requires_grad for i in range(self.first) for p in self.blocks[i].parameters()
        )

    def _patched(self, i: int, forward):
        def run(hidden_states, *args, **kwargs):
            plan = self._forward
            if plan is None or hidden_states.shape[:2] != (len(plan.sequences), plan.width):
                return forward(hidden_states, *args, **kwargs)
            if i <= plan.upto:  # the blocks in between only hand on what the next one ignores
                return plan.states(i if i in plan.common else plan.upto, hidden_states)
            output = forward(hidden_states, *args, **kwargs)
            if isinstance(output, Tensor) and not output.requires_grad and (i in self.keep or
                                                                              self.blocks[i]._forward_hooks):
                for sequence, n, row in zip(plan.sequences, plan.lengths, output, strict=True):
                    self._keep(sequence, i, row[:n].clone())
            return output

        return run


class _Plan:
    """How the forward under way runs its unedited blocks: replayed up to block ``upto``
    (-1: none), run as usual above it."""

    def __init__(self, sequences: list[tuple[int, ...]], lengths: list[int], width: int, upto: int,
                 common: set[int], found: list[dict[int, Tensor]]):
        self.sequences, self.lengths, self.width = sequences, lengths, width
        self.upto, self.common = upto, common  # common: the blocks every sequence kept
        self.found = found  # per sequence, block -> its kept states
        self._assembled: dict[int, Tensor] = {}

    def states(self, block: int, like: Tensor) -> Tensor:
        """The kept states of ``block`` for this batch, zero past each sequence's end."""
        if block not in self._assembled:
            out = like.new_zeros(len(self.sequences), self.width, like.shape[-1])
            for row, (found, n) in enumerate(zip(self.found, self.lengths, strict=True)):
                out[row, :n] = found[block]
            self._assembled[block] = out
        return self._assembled[block]
