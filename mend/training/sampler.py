"""Deterministic step batches: the batch of step ``i`` depends only on (seed, i).

Resuming at step ``i`` therefore replays exactly the data order of an uninterrupted
run, with no random-number-generator state to save.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mend.data.records import EditRecord, LocalityProbe
from mend.models.tasks import Task
from mend.training.step import StepBatch


def _generator(*keys: int) -> torch.Generator:
    seed = 0
    for key in keys:
        seed = (seed * 1_000_003 + key) % (2**62)
    return torch.Generator().manual_seed(seed)


class StepSampler:
    """Draws ``n_edits`` records per step, one rephrase each, and ``n_loc`` locality probes.

    Records are visited in a fresh permutation every epoch. The equivalence batch holds
    each edit's rephrase and, when ``equiv_includes_prompt``, the edit prompt itself, so
    the editor is trained for both reliability and generalisation. Locality probes are
    the edited records' own probes first, topped up from the whole pool.
    """

    def __init__(
        self,
        records: Sequence[EditRecord],
        task: Task,
        *,
        n_edits: int = 1,
        n_loc: int = 1,
        seed: int = 0,
        equiv_includes_prompt: bool = True,
    ):
        if not records:
            raise ValueError("no training records")
        self.records = list(records)
        self.task = task
        self.n_edits = n_edits
        self.n_loc = n_loc
        self.seed = seed
        self.equiv_includes_prompt = equiv_includes_prompt
        self.loc_pool: list[LocalityProbe] = [p for r in self.records for p in r.locality]
        if not self.loc_pool:
            raise ValueError("training records carry no locality probes")
        self._perm_epoch = -1
        self._perm: list[int] = []

    def _record(self, position: int) -> EditRecord:
        epoch, offset = divmod(position, len(self.records))
        if epoch != self._perm_epoch:
            self._perm = torch.randperm(len(self.records), generator=_generator(self.seed, epoch)).tolist()
            self._perm_epoch = epoch
        return self.records[self._perm[offset]]

    def records_for(self, step: int) -> list[EditRecord]:
        return [self._record(step * self.n_edits + k) for k in range(self.n_edits)]

    def batch(self, step: int) -> StepBatch:
        gen = _generator(self.seed, 7919, step)
        records = self.records_for(step)
        prompts = [r.prompt for r in records]
        targets = [r.target for r in records]

        equiv_prompts, equiv_targets = [], []
        for r in records:
            if r.rephrases:
                pick = int(torch.randint(len(r.rephrases), (1,), generator=gen))
                equiv_prompts.append(r.rephrases[pick])
                equiv_targets.append(r.target)
            if self.equiv_includes_prompt or not r.rephrases:
                equiv_prompts.append(r.prompt)
                equiv_targets.append(r.target)

        probes = [p for r in records for p in r.locality][: self.n_loc]
        while len(probes) < self.n_loc:
            probes.append(self.loc_pool[int(torch.randint(len(self.loc_pool), (1,), generator=gen))])

        return StepBatch(
            edit=self.task.batch(prompts, targets),
            equiv=self.task.batch(equiv_prompts, equiv_targets),
            loc=self.task.batch([p.prompt for p in probes], [p.answer for p in probes]),
        )
