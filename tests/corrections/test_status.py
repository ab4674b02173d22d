"""Where reported corrections stand: live, superseded, rolled back, refused, and what
else the live ones moved (mend.corrections.status and ``mend corrections status``)."""

import json

import pytest
from typer.testing import CliRunner

from mend.cli import app
from mend.corrections import AcceptancePolicy, ApplyConfig, CorrectionQueue, apply_pending, rollback
from mend.corrections.status import queue_status, reason_kind
from mend.storage import open_store
from tests.support.corrections import LENIENT, correction_dicts, tiny_editing_setup


def test_reasons_of_one_kind_count_together():
    assert reason_kind("edit success 0.812 < 0.99") == reason_kind("edit success 0.5 < 0.99") == "edit success # < #"
    assert reason_kind("contradicts correction 'fix-1' in the same batch (same question, target 'A' vs 'B')") \
        == "contradicts correction '…' in the same batch (same question, target '…' vs '…')"
    quoted = f"contradicts correction {'zsre-7'!r} in the same batch (target {'Parkinson' + chr(39) + 's'!r} vs 'x')"
    assert reason_kind(quoted) == "contradicts correction '…' in the same batch (target '…' vs '…')"


def test_an_empty_queue_has_nothing_live(tmp_path):
    status = queue_status(CorrectionQueue(open_store(tmp_path / "store")))
    assert status.version is None and status.live == 0 and status.reported == 0
    assert status.moved.batches == 0 and status.moved.locality_mean is None


@pytest.fixture(scope="module")
def history(tmp_path_factory):
    """Six corrections: four published (one later superseded by a newer one, one rolled
    back), one refused by the policy, one malformed; and one still pending."""
    model, editor = tiny_editing_setup()
    queue = CorrectionQueue(open_store(tmp_path_factory.mktemp("status") / "store"))
    items = correction_dicts(6)
    queue.submit(items[:4] + [{"id": "broken", "prompt": ""}])
    apply_pending(queue, model, editor, ApplyConfig(batch_size=2, policy=LENIENT))
    newer = {**items[0], "id": "newer", "target": items[0]["target"] + " Jr"}
    queue.submit([newer, items[4]])
    strict = AcceptancePolicy(min_edit_success=1.0, require_exact=True)
    apply_pending(queue, model, editor, ApplyConfig(batch_size=1, max_batches=1, policy=LENIENT))  # newer
    editor.edit_lrs.data.fill_(0.0)  # an editor that changes nothing: items[4] is refused
    apply_pending(queue, model, editor, ApplyConfig(batch_size=1, policy=strict))
    rollback(queue, correction_ids=[items[1]["id"]], reason="source was wrong")
    queue.submit([items[5]])
    return queue, items


def test_the_status_counts_every_reported_correction_once(history):
    queue, items = history
    status = queue_status(queue)
    assert status.version == 4  # two batches, the newer correction, the rollback
    assert status.live == 3  # items[2], items[3], newer
    assert status.superseded == [items[0]["id"]] and status.rolled_back == [items[1]["id"]]
    assert status.published == 5 and status.pending == 1
    assert sum(status.rejected.values()) == 1 and sum(status.dead_lettered.values()) == 1
    assert status.reported == 8 == 6 + 1 + 1  # the six, the newer one and the malformed record
    moved = status.moved
    assert moved.batches == 3 and moved.regression_lowest <= moved.regression_latest <= 1.0
    assert moved.locality_measured == 3 and 0.0 <= moved.locality_lowest <= moved.locality_mean <= 1.0


def test_mend_corrections_status_prints_it_and_its_json(history):
    queue, items = history
    store = str(queue.store.root)
    out = CliRunner().invoke(app, ["corrections", "status", "--store", store])
    assert out.exit_code == 0, out.output
    assert "8 corrections reported; 3 live in version 4" in out.output
    assert "superseded" in out.output and "rolled back" in out.output and "regression probes" in out.output
    as_json = CliRunner().invoke(app, ["corrections", "status", "--store", store, "--json"])
    assert as_json.exit_code == 0, as_json.output
    parsed = json.loads(as_json.output)
    assert parsed["live"] == 3 and parsed["reported"] == 8 and parsed["rolled_back"] == [items[1]["id"]]


def test_a_record_the_queue_cannot_read_is_counted_apart(tmp_path):
    queue = CorrectionQueue(open_store(tmp_path / "store"))
    queue.submit([{"id": "broken", "prompt": ""}])
    queue.store.put_bytes(queue.key("rejected", "garbled"), b"\xff not json")
    status = queue_status(queue)
    assert status.unreadable == 1 and sum(status.dead_lettered.values()) == 1
    assert status.reported == 2 and status.live == 0
    assert "  unreadable          1" in status.lines()
