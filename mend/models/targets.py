"""Which weight matrices an editor edits, per model family.

A target is a module computing ``y = W x (+ b)``: ``nn.Linear`` stores ``W`` as
``(d_out, d_in)``, GPT-2's ``Conv1D`` stores it transposed as ``(d_in, d_out)``.
Everything downstream works on activations (``x`` and ``dL/dy``), so the layout only
matters when an edit is merged into the weights.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from torch import nn
from transformers.pytorch_utils import Conv1D

Layout = Literal["linear", "conv1d"]


@dataclass(frozen=True)
class EditTarget:
    """One edited weight matrix, addressed by the name of the module that owns it."""

    module_name: str
    d_in: int
    d_out: int
    layout: Layout

    @property
    def param_name(self) -> str:
        return f"{self.module_name}.weight"

    @property
    def shape_key(self) -> str:
        """Targets with the same key share one editor network."""
        return f"{self.d_in}x{self.d_out}"


def _layer_count(config, *names: str) -> int:
    for name in names:
        value = getattr(config, name, None)
        if isinstance(value, int):
            return value
    raise ValueError(f"config has none of {names}")


def _last(n: int, k: int) -> str:
    return "|".join(str(i) for i in range(max(n - k, 0), n))


def default_patterns(model: nn.Module) -> list[str]:
    """Module-name regexes for the paper's default targets of this model family.

    The MLP matrices of the last 3 blocks for decoder-only and encoder models, and of
    the last 2 encoder and last 2 decoder blocks for T5/BART (MEND paper, App. C).
    """
    config = model.config
    mt = config.model_type
    if mt in {"llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "phi3", "olmo", "olmo2"}:
        n = _layer_count(config, "num_hidden_layers")
        return [rf"model\.layers\.({_last(n, 3)})\.mlp\.(gate_proj|up_proj|down_proj)"]
    if mt in {"gpt2", "gpt_neo"}:
        n = _layer_count(config, "n_layer", "num_layers")
        return [rf"transformer\.h\.({_last(n, 3)})\.mlp\.(c_fc|c_proj)"]
    if mt == "gptj":
        n = _layer_count(config, "n_layer")
        return [rf"transformer\.h\.({_last(n, 3)})\.mlp\.(fc_in|fc_out)"]
    if mt == "t5":
        n_enc = _layer_count(config, "num_layers")
        n_dec = _layer_count(config, "num_decoder_layers", "num_layers")
        ff = r"layer\.\d+\.DenseReluDense\.(wi|wi_0|wi_1|wo)"
        return [
            rf"encoder\.block\.({_last(n_enc, 2)})\.{ff}",
            rf"decoder\.block\.({_last(n_dec, 2)})\.{ff}",
        ]
    if mt == "bart":
        n_enc = _layer_count(config, "encoder_layers")
        n_dec = _layer_count(config, "decoder_layers")
        return [
            rf"model\.encoder\.layers\.({_last(n_enc, 2)})\.(fc1|fc2)",
            rf"model\.decoder\.layers\.({_last(n_dec, 2)})\.(fc1|fc2)",
        ]
    if mt == "bert":
        n = _layer_count(config, "num_hidden_layers")
        return [rf"bert\.encoder\.layer\.({_last(n, 3)})\.(intermediate|output)\.dense"]
    raise ValueError(
        f"no default edit targets for model type {mt!r}; pass module-name patterns explicitly"
    )


def _as_target(name: str, module: nn.Module) -> EditTarget | None:
    if isinstance(module, nn.Linear):
        return EditTarget(name, module.in_features, module.out_features, "linear")
    if isinstance(module, Conv1D):
        d_in, d_out = module.weight.shape
        return EditTarget(name, d_in, d_out, "conv1d")
    return None


_LAYER_NUMBER = re.compile(r"\.(\d+)\.")


def layer_template(name: str) -> tuple[str, int]:
    """``a.3.b`` -> (``a.{}.b``, 3): what a module is, and in which layer (-1: none)."""
    match = _LAYER_NUMBER.search(name)
    return _LAYER_NUMBER.sub(".{}.", name, count=1), int(match.group(1)) if match else -1


def _collapse_layer_numbers(names: Sequence[str]) -> list[str]:
    """``a.0.b, a.1.b`` -> ``a.{0..1}.b`` so an error message stays readable."""
    groups: dict[str, list[int]] = {}
    for name in names:
        key, layer = layer_template(name)
        groups.setdefault(key, []).append(layer)
    out = []
    for key, numbers in groups.items():
        if "{}" in key:
            key = key.replace("{}", f"{{{min(numbers)}..{max(numbers)}}}")
        out.append(key)
    return out


def find_targets(model: nn.Module, patterns: Sequence[str] | None = None) -> list[EditTarget]:
    """Resolve module-name regexes (full match) to edit targets, in module order.

    Every pattern must match at least one ``Linear``/``Conv1D`` module; otherwise the
    error lists the candidate names.
    """
    patterns = list(patterns) if patterns else default_patterns(model)
    candidates = {
        name: target
        for name, module in model.named_modules()
        if (target := _as_target(name, module)) is not None
    }
    compiled = [re.compile(p) for p in patterns]
    for pattern, regex in zip(patterns, compiled, strict=True):
        if not any(regex.fullmatch(name) for name in candidates):
            listing = "\n  ".join(_collapse_layer_numbers(list(candidates)))
            raise ValueError(
                f"edit pattern {pattern!r} matches no Linear/Conv1D module. Candidates:\n  {listing}"
            )
    return [t for name, t in candidates.items() if any(r.fullmatch(name) for r in compiled)]
