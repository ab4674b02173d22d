"""How long the queue takes to read itself: ``mend corrections status``, the pending list an
apply run starts from, one ``submit`` (it checks the applied pairs) and ``verify``, on a
queue of reported corrections, reading one record at a time and ``READ_AT_ONCE`` at a time.

    python -m bench.queue_reads [--n 1000] [--rtt-ms 20] [--backends local,s3,remote]

Backends: ``local`` (a local directory), ``s3`` (moto's S3 server on 127.0.0.1, in a
process of its own) and ``remote``: the local directory with ``--rtt-ms`` added to every
read, a model of a store one network round trip away (an S3 GET's first byte takes that
order of time, where moto on loopback answers in a fraction of it). Every read of the
queue is one round trip, so what overlapping them buys shows on ``remote``; ``local``
shows why a local store reads one at a time (``default_read_at_once``).

The queue holds ``n`` reported corrections: half applied, a quarter rejected (three kinds of
reason), 15 % dead-lettered, the rest pending. Figures (``bench/results/queue_reads.json``),
per backend and operation: ``one_at_a_time_s``, ``at_once_s`` (median of ``--repeats``) and
``speedup``; ``same_answers``: whether both ways gave the same status, pending list and
verify report (they must).
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench.common import write_result
from mend.corrections import CorrectionQueue
from mend.corrections.status import queue_status
from mend.storage import READ_AT_ONCE, ArtifactStore, LocalStore, open_store
from mend.testing.s3 import UNSET_ENV, start_moto_s3_process

BUCKET = "mend-bench-reads"

NEW_IDS = itertools.count(10**9)  # corrections submitted while measuring, never seen before anywhere

REASONS = ["edit success 0.412 < 0.99", "locality 0.700 < 0.8", "target is not the model's answer under teacher forcing"]


class RemoteStore(LocalStore):
    """A local store whose every read waits one round trip first."""

    read_at_once = READ_AT_ONCE  # as a remote store's

    def __init__(self, root: Path, rtt_s: float):
        super().__init__(root, fsync=False)
        self.rtt_s = rtt_s

    def _read_bytes(self, key):
        time.sleep(self.rtt_s)
        return super()._read_bytes(key)


def correction(i: int) -> dict:
    return {"id": f"report-{i:06d}", "prompt": f"Which river flows through town number {i}?",
            "target": f"River {i}", "requested_by": "bench", "requested_at": "2026-01-01T00:00:00+00:00"}


def fill(store: ArtifactStore, n: int) -> None:
    """``n`` reported corrections in every state a queue holds them in."""
    queue = CorrectionQueue(store)
    applied, rejected, dead = n // 2, n // 4, n * 15 // 100
    valid = n - dead
    queue.submit([correction(i) for i in range(valid)])
    for i, c in enumerate(queue.pending()[: applied + rejected]):
        if i < applied:
            queue.finish(c, "applied", version=1 + i // 100, metrics={"edit_success": 1.0})
        else:
            queue.finish(c, "rejected", reason=REASONS[i % len(REASONS)], metrics={})
    queue.submit([{"id": f"broken-{i}", "prompt": ""} for i in range(dead)])


def answers(queue: CorrectionQueue) -> tuple:
    status = queue_status(queue).as_json()
    return status, [c.id for c in queue.pending()], queue.verify()


def measure(open_store_: Callable[[], ArtifactStore], repeats: int) -> dict:
    """The four operations on the same queue through a store reading one document at a
    time and through one reading ``READ_AT_ONCE`` at a time."""
    serial, overlapping = open_store_(), open_store_()
    default = serial.read_at_once
    serial.read_at_once, overlapping.read_at_once = 1, READ_AT_ONCE
    one, many = CorrectionQueue(serial), CorrectionQueue(overlapping)

    def submit_one(queue: CorrectionQueue) -> None:
        # A new correction goes all the way: its id is free, then the applied pairs are read.
        if not queue.submit([correction(next(NEW_IDS))]).accepted:
            raise RuntimeError("the measured submit did not queue its correction")

    def operations(queue: CorrectionQueue) -> dict[str, Callable[[], object]]:
        return {"status": lambda: queue_status(queue), "pending": queue.pending,
                "submit_one": lambda: submit_one(queue), "verify": queue.verify}

    def seconds(fn: Callable[[], object]) -> float:
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return round(statistics.median(times), 3)

    same = answers(one) == answers(many)
    out: dict = {}
    for (name, one_at_a_time), at_once in zip(operations(one).items(), operations(many).values(), strict=True):
        a, b = seconds(one_at_a_time), seconds(at_once)
        out[name] = {"one_at_a_time_s": a, "at_once_s": b, "speedup": round(a / max(b, 1e-9), 2)}
    return {**out, "same_answers": same, "default_read_at_once": default}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1000, help="reported corrections in the queue")
    parser.add_argument("--rtt-ms", type=float, default=20.0, help="round trip of the remote backend's reads")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--backends", default="local,s3,remote")
    args = parser.parse_args()
    results: dict[str, dict] = {}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="queue-reads-") as tmp:
        if "local" in args.backends or "remote" in args.backends:
            fill(LocalStore(Path(tmp) / "store", fsync=False), args.n)
        if "local" in args.backends:
            results["local"] = measure(lambda: LocalStore(Path(tmp) / "store", fsync=False), args.repeats)
        if "remote" in args.backends:
            results["remote"] = measure(lambda: RemoteStore(Path(tmp) / "store", args.rtt_ms / 1000), args.repeats)
        if "s3" in args.backends:
            moto = start_moto_s3_process(bucket=BUCKET)
            try:
                for name in UNSET_ENV:
                    os.environ.pop(name, None)
                os.environ.update(moto.env())  # the store finds the endpoint as in production
                fill(open_store(f"s3://{BUCKET}/reads/store"), args.n)
                results["s3"] = measure(lambda: open_store(f"s3://{BUCKET}/reads/store"), args.repeats)
            finally:
                moto.stop()
    write_result("queue_reads", {"records": args.n, "read_at_once": READ_AT_ONCE, "rtt_ms": args.rtt_ms,
                                 "repeats": args.repeats, "per_backend": results,
                                 "same_answers": all(r["same_answers"] for r in results.values()),
                                 "seconds": round(time.perf_counter() - started, 1)})


if __name__ == "__main__":
    main()
