"""Scoped edits: each request keeps its own change, switched on only for inputs in its scope.

The rows are MEND's summed terms, kept per request exactly as :mod:`summed` keeps them
(a batched edit is the concatenation of single edits). Beside them every request has
one or more scope keys (:mod:`mend.scope`). Hooked into a model, a scoped edit routes:
per sequence, only the requests whose scope the prompt falls within contribute, so
corrections do not interfere with each other and an input matching none is computed
exactly as by the base model. Merged into the weights it is the plain summed change of
all its requests (the weight-space version, for servers that cannot route).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from mend.aggregations.base import (
    Change,
    FactorChange,
    cat_rows,
    factors_from,
    scale_rows,
    select_rows,
    shift_rows,
)
from mend.aggregations.summed import SummedChange
from mend.deltas import LowRankDelta
from mend.scope.model import ScopeModel
from mend.scope.routing import RoutedChanges
from mend.scope.states import correction_scope_keys, correction_subjects
from mend.scope.subjects import cat_padded

SCOPE_DIR = "scope"


class ScopedChange(FactorChange):
    """Per module each request's rank-1 terms, plus each request's scope keys, the
    spellings of its subject (``subjects``: ``(keys, variants, tokens)``, -1 padded) and
    its relation keys (``relations``: ``(keys, width)``, width 0 when the scope model has
    no relation key)."""

    name = "scoped"
    routed = True

    def __init__(
        self,
        deltas: dict[str, LowRankDelta],
        keys: Tensor,
        key_request: Tensor,
        n_requests: int,
        scope: ScopeModel,
        subjects: Tensor | None = None,
        relations: Tensor | None = None,
    ):
        if keys.shape[0] != key_request.shape[0]:
            raise ValueError(f"{keys.shape[0]} scope keys but {key_request.shape[0]} owners")
        if subjects is None:
            subjects = torch.full((keys.shape[0], 1, 1), -1, dtype=torch.long)
        if subjects.shape[0] != keys.shape[0]:
            raise ValueError(f"{keys.shape[0]} scope keys but {subjects.shape[0]} subjects")
        width = scope.config.dim if scope.has_relation else 0
        if relations is None and width == 0:
            relations = keys.new_zeros(keys.shape[0], 0)
        if relations is None or relations.shape != (keys.shape[0], width):
            got = None if relations is None else tuple(relations.shape)
            raise ValueError(f"{keys.shape[0]} scope keys need relation keys of shape {(keys.shape[0], width)} "
                             f"under this scope model, got {got}")
        super().__init__(deltas)
        self.subjects = subjects
        self.relations = relations
        self.keys = keys
        self.key_request = key_request
        self.n_requests = n_requests
        self.scope = scope

    @classmethod
    def from_editor(cls, editor, factors, update_stats, source) -> Change:
        """Each request's summed terms plus the scope key of its prompt (at its subject).

        While meta-training (no ``source``) this is the summed change: the editor learns
        single edits, which is what each scoped request keeps; scopes are trained apart
        (:mod:`mend.scope.fit`)."""
        terms = editor.terms(factors, update_stats)
        if source is None:
            return SummedChange(terms)
        if editor.scope is None:
            raise ValueError("a scoped edit needs a scope model: train one (mend.scope.fit) and attach it "
                             "to the editor (editor.scope = ScopeModel.load(...))")
        keys, relations = correction_scope_keys(editor.scope, source.model, source.prompts, source.subjects)
        n = len(source.prompts)
        return cls(terms, keys, torch.arange(n), n, editor.scope, correction_subjects(source.model, source.subjects),
                   relations)

    def select(self, remap: Tensor) -> ScopedChange:
        keep = remap[self.key_request] >= 0
        return ScopedChange(select_rows(self._deltas, remap), self.keys[keep], remap[self.key_request[keep]],
                            int((remap >= 0).sum()), self.scope, self.subjects[keep], self.relations[keep])

    def scaled(self, factors: Tensor) -> ScopedChange:
        """Each request's change times ``factors[request]`` (its strength; see
        :mod:`mend.scope.landing`): requests are switched on apart, so one's strength
        leaves what the others do unchanged."""
        if factors.shape != (self.n_requests,):
            raise ValueError(f"{tuple(factors.shape)} strengths for {self.n_requests} requests")
        return self.with_deltas(scale_rows(self._deltas, factors))

    def with_deltas(self, deltas: dict[str, LowRankDelta]) -> ScopedChange:
        """The same requests and scope keys with other rows (e.g. refitted values,
        :mod:`mend.scope.landing`)."""
        return ScopedChange(deltas, self.keys, self.key_request, self.n_requests, self.scope, self.subjects,
                            self.relations)

    def shifted(self, offset: int) -> ScopedChange:
        return ScopedChange(shift_rows(self._deltas, offset), self.keys, self.key_request + offset,
                            self.n_requests, self.scope, self.subjects, self.relations)

    @classmethod
    def cat(cls, parts: list[Change]) -> ScopedChange:
        scope = parts[0].scope
        if any(p.scope.fingerprint() != scope.fingerprint() for p in parts[1:]):
            raise ValueError("scoped edits made with different scope models cannot be combined")
        n_requests = sum(p.n_requests for p in parts)  # parts arrive numbered one after another
        return cls(cat_rows([p.deltas() for p in parts]), torch.cat([p.keys for p in parts]),
                   torch.cat([p.key_request for p in parts]), n_requests, scope,
                   cat_padded([p.subjects for p in parts]), torch.cat([p.relations for p in parts]))

    def with_pass(self, further: Change) -> ScopedChange:
        """Both passes' rows under this edit's scope keys (a pass re-captures the same requests)."""
        return self.with_deltas(cat_rows([self._deltas, further.deltas()]))

    def detach(self) -> ScopedChange:
        return ScopedChange({n: d.detach() for n, d in self._deltas.items()}, self.keys.detach(),
                            self.key_request, self.n_requests, self.scope, self.subjects, self.relations.detach())

    def tensors(self) -> dict[str, Tensor]:
        return {**super().tensors(), "scope.keys": self.keys.detach().contiguous().cpu(),
                "scope.key_request": self.key_request.contiguous().cpu(),
                "scope.subjects": self.subjects.contiguous().cpu(),
                "scope.relations": self.relations.detach().contiguous().cpu()}

    def meta(self) -> dict:
        return {"scope": {"fingerprint": self.scope.fingerprint(), "config": self.scope.config.model_dump(),
                          "directory": SCOPE_DIR}}

    def save_extra(self, directory: Path) -> dict:
        # The scope model travels with its keys: they are only comparable under it.
        self.scope.save(directory / SCOPE_DIR)
        return {}

    @classmethod
    def load(cls, tensors: dict[str, Tensor], meta: dict, directory: Path, cache: dict | None) -> ScopedChange:
        fingerprint = meta["scope"]["fingerprint"]
        scope = cache.get(("scope", fingerprint)) if cache is not None else None
        if scope is None:
            scope = ScopeModel.load(directory / meta["scope"]["directory"])
            if scope.fingerprint() != fingerprint:
                raise ValueError(f"{directory}: its scope model does not match the fingerprint in edit.json")
            if cache is not None:
                cache[("scope", fingerprint)] = scope
        n_requests = len(meta["requests"])
        if not torch.isin(torch.arange(n_requests), tensors["scope.key_request"]).all():
            raise ValueError(f"{directory}: a request of this scoped edit has no scope key")
        return cls(factors_from(tensors, meta["modules"]), tensors["scope.keys"], tensors["scope.key_request"],
                   n_requests, scope, tensors.get("scope.subjects"), tensors.get("scope.relations"))

    def hook_into(self, model: nn.Module, key: object) -> None:
        RoutedChanges.of(model).add(key, self)

    def unhook(self, model: nn.Module, key: object) -> None:
        RoutedChanges.of(model).remove(key)

