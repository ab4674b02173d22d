"""Progress of a meta-training run against the limit that will end it.

A run stops at ``max_steps`` or, when ``max_minutes`` is set, at its time budget,
whichever comes first. A bar counting steps to a 100,000-step cap that the time budget
will never let the run reach says ``0%`` and estimates days for a run that ends in
minutes; this one shows how much of the nearer limit is used, and its estimate of the
time left is the time to that limit.
"""

from __future__ import annotations

from tqdm.auto import tqdm


def budget_fraction(step: int, elapsed_s: float, max_steps: int, max_minutes: float | None) -> float:
    """The share of the run done: of the steps or of the time budget, whichever is further."""
    fraction = step / max_steps
    if max_minutes:
        fraction = max(fraction, elapsed_s / (60 * max_minutes))
    return min(1.0, max(0.0, fraction))


class RunProgress:
    """A terminal progress bar for :class:`mend.training.trainer.Trainer`.

    Without a time budget it counts steps to ``max_steps``. With one it counts seconds of
    the budget, or, once the steps would run out first, the equivalent share of them, so
    the bar ends where the run ends and its estimate counts down to that moment.
    """

    def __init__(self, max_steps: int, max_minutes: float | None = None, *, step: int = 0, elapsed_s: float = 0.0,
                 disable: bool = False, desc: str = "meta-training"):
        self.max_steps = max_steps
        self.max_minutes = max_minutes
        if max_minutes:
            self.total = round(60 * max_minutes)
            unit = "s"
            fmt = "{desc}: {percentage:3.0f}%|{bar}| {elapsed}<{remaining} of the budget{postfix}"
        else:
            self.total = max_steps
            unit = "step"
            fmt = None  # tqdm's default: steps done / max_steps
        self.bar = tqdm(total=self.total, initial=self._position(step, elapsed_s), desc=desc, unit=unit,
                        bar_format=fmt, dynamic_ncols=True, disable=disable)

    def _position(self, step: int, elapsed_s: float) -> int:
        if not self.max_minutes:
            return step
        return round(self.total * budget_fraction(step, elapsed_s, self.max_steps, self.max_minutes))

    @property
    def fraction(self) -> float:
        """How much of the run the bar shows as done (0 to 1)."""
        return self.bar.n / self.total

    def update(self, step: int, elapsed_s: float, **postfix: str) -> None:
        """Move to ``step`` after ``elapsed_s`` seconds of the run (resumed time included)."""
        position = self._position(step, elapsed_s)
        self.bar.update(position - self.bar.n)
        if self.max_minutes:
            postfix = {"step": f"{step}/{self.max_steps}", **postfix}
        self.bar.set_postfix(postfix, refresh=False)

    def close(self) -> None:
        self.bar.close()
