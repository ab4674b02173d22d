"""Batching texts of similar length together (what scoring and routing checks share)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

T = TypeVar("T")


def by_length(
    fn: Callable[[list[str], list[str]], Sequence[T]], prompts: Sequence[str], answers: Sequence[str], chunk: int = 64
) -> list[T]:
    """``fn`` over chunks of similar length, results in the original order.

    Padding a chunk to its longest member is the cost of batching: zsRE's locality
    answers vary widely in length, and sorting first makes judging a correction batch
    markedly faster.
    """
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]) + len(answers[i]))
    out: list = [None] * len(prompts)
    for start in range(0, len(order), chunk):
        index = order[start : start + chunk]
        results = fn([prompts[i] for i in index], [answers[i] for i in index])
        for i, result in zip(index, results, strict=True):
            out[i] = result
    return out
