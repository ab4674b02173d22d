"""The JSON file saved beside a network's weights (``editor.json``, ``scope.json``): its
configuration, read back with its format checked first, so an old or foreign directory
fails with a line naming it rather than deep in a load."""

from __future__ import annotations

import json
from pathlib import Path


def read_metadata(directory: Path, name: str, current: str, what: str, hint: str = "") -> dict:
    """``directory/name`` parsed, refused unless its ``format`` is ``current`` (``what``
    names the artifact in the errors; ``hint`` says how to make a missing one)."""
    path = directory / name
    if not path.exists():
        raise FileNotFoundError(f"{directory} holds no {name}{hint}")
    meta = json.loads(path.read_text())
    if meta.get("format") != current:
        raise ValueError(f"{directory} is not a {current} {what} (format={meta.get('format')})")
    return meta
