"""Corrections of the same question: the newer one supersedes the older.

Two corrections may ask for different answers to one question ("Who designed X?" ->
A, later "Who is the architect of X?" -> B). Both cannot be live: a request in the
scope of one is in the scope of the other, and their edits, switched on together,
fight. As with two corrections of the same prompt, the newer one wins.

Same question means: both name the same subject (same spelling as token ids), and
the newer correction's prompt falls within the older one's scope under the learned
score alone, at the scope model's full ``threshold``. The subject test's lower
threshold is not enough here: every question about a subject names it, and questions
about another attribute of the same subject must stay separate corrections.

Two corrections of the same question that ask for the same answer agree: both stay live
(each phrasing keeps its own key, so the question is recognised in more wordings), and
neither is a contradiction. The caller says what counts as the same answer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from mend.models.editable import EditableModel
from mend.scope.model import ScopeModel
from mend.scope.scores import Padded, best_token_scores
from mend.scope.states import block_states, subject_states
from mend.scope.subjects import subject_tokens


@dataclass
class Questions:
    """Corrections as the supersession test sees them: scope keys (embedded), subject
    spellings (``(n, variants, tokens)``, -1 padded) and the prompts' token states."""

    keys: Tensor
    subjects: Tensor
    prompts: Padded

    @staticmethod
    @torch.no_grad()
    def of(scope: ScopeModel, model: EditableModel, prompts: Sequence[str], subjects: Sequence[str | None]) -> Questions:
        """One pass of the base model over ``prompts`` up to the scope's block."""
        if len(prompts) != len(subjects):
            raise ValueError(f"{len(prompts)} prompts but {len(subjects)} subjects")
        states = block_states(model, prompts, scope.config.layer)
        if not states:
            return Questions(torch.zeros(0, scope.config.dim), subject_tokens(model.tokenizer, []),
                             Padded.of([], scope.config.skip_first))
        return Questions(scope.embed(subject_states(prompts, states, subjects)),
                         subject_tokens(model.tokenizer, list(subjects)), Padded.of(states, scope.config.skip_first))

    def take(self, index: Tensor) -> Questions:
        """The questions at ``index``, in that order."""
        return Questions(self.keys[index], self.subjects[index], self.prompts.take(index))


def _spellings(subjects: Tensor) -> list[tuple[int, ...]]:
    """Each subject's spelling as written (its first variant), () for none."""
    return [tuple(t for t in row[0].tolist() if t >= 0) for row in subjects]


@torch.no_grad()
def same_question(scope: ScopeModel, new: Questions, keys: Tensor, key_subjects: Tensor) -> Tensor:
    """``(len(new), len(keys))``: whether each new correction asks the question of each
    stored key (``keys`` embedded by ``scope``, ``key_subjects`` their spellings)."""
    if len(keys) == 0 or len(new.keys) == 0:
        return torch.zeros(len(new.keys), len(keys), dtype=torch.bool)
    spellings = _spellings(key_subjects)
    owners: dict[tuple[int, ...], list[int]] = {}
    for k, spelling in enumerate(spellings):
        if spelling:
            owners.setdefault(spelling, []).append(k)
    out = torch.zeros(len(new.keys), len(keys), dtype=torch.bool)
    for q, spelling in enumerate(_spellings(new.subjects)):
        candidates = owners.get(spelling) if spelling else None
        if not candidates:
            continue  # scores only against keys of the same subject: cheap at any size
        index = torch.tensor(candidates)
        scores = best_token_scores(scope, keys[index], new.prompts.take(torch.tensor([q])))[0]
        out[q, index[scores >= scope.config.threshold]] = True
    return out


def superseded_within(
    scope: ScopeModel, questions: Questions, answers: Sequence[str] | None = None
) -> list[int | None]:
    """For corrections in queue order, which later one supersedes each (None: live).

    Each correction is superseded by the last later correction of the same question
    with another answer (``answers``, compared as given; None: every answer differs)."""
    same = same_question(scope, questions, questions.keys, questions.subjects)
    if answers is not None:
        same &= ~agreeing(answers, answers)
    out: list[int | None] = [None] * len(questions.keys)
    for newer in range(len(out)):
        for older in same[newer, :newer].nonzero().flatten().tolist():
            out[older] = newer
    return out


def agreeing(new: Sequence[str], stored: Sequence[str]) -> Tensor:
    """``(len(new), len(stored))``: whether each new answer is each stored one."""
    index: dict[str, int] = {}
    codes = [[index.setdefault(a, len(index)) for a in answers] for answers in (new, stored)]
    rows, columns = (torch.tensor(c, dtype=torch.long) for c in codes)
    return rows[:, None] == columns[None, :]
