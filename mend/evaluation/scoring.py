"""How an edited model is scored: teacher-forced, exact-match and generated.

Three views of the same question, from most to least lenient:

* token accuracy (teacher-forced): the fraction of target tokens that are the argmax
  when the gold prefix is fed (EasyEdit's "reliability"/"generalization");
* teacher-forced exact match: every target token is the argmax (the MEND paper's
  edit success);
* generated exact match: greedy decoding from the prompt produces the target text.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from mend.models.batching import in_order, length_chunks
from mend.models.editable import EditableModel
from mend.models.tasks import IGNORE


@dataclass
class TargetScores:
    token_acc: list[float]
    exact: list[bool]
    nll: list[float]


def score_targets(
    model: EditableModel, prompts: Sequence[str], targets: Sequence[str], chunk: int | None = None
) -> TargetScores:
    """Teacher-forced accuracy, exact match and mean NLL of ``targets`` after ``prompts``.

    With ``chunk``, scored in batches of similar length, at most ``chunk`` each; one batch without.
    """
    if chunk is None:
        return _score_batch(model, prompts, targets)
    chunks = _chunks(prompts, targets, chunk)
    scored = [_score_batch(model, [prompts[i] for i in c], [targets[i] for i in c]) for c in chunks]
    rows = in_order(chunks, [list(zip(s.token_acc, s.exact, s.nll, strict=True)) for s in scored])
    columns = list(zip(*rows, strict=True)) or [(), (), ()]
    return TargetScores(*(list(column) for column in columns))


def _chunks(prompts: Sequence[str], answers: Sequence[str], chunk: int) -> list[list[int]]:
    # Only the lengths leave this module: the batches are run here, not handed out as a
    # callback (which would bring the prompts back into scoring from the batching helper).
    return length_chunks([len(p) + len(a) for p, a in zip(prompts, answers, strict=True)], chunk)


@torch.no_grad()
def _score_batch(model: EditableModel, prompts: Sequence[str], targets: Sequence[str]) -> TargetScores:
    batch = model.task.batch(list(prompts), list(targets)).to(model.device)
    scored = model.task.scored(model.model, batch)
    return TargetScores(
        (scored.per_sequence(scored.hits().float()) / scored.counts()).tolist(),
        scored.exact().tolist(),
        scored.nll().tolist(),
    )


def answer_predictions(
    model: EditableModel, prompts: Sequence[str], answers: Sequence[str], chunk: int | None = None
) -> list[Tensor]:
    """The argmax tokens at each answer position (teacher-forced), one tensor per probe.

    With ``chunk``, predicted in batches of similar length, at most ``chunk`` each; one batch without.
    """
    if chunk is None:
        return _predict_batch(model, prompts, answers)
    chunks = _chunks(prompts, answers, chunk)
    return in_order(chunks, [_predict_batch(model, [prompts[i] for i in c], [answers[i] for i in c]) for c in chunks])


@torch.no_grad()
def _predict_batch(model: EditableModel, prompts: Sequence[str], answers: Sequence[str]) -> list[Tensor]:
    batch = model.task.batch(list(prompts), list(answers)).to(model.device)
    return [p.cpu() for p in model.task.scored(model.model, batch).predictions()]


def answer_lengths(model: EditableModel, prompts: Sequence[str], answers: Sequence[str]) -> list[int]:
    """How many answer positions :func:`answer_predictions` predicts per probe (tokenizing only)."""
    if not prompts:
        return []
    labels = model.task.batch(list(prompts), list(answers)).scored_labels
    return (labels != IGNORE).sum(1).tolist()


def agreement(before: Sequence[Tensor], after: Sequence[Tensor]) -> tuple[float, bool]:
    """Fraction of positions whose prediction did not change, and whether none did."""
    same = sum(int((a == b).sum()) for a, b in zip(before, after, strict=True))
    total = sum(len(a) for a in before)
    return (same / total if total else 1.0), same == total


@torch.no_grad()
def text_nll(model: EditableModel, prompts: Sequence[str], answers: Sequence[str]) -> tuple[float, int]:
    """Summed NLL and token count of ``answers`` after ``prompts`` (for perplexity)."""
    batch = model.task.batch(list(prompts), list(answers)).to(model.device)
    scored = model.task.scored(model.model, batch)
    return float((scored.nll() * scored.counts()).sum()), int(scored.mask.sum())


@torch.no_grad()
def generated_exact(model: EditableModel, prompts: Sequence[str], targets: Sequence[str]) -> list[bool]:
    """Whether greedy decoding (as many tokens as the target has) yields the target."""
    if model.kind == "classifier":
        outputs = model.generate(prompts)
        return [o.strip().lower() == t.strip().lower() for o, t in zip(outputs, targets, strict=True)]
    batch = model.task.batch(list(prompts), list(targets))
    lengths = (batch.scored_labels != IGNORE).sum(1).tolist()
    results = []
    # Group by target length so each generate() call decodes exactly that many tokens.
    by_length: dict[int, list[int]] = {}
    for i, n in enumerate(lengths):
        by_length.setdefault(int(n), []).append(i)
    outputs: dict[int, str] = {}
    for n, indices in by_length.items():
        texts = model.generate([prompts[i] for i in indices], max_new_tokens=n)
        outputs.update(zip(indices, texts, strict=True))
    for i, target in enumerate(targets):
        results.append(outputs[i].strip() == target.strip())
    return results
