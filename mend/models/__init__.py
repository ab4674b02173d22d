"""Model loading, edit targets per family, and per-kind batching."""

from mend.models.editable import EditableModel
from mend.models.loading import load_pretrained
from mend.models.targets import EditTarget, default_patterns, find_targets

__all__ = ["EditTarget", "EditableModel", "default_patterns", "find_targets", "load_pretrained"]
