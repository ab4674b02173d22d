"""The meta-training progress bar ends where the run ends: at the time budget or at
max_steps, whichever comes first."""

from __future__ import annotations

import io

import pytest

from mend.training.progress import RunProgress, budget_fraction


def test_the_nearer_limit_sets_the_fraction():
    # The 11-minute main job: 282 steps after 5:53 is about half of the run, not 0.3%.
    assert budget_fraction(282, 353, 100_000, 11) == pytest.approx(353 / 660)
    # A step cap that ends the run before the time budget does.
    assert budget_fraction(282, 353, 300, 60) == pytest.approx(282 / 300)
    assert budget_fraction(50, 10_000, 100, None) == 0.5  # no budget: steps only
    assert budget_fraction(10, 9_999, 100, 1) == 1.0  # never past the end


def _bar(**kwargs) -> RunProgress:
    progress = RunProgress(**kwargs)
    progress.bar.fp = io.StringIO()  # tqdm writes here instead of the terminal
    return progress


def test_a_time_budgeted_run_counts_down_to_its_budget():
    progress = _bar(max_steps=100_000, max_minutes=11)
    assert progress.bar.total == 660
    progress.update(282, 353.0, loss="1.0")
    assert progress.fraction == pytest.approx(353 / 660, abs=1 / 660)
    assert progress.bar.postfix.startswith("step=282/100000")
    progress.close()


def test_a_run_resumed_mid_budget_starts_where_it_was():
    progress = _bar(max_steps=1_000, max_minutes=10, step=100, elapsed_s=300.0)
    assert progress.fraction == pytest.approx(0.5)
    progress.update(900, 310.0)  # the steps now run out first
    assert progress.fraction == pytest.approx(0.9)
    progress.close()


def test_without_a_budget_it_counts_steps():
    progress = _bar(max_steps=40)
    progress.update(10, 999.0)
    assert (progress.bar.n, progress.bar.total, progress.fraction) == (10, 40, 0.25)
    progress.close()
