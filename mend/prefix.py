"""Run the frozen blocks before the first edited one once, and replay them afterwards.

An edit only changes the last few blocks, so for inputs scored both before and after an
edit (locality, rephrases) everything up to the first edited block is the same. We
record that block's output once and, in later passes over the same inputs, make the
earlier blocks hand the recorded output straight through. Blocks are found from the
targets' module names, so no family-specific code is needed; models whose targets are
not all in one stack of blocks (T5/BART) simply run full passes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

from torch import nn

from mend.models.targets import EditTarget


def _block_stack(model: nn.Module, targets: Sequence[EditTarget]) -> tuple[nn.ModuleList, int] | None:
    """The ModuleList holding every target's block, and the first edited block's index."""
    stacks = set()
    first = None
    for target in targets:
        parts = target.module_name.split(".")
        for i in range(len(parts) - 1, 0, -1):
            parent = ".".join(parts[:i])
            if parts[i].isdigit() and isinstance(model.get_submodule(parent), nn.ModuleList):
                stacks.add(parent)
                first = int(parts[i]) if first is None else min(first, int(parts[i]))
                break
        else:
            return None
    if len(stacks) != 1 or not first:
        return None
    return model.get_submodule(stacks.pop()), first


class _PrefixDone(Exception):
    """Raised from the recording hook to end a pass that only needs the prefix."""


class BlockPrefix:
    """Record-and-replay of the blocks before the first edited block."""

    def __init__(self, model: nn.Module, targets: Sequence[EditTarget]):
        found = _block_stack(model, targets)
        self.enabled = found is not None
        self.blocks, self.first = found if found else (None, 0)

    @contextlib.contextmanager
    def record(self) -> Iterator[list]:
        """Store the output of the last frozen block during the enclosed pass."""
        store: list = []
        if not self.enabled:
            yield store
            return
        handle = self.blocks[self.first - 1].register_forward_hook(
            lambda module, args, output: store.append(output)
        )
        try:
            yield store
        finally:
            handle.remove()

    def run(self, forward) -> object:
        """Run ``forward()`` only up to the first edited block; return that block's input."""
        store: list = []

        def stop(module, args, output):
            store.append(output)
            raise _PrefixDone

        handle = self.blocks[self.first - 1].register_forward_hook(stop)
        try:
            forward()
        except _PrefixDone:
            pass
        finally:
            handle.remove()
        return store[0]

    @contextlib.contextmanager
    def replay(self, recorded) -> Iterator[None]:
        """Skip the frozen blocks: each returns the recorded output of the last one.

        Every skipped block returns the same object, so whatever the model's loop does
        with a block's output, the first edited block receives the recorded one.
        """
        if not self.enabled:
            raise RuntimeError("this model has no shared prefix to replay")
        skipped = [self.blocks[i] for i in range(self.first)]

        def passthrough(*args, **kwargs):
            return recorded

        for block in skipped:
            block.forward = passthrough
        try:
            yield
        finally:
            for block in skipped:
                del block.forward
