"""Routing in the forward pass: each sequence sees only the corrections in its scope.

Scoped edits hooked into one model share one :class:`RoutedChanges`. Per forward pass
of a new sequence (no cached keys yet), a hook on the scope model's block embeds every
prompt token, scores each stored correction by its best token (see
:mod:`mend.scope.model`) and switches on, for that sequence, the corrections at or above
the threshold for that many stored corrections, or at or above the subject threshold
when the prompt names the correction's subject and (with a relation key) its last prompt
token asks the correction's question (at most ``max_active``, the best first);
teacher-forced scoring marks which positions are the prompt
(:mod:`mend.models.prompt_window`). Hooks on the edited matrices then add only those
corrections' rows, so a sequence matching nothing is computed
exactly as by the base model. Generation keeps the decision made on the prompt for
every token it adds (later forwards carry a non-empty cache).

The search is one matrix product of the prompt's token embeddings with every stored
key: at tens of thousands of corrections that is a small fraction of a forward pass.
Far beyond, an approximate nearest-neighbour index (FAISS, hnswlib) over the same keys
would replace the product without changing anything else.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from mend.deltas import LowRankDelta
from mend.models.attached import Attached
from mend.models.batching import by_length
from mend.models.blocks import block_output, decoder_blocks
from mend.models.editable import EditableModel
from mend.models.prompt_window import current_prompt_window
from mend.models.targets import layer_template
from mend.scope.model import ScopeModel
from mend.scope.scores import last_positions
from mend.scope.states import StopForward
from mend.scope.subjects import cat_padded, gated


def lowest_edited_block(module_names: Iterable[str]) -> int:
    """The lowest decoder block among ``module_names``: a scope must read a block below it,
    so that the router decides from states no edit has touched yet."""
    return min(layer_template(name)[1] for name in module_names)


@dataclass
class _Index:
    """Every hooked scoped change's keys and rows, numbered by one global request index."""

    keys: Tensor  # (m, dim) unit-length
    key_owner: Tensor  # (m,) global request of each key
    subjects: Tensor  # (m, variants, tokens) spellings of each key's subject, -1 padded
    relations: Tensor  # (m, width) relation keys (width 0: the scope model has none)
    n_requests: int
    rows: dict[str, tuple[Tensor, Tensor, Tensor]]  # module -> (u, v, start) rows sorted by request


@dataclass
class Routing:
    """The corrections switched on for each sequence of the current forward pass."""

    active: list[Tensor]  # per sequence, global request indices
    scores: Tensor  # (B, n_requests) best-token cosine per correction that passes (else -2)


@torch.no_grad()
def route(
    scope: ScopeModel,
    queries: Tensor,
    usable: Tensor,
    sequences: list[list[int]],
    keys: Tensor,
    key_owner: Tensor,
    subjects: Tensor,
    n_requests: int,
    asked: Tensor | None = None,
    relations: Tensor | None = None,
) -> Routing:
    """The routing rule: which of ``n_requests`` corrections each sequence switches on.

    ``queries`` (B, T, dim) are the sequences' embedded token states and ``usable``
    (B, T) the positions that may match; ``sequences`` their prompt tokens (for the
    subject test); ``keys`` (m, dim) the stored keys, ``key_owner`` (m,) the request of
    each and ``subjects`` their subjects' spellings; with a scope model that has a relation
    key, ``asked`` (B, width) the relation embeddings of the sequences' last prompt tokens
    and ``relations`` (m, width) the keys'. Used in the forward pass and by adapter
    routers in front of multi-LoRA servers (:mod:`mend.export.routed_peft`)."""
    config = scope.config
    b = queries.shape[0]
    sims = queries @ keys.to(queries.device).T  # (B, T, m)
    sims = sims.masked_fill(~usable.unsqueeze(-1), -2.0).amax(1)  # (B, m)
    if scope.has_relation and (asked is None or relations is None):
        raise ValueError("this scope model has a relation key: routing needs the requests' and the keys' relations")
    related = scope.related(asked, relations) if scope.has_relation else None
    passing = gated(sims, sequences, subjects, config.threshold_at(n_requests), config.subject_threshold,
                    related=related)
    scores = torch.full((b, n_requests), -2.0, device=sims.device)
    owner = key_owner.to(sims.device).expand(b, -1)
    scores = scores.scatter_reduce(1, owner, sims.masked_fill(~passing, -2.0), reduce="amax")
    active = []
    for row in scores:
        hits = (row > -2.0).nonzero().flatten()
        if len(hits) > config.max_active:
            hits = hits[row[hits].topk(config.max_active).indices]
        active.append(hits[row[hits].argsort(descending=True)].cpu())  # the best first
    return Routing(active, scores)


