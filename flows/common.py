"""What the flows share: configuration loading, retry policy, Prefect artifacts."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)

from mend.pipeline.config import DEFAULT_CONFIG, PipelineConfig
from mend.storage import ArtifactStore, open_store

ConfigArg = dict[str, Any] | str | None

# Errors that say the input or configuration is wrong: retrying cannot help.
PERMANENT_ERRORS = (ValueError, TypeError, KeyError, FileNotFoundError, PermissionError, NotImplementedError)


def is_transient(_task, _task_run, state) -> bool:
    """Retry unless the failure is a permanent one (bad data, bad config, missing file)."""
    try:
        exc = state.result(raise_on_failure=False)
    except Exception:  # noqa: BLE001 - result not retrievable: assume transient
        return True
    return not isinstance(exc, PERMANENT_ERRORS)


# Steps that talk to the artifact store or to MLflow can fail transiently (a 503 from
# S3, a dropped connection, a locked SQLite database): retry them with backoff. The
# store also retries each request itself; these retries cover whole steps.
TRANSIENT = {"retries": 3, "retry_delay_seconds": [2, 5, 10], "retry_jitter_factor": 0.5,
             "retry_condition_fn": is_transient}
# Results persisted as JSON (never pickles) so retries and re-runs can reuse them.
PERSIST = {"persist_result": True, "result_serializer": "json"}


def load_config(config: ConfigArg = None, overrides: dict[str, Any] | None = None) -> PipelineConfig:
    """A config from a dict (as passed between flows), a YAML path, or the default file."""
    if isinstance(config, dict):
        return PipelineConfig.from_dict(config, overrides)
    path = Path(config) if config else DEFAULT_CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"pipeline config not found: {path} (pass config=... or --config)")
    return PipelineConfig.from_yaml(path, overrides)


def store_for(uri: str) -> ArtifactStore:
    """The one place the flows open an artifact store (STORE-RESOLVER: mend.storage's
    resolver goes here when it lands)."""
    return open_store(uri)


def slug(text: str, length: int = 64) -> str:
    """A Prefect artifact key: lowercase letters, digits and dashes."""
    out = "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-")
    while "--" in out:
        out = out.replace("--", "-")
    return out[:length].strip("-") or "x"


def logger():
    """The Prefect run logger, or a plain one outside a run (unit use)."""
    try:
        return get_run_logger()
    except Exception:  # noqa: BLE001 - MissingContextError outside flows/tasks
        import logging

        return logging.getLogger("mend.flows")


def table(key: str, rows: list[dict] | dict[str, list], description: str) -> None:
    with contextlib.suppress(Exception):  # artifacts are reporting, never a reason to fail
        create_table_artifact(table=rows, key=slug(key), description=description)


def markdown(key: str, text: str, description: str | None = None) -> None:
    with contextlib.suppress(Exception):
        create_markdown_artifact(markdown=text, key=slug(key), description=description)


class Progress:
    """A Prefect progress artifact (percent) updated at most every ``every`` seconds."""

    def __init__(self, key: str, description: str, every: float = 5.0):
        self.every = every
        self._last = 0.0
        self._id = None
        with contextlib.suppress(Exception):
            self._id = create_progress_artifact(progress=0.0, key=slug(key), description=description)

    def __call__(self, fraction: float, force: bool = False) -> None:
        now = time.monotonic()
        if self._id is None or (not force and now - self._last < self.every):
            return
        self._last = now
        with contextlib.suppress(Exception):
            update_progress_artifact(self._id, progress=round(100 * max(0.0, min(1.0, fraction)), 1))


def md_table(rows: list[dict], keys: list[str] | None = None) -> str:
    """A GitHub-flavoured markdown table."""
    if not rows:
        return "_(none)_"
    keys = keys or list(dict.fromkeys(k for r in rows for k in r))

    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4f}"
        return "" if v is None else str(v).replace("|", "\\|")

    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(cell(r.get(k)) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


@task(name="fetch-editor", **TRANSIENT)
def fetch_editor(store_uri: str, prefix: str, target: str) -> str:
    """Download the editor from the store (checksums verified), unless an identical copy is here."""
    store = store_for(store_uri)
    target_path = Path(target)
    store.download_dir(prefix, target_path)
    return str(target_path)
