"""The corrections queue on an artifact store (local directory or S3 prefix).

Layout under the queue's prefix::

    pending/<id>.json             submitted, validated, waiting to be applied
    applied/<id>.json             in a published version (with its metrics and version)
    rejected/<id>.json            evaluated and refused by the acceptance policy (with why)
    dead-letter/<key>.json        could not be a correction at all (with why, where and the raw input)
    claims/<prompt>/<n>.json      who holds a normalised prompt (see below)
    submissions/<key>.json        one receipt per submit call: every record's outcome
    quarantine/<key>.json         records found in the queue that it cannot trust (with why)
    versions/<n>/...              published corrected-model versions (see versions.py)

Nothing is ever dropped: every submitted record ends up pending, dead-lettered or
known (the very same correction is already in the queue), each with its reason, and
each submit call leaves a receipt listing them.

At most one correction per normalised prompt is pending, however many processes
submit at once: before a correction is written to ``pending/`` it claims its prompt
with the store's atomic ``put_if_absent`` (local: ``link(2)`` under a lock; S3: a
conditional ``If-None-Match: *`` write) of ``claims/<sha256 of the prompt>/<n>.json``.
Exactly one of several concurrent claims of generation ``n`` wins; the losers read the
winner and report a duplicate or a contradiction. Generation ``n + 1`` may be claimed
once the holder of ``n`` has left ``pending/`` (applied, rejected, removed), or when its
submitter died between claiming and queueing (``CLAIM_GRACE_S`` later).
"""

from __future__ import annotations

import base64
import hashlib
import json
import reprlib
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from pydantic import ValidationError

from mend.corrections.schema import (
    Correction,
    InvalidCorrection,
    Submission,
    check_tokenizable,
    describe,
    normalise,
    now,
    parse_correction,
)
from mend.storage import (
    ArtifactNotFoundError,
    ArtifactStore,
    ChecksumMismatchError,
    StorageError,
    UntrustedObjectError,
    validate_key,
)

State = Literal["pending", "applied", "rejected", "dead-letter"]
STATES: tuple[State, ...] = ("pending", "applied", "rejected", "dead-letter")

CLAIM_GRACE_S = 300.0
"""How long a claim whose correction is not (yet) pending still holds its prompt: far
longer than a submitter takes between claiming and writing, so only a submitter that
died in between loses it."""

_CLAIM_ATTEMPTS = 20

Outcome = Literal["pending", "dead-letter", "known"]


@dataclass
class SubmitReport:
    """What became of every submitted record: ``accepted`` (now pending),
    ``dead_lettered`` (key, reason) or ``known`` (id, reason: the same correction is
    already in the queue). Their lengths add up to the number of records submitted."""

    accepted: list[str] = field(default_factory=list)
    dead_lettered: list[tuple[str, str]] = field(default_factory=list)
    known: list[tuple[str, str]] = field(default_factory=list)
    receipt: str = ""
    """Key of this submit call's receipt in the store ("" until it is written)."""
    outcomes: list[dict[str, str]] = field(default_factory=list)
    """One entry per record, in order: where, outcome, id or key, reason."""

    @property
    def total(self) -> int:
        return len(self.accepted) + len(self.dead_lettered) + len(self.known)


@dataclass(frozen=True)
class Problem:
    """A record the queue cannot trust (or found quarantined), and why."""

    key: str
    reason: str


