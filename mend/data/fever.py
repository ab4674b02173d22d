"""FEVER binary fact-checking edits, in the KILT format MEND uses.

Input: the files of MEND's ``fc`` experiment (``fever-train-kilt.jsonl``,
``fever-dev-kilt.jsonl``; De Cao et al.'s KILT FEVER with their rephrases), one
JSON object per line, or the same objects in a JSON list::

    {"id": "...", "input": "<claim>",
     "output": [{"answer": "SUPPORTS" | "REFUTES", "provenance": [...]}, ...],
     "prediction": "SUPPORTS", "alternatives": ["REFUTES"],
     "filtered_rephrases": ["<claim, reworded>", ...], "logit": 1.7}

Mapping: prompt = input, target = the label of ``output[0]`` as a word ("True" for
SUPPORTS, "False" for REFUTES; the bool is also in ``extra["label"]``), rephrases =
``filtered_rephrases`` (a rephrase equal to the claim is dropped, as later MEND
versions do). ``prediction``, ``alternatives`` and ``logit`` describe the
classifier De Cao et al. edited, not ours; they are kept in ``extra`` only.

MEND draws locality inputs from other claims in the batch; here each record gets
``n_locality`` probes made of other claims in the same load (deterministically
chosen, never one with the same claim text), answered with their own label words.
The choice depends on which records were loaded, so ``limit`` changes it.
"""

from __future__ import annotations

from typing import Any

from mend.data.derive import content_id
from mend.data.errors import OnError
from mend.data.fields import FieldError, Fields, RecordContext
from mend.data.loading import (
    LoadedDataset,
    PathArg,
    Warn,
    load_records,
    locality_from_others,
    with_locality,
)
from mend.data.records import EditRecord, LocalityProbe

FORMAT = "fever"
LABELS = {"SUPPORTS": True, "REFUTES": False}
"""FEVER's verdicts (KILT keeps only these two) and the truth value each means."""


def label_word(label: bool) -> str:
    """The target text for a verdict: the word a language model is edited to say."""
    return "True" if label else "False"


def _verdict(f: Fields, key: str) -> bool:
    value = f.text(key)
    if value not in LABELS:
        raise FieldError(f.path(key), f"expected one of {sorted(LABELS)}, got {value!r}")
    return LABELS[value]


def is_fever_record(raw: object) -> bool:
    """Whether ``raw`` looks like a KILT FEVER record (used by format detection).

    KILT zsRE shares the ``input``/``output`` layout, so the verdict decides.
    """
    if not isinstance(raw, dict) or "input" not in raw:
        return False
    output = raw.get("output")
    return (
        isinstance(output, list)
        and bool(output)
        and isinstance(output[0], dict)
        and output[0].get("answer") in LABELS
    )


def convert_fever(raw: object, ctx: RecordContext) -> EditRecord:
    """One FEVER record -> EditRecord without locality (added after the load)."""
    f = Fields(raw)
    ctx.id_field = "id"
    record_key = f.identifier("id", required=False)
    claim = f.text("input")
    output = f.raw("output")
    if output is None:
        raise FieldError("output", "missing required field")
    if not isinstance(output, list) or not output:
        raise FieldError("output", "expected a non-empty list of {answer, ...} objects")
    label = _verdict(Fields(output[0], "output[0]"), "answer")
    rephrases = f.strings("filtered_rephrases", required=False) or []

    extra: dict[str, Any] = {"label": label}
    if f.has("prediction"):
        extra["prediction"] = _verdict(f, "prediction")
    alternatives = f.strings("alternatives", required=False)
    if alternatives is not None:
        extra["alternatives"] = alternatives
    if f.has("logit"):
        extra["logit"] = f.raw("logit")

    return EditRecord(
        record_id=f"{FORMAT}:{record_key}" if record_key else content_id(FORMAT, claim),
        prompt=claim,
        target=label_word(label),
        rephrases=ctx.rephrases(
            ((f"filtered_rephrases[{i}]", r) for i, r in enumerate(rephrases)), claim
        ),
        kind="fact_check",
        source=FORMAT,
        extra=extra,
    )


def add_claim_locality(records: list[EditRecord], warn: Warn, n_locality: int) -> list[EditRecord]:
    """Give each record probes made of other records' (prompt, target)."""
    return locality_from_others(
        records, sorted(records, key=lambda r: r.record_id), key=lambda r: r.record_id, text=lambda r: r.prompt,
        probe=lambda r: LocalityProbe(prompt=r.prompt, answer=r.target), n=n_locality, salt=FORMAT, warn=warn,
        what="locality claims")


def load_fever(
    path: PathArg, *, on_error: OnError = "skip", limit: int | None = None, n_locality: int = 1
) -> LoadedDataset:
    """Load FEVER claims in MEND's KILT format (see the module docstring)."""
    return load_records(path, format=FORMAT, convert=convert_fever, on_error=on_error, limit=limit,
                        finish=with_locality(add_claim_locality, n_locality))
