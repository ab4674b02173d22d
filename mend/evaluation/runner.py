"""Evaluate an editing method on records: single, batched and sequential edits.

For every edit the same measurements are taken before and after editing; locality
always compares against the *unedited* model (also after k sequential edits), and every
edit is undone before the next group, so groups never see each other's edits.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from tqdm.auto import tqdm

from mend.data.records import EditRecord
from mend.evaluation.methods import EditMethod
from mend.evaluation.scoring import (
    agreement,
    answer_predictions,
    generated_exact,
    score_targets,
    text_nll,
)
from mend.models.editable import EditableModel

Mode = Literal["single", "batch", "sequential"]

# The aggregate keys, in table order. The unsuffixed three are token-level accuracies.
METRICS = [
    "edit_success", "generalization", "locality",
    "edit_success_em", "generalization_em", "locality_em",
    "edit_generated_em", "generalization_generated_em",
    "edit_success_pre", "generalization_pre", "edit_success_em_pre", "edit_generated_em_pre",
    "ppl_drawdown",
]


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


@dataclass
class _Snapshot:
    """What one record looks like on the model at one moment."""

    prompt_acc: float
    prompt_em: bool
    rephrase_acc: list[float]
    rephrase_em: list[bool]
    prompt_generated: bool
    rephrase_generated: list[bool]
    loc_predictions: list[torch.Tensor]
    loc_nll: tuple[float, int] | None


def _snapshot(model: EditableModel, record: EditRecord, generate: bool) -> _Snapshot:
    inputs = [record.prompt, *record.rephrases]
    scores = score_targets(model, inputs, [record.target] * len(inputs))
    generated = generated_exact(model, inputs, [record.target] * len(inputs)) if generate else [False] * len(inputs)
    probes = record.locality
    loc_prompts, loc_answers = [p.prompt for p in probes], [p.answer for p in probes]
    predictions = answer_predictions(model, loc_prompts, loc_answers) if probes else []
    loc_nll = text_nll(model, loc_prompts, loc_answers) if probes and record.kind == "generation" else None
    return _Snapshot(
        scores.token_acc[0], scores.exact[0], scores.token_acc[1:], scores.exact[1:],
        generated[0], generated[1:], predictions, loc_nll,
    )


def _row(record: EditRecord, pre: _Snapshot, post: _Snapshot, generate: bool) -> dict:
    locality, locality_em = agreement(pre.loc_predictions, post.loc_predictions) if record.locality else (None, None)
    row = {
        "record_id": record.record_id,
        "edit_success": post.prompt_acc,
        "generalization": _mean(post.rephrase_acc),
        "locality": locality,
        "edit_success_em": float(post.prompt_em),
        "generalization_em": _mean([float(x) for x in post.rephrase_em]),
        "locality_em": None if locality_em is None else float(locality_em),
        "edit_success_pre": pre.prompt_acc,
        "generalization_pre": _mean(pre.rephrase_acc),
        "edit_success_em_pre": float(pre.prompt_em),
    }
    if generate:
        row["edit_generated_em"] = float(post.prompt_generated)
        row["generalization_generated_em"] = _mean([float(x) for x in post.rephrase_generated])
        row["edit_generated_em_pre"] = float(pre.prompt_generated)
    if pre.loc_nll and post.loc_nll and pre.loc_nll[1]:
        ppl_pre = math.exp(pre.loc_nll[0] / pre.loc_nll[1])
        ppl_post = math.exp(post.loc_nll[0] / post.loc_nll[1])
        row.update(ppl_pre=ppl_pre, ppl_post=ppl_post, ppl_drawdown=ppl_post - ppl_pre)
    return row


@dataclass
class EvalReport:
    method: str
    mode: Mode
    k: int
    rows: list[dict]
    seconds: float
    summary: dict = field(default_factory=dict)

    def __post_init__(self):
        if not self.summary:
            self.summary = aggregate(self.rows)

    def write(self, directory: str | Path) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        stem = f"{self.method}-{self.mode}-k{self.k}"
        with (directory / f"{stem}.jsonl").open("w") as f:
            for row in self.rows:
                f.write(json.dumps(row) + "\n")
        payload = {"method": self.method, "mode": self.mode, "k": self.k, "n": len(self.rows),
                   "seconds": round(self.seconds, 1), **self.summary}
        (directory / f"{stem}.json").write_text(json.dumps(payload, indent=2))
        return directory / f"{stem}.json"


def aggregate(rows: Sequence[dict]) -> dict:
    """Mean of every metric over the edits that define it.

    A record superseded by a newer one of the same question (``superseded_by``) is not
    live: its edit metrics are left out (its target is no longer asked for), its
    locality kept; ``superseded`` counts them and ``edit_success_all`` scores every
    record against its own target, superseded or not."""
    out = {}
    live = [r for r in rows if r.get("superseded_by") is None]
    for key in METRICS:
        pool = rows if key.startswith("locality") or key.startswith("ppl") else live
        values = [r[key] for r in pool if r.get(key) is not None]
        if values:
            out[key] = sum(values) / len(values)
    if len(live) < len(rows):
        out["superseded"] = len(rows) - len(live)
        out["edit_success_all"] = sum(r["edit_success"] for r in rows) / len(rows)
    return out


def evaluate(
    method: EditMethod,
    model: EditableModel,
    records: Sequence[EditRecord],
    *,
    mode: Mode = "single",
    k: int = 1,
    generate: bool = True,
    progress: bool = True,
    scored_per_group: int | None = None,
) -> EvalReport:
    """Edit ``records`` with ``method`` in groups of ``k`` and score every edit.

    ``single`` edits one record at a time (k is ignored); ``batch`` applies k edits
    simultaneously; ``sequential`` applies k edits one after another, each computed on
    the model already carrying the earlier ones, and scores all k at the end.
    ``scored_per_group`` scores an evenly spaced sample of that many records of each
    group (every record is still edited): scoring, one record at a time, is what costs
    at tens of thousands of edits.
    """
    k = 1 if mode == "single" else k
    groups = [list(records[i : i + k]) for i in range(0, len(records), k)]
    rows: list[dict] = []
    started = time.perf_counter()
    for group_index, group in enumerate(tqdm(groups, desc=f"{method.name} {mode} k={k}", disable=not progress)):
        scored = group
        if scored_per_group is not None and scored_per_group < len(group):
            step = len(group) / scored_per_group
            scored = [group[int(i * step)] for i in range(scored_per_group)]
        pre = [_snapshot(model, r, generate) for r in scored]
        t0 = time.perf_counter()
        if mode == "sequential":
            applied = [method.apply(model, [r]) for r in group]
        else:
            applied = [method.apply(model, group)]
        edit_seconds = time.perf_counter() - t0
        try:
            post = [_snapshot(model, r, generate) for r in scored]
        finally:
            for edit in reversed(applied):
                edit.remove()
        superseded = {k: v for a in applied for k, v in getattr(a, "superseded", {}).items()}
        for record, before, after in zip(scored, pre, post, strict=True):
            row = _row(record, before, after, generate)
            row.update(group=group_index, edit_seconds=edit_seconds / len(group))
            if record.record_id in superseded:
                row["superseded_by"] = superseded[record.record_id]
            rows.append(row)
    return EvalReport(method.name, mode, k, rows, time.perf_counter() - started)
