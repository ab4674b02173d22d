"""What limits least squares at many simultaneous edits: two references without an editor.

    python -m bench.edits_ceiling --k 100 --lambdas 1,3,10,30,100 --c-locs 1,10
    python -m bench.edits_ceiling --k 1000 --c-locs 1,10,30
    python -m bench.edits_ceiling --k 1000 --c-locs 10,30,100 --direct-steps 90
    python -m bench.edits_ceiling --k 100 --c-locs 100 --direct-steps 90 --blocks 20-29

A least-squares editor asks, per edited token and matrix, for an output shift, and the
solve finds the one change per matrix that gives all keys their shifts as nearly as the
regulariser allows (``mend/aggregations/least_squares.py``). Both references edit the same matrices as
the editors (the MLP of SmolLM2's last 3 blocks) and are scored on the records and
scoring of ``bench.edits_tradeoff``:

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
import re
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import transformers
from torch import Tensor, nn

from bench.common import RESULTS, SHARED_DATA, write_result
from bench.corrections_data import zsre_records
from mend import EditableModel, Editor
from mend.aggregations import KeyShifts, LeastSquaresChange
from mend.capture import record_layer_io
from mend.data import load_zsre
from mend.data.records import EditRecord, LocalityProbe
from mend.edit import Edit, EditRequest
from mend.editor.config import EditorConfig
from mend.editor.editor import base_model_info
from mend.evaluation import evaluate
from mend.evaluation.methods import WeightSnapshot, trainable_targets
from mend.models.targets import layer_template
from mend.models.tasks import TokenBatch, per_example_nll
from mend.training.losses import kl_on_scored, token_hits
from mend.training.trainer import generic_texts

KEYS = ("edit_success", "generalization", "locality")
CHUNK = 32


@dataclass
class Rows:
    """One edit's keys and optimised shifts per matrix."""

    keys: dict[str, Tensor]
    shifts: dict[str, Tensor]


def edited_blocks(model: EditableModel) -> list[int]:
    """The decoder blocks the edited matrices sit in, in order."""
    return sorted({layer_template(t.module_name)[1] for t in model.targets})


def first_block(model: EditableModel) -> int:
    """The earliest decoder block an edited matrix sits in."""
    return edited_blocks(model)[0]


def hidden_before(model: EditableModel, batch: TokenBatch, start: int) -> Tensor:
    """The hidden states entering decoder block ``start`` (unedited: edits sit at or after it)."""
    seen: dict[str, Tensor] = {}
    hook = model.model.model.layers[start].register_forward_pre_hook(
        lambda m, args: seen.setdefault("h", args[0])
    )
    try:
        with torch.no_grad():
            model.task.logits(model.model, batch)
    finally:
        hook.remove()
    return seen["h"].detach()


@contextmanager
def starting_at(model: EditableModel, start: int, hidden: Tensor) -> Iterator[None]:
    """Forward passes inside skip the decoder blocks before ``start``, which would only
    recompute ``hidden`` (the language-model head dominates what is left)."""
    decoder = model.model.model
    layers = decoder.layers
    decoder.layers = nn.ModuleList(list(layers)[start:])
    hook = decoder.layers[0].register_forward_pre_hook(lambda m, args: (hidden, *args[1:]))
    try:
        yield
    finally:
        hook.remove()
        decoder.layers = layers


def optimised_rows(
    model: EditableModel, records: Sequence[EditRecord], steps: int, lr: float, l2: float
) -> tuple[list[Rows], dict]:
    """Every record's keys and the shifts that make it hold alone (batched: records in
    one batch do not see each other, so each one's optimum is its own)."""
    names = [t.module_name for t in model.targets]
    first = first_block(model)
    out: list[Rows] = []
    nll_after, exact_after = [], []
    for start in range(0, len(records), CHUNK):
        chunk = records[start : start + CHUNK]
        batch = model.task.batch([r.prompt for r in chunk], [r.target for r in chunk])
        mask = batch.scored_masks[model.task.scored_sequence]
        with record_layer_io(model.model, names) as seen:
            hidden = hidden_before(model, batch, first)
        keys = {n: seen[n][0].detach() for n in names}
        shifts = {
            n: torch.zeros(
                *mask.shape, model.model.get_submodule(n).out_features, requires_grad=True
            )
            for n in names
        }
        hooks = [
            model.model.get_submodule(n).register_forward_hook(
                lambda m, a, o, s=shifts[n], keep=mask: o + s * keep[..., None]
            )
            for n in names
        ]
        optimizer = torch.optim.Adam(shifts.values(), lr=lr)
        try:
            with starting_at(model, first, hidden):
                for step in range(steps + 1):
                    logits = model.task.logits(model.model, batch)
                    nll = per_example_nll(logits, batch.scored_labels)
                    if step == steps:  # the last forward only scores
                        break
                    penalty = sum((s * mask[..., None]).square().sum() for s in shifts.values())
                    optimizer.zero_grad(set_to_none=True)
                    (nll.sum() + l2 * penalty).backward()
                    optimizer.step()
        finally:
            for h in hooks:
                h.remove()
        exact = token_hits(logits, batch.scored_labels)[1]
        nll_after += nll.tolist()
        exact_after += exact.float().tolist()
        for i in range(len(chunk)):
            out.append(
                Rows(
                    {n: keys[n][i][mask[i]] for n in names},
                    {n: shifts[n].detach()[i][mask[i]] for n in names},
                )
            )
    alone = {
        "nll": sum(nll_after) / len(nll_after),
        "exact_match": sum(exact_after) / len(exact_after),
    }
    return out, alone


