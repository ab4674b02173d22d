"""Hostile submissions and stray records (issue 19, items 3, 5, 6, 7 and 8)."""

from __future__ import annotations

import base64
import json
import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mend.corrections import CorrectionQueue, read_submissions
from mend.corrections.schema import normalise
from mend.storage import open_store
from tests.support.corrections import correction_dicts

GOOD = correction_dicts(3)


def _queue(path) -> CorrectionQueue:
    return CorrectionQueue(open_store(path))


def _line(record: dict) -> bytes:
    return json.dumps(record).encode()


def _accounted(queue: CorrectionQueue, report, n: int) -> None:
    """Every record has exactly one outcome with a reason where it was not queued."""
    assert report.total == n == len(report.outcomes)
    assert all(reason for _, reason in report.dead_lettered + report.known)
    assert len(queue.ids("dead-letter")) >= len(report.dead_lettered)


# -- item 3: bad bytes crash nothing and lose nothing -----------------------------------
HOSTILE_LINES = {
    "invalid UTF-8": b'{"id": "x\xff\xfe", "prompt": "caf\xe9"}',
    "100,000 deep": b"[" * 100_000 + b"]" * 100_000,
    "980 deep": b"[" * 980 + b"]" * 980,
    "5,000-digit integer": b'{"id": ' + b"9" * 5000 + b"}",
    "lone surrogate": json.dumps({**GOOD[2], "id": "lone", "prompt": "broken \ud800 text"}).encode(),
}


def test_each_hostile_line_is_dead_lettered_and_the_good_ones_beside_it_are_queued(tmp_path):
    for n, (name, bad) in enumerate(HOSTILE_LINES.items()):
        queue = _queue(tmp_path / f"s{n}")
        data = _line(GOOD[0]) + b"\n" + bad + b"\n" + _line(GOOD[1]) + b"\n"
        report = queue.submit(read_submissions(data, "fixes.jsonl"))
        assert sorted(report.accepted) == sorted([GOOD[0]["id"], GOOD[1]["id"]]), name
        [(key, reason)] = report.dead_lettered
        assert "fixes.jsonl line 2" in reason, (name, reason)
        stored = queue.read("dead-letter", key)
        kept = stored["raw"].encode("utf-8") if stored["raw"] is not None else base64.b64decode(stored["raw_base64"])
        assert kept == bad, name  # the raw bytes, exactly


def test_a_deeply_nested_or_surrogate_value_given_to_the_api_is_dead_lettered(tmp_path):
    queue = _queue(tmp_path)
    deep: list = []
    for _ in range(980):
        deep = [deep]
    report = queue.submit([{**GOOD[0], "prompt": deep}, {**GOOD[1], "prompt": "a \udc80 b"}, GOOD[2], {1, 2}])
    assert report.accepted == [GOOD[2]["id"]] and len(report.dead_lettered) == 3
    assert report.dead_lettered[1][1].startswith("record 1: prompt: ")  # not UTF-8: refused


# -- item 6: a broken pretty-printed list is one error with its line and column ---------
def test_a_pretty_printed_list_with_one_syntax_error_is_one_dead_letter_naming_line_and_column(tmp_path):
    queue = _queue(tmp_path)
    text = json.dumps(GOOD[:2], indent=2).replace(json.dumps(GOOD[1]["target"]), "five", 1)
    report = queue.submit(read_submissions(text, "fixes.json"))
    [(key, reason)] = report.dead_lettered
    line = next(i for i, ln in enumerate(text.splitlines(), 1) if '"target": five' in ln)
    column = text.splitlines()[line - 1].index("five") + 1
    assert reason == f"fixes.json is not JSON or JSON Lines: Expecting value at line {line} column {column}"
    assert queue.read("dead-letter", key)["raw"] == text
    assert report.accepted == []


