"""Edit quality on SmolLM2-135M: meta-train an editor (or load one), then evaluate MEND,
FT and FT+L under the same evaluation on held-out records.

    python -m bench.edit_quality zsre          # -> bench/results/zsre_smollm2.json
    python -m bench.edit_quality counterfact   # -> bench/results/counterfact_smollm2.json
    python -m bench.edit_quality zsre --editor runs/zsre-smollm2/best --limit 100
    python -m bench.edit_quality counterfact --set init_editor=runs/bench-zsre/train/best
    python -m bench.edit_quality zsre --methods mend --set init_editor=...   # re-run MEND only

Methods not run (``--methods``) keep their figures from the existing results file when
it was measured on the same records: the baselines do not depend on the editor.

Per-edit JSONL records and the aggregate JSON of every method go to
``runs/bench-<dataset>/eval``; the results file holds the summary the issue asks for.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import transformers
import yaml

from bench.common import RESULTS, ROOT, SHARED_DATA, write_result
from mend.data import load_counterfact, load_zsre
from mend.editor.editor import Editor
from mend.evaluation import FineTuneMethod, MendMethod, evaluate
from mend.models.editable import EditableModel
from mend.training.config import TrainConfig
from mend.training.data import load_training_data
from mend.training.trainer import Trainer

SUITES = {
    "zsre": {
        "config": ROOT / "configs" / "zsre-smollm2.yaml",
        "result": "zsre_smollm2",
    },
    "counterfact": {
        "config": ROOT / "configs" / "counterfact-smollm2.yaml",
        "result": "counterfact_smollm2",
    },
}
KEYS = ["edit_success", "generalization", "locality", "edit_success_em", "generalization_em",
        "edit_generated_em", "generalization_generated_em", "locality_em", "edit_success_pre",
        "edit_success_em_pre"]


def eval_records(suite: str, train_ids: set[str]):
    if suite == "zsre":
        return load_zsre(SHARED_DATA / "zsre" / "zsre_mend_eval-dev-537.json").records
    # CounterFact in its original ROME format; cases also present in the training file
    # (216 of the 500 are) are dropped so nothing evaluated was trained on.
    records = load_counterfact(SHARED_DATA / "counterfact" / "counterfact_rome_500.json").records
    return [r for r in records if r.record_id not in train_ids]


def carry_over(result: str, summaries: dict, records) -> list[str]:
    """Fill methods not run now from the previous results file if it scored the same records."""
    path = RESULTS / f"{result}.json"
    if not path.exists():
        return []
    previous = json.loads(path.read_text())
    if previous.get("n_eval_records") != len(records):
        return []
    carried = [name for name in ("ft", "ft_l") if name not in summaries and name in previous]
    for name in carried:
        summaries[name] = previous[name]
    return carried


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("suite", choices=sorted(SUITES))
    parser.add_argument("--editor", help="evaluate this editor instead of training one")
    parser.add_argument("--limit", type=int, help="evaluate the first N held-out records")
    parser.add_argument("--methods", default="mend,ft,ft_l")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a training config field, e.g. --set max_minutes=10 (repeatable)")
    parser.add_argument("--run-dir", help="training and per-edit output folder (default runs/bench-<suite>)")
    parser.add_argument("--batch-k", type=int, default=10, help="also evaluate k simultaneous and k sequential MEND edits (0: skip)")
    args = parser.parse_args()
    transformers.utils.logging.disable_progress_bar()
    suite = SUITES[args.suite]
    out = Path(args.run_dir) if args.run_dir else ROOT / "runs" / f"bench-{args.suite}"

    overrides = {k: yaml.safe_load(v) for k, v in (item.split("=", 1) for item in args.overrides)}
    config = TrainConfig.from_yaml(suite["config"], {**overrides, "output_dir": str(out / "train")})
    data = load_training_data(config.data, config.seed)
    model = EditableModel.load(config.model, dtype=config.dtype, patterns=config.editor.patterns)

    train_minutes = None
    if args.editor:
        editor = Editor.load(args.editor)
        train_minutes = editor.metadata.get("train_minutes")
    else:
        started = time.monotonic()
        result = Trainer(config, model, data).train(resume=True)
        train_minutes = (time.monotonic() - started) / 60
        editor = Editor.load(result.best_dir)
        print(f"trained {result.steps} steps in {train_minutes:.1f} min ({result.stopped})")

    train_ids = {r.record_id for r in data.train} | {r.record_id for r in data.validation}
    records = eval_records(args.suite, train_ids)[: args.limit]
    pool = [p for r in data.train for p in r.locality]
    methods = {
        "mend": MendMethod(editor),
        "ft": FineTuneMethod(name="ft"),
        "ft_l": FineTuneMethod(name="ft_l", c_loc=1.0, locality_pool=pool),
    }
    summaries, reports = {}, {}
    for name in args.methods.split(","):
        report = evaluate(methods[name], model, records, mode="single")
        report.write(out / "eval")
        summaries[name] = {k: round(report.summary[k], 4) for k in KEYS if k in report.summary}
        summaries[name]["seconds_per_edit"] = round(sum(r["edit_seconds"] for r in report.rows) / len(report.rows), 4)
        reports[name] = report
        print(name, json.dumps(summaries[name]))
    summaries.setdefault("mend", {})["train_minutes"] = round(train_minutes, 2) if train_minutes else None
    carried = carry_over(suite["result"], summaries, records)

    multi = {}
    if args.batch_k and "mend" in args.methods:
        for mode in ("batch", "sequential"):
            report = evaluate(methods["mend"], model, records, mode=mode, k=args.batch_k)
            report.write(out / "eval")
            multi[f"{mode}_k{args.batch_k}"] = {k: round(report.summary[k], 4) for k in KEYS[:6] if k in report.summary}
            print(mode, json.dumps(multi[f"{mode}_k{args.batch_k}"]))

    write_result(suite["result"], {
        **summaries,
        "mend_multi_edit": multi,
        "n_eval_records": len(records),
        "eval_data": "zsre_mend_eval-dev-537.json" if args.suite == "zsre" else "counterfact_rome_500.json minus training cases",
        "train_data_hash": data.train_hash,
        "editor": str(args.editor or (out / "train" / "best")),
        "command": " ".join(["python -m bench.edit_quality", args.suite]
                            + ([f"--editor {args.editor}"] if args.editor else [])
                            + ([f"--methods {args.methods}"] if args.methods != "mend,ft,ft_l" else [])
                            + ([f"--run-dir {args.run_dir}"] if args.run_dir else [])
                            + [f"--set {item}" for item in args.overrides]),
        "init_editor": config.init_editor,
        "carried_over": carried,
    })


if __name__ == "__main__":
    main()
