"""How one matrix's per-token editor outputs become its weight change.

``sum`` is MEND's: the change is the sum of the rank-1 terms, ``dW = -lr * sum_j
delta~_j u~_j^T``. As edits pile up these terms interfere: an edit's keys also see the
other edits' terms.

``least_squares`` is MALMEN's (Tan et al., ICLR 2024): every edited token ``j`` asks for
the shift its own MEND term would make to its output, ``d_j = -lr * (u_j . u~_j)
delta~_j``, and the change is the regularised least-squares solution that maps each key
``u_j`` to its shift: ``S = argmin ||U S - D||^2 + lambda ||S||^2 = (U^T U + lambda
I)^-1 U^T D`` (``d_in x d_out``; ``y = W x + S^T x``).

Representation: ``S = P D`` with ``P = (U^T U + lambda I)^-1 U^T``, so the change is the
low-rank pair (``u = P^T``, ``v = D``) of rank n (edited tokens), computed through the
n x n system ``(U U^T + lambda I)^-1 U`` when n is small; when n exceeds the matrix's
narrower side the dense ``S`` is cheaper and is written as a low-rank pair with an
identity factor (rank ``min(d_in, d_out)``). Either way apply, remove, merge and PEFT
export work unchanged, and both are differentiable in ``D`` and ``lambda``, so
meta-training backpropagates through the solve.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from mend.deltas import LowRankDelta


@dataclass
class KeyShifts:
    """What a least-squares change is solved from, kept so it can be re-solved.

    One row per edited token: its key (layer input), the shift its output should get,
    and the request it belongs to. Adding or removing requests is a new solve over the
    remaining rows, never a stack of deltas.
    """

    keys: Tensor  # (n, d_in)
    shifts: Tensor  # (n, d_out)
    example: Tensor  # (n,)
    lam: Tensor  # () regulariser

    def select(self, keep: Tensor) -> KeyShifts:
        return KeyShifts(self.keys[keep], self.shifts[keep], self.example[keep], self.lam)

    def detach(self) -> KeyShifts:
        return KeyShifts(self.keys.detach(), self.shifts.detach(), self.example, self.lam.detach())

    def solve(self) -> LowRankDelta:
        return solve_shift(self.keys, self.shifts, self.lam)

    @staticmethod
    def cat(parts: list[KeyShifts]) -> KeyShifts:
        return KeyShifts(
            torch.cat([p.keys for p in parts]),
            torch.cat([p.shifts for p in parts]),
            torch.cat([p.example for p in parts]),
            parts[0].lam,
        )


def solve_shift(keys: Tensor, shifts: Tensor, lam: Tensor) -> LowRankDelta:
    """The least-squares change mapping each key row to its shift row, as a LowRankDelta.

    ``keys`` (n, d_in) are the layer inputs (un-normalised), ``shifts`` (n, d_out).
    Rows of the result no longer belong to single requests (the solve couples them), so
    ``example`` is -1 throughout.
    """
    keys = keys.float()
    n, d_in = keys.shape
    d_out = shifts.shape[1]
    eye = torch.eye
    if n == 0:
        return LowRankDelta(keys.new_zeros(0, d_in), shifts.new_zeros(0, d_out), torch.zeros(0, dtype=torch.long))
    if n <= min(d_in, d_out):
        gram = keys @ keys.T + lam * eye(n, dtype=keys.dtype, device=keys.device)
        u = torch.linalg.solve(gram, keys)  # (U U^T + lam I)^-1 U = P^T
        v = shifts
    else:
        gram = keys.T @ keys + lam * eye(d_in, dtype=keys.dtype, device=keys.device)
        dense = torch.linalg.solve(gram, keys.T @ shifts)  # S: (d_in, d_out)
        if d_in <= d_out:
            u, v = eye(d_in, dtype=dense.dtype, device=dense.device), dense
        else:
            u, v = dense.T, eye(d_out, dtype=dense.dtype, device=dense.device)
    rows = u.shape[0]
    return LowRankDelta(u, v, torch.full((rows,), -1, dtype=torch.long, device=u.device))
