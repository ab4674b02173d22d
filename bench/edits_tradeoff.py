"""What limits least-squares editing at 1,000 simultaneous edits: strength vs locality.

    python -m bench.edits_tradeoff \\
        --point runs/bench-ls2/train/best@0.03 --point runs/bench-ls2/train/best@1 \\
        --point runs/bench-ls2/train/best@10 --point runs/bench-ls-wide/train/best@1 [--k 1000]

Each ``--point EDITOR@SCALE`` evaluates a least-squares editor with its regularisers
multiplied by SCALE (``Editor.scale_regularisers``) on k simultaneous zsRE edits, the
same records and scoring as ``bench.edits_scaling``; ``EDITOR@SCALE@PASSES`` edits in
that many capture passes (``Editor.edit(passes=...)``, default 1). Editors that edit other matrices
(``configs/zsre-smollm2-ls-wide.yaml``: the down projections of ten blocks) test whether
room in the edited matrices is the limit. Writes ``bench/results/edits_tradeoff.json``
(``{"points": [{"editor", "lambda_scale", "passes", "matrices", "key_dims", "edit_success",
"generalization", "locality"}], ...}``) after every point; ``--resume`` keeps points
already measured with the same k.
"""

from __future__ import annotations

import argparse
import json

import transformers

from bench.common import RESULTS, write_result
from bench.corrections_data import zsre_records
from mend import EditableModel, Editor
from mend.evaluation import MendMethod, evaluate

KEYS = ("edit_success", "generalization", "locality")


def _parse(point: str) -> tuple[str, float, int]:
    path, *settings = point.split("@")
    if not path or len(settings) not in (1, 2):
        raise SystemExit(f"--point expects EDITOR@SCALE or EDITOR@SCALE@PASSES, got {point!r}")
    return path, float(settings[0]), int(settings[1]) if len(settings) == 2 else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--point", action="append", required=True, help="EDITOR@LAMBDA_SCALE[@PASSES] (repeatable)")
    parser.add_argument("--k", type=int, default=1000, help="simultaneous edits (and records)")
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args()
    transformers.utils.logging.disable_progress_bar()
    points: list[dict] = []
    previous = RESULTS / "edits_tradeoff.json"
    if args.resume and previous.exists():
        old = json.loads(previous.read_text())
        points = old["points"] if old.get("k") == args.k else []
    records = zsre_records(args.k)
    base = EditableModel.load("smollm2-135m")
    for path, scale, passes in map(_parse, args.point):
        if any((p["editor"], p["lambda_scale"], p.get("passes", 1)) == (path, scale, passes) for p in points):
            continue
        editor = Editor.load(path).eval()
        editor.scale_regularisers(scale)
        model = base.retargeted(editor.config.patterns)
        report = evaluate(MendMethod(editor, passes=passes), model, records, mode="batch", k=args.k, generate=False)
        point = {
            "editor": path,
            "lambda_scale": scale,
            "passes": passes,
            "matrices": len(editor.targets),
            "key_dims": sum(t.d_in for t in editor.targets),
            **{key: round(report.summary[key], 4) for key in KEYS},
        }
        points.append(point)
        print(point, flush=True)
        write_result("edits_tradeoff", {"k": args.k, "n_records": len(records), "points": points})


if __name__ == "__main__":
    main()
