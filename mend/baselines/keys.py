"""MEMIT's keys: the input of a block's MLP output projection at the subject's last token.

The output projection (LLaMA ``mlp.down_proj``, GPT-2 ``mlp.c_proj``, GPT-J ``mlp.fc_out``)
is the matrix edited; its input at the subject's last token is the key a fact is written
under, and the residual stream after the last edited block at the same token is where the
fact's value lives (:mod:`mend.baselines.values`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch
from torch import Tensor

from mend.models.blocks import block_output, decoder_blocks
from mend.models.editable import EditableModel

# The name of the MLP output projection inside a decoder block, per family.
_OUTPUT_PROJECTIONS = ("mlp.down_proj", "mlp.c_proj", "mlp.fc_out")


class _Reached(Exception):
    """Raised after the highest block needed: nothing above it has to run."""


def default_layers(n_blocks: int) -> list[int]:
    """Blocks 4-8 of a 30-block model (the measured default), scaled to ``n_blocks``."""
    first, last = round(n_blocks * 4 / 30), round(n_blocks * 8 / 30)
    return list(range(first, max(last, first) + 1))


def blocks_name(model: EditableModel) -> str:
    """The dotted name of the decoder block stack (``model.layers``, ``transformer.h``)."""
    blocks = decoder_blocks(model.model)
    return next(name for name, module in model.model.named_modules() if module is blocks)


def output_projection(model: EditableModel, layer: int) -> str:
    """The module name of block ``layer``'s MLP output projection."""
    block = f"{blocks_name(model)}.{layer}"
    for suffix in _OUTPUT_PROJECTIONS:
        with contextlib.suppress(AttributeError):
            model.model.get_submodule(f"{block}.{suffix}")
            return f"{block}.{suffix}"
    raise ValueError(f"block {block} has no MLP output projection ({', '.join(_OUTPUT_PROJECTIONS)})")


def subject_end(prompt: str, subject: str | None) -> int:
    """Character offset where ``subject`` last ends in ``prompt`` (case-insensitive)."""
    if not subject:
        raise ValueError(f"MEMIT/AlphaEdit key facts by their subject; the record {prompt!r} has none")
    start = prompt.lower().rfind(subject.lower())
    if start < 0:
        raise ValueError(f"subject {subject!r} does not occur in the prompt {prompt!r}")
    return start + len(subject)


def token_ending_at(offsets: Sequence[tuple[int, int]], end: int) -> int:
    """The last (non-special) token that starts before character ``end``."""
    inside = [i for i, (s, e) in enumerate(offsets) if e > s and s < end]
    if not inside:
        raise ValueError("no token before the subject's end")
    return inside[-1]


def encode_at_subject(model: EditableModel, texts: Sequence[str], ends: Sequence[int]) -> tuple[dict, Tensor]:
    """Right-padded inputs for ``texts`` and, per text, the token where its subject ends."""
    tok = model.tokenizer
    rows, positions = [], []
    for text, end in zip(texts, ends, strict=True):
        enc = tok(text, return_offsets_mapping=True)
        rows.append(enc["input_ids"])
        positions.append(token_ending_at(enc["offset_mapping"], end))
    width = max(len(r) for r in rows)
    ids = torch.tensor([r + [model.task.pad_id] * (width - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    return {"input_ids": ids, "attention_mask": mask}, torch.tensor(positions)


@torch.no_grad()
def subject_keys(
    model: EditableModel,
    prompts: Sequence[str],
    subjects: Sequence[str | None],
    layers: Sequence[int],
    state_layer: int,
    batch_size: int = 64,
) -> tuple[dict[int, Tensor], Tensor]:
    """Per layer, the keys ``(n, d_in)`` of the prompts' facts; and the residual stream
    after block ``state_layer`` at the same tokens ``(n, d_model)``, on the current weights."""
    ends = [subject_end(p, s) for p, s in zip(prompts, subjects, strict=True)]
    blocks = decoder_blocks(model.model)
    top = max([*layers, state_layer])
    captured: dict[int, Tensor] = {}
    state: list[Tensor] = []

    def keep_input(layer: int):
        def hook(module, args):
            captured[layer] = args[0].detach()
        return hook

    def keep_state(module, args, output):
        state.append(block_output(output).detach())

    def stop(module, args, output):
        raise _Reached

    handles = [model.model.get_submodule(output_projection(model, layer)).register_forward_pre_hook(keep_input(layer))
               for layer in layers]
    handles.append(blocks[state_layer].register_forward_hook(keep_state))
    handles.append(blocks[top].register_forward_hook(stop))
    keys: dict[int, list[Tensor]] = {layer: [] for layer in layers}
    states: list[Tensor] = []
    try:
        for start in range(0, len(prompts), batch_size):
            inputs, pos = encode_at_subject(model, prompts[start : start + batch_size], ends[start : start + batch_size])
            captured.clear()
            state.clear()
            with contextlib.suppress(_Reached):
                model.model(**{k: v.to(model.device) for k, v in inputs.items()}, use_cache=False)
            rows, pos = torch.arange(len(pos), device=model.device), pos.to(model.device)
            for layer in layers:
                keys[layer].append(captured[layer][rows, pos].float().cpu())
            states.append(state[0][rows, pos].float().cpu())
    finally:
        for handle in handles:
            handle.remove()
    return {layer: torch.cat(parts) for layer, parts in keys.items()}, torch.cat(states)
