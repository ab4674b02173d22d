"""Batch-applying queued corrections on SmolLM2-135M.

    python -m bench.apply_queue --editor runs/bench-zsre/train/best [--sizes 100,1000] [--batch-size 100]
    python -m bench.apply_queue --editor runs/bench-zsre/train/best --aggregation scoped --scope runs/scope-smollm2
    python -m bench.apply_queue --editor runs/pipeline/scope/RUN_ID/scoped --name apply_queue_pipeline_champion

For N corrections (zsRE records: the 537 held-out ones first, then training records),
the whole apply run (validation, edits, per-correction evaluation, regression probes,
publishing versions with PEFT adapters, queue moves) is timed against the least work
they need: one forward+backward per correction computing gradients only for the
edited matrices (median of passes measured before and after every run, x N; ``ratio_N``). The flow must also judge
every correction, so ``ratio_all_passes_N`` divides by the unbatched passes that needs
too: the forward+backward, a forward of its prompt and rephrases with the edit, and of
its locality probes before and after.

``edit_success_N`` is the token-level accuracy of every live correction's target on its
prompt with the final published version applied (refused and superseded ones are not in it);
``edit_success_computed_N`` the same accuracy with each batch's computed edit, before
the acceptance policy, from the metrics the flow records per correction.
``published_share_N`` is the share of the N corrections published;
``published_share_consistent_N`` the same share of those that could be (one of two
corrections of one prompt or, scoped, one question with another target in a batch is
refused as a contradiction: zsRE's evaluation split asks many questions twice). Writes
``bench/results/apply_queue.json`` (``apply_queue_<aggregation>.json`` for another
aggregation than the editor's own, ``--name``'s file when given). The third line measures
the champion ``make run`` registers: its scoped editor lies in ``runs/pipeline/scope/``.
"""

from __future__ import annotations

import argparse
import tempfile
from collections import Counter

import torch
import transformers

from bench.common import median, timed, write_result
from bench.corrections_data import as_corrections, zsre_records
from bench.edit_latency import forward_backward
from mend import EditableModel, Editor
from mend.corrections import ApplyConfig, CorrectionQueue, VersionStore, apply_pending
from mend.corrections.status import queue_status, reason_kind
from mend.evaluation.scoring import answer_predictions, score_targets
from mend.scope import ScopeModel
from mend.storage import open_store


def fb_times(model: EditableModel, corrections: list[dict], samples: int = 30) -> list[float]:
    """Seconds of one forward+backward per correction, for ``samples`` corrections (the
    first three, warming up, dropped)."""
    weights = [model.model.get_submodule(t.module_name).weight for t in model.targets]
    for w in weights:
        w.requires_grad_(True)
    try:
        times = [timed(forward_backward, model, weights, c["prompt"], c["target"]) for c in corrections[:samples]]
    finally:
        for w in weights:
            w.requires_grad_(False)
            w.grad = None
    return times[3:]


def judge_seconds(model: EditableModel, corrections: list[dict], samples: int = 30) -> float:
    """Median time of the forward passes that judge one correction, unbatched."""

    def judge(c: dict) -> None:
        texts = [c["prompt"], *c.get("rephrases", [])]
        score_targets(model, texts, [c["target"]] * len(texts))
        probes = c.get("locality", [])
        for _ in range(2):  # before and after the edit
            answer_predictions(model, [p["prompt"] for p in probes], [p["answer"] for p in probes])

    with torch.no_grad():
        return median([timed(judge, c) for c in corrections[:samples]][3:])


