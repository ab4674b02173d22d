"""A correction's subject as token ids, and whether a request's tokens contain it.

The second, cheaper test of routing (:mod:`mend.scope.routing`): a correction whose key
scores at or above the scope model's ``subject_threshold`` but below its ``threshold``
switches on only if the request's prompt contains the correction's subject. Requests are
token ids by then, so the subject is kept as the few token sequences it is spelled with
in a prompt: as written, after a space, and with its first letter's case swapped.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

VARIANTS = 4  # as written, after a space, first letter's case swapped (twice)
MAX_TOKENS = 16  # longer subjects are matched on their first tokens


def subject_tokens(tokenizer, subjects: Sequence[str | None]) -> Tensor:
    """``(n, VARIANTS, MAX_TOKENS)`` token ids of each subject's spellings, -1 padded
    (all -1 for a correction without a subject)."""
    out = torch.full((len(subjects), VARIANTS, MAX_TOKENS), -1, dtype=torch.long)
    for i, subject in enumerate(subjects):
        if not subject or not subject.strip():
            continue
        swapped = subject[0].swapcase() + subject[1:]
        for v, text in enumerate((subject, " " + subject, swapped, " " + swapped)):
            ids = tokenizer(text, add_special_tokens=False)["input_ids"][:MAX_TOKENS]
            out[i, v, : len(ids)] = torch.tensor(ids, dtype=torch.long)
    return out


def contains(sequence: Sequence[int], spellings: Tensor, present: set[int] | None = None) -> bool:
    """Whether ``sequence`` holds one of ``spellings`` (``(VARIANTS, MAX_TOKENS)``) contiguously
    (``present``: the set of ``sequence``'s tokens, when the caller checks it many times)."""
    for row in spellings.tolist():
        needle = [t for t in row if t >= 0]
        if not needle or (present is not None and not present.issuperset(needle)):
            continue
        first, n = needle[0], len(needle)
        for start in range(len(sequence) - n + 1):
            if sequence[start] == first and list(sequence[start : start + n]) == needle:
                return True
    return False


def gated(
    sims: Tensor,
    sequences: Sequence[Sequence[int]],
    subjects: Tensor,
    threshold: float,
    subject_threshold: float | None,
    max_checks: int = 64,
    related: Tensor | None = None,
) -> Tensor:
    """Which (query, key) pairs pass: ``sims`` (Q, m) at or above ``threshold``, or at or
    above ``subject_threshold`` with the key's subject in the query's tokens (the
    ``max_checks`` best such candidates per query are checked) and, when ``related``
    (Q, m) is given, the query asking the key's question (its relation test)."""
    passing = sims >= threshold
    if subject_threshold is None or subject_threshold >= threshold or subjects.numel() == 0:
        return passing
    has_subject = (subjects >= 0).flatten(1).any(1).to(sims.device)
    candidates = (sims >= subject_threshold) & ~passing & has_subject
    if related is not None:
        candidates &= related.to(sims.device)
    for q in range(sims.shape[0]):
        keys = candidates[q].nonzero().flatten()
        if len(keys) > max_checks:
            keys = keys[sims[q, keys].topk(max_checks).indices]
        present = set(sequences[q])  # most candidates' subjects share no token with the request
        for k in keys.tolist():
            if contains(sequences[q], subjects[k], present):
                passing[q, k] = True
    return passing


def cat_padded(parts: list[Tensor]) -> Tensor:
    """Subject spellings of several changes in one tensor, -1 padded to the widest."""
    variants = max(p.shape[1] for p in parts)
    tokens = max(p.shape[2] for p in parts)
    out = torch.full((sum(p.shape[0] for p in parts), variants, tokens), -1, dtype=torch.long)
    start = 0
    for p in parts:
        out[start : start + p.shape[0], : p.shape[1], : p.shape[2]] = p
        start += p.shape[0]
    return out
