"""MEND: model editor networks with gradient decomposition, as a library.

    >>> from mend import EditableModel, Editor
    >>> model = EditableModel.load("smollm2-135m")
    >>> editor = Editor.load("path/to/editor")
    >>> edit = editor.edit(model, ["The capital of France is"], ["Lyon"])
    >>> edit.apply(); model.generate(["The capital of France is"]); edit.remove()
"""

from mend.edit import Edit, EditRequest
from mend.editor import Editor, EditorConfig, IncompatibleModelError
from mend.models import EditableModel

load_model = EditableModel.load

__all__ = [
    "Edit",
    "EditRequest",
    "EditableModel",
    "Editor",
    "EditorConfig",
    "IncompatibleModelError",
    "load_model",
]
__version__ = "0.1.0"
