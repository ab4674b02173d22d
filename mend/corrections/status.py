"""Where the reported corrections stand: how many are live, what became of the others,
and what else the live ones moved.

Read-only, from what the queue and its versions already record: the queue's records
(pending, rejected and dead-lettered, with their reasons) and the published manifests
(which corrections each version holds, which it superseded or rolled back, and the
metrics each correction and batch was accepted with). *Live* means active in the latest
published version: what the corrected model registered from it answers with.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import asdict, dataclass, field

from mend.corrections.queue import CorrectionQueue
from mend.corrections.versions import VersionStore

# A quoted value as reasons quote them (Python's repr: '...', or "..." when it holds a ').
QUOTED = re.compile(r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"")


def reason_kind(reason: str) -> str:
    """A refusal's reason with what differs per correction (quoted ids and targets,
    numbers) replaced, so reasons of one kind count together."""
    return re.sub(r"\d+(\.\d+)?", "#", QUOTED.sub("'…'", reason))


@dataclass
class Moved:
    """What the corrections changed besides their own answers, as measured when each was
    accepted (None: nothing measured yet).

    ``regression_*``: agreement of the regression probes' predictions before and after
    each published batch (1.0: none changed); ``locality_*``: agreement on each live
    correction's own locality probes; ``locality_changed``: live corrections whose
    locality probes changed at least one prediction."""

    regression_latest: float | None = None
    regression_lowest: float | None = None
    batches: int = 0
    locality_mean: float | None = None
    locality_lowest: float | None = None
    locality_changed: int = 0
    locality_measured: int = 0


@dataclass
class QueueStatus:
    """The answer to "of the corrections we queued, how many are live, and what else moved?".

    ``rejected`` and ``dead_lettered`` count refusals by :func:`reason_kind`;
    ``superseded`` and ``rolled_back`` are published corrections no longer live (replaced
    by a newer correction of the same prompt or question, or taken out by a rollback)."""

    version: int | None
    live: int
    pending: int
    published: int
    superseded: list[str] = field(default_factory=list)
    rolled_back: list[str] = field(default_factory=list)
    rejected: dict[str, int] = field(default_factory=dict)
    dead_lettered: dict[str, int] = field(default_factory=dict)
    unreadable: int = 0
    moved: Moved = field(default_factory=Moved)

    @property
    def reported(self) -> int:
        """Every correction the queue holds an outcome or a place for."""
        return self.pending + self.published + sum(self.rejected.values()) + sum(self.dead_lettered.values()) \
            + self.unreadable

    def as_json(self) -> dict:
        return {**asdict(self), "reported": self.reported}

    def lines(self) -> list[str]:
        """The status as plain text, a headline and then one line per fact."""
        where = f"in version {self.version}" if self.version is not None else "(nothing published yet)"
        out = [f"{self.reported} corrections reported; {self.live} live {where}"]
        rows = [("pending", self.pending, {}), ("superseded", len(self.superseded), {}),
                ("rolled back", len(self.rolled_back), {}), ("rejected", sum(self.rejected.values()), self.rejected),
                ("dead-lettered", sum(self.dead_lettered.values()), self.dead_lettered)]
        if self.unreadable:
            rows.append(("unreadable", self.unreadable, {}))
        for name, count, kinds in rows:
            out.append(f"  {name:14s}{count:>7}")
            out += [f"  {'':14s}{n:>7}  {kind}" for kind, n in kinds.items()]
        moved = self.moved
        out.append("what else moved, as measured when each batch was accepted:")
        if moved.batches:
            out.append(f"  regression probes: agreement {moved.regression_latest:.3f} at the latest batch, "
                       f"lowest {moved.regression_lowest:.3f} over {moved.batches} batches")
        if moved.locality_measured:
            out.append(f"  live corrections' own locality probes: agreement {moved.locality_mean:.3f} on average, "
                       f"lowest {moved.locality_lowest:.3f}; {moved.locality_changed} of {moved.locality_measured} "
                       "changed a prediction")
        if not moved.batches and not moved.locality_measured:
            out.append("  nothing measured yet")
        return out


def _reasons(queue: CorrectionQueue, state: str) -> tuple[Counter, int]:
    kinds: Counter = Counter()
    unreadable = 0
    for _, record, problem in queue.inspect_all(state):
        if problem is not None:
            unreadable += 1
            continue
        kinds[reason_kind(str(record.get("reason", "")))] += 1
    return kinds, unreadable


def _moved(manifests: dict[int, dict], live: set[str]) -> Moved:
    moved = Moved()
    regression = [m["regression_agreement"] for _, m in sorted(manifests.items()) if "regression_agreement" in m]
    if regression:
        moved.regression_latest, moved.regression_lowest, moved.batches = regression[-1], min(regression), len(regression)
    locality = [info["metrics"]["locality"] for m in manifests.values()
                for cid, info in m.get("corrections", {}).items()
                if cid in live and "locality" in info.get("metrics", {})]
    if locality:
        moved.locality_mean = sum(locality) / len(locality)
        moved.locality_lowest = min(locality)
        moved.locality_changed = sum(value < 1.0 for value in locality)
        moved.locality_measured = len(locality)
    return moved


def queue_status(queue: CorrectionQueue) -> QueueStatus:
    """Where the corrections of ``queue`` stand now (read-only)."""
    versions = VersionStore(queue.store, queue.prefix)
    manifests = dict(versions.manifests())
    latest = max(manifests) if manifests else None
    live = set(manifests[latest]["active_ids"]) if latest is not None else set()
    published = {cid for m in manifests.values() for cid in m.get("corrections", {})}
    # What last took each published correction out: a later correction or a rollback.
    removed: dict[str, str] = {}
    for _, manifest in sorted(manifests.items()):
        for cid in manifest.get("superseded", []):
            removed[cid] = "superseded"
        rollback = manifest.get("rollback") or {}
        for cid in rollback.get("removed", []):
            removed[cid] = "rolled back"
        for cid in rollback.get("restored", []):
            removed.pop(cid, None)
    gone = sorted(published - live)
    rejected, unreadable_rejected = _reasons(queue, "rejected")
    dead, unreadable_dead = _reasons(queue, "dead-letter")
    return QueueStatus(
        version=latest,
        live=len(live),
        pending=len(queue.ids("pending")),
        published=len(published),
        superseded=[cid for cid in gone if removed.get(cid) == "superseded"],
        rolled_back=[cid for cid in gone if removed.get(cid) == "rolled back"],
        rejected=dict(rejected.most_common()),
        dead_lettered=dict(dead.most_common()),
        unreadable=unreadable_rejected + unreadable_dead,
        moved=_moved(manifests, live),
    )
