"""Router quality on held-out records: does a scope model switch on the right correction
for rephrases, and none for unrelated questions or same-relation prompts about others?

    python -m bench.router [--layers 4,6,8] [--steps 1000] [--scope-out runs/scope-smollm2] [--no-subject-test]
    python -m bench.router --scope runs/scope-smollm2 [--recount] [--relation]

Training data (fit and choice of block and threshold): zsRE ``zsre_mend_train-1k`` from
record 500 on (the first 500 fill ``bench.edits_scaling``'s 1,000 edits) and the first 3,000 cases of CounterFact ``counterfact-train``; their last tenth is held out to
pick the block and calibrate the thresholds (false positives at most ``--max-fpr-nq`` on
NQ questions and ``--max-fpr-neighbourhood`` on neighbourhood prompts; with the subject
test, half of each budget goes to the learned score alone and the rest to requests that
also name a correction's subject: see ``mend.scope.model``). Test data, never seen in training: the 537 records of
``zsre_mend_eval-dev-537`` and the first 463 cases of ``counterfact-val`` make 1,000
stored corrections, queried with their rephrases / paraphrases (recall: the own
correction switches on) and with their NQ questions / neighbourhood prompts (false
positives: any correction switches on). For 10,000 stored corrections the keys of other
records (the rest of ``counterfact-val``, ``counterfact-train`` cases 3,000 on, WikiBio)
are added as distractors; the queries stay the same.

Writes ``bench/results/router.json`` (``recall``, ``fpr_nq``, ``fpr_neighbourhood`` at
1,000; per data set, at 10,000, at 10,000 under higher thresholds and per candidate block
nested) and saves the fitted scope
model to ``--scope-out`` (attach it to an editor: ``editor.scope = ScopeModel.load(...)``).

With a relation key (:mod:`mend.scope.relation`; fitted with the scope model, or added to
a fitted one by ``--relation``), the same figures are also measured with the subject
test alone, and at 10,000 stored under relation thresholds keeping other shares of the
held-out training rephrases (``relation_sweep_10000``).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict

import torch
import transformers

from bench.common import RESULTS, SHARED_DATA, write_result
from mend import EditableModel
from mend.data import load_wikibio, load_zsre
from mend.data.counterfact import load_counterfact_flat
from mend.evaluation.unrelated import asking_stored_facts, naming_subjects
from mend.scope import ScopeModel
from mend.scope.fit import (
    ScopeData,
    ScopeExample,
    examples_of,
    fit_choosing_layer,
    measure,
    scope_data,
    thresholds_by_count,
    training_sets,
    unrelated_inputs,
)
from mend.scope.relation import RelationData, fit_relation

TRAIN_CF = 3000
ZSRE_UNSEEN = 500
STORED = 1000
DISTRACTED = 10_000
THRESHOLD_SWEEP = (0.88, 0.9, 0.92, 0.94, 0.96)
KEEP_SWEEP = (0.95, 0.97, 0.98, 0.99, 0.995)


def _quality(q) -> dict:
    return {"recall": round(q.recall, 4), "top1": round(q.top1, 4),
            **{f"fpr_{k}": round(v, 4) for k, v in q.false_positives.items()}, "stored": q.n_keys,
            "threshold": round(q.threshold, 4),
            "subject_threshold": None if q.subject_threshold is None else round(q.subject_threshold, 4),
            "relation_threshold": None if q.relation_threshold is None else round(q.relation_threshold, 4)}


def _sub(data: ScopeData, keys: int, owners: range) -> ScopeData:
    """The first ``keys`` keys, with the rephrases of the corrections in ``owners`` only."""
    pick = torch.isin(data.positive_owner, torch.tensor(list(owners)))
    return ScopeData(data.keys[:keys], data.subjects[:keys], data.positives.take(pick.nonzero().flatten()),
                     data.positive_owner[pick], data.negatives, data.relation_keys[:keys])


def _training_split(cf_train) -> tuple[dict, dict]:
    """Named training record sets, and their held-out last tenths."""
    # The first records of the zsRE training file fill bench.edits_scaling's 1,000 edits
    # after the 537 held-out ones: the scope model never sees them.
    zsre_train = load_zsre(SHARED_DATA / "zsre" / "zsre_mend_train-1k.json", on_error="skip").records[ZSRE_UNSEEN:]
    cut_z, cut_c = int(len(zsre_train) * 0.9), int(TRAIN_CF * 0.9)
    return ({"nq": zsre_train[:cut_z], "neighbourhood": cf_train[:cut_c]},
            {"nq": zsre_train[cut_z:], "neighbourhood": cf_train[cut_c:TRAIN_CF]})


def _budgets(args) -> dict[str, float]:
    return {"nq": args.max_fpr_nq, "neighbourhood": args.max_fpr_neighbourhood}


def _fit(args, model, cf_train) -> tuple[ScopeModel, dict]:
    train, held_out = _training_split(cf_train)
    choice = fit_choosing_layer(
        model, train=train, held_out=held_out,
        layers=[int(x) for x in args.layers.split(",")], dim=args.dim,
        max_false_positive_rate=_budgets(args), steps=args.steps, subject_test=not args.no_subject_test,
        relation_test=not args.no_relation_test,
    )
    for layer, q in choice.per_layer.items():
        print(layer, _quality(q), flush=True)
    relation = {"relation": asdict(choice.relation)} if choice.relation is not None else {}
    return choice.scope, {"layer_choice": {str(k): _quality(v) for k, v in choice.per_layer.items()},
                          "fit": asdict(choice.per_layer[choice.layer]), **relation}


def _relation_data(model, records: dict, layer: int, seed: int) -> RelationData:
    return RelationData.of(model, [e for rs in records.values() for e in examples_of(rs)], layer, seed=seed)


def _with_relation(model, scope: ScopeModel, cf_train) -> tuple[ScopeModel, dict]:
    """``scope`` with a relation key fitted on the training split (as ``fit_choosing_layer`` fits it)."""
    train, held_out = _training_split(cf_train)
    layer = scope.config.layer
    scope, report = fit_relation(scope, _relation_data(model, train, layer, 0), _relation_data(model, held_out, layer, 1))
    print("relation key", asdict(report), flush=True)
    return scope, asdict(report)


def _relation_sweep(model, scope: ScopeModel, cf_train, crowded: ScopeData) -> list[dict]:
    """Routing at 10,000 stored under relation thresholds keeping each of ``KEEP_SWEEP``
    of the held-out training rephrases."""
    own, _ = _relation_data(model, _training_split(cf_train)[1], scope.config.layer, 1).scores(scope.relation)
    out = []
    for keep in KEEP_SWEEP:
        threshold = float(own.quantile(1 - keep, interpolation="lower"))
        out.append({"keep": keep, "relation_threshold": round(threshold, 4),
                    **_quality(measure(scope.with_relation(scope.relation, threshold), crowded))})
    return out


def _fitted_before(path: str) -> tuple[ScopeModel, dict]:
    """A scope model fitted before, with how it was fitted (from the router.json that reports it)."""
    scope = ScopeModel.load(path)
    previous = RESULTS / "router.json"
    old = json.loads(previous.read_text()) if previous.exists() else {}
    if old.get("scope", {}).get("fingerprint") != scope.fingerprint():
        raise SystemExit(f"{path} is not the scope model bench/results/router.json reports: fit it with this bench")
    return scope, {"layer_choice": old["layer_choice"], "fit": old["fit"], "wall_s": old["wall_s"]["fit"],
                   "command": old["command"], "scope_model": old["scope_model"],
                   **({"relation": old["relation"]} if "relation" in old else {})}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", default="4,6,8")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--max-fpr-nq", type=float, default=0.01, help="false-positive budget on NQ questions")
    parser.add_argument("--max-fpr-neighbourhood", type=float, default=0.05,
                        help="false-positive budget on neighbourhood prompts")
    parser.add_argument("--no-subject-test", action="store_true", help="route on the learned score alone")
    parser.add_argument("--no-relation-test", action="store_true",
                        help="fit no relation key: requests naming a correction's subject need not ask its question")
    parser.add_argument("--scope-out", default="runs/scope-smollm2")
    parser.add_argument("--scope", help="measure this fitted scope model again instead of fitting one "
                                         "(it must be the one the previous router.json reports)")
    parser.add_argument("--recount", action="store_true",
                        help="with --scope: first raise its threshold for larger counts of stored corrections on the "
                             "training split (mend.scope.fit.thresholds_by_count) and save it back")
    parser.add_argument("--relation", action="store_true",
                        help="with --scope: (re)fit its relation key on the training split (mend.scope.relation) and "
                             "save it back")
    args = parser.parse_args()
    transformers.utils.logging.disable_progress_bar()
    started = time.monotonic()
    model = EditableModel.load("smollm2-135m")
    cf_train = load_counterfact_flat(SHARED_DATA / "counterfact" / "counterfact-train.json").records
    if args.scope:
        scope, fitted = _fitted_before(args.scope)
        if args.recount:
            train, held_out = _training_split(cf_train)
            fit_set, check_set = training_sets(model, train, held_out, [scope.config.layer])
            scope = thresholds_by_count(scope, check_set[scope.config.layer], fit_set[scope.config.layer].keys,
                                        _budgets(args))
            scope.save(args.scope, extra=scope.metadata)
        if args.relation:
            scope, fitted["relation"] = _with_relation(model, scope, cf_train)
            scope.save(args.scope, extra={**scope.metadata, "relation": fitted["relation"]})
    else:
        scope, fitted = _fit(args, model, cf_train)
        scope.save(args.scope_out, extra={"layer_choice": fitted["layer_choice"]})
        fitted["wall_s"] = round(time.monotonic() - started, 1)
        fitted["command"] = "python -m bench.router " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k != "scope")
        fitted["scope_model"] = args.scope_out
    print(f"block {scope.config.layer}, threshold {scope.config.threshold:.3f}", flush=True)

    zsre_test = load_zsre(SHARED_DATA / "zsre" / "zsre_mend_eval-dev-537.json").records
    cf_val = load_counterfact_flat(SHARED_DATA / "counterfact" / "counterfact-val.json").records
    cf_test = cf_val[: STORED - len(zsre_test)]
    distractors = [*cf_val[len(cf_test):], *cf_train[TRAIN_CF:]]
    for name in ("hallucination-train.json", "hallucination-edit.json"):
        distractors += load_wikibio(SHARED_DATA / "wikibio" / name).records
    distractors = distractors[: DISTRACTED - STORED]
    examples = examples_of([*zsre_test, *cf_test]) + [ScopeExample(r.prompt, r.subject, ()) for r in distractors]
    neighbourhood = unrelated_inputs(cf_test)
    # At 10,000 stored, some neighbourhood prompts ask about a stored correction's own
    # subject, many about its very fact: measured apart (mend.evaluation.unrelated).
    named = naming_subjects(neighbourhood, [e.subject for e in examples])
    asked = asking_stored_facts([(p.prompt, p.answer) for r in cf_test for p in r.locality],
                                [*zsre_test, *cf_test, *distractors])
    negatives = {"nq": unrelated_inputs(zsre_test), "neighbourhood": neighbourhood,
                 "neighbourhood_unnamed": [p for p, n in zip(neighbourhood, named, strict=True) if not n],
                 "neighbourhood_other_facts": [p for p, a in zip(neighbourhood, asked, strict=True) if not a]}
    data = scope_data(model, examples, negatives, [scope.config.layer])[scope.config.layer]
    results = {}
    for stored in (STORED, len(examples)):
        everything = measure(scope, _sub(data, stored, range(STORED)))
        per_set = {"zsre": measure(scope, _sub(data, stored, range(len(zsre_test)))),
                   "counterfact": measure(scope, _sub(data, stored, range(len(zsre_test), STORED)))}
        results[stored] = {"all": _quality(everything), **{k: _quality(v) for k, v in per_set.items()}}
        if scope.has_relation:  # what the relation test buys: the same without it
            results[stored]["subject_test_only"] = _quality(measure(scope.without_relation(),
                                                                    _sub(data, stored, range(STORED))))
        print(stored, results[stored], flush=True)
    # What a threshold raised for 10,000 stored corrections would trade: recall for false positives.
    crowded = _sub(data, len(examples), range(STORED))
    sweep = [_quality(measure(scope.with_threshold(t, scope.config.subject_threshold), crowded))
             for t in sorted({round(scope.config.threshold, 4), *THRESHOLD_SWEEP})]
    relation_sweep = _relation_sweep(model, scope, cf_train, crowded) if scope.has_relation else []
    at_1000 = results[STORED]["all"]
    write_result("router", {
        "recall": at_1000["recall"], "fpr_nq": at_1000["fpr_nq"], "fpr_neighbourhood": at_1000["fpr_neighbourhood"],
        "stored": STORED,
        "at_1000": results[STORED],
        "at_10000": results[len(examples)],
        "threshold_sweep_10000": sweep,
        **({"relation_sweep_10000": relation_sweep, "relation": fitted.get("relation")} if scope.has_relation else {}),
        "scope": {**scope.config.model_dump(), "fingerprint": scope.fingerprint()},
        "layer_choice": fitted["layer_choice"],
        "test_data": {"zsre": "zsre_mend_eval-dev-537.json (537)", "counterfact": f"counterfact-val.json[:{len(cf_test)}]",
                      "distractors": f"{len(distractors)} keys: counterfact-val rest, counterfact-train[{TRAIN_CF}:], wikibio",
                      "neighbourhood_unnamed": f"{len(negatives['neighbourhood_unnamed'])} of {len(neighbourhood)} "
                                               "neighbourhood prompts: those naming none of the 10,000 stored subjects",
                      "neighbourhood_other_facts": f"{len(negatives['neighbourhood_other_facts'])} of "
                                                   f"{len(neighbourhood)} neighbourhood prompts: those asking none of "
                                                   "the 10,000 stored corrections' own facts"},
        "train_data": {"zsre": f"zsre_mend_train-1k.json[{ZSRE_UNSEEN}:]", "counterfact": f"counterfact-train.json[:{TRAIN_CF}]",
                       "held_out_for_choice": "last tenth of each"},
        "wall_s": {"fit": fitted["wall_s"], "measure": round(time.monotonic() - started, 1)},
        "command": fitted["command"],
        **({"measured_by": f"python -m bench.router --scope {args.scope}" + (" --recount" if args.recount else "")
                           + (" --relation" if args.relation else "")}
           if args.scope else {}),
        "scope_model": fitted["scope_model"],
        "fit": fitted["fit"],
    })


if __name__ == "__main__":
    main()
