"""Edits per least-squares meta-training step: memory and time as the number grows.

    python -m bench.ls_step_scaling --editor runs/bench-ls2/train/best [--edits 32,128,512]

One meta-training step of ``configs/zsre-smollm2-ls.yaml`` (SmolLM2-135M, the last three
MLP blocks, 16 locality probes, language-model passes of ``chunk_size`` 16 sequences)
with n simultaneous edits solved together, each n in its own process: peak resident
memory above the loaded model, editor and optimiser state, and the step's seconds. The
step never holds the language model's graph and the editor's at once
(``mend/training/step.py``), so memory should grow with the edited-token rows the
solve couples, not with the language-model passes. Writes
``bench/results/ls_step_scaling.json``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time

import torch
import transformers

from bench.common import ROOT, peak_rss_above_start, write_result

CONFIG = ROOT / "configs" / "zsre-smollm2-ls.yaml"


def worker(editor: str, n_edits: int) -> dict:
    from mend.models.editable import EditableModel
    from mend.training.config import TrainConfig
    from mend.training.data import load_training_data
    from mend.training.trainer import Trainer

    transformers.utils.logging.disable_progress_bar()
    with tempfile.TemporaryDirectory() as tmp:
        config = TrainConfig.from_yaml(CONFIG, {"init_editor": editor, "n_edits": n_edits, "output_dir": tmp})
        data = load_training_data(config.data, config.seed)
        model = EditableModel.load(config.model, dtype=config.dtype, patterns=config.editor.patterns)
        trainer = Trainer(config, model, data)
        # Adam's state exists after any first step: allocate it (a zero step) before measuring.
        for p in trainer.editor.parameters():
            p.grad = torch.zeros_like(p)
        trainer.backend.step()
        batch = trainer.sampler.batch(0)
        started = time.perf_counter()
        with peak_rss_above_start() as peak:
            out = trainer.step_fn(batch, update_stats=True)
            trainer.backend.backward(out.loss)
            trainer.backend.step()
        seconds = time.perf_counter() - started
    return {
        "n_edits": n_edits,
        "edited_rows": int(batch.edit.scored_masks["input"].sum()),
        "step_s": round(seconds, 2),
        "peak_above_model_gb": round(peak["bytes"] / 2**30, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--editor", required=True, help="least-squares editor to start from")
    parser.add_argument("--edits", default="32,128,512", help="comma-separated edits per step")
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.editor, args.worker)))
        return
    points = []
    for n in (int(x) for x in args.edits.split(",")):
        proc = subprocess.run(
            [sys.executable, "-m", "bench.ls_step_scaling", "--editor", args.editor, "--worker", str(n)],
            cwd=ROOT, capture_output=True, text=True, check=True,
        )
        points.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(points[-1], flush=True)
    write_result("ls_step_scaling", {"editor": args.editor, "config": str(CONFIG.relative_to(ROOT)), "points": points})


if __name__ == "__main__":
    main()