class RoutedChanges(Attached):
    """The scoped changes hooked into one model, and the hooks that route them."""

    _ATTR = "_mend_routed_changes"

    def __init__(self, model: nn.Module):
        super().__init__(model)
        self.changes: dict[object, object] = {}  # key -> ScopedChange, in application order
        self.scope: ScopeModel | None = None
        self._index: _Index | None = None
        self._routing_handles: list = []  # the model's pre-hook and the scope block's hook
        self._module_handles: dict[str, object] = {}  # edited module -> its hook
        self._fresh = True
        self._attention: Tensor | None = None
        self._input_ids: Tensor | None = None
        self._plan: dict[str, tuple[Tensor, Tensor]] = {}
        self.last: Routing | None = None

    # -- what is hooked in -----------------------------------------------------------
    def add(self, key: object, change) -> None:
        if key in self.changes:
            raise ValueError("this edit is already applied")
        scope = change.scope
        if self.scope is not None and scope.fingerprint() != self.scope.fingerprint():
            raise ValueError("scoped edits made with different scope models cannot be applied together")
        blocks = decoder_blocks(self.model)
        edited = lowest_edited_block(change.modules)
        if edited <= scope.config.layer:
            raise ValueError(
                f"the scope model reads block {scope.config.layer}, but the edit changes block {edited}: "
                "routing needs every edited block above the one it reads"
            )
        if not self._routing_handles:
            self.scope = scope
            self._routing_handles = [
                self.model.register_forward_pre_hook(self._note_inputs, with_kwargs=True),
                blocks[scope.config.layer].register_forward_hook(self._route),
            ]
        for name in change.modules:
            if name not in self._module_handles:
                self._module_handles[name] = self.model.get_submodule(name).register_forward_hook(self._contribute(name))
        self.changes[key] = change
        self._index, self._plan = None, {}

    def remove(self, key: object) -> None:
        if self.changes.pop(key, None) is None:
            return
        self._index, self._plan = None, {}
        if not self.changes:
            for handle in [*self._routing_handles, *self._module_handles.values()]:
                handle.remove()
            self._routing_handles, self._module_handles = [], {}
            self.scope = None

    def index(self) -> _Index:
        """The global index over every hooked change (rebuilt after an add or remove)."""
        if self._index is None:
            self._index = self._build()
        return self._index

    def _build(self) -> _Index:
        keys, owners, subjects, relations, per_module, offset = [], [], [], [], {}, 0
        for change in self.changes.values():
            keys.append(change.keys)
            owners.append(change.key_request + offset)
            subjects.append(change.subjects)
            relations.append(change.relations)
            for name, delta in change.deltas().items():
                per_module.setdefault(name, []).append(LowRankDelta(delta.u, delta.v, delta.example + offset))
            offset += change.n_requests
        rows = {}
        for name, parts in per_module.items():
            merged = LowRankDelta.cat(parts)
            owner = merged.example
            u, v = merged.u, merged.v
            # Edits keep their rows in request order, so this is rarely needed; gathering
            # anyway would copy every row's values, and with them their graph while refining.
            if len(owner) > 1 and not bool((owner[1:] >= owner[:-1]).all()):
                order = torch.argsort(owner, stable=True)
                owner, u, v = owner[order], u[order], v[order]
            start = torch.searchsorted(owner, torch.arange(offset + 1))
            rows[name] = (u, v, start)
        return _Index(torch.cat(keys), torch.cat(owners), cat_padded(subjects), torch.cat(relations), offset, rows)

    # -- deciding on the prompt ------------------------------------------------------
    def _note_inputs(self, module, args, kwargs):
        cache = kwargs.get("cache", kwargs.get("past_key_values"))  # transformers 5 names it ``cache``
        self._fresh = cache is None or not hasattr(cache, "get_seq_length") or cache.get_seq_length() == 0
        self._attention = kwargs.get("attention_mask")
        self._input_ids = kwargs.get("input_ids", args[0] if args else None)
        return None

    def _route(self, module, args, output) -> None:
        if not self._fresh:
            return  # generation goes on under the decision made on its prompt
        hidden = block_output(output).detach()
        # Built here, not inside ``decide`` (no_grad): rows whose values require grad
        # (:mod:`mend.scope.landing`) keep their graph into the forward pass.
        self.index()
        self.last = self.decide(hidden, self._attention, current_prompt_window(self.model), self._input_ids)
        self._plan = self._gather(self.last.active, hidden.shape[0])

    @torch.no_grad()
    def decide(
        self,
        hidden: Tensor,
        attention: Tensor | None = None,
        prompt_mask: Tensor | None = None,
        input_ids: Tensor | None = None,
    ) -> Routing:
        """Which corrections each sequence of ``hidden`` (B, T, d_model) falls within."""
        scope, index = self.scope, self.index()
        config = scope.config
        b, t, _ = hidden.shape
        real = torch.ones(b, t, dtype=torch.bool, device=hidden.device) if attention is None else attention.bool()
        if real.shape[1] != t:  # a mask longer than this forward's inputs (not expected)
            real = real[:, -t:]
        position = real.long().cumsum(1) - 1  # index among the real tokens, left padding or right
        usable = real & (position >= config.skip_first)
        window = real if prompt_mask is None else real & prompt_mask.to(real.device).bool()
        usable &= window
        sequences = [row[keep].tolist() for row, keep in zip(input_ids, window, strict=True)] \
            if input_ids is not None else [[] for _ in range(b)]
        # What each sequence asks: its last prompt token (the last real one if none is marked).
        last = torch.where(window.any(1), last_positions(window), last_positions(real))
        asked = scope.embed_relation(hidden[torch.arange(b, device=hidden.device), last])
        return route(scope, scope.embed(hidden), usable, sequences, index.keys, index.key_owner, index.subjects,
                     index.n_requests, asked, index.relations)

    def _gather(self, active: list[Tensor], batch: int) -> dict[str, tuple[Tensor, Tensor]]:
        """Per module, the switched-on rows of each sequence, zero-padded to one width.

        One gather per module for the whole batch: values being refined
        (:mod:`mend.scope.landing`) carry a graph over every stored row, and each
        separate pick would give the backward pass its own index-sized gradient."""
        if not any(len(a) for a in active):
            return {}
        requests = torch.cat([a.long() for a in active])
        sequence = torch.repeat_interleave(torch.arange(batch), torch.tensor([len(a) for a in active]))
        plan = {}
        for name, (u, v, start) in self.index().rows.items():
            first, count = start[requests], start[requests + 1] - start[requests]
            per_sequence = torch.zeros(batch, dtype=torch.long).index_add_(0, sequence, count)
            width = int(per_sequence.max())
            if width == 0:
                continue
            # Row k of the picks: the (k - where its request's rows begin among the
            # picks)-th row of that request, at the next free slot of its sequence.
            owner = torch.repeat_interleave(torch.arange(len(requests)), count)
            begins = torch.cumsum(count, 0) - count
            rows = first[owner] + torch.arange(len(owner)) - begins[owner]
            row_sequence = sequence[owner]
            slot = torch.arange(len(owner)) - (torch.cumsum(per_sequence, 0) - per_sequence)[row_sequence]
            us = u.new_zeros(batch, width, u.shape[1]).index_put((row_sequence, slot), u[rows])
            vs = v.new_zeros(batch, width, v.shape[1]).index_put((row_sequence, slot), v[rows])
            plan[name] = (us, vs)
        return plan

    def _contribute(self, name: str):
        def hook(module, args, output):
            planned = self._plan.get(name)
            if planned is None:
                return output
            x = args[0]
            us, vs = planned
            if us.shape[0] != x.shape[0]:
                raise RuntimeError(f"routing was decided for {us.shape[0]} sequences, this forward has {x.shape[0]}")
            return output + torch.bmm(torch.bmm(x, us.to(x.dtype).transpose(1, 2)), vs.to(x.dtype))

        return hook