def test_a_valid_list_gives_each_element_its_index_and_line(tmp_path):
    queue = _queue(tmp_path)
    text = json.dumps([GOOD[0], {"id": "bad"}], indent=2)
    report = queue.submit(read_submissions(text, "fixes.json"))
    assert report.accepted == [GOOD[0]["id"]]
    [(key, reason)] = report.dead_lettered
    assert reason.startswith("fixes.json index 1 (line ")
    assert json.loads(queue.read("dead-letter", key)["raw"]) == {"id": "bad"}


# -- item 7: invisible characters do not make a prompt new ------------------------------
def test_zero_width_characters_and_a_bom_do_not_bypass_the_contradiction_check(tmp_path):
    queue = _queue(tmp_path)
    base = {**GOOD[0], "prompt": "The capital of France is"}
    variants = ["The capital of France is", "The\u200b capital of France is", "\ufeffThe capital of France is",
                "The capital of Fr\u200dance is", "ＴＨＥ capital of France is"]
    report = queue.submit([{**base, "id": f"v{i}", "prompt": p, "target": f"City {i}"} for i, p in enumerate(variants)])
    assert report.accepted == ["v0"]
    assert all("contradicts pending correction 'v0'" in reason for _, reason in report.dead_lettered)
    assert len({normalise(v) for v in variants}) == 1


def test_the_applied_duplicate_check_uses_the_same_normalisation(tmp_path):
    queue = _queue(tmp_path)
    first = {**GOOD[0], "prompt": "The capital of France is", "target": "Paris"}
    queue.submit([first])
    [pending] = queue.pending()
    queue.finish(pending, "applied", version=1)
    report = queue.submit([{**first, "id": "again", "prompt": "The\u200b capital of ﬁrance is".replace("ﬁ", "F"),
                            "target": "PARIS\u200b"}])
    assert report.accepted == [] and "duplicate of applied correction" in report.dead_lettered[0][1]


def test_a_prompt_of_invisible_characters_only_is_refused(tmp_path):
    report = _queue(tmp_path).submit([{**GOOD[0], "prompt": "\u200b\u200d\ufeff"}])
    assert "prompt has no visible characters" in report.dead_lettered[0][1]


# -- item 8: every submission leaves its own trace ---------------------------------------
def test_identical_records_submitted_twice_each_leave_a_trace(tmp_path):
    queue = _queue(tmp_path)
    bad = {"id": "broken", "prompt": ""}
    batch = [GOOD[0], GOOD[1], GOOD[2], bad, bad, {"oops": 1}, {"oops": 1}, GOOD[0]]
    report = queue.submit(batch)
    assert (len(report.accepted), len(report.dead_lettered), len(report.known)) == (3, 4, 1)
    assert report.total == len(batch)
    assert len(queue.ids("dead-letter")) == 4 and len(queue.ids("pending")) == 3
    again = queue.submit([bad])
    assert len(queue.ids("dead-letter")) == 5 and again.dead_lettered[0][0] not in dict(report.dead_lettered)
    receipt = queue.store.get_json(report.receipt)
    assert [r["outcome"] for r in receipt["records"]] == ["pending"] * 3 + ["dead-letter"] * 4 + ["known"]


# -- item 5: a stray record is quarantined, the queue goes on -----------------------------
def test_a_hand_copied_file_and_links_in_pending_are_quarantined(tmp_path):
    queue = _queue(tmp_path / "store")
    queue.submit([GOOD[0]])
    pending = tmp_path / "store" / "corrections" / "pending"
    (pending / "by-hand.json").write_text(json.dumps(GOOD[1]))           # no checksum record
    (tmp_path / "elsewhere.json").write_text(json.dumps(GOOD[2]))
    os.symlink(tmp_path / "elsewhere.json", pending / "linked.json")       # a link
    os.symlink(tmp_path / "missing.json", pending / "c0-002.json")        # dangling, under a real id

    problems = queue.verify()
    assert {p.key.rsplit("/", 1)[1] for p in problems} == {"by-hand.json", "linked.json", "c0-002.json"}
    report = queue.submit([GOOD[1], {**GOOD[2], "id": "c0-002"}])
    assert sorted(report.accepted) == [GOOD[1]["id"], "c0-002"], report.dead_lettered
    assert sorted(c.id for c in queue.pending()) == sorted([GOOD[0]["id"], GOOD[1]["id"], "c0-002"])
    quarantined = queue.quarantined()
    assert len(quarantined) == 3 and all(p.reason.startswith("quarantined: ") for p in quarantined)
    assert (tmp_path / "elsewhere.json").exists()  # the link's target is untouched


