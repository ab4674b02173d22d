"""The second moment ``C = E[k kᵀ]`` of a block's keys on generic text.

MEMIT regularises its solve with it and AlphaEdit projects onto its null space: both stand
for "the inputs this matrix sees on ordinary text", which the edit should leave alone.
Computed once per model, corpus and layer, kept in memory and cached as safetensors.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from mend.data.records import EditRecord
from mend.models.blocks import decoder_blocks
from mend.models.editable import EditableModel
from mend.models.loading import cache_dir


class _Reached(Exception):
    """Raised after the highest block needed."""


def corpus_texts(records: Sequence[EditRecord]) -> list[str]:
    """Plain text from a dataset's records: each prompt with its target, each locality
    probe with its answer (for WikiBio, Wikipedia-style passages and web text)."""
    texts = []
    for record in records:
        texts.append(f"{record.prompt} {record.target}")
        texts += [f"{p.prompt} {p.answer}" for p in record.locality]
    return texts


@torch.no_grad()
def key_second_moments(
    model: EditableModel,
    modules: dict[int, str],
    texts: Sequence[str],
    max_tokens: int,
    batch_size: int = 8,
    max_length: int = 256,
) -> tuple[dict[int, Tensor], int]:
    """``C`` per layer (float64, ``(d_in, d_in)``) over every token of ``texts`` (each cut
    at ``max_length`` tokens) until ``max_tokens``; ``modules`` maps layer -> module name.
    Returns the moments and the token count."""
    blocks = decoder_blocks(model.model)
    top = max(modules)
    sums: dict[int, Tensor] = {}
    mask_now: list[Tensor] = []

    def accumulate(layer: int):
        def hook(module, args):
            rows = args[0][mask_now[0]].double().cpu()
            sums[layer] = sums.get(layer, 0) + rows.T @ rows
        return hook

    def stop(module, args, output):
        raise _Reached

    handles = [model.model.get_submodule(name).register_forward_pre_hook(accumulate(layer))
               for layer, name in modules.items()]
    handles.append(blocks[top].register_forward_hook(stop))
    tok, count = model.tokenizer, 0
    try:
        for start in range(0, len(texts), batch_size):
            if count >= max_tokens:
                break
            rows = [tok(t, truncation=True, max_length=max_length)["input_ids"]
                    for t in texts[start : start + batch_size]]
            rows = [r for r in rows if r]
            if not rows:
                continue
            width = max(len(r) for r in rows)
            ids = torch.tensor([r + [model.task.pad_id] * (width - len(r)) for r in rows], device=model.device)
            mask = torch.tensor([[True] * len(r) + [False] * (width - len(r)) for r in rows], device=model.device)
            mask_now[:] = [mask]
            with contextlib.suppress(_Reached):
                model.model(input_ids=ids, attention_mask=mask.long(), use_cache=False)
            count += int(mask.sum())
    finally:
        for handle in handles:
            handle.remove()
    if not count:
        raise ValueError("no generic text to estimate the keys' second moment from")
    return {layer: sums[layer] / count for layer in modules}, count


class SecondMoments:
    """``C`` per layer for one corpus, computed on first use and cached (in memory, and as
    ``cov-<model>-<corpus>-L<layer>.safetensors`` under ``directory``, default
    ``$MEND_CACHE/baselines``; ``directory=False`` keeps it in memory only)."""

    def __init__(self, texts: Sequence[str], directory: Path | str | bool | None = None,
                 max_tokens: int = 200_000):
        if not texts:
            raise ValueError("the generic-text corpus for the keys' second moment is empty")
        self.texts = list(texts)
        self.max_tokens = max_tokens
        self.directory = None if directory is False else Path(directory or cache_dir() / "baselines")
        digest = hashlib.sha256(json.dumps([self.texts, max_tokens]).encode()).hexdigest()[:12]
        self.corpus_id = digest
        self._memory: dict[tuple[str, int], Tensor] = {}

    def _path(self, model_id: str, layer: int) -> Path | None:
        if self.directory is None:
            return None
        return self.directory / f"cov-{model_id}-{self.corpus_id}-L{layer}.safetensors"

    def get(self, model: EditableModel, modules: dict[int, str]) -> dict[int, Tensor]:
        """``C`` (float64) for each layer of ``modules`` (layer -> output projection name)."""
        model_id = model.targets_fingerprint()
        missing = {}
        for layer, name in modules.items():
            key = (model_id, layer)
            path = self._path(model_id, layer)
            if key not in self._memory and path is not None and path.is_file():
                self._memory[key] = load_file(path)["second_moment"].double()
            if key not in self._memory:
                missing[layer] = name
        if missing:
            moments, count = key_second_moments(model, missing, self.texts, self.max_tokens)
            for layer, moment in moments.items():
                self._memory[(model_id, layer)] = moment
                path = self._path(model_id, layer)
                if path is not None:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    save_file({"second_moment": moment.contiguous(), "tokens": torch.tensor([count])}, str(path))
        return {layer: self._memory[(model_id, layer)] for layer in modules}
