"""MkDocs hook: benchmark figures and API reference pages, generated at build time.

Every figure on the documentation site comes from a ``bench/results/*.json`` file when
the site is built, so no figure is typed twice and none goes stale silently. A page asks
for one with a marker:

    {{ bench_table apply_queue }}            a table (the names are in TABLES)
    {{ bench_value key_room rows_per_matrix }}      one value (file stem, dotted path,
    {{ bench_value main_job wall_min .0f }}          optional format spec)
    {{ bench_text apply_queue status_1000 }}       lines a bench recorded (a list of
                                                   strings), as a text block

A marker naming an unknown table, a missing file or a missing key fails the build.

The reference section is generated too: one page per module of the ``mend`` package,
found by walking the source tree (no import, so no torch), each a mkdocstrings
``::: mend.module`` block. Modules that move or appear are picked up without editing
``mkdocs.yml``.

Nothing here imports mkdocs at module level, so the tests can render every table
without the docs dependencies installed.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "bench" / "results"
PACKAGE = ROOT / "mend"

TABLE = re.compile(r"\{\{\s*bench_table\s+([\w-]+)\s*\}\}")
VALUE = re.compile(r"\{\{\s*bench_value\s+([\w-]+)\s+([\w.-]+)(?:\s+([^\s}]+))?\s*\}\}")
TEXT = re.compile(r"\{\{\s*bench_text\s+([\w-]+)\s+([\w.-]+)\s*\}\}")


class BenchError(Exception):
    """A marker that cannot be rendered from ``bench/results``."""


def load(stem: str) -> dict:
    """The parsed ``bench/results/<stem>.json``."""
    path = RESULTS / f"{stem}.json"
    if not path.is_file():
        raise BenchError(f"bench/results/{stem}.json does not exist")
    return json.loads(path.read_text())


def lookup(data: dict, dotted: str):
    """``data["a"]["b"]`` for ``"a.b"``; list items by index."""
    node = data
    for part in dotted.split("."):
        if isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        elif isinstance(node, dict) and part in node:
            node = node[part]
        else:
            raise BenchError(f"no {dotted!r} in the results ({part!r} missing)")
    return node


def value(stem: str, dotted: str, spec: str | None = None) -> str:
    """One figure from a results file, formatted with ``spec`` (default: as stored)."""
    found = lookup(load(stem), dotted)
    if spec is None:
        return f"{found:,}" if isinstance(found, int) and not isinstance(found, bool) else str(found)
    return format(found, spec)


def text_block(stem: str, dotted: str) -> str:
    """Lines a results file recorded (e.g. a command's output), as a fenced text block."""
    found = lookup(load(stem), dotted)
    if not isinstance(found, list) or not all(isinstance(line, str) for line in found):
        raise BenchError(f"{stem} {dotted} is not a list of lines")
    return "\n".join(["```text", *found, "```"])


# --- formatting -------------------------------------------------------------------------


def metric(x) -> str:
    return "" if x is None else f"{x:.3f}"


def seconds(x) -> str:
    if x is None:
        return ""
    return f"{x:.2f}" if x < 10 else f"{x:.1f}" if x < 100 else f"{x:,.0f}"


def gigabytes(n_bytes) -> str:
    return f"{n_bytes / 1e9:.2f}"


def count(x) -> str:
    return f"{x:,}"


def triple(point: dict) -> str:
    """``edit / gen / loc`` of a point."""
    return " / ".join(metric(point[k]) for k in ("edit_success", "generalization", "locality"))


def markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def machine(data: dict) -> str:
    m = data.get("machine")
    if not m:
        return ""
    return f"; {m['cpu']}, {m['torch_threads']} torch threads, torch {m['torch']}"


def source(stem: str, data: dict, command: str) -> str:
    return f"\n\n*From `bench/results/{stem}.json` (`{command}`{machine(data)}).*"


def editor_name(path: str) -> str:
    """``runs/bench-ls2/train/best`` -> ``bench-ls2``."""
    parts = [p for p in path.split("/") if p not in ("", "runs", "train", "best")]
    return parts[-1] if parts else path


METHOD = {"mend": "MEND", "mend_sum": "MEND summed into the weights", "ft": "FT", "ft_l": "FT+L"}

# What each benchmark editor is (settings, not measurements); see docs/benchmarks/.
EDITORS = {
    "bench-zsre": "summed (configs/zsre-smollm2.yaml)",
    "bench-ls2": "least squares, 3 MLP blocks (configs/zsre-smollm2-ls.yaml)",
    "bench-ls-wide": "least squares, down projections of 10 blocks (configs/zsre-smollm2-ls-wide.yaml)",
    "bench-ls128": "bench-ls2, meta-trained further on 128 edits per step",
    "bench-ls256": "bench-ls128, meta-trained further on 256 edits per step",
}


def editor_label(path: str) -> str:
    name = editor_name(path)
    return f"`{name}`: {EDITORS[name]}" if name in EDITORS else f"`{name}`"


# --- tables -----------------------------------------------------------------------------


def methods_table(stem: str, command: str) -> Callable[[], str]:
    def render() -> str:
        data = load(stem)
        header = ["method", "edit_success", "generalization", "locality", "edit EM",
                  "generalization EM", "edit generated EM", "locality EM", "s/edit"]
        rows = [
            [METHOD[m], metric(r["edit_success"]), metric(r["generalization"]),
             metric(r["locality"]), metric(r.get("edit_success_em")),
             metric(r.get("generalization_em")), metric(r.get("edit_generated_em")),
             metric(r.get("locality_em")), seconds(r.get("seconds_per_edit"))]
            for m, r in ((m, data[m]) for m in METHOD if m in data)
        ]
        note = (f"\n\n{count(data['n_eval_records'])} evaluated records ({data['eval_data']}); "
                f"the editor meta-trained for {data['mend']['train_minutes']:.1f} minutes.")
        return markdown(header, rows) + note + source(stem, data, command)
    return render


def zsre_multi_edit() -> str:
    data = load("zsre_smollm2")
    rows = []
    for key, r in data["mend_multi_edit"].items():
        mode, k = key.split("_k")
        rows.append([f"{k} {'simultaneous' if mode == 'batch' else 'sequential'}",
                     triple(r), metric(r["edit_success_em"]), metric(r["edit_generated_em"])])
    header = ["edits", "edit / gen / loc", "edit EM", "edit generated EM"]
    return markdown(header, rows) + source("zsre_smollm2", data, "python -m bench.edit_quality zsre")


def main_job_summary() -> str:
    d = load("main_job")
    t, ds = d["training"], d["dataset"]
    rows = [
        ["wall time", f"{d['wall_min']:.1f} min (budget {d['budget_min']} min)"],
        ["meta-training", f"{t['train_minutes']:.1f} min, {count(t['steps'])} steps, stopped by {t['stopped']}"],
        ["data (bundled zsRE)", f"train {ds['counts']['train']}, val {ds['counts']['val']}, "
                                f"test {ds['counts']['test']}, rejected {ds['rejected']}"],
        ["evaluated records", ", ".join(f"{METHOD[m]} {r['n']}" for m, r in d["evaluation"].items())],
        ["scope", _scope(d.get("scope"))],
        ["decision", f"{d['alias']}: {d['decision']}"],
    ]
    return markdown(["", "main job"], rows) + source("main_job", d, d["command"])


def _scope(scope: dict | None) -> str:
    """The pipeline's scope: the block it reads, and what the val split measured of it."""
    if not scope:
        return "none: the champion sums its corrections into the weights"
    q = scope["layer_choice"][str(scope["layer"])]
    return (f"block {scope['layer']} (fitted on {scope['n_train']} records in {scope['seconds']:.0f} s); on the "
            f"{scope['n_val']} val records: recall {metric(q['recall'])} of rephrases, false positives "
            f"{metric(q['false_positives']['val'])} of locality prompts")


def main_job_methods() -> str:
    d = load("main_job")
    rows = [[METHOD[m], str(r["n"]), triple(r), metric(r["edit_success_em"]),
             metric(r["locality_em"]), seconds(r["seconds_per_edit"])]
            for m, r in d["evaluation"].items()]
    header = ["method", "records", "edit / gen / loc", "edit EM", "locality EM", "s/edit"]
    return markdown(header, rows) + source("main_job", d, d["command"])


def main_job_curve() -> str:
    d = load("main_job")
    rows = [[str(p["k"]), METHOD[p["method"]], str(p["n"]), triple(p)] for p in d["multi_edit_curve"]]
    return markdown(["simultaneous edits", "method", "records", "edit / gen / loc"], rows) + source(
        "main_job", d, d["command"])


def edits_scaling() -> str:
    d = load("edits_scaling")
    modes = [m for m in ("sum", "least_squares", "scoped_strengths_1", "scoped") if d.get(m)]
    label = {"sum": "summed", "least_squares": "least squares", "scoped_strengths_1": "scoped, strength 1",
             "scoped": "scoped"}
    rows = []
    for k in d["ks"]:
        row = [count(k), count(d[modes[0]][str(k)]["n_records"])]
        row += [triple(d[m][str(k)]) if str(k) in d[m] else "-" for m in modes]
        rows.append(row)
    header = ["simultaneous edits", "records"] + [f"{label[m]}: edit / gen / loc" for m in modes]
    editors = "; ".join(f"{kind}: {editor_label(p)}" for kind, p in d["editors"].items())
    text = markdown(header, rows) + f"\n\nEditors: {editors}."
    scoped = d.get("scoped") or d.get("scoped_strengths_1", {})
    superseded = [[count(k), count(scoped[str(k)]["n_records"]), count(scoped[str(k)]["superseded"]),
                   metric(scoped[str(k)]["edit_success_all"])] for k in d["ks"] if "superseded" in scoped.get(str(k), {})]
    if superseded:
        text += ("\n\nScoped groups keep the newest correction of each question (see Scoped corrections): the "
                 "scoped columns score the live ones. Superseded records, and edit success over every record "
                 "against its own target:\n\n" + markdown(["simultaneous edits", "records", "superseded",
                                                            "edit success, all records"], superseded))
    held = [[count(k), count(scoped[str(k)]["heldout"]["n_records"]), triple(scoped[str(k)]["heldout"])]
            for k in d["ks"] if "heldout" in scoped.get(str(k), {})]
    if held:
        text += ("\n\nScoped, over the held-out records alone (the rest of the 1,000 come from the editor's "
                 "training file):\n\n" + markdown(["simultaneous edits", "held-out records", "edit / gen / loc"], held))
    counterfact = d.get("counterfact", {})
    if counterfact:
        cf_modes = [m for m in modes if m in counterfact]
        ks = sorted({int(k) for m in cf_modes for k in counterfact[m]})
        cf_rows = [[count(k)] + [triple(counterfact[m][str(k)]) if str(k) in counterfact[m] else "-"
                                 for m in cf_modes] for k in ks]
        text += ("\n\nCounterFact (`counterfact-val`; locality on neighbourhood prompts: same relation, "
                 "another subject):\n\n" + markdown(["simultaneous edits"] + [f"{label[m]}: edit / gen / loc"
                                                       for m in cf_modes], cf_rows))
    ten = d.get("10000")
    if ten:
        def split(name: str) -> str:
            value = ten.get(f"locality_{name}")
            return "-" if value is None else f"{metric(value)} ({count(ten[f'n_{name}'])} records)"

        text += ("\n\nTen thousand simultaneous CounterFact corrections (`counterfact-train`, scoped; "
                 "an evenly spaced sample scored with all of them applied; `--counterfact-10000`; locality also "
                 "over the records whose probes name no stored subject, and over those whose probes ask no "
                 "stored correction's own fact (a probe asking one should change): "
                 "[What is measured](../concepts/scoped.md#what-is-measured)):\n\n"
                 + markdown(["corrections", "scored", "edit / gen / loc", "loc, naming no stored subject",
                             "loc, asking no stored fact", "editing s", "whole run s"],
                            [[count(ten["n_edited"]), count(ten["n_records"]), triple(ten), split("unnamed"),
                              split("other_facts"), seconds(ten["edit_wall_s"]), seconds(ten["wall_s"])]]))
    return text + source("edits_scaling", d, "python -m bench.edits_scaling --sum-editor ... --ls-editor ... "
                                             "--scoped-editor ... --scope ...")


def subject_baselines() -> str:
    """MEMIT and AlphaEdit rows of edits_scaling (same records and scoring as MEND's)."""
    d = load("edits_scaling")
    label = {"memit": "MEMIT", "alphaedit": "AlphaEdit"}
    rows = [[label[mode], count(int(k)), count(row["n_records"]), triple(row), seconds(row["wall_s"]),
             seconds(row.get("values_s"))]
            for mode in label for k, row in sorted(d.get(mode, {}).items(), key=lambda item: int(item[0]))]
    header = ["method", "simultaneous edits", "records", "edit / gen / loc", "wall s", "of which values s"]
    text = markdown(header, rows or [["-"] * len(header)])
    settings = d.get("baselines", {})
    notes = []
    if "memit" in settings:
        m = settings["memit"]
        notes.append(f"MEMIT: blocks {m['layers']}, lambda {m['lam']:g}")
    if "alphaedit" in settings:
        a = settings["alphaedit"]
        notes.append(f"AlphaEdit: blocks {a['layers']}, null-space threshold {a['nullspace_threshold']:g}, "
                     f"l2 {a['l2']:g}")
    costs = d.get("baseline_costs", {})
    if "values_s_per_fact" in costs:
        notes.append(f"values optimised at {seconds(costs['values_s_per_fact'])} s per fact, computed once and "
                     "shared by both methods (AlphaEdit's rows reuse MEMIT's)")
    if notes:
        text += "\n\n" + "; ".join(notes) + "."
    return text + source("edits_scaling", d, "python -m bench.edits_scaling --memit --alphaedit")


def routing_overhead() -> str:
    d = load("routing_overhead")
    rows = [[count(d["corrections"]), f"{d['batch']} x {count(d['prompts'] // d['batch'])}",
             f"{d['base_forward_s']:.3f}", f"{d['routed_forward_s']:.3f}", f"{d['ratio']:.3f}"]]
    header = ["stored corrections", "prompts (batch x batches)", "base forward s", "routed forward s", "ratio"]
    return markdown(header, rows) + source("routing_overhead", d, d["command"])


def router() -> str:
    d = load("router")
    splits = [(key, label) for key, label in (("fpr_neighbourhood_unnamed", "of which naming no stored subject"),
                                              ("fpr_neighbourhood_other_facts", "of which asking no stored fact"))
              if key in d["at_10000"]["all"]]
    header = ["stored corrections", "threshold", "recall zsRE", "recall CounterFact", "recall all", "own first",
              "false positives NQ", "false positives neighbourhood", *(label for _, label in splits)]
    relation = "subject_test_only" in d["at_1000"]
    if relation:
        header.insert(1, "routed by")
    rows = []
    for part in (d["at_1000"], d["at_10000"]):
        everything = part["all"]
        rows.append([count(everything["stored"]), *(["subject and relation tests"] if relation else []),
                     f"{everything['threshold']:.3f}", metric(part["zsre"]["recall"]),
                     metric(part["counterfact"]["recall"]), metric(everything["recall"]), metric(everything["top1"]),
                     metric(everything["fpr_nq"]), metric(everything["fpr_neighbourhood"]),
                     *(metric(everything[key]) for key, _ in splits)])
        if relation:  # the same corrections and queries without the relation test
            alone = part["subject_test_only"]
            rows.append([count(alone["stored"]), "subject test only", f"{alone['threshold']:.3f}", "", "",
                         metric(alone["recall"]), metric(alone["top1"]), metric(alone["fpr_nq"]),
                         metric(alone["fpr_neighbourhood"]), *(metric(alone[key]) for key, _ in splits)])
    scope = d["scope"]
    sweep = d.get("threshold_sweep_10000")
    if sweep:
        note_rows = [[f"{q['threshold']:.2f}", metric(q["recall"]), metric(q["fpr_nq"]), metric(q["fpr_neighbourhood"]),
                      *(metric(q[key]) if key in q else "-" for key, _ in splits)] for q in sweep]
        unchanged = "subject and relation thresholds" if d["scope"].get("relation_threshold") is not None \
            else "subject threshold"
        sweep_table = (f"\n\nAt 10,000 stored, under other single thresholds ({unchanged} unchanged):\n\n"
                       + markdown(["threshold", "recall all", "false positives NQ", "false positives neighbourhood",
                                   *(label for _, label in splits)], note_rows))
    else:
        sweep_table = ""
    keeps = d.get("relation_sweep_10000")
    if keeps:
        sweep_table += ("\n\nAt 10,000 stored, under relation thresholds keeping other shares of the held-out "
                        "training rephrases:\n\n" + markdown(
                            ["rephrases kept (training)", "relation threshold", "recall all", "false positives NQ",
                             "false positives neighbourhood", *(label for _, label in splits)],
                            [[metric(q["keep"]), f"{q['relation_threshold']:.3f}", metric(q["recall"]),
                              metric(q["fpr_nq"]), metric(q["fpr_neighbourhood"]),
                              *(metric(q[key]) if key in q else "-" for key, _ in splits)] for q in keeps]))
    note = "".join(f"\n\n{label[0].upper() + label[1:]}: the {d['test_data'][key.removeprefix('fpr_')]}."
                   for key, label in splits)
    schedule = scope.get("count_thresholds") or []
    rises = (", rising with the number of stored corrections: " + ", ".join(
        f"{threshold:.3f} at {count(n)}" for n, threshold in schedule) + " (estimated on training keys)") \
        if schedule else ""
    return markdown(header, rows) + note + sweep_table + (
        f"\n\nScope model: block {scope['layer']}, {scope['dim']} dimensions, threshold "
        f"{scope['threshold']:.3f} (calibrated on held-out training records){rises}"
        + (f"; relation threshold {scope['relation_threshold']:.3f}." if scope.get("relation_threshold") is not None
           else ".")
    ) + source("router", d, d["command"] + (f"`, then `{d['measured_by']}" if "measured_by" in d else ""))


def edits_tradeoff() -> str:
    d = load("edits_tradeoff")
    points = sorted(d["points"], key=lambda p: (editor_name(p["editor"]), p["lambda_scale"], p["passes"]))
    rows = [[editor_label(p["editor"]), str(p["matrices"]), count(p["key_dims"]), f"{p['lambda_scale']:g}",
             str(p["passes"]), triple(p)] for p in points]
    header = ["editor", "matrices", "key dims", "regulariser scale", "capture passes", "edit / gen / loc"]
    note = f"\n\n{count(d['k'])} simultaneous edits over {count(d['n_records'])} records."
    return markdown(header, rows) + note + source(
        "edits_tradeoff", d, "python -m bench.edits_tradeoff --point EDITOR@SCALE[@PASSES] ...")


def edits_sequential() -> str:
    runs = sorted(((p.stem, json.loads(p.read_text())) for p in RESULTS.glob("edits_sequential*.json")),
                  key=lambda sr: (sr[1]["regulariser_scale"], sr[1]["passes"]))
    if not runs:
        raise BenchError("no bench/results/edits_sequential*.json")
    rows = [[f"`{stem}.json`", r.get("aggregation", "-"), f"{r['regulariser_scale']:g}", str(r["passes"]),
             f"{count(r['n'])} in batches of {r['batch_size']}", count(r["live"]) if "live" in r else "-",
             metric(r["edit_success"]), metric(r["first_100_edit_success"]) if "first_100_edit_success" in r else "-",
             metric(r["locality"]), seconds(r["wall_s"])] for stem, r in runs]
    header = ["file", "aggregation", "regulariser scale", "capture passes", "corrections", "live at the end",
              "edit success", "first 100", "locality", "wall s"]
    return markdown(header, rows) + source(
        "edits_sequential*", runs[0][1],
        "python -m bench.edits_sequential --editor runs/bench-ls2/train/best [--regulariser-scale X] [--passes N]")


def key_room() -> str:
    d = load("key_room")
    rows = [[f"`{name}`", count(m["d_in"]), count(m["dims_90"]), count(m["dims_99"]),
             count(m["penalised_dims_90"]), count(m["penalised_dims_99"])]
            for name, m in d["matrices"].items()]
    header = ["matrix", "d_in", "raw: 90% of energy", "raw: 99%", "as solved: 90%", "as solved: 99%"]
    note = (f"\n\n{count(d['k'])} edits give {count(d['rows_per_matrix'])} key rows per matrix; "
            "the columns count the directions holding that share of the keys' energy.")
    return markdown(header, rows) + note + source(
        "key_room", d, "python -m bench.key_room --editor runs/bench-ls2/train/best")


def edits_ceiling_ideal() -> str:
    d = load("edits_ceiling")
    rows = []
    for k, ref in d["ideal_shifts"].items():
        rows += [[count(int(k)), f"{p['lambda']:g}", triple(p)] for p in ref["points"]]
    alone = "; ".join(f"{count(int(k))} edits: exact match {metric(r['alone']['exact_match'])} alone"
                      for k, r in d["ideal_shifts"].items())
    return markdown(["edits", "lambda", "edit / gen / loc"], rows) + f"\n\nEach edit's own shifts: {alone}." + source(
        "edits_ceiling", d, "python -m bench.edits_ceiling --lambdas ...")


def edits_ceiling_direct() -> str:
    d = load("edits_ceiling")
    rows = []
    for k, ref in sorted(d["direct"].items(), key=lambda kv: int(kv[0])):
        points = sorted(ref["points"], key=lambda p: (-int(p["blocks"].split("-")[0]), p["c_loc"], p["steps"], p["lr"]))
        rows += [[count(int(k)), p["blocks"], f"{p['c_loc']:g}", str(p["steps"]), f"{p['lr']:g}", triple(p),
                  f"{p['wall_s'] / 60:.0f}"] for p in points]
    header = ["edits", "blocks", "c_loc", "steps", "Adam lr", "edit / gen / loc", "minutes"]
    return markdown(header, rows) + source("edits_ceiling", d, "python -m bench.edits_ceiling --c-locs ...")


def ls_step_scaling() -> str:
    d = load("ls_step_scaling")
    rows = [[count(p["n_edits"]), count(p["edited_rows"]), seconds(p["step_s"]), f"{p['peak_above_model_gb']:.2f}"]
            for p in d["points"]]
    header = ["edits per step", "edited tokens", "seconds per step", "peak GB above model"]
    return markdown(header, rows) + source("ls_step_scaling", d, "python -m bench.ls_step_scaling --editor ...")


REJECTIONS = [("edit success", "missed the exact target"), ("locality", "locality"),
              ("batch changed the regression probes", "batch moved the regression probes")]


def apply_queue_table(stem: str) -> Callable[[], str]:
    def render() -> str:
        d = load(stem)
        sizes = sorted(int(k.removeprefix("details_")) for k in d if k.startswith("details_"))
        rows = []
        for n in sizes:
            r = d[f"details_{n}"]
            why = ", ".join(f"{label} {sum(v for k, v in r['rejections'].items() if k.startswith(prefix))}"
                            for prefix, label in REJECTIONS)
            rows.append([count(n), seconds(r["wall_s"]), f"{d[f'ratio_{n}']:.2f}x",
                         f"{d[f'ratio_all_passes_{n}']:.2f}x", metric(r["edit_success_computed"]),
                         count(r["applied"]), f"{count(r['rejected'])} ({why})",
                         count(r["contradictions"]) if "contradictions" in r else "-", str(r["versions"])])
        header = ["corrections", "wall s", "vs one forward+backward each", "vs all judging passes",
                  "computed edits' edit success", "published", "rejected", "contradictions", "versions"]
        note = f"\n\nBatches of {d['batch_size']}, {d['aggregation']} edits, editor `{editor_name(d['editor'])}`."
        return markdown(header, rows) + note + source(
            stem, d, "python -m bench.apply_queue --editor ... [--aggregation ...] --sizes ... --batch-size ...")

    return render


def queue_reads() -> str:
    d = load("queue_reads")
    names = {"local": "local directory", "s3": "S3 (moto on 127.0.0.1)",
             "remote": f"local + {d['rtt_ms']:.0f} ms per read"}
    operations = {"status": "`mend corrections status`", "pending": "pending list (an apply run's start)",
                  "submit_one": "submit one correction", "verify": "`mend corrections verify`"}
    rows = [[names[backend], label, seconds(r[op]["one_at_a_time_s"]), seconds(r[op]["at_once_s"]),
             f"{r[op]['speedup']:.1f}x", str(r["default_read_at_once"])]
            for backend, r in d["per_backend"].items() for op, label in operations.items()]
    header = ["store", "operation", "one read at a time, s", f"{d['read_at_once']} at once, s", "speedup",
              "the store reads at once"]
    note = (f"\n\nA queue of {count(d['records'])} reported corrections; medians of {d['repeats']} runs. "
            f"Both ways give the same answers: {'yes' if d['same_answers'] else '**no**'}.")
    return markdown(header, rows) + note + source("queue_reads", d, "python -m bench.queue_reads")


def edit_latency() -> str:
    d = load("edit_latency")
    rows = [["one MEND edit (compute + apply)", f"{d['edit_s_median'] * 1000:.0f} ms"],
            ["one forward + backward of the edit", f"{d['forward_backward_s_median'] * 1000:.0f} ms"],
            ["ratio", f"{d['ratio']:.2f}x"]]
    note = f"\n\nMedians over {d['examples']} examples x {d['repeats']} repeats, editor `{editor_name(d['editor'])}`."
    return markdown(["", "median"], rows) + note + source("edit_latency", d, "python -m bench.edit_latency")


def train_step() -> str:
    d = load("train_step")
    rows = [["low-rank hooks (ours)", seconds(d["step_s_lowrank"]), f"{d['peak_above_model_gb_lowrank']:.2f}"],
            ["dense change", seconds(d["step_s_dense"]), f"{d['peak_above_model_gb_dense']:.2f}"],
            ["ratio", f"{d['time_ratio']:.2f}", f"{d['memory_ratio']:.2f}"]]
    note = f"\n\nTime: SmolLM2-135M, {d['batch']}. Memory: {d['memory_model']}."
    return markdown(["meta-training step", "seconds", "peak GB above model"], rows) + note + source(
        "train_step", d, "python -m bench.train_step")


def zero_scaling() -> str:
    d = load("zero_scaling")
    rows = [[r["deepspeed_config"], str(r["ranks"]), str(r["grad_accum"]), seconds(r["step_s"]),
             gigabytes(r["measured_peak_bytes"]), gigabytes(r["planned_peak_bytes"]),
             f"{r['planner_relative_error'] * 100:+.1f}%", r["planned_peak_phase"]] for r in d["runs"]]
    header = ["DeepSpeed config", "ranks", "grad accum", "s/step", "measured peak GB",
              "planned peak GB", "planner error", "planned peak phase"]
    m = d["model"]
    note = (f"\n\nModel: LLaMA, hidden {m['hidden_size']}, {m['num_hidden_layers']} layers, editor rank "
            f"{m['editor_rank']}. {d['device']}. Memory: {d['measurement']}.")
    return markdown(header, rows) + note + source("zero_scaling", d, "python -m bench.zero_scaling")


TABLES: dict[str, Callable[[], str]] = {
    "zsre_methods": methods_table("zsre_smollm2", "python -m bench.edit_quality zsre"),
    "counterfact_methods": methods_table("counterfact_smollm2", "python -m bench.edit_quality counterfact"),
    "zsre_multi_edit": zsre_multi_edit,
    "main_job_summary": main_job_summary,
    "main_job_methods": main_job_methods,
    "main_job_curve": main_job_curve,
    "edits_scaling": edits_scaling,
    "subject_baselines": subject_baselines,
    "edits_tradeoff": edits_tradeoff,
    "router": router,
    "routing_overhead": routing_overhead,
    "edits_sequential": edits_sequential,
    "key_room": key_room,
    "edits_ceiling_ideal": edits_ceiling_ideal,
    "edits_ceiling_direct": edits_ceiling_direct,
    "ls_step_scaling": ls_step_scaling,
    "apply_queue": apply_queue_table("apply_queue"),
    "apply_queue_scoped": apply_queue_table("apply_queue_scoped"),
    "apply_queue_pipeline_champion": apply_queue_table("apply_queue_pipeline_champion"),
    "queue_reads": queue_reads,
    "edit_latency": edit_latency,
    "train_step": train_step,
    "zero_scaling": zero_scaling,
}


def table(name: str) -> str:
    if name not in TABLES:
        raise BenchError(f"unknown bench table {name!r} (known: {', '.join(sorted(TABLES))})")
    try:
        return TABLES[name]()
    except (KeyError, TypeError, ValueError) as e:
        raise BenchError(f"bench table {name!r} does not match its results file: {e!r}") from e


def render(text: str) -> str:
    """``text`` with every bench marker replaced by what the results files say."""
    text = TABLE.sub(lambda m: "\n" + table(m.group(1)) + "\n", text)
    text = TEXT.sub(lambda m: text_block(m.group(1), m.group(2)), text)
    return VALUE.sub(lambda m: value(m.group(1), m.group(2), m.group(3)), text)


# --- the API reference ------------------------------------------------------------------


def modules() -> list[str]:
    """Dotted names of ``mend``'s public modules and packages, in source order."""
    names = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if any(p.startswith("_") for p in parts):
            continue
        # Only regular packages: a folder without __init__.py (a refactor half-way) is
        # not importable as ``mend.<folder>`` and griffe would not find it either.
        if not all((d / "__init__.py").is_file() for d in path.parents if d.is_relative_to(PACKAGE)):
            continue
        names.append(".".join(parts))
    return names


def reference_pages() -> dict[str, str]:
    """``reference/<module>.md`` -> its page: one per top-level module or package."""
    pages: dict[str, list[str]] = {}
    for name in modules():
        parts = name.split(".")
        top = ".".join(parts[:2]) if len(parts) > 1 else name
        pages.setdefault(top, []).append(name)
    out = {}
    for top, members in pages.items():
        blocks = [f"::: {m}\n    options:\n      heading_level: {2 if m == top else 3}" for m in members]
        out[f"reference/{top}.md"] = f"# `{top}`\n\n" + "\n\n".join(blocks) + "\n"
    return out


# --- mkdocs events ----------------------------------------------------------------------


def on_config(config):
    """Add the generated reference pages to the navigation."""
    entries = [{top.removeprefix("reference/").removesuffix(".md"): top} for top in reference_pages()]
    for item in config["nav"] or []:
        if isinstance(item, dict) and "Reference" in item:
            item["Reference"] = ["reference/index.md", *entries]
    return config


def on_files(files, config):
    from mkdocs.structure.files import File

    for uri, content in reference_pages().items():
        files.append(File.generated(config, uri, content=content))
    return files


def on_page_markdown(markdown_text, page, config, files):
    from mkdocs.exceptions import PluginError

    try:
        return render(markdown_text)
    except BenchError as e:
        raise PluginError(f"{page.file.src_uri}: {e}") from e