@dataclass
class SolvedShifts:
    """Edits from optimised rows, solved together like a least-squares editor's."""

    rows: dict[str, Rows]  # by record id
    precond: dict[str, Tensor]
    lam: float
    info: dict
    name: str = "ideal_shifts"

    def apply(self, model, records):
        memory = {}
        for name, precond in self.precond.items():
            keys = [self.rows[r.record_id].keys[name] for r in records]
            memory[name] = KeyShifts(
                torch.cat(keys),
                torch.cat([self.rows[r.record_id].shifts[name] for r in records]),
                torch.cat([torch.full((len(k),), i, dtype=torch.long) for i, k in enumerate(keys)]),
                torch.tensor(self.lam),
                precond,
            )
        requests = [EditRequest(r.prompt, r.target, r.record_id) for r in records]
        return Edit(LeastSquaresChange(memory), model.layouts, requests, self.info, model).apply()


@dataclass
class DirectChange:
    """FT+L for many simultaneous edits: the edited matrices themselves are optimised
    (Adam) on every edit's NLL plus ``c_loc`` times the KL on locality probes held apart
    from the evaluated records, with gradients accumulated over chunks of 32. A direct
    optimiser sees the edits' loss at every step, where an editor gets one gradient: it
    bounds from below what a change of these matrices can reach, not what an editor can."""

    probes: list[LocalityProbe]
    c_loc: float
    steps: int
    lr: float = 5e-4
    probe_chunks: int = 4  # of 32 probes per step, cycling through the pool
    name: str = "direct"

    def apply(self, model, records):
        snapshot = WeightSnapshot(model)
        first = first_block(model)
        edits = self._chunks(model, [(r.prompt, r.target) for r in records], first)
        probes = self._chunks(model, [(p.prompt, p.answer) for p in self.probes], first)
        with torch.no_grad():
            before = [self._logits(model, first, c) for c in probes]
        with trainable_targets(model) as weights:
            optimizer = torch.optim.Adam(weights, lr=self.lr)
            for step in range(self.steps):
                optimizer.zero_grad(set_to_none=True)
                held = 0
                for chunk in edits:
                    logits = self._logits(model, first, chunk)
                    labels = chunk[0].scored_labels
                    held += int(token_hits(logits, labels)[1].sum())
                    (per_example_nll(logits, labels).sum() / len(records)).backward()
                if held == len(records) and self.c_loc == 0:
                    break
                if self.c_loc:
                    for i in range(self.probe_chunks):
                        index = (step * self.probe_chunks + i) % len(probes)
                        chunk = probes[index]
                        kl = kl_on_scored(
                            before[index], self._logits(model, first, chunk), chunk[0].scored_labels
                        )
                        (self.c_loc * kl / self.probe_chunks).backward()
                optimizer.step()
        return snapshot

    @staticmethod
    def _chunks(model, pairs, first):
        # Chunks of similar prompt length: logits are computed from the chunk's first
        # scored position on, so mixed lengths would project mostly padding and prompt.
        pairs = sorted(pairs, key=lambda pair: len(model.tokenizer(pair[0])["input_ids"]))
        out = []
        for start in range(0, len(pairs), CHUNK):
            part = pairs[start : start + CHUNK]
            batch = model.task.batch([p for p, _ in part], [t for _, t in part])
            out.append((batch, hidden_before(model, batch, first)))
        return out

    @staticmethod
    def _logits(model, first, chunk):
        batch, hidden = chunk
        with starting_at(model, first, hidden):
            return model.task.logits(model.model, batch)


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


def mlp_of_blocks(model: EditableModel, blocks: str) -> EditableModel:
    """``model`` editing the matrices it edits (the MLP's) in decoder blocks ``FIRST-LAST``
    (inclusive) instead."""
    match = re.fullmatch(r"(\d+)-(\d+)", blocks)
    if not match or not 0 <= int(match[1]) <= int(match[2]) < model.model.config.num_hidden_layers:
        raise SystemExit(f"--blocks {blocks}: not a range of this model's decoder blocks")
    templates = sorted({layer_template(t.module_name)[0] for t in model.targets})
    numbers = range(int(match[1]), int(match[2]) + 1)
    return model.retargeted([re.escape(name.format(n)) for name in templates for n in numbers])


def direct(model: EditableModel, records: list[EditRecord], args, save, kept) -> None:
    probes = held_apart_probes(zsre_records(1000))
    if args.blocks:
        model = mlp_of_blocks(model, args.blocks)
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
    for p in model.model.parameters():
        p.requires_grad_(False)
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
