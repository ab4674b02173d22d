"""1,000 corrections applied sequentially in batches of 10 through the corrections queue,
each batch combined with every active correction as its aggregation combines them
(least squares: re-solved together; scoped: each kept apart and routed).

    python -m bench.edits_sequential --editor runs/bench-ls/train/best [--n 1000 --batch-size 10]
        [--regulariser-scale 10] [--passes 3]
    python -m bench.edits_sequential --editor runs/bench-zsre/train/best --aggregation scoped \\
        --scope runs/scope-smollm2

At the end, with the final published version applied: token-level edit success and
generalization over the live corrections (those in the final version: a correction
replaced by a newer one of the same prompt or question, or refused as contradicting one
in its batch, is not; ``edit_success_all`` scores every queued correction),
``first_100_edit_success`` over the live ones among the first 100 (the oldest, re-scored
after 990 more), and locality (unchanged argmax at their
locality answers against the unedited model). Every correction is accepted (no
thresholds), to measure the editing itself, except one that would undo a live correction
it is switched on with (``AcceptancePolicy.protect_active``, routed runs: ``rejected``). Writes ``bench/results/edits_sequential.json``, with
``_scale<X>`` in the name for a regulariser scale X other than 1 (the apply config's
``regulariser_scale``: locality against edit success), ``_passes<N>`` for N capture
passes per batch (its ``passes``) and ``_<aggregation>`` for an aggregation other than
the editor's own.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from functools import partial

import transformers

from bench.common import write_result
from bench.corrections_data import as_corrections, zsre_records
from mend import EditableModel, Editor
from mend.corrections import (
    AcceptancePolicy,
    ApplyConfig,
    CorrectionQueue,
    VersionStore,
    apply_pending,
)
from mend.evaluation.scoring import agreement, answer_predictions, score_targets
from mend.models.batching import by_length
from mend.scope import ScopeModel
from mend.storage import open_store

ACCEPT_ALL = AcceptancePolicy(min_edit_success=0.0, require_exact=False, min_locality=0.0, min_regression=0.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--editor", required=True)
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=10)
    parser.add_argument("--regulariser-scale", type=float, default=1.0)
    parser.add_argument("--passes", type=int, default=1)
    parser.add_argument("--aggregation", choices=["sum", "least_squares", "scoped"], help="default: the editor's own")
    parser.add_argument("--scope", help="scope model for --aggregation scoped (default: the editor's own)")
    args = parser.parse_args()
    transformers.utils.logging.disable_progress_bar()
    editor = Editor.load(args.editor).eval()
    if args.scope:
        editor.scope = ScopeModel.load(args.scope)
    model = EditableModel.load("smollm2-135m", patterns=editor.config.patterns)
    corrections = as_corrections(zsre_records(args.n))
    loc_prompts = [c["locality"][0]["prompt"] for c in corrections]
    loc_answers = [c["locality"][0]["answer"] for c in corrections]
    predictions = partial(answer_predictions, model)
    before = by_length(predictions, loc_prompts, loc_answers)

    with tempfile.TemporaryDirectory() as tmp:
        queue = CorrectionQueue(open_store(tmp))
        queue.submit(corrections)
        started = time.monotonic()
        report = apply_pending(queue, model, editor, ApplyConfig(
            batch_size=args.batch_size, policy=ACCEPT_ALL, regulariser_scale=args.regulariser_scale,
            passes=args.passes, aggregation=args.aggregation,
        ))
        wall = time.monotonic() - started
        versions = VersionStore(queue.store)
        final = versions.load_edit(versions.active(versions.latest()))
    def accuracy(prompts, targets):
        return score_targets(model, prompts, targets).token_acc

    # Live: the corrections in the final version. A correction replaced by a newer one of
    # the same prompt or question, or refused as contradicting one in its batch, is not.
    live_ids = {r.request_id for r in final.requests}
    live = [c for c in corrections if c["id"] in live_ids]
    rephrased = [(r, c["target"]) for c in live for r in c["rephrases"]]
    with final.applied(model):
        every = by_length(accuracy, [c["prompt"] for c in corrections], [c["target"] for c in corrections])
        general = by_length(accuracy, [r for r, _ in rephrased], [t for _, t in rephrased]) if rephrased else []
        after = by_length(predictions, loc_prompts, loc_answers)
    locality, _ = agreement(before, after)
    success = [a for a, c in zip(every, corrections, strict=True) if c["id"] in live_ids]
    first = [a for a, c in zip(every[:100], corrections[:100], strict=True) if c["id"] in live_ids]
    result = {
        "edit_success": round(sum(success) / len(success), 4),
        "first_100_edit_success": round(sum(first) / len(first), 4),
        "generalization": round(sum(general) / len(general), 4) if general else None,
        "locality": round(locality, 4),
        "live": len(live),
        "superseded": len(report.applied) - len(live),
        "dead_lettered": len(report.dead_lettered),
        "rejected": len(report.rejected),
        "edit_success_all": round(sum(every) / len(every), 4),
        "wall_s": round(wall, 1),
        "n": args.n,
        "batch_size": args.batch_size,
        "versions": len(report.versions),
        "applied": len(report.applied),
        "aggregation": final.aggregation,
        "regulariser_scale": args.regulariser_scale,
        "passes": args.passes,
        "editor": args.editor,
        "scope": args.scope,
    }
    print(result)
    name = "edits_sequential"
    if args.regulariser_scale != 1:
        name += f"_scale{args.regulariser_scale:g}"
    if args.passes != 1:
        name += f"_passes{args.passes}"
    if args.aggregation and args.aggregation != editor.config.aggregation:
        name += f"_{args.aggregation}"
    write_result(name, result)


if __name__ == "__main__":
    main()
