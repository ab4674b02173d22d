"""How strongly each scoped correction is written: the strongest edit that still lands.

MEND's editor was meta-trained to make an edit land at strength 1, and there it does on
most prompts. But an edit that just lands carries over to rephrasings only as far as the
editor's training data taught it (a counterfactual, far from what the model believes,
carries over little), while a stronger one moves rephrasings further, until it
overshoots and the prompt's own target breaks. Summed into shared weights a stronger
edit would also move every unrelated input; routed, it only reaches inputs in its
scope. So each correction takes the largest of a few strengths at which its target is
still the model's exact teacher-forced answer to its prompt, judged from the
correction's own prompt and target alone, with the model as it would be published.
Corrections that land at none keep strength 1 and have their values fitted instead
(:mod:`mend.scope.refine`, :func:`written` does both); those that land after neither are
judged by the acceptance policy as computed. ``bench/results/edits_scaling.json`` has
the effect on edit success and generalization.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass

import torch
from torch import Tensor

from mend.edit import Edit
from mend.evaluation.scoring import score_targets
from mend.models.unedited_blocks import reusing_unedited_blocks
from mend.scope.refine import DEFAULT_STEPS as DEFAULT_REFINE_STEPS
from mend.scope.refine import refine_values

#: Tried strongest first; chosen on the zsRE and CounterFact training splits.
DEFAULT_STRENGTHS: tuple[float, ...] = (4.0, 3.0, 2.5, 2.0, 1.5, 1.25, 1.0)


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
    showing: Callable[[Edit], AbstractContextManager] | None = None,
    chunk: int = 64,
) -> Landed:
    """Each request of ``edit`` at the largest of ``strengths`` at which its target is the
    exact teacher-forced answer to its prompt (1 where none is).

    ``showing(edit)`` puts an edit into the model as it would be judged (default:
    ``edit.applied()``; the corrections queue shows it together with the active
    corrections). One scoring pass per strength, over the requests not yet decided."""
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
            with (showing or Edit.applied)(edit.scaled(trial)):
                part = [edit.requests[i] for i in undecided]
                landed = score_targets(model, [r.prompt for r in part], [r.target for r in part], chunk).exact
            chosen = trial
            undecided = [i for i, ok in zip(undecided, landed, strict=True) if not ok]
    chosen[undecided] = 1.0
    landed = torch.ones(len(edit.requests), dtype=torch.bool)
    landed[undecided] = False
    return Landed(edit.scaled(chosen), chosen, landed)


def written(
    edit: Edit,
    strengths: Sequence[float] = DEFAULT_STRENGTHS,
    refine_steps: int = DEFAULT_REFINE_STEPS,
    showing: Callable[[Edit], AbstractContextManager] | None = None,
) -> tuple[Edit, list[dict]]:
    """``edit`` as scoped corrections are written: each request at the strongest of
    ``strengths`` that lands, those landing at none refined for at most ``refine_steps``
    steps (0: not at all). Also, per request, what to record of it: its ``strength`` and,
    when refined, ``refine_steps`` (-1: it did not land)."""
    landed = strongest_landing(edit, strengths, showing=showing)
    recorded = [{"strength": s} for s in landed.strengths.tolist()]
    unlanded = (~landed.landed).nonzero().flatten().tolist()
    if not unlanded or refine_steps == 0:
        return landed.edit, recorded
    refined = refine_values(landed.edit, unlanded, refine_steps, showing=showing)
    for i, steps in zip(refined.requests, refined.steps, strict=True):
        recorded[i]["refine_steps"] = steps
    return refined.edit, recorded
