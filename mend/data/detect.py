"""One entry point for every format: ``load_dataset(path, format="auto")``.

Detection looks at the fields of the file's first record only: the formats differ
in their field names, and a file mixes no formats. A file whose first record fits
no known format is an :class:`UnknownFormatError` listing the formats, rather than
a guess.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

from mend.data.counterfact import load_counterfact, load_counterfact_flat
from mend.data.errors import OnError, UnknownFormatError
from mend.data.fever import is_fever_record, load_fever
from mend.data.loading import LoadedDataset, PathArg, check_load_args
from mend.data.reading import InvalidLine, read_raw_records, type_name
from mend.data.wikibio import load_wikibio
from mend.data.wikitext import load_wikitext
from mend.data.zsre import load_zsre


class Loader(Protocol):
    """The signature every ``load_xxx`` shares."""

    def __call__(
        self, path: PathArg, *, on_error: OnError = ..., limit: int | None = ...
    ) -> LoadedDataset: ...


LOADERS: Mapping[str, Loader] = {
    "zsre": load_zsre,
    "counterfact": load_counterfact,
    "counterfact_flat": load_counterfact_flat,
    "wikibio": load_wikibio,
    "fever": load_fever,
    "wikitext": load_wikitext,
}

# What detection looks for, also shown to the user when it fails.
SIGNATURES: Mapping[str, str] = {
    "zsre": "src, alt, rephrase, loc, loc_ans",
    "counterfact": "case_id, requested_rewrite{prompt, subject, target_new, target_true}",
    "counterfact_flat": "case_id, prompt, target_new, ground_truth",
    "wikibio": "prompt, target_new, locality_prompt, locality_ground_truth (no ground_truth)",
    "fever": "input, output[0].answer in SUPPORTS/REFUTES",
    "wikitext": "context, continuation (JSON Lines)",
}

FORMATS: tuple[str, ...] = tuple(LOADERS)


def _known() -> str:
    return "; ".join(f"{name} ({fields})" for name, fields in SIGNATURES.items())


def format_of_record(raw: object) -> str | None:
    """The format whose fields ``raw`` has, or ``None``."""
    if not isinstance(raw, dict):
        return None
    keys = raw.keys()
    if "requested_rewrite" in keys:
        return "counterfact"
    if {"src", "alt"} <= keys:
        return "zsre"
    if {"case_id", "prompt", "target_new", "ground_truth"} <= keys:
        return "counterfact_flat"
    if {"prompt", "target_new", "locality_prompt", "locality_ground_truth"} <= keys and (
        "ground_truth" not in keys
    ):
        return "wikibio"
    if is_fever_record(raw):
        return "fever"
    if {"context", "continuation"} <= keys:
        return "wikitext"
    return None


def detect_format(path: PathArg) -> str:
    """The format of the file at ``path``, from its first record's fields."""
    path = Path(path)
    first = read_raw_records(path, limit=1)
    if not first:
        raise UnknownFormatError(
            f"{path}: no records to detect the format from; pass format= one of {', '.join(FORMATS)}"
        )
    raw = first[0]
    if isinstance(raw, InvalidLine):
        raise UnknownFormatError(f"{path}: cannot detect the format: {raw.reason}")
    found = format_of_record(raw)
    if found is None:
        seen = sorted(raw) if isinstance(raw, dict) else f"a JSON {type_name(raw)}"
        raise UnknownFormatError(
            f"{path}: cannot tell the format from the first record (fields: {seen}). "
            f"Known formats: {_known()}. Pass format= to choose one."
        )
    return found


def load_dataset(
    path: PathArg,
    format: str = "auto",
    *,
    on_error: OnError = "skip",
    limit: int | None = None,
) -> LoadedDataset:
    """Load ``path`` with the loader for ``format`` (detected when ``"auto"``).

    Raises :class:`UnknownFormatError` for an unknown format name or an
    undetectable file, and whatever the chosen loader raises otherwise.
    """
    check_load_args(on_error, limit)
    if format == "auto":
        format = detect_format(path)
    loader = LOADERS.get(format)
    if loader is None:
        raise UnknownFormatError(f"unknown format {format!r}; known formats: {_known()}")
    return loader(path, on_error=on_error, limit=limit)
