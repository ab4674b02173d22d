"""What MEMIT and AlphaEdit share: values at the last edited block, spread over the blocks.

For each edited block in order, the keys and the current state at the last block are
recomputed on the weights changed so far; the block takes ``(z - current) / (blocks
left)`` of what remains and a method-specific solve turns that share into a change of
its MLP output projection (MEMIT's ``apply_memit_to_model`` loop).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from mend.baselines.config import SubjectEditConfig
from mend.baselines.covariance import SecondMoments
from mend.baselines.keys import default_layers, output_projection, subject_end, subject_keys
from mend.baselines.values import ValueStore
from mend.data.records import EditRecord
from mend.evaluation.methods import WeightSnapshot
from mend.models.blocks import decoder_blocks
from mend.models.editable import EditableModel

# (layer, keys (n, d_in), residual share (n, d_out)) -> change of the weight (d_out, d_in)
Solve = Callable[[int, Tensor, Tensor], Tensor]


def resolve_layers(model: EditableModel, layers: Sequence[int] | None) -> list[int]:
    """The edited blocks (the config's, or the default for the model's depth), checked."""
    n = len(decoder_blocks(model.model))
    chosen = list(layers) if layers is not None else default_layers(n)
    if not chosen or any(b <= a for a, b in zip(chosen, chosen[1:], strict=False)) or not 0 <= chosen[0] <= chosen[-1] < n:
        raise ValueError(f"edited blocks must be increasing and within 0..{n - 1}; got {chosen}")
    return chosen


@torch.no_grad()
def weights_digest(model: EditableModel, names: Sequence[str]) -> str:
    """A hash of the model's identity and of the named matrices' exact values: values
    computed on one state of these weights are not reused on another."""
    digest = hashlib.sha256(model.targets_fingerprint().encode())
    for name in names:
        digest.update(model.model.get_submodule(name).weight.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


@torch.no_grad()
def add_to_weight(model: EditableModel, name: str, change: Tensor, layout: str) -> None:
    """``W += change`` for ``change`` shaped ``(d_out, d_in)`` (GPT-2's Conv1D stores Wᵀ)."""
    weight = model.model.get_submodule(name).weight
    change = change.T if layout == "conv1d" else change
    weight.add_(change.to(device=weight.device, dtype=weight.dtype))


@dataclass(kw_only=True)
class SubjectEdit:
    """A batch edit keyed at the subject (MEMIT's frame); subclasses give the solve."""

    config: SubjectEditConfig
    moments: SecondMoments
    store: ValueStore = field(default_factory=ValueStore)
    name: str = "subject-edit"

    def solve(self, layer: int, keys: Tensor, residual: Tensor, moment: Tensor) -> Tensor:
        raise NotImplementedError

    def apply(self, model: EditableModel, records: Sequence[EditRecord]) -> WeightSnapshot:
        """Edit ``model`` so every record's prompt yields its target; ``remove()`` of the
        result restores the edited matrices exactly."""
        for record in records:
            subject_end(record.prompt, record.subject)  # refuse before any work is done
        layers = resolve_layers(model, self.config.layers)
        modules = {layer: output_projection(model, layer) for layer in layers}
        edited = model.retargeted([re.escape(name) for name in modules.values()])
        layouts = {t.module_name: t.layout for t in edited.targets}
        moments = self.moments.get(model, modules)
        state = weights_digest(model, list(modules.values()))
        values = self.store.values(model, records, layers[-1], self.config.values, state)
        snapshot = WeightSnapshot(edited)
        try:
            self._spread(model, records, values, layers, modules, layouts, moments)
        except BaseException:
            snapshot.remove()
            raise
        return snapshot

    def _spread(self, model, records, values, layers, modules, layouts, moments) -> None:
        prompts, subjects = [r.prompt for r in records], [r.subject for r in records]
        for i, layer in enumerate(layers):
            keys, current = subject_keys(model, prompts, subjects, [layer], layers[-1])
            residual = (values - current) / (len(layers) - i)
            change = self.solve(layer, keys[layer].double(), residual.double(), moments[layer])
            add_to_weight(model, modules[layer], change, layouts[modules[layer]])
