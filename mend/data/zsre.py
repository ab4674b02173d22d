"""zsRE question-answering edits in the MEND/ROME JSON format.

Input: a JSON list of objects with ``subject, src, pred, rephrase, alt, answers,
loc, loc_ans`` (and ``cond``, ``portability`` in some releases). MEND and ROME edit
``src`` to answer ``alt``; ``rephrase`` tests generalization; ``loc``/``loc_ans``
is an unrelated Natural Questions pair for locality.

Mapping: prompt = src, target = alt, rephrases = (rephrase,), locality = one probe
(NQ question as MEND preprocesses it, loc_ans), old_target = answers[0], subject.
``pred``, ``answers`` and ``portability`` are kept in ``extra``; ``cond`` is not,
being ``"{pred} >> {alt} || {src}"`` in every released record.

zsRE has no record ids, so ids are derived from (src, alt): see
:func:`mend.data.derive.content_id`.
"""

from __future__ import annotations

from typing import Any

from mend.data.derive import content_id
from mend.data.errors import OnError
from mend.data.fields import Fields, RecordContext
from mend.data.loading import LoadedDataset, PathArg, load_records
from mend.data.records import EditRecord

FORMAT = "zsre"
REQUIRED_FIELDS = ("src", "alt", "rephrase", "loc", "loc_ans")

# The zsRE files prefix every locality question with this tag.
NQ_PREFIX = "nq question:"


def nq_question(loc: str) -> str:
    """MEND's Natural Questions preprocessing: drop the tag, capitalise, end with "?".

    Only the first letter is upper-cased (``str.capitalize`` would lower-case the
    rest, breaking names). A question that is empty after the tag stays empty.
    """
    question = loc.strip()
    if question.startswith(NQ_PREFIX):
        question = question[len(NQ_PREFIX) :].strip()
    if not question:
        return ""
    question = question[0].upper() + question[1:]
    return question if question.endswith("?") else question + "?"


def convert_zsre(raw: object, ctx: RecordContext) -> EditRecord:
    """One zsRE record -> EditRecord; raises FieldError on a bad field."""
    f = Fields(raw)
    src = f.text("src")
    alt = f.text("alt")
    rephrase = f.string("rephrase")
    loc = f.string("loc")
    loc_ans = f.string("loc_ans")
    answers = f.strings("answers", required=False)
    subject = f.optional_string("subject")
    pred = f.optional_string("pred")

    extra: dict[str, Any] = {}
    if pred is not None:
        extra["pred"] = pred
    if answers is not None:
        extra["answers"] = answers
    if f.has("portability"):
        extra["portability"] = f.raw("portability")

    return EditRecord(
        record_id=content_id(FORMAT, src, alt),
        prompt=src,
        target=alt,
        rephrases=ctx.rephrases([("rephrase", rephrase)], src),
        locality=ctx.probe("loc", nq_question(loc), "loc_ans", loc_ans),
        old_target=(answers[0] or None) if answers else None,
        subject=subject,
        kind="qa",
        source=FORMAT,
        extra=extra,
    )


def load_zsre(
    path: PathArg, *, on_error: OnError = "skip", limit: int | None = None
) -> LoadedDataset:
    """Load a zsRE file in the MEND/ROME format (see the module docstring)."""
    return load_records(path, format=FORMAT, convert=convert_zsre, on_error=on_error, limit=limit)
