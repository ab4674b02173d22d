"""AlphaEdit (Fang et al., ICLR 2025, arXiv 2410.02355) as an evaluation baseline.

MEMIT's keys, values and spread over blocks; each block's change is confined to the null
space of the generic-text keys: with ``P = Û Ûᵀ``, ``Û`` the eigenvectors of ``C`` whose
eigenvalues fall below a threshold, ``ΔWᵀ = (P (K Kᵀ + C_prev) + l2 I)⁻¹ P K Rᵀ``.
Every solution of that system lies in ``P``'s range, so ``ΔW`` maps the inputs ordinary
text spans (``C``'s large eigenvectors) to (almost) nothing. ``C_prev`` holds ``K Kᵀ``
of the edits still applied, so a later edit does not undo an earlier one; removing an edit
takes its keys out again.
"""

from __future__ import annotations

import hashlib
import itertools
from dataclasses import dataclass, field

import torch
from torch import Tensor

from mend.baselines.config import AlphaEditConfig
from mend.baselines.spread import SubjectEdit


def nullspace_projection(moment: Tensor, threshold: float) -> Tensor:
    """``P = Û Ûᵀ`` over the eigenvectors of ``moment`` with eigenvalues below ``threshold``."""
    eigenvalues, vectors = torch.linalg.eigh(moment)
    small = vectors[:, eigenvalues < threshold]
    return small @ small.T


def alphaedit_change(keys: Tensor, residual: Tensor, projection: Tensor, previous: Tensor, l2: float) -> Tensor:
    """``ΔW`` ``(d_out, d_in)`` for keys ``(n, d_in)``, residual shares ``(n, d_out)``, the
    null-space projection and ``C_prev`` (``(d_in, d_in)``)."""
    eye = torch.eye(projection.shape[0], dtype=projection.dtype, device=projection.device)
    system = projection @ (keys.T @ keys + previous) + l2 * eye
    return torch.linalg.solve(system, projection @ keys.T @ residual).T


class _Applied:
    """An AlphaEdit in effect: ``remove()`` restores the weights and drops its keys."""

    def __init__(self, snapshot, held: dict, ticket: int):
        self.snapshot, self.held, self.ticket = snapshot, held, ticket

    def remove(self) -> None:
        self.snapshot.remove()
        self.held.pop(self.ticket, None)


@dataclass(kw_only=True)
class AlphaEditMethod(SubjectEdit):
    """AlphaEdit's batch edit (see the module docstring); values shared through ``store``."""

    config: AlphaEditConfig = field(default_factory=AlphaEditConfig)
    name: str = "alphaedit"
    _projections: dict = field(default_factory=dict, init=False, repr=False)
    _held: dict = field(default_factory=dict, init=False, repr=False)  # ticket -> {layer: K Kᵀ}
    _tickets: itertools.count = field(default_factory=itertools.count, init=False, repr=False)
    _pending: dict = field(default_factory=dict, init=False, repr=False)

    def projection(self, layer: int, moment: Tensor) -> Tensor:
        """``P`` for one block's ``C`` (eigendecomposed once per distinct ``C``)."""
        key = (layer, hashlib.sha256(moment.contiguous().cpu().numpy().tobytes()).hexdigest())
        if key not in self._projections:
            self._projections[key] = nullspace_projection(moment, self.config.nullspace_threshold)
        return self._projections[key]

    def solve(self, layer, keys, residual, moment):
        previous = sum((held[layer] for held in self._held.values() if layer in held),
                       torch.zeros_like(moment))
        self._pending[layer] = keys.T @ keys
        return alphaedit_change(keys, residual, self.projection(layer, moment), previous, self.config.l2)

    def apply(self, model, records):
        self._pending = {}
        snapshot = super().apply(model, records)
        ticket = next(self._tickets)
        self._held[ticket] = self._pending
        return _Applied(snapshot, self._held, ticket)
