"""Carry a trained editor over to other matrices of the same model.

An editor's networks are shared by matrix shape; what belongs to one matrix is its mode
row in each block (scale and shift), its edit lr and (least squares) its regulariser.
So a trained editor can start an editor for more or other matrices, e.g. the down
projections of ten layers instead of the MLPs of the last three: the networks are
copied whole, and each new matrix takes the per-matrix entries of the trained matrix of
the same kind (name with the layer number blanked) and shape that sits nearest to it,
by layer.

Not carried over: key preconditioners (refitted on the new matrices' inputs) and, for
a network whose matrices changed, the normalisation statistics (the new layers' factors
have their own moments; the first training batches refill them).
"""

from __future__ import annotations

import torch

from mend.editor.editor import Editor
from mend.models.targets import EditTarget, layer_template


def _kind_and_layer(target: EditTarget) -> tuple[str, int]:
    template, layer = layer_template(target.module_name)
    return f"{template}:{target.shape_key}", layer


def source_matrices(source: Editor, editor: Editor) -> dict[str, str]:
    """For each of ``editor``'s matrices, the ``source`` matrix its entries come from.

    Same name if ``source`` has it; else the same kind and shape, nearest layer (the
    lower on a tie); else the same shape, nearest layer. A matrix whose shape ``source``
    never edits has no network to inherit and is an error.
    """
    by_kind: dict[str, list[tuple[int, str]]] = {}
    by_shape: dict[str, list[tuple[int, str]]] = {}
    for target in source.targets:
        kind, layer = _kind_and_layer(target)
        by_kind.setdefault(kind, []).append((layer, target.module_name))
        by_shape.setdefault(target.shape_key, []).append((layer, target.module_name))
    names = {t.module_name for t in source.targets}
    mapping = {}
    for target in editor.targets:
        if target.module_name in names:
            mapping[target.module_name] = target.module_name
            continue
        kind, layer = _kind_and_layer(target)
        candidates = by_kind.get(kind) or by_shape.get(target.shape_key)
        if not candidates:
            raise ValueError(
                f"cannot start {target.module_name} ({target.shape_key}) from the trained editor: "
                f"it edits no matrix of that shape (it has {sorted(by_shape)})"
            )
        mapping[target.module_name] = min(candidates, key=lambda c: (abs(c[0] - layer), c[0]))[1]
    return mapping


@torch.no_grad()
def transplant(source: Editor, editor: Editor) -> dict[str, str]:
    """Initialise ``editor`` from ``source`` (see module docstring); returns the mapping."""
    if not (source.config.share_by_shape and editor.config.share_by_shape):
        raise ValueError("only editors that share networks by shape can move to other matrices")
    mapping = source_matrices(source, editor)
    for key, net in editor.nets.items():
        if key not in source.nets:
            continue
        src_net = source.nets[key]
        for (name, param), src_param in zip(net.blocks.named_parameters(), src_net.blocks.parameters(), strict=True):
            if not name.endswith(("mode_scale", "mode_shift")):
                param.copy_(src_param)
        same_matrices = [t for t in editor.targets if editor._group_of[t.module_name] == key] == [
            t for t in source.targets if source._group_of[t.module_name] == key
        ]
        if same_matrices:
            net.norm.load_state_dict(src_net.norm.state_dict())
    for target in editor.targets:
        new, old = target.module_name, mapping[target.module_name]
        net, src_net = editor.nets[editor._group_of[new]], source.nets[source._group_of[old]]
        mode, src_mode = editor._mode_of[new], source._mode_of[old]
        for block, src_block in zip(net.blocks, src_net.blocks, strict=True):
            block.mode_scale[mode] = src_block.mode_scale[src_mode]
            block.mode_shift[mode] = src_block.mode_shift[src_mode]
        i, j = editor._lr_index[new], source._lr_index[old]
        editor.edit_lrs[i] = source.edit_lrs[j]
        if editor.least_squares and source.least_squares:
            editor.log_lambdas[i] = source.log_lambdas[j]
    return mapping
