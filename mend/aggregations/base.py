"""What every aggregation provides: how one edit keeps its change to each matrix.

An edit is made from a batch of requests. Its editor outputs one rank-1 term per edited
token, and an *aggregation* says what becomes of those terms: MEND sums them
(:mod:`~mend.aggregations.summed`), MALMEN solves for one change that maps every key to
its shift (:mod:`~mend.aggregations.least_squares`), and a scoped edit keeps each
request's terms apart and switches them on only for inputs in that request's scope
(:mod:`~mend.aggregations.scoped`).

Each aggregation is a :class:`Change` subclass in a module of its own, registered by
name in :mod:`mend.aggregations`; :class:`~mend.edit.Edit` holds one and never asks
which kind it is. A new aggregation is a new module, not a branch in the edit.

Rows of a change remember the request they came from (an index into the edit's
requests), which is what lets changes combine (:meth:`Change.cat`) and narrow
(:meth:`Change.select`) request by request.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from torch import Tensor, nn

from mend.capture import Factors
from mend.deltas import DeltaHooks, LowRankDelta
from mend.models.editable import EditableModel

if TYPE_CHECKING:
    from mend.editor.editor import Editor


@dataclass(frozen=True)
class EditSource:
    """What an edit is made from beyond its factors (absent while meta-training)."""

    model: EditableModel
    prompts: list[str]
    subjects: list[str | None]


class Change(ABC):
    """One edit's change to its matrices, in the form its aggregation keeps it."""

    #: The name recorded in ``edit.json``, manifests and the registry.
    name: ClassVar[str]
    #: Whether rows still belong to single requests (False once solved into one change).
    per_request: ClassVar[bool] = True
    #: Whether the change depends on the input (routed per request), so that serving must
    #: hook it in rather than merge it into the weights.
    routed: ClassVar[bool] = False

    @classmethod
    @abstractmethod
    def from_editor(
        cls, editor: Editor, factors: dict[str, Factors], update_stats: bool, source: EditSource | None
    ) -> Change:
        """The change ``editor`` makes of one batch's captured factors (differentiable in
        the editor's parameters; ``source`` is None while meta-training)."""

    @property
    @abstractmethod
    def modules(self) -> list[str]:
        """Names of the edited modules."""

    @abstractmethod
    def deltas(self) -> dict[str, LowRankDelta]:
        """The change per module as low-rank factors: what is hooked in, merged or exported."""

    @abstractmethod
    def select(self, remap: Tensor) -> Change:
        """The rows of the requests with ``remap[request] >= 0``, renumbered to ``remap``."""

    @abstractmethod
    def shifted(self, offset: int) -> Change:
        """The same change with every request index moved up by ``offset``."""

    @classmethod
    @abstractmethod
    def cat(cls, parts: list[Change]) -> Change:
        """One change equal to all ``parts`` together (request indices already disjoint)."""

    def with_pass(self, further: Change) -> Change:
        """This change and a later capture pass over the same requests."""
        return type(self).cat([self, further])

    def solved(self) -> Change:
        """What serving needs, without what only re-solving needs (default: itself)."""
        return self

    def shape(self) -> str:
        """A short description of the change's size, for ``repr``."""
        ranks = [d.rank for d in self.deltas().values()] or [0]
        return f"rank {min(ranks)}-{max(ranks)}"

    def detach(self) -> Change:
        """The change without autograd history (default: itself)."""
        return self

    @abstractmethod
    def tensors(self) -> dict[str, Tensor]:
        """Everything :meth:`load` needs that is a tensor (one safetensors file)."""

    def meta(self) -> dict:
        """JSON-serialisable settings written into ``edit.json`` beside the tensors."""
        return {}

    def save_extra(self, directory: Path) -> dict:
        """Files beyond ``edit.safetensors``; returns what ``edit.json`` records of them."""
        return {}

    @classmethod
    @abstractmethod
    def load(cls, tensors: dict[str, Tensor], meta: dict, directory: Path, cache: dict | None) -> Change:
        """Read a change written by :meth:`tensors`, :meth:`meta` and :meth:`save_extra`."""

    # -- in the forward pass ---------------------------------------------------------
    def hook_into(self, model: nn.Module, key: object) -> None:
        """Add the change to ``model``'s forward pass under ``key`` (weights untouched)."""
        DeltaHooks.of(model).add(key, self.deltas())

    def unhook(self, model: nn.Module, key: object) -> None:
        """Take the change hooked under ``key`` out again."""
        DeltaHooks.of(model).remove(key)


class FactorChange(Change):
    """A change kept as its low-rank factors per module (what most aggregations keep)."""

    def __init__(self, deltas: dict[str, LowRankDelta]):
        self._deltas = deltas

    @property
    def modules(self) -> list[str]:
        return list(self._deltas)

    def deltas(self) -> dict[str, LowRankDelta]:
        return self._deltas

    def tensors(self) -> dict[str, Tensor]:
        return factor_tensors(self._deltas)


def refuse_solved(name: str, action: str):
    """The error for combining, narrowing or re-solving a change kept solved."""
    raise ValueError(
        f"cannot {action} a solved {name} edit: it no longer holds its requests' keys "
        "and shifts; use the edit it was solved from"
    )


def factor_tensors(deltas: dict[str, LowRankDelta]) -> dict[str, Tensor]:
    """Low-rank factors as named tensors (``<module>.u``, ``.v``, ``.example``)."""
    out = {}
    for name, delta in deltas.items():
        d = delta.detach()
        out[f"{name}.u"] = d.u.contiguous().cpu()
        out[f"{name}.v"] = d.v.contiguous().cpu()
        out[f"{name}.example"] = d.example.contiguous().cpu()
    return out


def factors_from(tensors: dict[str, Tensor], modules: list[str]) -> dict[str, LowRankDelta]:
    """The inverse of :func:`factor_tensors`."""
    return {n: LowRankDelta(tensors[f"{n}.u"], tensors[f"{n}.v"], tensors[f"{n}.example"]) for n in modules}


def select_rows(deltas: dict[str, LowRankDelta], remap: Tensor) -> dict[str, LowRankDelta]:
    """Rows of the requests ``remap`` keeps, renumbered (see :meth:`Change.select`)."""
    out = {}
    for name, delta in deltas.items():
        kept = delta.select(remap[delta.example] >= 0)
        out[name] = LowRankDelta(kept.u, kept.v, remap[kept.example])
    return out


def scale_rows(deltas: dict[str, LowRankDelta], factors: Tensor) -> dict[str, LowRankDelta]:
    """Each request's rows times ``factors[request]`` (its change scaled, the others untouched)."""
    return {n: LowRankDelta(d.u, d.v * factors.to(d.v)[d.example].unsqueeze(1), d.example) for n, d in deltas.items()}


def shift_rows(deltas: dict[str, LowRankDelta], offset: int) -> dict[str, LowRankDelta]:
    return {n: LowRankDelta(d.u, d.v, d.example + offset) for n, d in deltas.items()}


def cat_rows(parts: list[dict[str, LowRankDelta]]) -> dict[str, LowRankDelta]:
    """Per module, every part's rows (the sum of the parts' changes)."""
    per_module: dict[str, list[LowRankDelta]] = {}
    for part in parts:
        for name, delta in part.items():
            per_module.setdefault(name, []).append(delta)
    return {name: LowRankDelta.cat(ds) for name, ds in per_module.items()}
