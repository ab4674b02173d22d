"""The pipeline's evaluation: MEND against the FT and FT+L baselines, a multi-edit
curve, and PNG plots. Thin over :mod:`mend.evaluation`.

``evaluate_candidate`` returns plain data (JSON-ready): one summary per method on
single edits, and per (method, k) the metrics of ``k`` simultaneous edits.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from mend.data import EditRecord
from mend.editor.editor import Editor
from mend.evaluation import FineTuneMethod, MendMethod, aggregate, evaluate
from mend.models.editable import EditableModel
from mend.pipeline.config import EvalSpec

Progress = Callable[[str, float], None]
TABLE_KEYS = ("edit_success", "generalization", "locality", "edit_success_em", "generalization_em",
              "locality_em", "edit_generated_em", "edit_success_pre", "ppl_drawdown")
CURVE_KEYS = ("edit_success", "generalization", "locality")


def make_methods(editor: Editor, train: Sequence[EditRecord], spec: EvalSpec) -> dict[str, Any]:
    """The methods ``spec`` names; for a scoped editor also ``mend_sum``, the same editor's
    edits summed into the weights (what a server without routing gets from a merged
    version), evaluated wherever ``mend`` is."""
    pool = [p for r in train for p in r.locality]
    ft = spec.ft
    methods = {
        "mend": MendMethod(editor),
        "ft": FineTuneMethod(lr=ft.lr, max_steps=ft.max_steps, name="ft"),
        "ft_l": FineTuneMethod(lr=ft.lr, max_steps=ft.max_steps, c_loc=ft.c_loc, locality_pool=pool, name="ft_l"),
    }
    if editor.scope is not None:
        methods["mend_sum"] = MendMethod(editor, aggregation="sum", name="mend_sum")
    return methods


def _with_summed(names: Sequence[str], methods: dict[str, Any]) -> list[str]:
    """``names``, with ``mend_sum`` after ``mend`` when there is one."""
    return [x for name in names for x in ((name, "mend_sum") if name == "mend" and "mend_sum" in methods else (name,))]


def _chunked(method, model, records, *, mode, k, generate, on_chunk: Callable[[int], None]) -> list[dict]:
    """``evaluate`` in chunks of whole groups, reporting after each chunk."""
    size = k * max(1, math.ceil(8 / k))
    rows: list[dict] = []
    for start in range(0, len(records), size):
        report = evaluate(method, model, records[start : start + size], mode=mode, k=k,
                          generate=generate, progress=False)
        rows.extend(report.rows)
        on_chunk(len(rows))
    return rows


def evaluate_candidate(
    model: EditableModel, editor: Editor, test: Sequence[EditRecord], train: Sequence[EditRecord],
    spec: EvalSpec, progress: Progress | None = None, show_bar: bool = True,
) -> dict[str, Any]:
    """Single-edit tables for ``spec.methods`` and the multi-edit curve (for a scoped
    editor with ``mend_sum`` beside ``mend`` in both: :func:`make_methods`).

    MEND is evaluated on the first ``spec.n_records`` test records, the fine-tuning
    baselines on the first ``spec.baseline_records`` of those; each table's ``n`` says
    how many records it averages.

    ``progress(what, fraction)`` hears of every finished chunk; ``show_bar`` draws a
    terminal bar over every edit of every stage, which is what ends the evaluation.
    The bar gives no time estimate: the methods' costs per edit differ by orders of
    magnitude (fine-tuning against MEND), so a rate measured on one stage says nothing
    about the next.
    """
    progress = progress or (lambda _what, _fraction: None)
    methods = make_methods(editor, train, spec)
    single_methods = _with_summed(spec.methods, methods)
    batch_methods = _with_summed(spec.batch_methods, methods)
    single_records = list(test[: spec.n_records] if spec.n_records else test)
    baseline_records = single_records[: spec.baseline_records] if spec.baseline_records else single_records
    records_of = {name: single_records if name.startswith("mend") else baseline_records for name in single_methods}
    curve_records = list(test[: spec.batch_records] if spec.batch_records else test)
    # k=1 simultaneous edits are single edits: reused when the single-edit run covered the curve's records.
    reused = {m for m in single_methods if len(records_of[m]) >= len(curve_records)}
    curve_jobs = [(m, k) for k in spec.batch_sizes for m in batch_methods if not (k == 1 and m in reused)]
    total = sum(map(len, records_of.values())) + len(curve_jobs) * len(curve_records)
    done = 0
    bar = tqdm(total=total, desc="evaluating", unit="edit", disable=not show_bar, dynamic_ncols=True,
               bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} edits [{elapsed}{postfix}]")

    def tick(what: str, n: int) -> None:
        bar.update(done + n - bar.n)
        bar.set_postfix_str(what, refresh=True)
        progress(what, min(1.0, (done + n) / max(total, 1)))

    tables: dict[str, dict] = {}
    rows_by_method: dict[str, list[dict]] = {}
    seconds: dict[str, float] = {}
    for name in single_methods:
        tick(f"{name} single edits", 0)
        t0 = time.perf_counter()
        rows = _chunked(methods[name], model, records_of[name], mode="single", k=1, generate=spec.generate,
                        on_chunk=lambda n, name=name: tick(f"{name} single edits", n))
        done += len(records_of[name])
        seconds[name] = round(time.perf_counter() - t0, 1)
        rows_by_method[name] = rows
        summary = aggregate(rows)
        summary["seconds_per_edit"] = sum(r["edit_seconds"] for r in rows) / max(len(rows), 1)
        summary["n"] = len(rows)
        tables[name] = summary

    curve: list[dict] = []
    for k in spec.batch_sizes:
        for name in batch_methods:
            if k == 1 and name in reused:
                # Same records prefix, same metrics.
                rows = rows_by_method[name][: len(curve_records)]
            else:
                tick(f"{name} {k} simultaneous edits", 0)
                rows = _chunked(methods[name], model, curve_records, mode="batch", k=k, generate=False,
                                on_chunk=lambda n, name=name, k=k: tick(f"{name} {k} simultaneous edits", n))
                done += len(curve_records)
            summary = aggregate(rows)
            curve.append({"method": name, "k": k, "n": len(rows), **{key: summary.get(key) for key in CURVE_KEYS}})
    bar.close()
    progress("evaluation done", 1.0)
    return {
        "tables": tables,
        "curve": curve,
        "n_single": len(single_records),
        "n_baseline": len(baseline_records),
        "n_curve": len(curve_records),
        "seconds": seconds,
        "rows": rows_by_method,
    }


# -- plots ------------------------------------------------------------------------------
def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_training_curves(history: Sequence[dict], path: Path) -> Path:
    """Loss and edit/locality accuracy against the training step (train and validation)."""
    plt = _pyplot()
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    steps = [h["step"] for h in history]
    for key, style in (("train/loss", "-"), ("val/loss", "-o")):
        xs = [h["step"] for h in history if key in h]
        if xs:
            ax_loss.plot(xs, [h[key] for h in history if key in h], style, label=key, markersize=3)
    for key, style in (("train/edit_acc", "-"), ("val/edit_acc", "-o"), ("val/loc_agree", "-s"),
                       ("val/edit_acc_pre", ":")):
        xs = [h["step"] for h in history if key in h]
        if xs:
            ax_acc.plot(xs, [h[key] for h in history if key in h], style, label=key, markersize=3)
    ax_loss.set(title="meta-training loss", xlabel="step", ylabel="loss")
    ax_acc.set(title="edit accuracy and locality", xlabel="step", ylabel="token accuracy", ylim=(0, 1.02))
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        if steps:
            ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_edit_curve(curve: Sequence[dict], path: Path) -> Path:
    """Edit success, generalization and locality against the number of simultaneous edits."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(CURVE_KEYS), figsize=(4 * len(CURVE_KEYS), 3.6), sharex=True)
    for ax, key in zip(axes, CURVE_KEYS, strict=True):
        for method in dict.fromkeys(row["method"] for row in curve):
            rows = sorted((r for r in curve if r["method"] == method and r.get(key) is not None), key=lambda r: r["k"])
            ax.plot([r["k"] for r in rows], [r[key] for r in rows], "-o", label=method)
        ax.set(title=key, xlabel="simultaneous edits (k)", ylim=(0, 1.02))
        ax.set_xscale("log", base=2)
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def table_rows(tables: dict[str, dict]) -> list[dict]:
    """One row per method, rounded, for reports and Prefect table artifacts."""
    out = []
    for name, summary in tables.items():
        row: dict[str, Any] = {"method": name, "n": summary.get("n")}
        for key in (*TABLE_KEYS, "seconds_per_edit"):
            if summary.get(key) is not None:
                row[key] = round(summary[key], 4)
        out.append(row)
    return out
