"""MEMIT (Meng et al., ICLR 2023, arXiv 2210.07229) as an evaluation baseline.

Each edited block's change is the least-squares fit of its share of the values to the
facts' keys, regularised by the keys' second moment ``C`` on generic text:
``ΔW = R Kᵀ (λ C + K Kᵀ)⁻¹`` (keys and residual shares as columns).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from mend.baselines.config import MemitConfig
from mend.baselines.spread import SubjectEdit


def memit_change(keys: Tensor, residual: Tensor, moment: Tensor, lam: float) -> Tensor:
    """``ΔW`` ``(d_out, d_in)`` for keys ``(n, d_in)`` and residual shares ``(n, d_out)``."""
    system = lam * moment + keys.T @ keys
    return (torch.linalg.solve(system, keys.T) @ residual).T


@dataclass(kw_only=True)
class MemitMethod(SubjectEdit):
    """MEMIT's batch edit (see the module docstring); values shared through ``store``."""

    config: MemitConfig = field(default_factory=MemitConfig)
    name: str = "memit"

    def solve(self, layer, keys, residual, moment):
        return memit_change(keys, residual, moment, self.config.lam)
