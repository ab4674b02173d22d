"""Tiny-model pipeline configurations and data files for the flow and registry tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.support.synthetic import synthetic_records
from tests.support.tiny_models import tiny_model


def save_tiny_model(folder: Path, family: str = "llama", seed: int = 0) -> Path:
    """A tiny random model saved as a Hugging Face folder (loadable by path)."""
    if not (folder / "config.json").exists():
        model = tiny_model(family, seed=seed)
        model.model.save_pretrained(folder)
        model.tokenizer.save_pretrained(folder)
    return folder


def write_zsre_file(path: Path, n: int = 48, seed: int = 0, malformed: int = 1) -> Path:
    """Synthetic records in the zsRE (MEND/ROME) file format, plus ``malformed`` bad ones.

    Each record has its own subject so that the subject-grouped split spreads them.
    """
    rows = []
    for i, r in enumerate(synthetic_records(n, seed=seed)):
        probe = r.locality[0]
        # Prompts repeat in the synthetic set: a number makes each (src, alt) pair unique.
        src = f"{r.prompt} ({i})"
        rows.append({
            "subject": f"subject-{i}", "src": src, "pred": "x", "rephrase": r.rephrases[0],
            "alt": r.target, "answers": ["x"], "loc": f"nq question: {probe.prompt}", "loc_ans": probe.answer,
            "cond": f"x >> {r.target} || {src}",
        })
    for j in range(malformed):
        rows.insert(3 + j, {"subject": "bad", "src": "Who wrote Hamlet?", "alt": "", "rephrase": "x",
                            "loc": "nq question: y", "loc_ans": "z"})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rows))
    return path


def tiny_config(tmp: Path, model_dir: Path, data: list[str], *, store: str | None = None,
                tracking_uri: str | None = None, **sections: Any) -> dict[str, Any]:
    """A pipeline configuration that runs in seconds on a tiny model."""
    config: dict[str, Any] = {
        "model": str(model_dir),
        "data": {"sources": [{"path": d} for d in data], "splits": {"train": 0.6, "val": 0.2, "test": 0.2}},
        "train": {
            "editor": {"rank": 16, "down_init": "xavier", "edit_lr_init": 1e-4},
            "lr": 1e-3, "lr_edit_lrs": 1e-3, "c_edit": 1.0, "n_loc": 2,
            "max_steps": 20, "val_every": 10, "val_size": 6, "patience": 1000, "checkpoint_every": 10,
        },
        "scope": {"layers": [0], "steps": 20, "dim": 16},  # below the edited blocks 1-3
        "evaluation": {"n_records": 4, "baseline_records": 2, "batch_sizes": [1, 2], "batch_records": 4,
                       "ft": {"max_steps": 3}},
        "promotion": {"metrics": {"edit_success": {"min_delta": 0.0, "min_value": 0.0},
                                  "generalization": {"min_delta": -1.0, "min_value": 0.0},
                                  "locality": {"min_delta": -1.0, "min_value": 0.0}}},
        "storage": {"uri": store or str(tmp / "store")},
        "mlflow": {"tracking_uri": tracking_uri or f"sqlite:///{tmp / 'mlflow.db'}", "experiment": "tests",
                   "model_name": "tiny-editor", "include_base_model": True, "max_new_tokens": 4},
        "work_dir": str(tmp / "work"),
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    return config


# -- one temporary Prefect API for the whole test session ------------------------------
_harness: dict[str, Any] = {}


def configure_test_env() -> None:
    """Point Prefect (home, results, database) at a temporary directory; call before importing it.

    Idempotent: every conftest that needs Prefect calls it at import time.
    """
    import os
    import tempfile

    if os.environ.get("MEND_TEST_PREFECT_HOME"):
        return
    home = tempfile.mkdtemp(prefix="mend-prefect-")
    os.environ["MEND_TEST_PREFECT_HOME"] = home
    os.environ["PREFECT_HOME"] = home
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    os.environ.pop("PREFECT_API_URL", None)
    os.environ.pop("PREFECT_API_KEY", None)
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def start_prefect_harness(request) -> None:
    """Start ``prefect_test_harness`` once per process; stop it when the session ends."""
    if _harness:
        return
    from prefect.testing.utilities import prefect_test_harness

    context = prefect_test_harness(server_startup_timeout=60)
    context.__enter__()
    _harness["context"] = context
    request.session.addfinalizer(lambda: context.__exit__(None, None, None))
