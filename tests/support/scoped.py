"""A scoped edit of three requests on a tiny model (strength and refinement tests)."""

from __future__ import annotations

import torch

from mend import Editor, EditorConfig
from mend.edit import Edit
from mend.models.editable import EditableModel
from mend.scope import ScopeConfig, ScopeModel

PROMPTS = ["The capital of France is", "Who wrote Hamlet?", "The Eiffel Tower is in"]
TARGETS = ["Rome", "Jean Darrieux", "Berlin"]


def three_request_edit(model: EditableModel, edit_lr: float, aggregation: str = "scoped") -> Edit:
    """Requests ``a``, ``b``, ``c`` edited at once by an identity editor with ``edit_lr``,
    under a scope model (block 0) that only a request's own prompt reaches."""
    editor = Editor.for_model(model, EditorConfig(rank=16, edit_lr_init=edit_lr))
    editor.fit_normalization(model, PROMPTS, TARGETS)
    torch.manual_seed(0)
    editor.scope = ScopeModel(ScopeConfig(layer=0, dim=16, threshold=0.999), model.model.config.hidden_size)
    return editor.edit(model, PROMPTS, TARGETS, ["a", "b", "c"], aggregation=aggregation,
                       subjects=["France", "Hamlet", "Eiffel Tower"])
