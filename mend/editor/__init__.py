"""Editor networks, their configuration and the editing API."""

from mend.editor.config import EditorConfig
from mend.editor.editor import Editor, IncompatibleModelError

__all__ = ["Editor", "EditorConfig", "IncompatibleModelError"]
