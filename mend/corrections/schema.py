"""What a correction is, and the checks it must pass before it can change a model."""

from __future__ import annotations

import codecs
import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from mend.data.text import normalise

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

    @model_validator(mode="after")
    def _visible(self) -> Correction:
        # (pydantic itself refuses unpaired surrogates: they cannot be UTF-8.)
        for name in ("prompt", "target"):
            if not normalise(getattr(self, name)):
                raise ValueError(f"{name} has no visible characters")
        return self

    @field_validator("requested_at")
    @classmethod
    def _aware(cls, value: datetime) -> datetime:
        return value if value.tzinfo else value.replace(tzinfo=UTC)

    @property
    def prompt_key(self) -> str:
        """The prompt as compared for duplicates and contradictions."""
        return normalise(self.prompt)

    @property
    def target_key(self) -> str:
        """The target as compared for contradictions: two corrections of one question
        with the same target agree."""
        return normalise(self.target)


class InvalidCorrection(ValueError):
    """A submission that cannot become a correction; ``reason`` says why."""

    def __init__(self, reason: str, raw: Any):
        super().__init__(reason)
        self.reason = reason
        self.raw = raw


def describe(error: ValidationError) -> str:
    """pydantic's errors as one line naming each offending field (at most the first five)."""
    parts = []
    items = error.errors(include_url=False, include_input=False)
    for item in items[:5]:
        where = ".".join(str(p)[:60] for p in item["loc"]) or "record"
        parts.append(f"{where}: {item['msg']}")
    if len(items) > 5:
        parts.append(f"and {len(items) - 5} more")
    return "; ".join(parts)


def parse_correction(raw: Any) -> Correction:
    """Validate one submitted JSON value, raising :class:`InvalidCorrection` with the reason."""
    if not isinstance(raw, dict):
        raise InvalidCorrection(f"expected a JSON object, got {type(raw).__name__}", raw)
    try:
        return Correction.model_validate(raw)
    except ValidationError as error:
        raise InvalidCorrection(describe(error), raw) from None
    except (RecursionError, ValueError, TypeError) as error:  # what pydantic does not wrap
        raise InvalidCorrection(f"cannot be validated: {type(error).__name__}", raw) from None


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


@dataclass(frozen=True)
class Submission:
    """One record of a submitted file, kept with where it came from and its raw bytes.

    ``value`` is the parsed JSON value; ``error`` instead says why these bytes are not
    a JSON value (then the queue dead-letters them with it).
    """

    where: str
    raw: bytes | None = None
    value: Any = None
    error: str | None = None


def read_submissions(data: bytes | str, source: str = "input") -> list[Submission]:
    """Split a submitted file into records: a JSON list, one JSON value, or JSON Lines.

    The whole document decides the format: if it parses, it is JSON (a list gives one
    record per element); otherwise it is JSON Lines when some line starting at column 1
    is a JSON value on its own, and else one broken JSON document, reported once with
    the line and column of its error rather than line by line. Nothing here raises on
    bad input: bytes that are not UTF-8, nesting too deep for the parser, oversized
    integers all come back as records with an ``error``, and with their raw bytes.
    """
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogatepass")  # unpaired surrogates stay visible as bad bytes
    body = data[len(codecs.BOM_UTF8) :] if data.startswith(codecs.BOM_UTF8) else data
    if not body.strip():
        return []
    value, error = _parse(body)
    if error is None:
        if isinstance(value, list):
            return _elements(body.decode("utf-8"), source)
        return [Submission(source, body, value)]
    lines = [(n, line.rstrip(b"\r")) for n, line in enumerate(body.split(b"\n"), start=1)]
    lines = [(n, line) for n, line in lines if line.strip()]
    parsed = {n: _parse(line) for n, line in lines if line[:1] not in (b" ", b"\t")}
    if not any(err is None for _, err in parsed.values()):
        return [Submission(source, body, error=f"{source} is not JSON or JSON Lines: {error}")]
    out = []
    for n, line in lines:
        value, err = parsed[n] if n in parsed else _parse(line)
        where = f"{source} line {n}"
        out.append(Submission(where, line, value) if err is None else Submission(where, line, error=f"{where} is not JSON: {err}"))
    return out


def _parse(data: bytes) -> tuple[Any, str | None]:
    """``(value, None)``, or ``(None, why it is not one JSON value, with line and column)``."""
    def at(line: int, column: int) -> str:  # one line of JSON Lines: its column is enough
        return f"line {line} column {column}" if b"\n" in data else f"column {column}"

    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        column = error.start - (data.rfind(b"\n", 0, error.start) + 1) + 1
        return None, f"not UTF-8: byte 0x{data[error.start]:02x} at {at(line, column)}"
    try:
        return json.loads(text), None
    except json.JSONDecodeError as error:
        return None, f"{error.msg} at {at(error.lineno, error.colno)}"
    except RecursionError:
        return None, "nested too deeply to parse"
    except ValueError as error:  # e.g. an integer of more than 4,300 digits
        return None, str(error).split(";")[0]


def _elements(text: str, source: str) -> list[Submission]:
    """The elements of a JSON list document, each with its own text and line."""
    decoder = json.JSONDecoder()
    out = []
    position = text.index("[") + 1
    while True:
        while text[position] in " \t\r\n,":
            position += 1
        if text[position] == "]":
            return out
        value, end = decoder.raw_decode(text, position)
        line = text.count("\n", 0, position) + 1
        where = f"{source} index {len(out)} (line {line})"
        out.append(Submission(where, text[position:end].encode("utf-8", "surrogatepass"), value))
        position = end


def now() -> datetime:
    return datetime.now(UTC)


def iter_valid(raws: Iterable[Any]) -> Iterable[Correction | InvalidCorrection]:
    """Each raw value validated: a :class:`Correction` or the :class:`InvalidCorrection` saying why not."""
    for raw in raws:
        if isinstance(raw, InvalidCorrection):
            yield raw
            continue
        try:
            yield parse_correction(raw)
        except InvalidCorrection as error:
            yield error
