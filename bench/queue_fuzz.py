"""Hostile inputs through ``read_submissions`` + ``CorrectionQueue.submit`` on a local store
and on S3 (moto on 127.0.0.1): is every record accounted for, does anything crash, does
anything land outside the store?

    python -m bench.queue_fuzz [--n 10000] [--seed 0] [--backends local,s3]

Inputs are JSON Lines files, JSON lists (valid and broken) and single documents mixing the
classes of issue 19: invalid UTF-8, nesting too deep to parse (and just shallow enough),
integers over 4,300 digits, unpaired surrogates, markup and escape sequences, zero-width
characters and byte-order marks, truncated JSON, random bytes, duplicates (same id, same
content under another id) and contradictions, beside clean corrections. Stray records are
planted among them (a file copied into ``pending/`` by hand, links to a file outside the
store, dangling links under ids that later records use).

Figures, summed over the backends (``bench/results/queue_fuzz.json``):

* ``inputs``: records submitted (one per JSON Lines line, list element or document);
* ``crashes``: submit calls that raised;
* ``lost``: clean records (unique prompt and id) not pending afterwards, plus records
  reported pending that are not;
* ``unaccounted``: records without exactly one outcome (pending, dead-letter, known), or
  whose outcome has no record in the store (dead-letter keys, receipts);
* ``outside_store_writes``: files created or changed outside the store (local: the folder
  around it, including the targets of the planted links; S3: objects outside the prefix).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench.common import write_result
from mend.corrections import CorrectionQueue, read_submissions
from mend.storage import ArtifactStore, LocalStore, open_store

TARGETS = ["Paris", "Rome", "[/]", "Lima", "\x1b[31mred\x1b[0m"]
WEIRD_TEXT = ["[/]", "[link=https://evil.example]click[/link]", "\x1b]8;;x\x07", "\u202eevil", "a\u200bb",
              "\ufeffbom", ":smile:", "\x00nul", "\\ud800", "ＴＨＥ"]


class Inputs:
    """Random hostile files; clean records get ids and prompts nobody else uses."""

    def __init__(self, seed: int):
        self.rng = random.Random(seed)
        self.clean = 0

    def clean_record(self) -> dict:
        self.clean += 1
        return {"id": f"clean-{self.clean}", "prompt": f"Clean prompt {self.clean} is",
                "target": self.rng.choice(["Paris", "Rome"]), "requested_by": "fuzz",
                "requested_at": "2026-01-01T00:00:00+00:00"}

    def shared_record(self) -> dict:
        """Overlapping prompts: duplicates and contradictions, some with invisible characters."""
        p = self.rng.randrange(40)
        prompt = f"Shared prompt {p} is"
        if self.rng.random() < 0.3:
            prompt = self.rng.choice(["\u200b", "\ufeff", "\u200d", " "]) + prompt
        return {"id": self.rng.choice([f"shared-{p}", f"s{p}-{self.rng.randrange(10**6)}"]), "prompt": prompt,
                "target": self.rng.choice(TARGETS), "requested_by": "fuzz", "requested_at": "2026-01-01T00:00:00Z"}

    def hostile_line(self) -> bytes:
        rng = self.rng
        kind = rng.randrange(12)
        base = self.shared_record()
        if kind == 0:
            return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 80))).replace(b"\n", b" ")
        if kind == 1:
            return json.dumps(base).encode()[: rng.randrange(1, 60)]
        if kind == 2:
            depth = rng.choice([980, 5000, 100_000])
            return b"[" * depth + b"]" * depth
        if kind == 3:
            return b'{"id": ' + b"7" * rng.choice([4301, 10_000]) + b"}"
        if kind == 4:
            return json.dumps({**base, "prompt": "broken \ud800 surrogate"}).encode()
        if kind == 5:
            return json.dumps({**base, "target": "caf"}).encode().replace(b"caf", b"caf\xe9\xff")
        if kind == 6:
            return json.dumps({**base, rng.choice(["prompt", "target", "requested_by"]): rng.choice(WEIRD_TEXT)}).encode()
        if kind == 7:
            return json.dumps({**base, rng.choice(list(base)): rng.choice([None, 5, [], {}, "", "x" * 3000])}).encode()
        if kind == 8:
            return json.dumps({**base, "extra": {"nested": [1, 2, {"deep": True}]}}).encode()
        if kind == 9:
            return json.dumps(rng.choice([[1, 2], "string", 3.5, None, True])).encode()
        if kind == 10:
            return b"NaN" if rng.random() < 0.5 else json.dumps({**base, "id": "../../etc/passwd"}).encode()
        return json.dumps(base).encode()

    def file(self) -> tuple[bytes, list[str]]:
        """A file and the ids of the clean records in it (which must end up pending)."""
        rng = self.rng
        clean = [self.clean_record() for _ in range(rng.randrange(0, 3))]
        shape = rng.randrange(10)
        if shape < 7:  # JSON Lines
            lines = [self.hostile_line() for _ in range(rng.randrange(1, 8))]
            for record in clean:
                lines.insert(rng.randrange(len(lines) + 1), json.dumps(record).encode())
            body = b"\n".join(line for line in lines if line.strip())
            if not any(line[:1] not in (b" ", b"\t") for line in lines):
                return body, []
            return (b"\xef\xbb\xbf" + body if rng.random() < 0.05 else body), [r["id"] for r in clean]
        records = [*clean, *(self.shared_record() for _ in range(rng.randrange(1, 5)))]
        rng.shuffle(records)
        text = json.dumps(records, indent=2)
        if shape == 7:  # a valid list
            return text.encode(), [r["id"] for r in clean]
        if shape == 8:  # a broken list: nothing in it can be trusted to be a record
            return text.replace('"target":', '"target": five,', 1).encode(), []
        return json.dumps(records[0]).encode(), [records[0]["id"]] if records[0] in clean else []


def tree_digest(folder: Path, skip: Path) -> dict[str, str]:
    """Every file under ``folder`` except the store itself, with its sha256."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        if Path(dirpath) == skip.parent:
            dirnames[:] = [d for d in dirnames if Path(dirpath) / d != skip]
        for name in filenames:
            path = Path(dirpath) / name
            if path.is_symlink():
                out[str(path)] = "link:" + os.readlink(path)
            else:
                out[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def plant_strays(store: ArtifactStore, queue: CorrectionQueue, around: Path | None, rng: random.Random,
                 next_clean: int) -> None:
    """A file copied into pending/ by hand and, on a local store, links out of it."""
    stray = json.dumps({"id": f"stray-{rng.randrange(10**9)}", "prompt": "stray", "target": "x"}).encode()
    if isinstance(store, LocalStore):
        pending = store.root / queue.prefix / "pending"
        pending.mkdir(parents=True, exist_ok=True)
        (pending / f"by-hand-{rng.randrange(10**9)}.json").write_bytes(stray)
        link = pending / f"link-{rng.randrange(10**9)}.json"
        if not link.exists():
            os.symlink(around / "outside.json", link)
        dangling = pending / f"clean-{next_clean + 1}.json"  # the next clean record's id
        if not os.path.lexists(dangling):
            os.symlink(around / "no-such-file", dangling)
    else:
        store.client.put_object(Bucket=store.bucket, Key=f"{store.prefix}{queue.prefix}/pending/by-hand-{rng.randrange(10**9)}.json", Body=stray)


def run_backend(store: ArtifactStore, n: int, seed: int, around: Path | None,
                outside_keys: Callable[[], list[str]]) -> dict[str, int]:
    queue = CorrectionQueue(store)
    inputs = Inputs(seed)
    figures = {"inputs": 0, "lost": 0, "crashes": 0, "unaccounted": 0}
    before = tree_digest(around, store.root) if around else None
    keys_before = outside_keys()
    expected_clean: set[str] = set()
    accepted: set[str] = set()
    dead = 0
    calls = 0
    while figures["inputs"] < n:
        if calls % 50 == 0:
            plant_strays(store, queue, around, inputs.rng, inputs.clean)
        data, clean_ids = inputs.file()
        calls += 1
        records = read_submissions(data, f"fuzz-{calls}.jsonl")
        figures["inputs"] += len(records)
        try:
            report = queue.submit(records)
        except Exception as error:  # noqa: BLE001 - counting them is the point
            figures["crashes"] += 1
            print(f"crash on input {calls}: {type(error).__name__}: {error}")
            continue
        if report.total != len(records) or len(report.outcomes) != len(records):
            figures["unaccounted"] += abs(len(records) - report.total)
        if not store.exists(report.receipt):
            figures["unaccounted"] += len(records)
        expected_clean.update(clean_ids)
        accepted.update(report.accepted)
        dead += len(report.dead_lettered)
    pending = {c.id for c in queue.pending()}
    figures["lost"] += len(accepted - pending) + len(expected_clean - pending)
    figures["unaccounted"] += abs(len(queue.ids("dead-letter")) - dead)
    after = tree_digest(around, store.root) if around else None
    figures["outside_store_writes"] = (len(set(after.items()) ^ set(before.items())) if around else 0) + len(
        set(outside_keys()) - set(keys_before))
    print(f"{type(store).__name__}: {figures} ({len(pending)} pending, {dead} dead-lettered, {calls} files)")
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=10_000, help="records per backend")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--backends", default="local,s3")
    args = parser.parse_args()
    results: dict[str, dict[str, int]] = {}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="queue-fuzz-") as tmp:
        around = Path(tmp)
        (around / "outside.json").write_text('{"secret": true}')
        if "local" in args.backends:
            # fsync off: this measures what ends up where, not durability.
            store = LocalStore(around / "store", fsync=False)
            results["local"] = run_backend(store, args.n, args.seed, around, lambda: [])
        if "s3" in args.backends:
            from mend.testing.s3 import UNSET_ENV, start_moto_s3

            moto = start_moto_s3()
            try:
                for name in UNSET_ENV:
                    os.environ.pop(name, None)
                os.environ.update(moto.env())
                store = open_store(f"s3://{moto.bucket}/fuzz/store")
                client = moto.client()

                def outside() -> list[str]:
                    keys = [o["Key"] for page in client.get_paginator("list_objects_v2").paginate(Bucket=moto.bucket)
                            for o in page.get("Contents", [])]
                    return [k for k in keys if not k.startswith("fuzz/store/")]

                client.put_object(Bucket=moto.bucket, Key="fuzz/outside.json", Body=b"{}")
                results["s3"] = run_backend(store, args.n, args.seed + 1, None, outside)
            finally:
                moto.stop()
    totals = {key: sum(r[key] for r in results.values()) for key in
              ("inputs", "lost", "crashes", "unaccounted", "outside_store_writes")}
    write_result("queue_fuzz", {**totals, "per_backend": results, "seed": args.seed,
                                "seconds": round(time.perf_counter() - started, 1)})


if __name__ == "__main__":
    main()
