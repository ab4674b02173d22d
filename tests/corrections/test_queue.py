"""Submitting corrections: validation, dead-lettering, nothing lost."""

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mend.corrections import STATES, CorrectionQueue, read_submissions
from mend.storage import open_store
from tests.support.corrections import correction_dicts
from tests.support.in_flight import RoundTripStore
from tests.support.tiny_models import tiny_tokenizer

VALID = correction_dicts(1)[0]


def _queue(tmp_path):
    return CorrectionQueue(open_store(tmp_path / "store"))


def test_valid_corrections_are_pending(tmp_path):
    queue = _queue(tmp_path)
    report = queue.submit(correction_dicts(3))
    assert len(report.accepted) == 3 and not report.dead_lettered
    assert [c.id for c in queue.pending()] == report.accepted


def test_each_kind_of_bad_input_is_dead_lettered_with_its_reason(tmp_path):
    queue = _queue(tmp_path)
    bad = [
        ({**VALID, "id": "a1", "target": "   "}, "target"),
        ({**VALID, "id": "a2", "prompt": "x" * 5000}, "prompt"),
        ({k: v for k, v in VALID.items() if k != "requested_by"} | {"id": "a3"}, "requested_by"),
        ({**VALID, "id": "bad id with spaces"}, "id"),
        ({**VALID, "id": "a4", "rephrases": ["ok", " "]}, "rephrase 1 is empty"),
        ({**VALID, "id": "a5", "surprise": 1}, "surprise"),
        ([1, 2, 3], "expected a JSON object"),
        ({**VALID, "id": "a6", "requested_at": "yesterday"}, "requested_at"),
    ]
    report = queue.submit([raw for raw, _ in bad])
    assert report.accepted == []
    assert len(report.dead_lettered) == len(bad)
    for (_, expected), (key, reason) in zip(bad, report.dead_lettered, strict=True):
        assert expected in reason
        stored = queue.read("dead-letter", key)
        assert stored["reason"] == reason and stored["stage"] == "submit" and "raw" in stored


def test_duplicates_and_contradictions(tmp_path):
    queue = _queue(tmp_path)
    assert queue.submit([VALID]).accepted == [VALID["id"]]
    report = queue.submit([
        VALID,                                                     # the same correction again
        {**VALID, "target": "elsewhere"},                          # same id, other content
        {**VALID, "id": "copy"},                                   # same prompt and target
        {**VALID, "id": "other", "target": VALID["target"] + "x"},  # same prompt, new target
    ])
    reasons = [reason for _, reason in report.dead_lettered]
    assert report.accepted == []
    assert report.known == [(VALID["id"], "record 0: already pending (the same correction)")]
    assert "duplicate id" in reasons[0]
    assert "duplicate of pending" in reasons[1]
    assert "contradicts pending" in reasons[2]


def test_untokenisable_target_is_refused_when_a_tokenizer_is_given(tmp_path):
    queue = _queue(tmp_path)
    long_prompt = " ".join(["capital"] * 150)  # under the character limit, over 64 tokens
    report = queue.submit([{**VALID, "id": "long", "prompt": long_prompt}], tokenizer=tiny_tokenizer(), max_tokens=64)
    assert "over the limit" in report.dead_lettered[0][1]


def test_jsonl_with_garbage_lines_keeps_every_line(tmp_path):
    queue = _queue(tmp_path)
    text = json.dumps(VALID) + "\n{not json\n" + json.dumps({**VALID, "id": "z2", "prompt": "Other prompt"}) + "\n"
    report = queue.submit(read_submissions(text))
    assert sorted(report.accepted) == sorted([VALID["id"], "z2"])
    assert len(report.dead_lettered) == 1 and "line 2 is not JSON" in report.dead_lettered[0][1]
    assert queue.read("dead-letter", report.dead_lettered[0][0])["raw"] == "{not json"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=5),
    max_leaves=12,
)
field_values = st.one_of(st.text(max_size=40), st.integers(), st.none(), st.lists(st.text(max_size=5), max_size=3),
                         st.just(""), st.just("x" * 3000), json_values)
mutated = st.builds(
    lambda field, value, drop: {k: v for k, v in {**VALID, field: value}.items() if k != drop},
    st.sampled_from(sorted(VALID)), field_values, st.sampled_from(["", *sorted(VALID)]),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batch=st.lists(st.one_of(json_values, mutated), min_size=1, max_size=6))
def test_fuzzed_submissions_are_all_accounted_for(tmp_path_factory, batch):
    queue = CorrectionQueue(open_store(tmp_path_factory.mktemp("fuzz")))
    report = queue.submit(batch)
    assert len(report.accepted) + len(report.dead_lettered) + len(report.known) == len(batch)
    assert all(reason for _, reason in report.dead_lettered)
    counts = queue.counts()
    assert counts["pending"] == len(report.accepted)
    assert counts["dead-letter"] == len({key for key, _ in report.dead_lettered})
    assert set(counts) == set(STATES)


def test_reading_a_whole_state_overlaps_its_reads_and_keeps_every_outcome(tmp_path):
    remote = RoundTripStore(tmp_path / "store")
    serial = RoundTripStore(tmp_path / "store")
    serial.read_at_once = 1
    one, at_once = CorrectionQueue(serial), CorrectionQueue(remote)
    one.submit(correction_dicts(30) + [{"id": f"broken-{i}", "prompt": ""} for i in range(5)])
    remote.put_bytes(one.key("dead-letter", "garbled"), b"\xff not json")
    assert [c.id for c in at_once.pending()] == [c.id for c in one.pending()] and len(one.pending()) == 30
    assert list(at_once.inspect_all("dead-letter")) == list(one.inspect_all("dead-letter"))
    assert [problem for _, _, problem in at_once.inspect_all("dead-letter") if problem] == [
        one.inspect("dead-letter", "garbled")[1]]
    assert at_once.verify() == one.verify() != []
    assert serial.most == 1 and 1 < remote.most <= remote.read_at_once
