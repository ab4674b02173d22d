"""``mend scope``: fit a scope model on edit records and give an editor one.

    mend scope fit DATA... --out runs/scope-smollm2 [--model smollm2-135m] [--layers 4,6,8]
    mend scope attach EDITOR_DIR SCOPE_DIR --out EDITOR_OUT

``fit`` reads any supported edit-data format (zsRE, CounterFact, flat JSON...): each
record's rephrases are in its scope, its locality prompts out of every scope. The last
tenth of every file picks the block and calibrates the threshold. ``attach`` writes a
copy of an editor that edits ``scoped`` with that scope model.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
console = Console(highlight=False)


@app.command("fit")
def fit_command(
    data: list[Path] = typer.Argument(..., exists=True, dir_okay=False, help="edit records (any supported format)"),
    out: Path = typer.Option(..., "--out", help="folder for scope.safetensors + scope.json"),
    model: str = typer.Option("smollm2-135m", "--model", help="the base model whose states are routed on"),
    layers: str = typer.Option("4,6,8", "--layers", help="candidate blocks, comma-separated"),
    max_fpr: float = typer.Option(0.01, "--max-fpr", help="false-positive budget on the held-out locality prompts"),
    steps: int = typer.Option(1000, "--steps"),
    dim: int = typer.Option(128, "--dim"),
    relation: bool = typer.Option(True, "--relation/--no-relation",
                                  help="requests passing by the subject test must also ask the correction's question"),
) -> None:
    """Fit a scope model, choosing its block and threshold on held-out training records."""
    from mend.data import load_dataset
    from mend.models.editable import EditableModel
    from mend.scope.fit import fit_choosing_layer

    train, held_out = {}, {}
    for path in data:
        records = [r for r in load_dataset(path).records if r.rephrases]
        cut = max(1, int(len(records) * 0.9))
        train[path.name], held_out[path.name] = records[:cut], records[cut:]
    choice = fit_choosing_layer(EditableModel.load(model), train, held_out,
                                [int(x) for x in layers.split(",")], dim=dim, max_false_positive_rate=max_fpr,
                                steps=steps, relation_test=relation)
    summary = choice.summary()
    extra = {"data": [str(p) for p in data], "layer_choice": summary["layer_choice"]}
    choice.scope.save(out, extra=extra | ({"relation": summary["relation"]} if choice.relation else {}))
    console.print(f"block {choice.layer}, threshold {choice.scope.config.threshold:.3f}: "
                  f"{json.dumps(summary['layer_choice'][str(choice.layer)])}")
    rising = ", ".join(f"{t:.3f} at {n:,}" for n, t in choice.scope.config.count_thresholds)
    if rising:
        console.print(f"threshold by stored corrections: {rising}")
    if choice.relation is not None:
        r = choice.relation
        console.print(f"relation key: threshold {r.threshold:.3f}, keeps {r.rephrases_kept:.3f} of held-out rephrases, "
                      f"lets {r.others_passing:.3f} of other questions about their subjects through")
    console.print(f"saved to {out}")


@app.command("attach")
def attach_command(
    editor: Path = typer.Argument(..., exists=True, file_okay=False, help="a meta-trained summed editor"),
    scope: Path = typer.Argument(..., exists=True, file_okay=False, help="a scope model (mend scope fit)"),
    out: Path = typer.Option(..., "--out", help="where the scoped editor is written"),
) -> None:
    """Write a copy of EDITOR that edits scoped, with SCOPE deciding each correction's scope."""
    from mend.editor.editor import Editor
    from mend.scope.model import ScopeModel

    loaded = Editor.load(editor)
    try:
        loaded.attach_scope(ScopeModel.load(scope))
    except ValueError as error:
        raise typer.BadParameter(str(error)) from None
    loaded.save(out, extra=loaded.metadata)
    console.print(f"scoped editor written to {out}")
