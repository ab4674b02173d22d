"""Low-rank weight changes and how they are hooked into (or merged into) a model.

An edit never materialises its dense ``d_out x d_in`` change to be applied: the layer's
output becomes ``y = W x + V^T (U x)``, which costs ``O(r (d_in + d_out))`` per token for
a rank-``r`` change, and removing it restores the original computation exactly.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from mend.distributed import gathered
from mend.models.attached import Attached
from mend.models.targets import Layout


@dataclass
class LowRankDelta:
    """``dW = v^T u`` in ``(d_out, d_in)`` orientation; one row per edited token."""

    u: Tensor  # (r, d_in)
    v: Tensor  # (r, d_out)
    example: Tensor  # (r,) which edit request each row came from

    @property
    def rank(self) -> int:
        return self.u.shape[0]

    def contribution(self, x: Tensor) -> Tensor:
        """``dW x`` for activations ``x`` of shape ``(..., d_in)``."""
        u, v = self.u.to(x.dtype), self.v.to(x.dtype)
        return (x @ u.T) @ v

    def dense(self, layout: Layout) -> Tensor:
        """The dense change in the module's weight layout (for merging and tests)."""
        dw = self.v.T @ self.u  # (d_out, d_in), nn.Linear layout
        return dw if layout == "linear" else dw.T

    def select(self, keep: Tensor) -> LowRankDelta:
        return LowRankDelta(self.u[keep], self.v[keep], self.example[keep])

    def detach(self) -> LowRankDelta:
        return LowRankDelta(self.u.detach(), self.v.detach(), self.example)

    def to(self, *args, **kwargs) -> LowRankDelta:
        return LowRankDelta(self.u.to(*args, **kwargs), self.v.to(*args, **kwargs), self.example)

    @staticmethod
    def cat(deltas: Iterable[LowRankDelta]) -> LowRankDelta:
        """The sum of several changes, as one change of the summed rank."""
        deltas = list(deltas)
        if len(deltas) == 1:  # nothing to join: no copy (a refined edit's values carry a graph)
            return deltas[0]
        return LowRankDelta(
            torch.cat([d.u for d in deltas]),
            torch.cat([d.v for d in deltas]),
            torch.cat([d.example for d in deltas]),
        )


class DeltaHooks(Attached):
    """The low-rank changes currently hooked into one model, stacked per module.

    One forward hook per edited module adds the sum of every active change; changes are
    registered and removed under a key (one per :class:`~mend.edit.Edit`), so edits
    stack in application order and any one can be taken out again.
    """

    _ATTR = "_mend_delta_hooks"

    def __init__(self, model: nn.Module):
        super().__init__(model)
        self._active: dict[str, dict[object, LowRankDelta]] = {}
        self._handles: dict[str, torch.utils.hooks.RemovableHandle] = {}
        self._fused: dict[str, LowRankDelta] = {}

    def add(self, key: object, deltas: dict[str, LowRankDelta]) -> None:
        for name, delta in deltas.items():
            stack = self._active.setdefault(name, {})
            if key in stack:
                raise ValueError(f"this edit is already applied to {name}")
            stack[key] = delta
            self._fused.pop(name, None)
            if name not in self._handles:
                module = self.model.get_submodule(name)
                self._handles[name] = module.register_forward_hook(self._hook(name))

    def remove(self, key: object) -> None:
        for name in list(self._active):
            stack = self._active[name]
            if stack.pop(key, None) is None:
                continue
            self._fused.pop(name, None)
            if not stack:
                del self._active[name]
                self._handles.pop(name).remove()

    def keys(self) -> list[object]:
        seen: dict[object, None] = {}
        for stack in self._active.values():
            seen.update(dict.fromkeys(stack))
        return list(seen)

    def _hook(self, name: str):
        def hook(module, args, output):
            fused = self._fused.get(name)
            if fused is None:
                fused = LowRankDelta.cat(self._active[name].values())
                self._fused[name] = fused
            return output + fused.contribution(args[0])

        return hook


@torch.no_grad()
def add_to_weights(
    model: nn.Module, deltas: dict[str, LowRankDelta], layouts: dict[str, Layout], sign: float
) -> None:
    """``W += sign * dW`` for each module; only the edited matrices are gathered."""
    weights = {name: model.get_submodule(name).weight for name in deltas}
    with gathered(list(weights.values())):
        for name, delta in deltas.items():
            weight = weights[name]
            dense = delta.detach().to(torch.float32).dense(layouts[name])
            weight.copy_((weight.float() + sign * dense).to(weight.dtype))
