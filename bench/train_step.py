"""One meta-training step: our low-rank step against the original dense approach.

The dense reference does what the original MEND code does: materialise each matrix's
change ``dW`` and run the model functionally with ``W + dW`` (full passes for every
input). Ours hooks the low-rank factors into the forward pass and shares the unedited
prefix between the pre- and post-edit passes. Same model, batch, editor and optimiser.

    python -m bench.train_step            # both measurements, writes bench/results/train_step.json
    python -m bench.train_step --quick    # fewer repetitions

* time: SmolLM2-135M, median seconds per step (1 edit, its rephrase + the prompt,
  5 locality inputs, rank-1920 editors);
* memory: peak resident memory above the loaded model and editor during one step, on a
  LLaMA built from config with 7B-sized blocks (hidden 4096, MLP 11008, 4 layers, last 3
  MLP blocks edited), each variant in its own process.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import torch
from torch.func import functional_call

from bench.common import ROOT, median, peak_rss_above_start, write_result
from mend.capture import capture_factors
from mend.data.records import EditRecord, LocalityProbe
from mend.editor.config import EditorConfig
from mend.editor.editor import Editor
from mend.models.editable import EditableModel
from mend.models.tasks import per_example_nll
from mend.training.config import TrainConfig
from mend.training.losses import kl_on_scored
from mend.training.sampler import StepSampler
from mend.training.step import MetaStep
from mend.training.trainer import make_optimizer

C_EDIT, C_LOC, N_LOC = 0.1, 1.0, 5

RECORDS = [
    EditRecord(
        record_id=f"r{i}",
        prompt=prompt,
        target=target,
        rephrases=(rephrase,),
        locality=(LocalityProbe(loc, answer),),
    )
    for i, (prompt, target, rephrase, loc, answer) in enumerate([
        ("What is the native language of Danielle Darrieux?", "English",
         "What language did Danielle Darrieux speak natively?", "Who sang the song in 1965?", "The Beatles"),
        ("Which city is the capital of France?", "Lyon",
         "What is the capital city of France?", "Who wrote the play Hamlet?", "William Shakespeare"),
        ("Who is the author of Pride and Prejudice?", "Charles Dickens",
         "Pride and Prejudice was written by whom?", "At what temperature does water boil?", "100 degrees Celsius"),
    ])
]


def dense_logits(model: EditableModel, params: dict, batch) -> torch.Tensor:
    keep = torch.arange(batch.first_scored, batch.labels.shape[1])
    kwargs = {**batch.inputs, "logits_to_keep": keep, "use_cache": False}
    return functional_call(model.model, params, (), kwargs, strict=False).logits


def dense_step(model: EditableModel, editor: Editor, batch, update_stats: bool = True) -> torch.Tensor:
    """The original approach: dense dW per matrix, functional forward with W + dW."""
    with torch.no_grad():
        pre_loc = model.task.logits(model.model, batch.loc)
    capture = capture_factors(model.model, model.task, editor.targets, batch.edit, editor.config.token_mode)
    deltas = editor.deltas_from(capture.factors, update_stats=update_stats)
    params = {
        t.param_name: model.model.get_submodule(t.module_name).weight + deltas[t.module_name].dense(t.layout)
        for t in editor.targets
    }
    post_equiv = dense_logits(model, params, batch.equiv)
    post_loc = dense_logits(model, params, batch.loc)
    loss_edit = per_example_nll(post_equiv, batch.equiv.scored_labels).mean()
    return C_EDIT * loss_edit + C_LOC * kl_on_scored(pre_loc, post_loc, batch.loc.scored_labels)


def setup(model: EditableModel, token_mode: str):
    torch.manual_seed(0)
    editor = Editor.for_model(model, EditorConfig(down_init="xavier", token_mode=token_mode))
    editor.fit_normalization(model, [r.prompt for r in RECORDS], [r.target for r in RECORDS])
    config = TrainConfig.model_validate({"data": {"train": [{"path": "-"}]}})
    optimizer = make_optimizer(editor, config)
    sampler = StepSampler(RECORDS, model.task, n_edits=1, n_loc=N_LOC, seed=0)
    return editor, optimizer, sampler


def run_step(kind: str, model, editor, optimizer, batch, lowrank: MetaStep) -> None:
    loss = lowrank(batch, update_stats=True).loss if kind == "lowrank" else dense_step(model, editor, batch)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def measure_time(repeats: int, token_mode: str) -> dict:
    model = EditableModel.load("smollm2-135m")
    editor, optimizer, sampler = setup(model, token_mode)
    lowrank = MetaStep(model, editor, C_EDIT, C_LOC)
    # Both compute the same loss (up to float rounding): check before timing them.
    check = sampler.batch(0)
    # The low-rank step's ``loss`` is a surrogate whose backward gives the editor's gradient;
    # the loss value itself is in its metrics.
    same = (lowrank(check, update_stats=False).metrics["loss"], dense_step(model, editor, check, False).item())
    if abs(same[0] - same[1]) > 1e-4 * max(1.0, abs(same[1])):
        raise AssertionError(f"low-rank and dense steps disagree: {same}")
    times = {"lowrank": [], "dense": []}
    for i in range(repeats + 2):
        batch = sampler.batch(i)
        for kind in ("dense", "lowrank"):  # alternate so drift hits both equally
            start = time.perf_counter()
            run_step(kind, model, editor, optimizer, batch, lowrank)
            if i >= 2:  # warm-up
                times[kind].append(time.perf_counter() - start)
    return {
        "step_s_lowrank": median(times["lowrank"]),
        "step_s_dense": median(times["dense"]),
        "time_ratio": median(times["lowrank"]) / median(times["dense"]),
        "raw_s": times,
        "loss_check_lowrank_vs_dense": same,
    }


def memory_worker(kind: str, token_mode: str) -> None:
    """Runs in a child process: peak RSS above the loaded model+editor during one step."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from mend.testing.tokenizer import tiny_tokenizer

    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=4,
                         num_attention_heads=32, num_key_value_heads=32, vocab_size=32000,
                         max_position_embeddings=256)
    hf = LlamaForCausalLM(config).eval()
    model = EditableModel.wrap(hf, tiny_tokenizer(), name="llama-7b-blocks-4l")
    editor, optimizer, sampler = setup(model, token_mode)
    lowrank = MetaStep(model, editor, C_EDIT, C_LOC)
    batch = sampler.batch(0)
    # Adam state exists after a first step in both variants; allocate it up front so the
    # measured step sees the same steady state.
    for p in editor.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    with peak_rss_above_start() as peak:
        run_step(kind, model, editor, optimizer, batch, lowrank)
    print(json.dumps({"kind": kind, "baseline_bytes": peak["baseline"], "peak_above_bytes": peak["bytes"]}))