def run(model, editor, n: int, config: ApplyConfig) -> dict:
    corrections = as_corrections(zsre_records(n))
    with tempfile.TemporaryDirectory() as tmp:
        queue = CorrectionQueue(open_store(tmp))
        queue.submit(corrections)
        report = apply_pending(queue, model, editor, config)
        computed = [
            record["metrics"]["edit_success"]
            for state in ("applied", "rejected")
            for record in (queue.read(state, i) for i in queue.ids(state))
            if "metrics" in record
        ]
        status = queue_status(queue).lines()
        versions = VersionStore(queue.store)
        final = versions.load_edit(versions.active(versions.latest())) if versions.latest() else None
        live_ids = {r.request_id for r in final.requests} if final is not None else set()
        live = [c for c in corrections if c["id"] in live_ids]
        success = []
        if final is not None:
            with final.applied(model):
                success = score_targets(model, [c["prompt"] for c in live], [c["target"] for c in live], 64).token_acc
        return {
            "wall_s": report.seconds,
            "applied": len(report.applied),
            "rejected": len(report.rejected),
            "dead_lettered": len(report.dead_lettered),
            "versions": len(report.versions),
            "edit_success": sum(success) / max(len(success), 1),
            "edit_success_computed": sum(computed) / max(len(computed), 1),
            # Why corrections were refused, by kind (numbers stripped).
            "rejections": dict(Counter(reason_kind(reason) for _, reason in report.rejected)),
            # Refused because another correction of the batch asks the same (prompt or question).
            "contradictions": sum("contradicts" in reason for _, reason in report.dead_lettered),
            "live": len(final.requests) if final is not None else 0,
            "status": status,
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--editor", required=True)
    parser.add_argument("--sizes", default="100,1000")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--passes", type=int, default=1)
    parser.add_argument("--aggregation", choices=["sum", "least_squares", "scoped"], help="default: the editor's own")
    parser.add_argument("--scope", help="scope model for --aggregation scoped (default: the editor's own)")
    parser.add_argument("--name", help="results file name (default: apply_queue for the editor's own aggregation, "
                                       "else apply_queue_<aggregation>)")
    args = parser.parse_args()
    transformers.utils.logging.disable_progress_bar()
    torch.manual_seed(0)
    editor = Editor.load(args.editor).eval()
    if args.scope:
        editor.scope = ScopeModel.load(args.scope)
    config = ApplyConfig(batch_size=args.batch_size, passes=args.passes, aggregation=args.aggregation)
    model = EditableModel.load("smollm2-135m", patterns=editor.config.patterns)
    sizes = [int(s) for s in args.sizes.split(",")]
    probes = as_corrections(zsre_records(40))
    # The unit of the ratio is timed before and after every run and the median of all of
    # it taken: one small forward+backward's time drifts with the machine's state more
    # than a whole run's does, so one measurement before the runs moved the ratio between runs.
    fb = fb_times(model, probes)
    t_judge = judge_seconds(model, probes)
    results = {"forward_backward_s": None, "judge_forwards_s": t_judge, "batch_size": args.batch_size,
               "editor": args.editor, "aggregation": args.aggregation or editor.config.aggregation,
               "passes": args.passes, "scope": args.scope, "policy": config.policy.model_dump()}
    outs = {}
    for n in sizes:
        outs[n] = run(model, editor, n, config)
        fb += fb_times(model, probes)
    t_fb = median(fb)
    results["forward_backward_s"] = t_fb
    results["forward_backward_samples"] = len(fb)
    for n, out in outs.items():
        out["ratio"] = out["wall_s"] / (n * t_fb)
        print(n, out)
        results[f"ratio_{n}"] = round(out["ratio"], 3)
        results[f"ratio_all_passes_{n}"] = round(out["wall_s"] / (n * (t_fb + t_judge)), 3)
        results[f"edit_success_{n}"] = round(out["edit_success"], 4)
        results[f"edit_success_computed_{n}"] = round(out["edit_success_computed"], 4)
        results[f"published_share_{n}"] = round(out["applied"] / n, 4)
        # Of the corrections that could be published at all: one of two contradicting
        # corrections in a batch cannot.
        results[f"published_share_consistent_{n}"] = round(out["applied"] / (n - out["contradictions"]), 4)
        # What `mend corrections status` said after the run.
        results[f"status_{n}"] = out.pop("status")
        results[f"details_{n}"] = out
    own = args.aggregation in (None, editor.config.aggregation)
    write_result(args.name or ("apply_queue" if own else f"apply_queue_{args.aggregation}"), results)


if __name__ == "__main__":
    main()
