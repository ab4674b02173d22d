"""``mend`` subcommands for distributed training (registered in :mod:`mend.cli`).

Imports stay inside the functions so that ``mend --help`` stays fast.
"""

from __future__ import annotations

from pathlib import Path

import typer

from mend.planner import plan_command

__all__ = ["export_command", "plan_command"]


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
