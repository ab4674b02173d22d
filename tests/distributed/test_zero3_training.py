"""ZeRO-3 meta-training on 2 CPU ranks (gloo) against one process on the same batches.

Each run is a subprocess started by the ``deepspeed`` launcher (or ``torchrun``) on a
tiny LLaMA saved to disk; the ranks write JSON reports the tests read. The persistence
threshold is lowered to 16 elements so that ZeRO-3 really partitions the tiny model's
parameters (by default it keeps any parameter below 100k elements whole).

Tolerance. Two ranks at ``grad_accum=2`` must train the editor one process trains at
``grad_accum=4``: same records, same normalisation statistics (merged across ranks in
rank order), gradients averaged over ranks. The only difference is the order of
floating-point sums (gradient averaging, reductions on another thread count), so every
editor tensor must agree to a relative Frobenius error below ``REL_TOL`` (1e-4; 1e-6 to
2e-6 is measured after 8 steps) and the statistics' counts exactly.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from mend.editor.editor import Editor
from mend.models.editable import EditableModel
from mend.training.config import TrainConfig
from mend.training.data import load_training_data
from mend.training.trainer import Trainer
from tests.distributed import launch
from tests.distributed.workload import write_workload

pytestmark = pytest.mark.slow

REL_TOL = 1e-4
STEPS = 8
PARTITION = ["zero_optimization.stage3_param_persistence_threshold=16"]


def _rel_errors(a: Editor, b: Editor) -> dict[str, float]:
    sb = b.state_dict()
    out = {}
    for name, value in a.state_dict().items():
        x, y = value.double(), sb[name].double()
        scale = max(x.norm().item(), 1e-12)
        out[name] = (x - y).norm().item() / scale
    return out


@pytest.fixture(scope="module")
def workload(tmp_path_factory):
    root = tmp_path_factory.mktemp("zero3")
    return root, write_workload(root / "workload", max_steps=STEPS, val_every=2, checkpoint_every=4)


@pytest.fixture(scope="module")
def single_process(workload):
    """One process, grad_accum=4: the reference for 2 ranks x grad_accum=2."""
    root, config_path = workload
    config = TrainConfig.from_yaml(config_path, {"grad_accum": 4, "output_dir": str(root / "single")})
    data = load_training_data(config.data, config.seed)
    model = EditableModel.load(config.model, dtype=config.dtype)
    result = Trainer(config, model, data).train(resume=False)
    return result, Editor.load(result.best_dir)


@pytest.fixture(scope="module")
def zero3_run(workload):
    root, config_path = workload
    reports = launch.train(
        config_path, "zero3_fp32", root / "zero3-report", ds_sets=PARTITION,
        sets=["grad_accum=2", f"output_dir={root / 'zero3'}"],
    )
    return root / "zero3", reports


def test_each_rank_holds_only_its_partition_of_the_base_model(zero3_run):
    _, reports = zero3_run
    totals = set()
    for rank, report in reports.items():
        base = report["base_partition"]
        assert report["world_size"] == 2 and report["zero_stage"] == 3
        # Every parameter is split: this rank's shard is ceil(numel / 2) elements.
        assert base["persistent"] == 0
        assert base["partition"] == base["expected_partition"]
        assert base["partition"] <= math.ceil(base["total"] / 2) + base["parameters"]
        assert base["partition"] < 0.51 * base["total"]
        # Between passes no full base parameter is resident on any rank.
        assert base["materialised"] == 0, rank
        totals.add(base["total"])
        # The editor is partitioned too, except the per-matrix edit lrs (9 for LLaMA).
        editor = report["editor_partition"]
        assert editor["persistent"] == 9
        assert editor["partition"] == editor["expected_partition"] < 0.51 * editor["total"]
    assert len(totals) == 1


def test_meta_training_lowers_the_loss(zero3_run):
    _, reports = zero3_run
    history = [h for h in reports[0]["history"] if "val/loss" in h]
    assert [h["step"] for h in history] == [2, 4, 6, 8]
    losses = [h["val/loss"] for h in history]
    assert losses[-1] < losses[0] - 0.03, losses
    assert all(b < a for a, b in zip(losses, losses[1:], strict=False)), losses
    # Validation metrics are reduced over ranks: both ranks report the same numbers.
    assert reports[1]["history"][-1]["val/loss"] == pytest.approx(losses[-1], rel=1e-12)


def test_editor_matches_single_process_on_the_same_global_batch(zero3_run, single_process):
    run_dir, reports = zero3_run
    reference_result, reference = single_process
    trained = Editor.load(run_dir / "best")
    errors = _rel_errors(reference, trained)
    assert max(errors.values()) < REL_TOL, sorted(errors.items(), key=lambda kv: -kv[1])[:5]
    for key, value in reference.state_dict().items():
        if key.endswith("norm.count"):
            assert torch.equal(value, trained.state_dict()[key]), key
    # The validation losses agree step by step too.
    ours = [h["val/loss"] for h in reports[0]["history"] if "val/loss" in h]
    theirs = [h["val/loss"] for h in reference_result.history if "val/loss" in h]
    assert ours == pytest.approx(theirs, rel=1e-5)


def test_engine_checkpoint_converts_to_the_editor_format(zero3_run, tmp_path):
    from mend.distributed.export import export_editor

    run_dir, _ = zero3_run
    last = run_dir / "checkpoints" / "last"
    assert (last / "engine" / "latest").exists()
    state = json.loads((last / "state.json").read_text())
    assert state["step"] == STEPS
    exported = Editor.load(export_editor(last, tmp_path / "exported"))
    gathered = Editor.load(last)  # written beside the engine files by rank 0
    for key, value in gathered.state_dict().items():
        assert torch.equal(value, exported.state_dict()[key]), key
    assert exported.state_dict()["nets.32x64.norm.mean"].dtype == torch.float64


def test_resume_from_engine_checkpoint_with_torchrun_continues_exactly(workload, zero3_run):
    """Stop after 4 steps (deepspeed launcher), resume to 8 under torchrun: the same
    editor as the uninterrupted run."""
    root, config_path = workload
    run_dir, _ = zero3_run
    out = root / "resumed"
    common = [f"output_dir={out}", "grad_accum=2"]
    launch.train(config_path, "zero3_fp32", root / "r1", ds_sets=PARTITION, sets=[*common, "max_steps=4"])
    assert json.loads((out / "checkpoints" / "last" / "state.json").read_text())["step"] == 4
    reports = launch.train(config_path, "zero3_fp32", root / "r2", ds_sets=PARTITION, sets=common,
                           launcher="torchrun", resume=True)
    assert reports[0]["steps"] == STEPS
    errors = _rel_errors(Editor.load(run_dir / "best"), Editor.load(out / "best"))
    assert max(errors.values()) < 1e-6, errors


def test_zero3_offload_bf16_and_zero2_run(workload):
    """The other shipped configurations train too: ZeRO-3 with parameters and optimizer
    state offloaded and a bfloat16 base model, and ZeRO-2 (base model replicated)."""
    root, config_path = workload
    # torch's Adam on the offloaded partitions: DeepSpeed's CPU Adam would be compiled
    # on first use, which CI should not pay for.
    offload = launch.train(
        config_path, "zero3_offload_bf16", root / "offload-report",
        ds_sets=[*PARTITION, "zero_force_ds_cpu_optimizer=false"],
        sets=["dtype=bfloat16", "max_steps=2", "val_every=2", f"output_dir={root / 'offload'}"],
    )
    assert offload[0]["base_partition"]["dtypes"] == ["bfloat16"] and offload[0]["offload_param"] == "cpu"
    assert offload[0]["editor_partition"]["dtypes"] == ["float32"]  # the editor stays float32
    assert offload[0]["base_partition"]["materialised"] == 0
    assert math.isfinite(offload[0]["history"][-1]["val/loss"])
    Editor.load(root / "offload" / "best")
    zero2 = launch.train(config_path, "zero2_fp32", root / "zero2-report",
                         sets=["max_steps=2", "val_every=2", f"output_dir={root / 'zero2'}"])
    base = zero2[0]["base_partition"]
    assert base["partition"] == 0 and base["materialised"] == base["total"]  # replicated
    assert math.isfinite(zero2[0]["history"][-1]["val/loss"])


def test_editing_a_partitioned_model_uses_activations_and_merges_only_edited_matrices(workload, tmp_path):
    """Capture and hooked edits run on ZeRO-3 shards; merging gathers only the edited
    matrices; the result is the single-process edit's."""
    from pathlib import Path

    from mend.editor.config import EditorConfig

    root, _ = workload
    model_dir = root / "workload" / "model"
    out = tmp_path / "edit.json"
    launch.run_script(Path(__file__).parent / "edit_worker.py", str(model_dir), str(out))
    result = json.loads(out.read_text())
    weights = sorted(f"{name}.weight" for name in result["targets"])
    assert result["merge_gathered"] == [weights, weights]  # merge, then unmerge
    assert result["resident_before_merge"] == 0 and result["resident_after_merge"] == 0
    before, hooked, merged, restored = (torch.tensor(result[k]) for k in ("before", "hooked", "merged",
                                                                             "restored"))
    assert (hooked - before).abs().max() > 1e-3  # the edit does something
    assert torch.allclose(merged, hooked, atol=1e-4)
    assert torch.allclose(restored, before, atol=1e-5)

    model = EditableModel.load(model_dir)  # the same edit in one process, nothing partitioned
    torch.manual_seed(0)
    editor = Editor.for_model(model, EditorConfig(rank=32))
    prompts, targets = ["The capital of France is", "Who wrote Hamlet?"], ["Rome", "Jean Darrieux"]
    editor.fit_normalization(model, prompts, targets)
    with editor.edit(model, prompts, targets).applied(), torch.no_grad():
        reference = model.task.logits(model.model, model.task.batch(prompts, targets)).float()
    assert torch.allclose(hooked, reference, atol=1e-4)
