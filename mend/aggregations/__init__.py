"""Aggregations: how an edit's per-token editor outputs become its change, one module each.

=================  ==========================================================
``sum``            :mod:`mend.aggregations.summed` (MEND)
``least_squares``  :mod:`mend.aggregations.least_squares` (MALMEN)
``scoped``         :mod:`mend.aggregations.scoped` (each request's change, routed)
=================  ==========================================================

See :mod:`mend.aggregations.base` for the interface.
"""

from __future__ import annotations

from mend.aggregations.base import Change
from mend.aggregations.least_squares import (
    KeyShifts,
    LeastSquaresChange,
    NormalEquations,
    SolvedChange,
)
from mend.aggregations.scoped import ScopedChange
from mend.aggregations.summed import SummedChange

CHANGES: dict[str, type[Change]] = {
    SummedChange.name: SummedChange,
    LeastSquaresChange.name: LeastSquaresChange,
    ScopedChange.name: ScopedChange,
}
AGGREGATIONS = tuple(CHANGES)


def change_class(name: str, solved: bool = False) -> type[Change]:
    """The :class:`Change` class that reads an edit saved with aggregation ``name``."""
    if name not in CHANGES:
        raise ValueError(f"unknown aggregation {name!r}; known: {', '.join(AGGREGATIONS)}")
    return SolvedChange if solved else CHANGES[name]


__all__ = [
    "AGGREGATIONS",
    "CHANGES",
    "Change",
    "KeyShifts",
    "LeastSquaresChange",
    "NormalEquations",
    "ScopedChange",
    "SolvedChange",
    "SummedChange",
    "change_class",
]
