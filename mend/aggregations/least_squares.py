"""MALMEN's aggregation: one solved change per matrix instead of a sum of terms.

``least_squares`` is MALMEN's (Tan et al., ICLR 2024): every edited token ``j`` asks for
the shift its own MEND term would make to its output, ``d_j = -lr * (u_j . u~_j)
delta~_j``, and the change ``S`` (``d_in x d_out``; ``y = W x + S^T x``) is the
regularised least-squares solution mapping each key ``u_j`` to its shift:

    S = argmin ||U S - D||^2 + lambda * t * tr(S^T M S) = (U^T U + lambda t M)^-1 U^T D

Two choices keep this stable from one edit to thousands (MALMEN's plain ``lambda I``
with lambda near 1 is tiny next to raw key energies, so with as many rows as key
dimensions the solve interpolates and wrecks unrelated outputs):

- ``t = tr(U^T U) / d_in`` scales the penalty with the rows' own energy: lambda is
  relative, the ratio of "unrelated change" to "average edit residual", whatever the
  number of edits or the layer's activation scale.
- ``M`` is the second moment of the matrix's inputs on generic text (damped,
  mean eigenvalue 1; the identity when the editor has no key covariance). The penalty
  ``tr(S^T M S)`` is then the change ordinary inputs would see, as in MEMIT: directions
  every input shares are protected, unusual ones are free.

The editor stores ``P = M^-1`` (its key preconditioner).

Representation: ``S = P U^T (U P U^T + lambda t I)^-1 D``, the low-rank pair
(``u = (U P U^T + lambda t I)^-1 U P``, ``v = D``) of rank n (edited tokens), when n is
at most the matrix's narrower side; past it the dense ``S = (U^T U + lambda t M)^-1
U^T D`` (in double, ``M`` inverted from ``P`` once) is cheaper and is written as a
low-rank pair with an identity factor (rank ``min(d_in, d_out)``). Either way apply,
remove, merge and PEFT export work unchanged, and both are differentiable in ``D`` and
``lambda``, so meta-training backpropagates through the solve.

Re-solving: the dense form needs the rows only through ``U^T U`` and ``U^T D``, which
are sums over rows (:class:`NormalEquations`). A :class:`KeyShifts` keeps them once
computed and :meth:`KeyShifts.cat` adds them up, so adding a batch to thousands of
active corrections costs that batch's rows plus one ``d_in x d_in`` solve, not a pass
over every row the corrections ever made.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from mend.aggregations.base import Change, FactorChange, factors_from, refuse_solved
from mend.capture import Factors
from mend.deltas import LowRankDelta
from mend.storage import sha256_file

# The editor's key preconditioners P = M^-1, the largest file of an edit and the same for
# every edit of one editor: kept apart so that a store can hold it once, by its hash.
# Edits written before this name called it penalty.safetensors under the edit.json key
# "penalty"; the file name is read from edit.json, so they load unchanged.
PRECOND_FILE = "key_precond.safetensors"


@dataclass(frozen=True)
class NormalEquations:
    """``U^T U`` and ``U^T D`` of some key rows, in double precision.

    Both are sums over rows, so the rows of several edits combine by addition."""

    gram: Tensor  # (d_in, d_in)
    cross: Tensor  # (d_in, d_out)

    @classmethod
    def of(cls, keys: Tensor, shifts: Tensor) -> NormalEquations:
        """Differentiable in ``shifts`` (keys come from the frozen model)."""
        keys = keys.double()
        return cls(keys.T @ keys, keys.T @ shifts.double())

    def __add__(self, other: NormalEquations) -> NormalEquations:
        return NormalEquations(self.gram + other.gram, self.cross + other.cross)


@dataclass
class KeyShifts:
    """What a least-squares change is solved from, kept so it can be re-solved.

    One row per edited token: its key (layer input), the shift its output should get,
    and the request it belongs to; plus the matrix's relative regulariser and key
    penalty (``precond = M^-1``, None for the identity). Adding or removing requests is a
    new solve over the remaining rows, never a stack of deltas.

    ``normal`` and ``penalty`` (``M``) are computed on first need and carried along
    while the rows and the penalty stay the same.
    """

    keys: Tensor  # (n, d_in)
    shifts: Tensor  # (n, d_out)
    example: Tensor  # (n,)
    lam: Tensor  # () relative regulariser
    precond: Tensor | None = None  # (d_in, d_in)
    normal: NormalEquations | None = field(default=None, repr=False, compare=False)
    penalty: Tensor | None = field(default=None, repr=False, compare=False)

    def with_rows(self, keys: Tensor, shifts: Tensor, example: Tensor) -> KeyShifts:
        """Other rows, same regulariser and penalty."""
        return KeyShifts(keys, shifts, example, self.lam, self.precond, penalty=self.penalty)

    def select(self, keep: Tensor) -> KeyShifts:
        return self.with_rows(self.keys[keep], self.shifts[keep], self.example[keep])

    def renumber(self, example: Tensor) -> KeyShifts:
        same_rows = self.with_rows(self.keys, self.shifts, example)
        same_rows.normal = self.normal
        return same_rows

    def detach(self) -> KeyShifts:
        precond = None if self.precond is None else self.precond.detach()
        normal = self.normal
        if normal is not None:
            normal = NormalEquations(normal.gram.detach(), normal.cross.detach())
        return KeyShifts(
            self.keys.detach(), self.shifts.detach(), self.example, self.lam.detach(), precond, normal, self.penalty
        )

    def normal_equations(self) -> NormalEquations:
        """``U^T U`` and ``U^T D`` of the rows; kept unless they carry gradients."""
        if self.normal is not None:
            return self.normal
        normal = NormalEquations.of(self.keys, self.shifts)
        if not normal.cross.requires_grad:
            self.normal = normal
        return normal

    def penalty_matrix(self) -> Tensor | None:
        """``M = precond^-1`` in double (None: the identity), computed once."""
        if self.penalty is None:
            self.penalty = penalty_from(self.precond)
        return self.penalty

    def solve(self) -> LowRankDelta:
        n, d_in = self.keys.shape
        if n <= min(d_in, self.shifts.shape[1]):
            return solve_shift(self.keys, self.shifts, self.lam, self.precond)
        return solve_normal(self.normal_equations(), self.lam, self.penalty_matrix())

    @staticmethod
    def cat(parts: list[KeyShifts]) -> KeyShifts:
        """All parts' rows, solved with the *last* part's regulariser and key penalty.

        Parts may come from different editors or regulariser scales (a queue's earlier
        batches); the combined solve is one solve, so it takes the newest settings.
        When a part already holds its normal equations (a large set of active
        corrections), the combined ones are their sum.
        """
        merged = parts[-1].with_rows(
            torch.cat([p.keys for p in parts]),
            torch.cat([p.shifts for p in parts]),
            torch.cat([p.example for p in parts]),
        )
        if any(p.normal is not None for p in parts):
            normals = [p.normal_equations() for p in parts]
            merged.normal = sum(normals[1:], normals[0])
        if merged.penalty is None and merged.precond is not None:
            # A queue's batches share their editor's penalty: invert it once per run.
            merged.penalty = next(
                (p.penalty for p in parts if p.penalty is not None and torch.equal(p.precond, merged.precond)), None
            )
        return merged


def solve_shift(keys: Tensor, shifts: Tensor, lam: Tensor, precond: Tensor | None = None) -> LowRankDelta:
    """The least-squares change mapping each key row to its shift row, as a LowRankDelta.

    ``keys`` (n, d_in) are the layer inputs (un-normalised), ``shifts`` (n, d_out),
    ``lam`` the relative regulariser and ``precond`` the inverse key penalty ``M^-1``
    (None: identity); see the module docstring. Rows of the result no longer belong to
    single requests (the solve couples them), so ``example`` is -1 throughout.
    """
    keys = keys.float()
    n, d_in = keys.shape
    d_out = shifts.shape[1]
    if n == 0:
        return LowRankDelta(keys.new_zeros(0, d_in), shifts.new_zeros(0, d_out), torch.zeros(0, dtype=torch.long))
    if n > min(d_in, d_out):
        return solve_normal(NormalEquations.of(keys, shifts), lam, penalty_from(precond))
    # The rows' mean energy per dimension: keys come from the frozen model, not trained.
    ridge = lam * (keys.detach().square().sum() / d_in)
    weighted = keys if precond is None else keys @ precond  # U P
    gram = weighted @ keys.T + ridge * torch.eye(n, dtype=keys.dtype, device=keys.device)
    u = torch.linalg.solve(gram, weighted)  # (U P U^T + lam t I)^-1 U P
    return LowRankDelta(u, shifts, torch.full((n,), -1, dtype=torch.long, device=u.device))


def penalty_from(precond: Tensor | None) -> Tensor | None:
    """The key penalty ``M`` (double) of an editor's preconditioner ``P = M^-1``."""
    return None if precond is None else torch.linalg.inv(precond.detach().double())