@torch.no_grad()
def switching_on(model: EditableModel, prompts: Sequence[str], answers: Sequence[str], chunk: int = 64) -> Tensor:
    """``(n,)`` bool: whether scoring ``answers`` after ``prompts`` (teacher-forced, as
    :mod:`mend.evaluation.scoring` does) switches on any scoped correction hooked into
    ``model``. An input that switches none on is computed exactly as without them, so
    whoever compares outputs with and without some corrections need only run the inputs
    that switch those on. The forward passes stop at the scope block: the decision is
    made there, from the same tokens and prompt positions as in scoring."""
    routed = model.model.__dict__.get(RoutedChanges._ATTR)
    if routed is None or not routed.changes:
        return torch.zeros(len(prompts), dtype=torch.bool)

    def stop(module, args, output):  # registered after the routing hook, so it runs after it
        raise StopForward

    def decide(p: list[str], a: list[str]) -> list[bool]:
        with contextlib.suppress(StopForward):
            model.task.logits(model.model, model.task.batch(p, a).to(model.device))
        return [len(on) > 0 for on in routed.last.active]

    handle = decoder_blocks(model.model)[routed.scope.config.layer].register_forward_hook(stop)
    try:  # chunks of similar length, as scoring batches them: answers vary widely in length
        return torch.tensor(by_length(decide, prompts, answers, chunk), dtype=torch.bool)
    finally:
        handle.remove()
