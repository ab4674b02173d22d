"""Serving cost of routing: a forward pass with many scoped corrections applied against
the base model's forward on the same prompts.

    python -m bench.routing_overhead [--corrections 10000] [--scope runs/scope-smollm2]

The scope model comes from ``python -m bench.router`` (``--scope-out``). Keys are real:
the scope keys of CounterFact prompts (``counterfact-train``, then ``counterfact-val``),
with their subjects' spellings and relation keys, so routing runs the subject and
relation tests as it does when serving.
The corrections' low-rank factors are random with the rank a MEND edit of a short
target has (``--rank`` rows per matrix): what routing costs depends on how many keys are
searched and how many rows are switched on, not on the rows' values. Prompts are half
in scope (paraphrases of stored cases) and half unrelated (zsRE's NQ questions), in
batches as a server would see them. Writes ``bench/results/routing_overhead.json``
(``ratio`` = median routed forward / median base forward).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import transformers

from bench.common import SHARED_DATA, write_result
from mend import Edit, EditableModel, EditRequest
from mend.aggregations import ScopedChange
from mend.data import load_zsre
from mend.data.counterfact import load_counterfact_flat
from mend.deltas import LowRankDelta
from mend.editor.editor import base_model_info
from mend.scope import RoutedChanges, ScopeModel
from mend.scope.states import correction_scope_keys, correction_subjects


def _forward_times(model: EditableModel, batches) -> list[float]:
    times = []
    with torch.no_grad():
        for enc in batches:
            start = time.perf_counter()
            model.model(**enc, use_cache=False)
            times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corrections", type=int, default=10_000)
    parser.add_argument("--scope", default="runs/scope-smollm2")
    parser.add_argument("--rank", type=int, default=3, help="rows per matrix of each correction")
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    transformers.utils.logging.disable_progress_bar()
    torch.manual_seed(0)
    model = EditableModel.load("smollm2-135m")
    scope = ScopeModel.load(args.scope)
    cases = load_counterfact_flat(SHARED_DATA / "counterfact" / "counterfact-train.json").records
    cases += load_counterfact_flat(SHARED_DATA / "counterfact" / "counterfact-val.json").records
    cases = cases[: args.corrections]
    if len(cases) < args.corrections:
        raise SystemExit(f"only {len(cases)} CounterFact cases for {args.corrections} corrections")
    started = time.perf_counter()
    keys, relations = correction_scope_keys(scope, model, [c.prompt for c in cases], [c.subject for c in cases])
    subjects = correction_subjects(model, [c.subject for c in cases])
    keys_s = time.perf_counter() - started
    n = len(cases)
    deltas = {}
    for target in model.targets:
        rows = n * args.rank
        deltas[target.module_name] = LowRankDelta(
            torch.randn(rows, target.d_in) * 1e-3, torch.randn(rows, target.d_out) * 1e-3,
            torch.arange(n).repeat_interleave(args.rank))
    change = ScopedChange(deltas, keys, torch.arange(n), n, scope, subjects, relations)
    requests = [EditRequest(c.prompt, c.target, c.record_id) for c in cases]
    edit = Edit(change, model.layouts, requests, base_model_info(model), model)

    half = args.prompts // 2
    in_scope = [c.rephrases[0] for c in cases[:half]]
    unrelated = [p.prompt for r in load_zsre(SHARED_DATA / "zsre" / "zsre_mend_eval-dev-537.json").records
                 for p in r.locality][: args.prompts - half]
    prompts = [p for pair in zip(in_scope, unrelated, strict=False) for p in pair]
    tok = model.tokenizer
    batches = [tok(prompts[i : i + args.batch], return_tensors="pt", padding=True)
               for i in range(0, len(prompts), args.batch)]
    # Rounds alternate base and routed forwards, so that the machine's drift over the run
    # (other load, clock) falls on both alike; the routing index is built by an untimed
    # forward after each hooking in.
    _forward_times(model, batches[:1])  # warm-up
    base_times, routed_times = [], []
    for _ in range(args.repeats):
        base_times += _forward_times(model, batches)
        with edit.applied(model):
            _forward_times(model, batches[:1])
            routed_times += _forward_times(model, batches)
    base, routed = statistics.median(base_times), statistics.median(routed_times)
    with edit.applied(model):
        with torch.no_grad():
            model.model(**batches[0], use_cache=False)
        switched_on = [len(a) for a in RoutedChanges.of(model.model).last.active]
    write_result("routing_overhead", {
        "ratio": round(routed / base, 4),
        "corrections": n,
        "base_forward_s": round(base, 5),
        "routed_forward_s": round(routed, 5),
        "batch": args.batch,
        "prompts": len(prompts),
        "rows_per_matrix_per_correction": args.rank,
        "switched_on_in_first_batch": switched_on,
        "keys_s": round(keys_s, 1),
        "scope_model": args.scope,
        "scope_fingerprint": scope.fingerprint(),
        "command": f"python -m bench.routing_overhead --corrections {n} --scope {args.scope} --rank {args.rank} "
                   f"--prompts {args.prompts} --batch {args.batch} --repeats {args.repeats}",
    })


if __name__ == "__main__":
    main()
