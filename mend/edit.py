"""An applied (or appliable) edit: per-matrix low-rank changes plus their provenance.

Lifecycle: ``detached`` -> ``apply()`` -> ``applied`` (forward hooks; exactly
reversible) -> ``merge()`` -> ``merged`` (added into the weights; reversible to float
tolerance) and back with ``unmerge()`` / ``remove()``.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import torch
from safetensors.torch import load_file, save_file

from mend.aggregation import KeyShifts
from mend.deltas import DeltaHooks, LowRankDelta, add_to_weights
from mend.models.editable import EditableModel
from mend.models.targets import Layout
from mend.storage.checksum import sha256_file

# 2: least-squares regularisers are relative to the keys' energy and carry a key
# penalty. 3: a least-squares edit may be stored solved (its factors only). Summed
# edits are unchanged since 1.
EDIT_FORMAT = "mend-edit/3"
READABLE_FORMATS = {"mend-edit/1", "mend-edit/2", EDIT_FORMAT}
PENALTY_FILE = "penalty.safetensors"


def penalty_of(meta: dict) -> dict | None:
    """``{"file", "sha256"}`` of the key-penalty file an ``edit.json`` points to, if any."""
    return meta.get("penalty")


def _read_penalties(directory: Path, penalty: dict | None, cache: dict | None = None) -> dict[str, torch.Tensor]:
    """The key penalties an edit.json points to; ``cache`` (by sha256) reads each once."""
    if penalty is None:
        return {}
    if cache is not None and penalty["sha256"] in cache:
        return cache[penalty["sha256"]]
    path = directory / penalty["file"]
    if not path.exists():
        raise FileNotFoundError(f"{directory} needs its key penalty file {penalty['file']} (sha256 {penalty['sha256']})")
    if sha256_file(path) != penalty["sha256"]:
        raise ValueError(f"{path} does not match the sha256 recorded in edit.json")
    penalties = load_file(path)
    if cache is not None:
        cache[penalty["sha256"]] = penalties
    return penalties


State = Literal["detached", "applied", "merged"]


@dataclass(frozen=True)
class EditRequest:
    """One (prompt, target) pair an edit was made from."""

    prompt: str
    target: str
    request_id: str = ""


class Edit:
    """Low-rank changes to some of a model's matrices, made from one batch of requests.

    Rows of every change remember which request produced them, so an edit of k requests
    is exactly the concatenation of k single-request edits computed on the same model,
    and any subset can be taken out (:meth:`select`).

    A least-squares edit (``memory`` set) keeps each request's keys and value shifts
    instead; its change is the solve over them, so :meth:`concat` and :meth:`select`
    re-solve over the combined or remaining requests. The solve runs when the change is
    first needed (``deltas``), so edits only combined or saved are never solved.
    """

    def __init__(
        self,
        deltas: dict[str, LowRankDelta] | None,
        layouts: dict[str, Layout],
        requests: Sequence[EditRequest],
        base_model: dict,
        model: EditableModel | None = None,
        memory: dict[str, KeyShifts] | None = None,
        solved_from: str | None = None,
    ):
        if deltas is None and memory is None:
            raise ValueError("an edit needs its changes or the key shifts to solve them from")
        self._deltas = deltas
        self.layouts = layouts
        self.requests = list(requests)
        self.base_model = base_model
        self.model = model
        self.memory = memory
        self.solved_from = solved_from
        self.state: State = "detached"
        self._key = uuid.uuid4().hex

    @classmethod
    def from_key_shifts(
        cls,
        memory: dict[str, KeyShifts],
        layouts: dict[str, Layout],
        requests: Sequence[EditRequest],
        base_model: dict,
        model: EditableModel | None = None,
    ) -> Edit:
        """The least-squares edit solving ``memory`` (one solve per matrix, when needed)."""
        return cls(None, layouts, requests, base_model, model, memory)

    @property
    def deltas(self) -> dict[str, LowRankDelta]:
        """The change per edited module (solved now if not yet)."""
        if self._deltas is None:
            self._deltas = {name: ks.solve() for name, ks in self.memory.items()}
        return self._deltas

    @property
    def modules(self) -> list[str]:
        """Names of the edited modules."""
        return list(self.memory if self.memory is not None else self.deltas)

    @property
    def aggregation(self) -> str:
        if self.solved_from is not None:
            return self.solved_from
        return "sum" if self.memory is None else "least_squares"

    def solved(self) -> Edit:
        """This edit's change alone, as low-rank factors: what serving it needs.

        A least-squares edit keeps every request's keys and shifts so that it can be
        re-solved; its solved form drops them. It is then no larger than one dense change
        per matrix however many requests it holds, and it loads without a solve, but it
        can no longer be combined, narrowed or re-solved. Summed edits are returned as
        they are."""
        if self.memory is None:
            return self
        deltas = {name: delta.detach() for name, delta in self.deltas.items()}
        return Edit(deltas, self.layouts, self.requests, self.base_model, self.model, solved_from=self.aggregation)

    def _refuse_if_solved(self, action: str) -> None:
        if self.solved_from is not None:
            raise ValueError(
                f"cannot {action} a solved {self.solved_from} edit: it no longer holds its requests' keys "
                "and shifts; use the edit it was solved from"
            )

    def __repr__(self) -> str:
        if self._deltas is None:
            shape = "not yet solved"
        else:
            ranks = [d.rank for d in self._deltas.values()] or [0]
            shape = f"rank {min(ranks)}-{max(ranks)}"
        return f"Edit({len(self.requests)} request(s), {self.state}, {len(self.modules)} matrices, {shape})"

    # -- applying ---------------------------------------------------------------------
    def _target(self, model: EditableModel | None) -> EditableModel:
        model = model or self.model
        if model is None:
            raise ValueError("this edit is not bound to a model: pass one to apply()")
        missing = sorted(set(self.modules) - {t.module_name for t in model.targets})
        if missing:
            raise ValueError(f"the model has no edited modules named {missing}")
        return model

    def apply(self, model: EditableModel | None = None) -> Edit:
        """Hook the change into the model's forward pass (weights untouched)."""
        if self.state != "detached":
            raise RuntimeError(f"edit is already {self.state}")
        self.model = self._target(model)
        DeltaHooks.of(self.model.model).add(self._key, self.deltas)
        self.state = "applied"
        return self

    def remove(self) -> Edit:
        """Take the change out again; the model computes exactly what it did before."""
        if self.state == "merged":
            self.unmerge()
        if self.state == "applied":
            DeltaHooks.of(self.model.model).remove(self._key)
        self.state = "detached"
        return self

    def merge(self, model: EditableModel | None = None) -> Edit:
        """Add the dense change into the weights (for export or for serving without hooks)."""
        if self.state == "applied":
            DeltaHooks.of(self.model.model).remove(self._key)
        elif self.state == "merged":
            return self
        else:
            self.model = self._target(model)
        add_to_weights(self.model.model, self.deltas, self.layouts, +1.0)
        self.state = "merged"
        return self

    def unmerge(self) -> Edit:
        """Subtract a merged change from the weights again."""
        if self.state != "merged":
            raise RuntimeError(f"edit is {self.state}, not merged")
        add_to_weights(self.model.model, self.deltas, self.layouts, -1.0)
        self.state = "detached"
        return self

    @contextlib.contextmanager
    def applied(self, model: EditableModel | None = None) -> Iterator[Edit]:
        """``with edit.applied(): ...`` applies for the block and removes afterwards."""
        self.apply(model)
        try:
            yield self
        finally:
            self.remove()

    # -- composing --------------------------------------------------------------------
    @staticmethod
    def concat(edits: Iterable[Edit]) -> Edit:
        """One edit equal to applying several together: summed edits stack; least-squares
        ones are one solve over all their rows, with the last edit's regularisers and key
        penalties (the newest editor's settings)."""
        edits = list(edits)
        if not edits:
            raise ValueError("nothing to concatenate")
        for e in edits:
            e._refuse_if_solved("combine")
        base = edits[0].base_model
        if any(e.base_model.get("fingerprint") != base.get("fingerprint") for e in edits):
            raise ValueError("edits were made for different base models")
        if len({e.aggregation for e in edits}) > 1:
            raise ValueError("cannot combine summed and least-squares edits")
        layouts = {k: v for e in edits for k, v in e.layouts.items()}
        requests = [r for e in edits for r in e.requests]
        if edits[0].memory is not None:
            memories: dict[str, list[KeyShifts]] = {}
            offset = 0
            for e in edits:
                for name, ks in e.memory.items():
                    shifted = ks.renumber(ks.example + offset)
                    memories.setdefault(name, []).append(shifted)
                offset += len(e.requests)
            memory = {name: KeyShifts.cat(parts) for name, parts in memories.items()}
            return Edit.from_key_shifts(memory, layouts, requests, base, edits[0].model)
        per_module: dict[str, list[LowRankDelta]] = {}
        offset = 0
        for e in edits:
            for name, delta in e.deltas.items():
                shifted = LowRankDelta(delta.u, delta.v, delta.example + offset)
                per_module.setdefault(name, []).append(shifted)
            offset += len(e.requests)
        deltas = {name: LowRankDelta.cat(parts) for name, parts in per_module.items()}
        return Edit(deltas, layouts, requests, base, edits[0].model)

    def with_pass(self, further: Edit) -> Edit:
        """This edit and ``further``, a later pass over the same requests (made on the
        model with this edit applied): both passes' rows, each still its request's, so
        :meth:`select` and :meth:`concat` keep working per request. Least-squares rows
        are one solve, under ``further``'s regularisers."""
        self._refuse_if_solved("add a pass to")
        further._refuse_if_solved("add as a pass")
        if [(r.prompt, r.target) for r in further.requests] != [(r.prompt, r.target) for r in self.requests]:
            raise ValueError("a further pass must be made from the same requests, in the same order")
        if further.aggregation != self.aggregation:
            raise ValueError("cannot combine summed and least-squares edits")
        if self.memory is not None:
            memory = {n: KeyShifts.cat([ks, further.memory[n]]) for n, ks in self.memory.items()}
            return Edit.from_key_shifts(memory, self.layouts, self.requests, self.base_model, self.model)
        deltas = {n: LowRankDelta.cat([d, further.deltas[n]]) for n, d in self.deltas.items()}
        return Edit(deltas, self.layouts, self.requests, self.base_model, self.model)

    def select(self, request_indices: Sequence[int]) -> Edit:
        """The part of this edit made from the given requests (renumbered from 0)."""
        self._refuse_if_solved("select from")
        index = torch.as_tensor(list(request_indices), dtype=torch.long)
        remap = torch.full((len(self.requests),), -1, dtype=torch.long)
        remap[index] = torch.arange(len(index))
        requests = [self.requests[i] for i in index.tolist()]
        if self.memory is not None:
            memory = {}
            for name, ks in self.memory.items():
                kept = ks.select(remap[ks.example] >= 0)
                memory[name] = kept.renumber(remap[kept.example])
            return Edit.from_key_shifts(memory, self.layouts, requests, self.base_model, self.model)
        deltas = {}
        for name, delta in self.deltas.items():
            kept = delta.select(remap[delta.example] >= 0)
            deltas[name] = LowRankDelta(kept.u, kept.v, remap[kept.example])
        return Edit(deltas, self.layouts, requests, self.base_model, self.model)

    def dense(self) -> dict[str, torch.Tensor]:
        """Dense weight changes per module, in each module's weight layout."""
        return {n: d.detach().dense(self.layouts[n]) for n, d in self.deltas.items()}

    # -- persistence ------------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        """Write ``edit.safetensors`` (factors) and ``edit.json`` (provenance)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {}
        lambdas = {}
        penalties = {}
        if self.memory is None:
            for name, delta in self.deltas.items():
                d = delta.detach()
                tensors[f"{name}.u"] = d.u.contiguous().cpu()
                tensors[f"{name}.v"] = d.v.contiguous().cpu()
                tensors[f"{name}.example"] = d.example.contiguous().cpu()
        else:  # the change is re-solved from the keys and shifts on load
            for name, ks in self.memory.items():
                tensors[f"{name}.keys"] = ks.keys.detach().contiguous().cpu()
                tensors[f"{name}.shifts"] = ks.shifts.detach().contiguous().cpu()
                tensors[f"{name}.key_example"] = ks.example.contiguous().cpu()
                lambdas[name] = float(ks.lam)
                if ks.precond is not None:
                    penalties[name] = ks.precond.detach().contiguous().cpu()
        save_file(tensors, directory / "edit.safetensors")
        penalty = None
        if penalties:
            # The key penalties belong to the editor, not to the requests: a separate file
            # (the largest one) that a store can keep once for many edits, by its hash.
            save_file(penalties, directory / PENALTY_FILE)
            penalty = {"file": PENALTY_FILE, "sha256": sha256_file(directory / PENALTY_FILE)}
        meta = {
            "format": EDIT_FORMAT,
            "aggregation": self.aggregation,
            "solved": self.solved_from is not None,
            "lambdas": lambdas,
            "penalty": penalty,
            "base_model": self.base_model,
            "layouts": self.layouts,
            "modules": self.modules,
            "requests": [asdict(r) for r in self.requests],
        }
        (directory / "edit.json").write_text(json.dumps(meta, indent=2))
        return directory

    @classmethod
    def load(
        cls, directory: str | Path, model: EditableModel | None = None, penalty_cache: dict | None = None
    ) -> Edit:
        """Read an edit written by :meth:`save`; ``model`` binds it for ``apply()``.

        ``penalty_cache`` shares key penalties (by hash) between edits loaded together."""
        directory = Path(directory)
        meta = json.loads((directory / "edit.json").read_text())
        fmt = meta.get("format")
        if fmt not in READABLE_FORMATS:
            raise ValueError(f"{directory} is not a {EDIT_FORMAT} edit (format={fmt})")
        if fmt == "mend-edit/1" and meta.get("aggregation") == "least_squares":
            raise ValueError(
                f"{directory} is a {fmt} least-squares edit, solved with an absolute regulariser: "
                "compute it again with its editor"
            )
        tensors = load_file(directory / "edit.safetensors")
        requests = [EditRequest(**r) for r in meta["requests"]]
        if meta.get("aggregation") == "least_squares" and not meta.get("solved", False):
            penalties = _read_penalties(directory, penalty_of(meta), penalty_cache)
            memory = {
                name: KeyShifts(
                    tensors[f"{name}.keys"], tensors[f"{name}.shifts"], tensors[f"{name}.key_example"],
                    torch.tensor(lam),
                    penalties.get(name),
                )
                for name, lam in meta["lambdas"].items()
            }
            edit = cls.from_key_shifts(memory, meta["layouts"], requests, meta["base_model"])
        else:
            deltas = {
                name: LowRankDelta(tensors[f"{name}.u"], tensors[f"{name}.v"], tensors[f"{name}.example"])
                for name in meta["modules"]
            }
            solved_from = meta["aggregation"] if meta.get("solved", False) else None
            edit = cls(deltas, meta["layouts"], requests, meta["base_model"], solved_from=solved_from)
        if model is not None:
            edit.model = edit._target(model)
        return edit

    def to_peft(self, directory: str | Path, base_model_name_or_path: str | None = None) -> Path:
        """Export as a PEFT LoRA adapter any multi-LoRA server can load."""
        from mend.export.peft import save_as_lora

        name = base_model_name_or_path or self.base_model.get("name")
        kind = self.base_model.get("kind", "causal")
        return save_as_lora(self.deltas, self.layouts, Path(directory), name, kind)
