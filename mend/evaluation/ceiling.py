"""Two references for what editing a model's matrices can reach, with no editor.

- :func:`optimised_rows` + :class:`SolvedShifts`: the editor network replaced by
  optimisation. Each edit's output shift at each edited matrix is fitted until the edit
  holds alone; the keys and shifts of all edits are then solved together as a
  least-squares editor's are.
- :class:`DirectChange`: no solve at all; the edited matrices themselves are optimised on
  every edit's NLL plus a locality KL (FT+L made to fit many edits at once).

Both skip the decoder blocks before the first edited one (:func:`starting_at`), whose
output does not change. ``bench.edits_ceiling`` runs them on zsRE.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from mend.aggregations import KeyShifts, LeastSquaresChange
from mend.capture import record_layer_io
from mend.data.records import EditRecord, LocalityProbe
from mend.edit import Edit, EditRequest
from mend.evaluation.methods import WeightSnapshot, trainable_targets
from mend.models.editable import EditableModel
from mend.models.targets import layer_template
from mend.models.tasks import TokenBatch, per_example_nll
from mend.training.losses import kl_on_scored, token_hits

CHUNK = 32  # records per forward pass


@dataclass
class Rows:
    """One edit's keys and optimised shifts per matrix."""

    keys: dict[str, Tensor]
    shifts: dict[str, Tensor]


def edited_blocks(model: EditableModel) -> list[int]:
    """The decoder blocks the edited matrices sit in, in order."""
    return sorted({layer_template(t.module_name)[1] for t in model.targets})


def first_block(model: EditableModel) -> int:
    """The earliest decoder block an edited matrix sits in."""
    return edited_blocks(model)[0]


def hidden_before(model: EditableModel, batch: TokenBatch, start: int) -> Tensor:
    """The hidden states entering decoder block ``start`` (unedited: edits sit at or after it)."""
    seen: dict[str, Tensor] = {}
    hook = model.model.model.layers[start].register_forward_pre_hook(
        lambda m, args: seen.setdefault("h", args[0])
    )
    try:
        with torch.no_grad():
            model.task.logits(model.model, batch)
    finally:
        hook.remove()
    return seen["h"].detach()


@contextmanager
def starting_at(model: EditableModel, start: int, hidden: Tensor) -> Iterator[None]:
    """Forward passes inside skip the decoder blocks before ``start``, which would only
    recompute ``hidden`` (the language-model head dominates what is left)."""
    decoder = model.model.model
    layers = decoder.layers
    decoder.layers = nn.ModuleList(list(layers)[start:])
    hook = decoder.layers[0].register_forward_pre_hook(lambda m, args: (hidden, *args[1:]))
    try:
        yield
    finally:
        hook.remove()
        decoder.layers = layers


def optimised_rows(
    model: EditableModel, records: Sequence[EditRecord], steps: int, lr: float, l2: float
) -> tuple[list[Rows], dict]:
    """Every record's keys and the shifts that make it hold alone (batched: records in
    one batch do not see each other, so each one's optimum is its own)."""
    names = [t.module_name for t in model.targets]
    first = first_block(model)
    out: list[Rows] = []
    nll_after, exact_after = [], []
    for start in range(0, len(records), CHUNK):
        chunk = records[start : start + CHUNK]
        batch = model.task.batch([r.prompt for r in chunk], [r.target for r in chunk])
        mask = batch.scored_masks[model.task.scored_sequence]
        with record_layer_io(model.model, names) as seen:
            hidden = hidden_before(model, batch, first)
        keys = {n: seen[n][0].detach() for n in names}
        shifts = {
            n: torch.zeros(
                *mask.shape, model.model.get_submodule(n).out_features, requires_grad=True
            )
            for n in names
        }
        hooks = [
            model.model.get_submodule(n).register_forward_hook(
                lambda m, a, o, s=shifts[n], keep=mask: o + s * keep[..., None]
            )
            for n in names
        ]
        optimizer = torch.optim.Adam(shifts.values(), lr=lr)
        try:
            with starting_at(model, first, hidden):
                for step in range(steps + 1):
                    logits = model.task.logits(model.model, batch)
                    nll = per_example_nll(logits, batch.scored_labels)
                    if step == steps:  # the last forward only scores
                        break
                    penalty = sum((s * mask[..., None]).square().sum() for s in shifts.values())
                    optimizer.zero_grad(set_to_none=True)
                    (nll.sum() + l2 * penalty).backward()
                    optimizer.step()
        finally:
            for h in hooks:
                h.remove()
        exact = token_hits(logits, batch.scored_labels)[1]
        nll_after += nll.tolist()
        exact_after += exact.float().tolist()
        for i in range(len(chunk)):
            out.append(
                Rows(
                    {n: keys[n][i][mask[i]] for n in names},
                    {n: shifts[n].detach()[i][mask[i]] for n in names},
                )
            )
    alone = {
        "nll": sum(nll_after) / len(nll_after),
        "exact_match": sum(exact_after) / len(exact_after),
    }
    return out, alone