def test_a_stray_object_without_checksum_on_s3_is_quarantined(moto_s3, s3_bucket):
    queue = CorrectionQueue(open_store(f"s3://{s3_bucket}/team"))
    queue.submit([GOOD[0]])
    moto_s3.client().put_object(Bucket=s3_bucket, Key="team/corrections/pending/stray.json", Body=b"{}")
    assert [c.id for c in queue.pending()] == [GOOD[0]["id"]]
    assert [p.key for p in queue.verify()] == ["corrections/pending/stray.json"]
    assert "no sha256 checksum" in queue.verify()[0].reason


# -- acceptance: raw bytes through submit --------------------------------------------------
hostile_line = st.one_of(
    st.binary(max_size=60),
    st.sampled_from(list(HOSTILE_LINES.values())),
    st.builds(lambda r, cut: _line(r)[:cut], st.sampled_from(GOOD), st.integers(1, 40)),
    st.builds(lambda r, k, v: json.dumps({**r, k: v}).encode(), st.sampled_from(GOOD),
              st.sampled_from(["prompt", "target", "id", "extra"]),
              st.one_of(st.text(max_size=20), st.integers(), st.none(), st.just("[/]"), st.just("\u200b"))),
).filter(lambda b: b"\n" not in b and b"\r" not in b)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(bad=st.lists(hostile_line, min_size=1, max_size=4), clean_at=st.integers(0, 4), seed=st.integers(0, 10**6))
def test_raw_bytes_are_all_accounted_for_and_a_clean_record_beside_them_is_queued(tmp_path_factory, bad, clean_at, seed):
    queue = _queue(tmp_path_factory.mktemp("bytes"))
    clean = {**GOOD[0], "id": f"clean-{seed}", "prompt": f"Clean prompt number {seed}"}
    lines = list(bad)
    lines.insert(min(clean_at, len(lines)), _line(clean))
    data = b"\n".join(lines)
    records = read_submissions(data, "fuzz.jsonl")
    report = queue.submit(records)  # no exception escapes
    _accounted(queue, report, len(records))
    assert clean["id"] in report.accepted
    assert len(queue.ids("pending")) == len(report.accepted)
    assert len(queue.ids("dead-letter")) == len(report.dead_lettered)


def test_pending_corrections_queued_before_claims_still_block_contradictions(tmp_path):
    queue = _queue(tmp_path)
    old = {**GOOD[0], "prompt": "The capital of Peru is", "target": "Lima"}
    queue.store.put_json(queue.key("pending", old["id"]), old)  # as an older queue wrote it: no claim
    report = queue.submit([{**old, "id": "new", "target": "Cusco"}, {**GOOD[1], "prompt": "The capital of Peru is\u200b"}])
    assert report.accepted == []
    assert all(f"pending correction {old['id']!r}" in reason for _, reason in report.dead_lettered)


def test_a_claim_being_queued_holds_its_prompt_until_its_submitter_is_presumed_dead(tmp_path, monkeypatch):
    import mend.corrections.queue as queue_module
    from mend.corrections import Correction

    queue = _queue(tmp_path)
    first = Correction.model_validate({**GOOD[0], "prompt": "The capital of Chile is", "target": "Santiago"})
    claim, _ = queue._claim(first)  # a submitter claimed the prompt and was killed before queueing
    other = {**GOOD[1], "prompt": "The capital of Chile is", "target": "Lima"}
    report = queue.submit([other])
    assert report.accepted == [] and "contradicts pending correction" in report.dead_lettered[0][1]
    monkeypatch.setattr(queue_module, "CLAIM_GRACE_S", 0.0)
    assert queue.submit([other]).accepted == [other["id"]]
    assert queue.store.exists(claim)
