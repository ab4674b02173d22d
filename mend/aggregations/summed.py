"""MEND's aggregation: an edit's change is the sum of its rank-1 terms,
``dW = -lr * sum_j delta~_j u~_j^T``, one row per edited token.

Rows are independent, so an edit of k requests is exactly the concatenation of k
single-request edits, and any request's rows can be taken out again. As edits pile up
the terms interfere: every edit's keys also see the other edits' terms.
"""

from __future__ import annotations

from pathlib import Path

from torch import Tensor

from mend.aggregations.base import (
    Change,
    FactorChange,
    cat_rows,
    factors_from,
    select_rows,
    shift_rows,
)


class SummedChange(FactorChange):
    """Per module, the editor's rank-1 terms of every request, summed."""

    name = "sum"

    @classmethod
    def from_editor(cls, editor, factors, update_stats, source) -> SummedChange:
        return cls(editor.terms(factors, update_stats))

    def select(self, remap: Tensor) -> SummedChange:
        return type(self)(select_rows(self._deltas, remap))

    def shifted(self, offset: int) -> SummedChange:
        return type(self)(shift_rows(self._deltas, offset))

    @classmethod
    def cat(cls, parts: list[Change]) -> SummedChange:
        return cls(cat_rows([p.deltas() for p in parts]))

    def detach(self) -> SummedChange:
        return type(self)({n: d.detach() for n, d in self._deltas.items()})

    @classmethod
    def load(cls, tensors: dict[str, Tensor], meta: dict, directory: Path, cache: dict | None) -> SummedChange:
        return cls(factors_from(tensors, meta["modules"]))
