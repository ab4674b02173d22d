"""Apply pending corrections with an editor and publish corrected-model versions.

One run, under the queue's lease: recover what a killed run left half done, then for
each batch of pending corrections: re-validate, compute the batch's edit on the model as
currently corrected, score every correction (its prompt, rephrases and locality probes,
plus the regression probes for the batch; routed: which active corrections it undoes),
refuse the ones the policy rejects, publish a version with the accepted ones (manifest
last), and only then move them to ``applied/``.

Exactly once: a correction counts as applied when a published manifest adds it. A run
killed after publishing but before moving its corrections is finished by the next run's
recovery; a run killed before publishing leaves them pending and nothing published.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from mend.corrections.lease import Lease
from mend.corrections.policy import (
    DEFAULT_REGRESSION_PROBES,
    AcceptancePolicy,
    PreState,
    correction_metrics,
    locality_inputs,
    regression_agreement,
    verdict,
)
from mend.corrections.protect import PromptStates, undone_by
from mend.corrections.queue import CorrectionQueue
from mend.corrections.schema import Correction, InvalidCorrection, check_tokenizable
from mend.corrections.versions import ActiveSet, VersionStore
from mend.data.records import LocalityProbe
from mend.data.text import normalise
from mend.edit import Edit
from mend.editor.editor import Editor
from mend.models.editable import EditableModel
from mend.models.unedited_blocks import reusing_unedited_blocks
from mend.scope.landing import DEFAULT_REFINE_STEPS, DEFAULT_STRENGTHS, refine_values, written
from mend.scope.routing import switching_on
from mend.scope.supersede import Questions, agreeing, same_question


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
    aggregation: Literal["sum", "least_squares", "scoped"] | None = Field(
        None,
        description="how corrections combine: None for the editor's own; scoped needs an editor with a scope "
        "model and keeps each correction's edit apart, switched on only for requests in its scope",
    )
    strengths: tuple[float, ...] = Field(
        DEFAULT_STRENGTHS,
        min_length=1,
        description="scoped runs: each correction is written at the largest of these strengths at which its "
        "target is still the exact answer to its prompt (mend.scope.landing); (1.0,) with refine_steps 0: "
        "as the editor makes it",
    )
    refine_steps: int = Field(
        DEFAULT_REFINE_STEPS,
        ge=0,
        description="scoped runs: corrections that land at no strength have their values fitted on their own "
        "prompt for at most this many gradient steps, each stopping once it lands, and so do corrections that "
        "undo an active one, with its prompt and target kept alongside (mend.scope.landing; 0: never)",
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
    for version, manifest in versions.manifests():
        for cid, info in manifest.get("corrections", {}).items():
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

    @contextlib.contextmanager
    def showing(self, edit: Edit | None) -> Iterator[None]:
        """``edit`` hooked in for the block, then the previous one again."""
        previous = self.edit
        self.swap(edit)
        try:
            yield
        finally:
            self.swap(previous)


class ApplyRun:
    """One run over the queue: every pending correction, in batches, one version per batch.

    ``details`` is recorded in each manifest (e.g. the editor's registry version);
    ``on_publish(version, manifest)`` runs after each publication.

    Each batch's edit is computed on the model as currently corrected and judged combined
    with the active corrections exactly as it would be published (its aggregation says
    how: stacked, re-solved together, or routed per request), under this run's
    regulariser scale for least-squares editors, which the manifest records.
    """

    def __init__(
        self,
        queue: CorrectionQueue,
        model: EditableModel,
        editor: Editor,
        config: ApplyConfig | None = None,
        *,
        details: dict | None = None,
        on_publish: Callable[[int, dict], None] | None = None,
        log: Callable[[str], None] = lambda message: None,
    ):
        self.queue, self.model, self.editor = queue, model, editor
        self.config = config or ApplyConfig()
        self.details = details or {}
        self.on_publish = on_publish
        self.log = log
        self.versions = VersionStore(queue.store, queue.prefix)
        self.report = ApplyReport()
        self._asked: tuple[str, list[str], Questions] | None = None  # the latest batch's questions
        self._prompt_states: PromptStates | None = None  # active prompts' scope-block states

    def run(self) -> ApplyReport:
        config = self.config
        started = time.monotonic()
        with (
            self.editor.regularisers_scaled(config.regulariser_scale),
            Lease(self.queue.store, f"{self.queue.prefix}/locks/apply.json", config.lease_ttl_s) as lease,
        ):
            self.published = published_corrections(self.versions)
            self.report.recovered = recover(self.queue, self.versions, self.published)
            self.active = ActiveSet.latest(self.versions)
            self.hooked = _Hooked(self.model, self.active.edit)
            try:
                batches = 0
                while pending := self.queue.pending()[: config.batch_size]:
                    if config.max_batches is not None and batches >= config.max_batches:
                        break
                    batches += 1
                    lease.renew()
                    batch = _revalidate(self.queue, pending, self.model, config, self.published, self.report)
                    batch = self._one_per_question(batch)
                    if batch:
                        self.log(f"batch {batches}: editing {len(batch)} corrections")
                        # The batch's prompts and probes run many times (captured, tried at
                        # each strength, judged before and after): below the edited blocks, once.
                        with reusing_unedited_blocks(self.model, keep=self._routing_blocks()):
                            self._apply_batch(batch)
                # Once per run, not per batch: it reads every older version's manifest.
                if config.keep_adapters is not None:
                    self.versions.prune_adapters(config.keep_adapters)
            finally:
                self.hooked.swap(None)
        self.report.seconds = time.monotonic() - started
        return self.report

    def _routing_blocks(self) -> tuple[int, ...]:
        """The block routing reads, when this run's edits are routed: the capture pass runs
        before the batch's own routing is hooked in, and what it keeps serves the later passes."""
        scope = self.editor.scope_for(self.config.aggregation)
        return (scope.config.layer,) if scope is not None else ()

    def _superseded(self, corrections: list[Correction]) -> set[str]:
        """Active corrections that ``corrections`` replace (a newer fix wins): those of the
        same prompts and, when the active edit is routed, of the same questions."""
        prompts = {c.prompt_key for c in corrections}
        same_prompt = {cid for cid in self.active.parts if self.published[cid].prompt_key in prompts}
        return same_prompt | self._same_question(corrections)

    def _same_question(self, corrections: list[Correction]) -> set[str]:
        """Active scoped corrections asking what one of ``corrections`` asks, for another
        target (:mod:`mend.scope.supersede`; one asking for the same target stays live)."""
        active = self.active.edit
        change = active.change if active is not None else None
        if not corrections or not getattr(change, "routed", False) or not len(change.keys):
            return set()
        questions = self._questions(change.scope, corrections)
        targets = [normalise(r.target) for r in active.requests]  # per request; keys map to theirs
        same = same_question(change.scope, questions, change.keys, change.subjects)
        same &= ~agreeing([c.target_key for c in corrections], targets)[:, change.key_request]
        return {active.requests[r].request_id for r in change.key_request[same.any(0)].unique().tolist()}

    def _questions(self, scope, corrections: list[Correction]) -> Questions:
        """``corrections`` as the supersession test sees them, computed once per batch
        (the batch is asked about again after validation and after judging)."""
        if self._asked is not None:
            fingerprint, ids, questions = self._asked
            where = {cid: i for i, cid in enumerate(ids)}
            if fingerprint == scope.fingerprint() and all(c.id in where for c in corrections):
                return questions.take(torch.tensor([where[c.id] for c in corrections], dtype=torch.long))
        questions = Questions.of(scope, self.model, [c.prompt for c in corrections], [c.subject for c in corrections])
        self._asked = (scope.fingerprint(), [c.id for c in corrections], questions)
        return questions

    def _one_per_question(self, batch: list[Correction]) -> list[Correction]:
        """``batch`` less the corrections asking a question an earlier kept one of the
        batch asks for another target: dead-lettered as contradictions, like two of the
        same prompt (scoped runs). Corrections of one question with one target agree and
        stay."""
        scope = self.editor.scope_for(self.config.aggregation)
        if scope is None or len(batch) < 2:
            return batch
        questions = self._questions(scope, batch)
        same = same_question(scope, questions, questions.keys, questions.subjects)
        kept: list[int] = []
        for i, correction in enumerate(batch):
            other = next((batch[j] for j in kept if same[i, j] and batch[j].target_key != correction.target_key), None)
            if other is None:
                kept.append(i)
                continue
            reason = (f"contradicts correction {other.id!r} in the same batch "
                      f"(same question, target {other.target!r} vs {correction.target!r})")
            _dead_letter(self.queue, correction, reason, self.report)
        return [batch[i] for i in kept]

    def _edit(self, batch: list[Correction], replaced: set[str]) -> Edit:
        def one_pass() -> Edit:
            return self.editor.edit(self.model, [c.prompt for c in batch], [c.target for c in batch],
                                    [c.id for c in batch], aggregation=self.config.aggregation,
                                    subjects=[c.subject for c in batch])

        edit = one_pass()
        # A further capture pass sees the model as it would be published. Captured on the
        # batch's own solve stacked on the active corrections (a model never published),
        # least-squares shifts grew batch by batch until the model broke.
        for _ in range(self.config.passes - 1):
            with self.hooked.showing(self.active.with_batch(edit, replaced)):
                edit = edit.with_pass(one_pass())
        return edit

    def _reject(self, corrections: list[Correction], reason: str | dict[str, str], metrics: dict) -> None:
        for c in corrections:
            why = reason if isinstance(reason, str) else reason[c.id]
            self.queue.finish(c, "rejected", reason=why, metrics=metrics[c.id])
            self.report.rejected.append((c.id, why))

    def _land(self, edit: Edit, replaced: set[str]) -> tuple[Edit, list[dict]]:
        """A routed batch as scoped corrections are written (:func:`mend.scope.landing.written`),
        judged with the active corrections as it would be published; and what to record
        of each correction."""
        if not edit.change.routed:
            return edit, [{} for _ in edit.requests]
        with self.hooked.showing(None):
            return written(edit, self.config.strengths, self.config.refine_steps,
                           others=self.active.with_batch(None, replaced))

    def _undone(self, edit: Edit, judged: Edit, current: Edit | None, replaced: set[str]) -> dict[str, list[str]]:
        """The batch's corrections that undo an active one they are switched on with in
        ``judged`` (routed runs whose policy protects active corrections;
        :mod:`mend.corrections.protect`)."""
        if current is None or not self.config.policy.protect_active or not getattr(edit.change, "routed", False):
            return {}
        if self._prompt_states is None:
            self._prompt_states = PromptStates(self.model, edit.change.scope)
        earlier = [r for r in current.requests if r.request_id not in replaced]
        with self.hooked.showing(None):
            return undone_by(edit, earlier, self._prompt_states, len(earlier) + len(edit.requests),
                             judged=judged, before=current)

    def _sparing(self, edit: Edit, undoes: dict[str, list[str]], current: Edit, replaced: set[str],
                 recorded: list[dict]) -> Edit:
        """``edit`` with the values of the corrections that undo active ones refined on their
        own prompts and, kept alongside, the prompts and targets of the active corrections
        they undo (:func:`mend.scope.landing.refine_values`); ``spare_steps`` is recorded
        for each (-1: one of them still fails)."""
        where = {r.request_id: i for i, r in enumerate(edit.requests)}
        active = {r.request_id: r for r in current.requests}
        undone = list(dict.fromkeys(a for ids in undoes.values() for a in ids))
        with self.hooked.showing(None):
            refined = refine_values(edit, [where[cid] for cid in undoes], self.config.refine_steps,
                                    others=self.active.with_batch(None, replaced),
                                    keep=[(active[a].prompt, active[a].target) for a in undone])
        for i, steps in zip(refined.requests, refined.steps, strict=True):
            recorded[i]["spare_steps"] = steps
        return refined.edit

    def _changeable_probes(self, batch: list[Correction], edit: Edit, replaced: set[str]) -> list[bool] | None:
        """Which of the batch's locality probes publishing it can change (None: all). A
        routed batch changes only inputs that switch on one of its corrections or one it
        replaces; every other input is computed exactly as before."""
        if not edit.change.routed:
            return None
        prompts, answers, _ = locality_inputs(batch)
        touching = Edit.concat([edit, *(self.active.parts[cid] for cid in sorted(replaced))])
        with self.hooked.showing(touching):
            return switching_on(self.model, prompts, answers).tolist()

    def _apply_batch(self, batch: list[Correction]) -> None:
        config, probes = self.config, self.config.regression_probes
        current = self.hooked.edit
        replaced = self._superseded(batch)
        edit, recorded = self._land(self._edit(batch, replaced), replaced)
        pre = PreState(self.model, batch, probes, self._changeable_probes(batch, edit, replaced))
        judged = self.active.with_batch(edit, replaced)
        self.hooked.swap(judged)
        undoes = self._undone(edit, judged, current, replaced)
        if undoes and config.refine_steps:
            edit = self._sparing(edit, undoes, current, replaced, recorded)
            judged = self.active.with_batch(edit, replaced)
            self.hooked.swap(judged)
            undoes = self._undone(edit, judged, current, replaced)
        metrics = correction_metrics(self.model, batch, pre)
        for c, extra in zip(batch, recorded, strict=True):
            metrics[c.id].update(extra)
        for cid, undone in undoes.items():
            metrics[cid]["undoes"] = undone
        reasons = {c.id: verdict(config.policy, metrics[c.id]) for c in batch}
        self._reject([c for c in batch if reasons[c.id] is not None], reasons, metrics)
        accepted = [i for i, c in enumerate(batch) if reasons[c.id] is None]
        if not accepted:
            self.hooked.swap(current)
            return
        corrections = [batch[i] for i in accepted]
        superseded = self._superseded(corrections)
        if len(accepted) == len(batch):  # what was judged is what gets published
            part, full = edit, judged
        else:
            part = edit.select(accepted)
            full = self.active.with_batch(part, superseded)
            self.hooked.swap(full)
        regression = regression_agreement(self.model, probes, pre)
        if regression < config.policy.min_regression:
            reason = f"batch changed the regression probes: agreement {regression:.3f} < {config.policy.min_regression}"
            self._reject(corrections, reason, metrics)
            self.hooked.swap(current)
            return
        details = {
            **self.details,
            "base_model": edit.base_model,
            "aggregation": edit.aggregation,
            **({"regulariser_scale": config.regulariser_scale} if edit.aggregation == "least_squares" else {}),
            "passes": config.passes,
            "added": [c.id for c in corrections],
            "superseded": sorted(superseded),
            "regression_agreement": regression,
            "corrections": {c.id: {"prompt": c.prompt, "target": c.target, "metrics": metrics[c.id]}
                            for c in corrections},
        }
        version = self.active.publish(part, full, superseded, details)
        self.log(f"published version {version} with {len(corrections)} new corrections")
        for c in corrections:
            self.published[c.id] = Published(version, c.prompt_key, metrics[c.id])
            self.queue.finish(c, "applied", version=version, metrics=metrics[c.id])
            self.report.applied.append(c.id)
        self.report.versions.append(version)
        if self.on_publish is not None:
            self.on_publish(version, self.versions.manifest(version))


def apply_pending(
    queue: CorrectionQueue,
    model: EditableModel,
    editor: Editor,
    config: ApplyConfig | None = None,
    **options,
) -> ApplyReport:
    """``ApplyRun(queue, model, editor, config, **options).run()``: apply every pending
    correction and publish one version per batch."""
    return ApplyRun(queue, model, editor, config, **options).run()


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
            _dead_letter(queue, correction, reason, report)
            continue
        seen[correction.prompt_key] = correction
        batch.append(correction)
    return batch


def _dead_letter(queue, correction: Correction, reason: str, report: ApplyReport) -> None:
    """Move a pending correction the run cannot apply to dead-letter, with its reason."""
    queue.dead_letter(correction.model_dump(mode="json"), reason, "apply")
    queue.store.delete(queue.key("pending", correction.id))
    report.dead_lettered.append((correction.id, reason))
