"""How much room k simultaneous edits find in each edited matrix.

    python -m bench.key_room --editor runs/bench-ls2/train/best [--k 1000]

A least-squares solve per matrix maps each edited token's key (the matrix's input) to
its shift. With more rows than directions the keys span, no linear change gives every
row its own shift. For k zsRE edits (the records of ``bench.edits_scaling``) this
counts the rows and, per matrix, the directions holding 90% and 99% of the keys'
energy, raw and as the solve sees them (under the editor's key penalty, ``U P^1/2``).
Writes ``bench/results/key_room.json``.
"""

from __future__ import annotations

import argparse

import torch
import transformers

from bench.common import write_result
from bench.corrections_data import zsre_records
from mend import EditableModel, Editor
from mend.capture import record_layer_io


def spanned(rows: torch.Tensor, shares=(0.9, 0.99)) -> list[int]:
    """Fewest directions holding each share of the rows' energy."""
    energy = torch.linalg.svdvals(rows) ** 2
    cumulative = energy.cumsum(0) / energy.sum()
    return [int((cumulative < share).sum()) + 1 for share in shares]


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--editor", required=True, help="editor whose matrices and key penalty to use")
    parser.add_argument("--k", type=int, default=1000)
    args = parser.parse_args()
    transformers.utils.logging.disable_progress_bar()
    editor = Editor.load(args.editor)
    model = EditableModel.load("smollm2-135m").retargeted(editor.config.patterns)
    records = zsre_records(args.k)
    names = [t.module_name for t in editor.targets]
    keys: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    for start in range(0, len(records), 50):
        chunk = records[start : start + 50]
        batch = model.task.batch([r.prompt for r in chunk], [r.target for r in chunk])
        with record_layer_io(model.model, names) as seen:
            model.model(**batch.inputs)
        for name, (x, _) in seen.items():
            keys[name].append(x[batch.scored_masks["input"]].double())
    matrices = {}
    for index, target in enumerate(editor.targets):
        rows = torch.cat(keys[target.module_name])
        entry = {"d_in": target.d_in}
        entry["dims_90"], entry["dims_99"] = spanned(rows)
        if editor.config.key_preconditioning == "covariance":
            root = torch.linalg.cholesky(getattr(editor, f"key_precond_{index}").double())
            entry["penalised_dims_90"], entry["penalised_dims_99"] = spanned(rows @ root)
        matrices[target.module_name] = entry
        print(target.module_name, entry, flush=True)
    rows = sum(len(part) for part in keys[names[0]])
    write_result("key_room", {"editor": args.editor, "k": args.k, "rows_per_matrix": rows, "matrices": matrices})


if __name__ == "__main__":
    main()
