"""SIGKILL the apply run at random points; every correction is still applied exactly once."""

import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from mend.corrections import CorrectionQueue, VersionStore
from mend.storage import open_store
from tests.support.corrections import correction_dicts

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def _worker(store_dir):
    return subprocess.Popen(
        [sys.executable, "-m", "tests.support.corrections", str(store_dir)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )


def test_killed_apply_runs_resume_and_apply_each_correction_once(tmp_path):
    store_dir = tmp_path / "store"
    queue = CorrectionQueue(open_store(store_dir))
    pool = correction_dicts(60)
    rng = random.Random(1234)
    submitted, kills_mid_work = [], 0
    for trial in range(20):
        fresh = pool[3 * trial : 3 * trial + 3]
        submitted += queue.submit(fresh).accepted
        worker = _worker(store_dir)
        assert worker.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.0, 1.5))
        if worker.poll() is None:
            worker.send_signal(signal.SIGKILL)
            kills_mid_work += 1
        worker.wait()
    final = _worker(store_dir)
    final.stdout.readline()
    assert final.wait(timeout=600) == 0
    assert kills_mid_work >= 10  # most trials really were interrupted

    assert queue.counts()["pending"] == 0
    applied = set(queue.ids("applied"))
    assert applied == set(submitted)
    versions = VersionStore(queue.store)
    numbers = versions.versions()
    assert numbers == list(range(1, len(numbers) + 1))
    added = Counter(cid for n in numbers for cid in versions.manifest(n)["added"])
    assert set(added) == applied and max(added.values()) == 1  # exactly once
    for n in numbers:
        versions.verify(n)  # every published version is complete
    assert sorted(versions.manifest(numbers[-1])["active_ids"]) == sorted(applied)
    assert versions.collect_garbage() == 0
