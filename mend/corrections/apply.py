"""Apply pending corrections with an editor and publish corrected-model versions.

One run, under the queue's lease: recover what a killed run left half done, then for
each batch of pending corrections: re-validate, compute the batch's edit on the model as
currently corrected, score every correction (its prompt, rephrases and locality probes,
plus the regression probes for the batch), refuse the ones the policy rejects, publish a
version with the accepted ones (manifest last), and only then move them to ``applied/``.

Exactly once: a correction counts as applied when a published manifest adds it. A run
killed after publishing but before moving its corrections is finished by the next run's
recovery; a run killed before publishing leaves them pending and nothing published.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict, Field

from mend.corrections.lease import Lease
from mend.corrections.policy import (
    DEFAULT_REGRESSION_PROBES,
    AcceptancePolicy,
    PreState,
    correction_metrics,
    regression_agreement,
    verdict,
)
from mend.corrections.queue import CorrectionQueue
from mend.corrections.schema import Correction, InvalidCorrection, check_tokenizable, normalise
from mend.corrections.versions import ActiveEntry, VersionStore
from mend.data.records import LocalityProbe
from mend.edit import Edit
from mend.editor.editor import Editor
from mend.models.editable import EditableModel


class ApplyConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    batch_size: int = Field(32, ge=1, description="corrections edited simultaneously")
    max_batches: int | None = Field(None, ge=1, description="stop after this many batches")
    max_tokens: int = Field(512, ge=8, description="longest prompt + target accepted")
    lease_ttl_s: float = Field(600.0, gt=0)
    policy: AcceptancePolicy = AcceptancePolicy()
    regression_probes: list[LocalityProbe] = Field(default_factory=lambda: list(DEFAULT_REGRESSION_PROBES))


@dataclass
class ApplyReport:
    versions: list[int] = field(default_factory=list)
    applied: list[str] = field(default_factory=list)
    rejected: list[tuple[str, str]] = field(default_factory=list)
    dead_lettered: list[tuple[str, str]] = field(default_factory=list)
    recovered: list[str] = field(default_factory=list)
    seconds: float = 0.0


@dataclass(frozen=True)
class Published:
    """Where a correction was published, and what it said."""

    version: int
    prompt_key: str
    metrics: dict


def published_corrections(versions: VersionStore) -> dict[str, Published]:
    """Every correction any published version added."""
    found: dict[str, Published] = {}
    for version in versions.versions():
        for cid, info in versions.manifest(version).get("corrections", {}).items():
            found.setdefault(cid, Published(version, normalise(info["prompt"]), info.get("metrics", {})))
    return found


def recover(queue: CorrectionQueue, versions: VersionStore, published: dict[str, Published]) -> list[str]:
    """Finish a killed run: corrections already published move to ``applied/``."""
    finished = []
    for correction in queue.pending():
        if correction.id in published:
            record = published[correction.id]
            queue.finish(correction, "applied", version=record.version, metrics=record.metrics, recovered=True)
            finished.append(correction.id)
    versions.collect_garbage()
    return finished


class _ActiveSet:
    """The published corrections, hooked into the model while a run works on it."""

    def __init__(self, model: EditableModel, entries: list[ActiveEntry], edit: Edit | None):
        self.model = model
        self.entries = entries
        self.edit = edit
        if edit is not None:
            edit.apply(model)

    def ids(self) -> set[str]:
        return {i for e in self.entries for i in e.ids}

    def replace(self, entries: list[ActiveEntry], edit: Edit | None) -> None:
        self.close()
        self.entries, self.edit = entries, edit
        if edit is not None:
            edit.apply(self.model)

    def close(self) -> None:
        if self.edit is not None and self.edit.state == "applied":
            self.edit.remove()


def apply_corrections(
    queue: CorrectionQueue,
    model: EditableModel,
    editor: Editor,
    config: ApplyConfig | None = None,
    *,
    details: dict | None = None,
    on_publish: Callable[[int, dict], None] | None = None,
    log: Callable[[str], None] = lambda message: None,
) -> ApplyReport:
    """Apply every pending correction (in batches) and publish one version per batch.

    ``details`` is recorded in each manifest (e.g. the editor's registry version);
    ``on_publish(version, manifest)`` runs after each publication (e.g. MLflow).
    """
    config = config or ApplyConfig()
    started = time.monotonic()
    report = ApplyReport()
    versions = VersionStore(queue.store, queue.prefix)
    probes = config.regression_probes
    with Lease(queue.store, f"{queue.prefix}/locks/apply.json", config.lease_ttl_s) as lease:
        published = published_corrections(versions)
        report.recovered = recover(queue, versions, published)
        latest = versions.latest()
        entries = versions.active(latest)
        stored = versions.load_edit(entries)
        active = _ActiveSet(model, entries, stored)
        # Keep the factors of the active corrections in memory, keyed by id, so that each
        # batch re-hooks them without reading the store again.
        parts: dict[str, Edit] = {}
        if stored is not None:
            for index, request in enumerate(stored.requests):
                parts[request.request_id] = stored.select([index])
        try:
            batch_index = 0
            while pending := queue.pending()[: config.batch_size]:
                if config.max_batches is not None and batch_index >= config.max_batches:
                    break
                batch_index += 1
                lease.renew()
                batch = _revalidate(queue, pending, model, config, active.ids(), published, report)
                if not batch:
                    continue
                log(f"batch {batch_index}: editing {len(batch)} corrections")
                pre = PreState(model, batch, probes)
                edit = editor.edit(model, [c.prompt for c in batch], [c.target for c in batch], [c.id for c in batch])
                with edit.applied():
                    metrics = correction_metrics(model, batch, pre)
                accepted = []
                for index, correction in enumerate(batch):
                    reason = verdict(config.policy, metrics[correction.id])
                    if reason is None:
                        accepted.append(index)
                    else:
                        queue.finish(correction, "rejected", reason=reason, metrics=metrics[correction.id])
                        report.rejected.append((correction.id, reason))
                if not accepted:
                    continue
                part = edit.select(accepted)
                with part.applied():
                    regression = regression_agreement(model, probes, pre)
                if regression < config.policy.min_regression:
                    reason = f"batch changed the regression probes: agreement {regression:.3f} < {config.policy.min_regression}"
                    for index in accepted:
                        queue.finish(batch[index], "rejected", reason=reason, metrics=metrics[batch[index].id])
                        report.rejected.append((batch[index].id, reason))
                    continue
                accepted_corrections = [batch[i] for i in accepted]
                new_prompts = {c.prompt_key for c in accepted_corrections}
                superseded = {i for i in active.ids() if published[i].prompt_key in new_prompts}
                kept = [
                    ActiveEntry(e.path, tuple(i for i in e.ids if i not in superseded)) for e in active.entries
                ]
                kept = [e for e in kept if e.ids]
                manifest_details = {
                    **(details or {}),
                    "base_model": edit.base_model,
                    "added": [c.id for c in accepted_corrections],
                    "superseded": sorted(superseded),
                    "regression_agreement": regression,
                    "corrections": {
                        c.id: {"prompt": c.prompt, "target": c.target, "metrics": metrics[c.id]}
                        for c in accepted_corrections
                    },
                }
                version = versions.publish(latest, part, kept, manifest_details)
                latest = version
                log(f"published version {version} with {len(accepted)} new corrections")
                for c in accepted_corrections:
                    published[c.id] = Published(version, c.prompt_key, metrics[c.id])
                    queue.finish(c, "applied", version=version, metrics=metrics[c.id])
                    report.applied.append(c.id)
                report.versions.append(version)
                for cid in superseded:
                    parts.pop(cid, None)
                for offset, c in enumerate(accepted_corrections):
                    parts[c.id] = part.select([offset])
                active.replace(versions.active(version), Edit.concat(parts.values()) if parts else None)
                if on_publish is not None:
                    on_publish(version, versions.manifest(version))
        finally:
            active.close()
    report.seconds = time.monotonic() - started
    return report


def _revalidate(queue, pending, model, config, active_ids, published, report) -> list[Correction]:
    """Checks that need the model, or may have changed since submission."""
    batch, seen = [], {}
    for correction in pending:
        if correction.id in published:  # published by a run that died before moving it
            queue.finish(correction, "applied", version=published[correction.id].version, recovered=True)
            report.recovered.append(correction.id)
            continue
        reason = None
        try:
            check_tokenizable(correction, model.tokenizer, config.max_tokens)
        except InvalidCorrection as error:
            reason = error.reason
        other = seen.get(correction.prompt_key)
        if reason is None and other is not None:
            reason = f"contradicts correction {other.id!r} in the same batch"
        if reason is not None:
            queue.dead_letter(correction.model_dump(mode="json"), reason, "apply")
            queue.store.delete(queue.key("pending", correction.id))
            report.dead_lettered.append((correction.id, reason))
            continue
        seen[correction.prompt_key] = correction
        batch.append(correction)
    return batch
