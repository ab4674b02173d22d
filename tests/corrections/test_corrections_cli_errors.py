"""The corrections CLI under hostile text and every kind of mistake (issue 19, items 4, 10, 11)."""

from __future__ import annotations

import json
import time

import pytest
from typer.testing import CliRunner

from mend.corrections import CorrectionQueue, Lease
from mend.storage import open_store
from tests.support.corrections import correction_dicts

GOOD = correction_dicts(2)


def _corrections_app():
    from mend.corrections.cli import app

    return app


def invoke(*args: str, input: str | None = None, env: dict | None = None):
    # A wide terminal, so that table cells are not wrapped mid-text.
    return CliRunner().invoke(_corrections_app(), list(args), input=input, env={"COLUMNS": "400", **(env or {})})


def _one_line_error(result, code: int, *needles: str) -> None:
    assert result.exit_code == code, result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in lines[0], lines[0]


# -- item 4: user text is printed as plain text ---------------------------------------------
HOSTILE_TEXT = ["[/]", "\x1b[31mred\x1b[0m", "[link=https://evil.example]click[/link]", "a\u202eb", "[bold]x"]


def test_markup_and_escape_sequences_in_corrections_print_as_plain_visible_text(tmp_path):
    store = ["--store", str(tmp_path / "store")]
    records = [{**GOOD[0], "id": f"h{i}", "prompt": f"Prompt {i} {text}", "target": text}
               for i, text in enumerate(HOSTILE_TEXT)]
    records.append({**GOOD[0], "id": "contra", "prompt": "Prompt 0 [/]", "target": "[/] other"})
    (tmp_path / "fixes.jsonl").write_text("\n".join(json.dumps(r) for r in records))
    result = invoke("submit", str(tmp_path / "fixes.jsonl"), *store)
    assert result.exit_code == 1 and "5 pending" in result.output, result.output
    assert "target '[/]' vs '[/] other'" in result.output  # the report shows the target, markup and all

    result = invoke("list", "--state", "pending", *store)
    assert result.exit_code == 0, result.output
    out = result.output
    assert "\x1b" not in out and "\u202e" not in out
    assert "\\x1b[31mred" in out and "\\u202e" in out
    assert "[link=https://evil.example]click[/link]" in out and "[/]" in out and "[bold]x" in out

    result = invoke("list", "--state", "dead-letter", *store)
    assert result.exit_code == 0 and "[/] other" in result.output


# -- item 10: one line, exit 2 for bad input and 1 for failures, --debug for the traceback --
def test_input_mistakes_are_one_line_with_exit_code_2(tmp_path, moto_s3):
    (tmp_path / "fixes.jsonl").write_text(json.dumps(GOOD[0]))
    local = ["--store", str(tmp_path / "store")]
    fixes = str(tmp_path / "fixes.jsonl")
    _one_line_error(invoke("submit", str(tmp_path / "missing.jsonl"), *local), 2, "missing.jsonl does not exist")
    _one_line_error(invoke("submit", str(tmp_path), *local), 2, "is a directory")
    _one_line_error(invoke("submit", fixes, "--store", "ftp://host/x"), 2, "unsupported store URI", "s3://bucket/prefix")
    _one_line_error(invoke("list", "--store", "s3://no-such-bucket-mend/x"), 2, "bucket does not exist", "create the bucket")
    _one_line_error(invoke("list", "--store", "s3://bucket/../x"), 2, "'..' segments")
    _one_line_error(invoke("submit", fixes, *local, "--prefix", "../x"), 2, "invalid artifact key", "--prefix")
    _one_line_error(invoke("list", "--state", "bogus", *local), 2, "unknown state 'bogus'")
    _one_line_error(invoke("show", "99", *local), 1, "nothing is published yet")
    _one_line_error(invoke("rollback", "--id", "c0-000", *local), 1, "nothing is published yet")
    _one_line_error(invoke("rollback", *local), 2, "give either --id")


def test_debug_shows_the_traceback(tmp_path):
    result = invoke("submit", str(tmp_path / "missing.jsonl"), "--store", str(tmp_path / "s"), "--debug")
    assert result.exit_code != 0 and result.exception is not None and not isinstance(result.exception, SystemExit)


def test_dead_letter_reasons_name_the_file_and_line(tmp_path):
    (tmp_path / "fixes.jsonl").write_text(json.dumps(GOOD[0]) + "\n" + json.dumps({**GOOD[1], "target": ""}) + "\n")
    result = invoke("submit", str(tmp_path / "fixes.jsonl"), "--store", str(tmp_path / "store"))
    assert result.exit_code == 1 and "fixes.jsonl line 2: target" in result.output


def test_the_store_comes_from_mend_store_when_not_given(tmp_path, monkeypatch):
    (tmp_path / "fixes.jsonl").write_text(json.dumps(GOOD[0]))
    monkeypatch.chdir(tmp_path)
    result = invoke("submit", "fixes.jsonl", env={"MEND_STORE": str(tmp_path / "team-store")})
    assert result.exit_code == 0, result.output
    assert CorrectionQueue(open_store(tmp_path / "team-store")).ids("pending") == [GOOD[0]["id"]]
    assert not (tmp_path / "artifacts").exists()


# -- item 11: a lease left by a killed process ------------------------------------------------
def test_a_dead_runs_lease_is_shown_and_can_be_broken_with_confirmation(tmp_path):
    store_dir = tmp_path / "store"
    store = open_store(store_dir)
    Lease(store, "corrections/locks/apply.json", ttl_s=600).acquire()  # its process was killed
    local = ["--store", str(store_dir)]
    time.sleep(1.1)

    result = invoke("lease", *local)
    assert result.exit_code == 0
    assert "held by " in result.output and " pid " in result.output and "acquired 1s ago" in result.output
    assert "expires in 59" in result.output

    _one_line_error(invoke("rollback", "--id", "x", *local), 1, "nothing is published yet")
    result = invoke("lease", "--break-lease", *local, input="n\n")
    assert result.exit_code == 1 and store.exists("corrections/locks/apply.json")  # not confirmed

    result = invoke("lease", "--break-lease", "--reason", "run killed", *local, input="y\n")
    assert result.exit_code == 0 and "lease broken" in result.output
    [record] = store.list("corrections/locks/broken/")
    kept = store.get_json(record)
    assert kept["reason"] == "run killed" and kept["held"]["holder"] and kept["broken_by"]
    assert Lease(store, "corrections/locks/apply.json", ttl_s=5).acquire().held()
    assert "held by" in invoke("lease", *local).output


def test_a_held_lease_is_one_line_naming_the_way_out(tmp_path):
    from mend.corrections.cli import _explain
    from mend.corrections.lease import LeaseHeldError

    code, message = _explain(LeaseHeldError("corrections/locks/apply.json is held by x for another 500s"), None)
    assert code == 1 and "mend corrections lease --break-lease" in message


@pytest.mark.parametrize("state", ["pending", "dead-letter"])
def test_list_is_read_only_and_survives_untrusted_records(tmp_path, state):
    store_dir = tmp_path / "store"
    queue = CorrectionQueue(open_store(store_dir))
    queue.submit([GOOD[0], {"id": "bad"}])
    folder = store_dir / "corrections" / state
    (folder / "stray.json").write_text("{}")
    result = invoke("list", "--state", state, "--store", str(store_dir))
    assert result.exit_code == 0 and "untrusted" in result.output
    assert (folder / "stray.json").exists()  # list moves nothing
    result = invoke("verify", "--store", str(store_dir))
    assert result.exit_code == 1 and "stray.json" in result.output and "1 problem" in result.output
