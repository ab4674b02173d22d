"""What limits least squares at many simultaneous edits: two references without an editor.

    python -m bench.edits_ceiling --k 100 --lambdas 1,3,10,30,100 --c-locs 1,10
    python -m bench.edits_ceiling --k 1000 --c-locs 1,10,30
    python -m bench.edits_ceiling --k 1000 --c-locs 10,30,100 --direct-steps 90
    python -m bench.edits_ceiling --k 100 --c-locs 100 --direct-steps 90 --blocks 20-29

A least-squares editor asks, per edited token and matrix, for an output shift, and the
solve finds the one change per matrix that gives all keys their shifts as nearly as the
regulariser allows (``mend/aggregations/least_squares.py``). Both references
(:mod:`mend.evaluation.ceiling`) edit the same matrices as the editors (the MLP of
SmolLM2's last 3 blocks) and are scored on the records and scoring of
``bench.edits_tradeoff``:

- ``ideal_shifts`` (``--lambdas``): the editor network replaced by optimisation. For
  every edit alone, each edited token's output shift at each matrix is fitted (Adam, the
  edit's NLL plus a small L2 penalty) until the edit holds by itself; the keys and
  shifts of all k edits are then solved together as a least-squares editor's are
  (relative regulariser ``lambda`` for every matrix, penalty = the generic-key covariance
  fitted as the trainer fits it).
- ``direct`` (``--c-locs``): no solve at all. The matrices themselves are optimised on
  all k edits' NLL plus ``c_loc`` times a KL on locality probes held apart from the
  evaluated records (FT+L made to fit a thousand edits). It sees the edits' loss at every
  step where an editor gets one gradient, so it bounds from below what changing these
  matrices can reach (a bound that rises with ``--direct-steps`` until the
  optimisation converges). ``--blocks`` optimises the MLP of other decoder blocks
  instead (more blocks: more room, and a slower step), to ask whether a wider set of
  matrices than the editors' could hold the edits at all.

Writes ``bench/results/edits_ceiling.json`` after every point, by method and k:
``{"ideal_shifts": {"100": {"alone": {"nll", "exact_match"}, "points": [{"lambda",
"edit_success", "generalization", "locality"}]}}, "direct": {"1000": {"points": [{"c_loc",
"steps", "lr", "blocks", ...}]}}}``; runs with other k or methods keep what the file
holds, and points already measured with the same settings are kept and skipped.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence

import torch
import transformers

from bench.common import RESULTS, SHARED_DATA, write_result
from bench.corrections_data import zsre_records
from mend import EditableModel, Editor
from mend.data import load_zsre
from mend.data.records import EditRecord, LocalityProbe
from mend.editor.config import EditorConfig
from mend.editor.editor import base_model_info
from mend.evaluation import evaluate
from mend.evaluation.ceiling import (
    DirectChange,
    SolvedShifts,
    edited_blocks,
    mlp_of_blocks,
    optimised_rows,
)
from mend.training.trainer import generic_texts

KEYS = ("edit_success", "generalization", "locality")


def held_apart_probes(evaluated: Sequence[EditRecord]) -> list[LocalityProbe]:
    """Locality probes of zsRE training records that are not evaluated (the 1,000
    evaluated ones take 463 of the training file's records)."""
    used = {r.prompt.strip().lower() for r in evaluated}
    train = load_zsre(SHARED_DATA / "zsre" / "zsre_mend_train-1k.json").records
    return [p for r in train if r.prompt.strip().lower() not in used for p in r.locality]


def _summary(report) -> dict:
    return {key: round(report.summary[key], 4) for key in KEYS}


def ideal_shifts(model: EditableModel, records: list[EditRecord], args, save, kept) -> None:
    # The penalty a least-squares editor of configs/zsre-smollm2-ls.yaml would carry.
    editor = Editor.for_model(
        model, EditorConfig(aggregation="least_squares", key_preconditioning="covariance")
    )
    train = load_zsre(SHARED_DATA / "zsre" / "zsre_mend_train-1k.json").records
    editor.fit_key_covariance(model, generic_texts(train))
    precond = {
        t.module_name: getattr(editor, f"key_precond_{i}") for i, t in enumerate(editor.targets)
    }
    started = time.perf_counter()
    rows, alone = optimised_rows(model, records, args.steps, args.lr, args.l2)
    section = {
        "k": args.k,
        "key_rows_per_matrix": sum(len(next(iter(r.keys.values()))) for r in rows),
        "shifts": {"steps": args.steps, "lr": args.lr, "l2": args.l2},
        "optimise_s": round(time.perf_counter() - started, 1),
        "alone": {key: round(value, 4) for key, value in alone.items()},
        "points": kept(
            "ideal_shifts", {"shifts": {"steps": args.steps, "lr": args.lr, "l2": args.l2}}
        ),
    }
    print("optimised shifts", section, flush=True)
    by_id = {r.record_id: row for r, row in zip(records, rows, strict=True)}
    for lam in (float(x) for x in args.lambdas.split(",")):
        if any(p["lambda"] == lam for p in section["points"]):
            continue
        method = SolvedShifts(by_id, precond, lam, base_model_info(model))
        report = evaluate(method, model, records, mode="batch", k=args.k, generate=False)
        section["points"].append({"lambda": lam, **_summary(report)})
        print(section["points"][-1], flush=True)
        save("ideal_shifts", section)


def direct(model: EditableModel, records: list[EditRecord], args, save, kept) -> None:
    probes = held_apart_probes(zsre_records(1000))
    if args.blocks:
        try:
            model = mlp_of_blocks(model, args.blocks)
        except ValueError as e:
            raise SystemExit(f"--blocks: {e}") from None
    # Points carry their own steps, lr and blocks, so runs of different length or width
    # sit side by side (how far the reference moves with more optimisation or more
    # matrices is part of what it shows).
    section = {"k": args.k, "n_probes": len(probes), "points": kept("direct", {"n_probes": len(probes)})}
    blocks = edited_blocks(model)
    run = {"steps": args.direct_steps, "lr": args.direct_lr, "blocks": f"{blocks[0]}-{blocks[-1]}"}
    for c_loc in (float(x) for x in args.c_locs.split(",")):
        point = {"c_loc": c_loc, **run}
        if any(all(p.get(k) == v for k, v in point.items()) for p in section["points"]):
            continue
        method = DirectChange(probes, c_loc, args.direct_steps, args.direct_lr)
        started = time.perf_counter()
        report = evaluate(method, model, records, mode="batch", k=args.k, generate=False)
        section["points"].append(
            {**point, **_summary(report), "wall_s": round(time.perf_counter() - started)}
        )
        print(section["points"][-1], flush=True)
        save("direct", section)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--k", type=int, default=1000, help="simultaneous edits (and records)")
    parser.add_argument(
        "--lambdas", help="ideal shifts solved at these relative regularisers, e.g. 1,3,10,30"
    )
    parser.add_argument("--steps", type=int, default=30, help="Adam steps on each edit's shifts")
    parser.add_argument("--lr", type=float, default=0.05, help="Adam lr on the shifts")
    parser.add_argument(
        "--l2", type=float, default=1e-3, help="penalty on the shifts' squared norm"
    )
    parser.add_argument(
        "--c-locs", help="direct optimisation with these locality weights, e.g. 1,10"
    )
    parser.add_argument("--direct-steps", type=int, default=30)
    parser.add_argument("--direct-lr", type=float, default=1e-3)
    parser.add_argument(
        "--blocks", help="direct optimisation of the MLP of these decoder blocks, e.g. 20-29 "
        "(default: the editors' matrices, the last 3 blocks)"
    )
    args = parser.parse_args()
    if not (args.lambdas or args.c_locs):
        raise SystemExit("nothing to measure: give --lambdas and/or --c-locs")
    transformers.utils.logging.disable_progress_bar()
    torch.manual_seed(0)
    records = zsre_records(args.k)
    if len({r.record_id for r in records}) != len(records):
        raise SystemExit("record ids are not unique")
    model = EditableModel.load("smollm2-135m")
    path = RESULTS / "edits_ceiling.json"
    result = json.loads(path.read_text()) if path.exists() else {}
    result.pop("machine", None)

    def save(section: str, value: dict) -> None:
        result.setdefault(section, {})[str(args.k)] = value
        write_result("edits_ceiling", result)

    def kept(section: str, settings: dict) -> list[dict]:
        """Points measured earlier with the same k and settings (a new run adds to them)."""
        old = result.get(section, {}).get(str(args.k), {})
        return (
            list(old.get("points", [])) if all(old.get(k) == v for k, v in settings.items()) else []
        )

    if args.lambdas:
        ideal_shifts(model, records, args, save, kept)
    if args.c_locs:
        direct(model, records, args, save, kept)


if __name__ == "__main__":
    main()
