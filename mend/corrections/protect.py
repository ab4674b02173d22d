"""Which corrections of a routed batch undo an active correction they are switched on with.

A routed correction reaches only the requests in its scope, but one of those may be an
active correction's own prompt (another question about the same subject): switched on
together there, the new edit can take the older correction's target away. Per batch, the
routing rule tells which active corrections' prompts switch on a batch correction; only
those prompts are scored, with and without the batch, and a batch correction switched on
at a prompt that got its target before and no longer does is said to undo it. The
acceptance policy refuses such corrections (``AcceptancePolicy.protect_active``).

The active prompts' states at the scope block are the base model's whatever is applied,
so they are computed once per run (:class:`PromptStates`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch

from mend.edit import Edit, EditRequest
from mend.evaluation.scoring import score_targets
from mend.models.editable import EditableModel
from mend.scope.model import ScopeModel
from mend.scope.scores import Padded, best_token_scores
from mend.scope.states import TextStates, block_states
from mend.scope.subjects import gated


class PromptStates:
    """Prompts' states after the scope block, computed once each."""

    def __init__(self, model: EditableModel, scope: ScopeModel):
        self.model, self.scope = model, scope
        self._states: dict[str, TextStates] = {}

    def padded(self, prompts: Sequence[str]) -> Padded:
        missing = list(dict.fromkeys(p for p in prompts if p not in self._states))
        if missing:
            self._states.update(zip(missing, block_states(self.model, missing, self.scope.config.layer), strict=True))
        return Padded.of([self._states[p] for p in prompts], self.scope.config.skip_first)


@torch.no_grad()
def undone_by(
    batch: Edit,
    earlier: Sequence[EditRequest],
    states: PromptStates,
    stored: int,
    judged: Edit,
    before: Edit | None,
) -> dict[str, list[str]]:
    """Per request id of ``batch`` (a routed edit), the ``earlier`` active corrections it
    undoes: their prompts are scored with ``judged`` applied (the batch combined with the
    active corrections as it would be published) and with ``before`` (the active
    corrections without the batch), on a model with nothing else applied. ``stored``: how
    many corrections ``judged`` holds (the routing threshold depends on it)."""
    change = batch.change
    if not earlier or not getattr(change, "routed", False) or not len(change.keys):
        return {}
    scope = change.scope
    prompts = states.padded([r.prompt for r in earlier])
    sims = best_token_scores(scope, change.keys, prompts)  # (earlier, batch keys)
    related = scope.related(scope.embed_relation(prompts.last()), change.relations)
    on = gated(sims, prompts.ids, change.subjects, scope.config.threshold_at(stored), scope.config.subject_threshold,
               related=related)
    hit = on.any(1).nonzero().flatten().tolist()
    if not hit:
        return {}
    model = batch.model
    asked = [earlier[i] for i in hit]
    prompts, targets = [r.prompt for r in asked], [r.target for r in asked]
    with judged.applied(model):
        now = score_targets(model, prompts, targets).exact
    with before.applied(model) if before is not None else contextlib.nullcontext():
        then = score_targets(model, prompts, targets).exact
    out: dict[str, list[str]] = {}
    for i, request, was, still in zip(hit, asked, then, now, strict=True):
        if was and not still:
            for key in on[i].nonzero().flatten().tolist():
                undone = out.setdefault(batch.requests[int(change.key_request[key])].request_id, [])
                if request.request_id not in undone:
                    undone.append(request.request_id)
    return out
