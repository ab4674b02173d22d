"""Merged normalisation statistics: ranks see exactly what one process would have seen."""

from __future__ import annotations

import torch

from mend.editor.network import RunningNorm, batch_moments


def _fake_sync(all_batches: list[torch.Tensor], rank: int):
    """What the all-gather returns to ``rank``: every rank's moments, in rank order."""

    def sync(mine):
        every = [batch_moments(x) for x in all_batches]
        assert all(torch.equal(a, b) for a, b in zip(mine, every[rank], strict=True))
        return every, rank

    return sync


def test_synchronised_updates_equal_one_process_running_the_batches_in_order():
    torch.manual_seed(0)
    dim = 12
    warm = torch.randn(7, dim) * 3 + 1
    batches = [torch.randn(n, dim) * s + m for n, s, m in [(5, 2.0, 0.5), (0, 1.0, 0.0), (9, 0.5, -2.0)]]

    single = RunningNorm(dim)
    single.update(warm)
    outputs = []
    for x in batches:  # one process: micro-batches one after another
        single.update(x)
        if x.shape[0]:
            outputs.append(single(x))

    for rank, x in enumerate(batches):  # three ranks running them at once
        norm = RunningNorm(dim)
        norm.update(warm)
        norm.sync = _fake_sync(batches, rank)
        norm.update(x)
        # every rank ends with the statistics of all batches ...
        assert torch.allclose(norm.count, single.count) and norm.count.item() == 7 + 14
        assert torch.allclose(norm.mean, single.mean, atol=1e-12)
        assert torch.allclose(norm.m2, single.m2, rtol=1e-12)
        # ... but normalises its own rows as the single process did at that point.
        if x.shape[0]:
            expected = outputs[[i for i, b in enumerate(batches) if b.shape[0]].index(rank)]
            assert torch.allclose(norm(x), expected, atol=1e-6)
        # The override is used once; afterwards the full statistics apply.
        assert torch.allclose(norm(warm), single(warm))


def test_unsynchronised_update_skips_empty_batches():
    norm = RunningNorm(4)
    norm.update(torch.zeros(0, 4))
    assert norm.count.item() == 0
    norm.update(torch.ones(3, 4))
    assert norm.count.item() == 3 and torch.equal(norm.mean, torch.ones(4, dtype=torch.float64))