class CorrectionQueue:
    """Submit, list and move corrections; the apply flow drives the rest."""

    def __init__(self, store: ArtifactStore, prefix: str = "corrections"):
        self.store = store
        self.prefix = validate_key(prefix.strip("/"))

    # -- keys -------------------------------------------------------------------------
    def key(self, state: State, name: str) -> str:
        return f"{self.prefix}/{state}/{name}.json"

    def ids(self, state: State) -> list[str]:
        start = f"{self.prefix}/{state}/"
        return [k[len(start) : -len(".json")] for k in self.store.list(start) if k.endswith(".json")]

    def read(self, state: State, name: str) -> dict:
        return self.store.get_json(self.key(state, name))

    def pending(self) -> list[Correction]:
        """Pending corrections, oldest first. A pending record the queue cannot trust
        (no checksum, a link, not a correction) is quarantined and left out."""
        items = [record for _, record in self._trusted("pending", quarantine=True)]
        return sorted(items, key=lambda c: (c.requested_at, c.id))

    def state_of(self, correction_id: str) -> State | None:
        for state in ("pending", "applied", "rejected"):
            if self.store.exists(self.key(state, correction_id)):
                return state
        return None

    # -- reading records it may not trust -------------------------------------------
    def inspect(self, state: State, name: str) -> tuple[Any, str | None]:
        """``(record, None)`` for a record the queue trusts, else ``(None, why not)``.

        Read-only. Pending records come back as :class:`Correction`; the others as dicts.
        Raises :class:`ArtifactNotFoundError` if the record is gone, and storage errors
        that say nothing about the record (a network failure) as they are.
        """
        try:
            record = self.read(state, name)
        except (ChecksumMismatchError, UntrustedObjectError, ValueError, RecursionError) as error:
            record = error
        return self._judged(state, name, record)

    def inspect_all(self, state: State, names: Iterable[str] | None = None) -> Iterator[tuple[str, Any, str | None]]:
        """``(name, record, problem)`` as :meth:`inspect` gives them, for every record of
        ``state`` (or those ``names``) in order, read as many at once as the store reads
        concurrently. Records gone meanwhile (applied, rejected) are left out."""
        names = self.ids(state) if names is None else list(names)
        documents = self.store.get_json_many(self.key(state, name) for name in names)
        for name, (_, document) in zip(names, documents, strict=True):
            if not isinstance(document, ArtifactNotFoundError):
                yield (name, *self._judged(state, name, document))

    def _judged(self, state: State, name: str, record: Any) -> tuple[Any, str | None]:
        """What :meth:`inspect` says of ``record`` (a document, or the error reading it)."""
        if isinstance(record, ChecksumMismatchError | UntrustedObjectError):
            return None, str(record)
        if isinstance(record, ValueError | RecursionError):
            return None, f"not JSON: {record}"
        if state == "pending":
            try:
                correction = Correction.model_validate(record)
            except ValidationError as error:
                return None, f"not a correction: {describe(error)}"
            if correction.id != name:
                return None, f"holds correction {correction.id!r}, not {name!r}"
            return correction, None
        if not isinstance(record, dict):
            return None, f"expected a JSON object, got {type(record).__name__}"
        if state in ("applied", "rejected"):
            inner = record.get("correction")
            if not isinstance(inner, dict) or not all(isinstance(inner.get(k), str) for k in ("id", "prompt", "target")):
                return None, "has no correction with an id, a prompt and a target"
        return record, None

    def _trusted(self, state: State, *, quarantine: bool) -> Iterator[tuple[str, Any]]:
        for name, record, problem in self.inspect_all(state):
            if problem is None:
                yield name, record
            elif quarantine:
                self.quarantine(state, name, problem)

    def quarantine(self, state: State, name: str, reason: str) -> str:
        """Take an untrusted record out of ``state`` into ``quarantine/`` with the reason
        and its raw bytes; returns the quarantine key. Only what it could not trust moves."""
        key = self.key(state, name)
        try:
            raw = self.store.get_unverified(key)
        except (NotImplementedError, StorageError):
            raw = None
        target = self._unique(f"{self.prefix}/quarantine", f"{state}-{_safe(name)}", {
            "key": key, "state": state, "reason": reason, "at": now().isoformat(), **_raw_fields(raw),
        })
        self.store.delete(key)
        return target

    def quarantined(self) -> list[Problem]:
        """Records taken out of the queue as untrustworthy, with why."""
        problems = []
        for key, record in self.store.get_json_many(self.store.list(f"{self.prefix}/quarantine/")):
            if isinstance(record, dict):
                problems.append(Problem(record.get("key", key), f"quarantined: {record.get('reason', '?')}"))
            else:
                why = record if isinstance(record, Exception) else f"a JSON {type(record).__name__}, not an object"
                problems.append(Problem(key, f"unreadable quarantine record: {why}"))
        return problems

    def verify(self) -> list[Problem]:
        """Every record the queue cannot trust, every quarantined one, and every prompt
        pending more than once; read-only (``submit`` and ``apply`` quarantine)."""
        problems: list[Problem] = []
        by_prompt: dict[str, list[str]] = {}
        for state in STATES:
            start = f"{self.prefix}/{state}/"
            names = []
            for key in self.store.list(start):
                name = key[len(start) :]
                if not name.endswith(".json") or "/" in name:
                    problems.append(Problem(key, "stray object: not a queue record"))
                else:
                    names.append(name[: -len(".json")])
            for name, record, problem in self.inspect_all(state, names):
                if problem is not None:
                    problems.append(Problem(self.key(state, name), problem))
                elif state == "pending":
                    by_prompt.setdefault(record.prompt_key, []).append(record.id)
        for prompt, ids in by_prompt.items():
            if len(ids) > 1:
                problems.append(Problem(f"{self.prefix}/pending/", f"{len(ids)} pending corrections for one prompt {prompt!r}: {ids}"))
        return problems + self.quarantined()

    # -- submitting -------------------------------------------------------------------
    def dead_letter(self, raw: Any, reason: str, stage: str, *, where: str = "", submission: str = "") -> str:
        """Keep an unusable submission with its reason; returns its key name.

        Every call writes a new record (two identical bad records leave two), with the
        raw input as text, as base64 where it is not UTF-8, or as JSON for API values.
        """
        hint = raw.get("id") if isinstance(raw, dict) and isinstance(raw.get("id"), str) else "record"
        fields = _raw_fields(raw) if isinstance(raw, bytes | bytearray) else _value_fields(raw)
        record = {"reason": reason, "stage": stage, "at": now().isoformat(), "where": where,
                  "submission": submission, **fields}
        key = self._unique(f"{self.prefix}/dead-letter", _safe(hint), record)
        return key.rsplit("/", 1)[1][: -len(".json")]

    def _unique(self, folder: str, hint: str, record: dict) -> str:
        """Create ``<folder>/<hint>-<random>.json`` (a new key, never an overwrite)."""
        data = _encode(record)
        while True:
            key = f"{folder}/{hint}-{uuid.uuid4().hex[:16]}.json"
            if self.store.put_if_absent(key, data):
                return key

    def submit(self, raws: Iterable[Any], tokenizer=None, max_tokens: int = 512) -> SubmitReport:
        """Validate and enqueue submissions; every record ends pending, dead-lettered or known.

        ``raws`` are :class:`Submission` objects (from :func:`read_submissions`), JSON
        values, or :class:`InvalidCorrection` objects. Checks: schema (fields, types,
        empty or oversized values), target tokenisable (when a tokenizer is given),
        duplicate ids, an identical (prompt, target) already pending or applied, and a
        different target for the same prompt already pending, all on the normalised
        prompt; the check and the write are one atomic claim per prompt.
        """
        report = SubmitReport()
        submission = f"{now():%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:12]}"
        context = _Context(self)
        for index, raw in enumerate(raws):
            item = _as_submission(raw, index)
            outcome, name, reason = self._submit_one(item, context, tokenizer, max_tokens, submission)
            if outcome == "pending":
                report.accepted.append(name)
            elif outcome == "known":
                report.known.append((name, reason))
            else:
                report.dead_lettered.append((name, reason))
            report.outcomes.append({"where": item.where, "outcome": outcome, "name": name, "reason": reason})
        report.receipt = f"{self.prefix}/submissions/{submission}.json"
        self.store.put_if_absent(report.receipt, _encode({
            "at": now().isoformat(), "records": report.outcomes,
            "counts": {"pending": len(report.accepted), "dead-letter": len(report.dead_lettered), "known": len(report.known)},
        }))
        return report

    def _submit_one(self, item: Submission, context: _Context, tokenizer, max_tokens: int,
                    submission: str) -> tuple[Outcome, str, str]:
        def refuse(reason: str, raw: Any = None) -> tuple[Outcome, str, str]:
            raw = item.raw if item.raw is not None else (item.value if raw is None else raw)
            return "dead-letter", self.dead_letter(raw, reason, "submit", where=item.where, submission=submission), reason

        if item.error is not None:
            return refuse(item.error)
        try:
            correction = parse_correction(item.value)
        except InvalidCorrection as error:
            return refuse(f"{item.where}: {error.reason}")
        if tokenizer is not None:
            try:
                check_tokenizable(correction, tokenizer, max_tokens)
            except InvalidCorrection as error:
                return refuse(f"{item.where}: {error.reason}")
        state = self.state_of(correction.id)
        if state is not None:
            verdict = self._same_id(item, correction, state, refuse)
            if verdict is not None:
                return verdict
        pair = (correction.prompt_key, normalise(correction.target))
        if pair in context.applied_pairs():
            return refuse(f"{item.where}: duplicate of applied correction {context.applied_pairs()[pair]!r}")
        context.cover_unclaimed_pending()
        claim, holder = self._claim(correction)
        if claim is None:
            if holder == correction:
                return "known", correction.id, f"{item.where}: already pending (the same correction)"
            if holder.id == correction.id:
                return refuse(f"{item.where}: id {correction.id!r} is already pending with other content")
            return refuse(f"{item.where}: {_conflict(holder, correction)}")
        record = _encode(correction.model_dump(mode="json"))
        while not self.store.put_if_absent(self.key("pending", correction.id), record):
            # Another submitter queued this id (with another prompt) meanwhile.
            verdict = self._same_id(item, correction, self.state_of(correction.id) or "pending", refuse)
            if verdict is not None:
                self.store.delete(claim)  # never queued: free the prompt again
                return verdict
        return "pending", correction.id, ""

    def _same_id(self, item: Submission, correction: Correction, state: State, refuse):
        """An id already in ``state``: the same correction is known, another is refused;
        an untrusted record under the id is quarantined (``None``: the id is free again)."""
        try:
            record, problem = self.inspect(state, correction.id)
        except ArtifactNotFoundError:
            return None  # left meanwhile
        if problem is not None:
            self.quarantine(state, correction.id, problem)
            return None
        if state != "pending":
            try:
                record = Correction.model_validate(record["correction"])
            except ValidationError:
                record = None
        if record == correction:
            return "known", correction.id, f"{item.where}: already {state} (the same correction)"
        return refuse(f"{item.where}: duplicate id {correction.id!r}: already {state}")

    # -- claims -----------------------------------------------------------------------
    def _claims_folder(self, prompt_key: str) -> str:
        digest = hashlib.sha256(prompt_key.encode("utf-8", "surrogatepass")).hexdigest()[:32]
        return f"{self.prefix}/claims/{digest}"

    def _claim(self, correction: Correction, *, generation: int | None = None) -> tuple[str | None, Correction | None]:
        """Claim ``correction``'s prompt: ``(claim key, None)``, or ``(None, the live holder)``.

        ``generation=1`` only claims a prompt nobody ever claimed (covering older records).
        """
        folder = self._claims_folder(correction.prompt_key)
        payload = _encode({"correction": correction.model_dump(mode="json"), "at": time.time()})
        if generation is not None:
            key = f"{folder}/{generation:08d}.json"
            return (key, None) if self.store.put_if_absent(key, payload) else (None, None)
        for _ in range(_CLAIM_ATTEMPTS):
            generations = sorted(int(k.rsplit("/", 1)[1][: -len(".json")]) for k in self.store.list(folder + "/")
                                 if k.endswith(".json") and k.rsplit("/", 1)[1][: -len(".json")].isdigit())
            latest = generations[-1] if generations else 0
            if latest:
                holder = self._live_holder(f"{folder}/{latest:08d}.json")
                if holder is not None:
                    return None, holder
            key = f"{folder}/{latest + 1:08d}.json"
            if self.store.put_if_absent(key, payload):
                return key, None
        raise StorageError(f"could not claim the prompt of {correction.id!r}: {_CLAIM_ATTEMPTS} concurrent claims in a row")

    def _live_holder(self, key: str) -> Correction | None:
        """The correction holding claim ``key``, or ``None`` if the claim no longer holds."""
        try:
            claim = self.store.get_json(key)
            holder = Correction.model_validate(claim["correction"])
            at = float(claim["at"])
        except ArtifactNotFoundError:
            return None  # released by a submitter that lost its id
        except (ChecksumMismatchError, UntrustedObjectError, ValueError, KeyError, TypeError, ValidationError):
            return None  # not a claim this queue wrote: it holds nothing
        pending = self.key("pending", holder.id)
        if self.store.exists(pending):
            return holder
        if any(self.store.exists(self.key(state, holder.id)) for state in ("applied", "rejected")):
            return None  # done with
        # Not pending yet: being queued right now, unless its submitter died long ago.
        return holder if time.time() - at < CLAIM_GRACE_S or self.store.exists(pending) else None

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