def solve_normal(normal: NormalEquations, lam: Tensor, penalty: Tensor | None = None) -> LowRankDelta:
    """The dense change ``S = (U^T U + lam t M)^-1 U^T D`` from the rows' normal equations
    (``penalty`` = ``M`` in double, None: identity), as a LowRankDelta with an identity
    factor of rank ``min(d_in, d_out)``."""
    gram, cross = normal.gram, normal.cross
    d_in, d_out = cross.shape
    ridge = lam.double() * (gram.detach().trace() / d_in)
    # In double: with n >> d_in rows the system is badly scaled in single precision.
    regularised = gram + ridge * (torch.eye(d_in, dtype=gram.dtype, device=gram.device) if penalty is None else penalty)
    dense = torch.linalg.solve(regularised, cross).float()  # S: (d_in, d_out)
    if d_in <= d_out:
        u, v = torch.eye(d_in, dtype=dense.dtype, device=dense.device), dense
    else:
        u, v = dense.T, torch.eye(d_out, dtype=dense.dtype, device=dense.device)
    return LowRankDelta(u, v, torch.full((u.shape[0],), -1, dtype=torch.long, device=u.device))


class LeastSquaresChange(Change):
    """Per module, every request's key rows and the shifts they ask for; the change is
    the regularised solve over them, computed when first needed (:meth:`deltas`), so
    edits only combined or saved are never solved. Combining or narrowing requests is a
    new solve over the remaining rows, never a stack of changes."""

    name = "least_squares"

    def __init__(self, shifts: dict[str, KeyShifts]):
        self.shifts = shifts
        self._solved: dict[str, LowRankDelta] | None = None

    @classmethod
    def from_editor(cls, editor, factors, update_stats, source) -> LeastSquaresChange:
        return cls(key_shifts(editor, factors, update_stats))

    @property
    def modules(self) -> list[str]:
        return list(self.shifts)

    def deltas(self) -> dict[str, LowRankDelta]:
        if self._solved is None:
            self._solved = {name: ks.solve() for name, ks in self.shifts.items()}
        return self._solved

    def shape(self) -> str:
        return "not yet solved" if self._solved is None else super().shape()

    def select(self, remap: Tensor) -> LeastSquaresChange:
        kept = {}
        for name, ks in self.shifts.items():
            rows = ks.select(remap[ks.example] >= 0)
            kept[name] = rows.renumber(remap[rows.example])
        return LeastSquaresChange(kept)

    def shifted(self, offset: int) -> LeastSquaresChange:
        return LeastSquaresChange({n: ks.renumber(ks.example + offset) for n, ks in self.shifts.items()})

    @classmethod
    def cat(cls, parts: list[Change]) -> LeastSquaresChange:
        """One solve over all parts' rows, with the last part's regularisers and key
        penalties (the newest editor's settings)."""
        per_module: dict[str, list[KeyShifts]] = {}
        for part in parts:
            for name, ks in part.shifts.items():
                per_module.setdefault(name, []).append(ks)
        return cls({name: KeyShifts.cat(kss) for name, kss in per_module.items()})

    def detach(self) -> LeastSquaresChange:
        return LeastSquaresChange({n: ks.detach() for n, ks in self.shifts.items()})

    def solved(self) -> SolvedChange:
        """The change alone: no larger than one dense change per matrix however many
        requests it holds, loaded without a solve, but no longer re-solvable."""
        return SolvedChange({n: d.detach() for n, d in self.deltas().items()}, self.name)

    def tensors(self) -> dict[str, Tensor]:
        out = {}
        for name, ks in self.shifts.items():
            out[f"{name}.keys"] = ks.keys.detach().contiguous().cpu()
            out[f"{name}.shifts"] = ks.shifts.detach().contiguous().cpu()
            out[f"{name}.key_example"] = ks.example.contiguous().cpu()
        return out

    def meta(self) -> dict:
        return {"lambdas": {name: float(ks.lam) for name, ks in self.shifts.items()}}

    def save_extra(self, directory: Path) -> dict:
        precond = {n: ks.precond.detach().contiguous().cpu() for n, ks in self.shifts.items() if ks.precond is not None}
        if not precond:
            return {"key_precond": None}
        save_file(precond, directory / PRECOND_FILE)
        return {"key_precond": {"file": PRECOND_FILE, "sha256": sha256_file(directory / PRECOND_FILE)}}

    @classmethod
    def load(cls, tensors: dict[str, Tensor], meta: dict, directory: Path, cache: dict | None) -> LeastSquaresChange:
        if meta.get("format") == "mend-edit/1":
            raise ValueError(
                f"{directory} is a mend-edit/1 least-squares edit, solved with an absolute regulariser: "
                "compute it again with its editor"
            )
        precond = read_key_preconds(directory, meta.get("key_precond", meta.get("penalty")), cache)
        return cls({
            name: KeyShifts(tensors[f"{name}.keys"], tensors[f"{name}.shifts"], tensors[f"{name}.key_example"],
                            torch.tensor(lam), precond.get(name))
            for name, lam in meta["lambdas"].items()
        })


