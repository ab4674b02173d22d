"""The corrections queue on an artifact store (local directory or S3 prefix).

Layout under the queue's prefix::

    pending/<id>.json        submitted, validated, waiting to be applied
    applied/<id>.json        in a published version (with its metrics and version)
    rejected/<id>.json       evaluated and refused by the acceptance policy (with why)
    dead-letter/<key>.json   could not be a correction at all (with why and the raw input)
    versions/<n>/...         published corrected-model versions (see versions.py)

Nothing is ever dropped: every submitted record ends up in exactly one of the four
record states.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from mend.corrections.schema import (
    Correction,
    InvalidCorrection,
    check_tokenizable,
    iter_valid,
    now,
)
from mend.storage import ArtifactStore

State = Literal["pending", "applied", "rejected", "dead-letter"]
STATES: tuple[State, ...] = ("pending", "applied", "rejected", "dead-letter")


@dataclass
class SubmitReport:
    accepted: list[str] = field(default_factory=list)
    dead_lettered: list[tuple[str, str]] = field(default_factory=list)  # (key, reason)


class CorrectionQueue:
    """Submit, list and move corrections; the apply flow drives the rest."""

    def __init__(self, store: ArtifactStore, prefix: str = "corrections"):
        self.store = store
        self.prefix = prefix.strip("/")

    # -- keys -------------------------------------------------------------------------
    def key(self, state: State, name: str) -> str:
        return f"{self.prefix}/{state}/{name}.json"

    def ids(self, state: State) -> list[str]:
        start = f"{self.prefix}/{state}/"
        return [k[len(start) : -len(".json")] for k in self.store.list(start) if k.endswith(".json")]

    def read(self, state: State, name: str) -> dict:
        return self.store.get_json(self.key(state, name))

    def pending(self) -> list[Correction]:
        """Pending corrections, oldest first."""
        items = [Correction.model_validate(self.read("pending", i)) for i in self.ids("pending")]
        return sorted(items, key=lambda c: (c.requested_at, c.id))

    def state_of(self, correction_id: str) -> State | None:
        for state in ("pending", "applied", "rejected"):
            if self.store.exists(self.key(state, correction_id)):
                return state
        return None

    # -- submitting -------------------------------------------------------------------
    def dead_letter(self, raw: Any, reason: str, stage: str) -> str:
        """Keep an unusable submission with its reason; returns its key name."""
        body = raw if isinstance(raw, str) else json.dumps(raw, sort_keys=True, default=str)
        digest = hashlib.sha256(f"{stage}:{reason}:{body}".encode()).hexdigest()[:16]
        hint = raw.get("id") if isinstance(raw, dict) and isinstance(raw.get("id"), str) else "record"
        safe_hint = "".join(ch for ch in hint if ch.isalnum() or ch in "._-")[:40] or "record"
        name = f"{safe_hint}-{digest}"
        self.store.put_json(
            self.key("dead-letter", name),
            {"raw": raw if _jsonable(raw) else repr(raw), "reason": reason, "stage": stage, "at": now().isoformat()},
        )
        return name

    def submit(self, raws: Iterable[Any], tokenizer=None, max_tokens: int = 512) -> SubmitReport:
        """Validate and enqueue submissions; every invalid one is dead-lettered with why.

        Checks: schema (fields, types, empty or oversized values), target tokenisable
        (when a tokenizer is given), duplicate ids or identical (prompt, target) already
        queued or applied, and a different target for the same prompt already pending.
        """
        report = SubmitReport()
        pending = {c.prompt_key: c for c in self.pending()}
        applied_pairs = {
            (p["correction"]["prompt"].strip().lower(), p["correction"]["target"].strip().lower()): p["correction"]["id"]
            for p in (self.read("applied", i) for i in self.ids("applied"))
        }
        for item in iter_valid(raws):
            if isinstance(item, InvalidCorrection):
                report.dead_lettered.append((self.dead_letter(item.raw, item.reason, "submit"), item.reason))
                continue
            reason = self._conflict(item, pending, applied_pairs, tokenizer, max_tokens)
            if reason is None and not self.store.put_if_absent(
                self.key("pending", item.id), _encode(item.model_dump(mode="json"))
            ):
                reason = f"duplicate id {item.id!r}: already pending"
            if reason is not None:
                raw = item.model_dump(mode="json")
                report.dead_lettered.append((self.dead_letter(raw, reason, "submit"), reason))
                continue
            pending[item.prompt_key] = item
            report.accepted.append(item.id)
        return report

    def _conflict(self, item, pending, applied_pairs, tokenizer, max_tokens) -> str | None:
        state = self.state_of(item.id)
        if state is not None:
            return f"duplicate id {item.id!r}: already {state}"
        same = pending.get(item.prompt_key)
        if same is not None:
            if same.target.strip().lower() == item.target.strip().lower():
                return f"duplicate of pending correction {same.id!r}"
            return f"contradicts pending correction {same.id!r} (target {same.target!r} vs {item.target!r})"
        pair = (item.prompt_key, item.target.strip().lower())
        if pair in applied_pairs:
            return f"duplicate of applied correction {applied_pairs[pair]!r}"
        if tokenizer is not None:
            try:
                check_tokenizable(item, tokenizer, max_tokens)
            except InvalidCorrection as error:
                return error.reason
        return None

    # -- moving -----------------------------------------------------------------------
    def finish(self, correction: Correction, state: State, **details) -> None:
        """Record the outcome of a pending correction and take it out of ``pending/``."""
        self.store.put_json(
            self.key(state, correction.id),
            {"correction": correction.model_dump(mode="json"), "at": now().isoformat(), **details},
        )
        self.store.delete(self.key("pending", correction.id))

    def counts(self) -> dict[str, int]:
        return {state: len(self.ids(state)) for state in STATES}


def _encode(obj: Any) -> bytes:
    return (json.dumps(obj, sort_keys=True, indent=2) + "\n").encode()


def _jsonable(value: Any) -> bool:
    """Whether ``value`` can be stored as strict JSON (no NaN/inf, string keys)."""
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        return False
    return True
