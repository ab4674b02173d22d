"""Which input positions of a forward pass are the prompt.

Teacher-forced scoring feeds ``prompt + target`` in one forward; an edit that is
switched on per request (:mod:`mend.scope.routing`) must decide on the prompt alone,
as it does when generating. Scoring code marks the prompt positions for the enclosed
forward; routing reads them. Nothing else looks at it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import Tensor, nn

_ATTR = "_mend_prompt_window"


@contextmanager
def prompt_window(model: nn.Module, mask: Tensor) -> Iterator[None]:
    """Mark ``mask`` (B, T) as the prompt positions of ``model``'s enclosed forward passes."""
    previous = model.__dict__.get(_ATTR)
    model.__dict__[_ATTR] = mask
    try:
        yield
    finally:
        model.__dict__[_ATTR] = previous


def current_prompt_window(model: nn.Module) -> Tensor | None:
    """The prompt positions marked for ``model``'s current forward pass, if any."""
    return model.__dict__.get(_ATTR)
