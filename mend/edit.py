"""An applied (or appliable) edit: per-matrix changes plus their provenance.

Lifecycle: ``detached`` -> ``apply()`` -> ``applied`` (forward hooks; exactly
reversible) -> ``merge()`` -> ``merged`` (added into the weights; reversible to float
tolerance) and back with ``unmerge()`` / ``remove()``.

How the change is kept, combined, saved and hooked in is its aggregation's business
(:mod:`mend.aggregations`); the edit holds one :class:`~mend.aggregations.Change` and
the requests its rows belong to.
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

from mend.aggregations import Change, SummedChange, change_class
from mend.aggregations.base import refuse_solved
from mend.deltas import LowRankDelta, add_to_weights
from mend.models.editable import EditableModel
from mend.models.fingerprints import same_weights
from mend.models.targets import Layout

# 2: least-squares regularisers are relative to the keys' energy and carry a key
# penalty. 3: a least-squares edit may be stored solved (its factors only); scoped edits.
# Summed edits are unchanged since 1.
EDIT_FORMAT = "mend-edit/3"
READABLE_FORMATS = {"mend-edit/1", "mend-edit/2", EDIT_FORMAT}


def key_precond_file(meta: dict) -> dict | None:
    """``{"file", "sha256"}`` of the key-preconditioner file an ``edit.json`` points to, if any
    (:mod:`mend.aggregations.least_squares`; edits written before call it ``"penalty"``)."""
    return meta.get("key_precond", meta.get("penalty"))


State = Literal["detached", "applied", "merged"]


@dataclass(frozen=True)
class EditRequest:
    """One (prompt, target) pair an edit was made from."""

    prompt: str
    target: str
    request_id: str = ""


class Edit:
    """Changes to some of a model's matrices, made from one batch of requests.

    Rows of every change remember which request produced them, so an edit of k requests
    is exactly the concatenation of k single-request edits computed on the same model,
    and any subset can be taken out (:meth:`select`). ``change`` is either a
    :class:`~mend.aggregations.Change` or, for the summed aggregation, its per-module
    low-rank deltas.
    """

    def __init__(
        self,
        change: Change | dict[str, LowRankDelta],
        layouts: dict[str, Layout],
        requests: Sequence[EditRequest],
        base_model: dict,
        model: EditableModel | None = None,
    ):
        self.change = change if isinstance(change, Change) else SummedChange(change)
        self.layouts = layouts
        self.requests = list(requests)
        self.base_model = base_model
        self.model = model
        self.state: State = "detached"
        self._key = uuid.uuid4().hex

    def _with(self, change: Change, requests: Sequence[EditRequest] | None = None) -> Edit:
        """Another change of the same base model and layouts, bound to the same model."""
        return Edit(change, self.layouts, self.requests if requests is None else requests, self.base_model, self.model)

    def with_change(self, change: Change) -> Edit:
        """The same requests with another change (e.g. refitted rows of the same requests)."""
        return self._with(change)

    @property
    def deltas(self) -> dict[str, LowRankDelta]:
        """The change per edited module as low-rank factors (solved now if need be)."""
        return self.change.deltas()

    @property
    def modules(self) -> list[str]:
        """Names of the edited modules."""
        return self.change.modules

    @property
    def aggregation(self) -> str:
        return self.change.name

    def solved(self) -> Edit:
        """This edit's change alone: what serving it needs (see each aggregation's
        ``solved``; summed and scoped edits are returned as they are)."""
        solved = self.change.solved()
        return self if solved is self.change else self._with(solved)

    def __repr__(self) -> str:
        return f"Edit({len(self.requests)} request(s), {self.state}, {len(self.modules)} matrices, {self.change.shape()}, {self.aggregation})"

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
        self.change.hook_into(self.model.model, self._key)
        self.state = "applied"
        return self

    def remove(self) -> Edit:
        """Take the change out again; the model computes exactly what it did before."""
        if self.state == "merged":
            self.unmerge()
        if self.state == "applied":
            self.change.unhook(self.model.model, self._key)
        self.state = "detached"
        return self

    def merge(self, model: EditableModel | None = None) -> Edit:
        """Add the dense change into the weights (for export or for serving without hooks).

        A scoped change merged is its weight-space version: every request's change on for
        every input, as plain servers need it."""
        if self.state == "applied":
            self.change.unhook(self.model.model, self._key)
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

    def serve(self, model: EditableModel | None = None) -> Edit:
        """Put the change into ``model`` for serving: merged into the weights (answering
        then costs what the base model costs), or hooked in when the change depends on the
        input (a scoped edit routes each request)."""
        return self.apply(model) if self.change.routed else self.merge(model)

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
        """One edit equal to applying several together (their aggregation says how)."""
        edits = list(edits)
        if not edits:
            raise ValueError("nothing to concatenate")
        base = edits[0].base_model
        if not all(same_weights(e.base_model, base) for e in edits):
            raise ValueError("edits were made for different base models")
        if len({e.aggregation for e in edits}) > 1:
            raise ValueError(f"cannot combine edits of different aggregations: {sorted({e.aggregation for e in edits})}")
        parts, offset = [], 0
        for e in edits:  # a solved change refuses here: its rows belong to no request
            parts.append(e.change.shifted(offset))
            offset += len(e.requests)
        change = type(edits[0].change).cat(parts)
        layouts = {k: v for e in edits for k, v in e.layouts.items()}
        return Edit(change, layouts, [r for e in edits for r in e.requests], base, edits[0].model)

    def with_others(self, others: Edit | None) -> Edit:
        """This edit combined with ``others`` (e.g. the corrections it will be published
        with) as one edit, numbered as ``Edit.concat([others, self])``; this edit itself
        when there are none."""
        return self if others is None else Edit.concat([others, self])

    def with_pass(self, further: Edit) -> Edit:
        """This edit and ``further``, a later pass over the same requests (made on the
        model with this edit applied): both passes' rows, each still its request's, so
        :meth:`select` and :meth:`concat` keep working per request."""
        if [(r.prompt, r.target) for r in further.requests] != [(r.prompt, r.target) for r in self.requests]:
            raise ValueError("a further pass must be made from the same requests, in the same order")
        if further.aggregation != self.aggregation:
            raise ValueError(f"cannot add a {further.aggregation} pass to a {self.aggregation} edit")
        for change, action in ((self.change, "add a pass to"), (further.change, "add as a pass")):
            if not change.per_request:
                refuse_solved(change.name, action)
        return self._with(self.change.with_pass(further.change))

    def select(self, request_indices: Sequence[int]) -> Edit:
        """The part of this edit made from the given requests (renumbered from 0)."""
        index = torch.as_tensor(list(request_indices), dtype=torch.long)
        remap = torch.full((len(self.requests),), -1, dtype=torch.long)
        remap[index] = torch.arange(len(index))
        change = self.change.select(remap)
        return self._with(change, [self.requests[i] for i in index.tolist()])

    def scaled(self, strengths: Sequence[float] | torch.Tensor) -> Edit:
        """Each request's change times its strength (routed changes only: summed into one
        change, a stronger request would move every input the others are asked on)."""
        scaled = getattr(self.change, "scaled", None)
        if scaled is None:
            raise ValueError(f"a {self.aggregation} edit cannot scale its requests apart: only routed (scoped) edits can")
        return self._with(scaled(torch.as_tensor(strengths, dtype=torch.float32)))

    def dense(self) -> dict[str, torch.Tensor]:
        """Dense weight changes per module, in each module's weight layout."""
        return {n: d.detach().dense(self.layouts[n]) for n, d in self.deltas.items()}

    # -- persistence ------------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        """Write ``edit.safetensors`` (the change's tensors) and ``edit.json`` (provenance
        and whatever the aggregation records; it may write further files)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_file(self.change.tensors(), directory / "edit.safetensors")
        meta = {
            "format": EDIT_FORMAT,
            "aggregation": self.aggregation,
            "solved": not self.change.per_request,
            **self.change.meta(),
            **self.change.save_extra(directory),
            "base_model": self.base_model,
            "layouts": self.layouts,
            "modules": self.modules,
            "requests": [asdict(r) for r in self.requests],
        }
        (directory / "edit.json").write_text(json.dumps(meta, indent=2))
        return directory

    @classmethod
    def load(
        cls, directory: str | Path, model: EditableModel | None = None, shared_cache: dict | None = None
    ) -> Edit:
        """Read an edit written by :meth:`save`; ``model`` binds it for ``apply()``.

        ``shared_cache`` shares what edits loaded together have in common (least-squares
        key preconditioners, by hash; scope models)."""
        directory = Path(directory)
        meta = json.loads((directory / "edit.json").read_text())
        fmt = meta.get("format")
        if fmt not in READABLE_FORMATS:
            raise ValueError(f"{directory} is not a {EDIT_FORMAT} edit (format={fmt})")
        kind = change_class(meta.get("aggregation", "sum"), solved=meta.get("solved", False))
        change = kind.load(load_file(directory / "edit.safetensors"), meta, directory, shared_cache)
        edit = cls(change, meta["layouts"], [EditRequest(**r) for r in meta["requests"]], meta["base_model"])
        if model is not None:
            edit.model = edit._target(model)
        return edit

    def to_peft(self, directory: str | Path, base_model_name_or_path: str | None = None) -> Path:
        """Export as a PEFT LoRA adapter any multi-LoRA server can load."""
        from mend.export.peft import save_as_lora

        name = base_model_name_or_path or self.base_model.get("name")
        kind = self.base_model.get("kind", "causal")
        return save_as_lora(self.deltas, self.layouts, Path(directory), name, kind)
