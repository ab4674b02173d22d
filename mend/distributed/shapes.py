"""The sizes memory planning needs: a base model's parameters and edited matrices, and
the editor MEND would train for them.

The model is built on PyTorch's ``meta`` device from its transformers config (no
weights, no memory), so every parameter is counted exactly and the edited matrices are
the ones training would pick (:func:`mend.models.targets.find_targets`). The editor's
size is MEND's formula (design doc §2): ``n_blocks * (2·D·r + D + 2·n_modes·D)`` per
shape-shared network, ``D = d_in + d_out``, ``r = min(rank, D)``, plus one edit lr per
matrix.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class ModelShape:
    """Sizes of a base model and of the matrices MEND edits in it."""

    name: str
    model_type: str
    n_params: int
    largest_param: int
    param_numels: tuple[int, ...] = field(repr=False)
    hidden: int
    intermediate: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    vocab: int
    first_edited_layer: int
    targets: tuple[tuple[str, int, int], ...]  # (module name, d_in, d_out)

    def persistent(self, threshold: int) -> int:
        """Elements in parameters ZeRO-3 keeps whole (``numel <= threshold``)."""
        return sum(n for n in self.param_numels if n <= threshold)


def _get(config, *names: str, default=None):
    for name in names:
        value = getattr(config, name, None)
        if value is not None:
            return value
    return default


def shape_of(config, patterns: list[str] | None = None, name: str | None = None) -> ModelShape:
    """Build the model on the meta device and measure it (no memory is allocated)."""
    import torch

    from mend.models.loading import _AUTO_CLASSES, _infer_kind
    from mend.models.targets import find_targets, layer_template

    with torch.device("meta"):
        model = _AUTO_CLASSES[_infer_kind(config)].from_config(config)
    numels = tuple(p.numel() for p in model.parameters())
    targets = find_targets(model, patterns)
    layers = [n for t in targets if (n := layer_template(t.module_name)[1]) >= 0]
    n_layers = int(_get(config, "num_hidden_layers", "n_layer", "num_layers", default=1))
    hidden = int(_get(config, "hidden_size", "n_embd", "d_model", default=0))
    heads = int(_get(config, "num_attention_heads", "n_head", "num_heads", default=1))
    return ModelShape(
        name=name or getattr(config, "_name_or_path", "") or config.model_type,
        model_type=config.model_type,
        n_params=sum(numels),
        largest_param=max(numels),
        param_numels=numels,
        hidden=hidden,
        intermediate=int(_get(config, "intermediate_size", "n_inner", "ffn_dim", "d_ff", default=4 * hidden)
                         or 4 * hidden),
        n_layers=n_layers,
        n_heads=heads,
        n_kv_heads=int(_get(config, "num_key_value_heads", default=heads)),
        vocab=int(config.vocab_size),
        first_edited_layer=min(layers) if layers else 0,
        targets=tuple((t.module_name, t.d_in, t.d_out) for t in targets),
    )


@dataclass(frozen=True)
class EditorShape:
    n_params: int
    largest_block: int  # parameters of the largest residual block (gathered at once)
    groups: tuple[tuple[int, int, int], ...]  # (D, rank, n_modes) per network
    n_targets: int
    precond_elements: int  # key-preconditioning buffers (replicated), 0 when off
    param_numels: tuple[int, ...] = field(default=(), repr=False)
    n_blocks: int = 2

    def persistent(self, threshold: int) -> int:
        return sum(n for n in self.param_numels if n <= threshold)


def editor_shape(
    targets: tuple[tuple[str, int, int], ...], rank: int = 1920, n_blocks: int = 2,
    share_by_shape: bool = True, key_preconditioning: bool = False,
) -> EditorShape:
    """MEND's editor size: ``n_blocks * (2·D·r + D + 2·n_modes·D)`` per network."""
    groups: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for module, d_in, d_out in targets:
        key = f"{d_in}x{d_out}" if share_by_shape else module
        groups[key].append((d_in, d_out))
    total, largest, shapes, numels = len(targets), 0, [], [len(targets)]
    for members in groups.values():
        d_in, d_out = members[0]
        dim = d_in + d_out
        r = min(rank, dim)
        modes = len(members)
        block = 2 * dim * r + dim + 2 * modes * dim
        total += n_blocks * block
        largest = max(largest, block)
        shapes.append((dim, r, modes))
        # down (r, D), up (D, r), bias (D), mode scale and shift (n_modes, D)
        numels += [r * dim, dim * r, dim, modes * dim, modes * dim] * n_blocks
    precond = sum(d_in * d_in for _, d_in, _ in targets) if key_preconditioning else 0
    return EditorShape(total, largest, tuple(shapes), len(targets), precond, tuple(numels), n_blocks)


def load_config(path: str | Path):
    """A transformers config from a ``config.json`` file or a model folder."""
    from transformers import AutoConfig

    path = Path(path)
    if path.is_dir():
        return AutoConfig.from_pretrained(path)
    raw = json.loads(path.read_text())
    model_type = raw.pop("model_type", None)
    if model_type is None:
        raise ValueError(f"{path} has no model_type")
    for key in ("architectures", "transformers_version", "_name_or_path"):
        raw.pop(key, None)
    config = AutoConfig.for_model(model_type, **raw)
    config._name_or_path = path.parent.name if path.name == "config.json" else path.stem
    return config


def config_from_sizes(model_type: str, **sizes) -> object:
    """A transformers config of ``model_type`` with the given sizes (None = default)."""
    from transformers import AutoConfig

    names = {
        "hidden_size": "hidden_size", "intermediate_size": "intermediate_size",
        "num_layers": "num_hidden_layers", "num_heads": "num_attention_heads",
        "num_kv_heads": "num_key_value_heads", "vocab_size": "vocab_size",
    }
    kwargs = {names[k]: v for k, v in sizes.items() if v is not None}
    config = AutoConfig.for_model(model_type, **kwargs)
    config._name_or_path = f"{model_type}-custom"
    return config
