"""Write an edit as a PEFT LoRA adapter (``adapter_config.json`` + ``adapter_model.safetensors``).

A low-rank change ``dW = v^T u`` is a LoRA pair with ``lora_A = u`` (r x d_in) and
``lora_B = v^T`` (d_out x r). PEFT scales the product by ``alpha / r``; we set each
module's alpha to its rank so the scale is exactly 1. Ranks differ per module (they are
token counts), which ``rank_pattern``/``alpha_pattern`` express.
"""

from __future__ import annotations

import re
from pathlib import Path

from peft import LoraConfig
from safetensors.torch import save_file

from mend.deltas import LowRankDelta
from mend.models.targets import Layout

_TASK_TYPES = {"causal": "CAUSAL_LM", "seq2seq": "SEQ_2_SEQ_LM", "classifier": None}


def save_as_lora(
    deltas: dict[str, LowRankDelta],
    layouts: dict[str, Layout],
    directory: Path,
    base_model_name_or_path: str | None,
    kind: str = "causal",
) -> Path:
    """Write the adapter files for ``deltas`` into ``directory`` and return it."""
    deltas = {n: d.detach() for n, d in deltas.items() if d.rank > 0}
    if not deltas:
        raise ValueError("the edit changes no matrix; nothing to export")
    ranks = {name: d.rank for name, d in deltas.items()}
    default_rank = max(ranks.values())
    # PEFT matches pattern keys as regexes "(.*\.)?key$": escape the full names.
    config = LoraConfig(
        r=default_rank,
        lora_alpha=default_rank,
        target_modules=sorted(deltas),
        rank_pattern={re.escape(n): r for n, r in ranks.items()},
        alpha_pattern={re.escape(n): r for n, r in ranks.items()},
        lora_dropout=0.0,
        bias="none",
        fan_in_fan_out=any(layouts[n] == "conv1d" for n in deltas),
        task_type=_TASK_TYPES.get(kind),
        base_model_name_or_path=base_model_name_or_path,
        inference_mode=True,
    )
    directory.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(str(directory))
    tensors = {}
    for name, delta in deltas.items():
        prefix = f"base_model.model.{name}"
        tensors[f"{prefix}.lora_A.weight"] = delta.u.float().contiguous().cpu()
        tensors[f"{prefix}.lora_B.weight"] = delta.v.T.float().contiguous().cpu()
    save_file(tensors, directory / "adapter_model.safetensors", metadata={"format": "pt"})
    return directory
