"""Fixtures shared by tests/flows and tests/registry (imported by both conftests)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.flows.helpers import (
    configure_test_env,
    save_tiny_model,
    start_prefect_harness,
    write_zsre_file,
)

configure_test_env()  # before anything imports Prefect


@pytest.fixture(scope="session")
def prefect_server(request):
    """The temporary Prefect API (started once per process, stopped at the end)."""
    start_prefect_harness(request)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("models") / "tiny-llama")


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """48 synthetic zsRE-format records plus one malformed (empty ``alt``) at index 3."""
    return write_zsre_file(tmp_path_factory.mktemp("data") / "edits.json", n=48, malformed=1)