class _Context:
    """What one submit call looks at once, lazily: applied (prompt, target) pairs, and
    whether pending corrections older than claims have theirs."""

    def __init__(self, queue: CorrectionQueue):
        self.queue = queue
        self._applied: dict[tuple[str, str], str] | None = None
        self._covered = False

    def applied_pairs(self) -> dict[tuple[str, str], str]:
        if self._applied is None:
            self._applied = {}
            for _, record in self.queue._trusted("applied", quarantine=True):
                c = record["correction"]
                self._applied[(normalise(c["prompt"]), normalise(c["target"]))] = c["id"]
        return self._applied

    def cover_unclaimed_pending(self) -> None:
        """Give every pending correction queued before prompts were claimed (an older
        version of this queue) its claim, once per store; the marker says it is done."""
        if self._covered:
            return
        marker = f"{self.queue.prefix}/claims/covered.json"
        if not self.queue.store.exists(marker):
            for _, correction in self.queue._trusted("pending", quarantine=True):
                if not self.queue.store.list(self.queue._claims_folder(correction.prompt_key) + "/"):
                    self.queue._claim(correction, generation=1)
            self.queue.store.put_if_absent(marker, _encode({"at": now().isoformat()}))
        self._covered = True


def _conflict(held: Correction, new: Correction) -> str:
    if normalise(held.target) == normalise(new.target):
        return f"duplicate of pending correction {held.id!r}"
    return f"contradicts pending correction {held.id!r} (target {held.target!r} vs {new.target!r})"


