"""Property: any JSON fed to a loader loads or is reported; nothing else escapes."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mend.data import (
    DatasetFileError,
    MalformedRecordError,
    load_counterfact,
    load_counterfact_flat,
    load_zsre,
)

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()  # NaN and infinities included: Python's json reads and writes them
    | st.text(max_size=12)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)
# Short strings from a tiny alphabet, so duplicates, blanks and "{}" turn up often.
texts = st.text(alphabet=" {}a?\t", max_size=5)

ZSRE = {
    "subject": "s",
    "src": "q?",
    "pred": "p",
    "rephrase": "r?",
    "alt": "a",
    "answers": ["p"],
    "loc": "nq question: x",
    "loc_ans": "y",
}
CF = {
    "case_id": 1,
    "requested_rewrite": {
        "prompt": "{} is in",
        "subject": "S",
        "target_new": {"str": "A"},
        "target_true": {"str": "B"},
    },
    "paraphrase_prompts": ["S lies in"],
    "neighborhood_prompts": ["T is in"],
}
FLAT = {
    "case_id": 1,
    "prompt": "S, the",
    "target_new": "A",
    "subject": "S",
    "ground_truth": "B",
    "rephrase_prompt": "S plays the",
    "locality_prompt": "T plays the",
    "locality_ground_truth": "B",
}


@st.composite
def near_valid(draw: st.DrawFn, valid: dict) -> dict:
    """``valid`` with some fields replaced by arbitrary JSON or deleted, recursively."""
    record = copy.deepcopy(valid)
    for key in list(record):
        # Mostly keep a field, so that many records get deep into validation.
        action = draw(st.sampled_from(["keep"] * 5 + ["json", "text", "delete"]))
        if action == "json":
            record[key] = draw(json_values)
        elif action == "text":
            record[key] = draw(texts)
        elif action == "delete":
            del record[key]
        elif isinstance(record[key], dict):
            record[key] = draw(near_valid(record[key]))
        elif isinstance(record[key], list) and draw(st.booleans()):
            record[key] = draw(st.lists(texts | json_values, max_size=3))
    return record


def records_for(valid: dict) -> st.SearchStrategy[list]:
    return st.lists(near_valid(valid) | json_values, max_size=5)


def _check(loader, path: Path, check_conventions) -> None:
    skipped = loader(path)  # must not raise at all
    report = skipped.report
    assert report.n_read == report.n_loaded + report.n_skipped
    assert len(report.errors) == report.n_skipped and len(skipped) == report.n_loaded
    for record in skipped:
        check_conventions(record)
    try:
        strict = loader(path, on_error="raise")
    except MalformedRecordError as exc:
        assert report.errors and exc.error == report.errors[0]
    else:
        assert not report.errors and strict.content_hash == skipped.content_hash


CASES = [(load_zsre, ZSRE), (load_counterfact, CF), (load_counterfact_flat, FLAT)]

SETTINGS = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.mark.parametrize("loader, valid", CASES, ids=[c[0].__name__ for c in CASES])
@SETTINGS
@given(data=st.data())
def test_any_records_load_or_are_reported(tmp_path_factory, check_conventions, loader, valid, data):
    records = data.draw(records_for(valid))
    path = tmp_path_factory.mktemp("prop") / "records.json"
    path.write_text(json.dumps(records), encoding="utf-8")
    _check(loader, path, check_conventions)


@pytest.mark.parametrize("loader", [c[0] for c in CASES], ids=[c[0].__name__ for c in CASES])
@SETTINGS
@given(value=json_values)
def test_any_top_level_value_loads_or_is_a_file_error(
    tmp_path_factory, check_conventions, loader, value
):
    path = tmp_path_factory.mktemp("prop") / "value.json"
    path.write_text(json.dumps(value), encoding="utf-8")
    if isinstance(value, list):
        _check(loader, path, check_conventions)
    else:
        with pytest.raises(DatasetFileError):
            loader(path)
