"""The stack of decoder blocks of a causal LM, and what one block returns.

Scope keys, the subject-keyed baselines and the reuse of unedited blocks all work block
by block; the stack is found from the config's layer count, whatever the family calls it.
"""

from __future__ import annotations

from torch import Tensor, nn


def decoder_blocks(model: nn.Module) -> nn.ModuleList:
    """The stack of decoder blocks of a causal LM (``model.layers``, ``transformer.h``...)."""
    config = model.config
    n = next((getattr(config, k) for k in ("num_hidden_layers", "n_layer", "num_layers") if hasattr(config, k)), None)
    if getattr(config, "is_encoder_decoder", False) or n is None:
        raise ValueError(f"scoped edits route decoder-only causal LMs; {type(model).__name__} is not one")
    for _, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == n:
            return module
    raise ValueError(f"found no stack of {n} decoder blocks in {type(model).__name__}")


def block_output(output) -> Tensor:
    """The hidden states a decoder block returns (a tensor, or the first of a tuple)."""
    return output[0] if isinstance(output, tuple) else output
