"""Fixtures for the data-loader tests: the shared real data, and small files."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from mend.data import EditRecord

# The real benchmark files live beside the repository, never inside it.
SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``<repo>/../shared/data``, or skip when this checkout has no shared data."""
    if not (SHARED_DATA / "README.md").is_file():
        pytest.skip(f"real data not found at {SHARED_DATA} (expected <repo>/../shared/data)")
    return SHARED_DATA


WriteJson = Callable[[str, object], Path]


@pytest.fixture
def write_json(tmp_path: Path) -> WriteJson:
    """``write_json(name, value)``: a file in tmp_path; ``.jsonl`` names get one line per item."""

    def write(name: str, value: object) -> Path:
        path = tmp_path / name
        if name.endswith(".jsonl"):
            assert isinstance(value, list)
            path.write_text("".join(json.dumps(v) + "\n" for v in value), encoding="utf-8")
        else:
            path.write_text(json.dumps(value), encoding="utf-8")
        return path

    return write


def assert_conventions(record: EditRecord) -> None:
    """What every loaded record promises, whatever its format."""
    assert record.record_id
    for text in (record.prompt, record.target):
        assert text and text == text.strip()
    for text in record.rephrases:
        assert text and text == text.strip() and text != record.prompt
    for probe in record.locality:
        assert probe.prompt and probe.prompt == probe.prompt.strip()
        assert probe.answer and probe.answer == probe.answer.strip()
    if record.old_target is not None:
        assert record.old_target and record.old_target == record.old_target.strip()


@pytest.fixture
def check_conventions() -> Callable[[EditRecord], None]:
    """The record-convention check, as a fixture so test modules need no import path."""
    return assert_conventions
