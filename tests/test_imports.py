"""Every library module imports on its own, first thing in a fresh interpreter: an
import cycle through a package's ``__init__`` fails only for the module imported first,
which :mod:`tests.test_architecture` (reading imports, not running them) cannot see."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

PROBE = """
import importlib, sys
import torch, transformers  # loaded once: each round re-imports only the library
names = sys.argv[1:]
for name in names:
    for loaded in [m for m in sys.modules if m == "mend" or m.startswith("mend.")]:
        del sys.modules[loaded]
    try:
        importlib.import_module(name)
    except Exception as error:
        print(f"{name}: {type(error).__name__}: {error}")
"""


def library_modules() -> list[str]:
    paths = (ROOT / "mend").rglob("*.py")
    return sorted(".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__") for p in paths)


@pytest.mark.slow
def test_every_library_module_imports_first():
    out = subprocess.run([sys.executable, "-c", PROBE, *library_modules()], cwd=ROOT, capture_output=True,
                         text=True, check=True)
    assert out.stdout == "", "modules that fail when imported first:\n" + out.stdout
