"""The frozen base model under ZeRO-3: partitioned at load time, gathered per module.

Loading goes through transformers' DeepSpeed integration: while an
``HfDeepSpeedConfig`` with stage 3 is alive, ``from_pretrained`` builds the model under
``deepspeed.zero.Init`` (each parameter is partitioned as soon as its module is built,
so no rank ever holds the whole model) and copies the checkpoint into the partitions
one module at a time (rank 0 reads the files, memory-mapped).

The base model is not the engine's module (the editor is), so nothing would gather its
parameters for a forward pass. :func:`attach_gather_hooks` registers DeepSpeed's own
ZeRO-3 module hooks on it (a ``DeepSpeedZeRoOffload``, what DeepSpeed builds for ZeRO-3
inference): each module's parameters are all-gathered before its forward and before
its backward, and released after. The gradient capture and the low-rank edit hooks use
activations only, so they run unchanged on partitioned weights; merging an edit gathers
only the edited matrices (:func:`mend.distributed.gathered`).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from mend.distributed.dsconfig import ZeroSetup
from mend.models.editable import EditableModel
from mend.training.config import TrainConfig

# transformers keeps only a weak reference to its DeepSpeed config; this keeps it alive
# for the life of the process (the model is partitioned for that long).
_HF_DS_CONFIG = None


def load_base_model(config: TrainConfig, setup: ZeroSetup, device: torch.device) -> EditableModel:
    """The training config's base model, partitioned (stage 3) or replicated (else)."""
    global _HF_DS_CONFIG
    if setup.partitions_base:
        from transformers.integrations import HfDeepSpeedConfig

        _HF_DS_CONFIG = HfDeepSpeedConfig(setup.base_config(config))
    model = EditableModel.load(config.model, dtype=config.dtype, patterns=config.editor.patterns)
    if not setup.partitions_base:
        model.model.to(device)
    return model


def attach_gather_hooks(module: nn.Module, setup: ZeroSetup, config: TrainConfig):
    """Register ZeRO-3 gather/release hooks on a partitioned frozen ``module``.

    Returns the ``DeepSpeedZeRoOffload`` object (keep it; its coordinator tracks which
    parameters are gathered).
    """
    from deepspeed.runtime.zero.config import DeepSpeedZeroConfig
    from deepspeed.runtime.zero.parameter_offload import DeepSpeedZeRoOffload
    from deepspeed.utils.timer import NoopTimer

    zero = DeepSpeedZeroConfig(**setup.zero)
    return DeepSpeedZeRoOffload(
        module,
        timers=NoopTimer(),
        ds_config=setup.base_config(config),
        overlap_comm=zero.overlap_comm,
        prefetch_bucket_size=zero.prefetch_bucket_size,
        max_reuse_distance=zero.max_reuse_distance,
        max_live_parameters=zero.max_live_parameters,
        param_persistence_threshold=zero.param_persistence_threshold,
        model_persistence_threshold=zero.model_persistence_threshold,
        offload_param_config=zero.offload_param,
    )


def partition_report(module: nn.Module, world_size: int) -> dict:
    """What this rank holds of ``module``'s parameters, in elements.

    ``total``: the model's size; ``partition``: this rank's shards (ZeRO pads each
    parameter to a multiple of the world size, so a shard is ``ceil(numel / world)``);
    ``persistent``: small parameters ZeRO-3 keeps whole on every rank; ``materialised``:
    elements of full (not persistent) parameters resident right now (0 between passes
    when partitioned); ``expected_partition``: ``sum(ceil(numel / world))`` over
    partitioned parameters; ``dtypes``: of the stored partitions.
    """
    total = partition = persistent = materialised = expected = n_params = 0
    largest_local = 0
    dtypes: set[str] = set()
    for p in module.parameters():
        n_params += 1
        if hasattr(p, "ds_id"):
            numel = p.ds_numel
            local = p.ds_tensor.numel() if p.ds_tensor is not None else 0
            if getattr(p, "ds_persist", False):
                persistent += numel
            else:
                partition += local
                expected += math.ceil(numel / world_size)
                largest_local = max(largest_local, local)
                materialised += p.data.numel()
            dtypes.add(str(p.ds_tensor.dtype).removeprefix("torch."))
        else:
            numel = p.numel()
            materialised += numel
            dtypes.add(str(p.dtype).removeprefix("torch."))
        total += numel
    return {
        "parameters": n_params,
        "total": total,
        "partition": partition,
        "expected_partition": expected,
        "persistent": persistent,
        "materialised": materialised,
        "world_size": world_size,
        "largest_local_shard": largest_local,
        "dtypes": sorted(dtypes),
    }
