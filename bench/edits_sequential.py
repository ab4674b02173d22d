"""1,000 corrections applied sequentially in batches of 10 through the corrections queue,
each batch re-solved together with every active correction (least-squares editor).

    python -m bench.edits_sequential --editor runs/bench-ls/train/best [--n 1000 --batch-size 10]
        [--regulariser-scale 10] [--passes 3]

At the end, with the final published version applied: token-level edit success over
all corrections, and locality (unchanged argmax at their locality answers against the
unedited model). Every correction is accepted (no policy), to measure the editing
itself. Writes ``bench/results/edits_sequential.json``, with ``_scale<X>`` in the name
for a regulariser scale X other than 1 (the apply config's ``regulariser_scale``:
locality against edit success) and ``_passes<N>`` for N capture passes per batch (its
``passes``).
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
    apply_corrections,
)
from mend.evaluation.scoring import agreement, answer_predictions, by_length, score_targets
from mend.storage import open_store

ACCEPT_ALL = AcceptancePolicy(min_edit_success=0.0, require_exact=False, min_locality=0.0, min_regression=0.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--editor", required=True)
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=10)
    parser.add_argument("--regulariser-scale", type=float, default=1.0)
    parser.add_argument("--passes", type=int, default=1)
    args = parser.parse_args()
    transformers.utils.logging.disable_progress_bar()
    editor = Editor.load(args.editor).eval()
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
        report = apply_corrections(queue, model, editor, ApplyConfig(
            batch_size=args.batch_size, policy=ACCEPT_ALL, regulariser_scale=args.regulariser_scale,
            passes=args.passes,
        ))
        wall = time.monotonic() - started
        versions = VersionStore(queue.store)
        final = versions.load_edit(versions.active(versions.latest()))
    with final.applied(model):
        success = by_length(lambda p, t: score_targets(model, p, t).token_acc,
                            [c["prompt"] for c in corrections], [c["target"] for c in corrections])
        after = by_length(predictions, loc_prompts, loc_answers)
    locality, _ = agreement(before, after)
    result = {
        "edit_success": round(sum(success) / len(success), 4),
        "locality": round(locality, 4),
        "wall_s": round(wall, 1),
        "n": args.n,
        "batch_size": args.batch_size,
        "versions": len(report.versions),
        "applied": len(report.applied),
        "aggregation": editor.config.aggregation,
        "regulariser_scale": args.regulariser_scale,
        "passes": args.passes,
        "editor": args.editor,
    }
    print(result)
    name = "edits_sequential"
    if args.regulariser_scale != 1:
        name += f"_scale{args.regulariser_scale:g}"
    if args.passes != 1:
        name += f"_passes{args.passes}"
    write_result(name, result)


if __name__ == "__main__":
    main()