@dataclass
class SolvedShifts:
    """Edits from optimised rows, solved together like a least-squares editor's."""

    rows: dict[str, Rows]  # by record id
    precond: dict[str, Tensor]
    lam: float
    info: dict
    name: str = "ideal_shifts"

    def apply(self, model, records):
        memory = {}
        for name, precond in self.precond.items():
            keys = [self.rows[r.record_id].keys[name] for r in records]
            memory[name] = KeyShifts(
                torch.cat(keys),
                torch.cat([self.rows[r.record_id].shifts[name] for r in records]),
                torch.cat([torch.full((len(k),), i, dtype=torch.long) for i, k in enumerate(keys)]),
                torch.tensor(self.lam),
                precond,
            )
        requests = [EditRequest(r.prompt, r.target, r.record_id) for r in records]
        return Edit(LeastSquaresChange(memory), model.layouts, requests, self.info, model).apply()


@dataclass
class DirectChange:
    """FT+L for many simultaneous edits: the edited matrices themselves are optimised
    (Adam) on every edit's NLL plus ``c_loc`` times the KL on locality probes held apart
    from the evaluated records, with gradients accumulated over chunks of 32. A direct
    optimiser sees the edits' loss at every step, where an editor gets one gradient: it
    bounds from below what a change of these matrices can reach, not what an editor can."""

    probes: list[LocalityProbe]
    c_loc: float
    steps: int
    lr: float = 5e-4
    probe_chunks: int = 4  # of 32 probes per step, cycling through the pool
    name: str = "direct"

    def apply(self, model, records):
        snapshot = WeightSnapshot(model)
        first = first_block(model)
        edits = self._chunks(model, [(r.prompt, r.target) for r in records], first)
        probes = self._chunks(model, [(p.prompt, p.answer) for p in self.probes], first)
        with torch.no_grad():
            before = [self._logits(model, first, c) for c in probes]
        with trainable_targets(model) as weights:
            optimizer = torch.optim.Adam(weights, lr=self.lr)
            for step in range(self.steps):
                optimizer.zero_grad(set_to_none=True)
                held = 0
                for chunk in edits:
                    logits = self._logits(model, first, chunk)
                    labels = chunk[0].scored_labels
                    held += int(token_hits(logits, labels)[1].sum())
                    (per_example_nll(logits, labels).sum() / len(records)).backward()
                if held == len(records) and self.c_loc == 0:
                    break
                if self.c_loc:
                    for i in range(self.probe_chunks):
                        index = (step * self.probe_chunks + i) % len(probes)
                        chunk = probes[index]
                        kl = kl_on_scored(
                            before[index], self._logits(model, first, chunk), chunk[0].scored_labels
                        )
                        (self.c_loc * kl / self.probe_chunks).backward()
                optimizer.step()
        return snapshot

    @staticmethod
    def _chunks(model, pairs, first):
        # Chunks of similar prompt length: logits are computed from the chunk's first
        # scored position on, so mixed lengths would project mostly padding and prompt.
        pairs = sorted(pairs, key=lambda pair: len(model.tokenizer(pair[0])["input_ids"]))
        out = []
        for start in range(0, len(pairs), CHUNK):
            part = pairs[start : start + CHUNK]
            batch = model.task.batch([p for p, _ in part], [t for _, t in part])
            out.append((batch, hidden_before(model, batch, first)))
        return out

    @staticmethod
    def _logits(model, first, chunk):
        batch, hidden = chunk
        with starting_at(model, first, hidden):
            return model.task.logits(model.model, batch)


def mlp_of_blocks(model: EditableModel, blocks: str) -> EditableModel:
    """``model`` editing the matrices it edits (the MLP's) in decoder blocks ``FIRST-LAST``
    (inclusive) instead."""
    match = re.fullmatch(r"(\d+)-(\d+)", blocks)
    if not match or not 0 <= int(match[1]) <= int(match[2]) < model.model.config.num_hidden_layers:
        raise ValueError(f"blocks {blocks!r}: not a range of this model's decoder blocks")
    templates = sorted({layer_template(t.module_name)[0] for t in model.targets})
    numbers = range(int(match[1]), int(match[2]) + 1)
    return model.retargeted([re.escape(name.format(n)) for name in templates for n in numbers])
