"""MEMIT and AlphaEdit rows for ``bench.edits_scaling`` (modes ``memit`` and ``alphaedit``).

Same records, groups of k and scoring as the MEND modes there. The facts' values (MEMIT's
per-fact optimisation, the expensive part) are computed once and shared: AlphaEdit reuses
MEMIT's, k = 1,000 reuses those of the 300 records of k = 100, and they are kept in
``--value-cache`` so a resumed run does not recompute them. The keys' second moment C comes
from the WikiBio passages (both files, ~170k tokens) and is cached under
``$MEND_CACHE/baselines``. Each row carries ``wall_s`` (the whole evaluation, scoring
included, as the other modes), ``edit_s`` (computing and applying the edits) and
``values_s`` (the part of ``edit_s`` spent optimising values not already cached).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

from mend.baselines import (
    AlphaEditConfig,
    AlphaEditMethod,
    MemitConfig,
    MemitMethod,
    ValueConfig,
    ValueStore,
)
from mend.baselines.covariance import SecondMoments, corpus_texts
from mend.baselines.keys import output_projection
from mend.data.wikibio import load_wikibio
from mend.evaluation import evaluate

BASELINE_MODES = ("memit", "alphaedit")
WIKIBIO = ("hallucination-train.json", "hallucination-edit.json")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("subject-keyed baselines (MEMIT, AlphaEdit)")
    group.add_argument("--memit", action="store_true", help="measure MEMIT rows")
    group.add_argument("--alphaedit", action="store_true", help="measure AlphaEdit rows")
    group.add_argument("--baseline-ks", default="100,1000", help="k for the baseline rows")
    group.add_argument("--baseline-layers", default="4,5,6,7,8", help="edited blocks (MLP output projections)")
    group.add_argument("--memit-lam", type=float, default=MemitConfig().lam, help="MEMIT's lambda")
    group.add_argument("--alphaedit-threshold", type=float, default=AlphaEditConfig().nullspace_threshold)
    group.add_argument("--alphaedit-l2", type=float, default=AlphaEditConfig().l2)
    group.add_argument("--value-steps", type=int, default=ValueConfig().steps)
    group.add_argument("--value-cache", default="runs/baselines/values-smollm2.safetensors",
                       help="safetensors file keeping the facts' values between runs")


def chosen_configs(args: argparse.Namespace) -> dict[str, MemitConfig | AlphaEditConfig]:
    """The config of each baseline asked for on the command line."""
    shared = dict(layers=[int(x) for x in args.baseline_layers.split(",")],
                  values=ValueConfig(steps=args.value_steps))
    configs: dict[str, MemitConfig | AlphaEditConfig] = {}
    if args.memit:
        configs["memit"] = MemitConfig(lam=args.memit_lam, **shared)
    if args.alphaedit:
        configs["alphaedit"] = AlphaEditConfig(nullspace_threshold=args.alphaedit_threshold, l2=args.alphaedit_l2,
                                               **shared)
    return configs


def measure(
    args: argparse.Namespace,
    base,
    configs: dict,
    results: dict[str, dict],
    records_for: Callable[[int], list],
    summary: Callable,
    save: Callable[[], None],
    shared_data,
    meta: dict,
) -> None:
    """Fill ``results[mode][str(k)]`` for every chosen baseline and k (k outer, so both
    methods have their k = 100 rows before the long k = 1,000 ones); ``save`` after each.
    ``meta`` gets C's cost and the values' cost per fact."""
    texts = [t for name in WIKIBIO for t in corpus_texts(load_wikibio(shared_data / "wikibio" / name).records)]
    store = ValueStore(args.value_cache)
    moments: dict[int, SecondMoments] = {}
    methods = {}
    for mode, config in configs.items():
        cov = moments.setdefault(config.covariance_tokens, SecondMoments(texts, max_tokens=config.covariance_tokens))
        cls = MemitMethod if mode == "memit" else AlphaEditMethod
        methods[mode] = cls(config=config, moments=cov, store=store)
        started = time.perf_counter()
        cov.get(base, {layer: output_projection(base, layer) for layer in config.layers})
        meta.setdefault("covariance_s", {})[mode] = round(time.perf_counter() - started, 1)
    for k in [int(x) for x in args.baseline_ks.split(",") if x]:
        records = records_for(k)
        for mode, method in methods.items():
            rows = results[mode]
            if rows.get(str(k), {}).get("n_records") == len(records):
                continue
            values_before = store.seconds
            started = time.perf_counter()
            report = evaluate(method, base, records, mode="batch", k=k, generate=False)
            row = summary(report)
            row["edit_s"] = round(sum(r["edit_seconds"] for r in report.rows), 1)
            row["values_s"] = round(store.seconds - values_before, 1)
            row["wall_s"] = round(time.perf_counter() - started, 1)
            rows[str(k)] = row
            print("zsre", mode, k, row, flush=True)
            if store.computed:
                meta["values_s_per_fact"] = round(store.seconds / store.computed, 3)
            save()
