"""Errors and load reports for the dataset loaders.

A loader never drops input silently: every record it does not load becomes a
:class:`RecordError` in the :class:`LoadReport`, and every part of a record it
drops on purpose (an empty rephrase, a locality probe without an answer) becomes a
warning there. With ``on_error="raise"`` the first bad record stops the load with a
:class:`MalformedRecordError` instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

OnError = Literal["skip", "raise"]
"""What a loader does with a bad record: skip it (and report it) or raise."""

ON_ERROR_CHOICES: tuple[str, ...] = ("skip", "raise")


@dataclass(frozen=True)
class RecordError:
    """Where and why one input record (or one part of it) was rejected.

    ``file`` is the file's name (not its full path, which is in the report) so that
    messages stay short; ``index`` is the 0-based position of the record in the file
    (for JSON Lines: among the non-blank lines), ``None`` for a problem that is not
    tied to one record; ``field`` is a dotted path into the record such as
    ``requested_rewrite.target_new.str`` or ``paraphrase_prompts[3]``, ``None`` when
    the record as a whole is at fault.
    """

    file: str
    index: int | None
    field: str | None
    reason: str

    def __str__(self) -> str:
        where = self.file if self.index is None else f"{self.file}[{self.index}]"
        if self.field:
            where = f"{where}.{self.field}"
        return f"{where}: {self.reason}"


class DataError(ValueError):
    """Base class of everything the data loaders raise on bad input.

    A ``ValueError`` so that callers who only know "the input was bad" can catch
    that; callers who care catch the subclasses.
    """


class MalformedRecordError(DataError):
    """A record could not be loaded and the loader ran with ``on_error="raise"``."""

    def __init__(self, error: RecordError) -> None:
        super().__init__(str(error))
        self.error = error


class DatasetFileError(DataError):
    """The file as a whole is unusable: not valid JSON, or not a list of records."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


class UnknownFormatError(DataError):
    """``load_dataset`` could not tell (or was not told a valid) dataset format."""


@dataclass
class LoadReport:
    """What happened while loading one file.

    Invariant: ``n_read == n_loaded + n_skipped`` and ``len(errors) == n_skipped``
    (one error per skipped record). ``warnings`` lists parts of loaded records that
    were dropped on purpose; they do not count as skips.
    """

    path: str
    format: str
    n_read: int = 0
    n_loaded: int = 0
    n_skipped: int = 0
    errors: list[RecordError] = field(default_factory=list)
    warnings: list[RecordError] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every record read was loaded."""
        return self.n_skipped == 0

    def summary(self) -> str:
        """One line for logs: counts, and the first error if any."""
        line = (
            f"{self.path} ({self.format}): read {self.n_read}, loaded {self.n_loaded}, "
            f"skipped {self.n_skipped}, warnings {len(self.warnings)}"
        )
        if self.errors:
            line += f"; first error: {self.errors[0]}"
        return line
