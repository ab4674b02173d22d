"""Many simultaneous edits on SmolLM2-135M: summed (MEND) vs least-squares (MALMEN) aggregation.

    python -m bench.edits_scaling --sum-editor runs/bench-zsre/train/best \\
        --ls-editor runs/bench-ls/train/best [--ks 1,10,100,1000]

For k simultaneous edits, zsRE records are edited in groups of k (the 537 held-out
records first, then training-file records to reach 1,000) and every edit is scored
with its whole group applied: token-level edit success, generalization and locality
(see README). Writes ``bench/results/edits_scaling.json`` after every (mode, k) and
``edits_scaling.png`` at the end; ``--resume`` keeps the entries already measured with
the same editors and record counts (a run killed at k=1,000 loses nothing before it).
"""

from __future__ import annotations

import argparse
import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import transformers  # noqa: E402

from bench.common import RESULTS, write_result  # noqa: E402
from bench.corrections_data import zsre_records  # noqa: E402
from mend import EditableModel, Editor  # noqa: E402
from mend.evaluation import MendMethod, evaluate  # noqa: E402

# Records evaluated per k: enough groups to average over, within a CPU budget.
RECORDS_FOR_K = {1: 200, 10: 200, 100: 300, 1000: 1000}
KEYS = ("edit_success", "generalization", "locality")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sum-editor", required=True)
    parser.add_argument("--ls-editor", required=True)
    parser.add_argument("--ks", default="1,10,100,1000")
    parser.add_argument("--max-records", type=int, help="cap the records evaluated per k (quick runs; at least k)")
    parser.add_argument("--resume", action="store_true", help="keep entries already measured with these editors")
    args = parser.parse_args()
    transformers.utils.logging.disable_progress_bar()
    ks = [int(k) for k in args.ks.split(",")]
    editors = {"sum": args.sum_editor, "least_squares": args.ls_editor}
    results: dict[str, dict] = {"sum": {}, "least_squares": {}}
    previous = RESULTS / "edits_scaling.json"
    if args.resume and previous.exists():
        old = json.loads(previous.read_text())
        for mode in results:
            if old.get("editors", {}).get(mode) == editors[mode]:
                results[mode] = old.get(mode, {})
    base = EditableModel.load("smollm2-135m")
    for mode, path in editors.items():
        editor = Editor.load(path).eval()
        model = base.retargeted(editor.config.patterns)
        if editor.config.aggregation != mode:
            raise SystemExit(f"{path} aggregates by {editor.config.aggregation}, expected {mode}")
        for k in ks:
            wanted = RECORDS_FOR_K.get(k, k)
            if args.max_records:
                wanted = min(wanted, args.max_records)
            records = zsre_records(max(wanted, k))
            if results[mode].get(str(k), {}).get("n_records") == len(records):
                continue
            report = evaluate(MendMethod(editor), model, records, mode="batch", k=k, generate=False)
            results[mode][str(k)] = {key: round(report.summary[key], 4) for key in KEYS}
            results[mode][str(k)]["n_records"] = len(records)
            print(mode, k, results[mode][str(k)], flush=True)
            write_result("edits_scaling", {**results, "editors": editors, "ks": ks, "max_records": args.max_records})

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for ax, key in zip(axes, KEYS, strict=True):
        for mode, style in (("sum", "o-"), ("least_squares", "s-")):
            xs = sorted(int(k) for k in results[mode])
            ax.plot(xs, [results[mode][str(k)][key] for k in xs], style, label=mode)
        ax.set_xscale("log")
        ax.set_xlabel("simultaneous edits")
        ax.set_title(key)
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle("SmolLM2-135M, zsRE: summed vs least-squares aggregation")
    fig.tight_layout()
    fig.savefig(RESULTS / "edits_scaling.png", dpi=120)


if __name__ == "__main__":
    main()
