"""Many simultaneous edits on SmolLM2-135M: summed (MEND), least-squares (MALMEN) and
scoped (each correction's MEND edit behind a router) aggregation.

    python -m bench.edits_scaling --sum-editor runs/bench-zsre/train/best \\
        --ls-editor runs/bench-ls/train/best [--ks 1,10,100,1000]
    python -m bench.edits_scaling --scoped-editor runs/bench-zsre/train/best \\
        --scope runs/scope-smollm2 [--ks 1,10,100,1000] [--counterfact-ks 1,100,1000]
    python -m bench.edits_scaling --memit --alphaedit [--baseline-ks 100,1000]

Each mode given is measured; the modes not given keep their rows from the existing
results file. For k simultaneous edits, zsRE records are edited in groups of k (the 537
held-out records first, then training-file records to reach 1,000; ``heldout`` repeats
the figures over the held-out records alone) and every edit is scored with its whole
group applied: token-level edit success, generalization and locality (see the docs'
metrics page). ``--counterfact-ks`` adds CounterFact rows on ``counterfact-val``, whose
locality is on neighbourhood prompts (same relation, another subject). Writes
``bench/results/edits_scaling.json`` after every (mode, k) and ``edits_scaling.png`` at
the end; ``--resume`` keeps the entries already measured with the same editors and record
counts (a run killed at k=1,000 loses nothing before it). ``--memit``/``--alphaedit`` add
the subject-keyed weight-space baselines on the same records (:mod:`bench.subject_baselines`);
``--resume`` keeps their rows measured with the same settings.

Scoped edits are written as the queue writes them (:func:`mend.scope.landing.written`):
each correction at the strongest of the default strengths that still lands, the ones
landing at none refined. Rows measured with other ``--strengths`` go under
``scoped_strengths_<s1>_<s2>...`` and are not refined (``--strengths 1``: every edit as
the editor makes it).

``--counterfact-10000`` (scoped) edits all 10,000 records of ``counterfact-train`` at
once and scores an evenly spaced sample of ``--sample`` of them with the whole group
applied, into ``"10000"``: ``edit_wall_s`` is computing and applying the 10,000 edits,
``wall_s`` the whole measurement; ``locality_unnamed`` and ``locality_other_facts`` (with
their record counts ``n_unnamed``, ``n_other_facts``) are locality over the sampled
records whose probes name no stored correction's subject, and over those whose probes ask
no stored correction's own fact (:mod:`mend.evaluation.unrelated`).
"""

from __future__ import annotations

import argparse
import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import transformers  # noqa: E402

from bench.common import RESULTS, SHARED_DATA, write_result  # noqa: E402
from bench.corrections_data import zsre_records  # noqa: E402
from bench.subject_baselines import BASELINE_MODES, add_arguments, chosen_configs, measure  # noqa: E402
from mend import EditableModel, Editor  # noqa: E402
from mend.data.counterfact import load_counterfact_flat  # noqa: E402
from mend.evaluation import MendMethod, evaluate  # noqa: E402
from mend.evaluation.runner import aggregate  # noqa: E402
from mend.evaluation.unrelated import asking_stored_facts, naming_subjects  # noqa: E402
from mend.scope import ScopeModel  # noqa: E402
from mend.scope.landing import DEFAULT_REFINE_STEPS, DEFAULT_STRENGTHS  # noqa: E402

# Records evaluated per k: enough groups to average over, within a CPU budget.
RECORDS_FOR_K = {1: 200, 10: 200, 100: 300, 1000: 1000}
KEYS = ("edit_success", "generalization", "locality")


MODES = ("sum", "least_squares", "scoped")
HELDOUT_ZSRE = 537  # zsre_records puts the held-out eval file's records first


def _summary(report, heldout: int | None) -> dict:
    row = {key: round(report.summary[key], 4) for key in KEYS}
    for key in ("superseded", "edit_success_all"):  # scoped groups keep the newest correction of a question
        if key in report.summary:
            row[key] = round(report.summary[key], 4)
    row["n_records"] = len(report.rows)
    row["wall_s"] = round(report.seconds, 1)
    if heldout is not None and len(report.rows) > heldout:
        part = aggregate(report.rows[:heldout])
        row["heldout"] = {key: round(part[key], 4) for key in KEYS} | {"n_records": heldout}
    return row


