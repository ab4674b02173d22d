"""One rank of the partitioned-editing check (started by the deepspeed launcher).

Loads a model partitioned with ZeRO-3, makes an edit with an identity editor, and writes
(rank 0) JSON: logits with the edit hooked in and merged, which parameters the merge
gathered, and how many base elements were resident at each stage.

    deepspeed --num_gpus 2 tests/distributed/edit_worker.py MODEL_DIR OUT_JSON
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch


def main(model_dir: str, out: str) -> None:
    from mend.distributed import world as world_mod
    from mend.distributed.dsconfig import ZeroSetup
    from mend.distributed.zero import attach_gather_hooks, load_base_model, partition_report
    from mend.training.config import TrainConfig
    from tests.distributed.workload import DS_CONFIGS

    world = world_mod.init_world()
    config = TrainConfig.model_validate({"model": model_dir, "data": {"train": [{"path": "x"}]}})
    # Small persistence threshold: partition even the tiny model's parameters. No
    # prefetch and no reuse distance: once DeepSpeed has recorded a module order it
    # gathers ahead, and keeps weights it expects to need again soon (for a model this
    # small, all of them); either would show as resident below.
    setup = ZeroSetup.load(DS_CONFIGS / "zero3_fp32.json",
                           {"zero_optimization.stage3_param_persistence_threshold": 16,
                            "zero_optimization.stage3_prefetch_bucket_size": 0,
                            "zero_optimization.stage3_max_reuse_distance": 0})
    model = load_base_model(config, setup, world.device)
    attach_gather_hooks(model.model, setup, config)

    import mend.deltas
    from mend.editor.config import EditorConfig
    from mend.editor.editor import Editor

    gathered_names: list[list[str]] = []
    names = {id(p): n for n, p in model.model.named_parameters()}
    real_gathered = mend.deltas.gathered

    def recording(params, *args, **kwargs):
        gathered_names.append(sorted(names[id(p)] for p in params))
        return real_gathered(params, *args, **kwargs)

    mend.deltas.gathered = recording

    torch.manual_seed(0)
    editor = Editor.for_model(model, EditorConfig(rank=32))
    prompts, targets = ["The capital of France is", "Who wrote Hamlet?"], ["Rome", "Jean Darrieux"]
    editor.fit_normalization(model, prompts, targets)
    edit = editor.edit(model, prompts, targets)
    batch = model.task.batch(prompts, targets).to(model.device)

    def logits():
        with torch.no_grad():
            return model.task.logits(model.model, batch).float()

    before = logits()
    with edit.applied():
        hooked = logits()
    resident_before = partition_report(model.model, world.world_size)["materialised"]
    edit.merge()
    merged = logits()
    resident_after = partition_report(model.model, world.world_size)["materialised"]
    edit.unmerge()
    restored = logits()
    if world.is_main:
        Path(out).write_text(json.dumps({
            "before": before.tolist(), "hooked": hooked.tolist(), "merged": merged.tolist(),
            "restored": restored.tolist(), "merge_gathered": gathered_names,
            "targets": [t.module_name for t in model.targets],
            "resident_before_merge": resident_before, "resident_after_merge": resident_after,
        }))


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if not a.startswith("--local_rank")]
    main(*args)
    from mend.distributed.world import exit_process

    exit_process(0)
