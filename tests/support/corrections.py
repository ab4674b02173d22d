"""Tiny-model fixtures for the corrections queue, and a worker process for kill tests.

    python -m tests.support.corrections STORE_DIR   # apply everything pending, then exit
"""

from __future__ import annotations

import sys
import time
from datetime import UTC, datetime, timedelta

import torch

from mend import Editor, EditorConfig
from mend.corrections import (
    AcceptancePolicy,
    ApplyConfig,
    CorrectionQueue,
    LeaseHeldError,
    apply_pending,
)
from mend.storage import open_store
from tests.support.synthetic import LOCALITY, synthetic_records
from tests.support.tiny_models import tiny_model

LENIENT = AcceptancePolicy(min_edit_success=0.0, require_exact=False, min_locality=0.0, min_regression=0.0)


def correction_dicts(n: int, seed: int = 0) -> list[dict]:
    """Valid correction records with distinct prompts."""
    start = datetime(2026, 1, 1, tzinfo=UTC)
    out, seen = [], set()
    for i, record in enumerate(synthetic_records(4 * n, seed=seed)):
        if record.prompt in seen:
            continue
        seen.add(record.prompt)
        out.append({
            "id": f"c{seed}-{len(out):03d}",
            "prompt": record.prompt,
            "target": record.target,
            "rephrases": list(record.rephrases),
            "locality": [{"prompt": p, "answer": a} for p, a in LOCALITY[:1]],
            "requested_by": "tester",
            "requested_at": (start + timedelta(minutes=i)).isoformat(),
        })
        if len(out) == n:
            break
    return out


def tiny_editing_setup(seed: int = 0):
    """A tiny LLaMA and an identity editor strong enough to change its answers."""
    model = tiny_model("llama", seed=seed)
    torch.manual_seed(seed)
    editor = Editor.for_model(model, EditorConfig(rank=16, edit_lr_init=5e-2))
    records = synthetic_records(8, seed=99)
    editor.fit_normalization(model, [r.prompt for r in records], [r.target for r in records])
    return model, editor


def main(store_dir: str) -> None:
    queue = CorrectionQueue(open_store(store_dir))
    model, editor = tiny_editing_setup()
    config = ApplyConfig(batch_size=2, lease_ttl_s=1.5, policy=LENIENT)
    print("ready", flush=True)
    while True:
        try:
            apply_pending(queue, model, editor, config)
            return
        except LeaseHeldError:  # a killed run's lease has not expired yet
            time.sleep(0.3)


if __name__ == "__main__":
    main(sys.argv[1])
