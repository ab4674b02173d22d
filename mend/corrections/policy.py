"""When a computed correction is good enough to publish."""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict, Field

from mend.corrections.schema import Correction
from mend.data.records import LocalityProbe
from mend.evaluation.scoring import agreement, answer_predictions, score_targets
from mend.models.editable import EditableModel

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


class PreState:
    """Predictions of the model before a batch is edited in (for locality checks)."""

    def __init__(self, model: EditableModel, corrections: Sequence[Correction], probes: Sequence[LocalityProbe]):
        self.locality = {
            c.id: answer_predictions(model, [p.prompt for p in c.locality], [p.answer for p in c.locality])
            for c in corrections
            if c.locality
        }
        self.regression = (
            answer_predictions(model, [p.prompt for p in probes], [p.answer for p in probes]) if probes else []
        )


def correction_metrics(model: EditableModel, corrections: Sequence[Correction], pre: PreState) -> dict[str, dict]:
    """Per correction, with the batch's edit applied: success, generalisation, locality."""
    scores = score_targets(model, [c.prompt for c in corrections], [c.target for c in corrections])
    out = {}
    for i, c in enumerate(corrections):
        metrics = {"edit_success": scores.token_acc[i], "edit_exact": bool(scores.exact[i])}
        if c.rephrases:
            reph = score_targets(model, list(c.rephrases), [c.target] * len(c.rephrases))
            metrics["generalization"] = sum(reph.token_acc) / len(reph.token_acc)
        if c.locality:
            post = answer_predictions(model, [p.prompt for p in c.locality], [p.answer for p in c.locality])
            metrics["locality"] = agreement(pre.locality[c.id], post)[0]
        out[c.id] = metrics
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
    return None
