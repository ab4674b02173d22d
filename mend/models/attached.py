"""State kept beside a model, one instance per model (the edits hooked into it, the router).

Kept in the module's ``__dict__``, not as a submodule or buffer, so torch neither saves it
with the model's state nor moves it with ``.to()``; it lives as long as the model does.
"""

from __future__ import annotations

from typing import ClassVar, Self

from torch import nn


class Attached:
    """Base of a class with one instance per model, found again with :meth:`of`."""

    _ATTR: ClassVar[str]  # the name it is kept under, unique per subclass

    def __init__(self, model: nn.Module):
        self.model = model

    @classmethod
    def of(cls, model: nn.Module) -> Self:
        """The instance attached to ``model``, created on first use."""
        found = model.__dict__.get(cls._ATTR)
        if found is None:
            found = model.__dict__[cls._ATTR] = cls(model)
        return found
