"""Edit latency on SmolLM2-135M: one MEND edit (compute + apply) against the least work
any gradient-based edit needs, one forward+backward computing gradients only for the
edited matrices, on the same example, in the same process.

    python -m bench.edit_latency [--editor DIR] [--examples 10] [--repeats 5]

Writes ``bench/results/edit_latency.json`` with ``ratio`` (median edit time / median
forward+backward time) and the raw times.
"""

from __future__ import annotations

import argparse
import json

import torch

from bench.common import SHARED_DATA, median, timed, write_result
from mend import EditableModel, Editor
from mend.models.tasks import IGNORE

FALLBACK = [
    ("The capital of France is", "Lyon"),
    ("The Eiffel Tower is located in the city of", "Rome"),
    ("The mother tongue of Danielle Darrieux is", "English"),
]


def examples(n: int) -> list[tuple[str, str]]:
    path = SHARED_DATA / "zsre" / "zsre_mend_eval-dev-537.json"
    if not path.exists():
        return FALLBACK[:n]
    return [(r["src"], r["alt"]) for r in json.loads(path.read_text())[:n]]


def forward_backward(model: EditableModel, weights, prompt: str, target: str) -> None:
    """HF's own loss, backward with only the edited matrices requiring grad."""
    batch = model.task.batch([prompt], [target])
    ids = batch.inputs["input_ids"]
    hf_labels = torch.full_like(ids, IGNORE)
    hf_labels[:, 1:] = batch.labels[:, :-1]  # HF shifts labels itself
    for w in weights:
        w.grad = None
    loss = model.model(**batch.inputs, labels=hf_labels).loss
    loss.backward()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--editor", help="trained editor directory (default: identity editor)")
    parser.add_argument("--examples", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    model = EditableModel.load("smollm2-135m")
    pairs = examples(args.examples)
    if args.editor:
        editor = Editor.load(args.editor)
    else:
        # Same architecture and cost as a trained editor; only the weights differ.
        editor = Editor.for_model(model)
        editor.fit_normalization(model, [p for p, _ in pairs], [t for _, t in pairs])
    editor.eval()

    # The model comes frozen (EditableModel.wrap): only the edited matrices want gradients.
    weights = [model.model.get_submodule(t.module_name).weight for t in model.targets]
    for w in weights:
        w.requires_grad_(True)

    def edit_once(prompt: str, target: str) -> None:
        editor.edit(model, [prompt], [target]).apply().remove()

    for prompt, target in pairs[:2]:  # warm-up
        forward_backward(model, weights, prompt, target)
        edit_once(prompt, target)
    fb_times, edit_times = [], []
    for _ in range(args.repeats):
        for prompt, target in pairs:
            fb_times.append(timed(forward_backward, model, weights, prompt, target))
            edit_times.append(timed(edit_once, prompt, target))
    ratio = median(edit_times) / median(fb_times)
    print(f"edit {median(edit_times):.4f}s  forward+backward {median(fb_times):.4f}s  ratio {ratio:.3f}")
    write_result(
        "edit_latency",
        {
            "ratio": round(ratio, 4),
            "edit_s_median": median(edit_times),
            "forward_backward_s_median": median(fb_times),
            "edit_s": edit_times,
            "forward_backward_s": fb_times,
            "token_mode": editor.config.token_mode,
            "editor": args.editor or "identity (untrained, same architecture)",
            "examples": len(pairs),
            "repeats": args.repeats,
        },
    )


if __name__ == "__main__":
    main()
