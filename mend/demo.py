"""A first look at editing: change one fact in SmolLM2-135M, check an unrelated one, undo.

    python -m mend.demo [--editor DIR] [--prompt ...] [--target ...]

Without ``--editor`` it uses an untrained (identity) editor whose normalisation
statistics come from a few edit examples: MEND's starting point, which already performs
a normalised fine-tuning step in one forward/backward pass.
"""

from __future__ import annotations

import transformers
import typer
from rich.console import Console
from rich.table import Table

from mend import EditableModel, Editor, EditorConfig

STATS_EXAMPLES = [
    ("The capital of France is", "Rome"),
    ("The Eiffel Tower is located in", "Berlin"),
    ("The largest planet in the solar system is", "Mars"),
    ("The author of Hamlet is", "Charles Dickens"),
    ("Water freezes at a temperature of", "50 degrees"),
    ("The currency of Japan is the", "euro"),
]

console = Console()


def run_demo(
    editor_dir: str | None = None,
    prompt: str = "The capital of France is",
    target: str = "Rome",
    unrelated: str = "The chemical symbol for gold is",
    model_source: str = "smollm2-135m",
) -> dict[str, str]:
    """Edit one fact, show before/after/undone answers and return them."""
    transformers.utils.logging.disable_progress_bar()
    console.rule("[bold]MEND demo")
    console.print(f"loading [cyan]{model_source}[/] …")
    model = EditableModel.load(model_source)
    if editor_dir:
        editor = Editor.load(editor_dir)
        console.print(f"editor: [cyan]{editor_dir}[/]")
    else:
        editor = Editor.for_model(model, EditorConfig(edit_lr_init=1e-4))
        editor.fit_normalization(
            model, [p for p, _ in STATS_EXAMPLES], [t for _, t in STATS_EXAMPLES]
        )
        console.print("editor: untrained (identity) MEND editor, statistics from 6 examples")

    def answer(text: str) -> str:
        return model.generate([text], max_new_tokens=8)[0].strip().split("\n")[0]

    answers = {"before": answer(prompt), "unrelated_before": answer(unrelated)}
    edit = editor.edit(model, [prompt], [target])
    edit.apply()
    answers["edited"] = answer(prompt)
    answers["unrelated_edited"] = answer(unrelated)
    edit.remove()
    answers["removed"] = answer(prompt)

    table = Table(title=f"Edit: {prompt!r} -> {target!r}  ({edit!r})")
    table.add_column("step")
    table.add_column(prompt)
    table.add_column(unrelated)
    table.add_row("original model", answers["before"], answers["unrelated_before"])
    table.add_row("edit applied", answers["edited"], answers["unrelated_edited"])
    table.add_row("edit removed", answers["removed"], "")
    console.print(table)
    checks = {
        "edit took": answers["edited"].startswith(target),
        "unrelated unchanged": answers["unrelated_edited"] == answers["unrelated_before"],
        "original back": answers["removed"] == answers["before"],
    }
    for name, ok in checks.items():
        console.print(f"{'[green]✓' if ok else '[red]✗'}[/] {name}")
    return answers


def main(
    editor: str = typer.Option(None, help="trained editor directory"),
    prompt: str = typer.Option("The capital of France is"),
    target: str = typer.Option("Rome"),
    unrelated: str = typer.Option("The chemical symbol for gold is"),
) -> None:
    run_demo(editor, prompt, target, unrelated)


if __name__ == "__main__":
    typer.run(main)
