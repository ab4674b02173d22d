"""When a computed correction is good enough to publish."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from mend.corrections.schema import Correction
from mend.data.records import LocalityProbe
from mend.evaluation.scoring import agreement, answer_lengths, answer_predictions, score_targets
from mend.models.editable import EditableModel

CHUNK = 64
"""Most prompts the policy scores in one forward pass (grouped by length)."""

# Prompts every corrected model must keep answering as before (overridable).
DEFAULT_REGRESSION_PROBES: tuple[LocalityProbe, ...] = (
    LocalityProbe("The capital of France is", "Paris"),
    LocalityProbe("The chemical symbol for gold is", "Au"),
    LocalityProbe("The largest planet in the solar system is", "Jupiter"),
    LocalityProbe("Water is made of hydrogen and", "oxygen"),
    LocalityProbe("The author of Romeo and Juliet is", "William Shakespeare"),
    LocalityProbe("The first president of the United States was", "George Washington"),
    LocalityProbe("The speed of light is about", "300,000 kilometres per second"),
    LocalityProbe("Two plus two equals", "four"),
)


class AcceptancePolicy(BaseModel):
    """Thresholds a correction must meet; all metrics are in [0, 1]."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    min_edit_success: float = Field(0.99, ge=0, le=1, description="token accuracy of the target on the prompt")
    require_exact: bool = Field(True, description="every target token must be the argmax")
    min_generalization: float = Field(0.0, ge=0, le=1, description="token accuracy on the rephrases")
    min_locality: float = Field(0.8, ge=0, le=1, description="unchanged predictions on its own locality probes")
    min_regression: float = Field(0.95, ge=0, le=1, description="unchanged predictions on the regression probes")
    protect_active: bool = Field(
        True, description="refuse a correction that undoes an active one it is switched on with (routed edits: "
        "that correction's prompt got its target before the batch and no longer does)",
    )


def locality_inputs(corrections: Sequence[Correction]) -> tuple[list[str], list[str], list[int]]:
    """Every correction's locality probes flattened, with the owning correction's index."""
    prompts, answers, owner = [], [], []
    for i, c in enumerate(corrections):
        for probe in c.locality:
            prompts.append(probe.prompt)
            answers.append(probe.answer)
            owner.append(i)
    return prompts, answers, owner


class PreState:
    """Predictions of the model before a batch is edited in (for locality checks).

    ``changed`` (one flag per probe of :func:`locality_inputs`; None: all) marks the
    locality probes the batch's edit can change at all. A routed edit changes only the
    inputs that switch one of its corrections on; the others keep every prediction by
    construction, so they are neither predicted before nor after, and count as unchanged."""

    def __init__(
        self,
        model: EditableModel,
        corrections: Sequence[Correction],
        probes: Sequence[LocalityProbe],
        changed: Sequence[bool] | None = None,
    ):
        prompts, answers, self.owner = locality_inputs(corrections)
        self.changed = [True] * len(prompts) if changed is None else list(changed)
        if len(self.changed) != len(prompts):
            raise ValueError(f"{len(self.changed)} flags for {len(prompts)} locality probes")
        run = [k for k, c in enumerate(self.changed) if c]
        kept = [k for k, c in enumerate(self.changed) if not c]
        self.locality: list[Tensor | None] = [None] * len(prompts)
        for k, predicted in zip(run, answer_predictions(model, [prompts[k] for k in run],
                                                        [answers[k] for k in run], CHUNK), strict=True):
            self.locality[k] = predicted
        # Unchanged probes only need their number of answer positions for the agreement.
        for k, n in zip(kept, answer_lengths(model, [prompts[k] for k in kept], [answers[k] for k in kept]),
                        strict=True):
            self.locality[k] = torch.full((n,), -1, dtype=torch.long)
        self.regression = answer_predictions(model, [p.prompt for p in probes], [p.answer for p in probes], CHUNK)


def correction_metrics(
    model: EditableModel, corrections: Sequence[Correction], pre: PreState, chunk: int = CHUNK
) -> dict[str, dict]:
    """Per correction, with the batch's edit applied: success, generalisation, locality.

    All corrections' prompts are scored together, then all their rephrases, in chunks of
    similar length, not one correction at a time. The prompts go apart: the edit's strength
    search ran them already, so within the apply run's reuse of the unedited blocks
    (:mod:`mend.models.unedited_blocks`) a batch of prompts alone runs only the edited blocks.
    """
    targets = [c.target for c in corrections]
    prompt_scores = score_targets(model, [c.prompt for c in corrections], targets, chunk)
    out = {c.id: {"edit_success": acc, "edit_exact": bool(exact)}
           for c, acc, exact in zip(corrections, prompt_scores.token_acc, prompt_scores.exact, strict=True)}
    owner = [i for i, c in enumerate(corrections) for _ in c.rephrases]
    rephrases = score_targets(model, [r for c in corrections for r in c.rephrases], [targets[i] for i in owner], chunk)
    rephrase_acc: dict[int, list[float]] = {}
    for i, acc in zip(owner, rephrases.token_acc, strict=True):
        rephrase_acc.setdefault(i, []).append(acc)
    for i, values in rephrase_acc.items():
        out[corrections[i].id]["generalization"] = sum(values) / len(values)
    prompts, answers, loc_owner = locality_inputs(corrections)
    run = [k for k, c in enumerate(pre.changed) if c]
    post = list(pre.locality)  # the probes the edit cannot change predict what they did
    for k, predicted in zip(run, answer_predictions(model, [prompts[k] for k in run], [answers[k] for k in run],
                                                    chunk), strict=True):
        post[k] = predicted
    per_owner: dict[int, tuple[list, list]] = {}
    for k, i in enumerate(loc_owner):
        before, after = per_owner.setdefault(i, ([], []))
        before.append(pre.locality[k])
        after.append(post[k])
    for i, (before, after) in per_owner.items():
        out[corrections[i].id]["locality"] = agreement(before, after)[0]
    return out


def regression_agreement(model: EditableModel, probes: Sequence[LocalityProbe], pre: PreState) -> float:
    if not probes:
        return 1.0
    post = answer_predictions(model, [p.prompt for p in probes], [p.answer for p in probes])
    return agreement(pre.regression, post)[0]


def verdict(policy: AcceptancePolicy, metrics: dict) -> str | None:
    """None if accepted, else the reason for rejection."""
    if metrics["edit_success"] < policy.min_edit_success:
        return f"edit success {metrics['edit_success']:.3f} < {policy.min_edit_success}"
    if policy.require_exact and not metrics["edit_exact"]:
        return "target is not the model's answer under teacher forcing"
    if "generalization" in metrics and metrics["generalization"] < policy.min_generalization:
        return f"generalization {metrics['generalization']:.3f} < {policy.min_generalization}"
    if "locality" in metrics and metrics["locality"] < policy.min_locality:
        return f"locality {metrics['locality']:.3f} < {policy.min_locality}"
    if policy.protect_active and metrics.get("undoes"):
        return f"undoes active correction {metrics['undoes'][0]!r} (its prompt no longer gets its target)"
    return None
