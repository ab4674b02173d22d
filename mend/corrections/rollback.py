"""Roll back corrections: a new version without them (earlier versions stay as they were)."""

from __future__ import annotations

from collections.abc import Sequence

from mend.corrections.lease import Lease
from mend.corrections.queue import CorrectionQueue
from mend.corrections.versions import ActiveSet, VersionStore


def rollback(
    queue: CorrectionQueue,
    *,
    correction_ids: Sequence[str] = (),
    to_version: int | None = None,
    reason: str = "",
    requested_by: str = "",
    lease_ttl_s: float = 600.0,
) -> int:
    """Publish a new version that drops ``correction_ids`` from the latest one, or that
    restores exactly the corrections of ``to_version``. Returns the new version."""
    if bool(correction_ids) == (to_version is not None):
        raise ValueError("give either correction ids or a version to roll back to")
    versions = VersionStore(queue.store, queue.prefix)
    with Lease(queue.store, f"{queue.prefix}/locks/apply.json", lease_ttl_s):
        latest = versions.latest()
        if latest is None:
            raise ValueError("nothing is published yet")
        current_ids = {i for e in versions.active(latest) for i in e.ids}
        if to_version is not None:
            source = ActiveSet(versions, to_version)
            entries, full = source.entries, source.edit
        else:
            unknown = sorted(set(correction_ids) - current_ids)
            if unknown:
                raise ValueError(f"not active in version {latest}: {unknown}")
            source = ActiveSet(versions, latest)
            entries, full = source.entries_without(correction_ids), source.with_batch(None, correction_ids)
        kept = {i for e in entries for i in e.ids}
        parent = versions.manifest(latest)
        base = parent.get("base_model", {})
        # The remaining least-squares corrections are re-solved under the newest remaining
        # batch's stored regularisers: repeat the scale its run recorded.
        newest = versions.manifest(versions.added_by(entries[-1])) if entries else {}
        scale = {"regulariser_scale": newest["regulariser_scale"]} if "regulariser_scale" in newest else {}
        return versions.publish(
            latest,
            None,
            entries,
            full_edit=full,
            details={
                "base_model": base,
                "aggregation": parent.get("aggregation", "sum"),
                **scale,
                "added": [],
                "corrections": {},
                "rollback": {
                    "removed": sorted(current_ids - kept),
                    "restored": sorted(kept - current_ids),
                    "to_version": to_version,
                    "reason": reason,
                    "requested_by": requested_by,
                },
            },
        )
