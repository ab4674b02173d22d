"""WikiBio hallucination edits (the WISE release), as generation edits.

Input: a JSON list of objects with ``prompt`` (a Wikipedia-style passage the model
wrote about ``subject``), ``target_new`` (the sentence it should continue with
instead: long, so ``kind="generation"``), ``locality_prompt`` and
``locality_ground_truth`` (a web-text passage cut in two, scored on the second half).

Note on locality: the released passages are cut at a character offset, often
inside a word ("historica" | "l print"). The shared text policy strips both halves
and the tokenisation layer joins them with one space, so such a probe is scored on
a slightly different text than the original; see :mod:`mend.data.fields`.

There are no ids in the release; ids are derived from (prompt, target_new).
"""

from __future__ import annotations

from mend.data.derive import content_id
from mend.data.errors import OnError
from mend.data.fields import Fields, RecordContext
from mend.data.loading import LoadedDataset, PathArg, load_records
from mend.data.records import EditRecord

FORMAT = "wikibio"


def convert_wikibio(raw: object, ctx: RecordContext) -> EditRecord:
    """One WikiBio hallucination record -> EditRecord; raises FieldError."""
    f = Fields(raw)
    prompt = f.text("prompt")
    target = f.text("target_new")
    subject = f.optional_string("subject")
    loc_prompt = f.string("locality_prompt")
    loc_answer = f.string("locality_ground_truth")
    return EditRecord(
        record_id=content_id(FORMAT, prompt, target),
        prompt=prompt,
        target=target,
        locality=ctx.probe("locality_prompt", loc_prompt, "locality_ground_truth", loc_answer),
        subject=subject,
        kind="generation",
        source=FORMAT,
    )


def load_wikibio(
    path: PathArg, *, on_error: OnError = "skip", limit: int | None = None
) -> LoadedDataset:
    """Load a WikiBio hallucination file (see the module docstring)."""
    return load_records(
        path, format=FORMAT, convert=convert_wikibio, on_error=on_error, limit=limit
    )