def _as_submission(raw: Any, index: int) -> Submission:
    if isinstance(raw, Submission):
        return raw
    if isinstance(raw, InvalidCorrection):
        data = raw.raw if isinstance(raw.raw, bytes) else None
        return Submission(f"record {index}", data, None if data else raw.raw, error=f"record {index}: {raw.reason}")
    return Submission(f"record {index}", None, raw)


def _safe(hint: str) -> str:
    return "".join(ch for ch in hint if ch.isascii() and (ch.isalnum() or ch in "._-"))[:40] or "record"


def _raw_fields(raw: bytes | bytearray | None) -> dict[str, Any]:
    """Raw bytes as stored: the text where it is UTF-8, else base64."""
    if raw is None:
        return {"raw": None}
    try:
        return {"raw": bytes(raw).decode("utf-8")}
    except UnicodeDecodeError:
        return {"raw": None, "raw_base64": base64.b64encode(bytes(raw)).decode("ascii")}


def _value_fields(value: Any) -> dict[str, Any]:
    """A submitted Python value as stored: itself where it is plain JSON, else a bounded repr."""
    try:
        json.dumps(value, allow_nan=False, ensure_ascii=True)
    except (TypeError, ValueError, RecursionError):
        shorten = reprlib.Repr()
        shorten.maxlevel, shorten.maxstring, shorten.maxother = 8, 2000, 200
        return {"raw": None, "raw_repr": shorten.repr(value)}
    return {"raw": value}


def _encode(obj: Any) -> bytes:
    """Queue records as ASCII JSON: unpaired surrogates in user text stay escaped, never crash."""
    return (json.dumps(obj, sort_keys=True, indent=2, ensure_ascii=True, default=_iso) + "\n").encode("ascii")


def _iso(value: Any) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"not JSON: {type(value).__name__}")