def measure_memory(token_mode: str) -> dict:
    out = {}
    for kind in ("lowrank", "dense"):
        proc = subprocess.run(
            [sys.executable, "-m", "bench.train_step", "--memory-worker", kind, "--token-mode", token_mode],
            cwd=ROOT, capture_output=True, text=True, check=True,
        )
        out[kind] = json.loads(proc.stdout.strip().splitlines()[-1])
    return {
        "peak_above_model_gb_lowrank": out["lowrank"]["peak_above_bytes"] / 2**30,
        "peak_above_model_gb_dense": out["dense"]["peak_above_bytes"] / 2**30,
        "memory_ratio": out["lowrank"]["peak_above_bytes"] / out["dense"]["peak_above_bytes"],
        "memory_model": "LLaMA, hidden 4096, MLP 11008, 4 layers, vocab 32000 (1.1B params)",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--token-mode", default="target", choices=["all", "target"])
    parser.add_argument("--memory-worker", choices=["lowrank", "dense"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_worker:
        memory_worker(args.memory_worker, args.token_mode)
        return
    import transformers

    transformers.utils.logging.disable_progress_bar()
    timing = measure_time(5 if args.quick else 15, args.token_mode)
    print(f"time: low-rank {timing['step_s_lowrank']:.3f}s, dense {timing['step_s_dense']:.3f}s, ratio {timing['time_ratio']:.3f}")
    memory = measure_memory(args.token_mode)
    print(f"memory above model: low-rank {memory['peak_above_model_gb_lowrank']:.2f} GiB, "
          f"dense {memory['peak_above_model_gb_dense']:.2f} GiB, ratio {memory['memory_ratio']:.3f}")
    write_result("train_step", {
        "time_ratio": round(timing["time_ratio"], 4),
        "memory_ratio": round(memory["memory_ratio"], 4),
        **{k: v for k, v in timing.items() if k != "time_ratio"},
        **{k: v for k, v in memory.items() if k != "memory_ratio"},
        "token_mode": args.token_mode,
        "batch": f"1 edit, rephrase + prompt, {N_LOC} locality inputs",
    })


if __name__ == "__main__":
    main()
