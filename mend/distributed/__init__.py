"""Data-parallel, ZeRO-sharded meta-training with DeepSpeed.

The frozen base model is partitioned with ZeRO-3 at load time (:mod:`.zero`), the
editor is what the DeepSpeed engine trains (:mod:`.backend`), ranks keep identical
normalisation statistics (:mod:`.norm_sync`), and :mod:`.train` is the entry point for
the ``deepspeed`` launcher and ``torchrun``. Nothing here imports DeepSpeed until it is
used, so the single-process library does not pay for it.

:func:`gathered` is used by the engine itself (merging edits, fingerprints): it makes
partitioned parameters whole for the duration of a block and is a no-op otherwise.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn


@contextlib.contextmanager
def gathered(params: list[nn.Parameter], modifier_rank: int | None = 0) -> Iterator[None]:
    """Make partitioned (ZeRO-3) parameters whole inside the block; no-op otherwise.

    Every rank must enter the block (it is a collective). With ``modifier_rank=r`` the
    values rank ``r`` holds when the block ends are written back to every partition;
    with ``None`` the parameters are only read.
    """
    if any(hasattr(p, "ds_id") for p in params):
        import deepspeed

        with deepspeed.zero.GatheredParameters(params, modifier_rank=modifier_rank):
            yield
    else:
        yield
