"""The promotion gate: is a candidate editor good enough to become the champion?

Per gate metric ``m`` (higher is better) with threshold ``GateMetric(min_delta, min_value)``:

* ``candidate[m] >= min_value`` (an absolute floor; also applies when there is no champion);
* ``candidate[m] - champion[m] >= min_delta`` (``min_delta < 0`` tolerates a small regression);

and, with ``require_improvement``, the candidate must be strictly better than the
champion on at least one gate metric, so re-registering an equal editor never churns
the alias. Only champions for the same base model (equal weight fingerprint) are
comparable; a champion for another base model blocks automatic promotion.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from mend.pipeline.config import PromotionSpec


@dataclass
class Decision:
    promote: bool
    reason: str
    checks: list[dict] = field(default_factory=list)
    champion_version: str | None = None

    @property
    def alias(self) -> str:
        return "champion" if self.promote else "challenger"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "alias": self.alias}


def decide(
    candidate: dict[str, float],
    spec: PromotionSpec,
    champion: dict[str, float] | None = None,
    *,
    champion_version: str | None = None,
    same_base_model: bool = True,
) -> Decision:
    """Compare ``candidate`` metrics with ``champion`` metrics (``None``: no champion)."""
    checks: list[dict] = []
    failures: list[str] = []
    for name, gate in spec.metrics.items():
        value = candidate.get(name)
        check: dict[str, Any] = {"metric": name, "candidate": value, "champion": None,
                                 "min_value": gate.min_value, "min_delta": gate.min_delta, "passed": True}
        if value is None:
            check["passed"] = False
            failures.append(f"{name} is missing from the candidate's evaluation")
        elif gate.min_value is not None and value < gate.min_value:
            check["passed"] = False
            failures.append(f"{name} {value:.4f} < floor {gate.min_value:.4f}")
        if champion is not None and value is not None:
            best = champion.get(name)
            check["champion"] = best
            if best is not None:
                check["delta"] = value - best
                if value - best < gate.min_delta:
                    check["passed"] = False
                    failures.append(f"{name} {value:.4f} vs champion {best:.4f} "
                                    f"(delta {value - best:+.4f} < {gate.min_delta:+.4f})")
        checks.append(check)

    if champion is not None and not same_base_model:
        return Decision(False, f"the champion (v{champion_version}) was trained for another base model; "
                        "promote by hand after comparing them", checks, champion_version)
    if failures:
        return Decision(False, "; ".join(failures), checks, champion_version)
    if champion is None:
        return Decision(True, "first editor for this base model that passes every floor", checks, None)
    improved = [c["metric"] for c in checks if c.get("delta") is not None and c["delta"] > 0]
    if spec.require_improvement and not improved:
        return Decision(False, f"no gate metric improves on champion v{champion_version}", checks, champion_version)
    return Decision(True, f"beats champion v{champion_version} on {', '.join(improved) or 'no metric'} "
                    "within every threshold", checks, champion_version)
