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

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial

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
    regulariser_scale: float = Field(
        1.0,
        gt=0,
        description="multiplies a least-squares editor's regularisers: above 1 unrelated outputs "
        "move less and fewer edits land, below 1 the reverse (bench/results/edits_tradeoff.json)",
    )
    passes: int = Field(
        1,
        ge=1,
        description="captures per batch: each further one re-captures the batch on the model with "
        "its edit so far applied and adds the editor's answer as more rows (Editor.edit)",
    )
    keep_adapters: int | None = Field(
        None,
        ge=1,
        description="keep the PEFT adapters of only the newest N versions (None: all); older ones "
        "are rebuilt from their deltas on demand (VersionStore.export_adapter)",
    )
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


class _Hooked:
    """The edit currently hooked into the model during a run (one at a time)."""

    def __init__(self, model: EditableModel, edit: Edit | None):
        self.model = model
        self.edit: Edit | None = None
        self.swap(edit)

    def swap(self, edit: Edit | None) -> None:
        if self.edit is not None and self.edit.state == "applied":
            self.edit.remove()
        self.edit = edit
        if edit is not None:
            edit.apply(self.model)


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

    Each batch's edit is computed on the model as currently corrected and judged
    combined with the active corrections exactly as it would be published: stacked for
    summed edits, re-solved together for least-squares ones (under this run's
    regularisers, ``config.regulariser_scale`` times the editor's, which the manifest
    records).
    """
    config = config or ApplyConfig()
    started = time.monotonic()
    report = ApplyReport()
    versions = VersionStore(queue.store, queue.prefix)
    probes = config.regression_probes
    with (
        editor.regularisers_scaled(config.regulariser_scale),
        Lease(queue.store, f"{queue.prefix}/locks/apply.json", config.lease_ttl_s) as lease,
    ):
        published = published_corrections(versions)
        report.recovered = recover(queue, versions, published)
        latest = versions.latest()
        entries = versions.active(latest)
        stored = versions.load_edit(entries)
        # The active corrections' factors, kept in memory by id, so that each batch
        # combines them with its own edit without reading the store again.
        parts: dict[str, Edit] = {}
        if stored is not None:
            for index, request in enumerate(stored.requests):
                parts[request.request_id] = stored.select([index])
        hooked = _Hooked(model, stored)
        # ``parts`` as one edit: once solved it holds each matrix's normal equations, so a
        # batch that replaces none of them adds only its own rows (least squares).
        active = stored

        def combined(new: Edit, replaced: set[str]) -> Edit:
            if replaced:
                return Edit.concat([*(p for cid, p in parts.items() if cid not in replaced), new])
            return Edit.concat([active, new] if active is not None else [new])

        @contextlib.contextmanager
        def published_with(new: Edit, replaced: set[str]) -> Iterator[None]:
            # A further capture pass sees the model as it would be published. Captured on
            # the batch's own solve stacked on the active corrections (a model never
            # published), the requested shifts grew batch by batch until the model broke:
            # 4 passes at scale 3 reached shifts of 3e10 and edit success 0 by batch 7.
            previous = hooked.edit
            hooked.swap(combined(new, replaced))
            try:
                yield
            finally:
                hooked.swap(previous)

        try:
            batch_index = 0
            while pending := queue.pending()[: config.batch_size]:
                if config.max_batches is not None and batch_index >= config.max_batches:
                    break
                batch_index += 1
                lease.renew()
                batch = _revalidate(queue, pending, model, config, published, report)
                if not batch:
                    continue
                log(f"batch {batch_index}: editing {len(batch)} corrections")
                current = hooked.edit
                pre = PreState(model, batch, probes)
                replaced = _superseded(parts, published, batch)
                edit = editor.edit(model, [c.prompt for c in batch], [c.target for c in batch], [c.id for c in batch],
                                   passes=config.passes, applied_as=partial(published_with, replaced=replaced))
                judged = combined(edit, replaced)
                hooked.swap(judged)
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
                    hooked.swap(current)
                    continue
                accepted_corrections = [batch[i] for i in accepted]
                superseded = _superseded(parts, published, accepted_corrections)
                if len(accepted) == len(batch):  # what was judged is what gets published
                    part, full = edit, judged
                else:
                    part = edit.select(accepted)
                    full = combined(part, superseded)
                    hooked.swap(full)
                regression = regression_agreement(model, probes, pre)
                if regression < config.policy.min_regression:
                    reason = (f"batch changed the regression probes: agreement {regression:.3f} "
                              f"< {config.policy.min_regression}")
                    for c in accepted_corrections:
                        queue.finish(c, "rejected", reason=reason, metrics=metrics[c.id])
                        report.rejected.append((c.id, reason))
                    hooked.swap(current)
                    continue
                kept = [ActiveEntry(e.path, tuple(i for i in e.ids if i not in superseded)) for e in entries]
                kept = [e for e in kept if e.ids]
                manifest_details = {
                    **(details or {}),
                    "base_model": edit.base_model,
                    "aggregation": edit.aggregation,
                    **({"regulariser_scale": config.regulariser_scale} if edit.aggregation == "least_squares" else {}),
                    "passes": config.passes,
                    "added": [c.id for c in accepted_corrections],
                    "superseded": sorted(superseded),
                    "regression_agreement": regression,
                    "corrections": {
                        c.id: {"prompt": c.prompt, "target": c.target, "metrics": metrics[c.id]}
                        for c in accepted_corrections
                    },
                }
                version = versions.publish(latest, part, kept, manifest_details, full_edit=full)
                latest = version
                log(f"published version {version} with {len(accepted)} new corrections")
                for c in accepted_corrections:
                    published[c.id] = Published(version, c.prompt_key, metrics[c.id])
                    queue.finish(c, "applied", version=version, metrics=metrics[c.id])
                    report.applied.append(c.id)
                report.versions.append(version)
                for cid in superseded:
                    parts.pop(cid)
                active = full
                for offset, c in enumerate(accepted_corrections):
                    parts[c.id] = part.select([offset])
                entries = versions.active(version)
                if on_publish is not None:
                    on_publish(version, versions.manifest(version))
            # Once per run, not per batch: it reads every older version's manifest.
            if config.keep_adapters is not None:
                versions.prune_adapters(config.keep_adapters)
        finally:
            hooked.swap(None)
    report.seconds = time.monotonic() - started
    return report


def _superseded(parts: dict[str, Edit], published: dict[str, Published], new: list[Correction]) -> set[str]:
    """Active corrections of the same prompts as ``new`` ones: a newer fix replaces them."""
    prompts = {c.prompt_key for c in new}
    return {cid for cid in parts if published[cid].prompt_key in prompts}


def _revalidate(queue, pending, model, config, published, report) -> list[Correction]:
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