def key_shifts(editor, factors: dict[str, Factors], update_stats: bool = False) -> dict[str, KeyShifts]:
    """Per matrix, each edited token's key and the output shift its editor term asks for:
    the term's ``v = -lr delta~``, so the shift ``-lr (u . u~) delta~`` is ``(u . u~) v``."""
    out = {}
    for name, term in editor.terms(factors, update_stats).items():
        u = factors[name].u.float()
        shifts = (u * term.u).sum(-1, keepdim=True) * term.v
        out[name] = KeyShifts(u, shifts, term.example, editor.regulariser(name), editor.key_precond(name))
    return out


class SolvedChange(FactorChange):
    """A solved change kept as its factors only (:meth:`LeastSquaresChange.solved`).

    Its rows no longer belong to single requests, so it refuses to be combined, narrowed
    or re-solved; it records the aggregation it was solved from."""

    per_request = False

    @classmethod
    def from_editor(cls, editor, factors, update_stats, source) -> Change:
        raise TypeError("editors make changes to solve, not solved ones")

    def __init__(self, deltas: dict[str, LowRankDelta], solved_from: str):
        super().__init__(deltas)
        self.name = solved_from  # an instance attribute: the aggregation it came from

    def select(self, remap: Tensor) -> Change:
        refuse_solved(self.name, "select from")

    def shifted(self, offset: int) -> Change:
        refuse_solved(self.name, "combine")

    @classmethod
    def cat(cls, parts: list[Change]) -> Change:
        refuse_solved(parts[0].name, "combine")

    def with_pass(self, further: Change) -> Change:
        refuse_solved(self.name, "add a pass to")

    @classmethod
    def load(cls, tensors: dict[str, Tensor], meta: dict, directory: Path, cache: dict | None) -> SolvedChange:
        return cls(factors_from(tensors, meta["modules"]), meta["aggregation"])


def read_key_preconds(directory: Path, file: dict | None, cache: dict | None = None) -> dict[str, Tensor]:
    """The key preconditioners ``P = M^-1`` an ``edit.json`` points to (``file`` =
    ``{"file", "sha256"}``); ``cache`` (by sha256) reads each file once for edits loaded
    together."""
    if file is None:
        return {}
    if cache is not None and file["sha256"] in cache:
        return cache[file["sha256"]]
    path = directory / file["file"]
    if not path.exists():
        raise FileNotFoundError(f"{directory} needs its key preconditioner file {file['file']} (sha256 {file['sha256']})")
    if sha256_file(path) != file["sha256"]:
        raise ValueError(f"{path} does not match the sha256 recorded in edit.json")
    preconds = load_file(path)
    if cache is not None:
        cache[file["sha256"]] = preconds
    return preconds
