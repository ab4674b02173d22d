"""Flow ``promote``: the ``champion`` alias only for a candidate that beats the champion.

    python -m flows.promote --model-name mend-editor-smollm2-135m --version 3

Gate metrics and thresholds come from ``promotion`` in the config (see
:mod:`mend.pipeline.promotion`). A candidate that wins gets ``champion``; one that
loses gets ``challenger``. Either way the decision, its reason and the per-metric
checks are recorded as tags (``promotion.*``) and in the description of the version.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, task

from flows.common import (
    PERSIST,
    TRANSIENT,
    ConfigArg,
    load_config,
    logger,
    markdown,
    md_table,
    table,
)
from mend.models.fingerprints import same_weights
from mend.pipeline.promotion import Decision, decide


@task(name="gate", **TRANSIENT, **PERSIST)
def gate(config: dict[str, Any], model_name: str, version: str) -> dict[str, Any]:
    from mend.registry import mlflow_registry as reg

    cfg = load_config(config)
    client = reg.connect(cfg.mlflow.tracking_uri, cfg.mlflow.registry_uri)
    spec = cfg.promotion
    candidate = client.get_model_version(model_name, version)
    candidate_metrics = reg.gate_metrics(client, candidate, spec.method, spec.metrics)
    champion = reg.get_alias(client, model_name, reg.CHAMPION)
    if champion is not None and str(champion.version) == str(version):
        decision = Decision(True, f"v{version} is already the champion", [], str(version))
        return {**decision.to_dict(), "candidate": candidate_metrics, "champion_metrics": candidate_metrics,
                "changed": False}
    champion_metrics = None
    same_base = True
    if champion is not None:
        champion_metrics = reg.gate_metrics(client, champion, spec.method, spec.metrics)
        same_base = same_weights(*({"weights_fingerprint": v.tags.get("base_model.weights_fingerprint"),
                                     "fingerprint": v.tags.get("base_model.fingerprint")} for v in (champion, candidate)))
    decision = decide(candidate_metrics, spec, champion_metrics,
                      champion_version=str(champion.version) if champion else None, same_base_model=same_base)
    reg.apply_decision(client, model_name, str(version), decision)
    return {**decision.to_dict(), "candidate": candidate_metrics, "champion_metrics": champion_metrics,
            "changed": True}


@flow(name="promote")
def promote(model_name: str, version: str, config: ConfigArg = None,
            overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Compare ``version`` with the current champion and move the aliases accordingly."""
    cfg = load_config(config, overrides)
    result = gate(cfg.to_dict(), model_name, str(version))
    log = logger()
    log.info("%s v%s -> %s: %s", model_name, version, result["alias"], result["reason"])
    rows = [{k: c.get(k) for k in ("metric", "candidate", "champion", "delta", "min_delta", "min_value", "passed")}
            for c in result["checks"]]
    table(f"promotion-{model_name}-v{version}", rows or [{"metric": "-", "passed": True}],
          f"promotion gate for {model_name} v{version}")
    markdown(
        f"promotion-{model_name}-v{version}",
        "\n".join([
            f"# {model_name} v{version}: **{result['alias']}**",
            result["reason"],
            "",
            f"Compared with: {('champion v' + result['champion_version']) if result['champion_version'] else 'no champion'}",
            "",
            md_table(rows),
        ]),
        description="promotion decision",
    )
    return {**result, "model_name": model_name, "version": str(version)}


if __name__ == "__main__":
    from flows.cli import run_single

    run_single(promote, needs=("model_name", "version"))