def _locality_by_probe(report, records) -> dict:
    """Locality over the scored records whose probes name no stored correction's subject,
    and over those whose probes ask no stored correction's fact
    (:mod:`mend.evaluation.unrelated`), beside the figure over every probe."""
    by_id = {r.record_id: r for r in records}
    rows = [row for row in report.rows if row["locality"] is not None]
    probes = [by_id[row["record_id"]].locality for row in rows]
    flat = [p for some in probes for p in some]
    named = naming_subjects([p.prompt for p in flat], [r.subject for r in records])
    asked = asking_stored_facts([(p.prompt, p.answer) for p in flat], records)
    out, start = {"unnamed": [], "other_facts": []}, 0
    for row, some in zip(rows, probes, strict=True):
        stop = start + len(some)
        if not any(named[start:stop]):
            out["unnamed"].append(row["locality"])
        if not any(asked[start:stop]):
            out["other_facts"].append(row["locality"])
        start = stop
    return {**{f"locality_{k}": round(sum(v) / len(v), 4) if v else None for k, v in out.items()},
            **{f"n_{k}": len(v) for k, v in out.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sum-editor")
    parser.add_argument("--ls-editor")
    parser.add_argument("--scoped-editor", help="a summed editor, edited scoped under --scope")
    parser.add_argument("--scope", help="the scope model for --scoped-editor (default: the editor's own)")
    parser.add_argument("--ks", default="1,10,100,1000")
    parser.add_argument("--counterfact-ks", default="", help="also CounterFact (counterfact-val) at these k")
    parser.add_argument("--max-records", type=int, help="cap the records evaluated per k (quick runs; at least k)")
    parser.add_argument("--resume", action="store_true", help="keep entries already measured with these editors")
    parser.add_argument("--counterfact-10000", action="store_true",
                        help="scoped: 10,000 simultaneous CounterFact corrections (counterfact-train), a sample scored")
    parser.add_argument("--sample", type=int, default=500, help="records scored of the 10,000")
    parser.add_argument("--strengths", default=",".join(f"{s:g}" for s in DEFAULT_STRENGTHS),
                        help="scoped edits: the strengths each correction may take (mend.scope.landing)")
    add_arguments(parser)
    args = parser.parse_args()
    transformers.utils.logging.disable_progress_bar()
    ks = [int(k) for k in args.ks.split(",") if k]
    cf_ks = [int(k) for k in args.counterfact_ks.split(",") if k]
    strengths = tuple(float(s) for s in args.strengths.split(","))
    scoped = "scoped" if strengths == DEFAULT_STRENGTHS else "scoped_strengths_" + "_".join(f"{s:g}" for s in strengths)
    given = {"sum": args.sum_editor, "least_squares": args.ls_editor, scoped: args.scoped_editor}
    previous = RESULTS / "edits_scaling.json"
    old = json.loads(previous.read_text()) if previous.exists() else {}
    editors = {**old.get("editors", {}), **{m: p for m, p in given.items() if p}}
    modes = [*MODES, *(key for key in old if key.startswith("scoped_strengths_")), scoped]
    results: dict[str, dict] = {mode: old.get(mode, {}) for mode in dict.fromkeys(modes)}
    results["counterfact"] = old.get("counterfact", {})
    results["10000"] = old.get("10000", {})
    for mode, path in given.items():
        if path and not (args.resume and old.get("editors", {}).get(mode) == path):
            results[mode] = {}
            results["counterfact"].pop(mode, None)
    baselines = chosen_configs(args)
    settings = {**old.get("baselines", {}), **{m: c.model_dump() for m, c in baselines.items()}}
    for mode in BASELINE_MODES:
        results[mode] = old.get(mode, {})
        if mode in baselines and not (args.resume and old.get("baselines", {}).get(mode) == settings[mode]):
            results[mode] = {}
    # A run of the baselines alone keeps the MEND modes' run settings as they were.
    mend_run = any(given.values())
    run = {"scope": args.scope, "ks": ks, "counterfact_ks": cf_ks, "max_records": args.max_records} if mend_run \
        else {key: old.get(key) for key in ("scope", "ks", "counterfact_ks", "max_records")}
    if mend_run and args.resume:  # a run of some k adds to the rows kept, so the table lists them all
        run["ks"] = sorted({*ks, *old.get("ks", [])})
        run["counterfact_ks"] = sorted({*cf_ks, *old.get("counterfact_ks", [])})
    baseline_meta = old.get("baseline_costs", {})

    def save() -> None:
        write_result("edits_scaling", {**results, "editors": editors, **run, "baselines": settings,
                                       "baseline_costs": baseline_meta})

    base = EditableModel.load("smollm2-135m")
    for mode, path in given.items():
        if not path:
            continue
        editor = Editor.load(path).eval()
        model = base.retargeted(editor.config.patterns)
        if mode.startswith("scoped"):
            if args.scope:
                editor.scope = ScopeModel.load(args.scope)
            if editor.config.aggregation != "sum" or editor.scope is None:
                raise SystemExit(f"{path}: scoped edits need a summed editor and a scope model (--scope)")
        elif editor.config.aggregation != mode:
            raise SystemExit(f"{path} aggregates by {editor.config.aggregation}, expected {mode}")
        method = MendMethod(editor, aggregation="scoped", strengths=strengths,
                            refine_steps=DEFAULT_REFINE_STEPS if mode == "scoped" else 0) if mode == scoped \
            else MendMethod(editor, aggregation=mode)
        suites = [("zsre", ks, results[mode])]
        if cf_ks:
            suites.append(("counterfact", cf_ks, results["counterfact"].setdefault(mode, {})))
        for suite, suite_ks, rows in suites:
            for k in suite_ks:
                wanted = RECORDS_FOR_K.get(k, k)
                if args.max_records:
                    wanted = min(wanted, args.max_records)
                if suite == "zsre":
                    records = zsre_records(max(wanted, k))
                else:
                    records = load_counterfact_flat(SHARED_DATA / "counterfact" / "counterfact-val.json").records
                    records = records[: max(wanted, k)]
                if rows.get(str(k), {}).get("n_records") == len(records):
                    continue
                report = evaluate(method, model, records, mode="batch", k=k, generate=False)
                rows[str(k)] = _summary(report, HELDOUT_ZSRE if suite == "zsre" else None)
                print(suite, mode, k, rows[str(k)], flush=True)
                save()
        if args.counterfact_10000 and mode == scoped:
            records = load_counterfact_flat(SHARED_DATA / "counterfact" / "counterfact-train.json").records[:10_000]
            report = evaluate(method, model, records, mode="batch", k=len(records), generate=False,
                              scored_per_group=args.sample)
            row = _summary(report, None)
            row.update(dataset="counterfact-train", aggregation=mode, n_edited=len(records),
                       edit_wall_s=round(report.rows[0]["edit_seconds"] * len(records), 1),  # per record of the group
                       **_locality_by_probe(report, records))
            results["10000"] = row
            print("counterfact", mode, 10_000, row, flush=True)
            save()

    def zsre_for(k: int) -> list:
        wanted = RECORDS_FOR_K.get(k, k)
        return zsre_records(max(min(wanted, args.max_records) if args.max_records else wanted, k))

    if baselines:
        measure(args, base, baselines, results, zsre_for, lambda report: _summary(report, HELDOUT_ZSRE), save,
                SHARED_DATA, baseline_meta)

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for ax, key in zip(axes, KEYS, strict=True):
        for mode, style in (("sum", "o-"), ("least_squares", "s-"), ("scoped_strengths_1", "^:"), ("scoped", "^-"),
                            ("memit", "d--"), ("alphaedit", "v--")):
            xs = sorted(int(k) for k in results.get(mode, {}))
            ax.plot(xs, [results[mode][str(k)][key] for k in xs], style, label=mode)
        ax.set_xscale("log")
        ax.set_xlabel("simultaneous edits")
        ax.set_title(key)
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle("SmolLM2-135M, zsRE: summed, least-squares and scoped MEND; MEMIT and AlphaEdit")
    fig.tight_layout()
    fig.savefig(RESULTS / "edits_scaling.png", dpi=120)


if __name__ == "__main__":
    main()
