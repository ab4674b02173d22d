"""``mend`` subcommands for distributed training (registered in :mod:`mend.cli`).

    mend plan --config path/to/config.json --ranks 16 --nodes 2 --zero-stage 3 --device-gb 80
    mend plan --model-type llama --hidden-size 8192 --intermediate-size 28672 \\
        --num-layers 80 --num-heads 64 --num-kv-heads 8 --vocab-size 32000 \\
        --ranks 16 --nodes 2 --zero-stage 3 --offload --device-gb 80
    mend export-deepspeed RUN/checkpoints/last OUT/

Heavy imports stay inside the functions so that ``mend --help`` stays fast.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import typer

from mend.distributed.memory_model import GIB, Parallel, Workload, plan
from mend.distributed.memory_report import format_plan
from mend.distributed.shapes import config_from_sizes, editor_shape, load_config, shape_of

__all__ = ["export_command", "plan_command"]


def plan_command(
    config: Path = typer.Option(None, "--config", exists=True,
                                help="the model's config.json (or a model folder)"),
    model_type: str = typer.Option(None, help="transformers model type, e.g. llama (with the size options)"),
    hidden_size: int = typer.Option(None),
    intermediate_size: int = typer.Option(None),
    num_layers: int = typer.Option(None),
    num_heads: int = typer.Option(None),
    num_kv_heads: int = typer.Option(None),
    vocab_size: int = typer.Option(None),
    ranks: int = typer.Option(1, help="ranks (GPUs) in total"),
    nodes: int = typer.Option(1, help="nodes the ranks are spread over"),
    deepspeed: Path = typer.Option(None, exists=True,
                                   help="read stage, offload, dtype and buckets from this DeepSpeed JSON"),
    zero_stage: int = typer.Option(None, help="ZeRO stage (default 3, or the --deepspeed file's)"),
    offload: bool = typer.Option(None, "--offload/--no-offload",
                                 help="offload parameters and optimizer state to host memory"),
    offload_param: bool = typer.Option(None, "--offload-param/--no-offload-param"),
    offload_optimizer: bool = typer.Option(None, "--offload-optimizer/--no-offload-optimizer"),
    dtype: str = typer.Option(None, help="base model dtype: bf16 | fp32 (default bf16)"),
    device_gb: float = typer.Option(None, help="memory of one device, to say whether it fits"),
    train_config: Path = typer.Option(None, exists=True,
                                      help="training YAML: n_edits, n_loc, chunk_size and the editor's settings"),
    n_edits: int = typer.Option(None), n_loc: int = typer.Option(None),
    seq_len: int = typer.Option(48, help="tokens per prompt + target (padded)"),
    target_len: int = typer.Option(8, help="scored target tokens per example"),
    chunk_size: int = typer.Option(None, help="examples per language-model pass (MetaStep chunking)"),
    editor_rank: int = typer.Option(None, help="editor rank (default 1920, capped at d_in + d_out)"),
    accelerator: str = typer.Option("gpu", help="gpu | cpu (cpu counts only touched buffer pages)"),
    runtime_gb: float = typer.Option(None, help="per-rank runtime overhead (default 3 on GPU, 0.125 on CPU)"),
    as_json: bool = typer.Option(False, "--json", help="print the plan as JSON"),
) -> None:
    """Per-rank memory of ZeRO-sharded meta-training, and whether it fits a device."""
    from mend.training.config import TrainConfig

    if (config is None) == (model_type is None):
        raise typer.BadParameter("give either --config or --model-type (with sizes)")
    hf_config = load_config(config) if config else config_from_sizes(
        model_type, hidden_size=hidden_size, intermediate_size=intermediate_size, num_layers=num_layers,
        num_heads=num_heads, num_kv_heads=num_kv_heads, vocab_size=vocab_size,
    )
    train = TrainConfig.from_yaml(train_config) if train_config else None
    editor_cfg = train.editor if train else None
    shape = shape_of(hf_config, editor_cfg.patterns if editor_cfg else None)
    editor = editor_shape(
        shape.targets,
        rank=editor_rank or (editor_cfg.rank if editor_cfg else 1920),
        n_blocks=editor_cfg.n_blocks if editor_cfg else 2,
        share_by_shape=editor_cfg.share_by_shape if editor_cfg else True,
        key_preconditioning=bool(editor_cfg and editor_cfg.key_preconditioning == "covariance"),
    )
    par = (Parallel.from_deepspeed(deepspeed, ranks, nodes, accelerator) if deepspeed
           else Parallel(ranks=ranks, nodes=nodes, accelerator=accelerator))  # type: ignore[arg-type]
    changes: dict = {}
    if zero_stage is not None:
        changes["zero_stage"] = zero_stage
    if offload is not None:
        changes["offload_param"] = changes["offload_optimizer"] = offload
    if offload_param is not None:
        changes["offload_param"] = offload_param
    if offload_optimizer is not None:
        changes["offload_optimizer"] = offload_optimizer
    if dtype is not None:
        changes["dtype"] = {"bfloat16": "bf16", "float32": "fp32"}.get(dtype, dtype)
    elif train is not None and not deepspeed:
        changes["dtype"] = "bf16" if train.dtype in ("bf16", "bfloat16") else "fp32"
    par = Parallel(**{**asdict(par), **changes})
    work = Workload(
        n_edits=n_edits or (train.n_edits if train else 1),
        n_loc=n_loc or (train.n_loc if train else 4),
        seq_len=seq_len, target_len=target_len,
        equiv_includes_prompt=train.equiv_includes_prompt if train else True,
        chunk_size=chunk_size or (getattr(train, "chunk_size", None) if train else None),
    )
    runtime = runtime_gb * GIB if runtime_gb is not None else None
    result = plan(shape, editor, par, work, device_gb=device_gb, runtime_bytes=runtime)
    if as_json:
        typer.echo(json.dumps(result.to_dict(), indent=2))
    else:
        typer.echo(format_plan(result))


def export_command(
    checkpoint: Path = typer.Argument(..., exists=True,
                                      help="a DeepSpeed run's checkpoints/last (or its engine/ folder)"),
    out: Path = typer.Argument(..., help="where to write editor.safetensors + editor.json"),
    metadata: Path = typer.Option(None, exists=True, help="editor.json describing the editor (default: beside engine/)"),
) -> None:
    """Convert a DeepSpeed engine checkpoint into the single-process editor format."""
    from mend.distributed.export import export_editor

    path = export_editor(checkpoint, out, metadata)
    typer.echo(f"editor written to {path}")
