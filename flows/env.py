"""Local defaults for the flows' environment, set before Prefect is imported.

Only where nothing else is configured: ``PREFECT_HOME=./.prefect`` (runs and the
temporary API's database stay in the project; ``prefect server start`` with the same
``PREFECT_HOME`` shows them) unless ``PREFECT_HOME`` or ``PREFECT_API_URL`` is set,
Prefect analytics off, and no download progress bars from Hugging Face or MLflow.
"""

from __future__ import annotations

import os
from pathlib import Path


def apply_local_defaults(cwd: Path | None = None) -> None:
    """Set the defaults above in ``os.environ`` (never overriding what is set)."""
    cwd = cwd or Path.cwd()
    if not os.environ.get("PREFECT_HOME") and not os.environ.get("PREFECT_API_URL"):
        os.environ["PREFECT_HOME"] = str(cwd / ".prefect")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
