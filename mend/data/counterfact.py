"""CounterFact counterfactual edits, in ROME's original format and EasyEdit's flat one.

ROME format (``counterfact.json``): a JSON list of objects with ``case_id``,
``requested_rewrite {prompt, subject, target_new {str}, target_true {str}}`` where
``prompt`` holds ``"{}"`` for the subject, plus ``paraphrase_prompts``,
``neighborhood_prompts``, ``attribute_prompts``, ``generation_prompts``. The edit
moves ``prompt.format(subject)`` from ``target_true`` to ``target_new``; paraphrases
test generalization and neighborhood prompts (other subjects that share the true
answer) locality, so each neighborhood probe's answer is ``target_true``.
``attribute_prompts``/``generation_prompts`` and the Wikidata ids go to ``extra``
for evaluation code.

Flat format (EasyEdit): ``case_id, prompt, target_new, subject, ground_truth,
rephrase_prompt, locality_prompt, locality_ground_truth``, one string each; the
prompt already contains the subject.

Both map to ``kind="counterfact"`` and ``record_id = "counterfact:<case_id>"``:
the case ids come from the same ROME numbering, so the prefix is shared and mixing
the two formats still detects a case loaded twice.
"""

from __future__ import annotations

from typing import Any

from mend.data.derive import content_id
from mend.data.errors import OnError
from mend.data.fields import FieldError, Fields, RecordContext
from mend.data.loading import LoadedDataset, PathArg, load_records
from mend.data.records import EditRecord, LocalityProbe

FORMAT = "counterfact"
FLAT_FORMAT = "counterfact_flat"
ID_PREFIX = "counterfact"


def fill_subject(template: str, subject: str, field_path: str) -> str:
    """``template.format(subject)`` as ROME does, with a FieldError for bad templates.

    Requiring a literal ``"{}"`` rejects templates that would silently ignore the
    subject; with a single positional argument, any other replacement field makes
    ``format`` raise, so attribute lookups like ``{.x}`` can never run.
    """
    if "{}" not in template:
        raise FieldError(field_path, "no '{}' placeholder for the subject")
    try:
        filled = template.format(subject)
    except (IndexError, KeyError, ValueError) as exc:
        raise FieldError(
            field_path, f"not a template with exactly one '{{}}' slot ({exc})"
        ) from None
    filled = filled.strip()
    if not filled:  # unreachable with a non-empty subject; kept as a guard
        raise FieldError(field_path, "empty prompt after filling in the subject")
    return filled


def _warn_noop(ctx: RecordContext, field_path: str, target: str, old_target: str) -> None:
    if target == old_target:
        ctx.warn(field_path, "new target equals the true target: the edit changes nothing")


def convert_counterfact(raw: object, ctx: RecordContext) -> EditRecord:
    """One ROME-format CounterFact record -> EditRecord; raises FieldError."""
    f = Fields(raw)
    ctx.id_field = "case_id"
    case_id = f.identifier("case_id")
    rewrite = f.obj("requested_rewrite")
    template = rewrite.text("prompt")
    subject = rewrite.text("subject")
    new, true = rewrite.obj("target_new"), rewrite.obj("target_true")
    target_new, target_true = new.text("str"), true.text("str")
    prompt = fill_subject(template, subject, rewrite.path("prompt"))
    paraphrases = f.strings("paraphrase_prompts") or []
    neighborhood = f.strings("neighborhood_prompts") or []
    attribute = f.strings("attribute_prompts", required=False)
    generation = f.strings("generation_prompts", required=False)

    _warn_noop(ctx, new.path("str"), target_new, target_true)
    locality: list[LocalityProbe] = []
    for i, text in enumerate(neighborhood):
        locality.extend(
            ctx.probe(f"neighborhood_prompts[{i}]", text, true.path("str"), target_true)
        )

    extra: dict[str, Any] = {
        key: value
        for key, value in {
            "pararel_idx": f.raw("pararel_idx"),
            "relation_id": rewrite.raw("relation_id"),
            "target_new_id": new.raw("id"),
            "target_true_id": true.raw("id"),
            "attribute_prompts": attribute,
            "generation_prompts": generation,
        }.items()
        if value is not None
    }
    return EditRecord(
        record_id=f"{ID_PREFIX}:{case_id}",
        prompt=prompt,
        target=target_new,
        rephrases=ctx.rephrases(
            ((f"paraphrase_prompts[{i}]", p) for i, p in enumerate(paraphrases)), prompt
        ),
        locality=tuple(locality),
        old_target=target_true,
        subject=subject,
        kind="counterfact",
        source=FORMAT,
        extra=extra,
    )


def convert_counterfact_flat(raw: object, ctx: RecordContext) -> EditRecord:
    """One EasyEdit flat CounterFact record -> EditRecord; raises FieldError."""
    f = Fields(raw)
    ctx.id_field = "case_id"
    case_id = f.identifier("case_id", required=False)
    prompt = f.text("prompt")
    target = f.text("target_new")
    ground_truth = f.text("ground_truth")
    subject = f.optional_string("subject")
    rephrase = f.string("rephrase_prompt")
    loc_prompt = f.string("locality_prompt")
    loc_answer = f.string("locality_ground_truth")

    _warn_noop(ctx, "target_new", target, ground_truth)
    record_id = (
        f"{ID_PREFIX}:{case_id}" if case_id is not None else content_id(ID_PREFIX, prompt, target)
    )
    return EditRecord(
        record_id=record_id,
        prompt=prompt,
        target=target,
        rephrases=ctx.rephrases([("rephrase_prompt", rephrase)], prompt),
        locality=ctx.probe("locality_prompt", loc_prompt, "locality_ground_truth", loc_answer),
        old_target=ground_truth,
        subject=subject,
        kind="counterfact",
        source=FLAT_FORMAT,
    )


def load_counterfact(
    path: PathArg, *, on_error: OnError = "skip", limit: int | None = None
) -> LoadedDataset:
    """Load CounterFact in ROME's original format (see the module docstring)."""
    return load_records(
        path, format=FORMAT, convert=convert_counterfact, on_error=on_error, limit=limit
    )


def load_counterfact_flat(
    path: PathArg, *, on_error: OnError = "skip", limit: int | None = None
) -> LoadedDataset:
    """Load CounterFact in EasyEdit's flat format (see the module docstring)."""
    return load_records(
        path, format=FLAT_FORMAT, convert=convert_counterfact_flat, on_error=on_error, limit=limit
    )
