"""Wikitext-style generation edits: make the model continue a passage a new way.

MEND's ``gen`` experiment edits a passage's continuation, uses the same passage
with a prefix removed as the rephrase, and checks locality on other passages scored
on all their tokens. Its data is built on the fly from wikitext-103, so this module
defines a plain input format for such edits instead.

Input format (JSON Lines, one object per line; a JSON list of the same objects is
accepted too)::

    {"context": "<passage>", "continuation": "<what the model should write next>"}
    {"id": "optional-id", "context": "...", "continuation": "..."}

``context`` and ``continuation`` are required non-empty strings; ``id`` (string or
integer) is optional, and without it the id is derived from the content.

Mapping (``kind="generation"``): prompt = context, target = continuation;
rephrases = (context without its first k words,) with 1 <= k <= half the words, k
hashed from the record id (no rephrase for a one-word context); locality =
``n_locality`` other records' contexts, each split into prompt = first word and
answer = the rest, so the whole passage but its first word is scored. Locality is
drawn from the records of the same load (deterministically), so ``limit``
changes it.
"""

from __future__ import annotations

from mend.data.derive import content_id, drop_word_prefix, split_first_word
from mend.data.errors import OnError
from mend.data.fields import Fields, RecordContext
from mend.data.loading import (
    LoadedDataset,
    PathArg,
    Warn,
    load_records,
    locality_from_others,
    with_locality,
)
from mend.data.records import EditRecord, LocalityProbe

FORMAT = "wikitext"


def convert_wikitext(raw: object, ctx: RecordContext) -> EditRecord:
    """One wikitext edit -> EditRecord without locality (added after the load)."""
    f = Fields(raw)
    ctx.id_field = "id"
    key = f.identifier("id", required=False)
    context = f.text("context")
    continuation = f.text("continuation")
    record_id = f"{FORMAT}:{key}" if key else content_id(FORMAT, context, continuation)

    rephrase = drop_word_prefix(context, salt=record_id)
    if rephrase is None:
        ctx.warn("context", "fewer than 2 words: no rephrase derived")
    return EditRecord(
        record_id=record_id,
        prompt=context,
        target=continuation,
        rephrases=() if rephrase is None else (rephrase,),
        kind="generation",
        source=FORMAT,
    )


def add_passage_locality(
    records: list[EditRecord], warn: Warn, n_locality: int
) -> list[EditRecord]:
    """Give each record probes cut from other records' contexts."""
    # Only passages with two or more words can be cut into prompt and answer.
    pool = sorted(
        (
            (r.record_id, r.prompt, split)
            for r in records
            if (split := split_first_word(r.prompt)) is not None
        ),
        key=lambda item: item[0],
    )
    return locality_from_others(
        records, pool, key=lambda item: item[0], text=lambda item: item[1],
        probe=lambda item: LocalityProbe(prompt=item[2][0], answer=item[2][1]), n=n_locality, salt=FORMAT,
        warn=warn, what="locality passages")


def load_wikitext(
    path: PathArg, *, on_error: OnError = "skip", limit: int | None = None, n_locality: int = 1
) -> LoadedDataset:
    """Load wikitext-style generation edits (see the module docstring for the format)."""
    return load_records(path, format=FORMAT, convert=convert_wikitext, on_error=on_error, limit=limit,
                        finish=with_locality(add_passage_locality, n_locality))
