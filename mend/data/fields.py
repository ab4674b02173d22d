"""Typed access to the fields of one raw JSON record, for the format converters.

Every accessor either returns a value of the promised type or raises
:class:`FieldError` naming the field, so a converter reads like a field mapping
and the error messages (``file[17].alt: empty string``) come for free.

Text policy, shared by all formats so that records look the same whatever their
source: strings are stripped (the tokenisation layer joins prompt and target with
exactly one space); a field the edit cannot exist without (prompt, target) must be
non-empty, or the record is rejected; an empty *auxiliary* input (one rephrase, one
locality probe) is dropped with a warning and the edit is kept, because losing an
edit changes a benchmark's size while losing one probe does not.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from mend.data.errors import RecordError
from mend.data.reading import type_name
from mend.data.records import LocalityProbe

_MISSING = object()


class FieldError(Exception):
    """Raised by a converter for a bad field; the loader turns it into a RecordError."""

    def __init__(self, field: str | None, reason: str) -> None:
        super().__init__(f"{field}: {reason}" if field else reason)
        self.field = field
        self.reason = reason


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


class Fields:
    """Checked reads from one JSON object; ``prefix`` is its path in the record."""

    def __init__(self, raw: object, prefix: str = "") -> None:
        if not isinstance(raw, Mapping):
            what = "a JSON object" if prefix else "the record to be a JSON object"
            raise FieldError(prefix or None, f"expected {what}, got a JSON {type_name(raw)}")
        self._raw = raw
        self._prefix = prefix

    def path(self, key: str) -> str:
        """The dotted path of ``key`` for messages."""
        return _join(self._prefix, key)

    def has(self, key: str) -> bool:
        """Whether ``key`` is present and not null (JSON null counts as absent)."""
        return self._raw.get(key) is not None

    def _get(self, key: str, required: bool) -> object:
        value = self._raw.get(key, _MISSING)
        if value is _MISSING or value is None:
            if required:
                raise FieldError(self.path(key), "missing required field")
            return _MISSING
        return value

    def text(self, key: str) -> str:
        """A required, non-empty string, stripped."""
        value = self.string(key)
        if not value:
            raise FieldError(self.path(key), "empty string")
        return value

    def string(self, key: str) -> str:
        """A required string, stripped; may be empty (the caller decides)."""
        value = self._get(key, required=True)
        if not isinstance(value, str):
            raise FieldError(self.path(key), f"expected a string, got a JSON {type_name(value)}")
        return value.strip()

    def optional_string(self, key: str) -> str | None:
        """An optional string, stripped; ``None`` when absent, null or empty."""
        value = self._get(key, required=False)
        if value is _MISSING:
            return None
        if not isinstance(value, str):
            raise FieldError(self.path(key), f"expected a string, got a JSON {type_name(value)}")
        return value.strip() or None

    def strings(self, key: str, *, required: bool = True) -> list[str] | None:
        """A list of strings, each stripped (empties kept, for the caller to report).

        ``None`` when optional and absent.
        """
        value = self._get(key, required=required)
        if value is _MISSING:
            return None
        if not isinstance(value, list):
            raise FieldError(
                self.path(key), f"expected a list of strings, got a JSON {type_name(value)}"
            )
        out: list[str] = []
        for i, item in enumerate(value):
            if not isinstance(item, str):
                raise FieldError(
                    f"{self.path(key)}[{i}]", f"expected a string, got a JSON {type_name(item)}"
                )
            out.append(item.strip())
        return out

    def obj(self, key: str) -> Fields:
        """A required nested JSON object."""
        return Fields(self._get(key, required=True), self.path(key))

    def identifier(self, key: str, *, required: bool = True) -> str | None:
        """An id given as an integer or a non-empty string, as text."""
        value = self._get(key, required=required)
        if value is _MISSING:
            return None
        # bool is an int subclass in Python but never a sensible id.
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        if isinstance(value, str) and value.strip():
            return value.strip()
        if isinstance(value, str):
            raise FieldError(self.path(key), "empty string")
        raise FieldError(
            self.path(key), f"expected an integer or string id, got a JSON {type_name(value)}"
        )

    def raw(self, key: str) -> object | None:
        """The value as parsed, for ``extra``; ``None`` when absent."""
        value = self._get(key, required=False)
        return None if value is _MISSING else value


@dataclass
class RecordContext:
    """Per-record state a converter needs: where it is, and where warnings go."""

    file: str
    index: int
    warnings: list[RecordError] = field(default_factory=list)
    # Which input field holds the record's id, so a duplicate id is reported there.
    id_field: str | None = None

    def warn(self, field_path: str | None, reason: str) -> None:
        """Record that part of this record was dropped on purpose."""
        self.warnings.append(RecordError(self.file, self.index, field_path, reason))

    def rephrases(self, candidates: Iterable[tuple[str, str]], prompt: str) -> tuple[str, ...]:
        """Keep the usable ``(field_path, text)`` rephrases, warning about the rest.

        A rephrase equal to the prompt tests nothing about generalization, and an
        empty one cannot be scored, so both are dropped.
        """
        kept: list[str] = []
        for path, text in candidates:
            if not text:
                self.warn(path, "empty rephrase dropped")
            elif text == prompt:
                self.warn(path, "rephrase identical to the prompt dropped")
            else:
                kept.append(text)
        return tuple(kept)

    def probe(
        self, prompt_path: str, prompt: str, answer_path: str, answer: str
    ) -> tuple[LocalityProbe, ...]:
        """A one-probe tuple, or ``()`` with a warning when either side is empty."""
        if not prompt:
            self.warn(prompt_path, "empty locality prompt; probe dropped")
            return ()
        if not answer:
            self.warn(answer_path, "empty locality answer; probe dropped")
            return ()
        return (LocalityProbe(prompt=prompt, answer=answer),)
