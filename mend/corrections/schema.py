"""What a correction is, and the checks it must pass before it can change a model."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

MAX_PROMPT_CHARS = 2_000
MAX_TARGET_CHARS = 500
MAX_REPHRASES = 16
MAX_LOCALITY = 16
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"


class LocalityCheck(BaseModel):
    """An unrelated prompt whose answer the correction must not change."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True, frozen=True)

    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)
    answer: str = Field(min_length=1, max_length=MAX_TARGET_CHARS)


class Correction(BaseModel):
    """One reported mistake and its fix: ``prompt`` should be answered with ``target``."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True, frozen=True)

    id: str = Field(pattern=ID_PATTERN, description="unique id, safe as a storage key")
    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)
    target: str = Field(min_length=1, max_length=MAX_TARGET_CHARS)
    subject: str | None = Field(
        None, min_length=1, max_length=MAX_PROMPT_CHARS,
        description="what the prompt is about, as it is written there: scoped corrections anchor their scope "
        "at its last token (else at the prompt's last token)",
    )
    rephrases: tuple[str, ...] = Field(default=(), max_length=MAX_REPHRASES)
    locality: tuple[LocalityCheck, ...] = Field(default=(), max_length=MAX_LOCALITY)
    requested_by: str = Field(min_length=1, max_length=200)
    requested_at: datetime

    @field_validator("rephrases")
    @classmethod
    def _rephrases_not_empty(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for i, text in enumerate(value):
            if not text.strip():
                raise ValueError(f"rephrase {i} is empty")
            if len(text) > MAX_PROMPT_CHARS:
                raise ValueError(f"rephrase {i} is longer than {MAX_PROMPT_CHARS} characters")
        return tuple(t.strip() for t in value)

    @field_validator("requested_at")
    @classmethod
    def _aware(cls, value: datetime) -> datetime:
        return value if value.tzinfo else value.replace(tzinfo=UTC)

    @property
    def prompt_key(self) -> str:
        """The prompt as compared for duplicates and contradictions."""
        return normalise(self.prompt)


def normalise(text: str) -> str:
    return re.sub(r"\s+", " ", text.strip().lower())


class InvalidCorrection(ValueError):
    """A submission that cannot become a correction; ``reason`` says why."""

    def __init__(self, reason: str, raw: Any):
        super().__init__(reason)
        self.reason = reason
        self.raw = raw


def describe(error: ValidationError) -> str:
    """pydantic's errors as one line naming each offending field."""
    parts = []
    for item in error.errors():
        where = ".".join(str(p) for p in item["loc"]) or "record"
        parts.append(f"{where}: {item['msg']}")
    return "; ".join(parts)


def parse_correction(raw: Any) -> Correction:
    """Validate one submitted JSON value, raising :class:`InvalidCorrection` with the reason."""
    if not isinstance(raw, dict):
        raise InvalidCorrection(f"expected a JSON object, got {type(raw).__name__}", raw)
    try:
        return Correction.model_validate(raw)
    except ValidationError as error:
        raise InvalidCorrection(describe(error), raw) from None


def check_tokenizable(correction: Correction, tokenizer, max_tokens: int) -> None:
    """The target must produce tokens, and prompt + target must fit the model."""
    target_ids = tokenizer(correction.target, add_special_tokens=False)["input_ids"]
    if not target_ids:
        raise InvalidCorrection("target produces no tokens", correction.model_dump(mode="json"))
    unk = getattr(tokenizer, "unk_token_id", None)
    if unk is not None and all(t == unk for t in target_ids):
        raise InvalidCorrection("target tokenises to unknown tokens only", correction.model_dump(mode="json"))
    for text in (correction.prompt, *correction.rephrases):
        n = len(tokenizer(f"{text} {correction.target}")["input_ids"])
        if n > max_tokens:
            raise InvalidCorrection(
                f"prompt + target is {n} tokens, over the limit of {max_tokens}",
                correction.model_dump(mode="json"),
            )


def read_submissions(text: str) -> list[Any]:
    """Split a submitted file into raw records: a JSON list, one JSON object, or JSON Lines.

    Lines that are not JSON come back as :class:`InvalidCorrection` objects so that the
    caller can dead-letter them with their text instead of losing them.
    """
    stripped = text.strip()
    if not stripped:
        return []
    try:
        value = json.loads(stripped)
    except json.JSONDecodeError:
        value = None
    else:
        return value if isinstance(value, list) else [value]
    records: list[Any] = []
    for number, line in enumerate(stripped.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as error:
            records.append(InvalidCorrection(f"line {number} is not JSON: {error.msg}", line))
    return records


def now() -> datetime:
    return datetime.now(UTC)


def iter_valid(raws: Iterable[Any]) -> Iterable[Correction | InvalidCorrection]:
    for raw in raws:
        if isinstance(raw, InvalidCorrection):
            yield raw
            continue
        try:
            yield parse_correction(raw)
        except InvalidCorrection as error:
            yield error
