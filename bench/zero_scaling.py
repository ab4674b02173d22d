"""ZeRO-sharded meta-training on 1 and 2 ranks: step time, peak memory, planner error.

Writes ``bench/results/zero_scaling.json`` with ``step_s_1rank``, ``step_s_2rank`` (the
same global batch: 1 rank at ``grad_accum=2``, 2 ranks at ``grad_accum=1``; ZeRO-3,
float32) and ``planner_error``: the largest relative error of ``mend plan`` against the
measured peak memory over every run, with each run's figures beside it.

    python -m bench.zero_scaling            # ZeRO-3 on 1 and 2 ranks, ZeRO-2, ZeRO-3 + offload
    python -m bench.zero_scaling --quick    # the two ZeRO-3 runs only

Runs are launched with ``deepspeed --num_gpus N --module mend.distributed.train`` on a
randomly initialised LLaMA (hidden 1024, 16 layers: 190 M parameters; editor rank 1920:
59 M parameters), so that model states dominate the process's memory. On a CPU the
measured figure is the peak resident set during training minus the resident set after
start-up (imports, process group), sampled from ``/proc/self/status`` with the peak
reset after loading. glibc's mmap threshold is fixed (``MALLOC_MMAP_THRESHOLD_``) so
that freed tensors go back to the OS, as they leave a GPU allocator's "allocated"
count; without it the resident set also holds freed heap memory.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.common import ROOT, write_result

MODEL = dict(hidden_size=1024, intermediate_size=2816, num_hidden_layers=16, num_attention_heads=16,
             num_key_value_heads=8)
CONFIGS = ROOT / "deepspeed_configs"


def _workload(root: Path, steps: int) -> Path:
    from mend.testing.workload import write_workload

    return write_workload(
        root, model_sizes=MODEL,
        editor={"rank": 1920, "down_init": "xavier", "edit_lr_init": 1e-4},
        max_steps=steps, val_every=10_000, patience=10_000, val_size=2, checkpoint_every=10_000,
    )


def _launch(config: Path, ds_config: str, ranks: int, out: Path, grad_accum: int, extra: list[str]) -> dict:
    report = out / "report"
    env = {
        **os.environ,
        "MALLOC_MMAP_THRESHOLD_": "131072",
        "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 2) // ranks)),
        "TOKENIZERS_PARALLELISM": "false",
    }
    env.setdefault("TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache" / "torch_extensions"))
    cmd = [
        sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", str(ranks),
        "--master_port", str(29500 + ranks), "--module", "mend.distributed.train",
        "--config", str(config), "--deepspeed", str(CONFIGS / f"{ds_config}.json"), "--no-resume",
        "--set", f"output_dir={out / 'run'}", "--set", f"grad_accum={grad_accum}",
        "--report", str(report), *extra,
    ]
    print("$", " ".join(cmd[2:]), flush=True)
    done = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"run failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return {r: json.loads((report / f"rank{r}.json").read_text()) for r in range(ranks)}


def _sequence_lengths(config: Path) -> tuple[int, int]:
    """Longest padded sequence and scored span of the workload's batches (for the plan)."""
    from mend.models.editable import EditableModel
    from mend.training.config import TrainConfig
    from mend.training.data import load_training_data
    from mend.training.sampler import StepSampler

    cfg = TrainConfig.from_yaml(config)
    data = load_training_data(cfg.data, cfg.seed)
    model = EditableModel.load(cfg.model)
    sampler = StepSampler(data.train, model.task, n_edits=cfg.n_edits, n_loc=cfg.n_loc, seed=cfg.seed)
    seq = target = 0
    for i in range(len(data.train)):
        batch = sampler.batch(i)
        for part in (batch.edit, batch.equiv, batch.loc):
            seq = max(seq, part.labels.shape[1])
            target = max(target, part.labels.shape[1] - part.first_scored)
    return seq, target


