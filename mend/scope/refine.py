"""Corrections that land at no strength: a few gradient steps on their own values.

Per edited matrix a MEND edit of one correction is a sum of rank-1 terms ``v^T u``: the
keys ``u`` say which inputs it reads, the values ``v`` what it writes there. Most scoped
corrections land at one of the strengths :mod:`mend.scope.strength` tries; some land at
none (a token of a long target still wrong, or several corrections switched on together
overshooting). Summed into shared weights, pushing such an edit further would move
every unrelated input; routed, it reaches only inputs in its scope. So those
corrections keep MEND's keys and have their values fitted by gradient descent on their
own prompts and targets, starting from what they had, until every one of them has its
target as the exact teacher-forced answer or the steps run out (stopping at the first
such step: the least change that lands).

Every step runs the prompts through the model as it would be published (``showing``:
the batch's corrections and the active ones, routed as usual), so the fitted values are
judged with whatever else their prompts switch on, such as another phrasing of the same
question with the same answer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass

import torch
from torch import nn

from mend.aggregations.base import FactorChange
from mend.deltas import LowRankDelta
from mend.edit import Edit

#: Adam's step, as a fraction of the typical size of a matrix's values.
DEFAULT_STEP = 0.3
#: Most steps: with the step above, enough for every correction refined in a scratch run
#: over zsRE queue records; not tuned further (refining stops once all land).
DEFAULT_STEPS = 20


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
    steps: int = DEFAULT_STEPS,
    step: float = DEFAULT_STEP,
    showing: Callable[[Edit], AbstractContextManager] | None = None,
    keep: Sequence[tuple[str, str]] = (),
) -> Refined:
    """``edit`` with the values of ``requests`` fitted until each one's target is the
    exact teacher-forced answer to its prompt, at most ``steps`` Adam steps of ``step``
    times the values' typical size.

    ``showing(e)`` puts ``e`` into the model as it would be judged (default:
    ``e.applied()``; the corrections queue shows it with the active corrections).
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
    show = showing or Edit.applied
    n = 0
    with torch.enable_grad():
        while True:
            with show(edit.with_change(edit.change.with_deltas(values.current()))):
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
