"""Eight processes submit overlapping files at once (issue 19, item 2 and its acceptance test):
afterwards at most one correction per normalised prompt is pending and every submitted
record is accounted for exactly once, on a local store and on S3 (moto)."""

from __future__ import annotations

import json
import multiprocessing
import queue as queue_module
import random
import time
from collections import Counter

import pytest

from mend.corrections import CorrectionQueue, read_submissions
from mend.corrections.schema import normalise
from mend.storage import open_store

WORKERS = 8
PER_WORKER = 30
PROMPTS = [f"Where was person number {i} born?" for i in range(25)]
TARGETS = ["Paris", "Rome", "Lima"]


def overlapping_files(seed: int = 7) -> list[bytes]:
    """Files that share prompts (some with invisible characters), repeat whole
    corrections under one id, repeat them under new ids, and contradict each other."""
    rng = random.Random(seed)
    files = []
    for worker in range(WORKERS):
        lines = []
        for n in range(PER_WORKER):
            p, t = rng.randrange(len(PROMPTS)), rng.randrange(len(TARGETS))
            prompt = PROMPTS[p] if rng.random() < 0.8 else PROMPTS[p].replace(" ", "\u200b ", 1)
            shared_id = rng.random() < 0.5
            record = {
                "id": f"p{p}-t{t}" if shared_id else f"w{worker}-{n}",
                "prompt": PROMPTS[p] if shared_id else prompt,
                "target": TARGETS[t], "requested_by": "tester",
                "requested_at": "2026-01-01T00:00:00+00:00",
            }
            lines.append(json.dumps(record))
            if rng.random() < 0.1:
                lines.append("{not json")
        files.append("\n".join(lines).encode())
    return files


def _submit(uri: str, data: bytes, name: str, barrier, results) -> None:
    queue = CorrectionQueue(open_store(uri))
    records = read_submissions(data, name)
    barrier.wait()
    report = queue.submit(records)
    results.put((name, len(records), report.accepted, report.dead_lettered, report.known, report.receipt))


def _run_and_check(uri: str) -> None:
    ctx = multiprocessing.get_context("fork")
    barrier, results = ctx.Barrier(WORKERS), ctx.Queue()
    files = overlapping_files()
    workers = [ctx.Process(target=_submit, args=(uri, data, f"w{i}.jsonl", barrier, results))
               for i, data in enumerate(files)]
    for w in workers:
        w.start()
    reports = []
    deadline = time.monotonic() + 300
    while len(reports) < WORKERS:  # a worker that crashed fails the test now, not at a timeout
        try:
            reports.append(results.get(timeout=1))
        except queue_module.Empty:
            died = [w.exitcode for w in workers if w.exitcode not in (None, 0)]
            assert not died and time.monotonic() < deadline, f"workers failed: exit codes {died}"
    for w in workers:
        w.join(timeout=60)
        assert w.exitcode == 0

    queue = CorrectionQueue(open_store(uri))
    pending = queue.pending()
    per_prompt = Counter(c.prompt_key for c in pending)
    assert max(per_prompt.values()) == 1, per_prompt.most_common(3)
    assert len(per_prompt) == len({normalise(p) for p in PROMPTS})  # every prompt got one

    submitted = sum(n for _, n, *_ in reports)
    accepted = [cid for _, _, acc, *_ in reports for cid in acc]
    dead = [key for _, _, _, dl, *_ in reports for key, _ in dl]
    known = [cid for _, _, _, _, kn, _ in reports for cid, _ in kn]
    assert submitted >= WORKERS * PER_WORKER
    for _, n, acc, dl, kn, _ in reports:
        assert len(acc) + len(dl) + len(kn) == n  # each record exactly once
    assert len(accepted) + len(dead) + len(known) == submitted
    assert sorted(accepted) == sorted(c.id for c in pending)  # queued means pending, once
    assert sorted(dead) == sorted(queue.ids("dead-letter"))   # one dead-letter record each
    assert len({receipt for *_, receipt in reports}) == WORKERS
    for *_, receipt in reports:
        assert queue.store.exists(receipt)
    assert not queue.verify()


def test_eight_processes_on_one_local_store(tmp_path):
    _run_and_check(str(tmp_path / "store"))


@pytest.mark.usefixtures("moto_s3")
def test_eight_processes_on_one_s3_prefix(s3_bucket):
    _run_and_check(f"s3://{s3_bucket}/team/queue")