def _planned(config: Path, ds_config: str, ranks: int, seq: int, target: int) -> dict:
    from mend.distributed.memory_model import Parallel, Workload, plan
    from mend.distributed.shapes import editor_shape, load_config, shape_of
    from mend.training.config import TrainConfig

    cfg = TrainConfig.from_yaml(config)
    shape = shape_of(load_config(Path(cfg.model) / "config.json"))
    editor = editor_shape(shape.targets, rank=cfg.editor.rank, n_blocks=cfg.editor.n_blocks)
    par = Parallel.from_deepspeed(CONFIGS / f"{ds_config}.json", ranks=ranks, accelerator="cpu")
    work = Workload(n_edits=cfg.n_edits, n_loc=cfg.n_loc, seq_len=seq, target_len=target,
                    equiv_includes_prompt=cfg.equiv_includes_prompt)
    return plan(shape, editor, par, work).to_dict()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=6, help="optimizer steps per run (the first is not timed)")
    parser.add_argument("--quick", action="store_true", help="only the 1- and 2-rank ZeRO-3 runs")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--from", dest="reuse", type=Path, default=None,
                        help="recompute from the reports of a kept work directory (no runs)")
    args = parser.parse_args()

    work = args.reuse or Path(tempfile.mkdtemp(prefix="zero_scaling-"))
    args.keep = args.keep or args.reuse is not None
    try:
        config = work / "workload" / "train.yaml" if args.reuse else _workload(work / "workload", args.steps)
        seq, target = _sequence_lengths(config)
        runs = [
            ("zero3_fp32", 1, 2, []),
            ("zero3_fp32", 2, 1, []),
        ]
        if not args.quick:
            runs += [
                ("zero2_fp32", 2, 1, []),
                # Offloaded Adam runs in DeepSpeed's compiled CPU Adam (built once, cached).
                ("zero3_offload_fp32", 2, 1, []),
            ]
        results = []
        for ds_config, ranks, accum, extra in runs:
            out = work / f"{ds_config}-{ranks}"
            if args.reuse:
                if not (out / "report").exists():
                    continue
                reports = {r: json.loads((out / "report" / f"rank{r}.json").read_text()) for r in range(ranks)}
            else:
                reports = _launch(config, ds_config, ranks, out, accum, extra)
            steps = reports[0]["step_seconds"][1:] or reports[0]["step_seconds"]
            measured = max(
                r["memory"]["after_train"]["peak_rss"] - r["memory"]["rss_baseline"] for r in reports.values()
            )
            planned = _planned(config, ds_config, ranks, seq, target)
            error = (planned["process_total"] - measured) / measured
            results.append({
                "deepspeed_config": ds_config, "ranks": ranks, "grad_accum": accum,
                "step_s": statistics.median(steps), "step_s_all": reports[0]["step_seconds"],
                "measured_peak_bytes": measured, "planned_peak_bytes": planned["process_total"],
                "planner_relative_error": error, "planned_peak_phase": planned["peak_phase"],
                "planned_components_bytes": {**planned["device"], **{f"host: {k}": v for k, v in planned["host"].items()}},
                "base_partition": reports[0]["base_partition"], "editor_partition": reports[0]["editor_partition"],
                "final_val_loss": (reports[0]["history"][-1] if reports[0]["history"] else {}).get("val/loss"),
            })
            print(f"{ds_config} x{ranks}: {statistics.median(steps):.2f} s/step, peak {measured / 2**20:.0f} MiB "
                  f"measured vs {planned['process_total'] / 2**20:.0f} MiB planned ({100 * error:+.1f}%)", flush=True)
        by = {(r["deepspeed_config"], r["ranks"]): r for r in results}
        write_result("zero_scaling", {
            "step_s_1rank": by[("zero3_fp32", 1)]["step_s"],
            "step_s_2rank": by[("zero3_fp32", 2)]["step_s"],
            "planner_error": max(abs(r["planner_relative_error"]) for r in results),
            "model": {**MODEL, "vocab_size": 400, "editor_rank": 1920},
            "workload": {"seq_len": seq, "target_len": target, "steps": args.steps},
            "measurement": "peak RSS during training minus RSS after start-up, max over ranks; "
                           "MALLOC_MMAP_THRESHOLD_=131072; planner run with --accelerator cpu",
            "device": "CPU only (no GPU lent to this task): 2 cores, gloo",
            "runs": results,
        })
    finally:
        if args.keep:
            print(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
