"""The unit of editing data: one edit with its equivalence and locality inputs.

Every dataset loader turns its native format into :class:`EditRecord` objects, so
meta-training, evaluation and the corrections queue share one shape of data.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

RecordKind = Literal["qa", "counterfact", "fact_check", "generation"]


@dataclass(frozen=True)
class LocalityProbe:
    """An unrelated input whose answer must not change when the edit is applied.

    ``answer`` is the continuation scored after ``prompt``: locality compares the
    model's predictions at these answer positions before and after the edit.
    For generation data the prompt may be short and the answer the whole passage.
    """

    prompt: str
    answer: str


@dataclass(frozen=True)
class EditRecord:
    """One edit request: make ``target`` the model's output for ``prompt``.

    ``rephrases`` are equivalent inputs the edit should carry over to
    (generalization); ``locality`` are unrelated inputs it must leave alone.
    ``old_target`` is what the model is expected to say before the edit, when the
    dataset knows it (CounterFact's ``target_true``).
    """

    record_id: str
    prompt: str
    target: str
    rephrases: tuple[str, ...] = ()
    locality: tuple[LocalityProbe, ...] = ()
    old_target: str | None = None
    subject: str | None = None
    kind: RecordKind = "qa"
    source: str = ""
    extra: dict = field(default_factory=dict, compare=False, hash=False)
