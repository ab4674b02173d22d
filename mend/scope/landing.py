"""How a scoped correction is written so that it lands: the strongest edit that still
does, and for those landing at no strength, a few gradient steps on their own values.

**Strength.** MEND's editor was meta-trained to make an edit land at strength 1, and there
it does on most prompts. But an edit that just lands carries over to rephrasings only as
far as the editor's training data taught it (a counterfactual, far from what the model
believes, carries over little), while a stronger one moves rephrasings further, until it
overshoots and the prompt's own target breaks. Summed into shared weights a stronger edit
would also move every unrelated input; routed, it only reaches inputs in its scope. So
each correction takes the largest of a few strengths at which its target is still the
model's exact teacher-forced answer to its prompt (:func:`strongest_landing`).

**Refining.** Per edited matrix a MEND edit of one correction is a sum of rank-1 terms
``v^T u``: the keys ``u`` say which inputs it reads, the values ``v`` what it writes there.
Some corrections land at no strength (a token of a long target still wrong, or several
corrections switched on together overshooting). Those keep MEND's keys and have their
values fitted by gradient descent on their own prompts and targets, starting from what
they had, until each has its target as the exact answer or the steps run out, stopping
at the first such step: the least change that lands (:func:`refine_values`).

:func:`written` does both, as the corrections queue writes a batch. Every judgement runs
the prompts through the model as it would be published: the edit combined with
``others``, the corrections it will be published with (routed as usual), on a model with
nothing else applied; so a correction is judged with whatever else its prompt switches
on, such as another phrasing of the same question. ``bench/results/edits_scaling.json``
has the effect on edit success and generalization.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from mend.aggregations.base import FactorChange
from mend.deltas import LowRankDelta
from mend.edit import Edit
from mend.evaluation.scoring import score_targets
from mend.models.unedited_blocks import reusing_unedited_blocks

#: Tried strongest first; chosen on the zsRE and CounterFact training splits.
DEFAULT_STRENGTHS: tuple[float, ...] = (4.0, 3.0, 2.5, 2.0, 1.5, 1.25, 1.0)
#: Adam's step when refining, as a fraction of the typical size of a matrix's values.
DEFAULT_STEP = 0.3
#: Most refining steps: with the step above, enough for every correction refined in a
#: scratch run over zsRE queue records; not tuned further (refining stops once all land).
DEFAULT_REFINE_STEPS = 20


@dataclass
class Landed:
    """An edit with each request at its chosen strength (``strengths[request]``);
    ``landed[request]`` is False for those that landed at none (kept at strength 1)."""

    edit: Edit
    strengths: Tensor
    landed: Tensor


def strongest_landing(
    edit: Edit,
    strengths: Sequence[float] = DEFAULT_STRENGTHS,
    others: Edit | None = None,
    chunk: int = 64,
) -> Landed:
    """Each request of ``edit`` at the largest of ``strengths`` at which its target is the
    exact teacher-forced answer to its prompt (1 where none is), judged together with
    ``others``. One scoring pass per strength, over the requests not yet decided."""
    if not getattr(edit.change, "routed", False):
        raise ValueError(f"a {edit.aggregation} edit has no per-request strength: only routed (scoped) edits do")
    model = edit.model
    chosen = torch.ones(len(edit.requests))
    undecided = list(range(len(edit.requests)))
    # Only the edited blocks see the strength: below them each prompt is computed once.
    with reusing_unedited_blocks(model):
        for strength in sorted(set(strengths), reverse=True):
            if not undecided:
                break
            trial = chosen.clone()
            trial[undecided] = strength
            with edit.scaled(trial).with_others(others).applied(model):
                part = [edit.requests[i] for i in undecided]
                landed = score_targets(model, [r.prompt for r in part], [r.target for r in part], chunk).exact
            chosen = trial
            undecided = [i for i, ok in zip(undecided, landed, strict=True) if not ok]
    chosen[undecided] = 1.0
    landed = torch.ones(len(edit.requests), dtype=torch.bool)
    landed[undecided] = False
    return Landed(edit.scaled(chosen), chosen, landed)


@dataclass
class Refined:
    """``edit`` with the refined requests' values replaced; ``steps[i]`` is the step at
    which request ``requests[i]`` had its target as the answer to its prompt with all of
    them refined (-1: it, or a pair kept alongside, did not by the last step)."""

    edit: Edit
    requests: list[int]
    steps: list[int]

    @property
    def landed(self) -> list[int]:
        return [r for r, n in zip(self.requests, self.steps, strict=True) if n >= 0]


class _Values:
    """The values of some requests' rows as parameters (in units of each matrix's
    typical value: Adam moves each coordinate by about its step)."""

    def __init__(self, deltas: dict[str, LowRankDelta], requests: Sequence[int]):
        self.deltas = deltas
        chosen = torch.as_tensor(list(requests), dtype=torch.long)
        self.rows = {n: torch.isin(d.example, chosen).nonzero().flatten() for n, d in deltas.items()}
        self.scale = {n: float(d.v[self.rows[n]].detach().pow(2).mean().sqrt().clamp_min(1e-12))
                      if len(self.rows[n]) else 1.0 for n, d in deltas.items()}
        self.params = {n: nn.Parameter(d.v[self.rows[n]].detach() / self.scale[n]) for n, d in deltas.items()}

    def current(self) -> dict[str, LowRankDelta]:
        """The deltas with the parameters written into their rows (differentiable)."""
        out = {}
        for name, d in self.deltas.items():
            v = d.v.detach().index_put((self.rows[name],), self.params[name] * self.scale[name])
            out[name] = LowRankDelta(d.u, v, d.example)
        return out


def refine_values(
    edit: Edit,
    requests: Sequence[int],
    steps: int = DEFAULT_REFINE_STEPS,
    step: float = DEFAULT_STEP,
    others: Edit | None = None,
    keep: Sequence[tuple[str, str]] = (),
) -> Refined:
    """``edit`` with the values of ``requests`` fitted until each one's target is the
    exact teacher-forced answer to its prompt, judged together with ``others``: at most
    ``steps`` Adam steps of ``step`` times the values' typical size.

    ``keep``: other (prompt, target) pairs fitted alongside, whose targets must be the
    exact answers too (active corrections the refined ones are switched on with and
    would otherwise take the target from)."""
    if not getattr(edit.change, "routed", False) or not isinstance(edit.change, FactorChange):
        raise ValueError(f"a {edit.aggregation} edit cannot be refined per request: only routed (scoped) edits can")
    requests = list(requests)
    if not requests:
        return Refined(edit, [], [])
    model = edit.model
    values = _Values(edit.change.deltas(), requests)
    optimiser = torch.optim.Adam(values.params.values(), lr=step)
    keep = list(keep)
    batch = model.task.batch([edit.requests[r].prompt for r in requests] + [p for p, _ in keep],
                             [edit.requests[r].target for r in requests] + [t for _, t in keep]).to(model.device)
    n = 0
    with torch.enable_grad():
        while True:
            trial = edit.with_change(edit.change.with_deltas(values.current()))
            with trial.with_others(others).applied(model):
                scored = model.task.scored(model.model, batch)
                exact = scored.exact()
                if exact.all() or n == steps:
                    break
                loss = scored.nll()[~exact].sum()
                optimiser.zero_grad()
                loss.backward()
            optimiser.step()
            n += 1
    # A request counts as landed once it and every kept pair are exact.
    kept_hold = bool(exact[len(requests):].all())
    landed = [ok and kept_hold for ok in exact[: len(requests)].tolist()]
    if n == 0:  # nothing was fitted: the edit as it came
        return Refined(edit, requests, [0 if ok else -1 for ok in landed])
    final = {name: LowRankDelta(d.u, d.v.detach(), d.example) for name, d in values.current().items()}
    return Refined(edit.with_change(edit.change.with_deltas(final)), requests, [n if ok else -1 for ok in landed])


def written(
    edit: Edit,
    strengths: Sequence[float] = DEFAULT_STRENGTHS,
    refine_steps: int = DEFAULT_REFINE_STEPS,
    others: Edit | None = None,
) -> tuple[Edit, list[dict]]:
    """``edit`` as scoped corrections are written: each request at the strongest of
    ``strengths`` that lands with ``others``, those landing at none refined for at most
    ``refine_steps`` steps (0: not at all). Also, per request, what to record of it: its
    ``strength`` and, when refined, ``refine_steps`` (-1: it did not land)."""
    landed = strongest_landing(edit, strengths, others)
    recorded = [{"strength": s} for s in landed.strengths.tolist()]
    unlanded = (~landed.landed).nonzero().flatten().tolist()
    if not unlanded or refine_steps == 0:
        return landed.edit, recorded
    refined = refine_values(landed.edit, unlanded, refine_steps, others=others)
    for i, steps in zip(refined.requests, refined.steps, strict=True):
        recorded[i]["refine_steps"] = steps
    return refined.edit, recorded
