"""Training a scope model's relation key: does a request ask a correction's question?

The subject test (:mod:`mend.scope.subjects`) switches a correction on for requests
that name its subject at a low score, which rephrases naming the subject need. But every
other question about that subject names it too, and the subject key cannot tell them
apart when a prompt begins with its subject: a causal model has not read the question
at the subject's last token. The relation key reads the state at the prompt's last
token instead, embedded so that a correction's rephrases score high against its prompt
and other questions about the same subject score low.

Those other questions are made from the training records themselves: another record's
prompt with this record's subject written in ("The mother tongue of {} is" for the
record about Toko Yasuda's instrument). The threshold keeps a share (``keep``) of the
held-out records' rephrases: a rephrase that fails it still switches its correction on
when its score reaches the scope model's full threshold.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from mend.models.editable import EditableModel
from mend.scope.model import RelationKey, ScopeModel, whitening
from mend.scope.states import block_states


class Asked(Protocol):
    """A correction as the relation key sees it (an edit record or a scope example)."""

    prompt: str
    subject: str | None
    rephrases: Sequence[str]


def other_questions(records: Sequence[Asked], per_record: int, seed: int = 0) -> tuple[list[str], list[int]]:
    """Per record whose prompt contains its subject, ``per_record`` prompts asking
    another record's question about this record's subject, and the record each is about."""
    rng = random.Random(seed)
    asked = [(i, r.prompt.replace(r.subject, "{}")) for i, r in enumerate(records) if _names_subject(r)]
    prompts, owners = [], []
    if len({template for _, template in asked}) < 2:
        return prompts, owners  # no other question to ask
    for i, record in enumerate(records):
        if not _names_subject(record):
            continue
        own, made = record.prompt.replace(record.subject, "{}"), 0
        while made < per_record:
            j, template = rng.choice(asked)
            if j != i and template != own:
                prompts.append(template.replace("{}", record.subject, 1))
                owners.append(i)
                made += 1
    return prompts, owners


def _names_subject(record: Asked) -> bool:
    return bool(record.subject and record.subject.strip() and record.subject in record.prompt)


@dataclass
class RelationData:
    """States at the last token: of records' prompts (``keys``), of their rephrases and of
    other questions about their subjects, with the record each belongs to."""

    keys: Tensor
    rephrases: Tensor
    rephrase_owner: Tensor
    others: Tensor
    other_owner: Tensor

    @classmethod
    def of(cls, model: EditableModel, records: Sequence[Asked], layer: int, per_record: int = 3,
           seed: int = 0) -> RelationData:
        records = [r for r in records if r.rephrases]
        rephrases = [x for r in records for x in r.rephrases]
        others, other_owner = other_questions(records, per_record, seed)
        texts = [r.prompt for r in records] + rephrases + others
        rows = [s.states[-1] for s in block_states(model, texts, layer)]
        states = torch.stack(rows) if rows else torch.zeros(0, model.model.config.hidden_size)
        a, b = len(records), len(records) + len(rephrases)
        return cls(states[:a], states[a:b],
                   torch.tensor([i for i, r in enumerate(records) for _ in r.rephrases], dtype=torch.long),
                   states[b:], torch.tensor(other_owner, dtype=torch.long))

    @torch.no_grad()
    def scores(self, relation: RelationKey) -> tuple[Tensor, Tensor]:
        """Each rephrase's and each other question's cosine with its own record's relation key."""
        keys = relation(self.keys)
        return ((relation(self.rephrases) * keys[self.rephrase_owner]).sum(-1),
                (relation(self.others) * keys[self.other_owner]).sum(-1))


@dataclass
class RelationReport:
    threshold: float
    rephrases_kept: float  # of the held-out rephrases
    others_passing: float  # of the held-out other questions


def fit_relation(
    scope: ScopeModel,
    train: RelationData,
    held_out: RelationData,
    *,
    keep: float = 0.98,
    steps: int = 1500,
    batch: int = 256,
    lr: float = 1e-3,
    high: float = 0.6,
    low: float = 0.2,
    seed: int = 0,
) -> tuple[ScopeModel, RelationReport]:
    """``scope`` with a relation key trained on ``train`` (squared hinges: rephrases at
    least ``high`` against their own prompt, other questions about the subject at most
    ``low``) and its threshold set to keep ``keep`` of ``held_out``'s rephrases."""
    if not len(train.others) or not len(train.rephrases):
        raise ValueError("fitting a relation key needs records with rephrases and at least two distinct prompts")
    relation = RelationKey(scope.d_model, scope.config.dim)
    mean, projection = whitening(torch.cat([train.keys, train.rephrases, train.others]), scope.config.dim)
    with torch.no_grad():
        relation.center.copy_(mean)
        relation.proj.weight.copy_(projection)
    optimiser = torch.optim.Adam(relation.proj.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    keys = train.keys
    for _ in range(steps):
        p = torch.randint(len(train.rephrases), (batch,), generator=generator)
        n = torch.randint(len(train.others), (batch,), generator=generator)
        own = (relation(train.rephrases[p]) * relation(keys[train.rephrase_owner[p]])).sum(-1)
        other = (relation(train.others[n]) * relation(keys[train.other_owner[n]])).sum(-1)
        loss = torch.relu(high - own).square().mean() + torch.relu(other - low).square().mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    relation.eval()
    own, other = held_out.scores(relation)
    threshold = float(own.quantile(1 - keep, interpolation="lower")) if len(own) else low
    threshold = min(max(threshold, -0.999), 1.0)
    report = RelationReport(threshold, float((own >= threshold).float().mean()) if len(own) else 0.0,
                            float((other >= threshold).float().mean()) if len(other) else 0.0)
    return scope.with_relation(relation, threshold), report
