"""Batching texts of similar length together (what scoring and routing checks share).

Padding a chunk to its longest member is the cost of batching: zsRE's locality answers
vary widely in length, and sorting first makes judging a correction batch markedly
faster. :func:`length_chunks` says which items go together and :func:`in_order` puts the
chunks' results back; :func:`by_length` is the two around one function.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

T = TypeVar("T")


def length_chunks(lengths: Sequence[int], chunk: int = 64) -> list[list[int]]:
    """The indices of ``lengths`` in groups of at most ``chunk``, shortest first."""
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    return [order[start : start + chunk] for start in range(0, len(order), chunk)]


def in_order(chunks: Sequence[Sequence[int]], results: Sequence[Sequence[T]]) -> list[T]:
    """Each chunk's results (one per index of the chunk) in the original order."""
    out: list = [None] * sum(len(c) for c in chunks)
    for index, found in zip(chunks, results, strict=True):
        for i, result in zip(index, found, strict=True):
            out[i] = result
    return out


def by_length(
    fn: Callable[[list[str], list[str]], Sequence[T]], prompts: Sequence[str], answers: Sequence[str], chunk: int = 64
) -> list[T]:
    """``fn`` over chunks of similar length, results in the original order."""
    chunks = length_chunks([len(p) + len(a) for p, a in zip(prompts, answers, strict=True)], chunk)
    return in_order(chunks, [fn([prompts[i] for i in c], [answers[i] for i in c]) for c in chunks])
